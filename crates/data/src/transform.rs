//! Per-image transforms: geometric augmentation on u8 HWC pixels, then normalisation into f32 CHW.
//!
//! Every random draw of one image comes from its own ChaCha8 stream seeded by
//! [`sample_seed`]`(seed, epoch, position)`, so the result does not depend on which thread
//! handles the image or on how many threads there are.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};
pub use crate::stream::ColorJitter;
use crate::stream::{pil_resize, tv_center_crop_offsets, tv_resize_size, tv_resized_crop_params};

/// Per-channel normalisation `(x/255 − mean) / std`, as torchvision `ToTensor` + `Normalize`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Mean per channel, on the `[0, 1]` scale.
    pub mean: Vec<f32>,
    /// Standard deviation per channel, on the `[0, 1]` scale.
    pub std: Vec<f32>,
}

impl Normalize {
    /// The CIFAR statistics RIDE uses for both CIFAR-10-LT and CIFAR-100-LT: mean
    /// (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010) (docs/ride.md §6; these are
    /// CIFAR-10 figures, kept for CIFAR-100 as the official code does).
    pub fn cifar() -> Normalize {
        Normalize {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2023, 0.1994, 0.2010],
        }
    }

    /// Fashion-MNIST training-set statistics: mean 0.2860, std 0.3530.
    pub fn fashion_mnist() -> Normalize {
        Normalize {
            mean: vec![0.2860],
            std: vec![0.3530],
        }
    }

    /// ImageNet statistics (ImageNet-LT, Places-LT): mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    pub fn imagenet() -> Normalize {
        Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// iNaturalist 2018 statistics of RIDE's loader: mean (0.466, 0.471, 0.380), std (0.195, 0.194, 0.192).
    pub fn inaturalist() -> Normalize {
        Normalize {
            mean: vec![0.466, 0.471, 0.380],
            std: vec![0.195, 0.194, 0.192],
        }
    }

    /// Only the `/255` scaling (mean 0, std 1) for `channels` channels.
    pub fn identity(channels: usize) -> Normalize {
        Normalize {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Fails unless there is one finite mean and one positive finite std per channel.
    pub fn check(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(DataError::BadParameter {
                name: "normalisation",
                value: format!("{} means, {} stds", self.mean.len(), self.std.len()),
                reason: format!("the images have {channels} channels"),
            });
        }
        if self.mean.iter().any(|m| !m.is_finite())
            || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(DataError::BadParameter {
                name: "normalisation",
                value: format!("mean {:?}, std {:?}", self.mean, self.std),
                reason: "means must be finite and stds positive".into(),
            });
        }
        Ok(())
    }

    /// The 256-entry lookup table of each channel.
    fn luts(&self) -> Vec<[f32; 256]> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&m, &s)| {
                let mut t = [0f32; 256];
                for (v, x) in t.iter_mut().enumerate() {
                    *x = (v as f32 / 255.0 - m) / s;
                }
                t
            })
            .collect()
    }
}

/// The first, size-changing stage of a transform.
#[derive(Clone, Debug, PartialEq)]
pub enum Resize {
    /// Keep the image size.
    None,
    /// torchvision `RandomResizedCrop(size, scale, ratio)`: a random area fraction in `scale` and a
    /// log-uniform aspect ratio in `ratio` (10 tries, then the central crop), resized to `size × size`.
    /// Differs from official: bilinear without antialiasing.
    RandomResized {
        /// Output side.
        size: usize,
        /// Area fraction range, torchvision default (0.08, 1.0).
        scale: (f64, f64),
        /// Aspect-ratio range, torchvision default (3/4, 4/3).
        ratio: (f64, f64),
    },
    /// torchvision `Resize(resize)` (shorter side) then `CenterCrop(crop)`, bilinear.
    Center {
        /// Shorter side after resizing.
        resize: usize,
        /// Output side.
        crop: usize,
    },
}

/// Geometric augmentation, applied in this order: [`Resize`], random crop with zero padding,
/// horizontal flip, rotation. This is RIDE's CIFAR order (`RandomCrop(32, padding=4)` →
/// `RandomHorizontalFlip()` → `RandomRotation(15)`, docs/ride.md §6) and its ImageNet order
/// (`RandomResizedCrop(224)` → flip).
#[derive(Clone, Debug, PartialEq)]
pub struct Augment {
    /// The size-changing first stage.
    pub resize: Resize,
    /// Pad every side with `p` zeros, then take a random crop of the original size
    /// (offsets uniform in `0..=2p`).
    pub pad_crop: Option<usize>,
    /// Flip left–right with probability 1/2.
    pub hflip: bool,
    /// Rotate by an angle uniform in `[−d, d]` degrees (counter-clockwise positive) about the image
    /// centre, nearest neighbour, same size, fill 0, as PIL `Image.rotate(angle, NEAREST)`.
    pub rotation: Option<f32>,
    /// torchvision `ColorJitter` after the geometric steps (ImageNet-LT, Places-LT).
    pub jitter: Option<ColorJitter>,
}

/// The training-transform configuration (another name for [`Augment`]).
pub type TrainTransform = Augment;

/// The training augmentation a run config names (`augment = "…"` in `config.toml`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AugmentKind {
    /// RIDE's CIFAR recipe: pad-4 random crop, flip, rotation ±15° ([`Augment::cifar`]).
    #[default]
    Standard,
    /// LDAM-DRW's CIFAR recipe, used by SADE and TLC: pad-4 random crop and flip, no rotation
    /// ([`Augment::cifar_ldam`]).
    CropFlip,
    /// No augmentation.
    None,
    /// The ImageNet-LT / Places-LT recipe on streamed images: RandomResizedCrop → flip →
    /// ColorJitter(0.4, 0.4, 0.4, 0) ([`Augment::imagenet_lt`], docs/ride.md §6).
    Imagenet,
    /// The iNaturalist 2018 recipe: RandomResizedCrop → flip, no jitter ([`Augment::imagenet_train`]).
    ResizedCropFlip,
}

impl AugmentKind {
    /// The augmentation this kind names; `size` is the crop side of the resized-crop kinds.
    pub fn augment_sized(self, size: usize) -> Augment {
        match self {
            AugmentKind::Standard => Augment::cifar(),
            AugmentKind::CropFlip => Augment::cifar_ldam(),
            AugmentKind::None => Augment::none(),
            AugmentKind::Imagenet => Augment::imagenet_lt(size),
            AugmentKind::ResizedCropFlip => Augment::imagenet_train(size),
        }
    }

    /// The augmentation this kind names, with 224² crops for the resized-crop kinds.
    pub fn augment(self) -> Augment {
        self.augment_sized(224)
    }

    /// Whether this kind resizes every image to a fixed crop (what a streamed set of mixed
    /// sizes needs), rather than the CIFAR recipes' pad-and-crop of equal-sized images.
    pub fn is_resized_crop(self) -> bool {
        matches!(self, AugmentKind::Imagenet | AugmentKind::ResizedCropFlip)
    }
}

impl Augment {
    /// No augmentation: the image as it is.
    pub fn none() -> Augment {
        Augment {
            resize: Resize::None,
            pad_crop: None,
            hflip: false,
            rotation: None,
            jitter: None,
        }
    }

    /// RIDE's CIFAR training augmentation: pad 4 + random crop, flip, rotation ±15°.
    pub fn cifar() -> Augment {
        Augment {
            resize: Resize::None,
            pad_crop: Some(4),
            hflip: true,
            rotation: Some(15.0),
            jitter: None,
        }
    }

    /// LDAM-DRW's CIFAR training augmentation (no rotation).
    pub fn cifar_ldam() -> Augment {
        Augment {
            rotation: None,
            ..Augment::cifar()
        }
    }

    /// The ImageNet-style training augmentation: random-resized-crop to `size` and flip.
    pub fn imagenet_train(size: usize) -> Augment {
        Augment {
            resize: Resize::RandomResized {
                size,
                scale: (0.08, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
            },
            pad_crop: None,
            hflip: true,
            rotation: None,
            jitter: None,
        }
    }

    /// The ImageNet-LT / Places-LT training augmentation: `RandomResizedCrop(size)` → flip →
    /// `ColorJitter(0.4, 0.4, 0.4, 0)` (docs/ride.md §6).
    pub fn imagenet_lt(size: usize) -> Augment {
        Augment {
            jitter: Some(ColorJitter::imagenet()),
            ..Augment::imagenet_train(size)
        }
    }

    /// The ImageNet-style evaluation transform with the usual 256/224 ratio for a `crop` side:
    /// `Resize(round(crop · 256 / 224))` → `CenterCrop(crop)` (224 → 256, 64 → 73).
    pub fn imagenet_eval(crop: usize) -> Augment {
        Augment::center((crop as f64 * 256.0 / 224.0).round() as usize, crop)
    }

    /// The ImageNet-style evaluation transform: shorter side to `resize`, centre crop `crop`.
    pub fn center(resize: usize, crop: usize) -> Augment {
        Augment {
            resize: Resize::Center { resize, crop },
            ..Augment::none()
        }
    }

    /// Whether any step draws random numbers.
    pub fn is_random(&self) -> bool {
        matches!(self.resize, Resize::RandomResized { .. })
            || self.pad_crop.is_some()
            || self.hflip
            || self.rotation.is_some()
            || self.jitter.is_some()
    }

    /// Output `(height, width)` for an input of `(h, w)`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self.resize {
            Resize::None => (h, w),
            Resize::RandomResized { size, .. } => (size, size),
            Resize::Center { crop, .. } => (crop, crop),
        }
    }

    /// Fails on an unusable setting.
    pub fn check(&self, h: usize, w: usize) -> Result<()> {
        let bad = |name, value: String, reason: &str| {
            Err(DataError::BadParameter {
                name,
                value,
                reason: reason.into(),
            })
        };
        match self.resize {
            Resize::None => {}
            Resize::RandomResized { size, scale, ratio } => {
                if size == 0 {
                    return bad(
                        "random-resized-crop size",
                        "0".into(),
                        "it must be positive",
                    );
                }
                if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                    return bad(
                        "random-resized-crop scale",
                        format!("{scale:?}"),
                        "need 0 < lo <= hi <= 1",
                    );
                }
                if !(ratio.0 > 0.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                    return bad(
                        "random-resized-crop ratio",
                        format!("{ratio:?}"),
                        "need 0 < lo <= hi",
                    );
                }
            }
            Resize::Center { resize, crop } => {
                if crop == 0 || crop > resize {
                    return bad(
                        "centre crop",
                        format!("{crop} of {resize}"),
                        "need 0 < crop <= resize",
                    );
                }
                if resize * h.max(w) / h.min(w).max(1) > 1 << 16 {
                    return bad(
                        "resize",
                        resize.to_string(),
                        "the resized image would be too large",
                    );
                }
            }
        }
        if let Some(d) = self.rotation {
            if !(d.is_finite() && (0.0..=180.0).contains(&d)) {
                return bad("rotation", d.to_string(), "degrees must lie in 0..=180");
            }
        }
        if let Some(p) = self.pad_crop {
            if p > 1 << 12 {
                return bad("crop padding", p.to_string(), "too large");
            }
        }
        if let Some(j) = &self.jitter {
            j.check()?;
        }
        Ok(())
    }
}

/// A whole per-image transform: augmentation (train) or none / centre crop (eval), then normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// The geometric steps.
    pub augment: Augment,
    /// The normalisation.
    pub normalize: Normalize,
}

impl Transform {
    /// A training transform.
    pub fn train(augment: Augment, normalize: Normalize) -> Transform {
        Transform { augment, normalize }
    }

    /// The plain evaluation transform: normalisation only.
    pub fn eval(normalize: Normalize) -> Transform {
        Transform {
            augment: Augment::none(),
            normalize,
        }
    }

    /// Checks the transform against images of `(h, w, channels)` and builds its lookup tables.
    pub fn prepare(&self, h: usize, w: usize, channels: usize) -> Result<Prepared> {
        self.augment.check(h, w)?;
        self.normalize.check(channels)?;
        if self.augment.jitter.is_some() && channels != 3 {
            return Err(DataError::BadParameter {
                name: "colour jitter",
                value: format!("{channels} channels"),
                reason: "colour jitter needs RGB images".into(),
            });
        }
        let (oh, ow) = self.augment.output_size(h, w);
        Ok(Prepared {
            augment: self.augment.clone(),
            luts: self.normalize.luts(),
            in_shape: (h, w, channels),
            out_shape: (channels, oh, ow),
        })
    }
}

/// A checked [`Transform`] for one input size, ready to apply from many threads.
#[derive(Clone, Debug)]
pub struct Prepared {
    augment: Augment,
    luts: Vec<[f32; 256]>,
    in_shape: (usize, usize, usize),
    out_shape: (usize, usize, usize),
}

/// Mixes `(seed, epoch, position)` into one 64-bit seed (SplitMix64 finaliser on each part).
pub fn sample_seed(seed: u64, epoch: u64, position: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    mix(mix(mix(seed) ^ epoch) ^ position)
}

impl Prepared {
    /// Output shape `(channels, height, width)`.
    pub fn out_shape(&self) -> (usize, usize, usize) {
        self.out_shape
    }

    /// Output floats per image.
    pub fn out_len(&self) -> usize {
        self.out_shape.0 * self.out_shape.1 * self.out_shape.2
    }

    /// Transforms one HWC u8 image into `out` (CHW f32, [`Prepared::out_len`] values), drawing its
    /// random numbers from a ChaCha8 stream seeded with `rng_seed`.
    pub fn apply(&self, img: &[u8], rng_seed: u64, out: &mut [f32]) {
        let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
        let (h, w, c) = self.in_shape;
        debug_assert_eq!(img.len(), h * w * c);
        let resized: Vec<u8>;
        let (src, sh, sw): (&[u8], usize, usize) = match self.augment.resize {
            Resize::None => (img, h, w),
            Resize::RandomResized { size, scale, ratio } => {
                let (y0, x0, ch, cw) = random_resized_params(h, w, scale, ratio, &mut rng);
                resized = bilinear(
                    img,
                    (h, w, c),
                    (y0 as f64, x0 as f64, ch as f64, cw as f64),
                    size,
                    size,
                );
                (&resized[..], size, size)
            }
            Resize::Center { resize, crop } => {
                let (nh, nw) = if h <= w {
                    (resize, (resize * w) / h)
                } else {
                    ((resize * h) / w, resize)
                };
                let top = ((nh - crop) as f64 / 2.0).round();
                let left = ((nw - crop) as f64 / 2.0).round();
                let (fy, fx) = (h as f64 / nh as f64, w as f64 / nw as f64);
                let region = (top * fy, left * fx, crop as f64 * fy, crop as f64 * fx);
                resized = bilinear(img, (h, w, c), region, crop, crop);
                (&resized[..], crop, crop)
            }
        };
        let (oy, ox, pad) = match self.augment.pad_crop {
            Some(p) => (rng.random_range(0..=2 * p), rng.random_range(0..=2 * p), p),
            None => (0, 0, 0),
        };
        let flip = self.augment.hflip && rng.random_bool(0.5);
        let angle = match self.augment.rotation {
            Some(d) if d > 0.0 => rng.random_range(-d..=d),
            _ => 0.0,
        };
        match &self.augment.jitter {
            // Jitter needs RGB; on other channel counts `prepare` refuses it.
            Some(j) => {
                let mut jittered = src.to_vec();
                j.apply(&mut jittered, &mut rng);
                self.write(&jittered, (sh, sw, c), (oy, ox, pad), flip, angle, out);
            }
            None => self.write(src, (sh, sw, c), (oy, ox, pad), flip, angle, out),
        }
    }

    /// Whether this transform can take decoded images of any size ([`Prepared::apply_decoded`]):
    /// its first stage fixes the size, and no step needs the images' common size.
    pub fn takes_any_size(&self) -> bool {
        !matches!(self.augment.resize, Resize::None)
            && self.augment.pad_crop.is_none()
            && self.augment.rotation.is_none()
            && self.in_shape.2 == 3
    }

    /// Transforms one decoded RGB image of `(h, w)` (any size) into `out`, as torchvision on a
    /// PIL image: `RandomResizedCrop` ([`tv_resized_crop_params`], then PIL's antialiased
    /// bilinear [`pil_resize`]) or `Resize` + `CenterCrop` ([`tv_resize_size`],
    /// [`tv_center_crop_offsets`]); then the flip, the colour jitter and the normalisation. The
    /// random draws come in torchvision's order (crop, flip, jitter) from a ChaCha8 stream
    /// seeded with `rng_seed`. `path` names the image in errors.
    ///
    /// Fails when the transform does not fix the size ([`Prepared::takes_any_size`]) or the
    /// resized image would be unreasonably large (an extreme aspect ratio).
    pub fn apply_decoded(
        &self,
        img: &[u8],
        (h, w): (usize, usize),
        rng_seed: u64,
        path: &std::path::Path,
        out: &mut [f32],
    ) -> Result<()> {
        let bad = |reason: String| DataError::BadImage {
            path: path.to_path_buf(),
            reason,
        };
        if !self.takes_any_size() {
            return Err(bad(
                "a streamed image needs a transform that fixes its size (random-resized-crop, or resize + centre crop) and no pad-crop or rotation".into(),
            ));
        }
        if img.len() != h * w * 3 || h == 0 || w == 0 {
            return Err(bad(format!("{} bytes for a {w}x{h} RGB image", img.len())));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
        let (mut crop, side) = match self.augment.resize {
            Resize::RandomResized { size, scale, ratio } => {
                let (t, l, ch, cw) = tv_resized_crop_params(h, w, scale, ratio, &mut rng);
                (
                    pil_resize(
                        img,
                        (h, w, 3),
                        (t, l, ch, cw),
                        (size, size),
                        (0, 0, size, size),
                    ),
                    size,
                )
            }
            Resize::Center { resize, crop } => {
                let (nh, nw) = tv_resize_size(h, w, resize);
                if nh.max(nw) > 1 << 16 {
                    return Err(bad(format!(
                        "a {w}x{h} image resized to a shorter side of {resize} would be {nw}x{nh}"
                    )));
                }
                let (t, l) = tv_center_crop_offsets(nh, nw, crop);
                (
                    pil_resize(img, (h, w, 3), (0, 0, h, w), (nh, nw), (t, l, crop, crop)),
                    crop,
                )
            }
            Resize::None => unreachable!("checked by takes_any_size"),
        };
        let flip = self.augment.hflip && rng.random_bool(0.5);
        if let Some(j) = &self.augment.jitter {
            j.apply(&mut crop, &mut rng);
        }
        // The same as `write` without padding or rotation, one plane at a time.
        let plane = side * side;
        for (ch, (lut, dst)) in self
            .luts
            .iter()
            .zip(out.chunks_exact_mut(plane))
            .enumerate()
        {
            for (row, drow) in crop.chunks_exact(side * 3).zip(dst.chunks_exact_mut(side)) {
                if flip {
                    for (o, p) in drow.iter_mut().zip(row.chunks_exact(3).rev()) {
                        *o = lut[p[ch] as usize];
                    }
                } else {
                    for (o, p) in drow.iter_mut().zip(row.chunks_exact(3)) {
                        *o = lut[p[ch] as usize];
                    }
                }
            }
        }
        Ok(())
    }

    /// Crop offset, flip and rotation as one inverse map from output to source pixel, then the
    /// per-channel lookup table.
    fn write(
        &self,
        src: &[u8],
        (h, w, c): (usize, usize, usize),
        (oy, ox, pad): (usize, usize, usize),
        flip: bool,
        angle_deg: f32,
        out: &mut [f32],
    ) {
        let plane = h * w;
        let zero: Vec<f32> = self.luts.iter().map(|t| t[0]).collect();
        // Source pixel of an unrotated (crop + flip) pixel, or None for the zero padding.
        let source = |x: isize, y: isize| -> Option<usize> {
            let fx = if flip { w as isize - 1 - x } else { x };
            let sx = fx + ox as isize - pad as isize;
            let sy = y + oy as isize - pad as isize;
            if sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                Some((sy as usize * w + sx as usize) * c)
            } else {
                None
            }
        };
        let rot = (angle_deg != 0.0).then(|| {
            let t = (angle_deg as f64).to_radians();
            (t.cos(), t.sin())
        });
        let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
        for y in 0..h {
            for x in 0..w {
                let s = match rot {
                    None => source(x as isize, y as isize),
                    Some((cos, sin)) => {
                        // PIL's inverse affine map for a counter-clockwise rotation, sampled at the
                        // output pixel's centre; NEAREST takes the floor, negatives fall outside.
                        let dx = x as f64 + 0.5 - cx;
                        let dy = y as f64 + 0.5 - cy;
                        let rx = cos * dx - sin * dy + cx;
                        let ry = sin * dx + cos * dy + cy;
                        if rx < 0.0 || ry < 0.0 || rx >= w as f64 || ry >= h as f64 {
                            None
                        } else {
                            source(rx as isize, ry as isize)
                        }
                    }
                };
                let o = y * w + x;
                match s {
                    Some(s) => {
                        for ch in 0..c {
                            out[ch * plane + o] = self.luts[ch][src[s + ch] as usize];
                        }
                    }
                    None => {
                        for ch in 0..c {
                            out[ch * plane + o] = zero[ch];
                        }
                    }
                }
            }
        }
    }
}

/// torchvision `RandomResizedCrop.get_params`: `(top, left, height, width)` of the crop: up to
/// ten draws of an area fraction in `scale` and a log-uniform aspect ratio in `ratio`, then the
/// centre crop of the ratio-clamped whole image (at least one pixel a side). Shared with SADE's
/// strong augmentation.
pub fn random_resized_params(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut ChaCha8Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        (((w as f64) / ratio.0).round() as usize, w)
    } else if in_ratio > ratio.1 {
        (h, ((h as f64) * ratio.1).round() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Bilinear resampling (half-pixel centres, edge clamped) of the source region
/// `(top, left, height, width)` to `oh × ow`, HWC u8. Shared with SADE's strong augmentation.
pub fn bilinear(
    img: &[u8],
    (h, w, c): (usize, usize, usize),
    (top, left, rh, rw): (f64, f64, f64, f64),
    oh: usize,
    ow: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; oh * ow * c];
    let (sy, sx) = (rh / oh as f64, rw / ow as f64);
    let axis = |o: usize, s: f64, start: f64, n: usize| {
        let v = (start + (o as f64 + 0.5) * s - 0.5).clamp(0.0, (n - 1) as f64);
        let lo = v.floor() as usize;
        (lo, (lo + 1).min(n - 1), v - lo as f64)
    };
    let xs: Vec<_> = (0..ow).map(|x| axis(x, sx, left, w)).collect();
    for y in 0..oh {
        let (y0, y1, fy) = axis(y, sy, top, h);
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            for ch in 0..c {
                let p = |yy: usize, xx: usize| img[(yy * w + xx) * c + ch] as f64;
                let top_row = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
                let bottom = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
                out[(y * ow + x) * c + ch] = (top_row * (1.0 - fy) + bottom * fy)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize, c: usize) -> Vec<u8> {
        (0..h * w * c).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn identity_transform_normalises_to_chw() {
        let img = ramp(2, 3, 3);
        let p = Transform::eval(Normalize::identity(3))
            .prepare(2, 3, 3)
            .unwrap();
        let mut out = vec![0.0; p.out_len()];
        p.apply(&img, 1, &mut out);
        // out[c, y, x] = img[y, x, c] / 255.
        for y in 0..2 {
            for x in 0..3 {
                for c in 0..3 {
                    assert_eq!(
                        out[c * 6 + y * 3 + x],
                        img[(y * 3 + x) * 3 + c] as f32 / 255.0
                    );
                }
            }
        }
        let n = Transform::eval(Normalize::cifar())
            .prepare(2, 3, 3)
            .unwrap();
        n.apply(&img, 1, &mut out);
        let want = (img[0] as f32 / 255.0 - 0.4914) / 0.2023;
        assert!((out[0] - want).abs() < 1e-6);
    }

    #[test]
    fn pad_crop_and_flip_move_pixels_exactly() {
        // With only the crop: out(y, x) = in(y + oy − p, x + ox − p) or 0.
        let img = ramp(5, 4, 1);
        let aug = Augment {
            pad_crop: Some(2),
            hflip: true,
            ..Augment::none()
        };
        let p = Transform::train(aug, Normalize::identity(1))
            .prepare(5, 4, 1)
            .unwrap();
        let mut seen_flip = [false; 2];
        for seed in 0..40 {
            let mut out = vec![0.0; 20];
            p.apply(&img, seed, &mut out);
            // Recover the draws from the same stream.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let oy: usize = rng.random_range(0..=4);
            let ox: usize = rng.random_range(0..=4);
            let flip = rng.random_bool(0.5);
            seen_flip[flip as usize] = true;
            for y in 0..5isize {
                for x in 0..4isize {
                    let fx = if flip { 3 - x } else { x };
                    let (sy, sx) = (y + oy as isize - 2, fx + ox as isize - 2);
                    let want = if (0..5).contains(&sy) && (0..4).contains(&sx) {
                        img[(sy * 4 + sx) as usize] as f32 / 255.0
                    } else {
                        0.0
                    };
                    assert_eq!(out[(y * 4 + x) as usize], want);
                }
            }
        }
        assert_eq!(seen_flip, [true, true]);
    }

    #[test]
    fn rotation_by_90_degrees_is_exact() {
        // A 90° counter-clockwise turn of a 4x4 image: out(y, x) = in(x, 3 − y).
        let img = ramp(4, 4, 1);
        let aug = Augment::none();
        let p = Transform::train(aug, Normalize::identity(1))
            .prepare(4, 4, 1)
            .unwrap();
        let mut out = vec![0.0; 16];
        p.write(&img, (4, 4, 1), (0, 0, 0), false, 90.0, &mut out);
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(
                    out[y * 4 + x],
                    img[x * 4 + (3 - y)] as f32 / 255.0,
                    "({y},{x})"
                );
            }
        }
        // 45° leaves the corners empty (fill 0) and the centre in place.
        p.write(&img, (4, 4, 1), (0, 0, 0), false, 45.0, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[15], 0.0);
    }

    #[test]
    fn center_crop_of_same_size_is_identity_and_rrc_has_its_size() {
        let img = ramp(8, 6, 3);
        let p = Transform::eval(Normalize::identity(3));
        let c = Transform {
            augment: Augment::center(6, 6),
            ..p.clone()
        }
        .prepare(8, 6, 3)
        .unwrap();
        assert_eq!(c.out_shape(), (3, 6, 6));
        let mut out = vec![0.0; c.out_len()];
        c.apply(&img, 0, &mut out);
        // Rows 1..7 of the source, unchanged.
        assert_eq!(out[0], img[6 * 3] as f32 / 255.0);
        let r = Transform {
            augment: Augment::imagenet_train(5),
            ..p
        }
        .prepare(8, 6, 3)
        .unwrap();
        assert_eq!(r.out_shape(), (3, 5, 5));
        let mut a = vec![0.0; r.out_len()];
        let mut b = vec![0.0; r.out_len()];
        r.apply(&img, 9, &mut a);
        r.apply(&img, 9, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn bad_settings_are_errors() {
        let n = Normalize::identity(3);
        let bad = Augment {
            rotation: Some(-1.0),
            ..Augment::none()
        };
        assert!(Transform::train(bad, n.clone()).prepare(4, 4, 3).is_err());
        assert!(Transform::train(Augment::center(4, 8), n.clone())
            .prepare(4, 4, 3)
            .is_err());
        assert!(Transform::eval(n).prepare(4, 4, 1).is_err());
        assert!(Normalize {
            mean: vec![0.0],
            std: vec![0.0]
        }
        .check(1)
        .is_err());
    }

    #[test]
    fn sample_seeds_differ() {
        let s = sample_seed(1, 2, 3);
        assert_ne!(s, sample_seed(1, 3, 2));
        assert_ne!(s, sample_seed(2, 2, 3));
        assert_eq!(s, sample_seed(1, 2, 3));
    }
}
