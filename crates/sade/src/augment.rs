//! SADE's strong augmentation: the two random views of each unlabeled test image that the
//! test-time aggregation makes agree (docs/sade.md §2 step 4; `TwoCropsTransform(strong_aug)` of
//! the official `test_training_*.py`, the MoCo-v2 / SimCLR recipe).
//!
//! The pipeline, in the official order, on u8 HWC pixels (1 or 3 channels):
//!
//! 1. [`StrongCrop`]: `RandomCrop(size, padding=4)` (CIFAR-sized images) or
//!    `RandomResizedCrop(size, scale=(0.2, 1))` (ImageNet-sized);
//! 2. `RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8)`: brightness, contrast, saturation and
//!    hue in a random order, as torchvision does;
//! 3. `RandomGrayscale(p=0.2)`;
//! 4. `RandomApply(GaussianBlur(σ ~ U(0.1, 2.0)), p)`, p = 0.2 on 32² and 0.5 on 224²;
//! 5. `RandomHorizontalFlip()`;
//!
//! then `ToTensor` + `Normalize` into f32 CHW ([`StrongViews::batch`]).
//!
//! Every pixel operation follows PIL, which torchvision calls on PIL images: blends
//! truncate to u8 after each step, luma is ITU-R 601-2 in PIL's fixed point, hue goes through PIL's
//! 8-bit HSV, and the blur is PIL's three extended box blurs. On one-channel images saturation,
//! hue and grayscale do nothing (PIL leaves `L` images unchanged there), so the colour steps reduce
//! to brightness and contrast.
//!
//! Determinism: image `sample` of view `view` draws all its random numbers from one ChaCha8
//! stream seeded by [`view_seed`]`(seed, view, sample)`, so a view depends on nothing else (not the
//! thread, not the batch). Differs from official: Python's and torch's unseeded global RNGs.

use candle_core::{Device, Tensor};
use longtail_data::transform::{bilinear, random_resized_params};
use longtail_data::{sample_seed, Dataset, Normalize};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::SadeError;

/// The geometric first step of the strong augmentation.
#[derive(Clone, Debug, PartialEq)]
pub enum StrongCrop {
    /// `RandomCrop(size, padding=p)`: pad every side with `p` zeros, then crop the original size at
    /// offsets uniform in `0..=2p`.
    Pad(usize),
    /// `RandomResizedCrop(size, scale)` with the default aspect ratios (3/4, 4/3): a random area
    /// fraction in `scale` and a log-uniform aspect ratio (10 tries, then the whole image clipped
    /// to the ratio range), resized bilinearly to `size × size`.
    /// Differs from official: bilinear without PIL's antialiasing.
    Resized {
        /// Output side.
        size: usize,
        /// Area fraction range (SADE: (0.2, 1.0) on ImageNet-LT and Places-LT).
        scale: (f64, f64),
    },
}

/// torchvision `ColorJitter(brightness, contrast, saturation, hue)`: factors drawn uniformly from
/// `[1 − b, 1 + b]`, `[1 − c, 1 + c]`, `[1 − s, 1 + s]` and `[−h, h]`, applied in a random order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    /// Brightness spread `b` (SADE: 0.4).
    pub brightness: f64,
    /// Contrast spread `c` (SADE: 0.4).
    pub contrast: f64,
    /// Saturation spread `s` (SADE: 0.4).
    pub saturation: f64,
    /// Hue spread `h`, at most 0.5 (SADE: 0.1).
    pub hue: f64,
}

/// SADE's strong augmentation (docs/sade.md §2 step 4). Build with [`StrongAugment::cifar`] or
/// [`StrongAugment::imagenet`]; every field can be changed.
#[derive(Clone, Debug, PartialEq)]
pub struct StrongAugment {
    /// The crop.
    pub crop: StrongCrop,
    /// The colour jitter.
    pub jitter: ColorJitter,
    /// Probability of applying the colour jitter (SADE: 0.8).
    pub jitter_probability: f64,
    /// Probability of converting to grayscale (SADE: 0.2).
    pub grayscale_probability: f64,
    /// Probability of the Gaussian blur (SADE: 0.2 on CIFAR, 0.5 on the 224² data sets).
    pub blur_probability: f64,
    /// Range of the blur's σ in pixels, drawn uniformly (SADE: (0.1, 2.0)).
    pub blur_sigma: (f64, f64),
    /// Flip left–right with probability 1/2.
    pub hflip: bool,
}

/// The seed of one image's random stream: `sample_seed(seed, view, sample)` of the data crate
/// (SplitMix64 mixing of the three numbers).
pub fn view_seed(seed: u64, view: u64, sample: u64) -> u64 {
    sample_seed(seed, view, sample)
}

impl StrongAugment {
    const JITTER: ColorJitter = ColorJitter {
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.4,
        hue: 0.1,
    };

    /// The CIFAR strong augmentation of `test_training_cifar.py`: pad-4 random crop, jitter
    /// (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, blur p 0.2, flip.
    pub fn cifar() -> Self {
        Self {
            crop: StrongCrop::Pad(4),
            jitter: Self::JITTER,
            jitter_probability: 0.8,
            grayscale_probability: 0.2,
            blur_probability: 0.2,
            blur_sigma: (0.1, 2.0),
            hflip: true,
        }
    }

    /// The ImageNet-LT / Places-LT strong augmentation: `RandomResizedCrop(size, scale=(0.2, 1))`,
    /// the same jitter and grayscale, blur p 0.5, flip.
    pub fn imagenet(size: usize) -> Self {
        Self {
            crop: StrongCrop::Resized {
                size,
                scale: (0.2, 1.0),
            },
            blur_probability: 0.5,
            ..Self::cifar()
        }
    }

    /// Output `(height, width)` for an input of `(h, w)`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self.crop {
            StrongCrop::Pad(_) => (h, w),
            StrongCrop::Resized { size, .. } => (size, size),
        }
    }

    /// Fails on an unusable setting or an image shape it cannot handle.
    pub fn check(&self, h: usize, w: usize, channels: usize) -> Result<(), SadeError> {
        let bad = |field: &'static str, value: String, reason: &str| {
            Err(SadeError::Augment {
                field,
                value,
                reason: reason.into(),
            })
        };
        if h == 0 || w == 0 || !(channels == 1 || channels == 3) {
            return bad(
                "image shape",
                format!("{h}x{w}x{channels}"),
                "need a non-empty image with 1 or 3 channels",
            );
        }
        match self.crop {
            StrongCrop::Pad(p) if p > 1 << 12 => {
                return bad("crop padding", p.to_string(), "too large")
            }
            StrongCrop::Resized { size, scale } => {
                if size == 0 || size > 1 << 14 {
                    return bad("crop size", size.to_string(), "must be in 1..=16384");
                }
                if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                    return bad("crop scale", format!("{scale:?}"), "need 0 < lo <= hi <= 1");
                }
            }
            _ => {}
        }
        let j = self.jitter;
        for (field, v, max) in [
            ("brightness", j.brightness, 1.0),
            ("contrast", j.contrast, 1.0),
            ("saturation", j.saturation, 1.0),
            ("hue", j.hue, 0.5),
        ] {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return bad(field, v.to_string(), &format!("must lie in [0, {max}]"));
            }
        }
        for (field, p) in [
            ("jitter probability", self.jitter_probability),
            ("grayscale probability", self.grayscale_probability),
            ("blur probability", self.blur_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(field, p.to_string(), "must lie in [0, 1]");
            }
        }
        let (lo, hi) = self.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return bad(
                "blur sigma",
                format!("{:?}", self.blur_sigma),
                "need 0 < lo <= hi",
            );
        }
        Ok(())
    }

    /// Augments one `h × w × channels` u8 image (HWC) with the random stream `rng_seed`; returns
    /// the augmented HWC image of [`StrongAugment::output_size`].
    pub fn apply(
        &self,
        img: &[u8],
        (h, w, c): (usize, usize, usize),
        rng_seed: u64,
    ) -> Result<Vec<u8>, SadeError> {
        self.check(h, w, c)?;
        if img.len() != h * w * c {
            return Err(SadeError::ImageSize {
                got: img.len(),
                height: h,
                width: w,
                channels: c,
            });
        }
        Ok(self.apply_unchecked(img, (h, w, c), rng_seed))
    }

    /// View `view` of image `sample`: [`StrongAugment::apply`] with [`view_seed`]`(seed, view, sample)`.
    pub fn view(
        &self,
        img: &[u8],
        shape: (usize, usize, usize),
        seed: u64,
        view: u64,
        sample: u64,
    ) -> Result<Vec<u8>, SadeError> {
        self.apply(img, shape, view_seed(seed, view, sample))
    }

    fn apply_unchecked(&self, img: &[u8], (h, w, c): (usize, usize, usize), seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut x, oh, ow) = match self.crop {
            StrongCrop::Pad(p) => {
                let oy = rng.random_range(0..=2 * p);
                let ox = rng.random_range(0..=2 * p);
                (pad_crop(img, (h, w, c), p, oy, ox), h, w)
            }
            StrongCrop::Resized { size, scale } => {
                let (top, left, rh, rw) =
                    random_resized_params(h, w, scale, (3.0 / 4.0, 4.0 / 3.0), &mut rng);
                let region = (top as f64, left as f64, rh as f64, rw as f64);
                (bilinear(img, (h, w, c), region, size, size), size, size)
            }
        };
        if rng.random_bool(self.jitter_probability) {
            let j = self.jitter;
            let mut order = [0usize, 1, 2, 3];
            order.shuffle(&mut rng);
            let factor = |rng: &mut ChaCha8Rng, s: f64| {
                if s > 0.0 {
                    rng.random_range((1.0 - s).max(0.0)..=1.0 + s)
                } else {
                    1.0
                }
            };
            let b = factor(&mut rng, j.brightness);
            let ct = factor(&mut rng, j.contrast);
            let s = factor(&mut rng, j.saturation);
            let hue = if j.hue > 0.0 {
                rng.random_range(-j.hue..=j.hue)
            } else {
                0.0
            };
            for op in order {
                match op {
                    0 => brightness(&mut x, b),
                    1 => contrast(&mut x, c, ct),
                    2 => saturation(&mut x, c, s),
                    _ => adjust_hue(&mut x, c, hue),
                }
            }
        }
        if rng.random_bool(self.grayscale_probability) {
            grayscale(&mut x, c);
        }
        if rng.random_bool(self.blur_probability) {
            let sigma = rng.random_range(self.blur_sigma.0..=self.blur_sigma.1);
            gaussian_blur(&mut x, (oh, ow, c), sigma);
        }
        if self.hflip && rng.random_bool(0.5) {
            hflip(&mut x, (oh, ow, c));
        }
        x
    }
}

/// Two (or more) strong views of data-set images as normalised `[B, C, H, W]` f32 tensors.
#[derive(Clone, Debug)]
pub struct StrongViews {
    augment: StrongAugment,
    luts: Vec<[f32; 256]>,
    seed: u64,
}

impl StrongViews {
    /// The augmentation, the `ToTensor` + `Normalize` statistics (one mean and std per channel)
    /// and the seed of every view.
    pub fn new(
        augment: StrongAugment,
        normalize: &Normalize,
        seed: u64,
    ) -> Result<Self, SadeError> {
        let ok = normalize.mean.len() == normalize.std.len()
            && normalize.mean.iter().all(|m| m.is_finite())
            && normalize.std.iter().all(|s| s.is_finite() && *s > 0.0);
        if !ok || normalize.mean.is_empty() {
            return Err(SadeError::Augment {
                field: "normalisation",
                value: format!("mean {:?}, std {:?}", normalize.mean, normalize.std),
                reason: "need one finite mean and one positive std per channel".into(),
            });
        }
        let luts = normalize
            .mean
            .iter()
            .zip(&normalize.std)
            .map(|(&m, &s)| std::array::from_fn(|v| (v as f32 / 255.0 - m) / s))
            .collect();
        Ok(Self {
            augment,
            luts,
            seed,
        })
    }

    /// The augmentation.
    pub fn augment(&self) -> &StrongAugment {
        &self.augment
    }

    /// View `view` of the images `indices` of `data`, normalised, `[B, C, H', W']` f32 on
    /// `device`. Image `i` uses the stream [`view_seed`]`(seed, view, i)`; the images are
    /// augmented in parallel (rayon).
    pub fn batch(
        &self,
        data: &Dataset,
        indices: &[usize],
        view: u64,
        device: &Device,
    ) -> Result<Tensor, SadeError> {
        let (h, w, c) = (data.height, data.width, data.channels);
        self.augment.check(h, w, c)?;
        if self.luts.len() != c {
            return Err(SadeError::Augment {
                field: "normalisation",
                value: format!("{} channels", self.luts.len()),
                reason: format!("the images have {c} channels"),
            });
        }
        if let Some(&index) = indices.iter().find(|&&i| i >= data.len()) {
            return Err(SadeError::SampleIndex {
                index,
                len: data.len(),
            });
        }
        let (oh, ow) = self.augment.output_size(h, w);
        let plane = oh * ow;
        let mut out = vec![0f32; indices.len() * c * plane];
        out.par_chunks_mut(c * plane)
            .zip(indices.par_iter())
            .for_each(|(dst, &i)| {
                let seed = view_seed(self.seed, view, i as u64);
                let img = self.augment.apply_unchecked(data.image(i), (h, w, c), seed);
                for (p, px) in img.chunks_exact(c).enumerate() {
                    for ch in 0..c {
                        dst[ch * plane + p] = self.luts[ch][px[ch] as usize];
                    }
                }
            });
        Ok(Tensor::from_vec(out, (indices.len(), c, oh, ow), device)?)
    }
}

/// Zero padding of `p`, then the `h × w` window at `(oy, ox)` of the padded image.
fn pad_crop(
    img: &[u8],
    (h, w, c): (usize, usize, usize),
    p: usize,
    oy: usize,
    ox: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; h * w * c];
    for y in 0..h {
        let sy = (y + oy) as isize - p as isize;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        for x in 0..w {
            let sx = (x + ox) as isize - p as isize;
            if sx < 0 || sx >= w as isize {
                continue;
            }
            let s = (sy as usize * w + sx as usize) * c;
            out[(y * w + x) * c..][..c].copy_from_slice(&img[s..s + c]);
        }
    }
    out
}

/// PIL `Image.blend(degenerate, image, f)` on one value: `degenerate + f·(image − degenerate)`,
/// clipped to `[0, 255]` and truncated (libImaging/Blend.c).
fn blend(degenerate: f32, value: u8, f: f32) -> u8 {
    (degenerate + f * (value as f32 - degenerate)).clamp(0.0, 255.0) as u8
}

/// PIL's `L` conversion of one RGB pixel: `(19595 R + 38470 G + 7471 B + 2^15) >> 16` (ITU-R
/// 601-2 luma in fixed point, libImaging/Convert.c).
fn luma(px: &[u8]) -> u8 {
    ((19595 * px[0] as u32 + 38470 * px[1] as u32 + 7471 * px[2] as u32 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Brightness`: blend with black.
fn brightness(x: &mut [u8], f: f64) {
    for v in x.iter_mut() {
        *v = blend(0.0, *v, f as f32);
    }
}

/// `ImageEnhance.Contrast`: blend with the mean luma, rounded to an integer
/// (`int(mean + 0.5)` of the `L` image).
fn contrast(x: &mut [u8], c: usize, f: f64) {
    let n = x.len() / c;
    let sum: u64 = if c == 3 {
        x.chunks_exact(3).map(|p| luma(p) as u64).sum()
    } else {
        x.iter().map(|&v| v as u64).sum()
    };
    let mean = (sum as f64 / n as f64 + 0.5).floor() as f32;
    for v in x.iter_mut() {
        *v = blend(mean, *v, f as f32);
    }
}

/// `ImageEnhance.Color`: blend with the grayscale image; nothing on one channel.
fn saturation(x: &mut [u8], c: usize, f: f64) {
    if c != 3 {
        return;
    }
    for p in x.chunks_exact_mut(3) {
        let g = luma(p) as f32;
        for v in p.iter_mut() {
            *v = blend(g, *v, f as f32);
        }
    }
}

/// torchvision's PIL `adjust_hue`: to PIL's 8-bit HSV, add `uint8(hue·255)` to H with wrap-around,
/// back to RGB; nothing on one channel.
fn adjust_hue(x: &mut [u8], c: usize, hue: f64) {
    if c != 3 || hue == 0.0 {
        return;
    }
    let shift = ((hue * 255.0) as i32).rem_euclid(256) as u8;
    for p in x.chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv([p[0], p[1], p[2]]);
        let rgb = hsv_to_rgb([h.wrapping_add(shift), s, v]);
        p.copy_from_slice(&rgb);
    }
}

/// PIL's `RGB → HSV` (libImaging/Convert.c `rgb2hsv_row`, after Python's colorsys), 8 bits each,
/// with its mix of `float` variables and `double` expressions (which decides, e.g., that pure
/// green gets H = 85 and pure blue H = 170).
fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = (maxc - minc) as f32;
    let s: f32 = cr / maxc as f32;
    let rc: f32 = (maxc - r) as f32 / cr;
    let gc: f32 = (maxc - g) as f32 / cr;
    let bc: f32 = (maxc - b) as f32 / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let to8 = |v: f32| ((v as f64 * 255.0) as i32).clamp(0, 255) as u8;
    [to8(h), to8(s), maxc]
}

/// PIL's `HSV → RGB` (libImaging/Convert.c `hsv2rgb`), 8 bits each.
fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hh = h as f64 * 6.0 / 255.0;
    let i = hh.floor();
    let f = (hh - i) as f32 as f64;
    let fs = (s as f32 / 255.0) as f64;
    let vf = v as f64;
    let to8 = |x: f64| x.round().clamp(0.0, 255.0) as u8;
    let p = to8(vf * (1.0 - fs));
    let q = to8(vf * (1.0 - fs * f));
    let t = to8(vf * (1.0 - fs * (1.0 - f)));
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// `RandomGrayscale` on RGB: every channel becomes the luma; nothing on one channel.
fn grayscale(x: &mut [u8], c: usize) {
    if c != 3 {
        return;
    }
    for p in x.chunks_exact_mut(3) {
        let g = luma(p);
        p.fill(g);
    }
}

/// Left–right flip of an HWC image.
fn hflip(x: &mut [u8], (h, w, c): (usize, usize, usize)) {
    for row in x.chunks_exact_mut(w * c).take(h) {
        for i in 0..w / 2 {
            for ch in 0..c {
                row.swap(i * c + ch, (w - 1 - i) * c + ch);
            }
        }
    }
}

/// The fractional box radius whose three passes have variance σ² (Pillow BoxBlur.c
/// `_gaussian_blur_radius`, after Gwosdek et al., SSVM 2011, the extended box filter).
pub(crate) fn box_radius(sigma: f64, passes: usize) -> f64 {
    let sigma2 = sigma * sigma / passes as f64;
    let l_box = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((l_box - 1.0) / 2.0).floor();
    let a =
        (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// One extended box blur of a line (edges extended): `out[i] = (Σ_{|d|≤r} x[i+d] + (R − r)·(x[i−r−1]
/// + x[i+r+1])) / (2R + 1)` with `r = ⌊R⌋` (Pillow BoxBlur.c `ImagingLineBoxBlur`).
pub(crate) fn box_line(src: &[f32], radius: f64, out: &mut [f32]) {
    let n = src.len() as isize;
    let r = radius.floor() as isize;
    let frac = (radius - r as f64) as f32;
    let norm = 1.0 / (2.0 * radius as f32 + 1.0);
    let at = |i: isize| src[i.clamp(0, n - 1) as usize];
    for (i, o) in out.iter_mut().enumerate() {
        let i = i as isize;
        let mut acc: f32 = (-r..=r).map(|d| at(i + d)).sum();
        acc += frac * (at(i - r - 1) + at(i + r + 1));
        *o = acc * norm;
    }
}

/// PIL `ImageFilter.GaussianBlur(radius=σ)`: three extended box blurs along rows, then three along
/// columns, each rounded back to u8 as PIL stores it. Differs from official: float instead of
/// Pillow's 24-bit fixed point, which can move a value by one level.
fn gaussian_blur(x: &mut [u8], (h, w, c): (usize, usize, usize), sigma: f64) {
    const PASSES: usize = 3;
    let radius = box_radius(sigma, PASSES);
    let mut line = Vec::new();
    let mut out = Vec::new();
    // Rows (stride c, length w), then columns (stride w·c, length h).
    for (len, count, start, step) in [
        (w, h, w * c, c), // line y: start y·w·c + ch, step c
        (h, w, c, w * c), // line x: start x·c + ch, step w·c
    ] {
        line.resize(len, 0.0);
        out.resize(len, 0.0);
        for k in 0..count {
            for ch in 0..c {
                let base = k * start + ch;
                for (i, v) in line.iter_mut().enumerate() {
                    *v = x[base + i * step] as f32;
                }
                for _ in 0..PASSES {
                    box_line(&line, radius, &mut out);
                    for (l, o) in line.iter_mut().zip(&out) {
                        *l = o.round().clamp(0.0, 255.0);
                    }
                }
                for (i, v) in line.iter().enumerate() {
                    x[base + i * step] = *v as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize, c: usize) -> Vec<u8> {
        (0..h * w * c).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Only the named step, always applied.
    fn only() -> StrongAugment {
        StrongAugment {
            crop: StrongCrop::Pad(0),
            jitter: ColorJitter {
                brightness: 0.0,
                contrast: 0.0,
                saturation: 0.0,
                hue: 0.0,
            },
            jitter_probability: 0.0,
            grayscale_probability: 0.0,
            blur_probability: 0.0,
            blur_sigma: (0.1, 2.0),
            hflip: false,
        }
    }

    #[test]
    fn pad_crop_shifts_pixels_with_zero_fill() {
        let img = ramp(5, 4, 3);
        let out = pad_crop(&img, (5, 4, 3), 2, 0, 4);
        // out(y, x) = in(y − 2, x + 2).
        for y in 0..5 {
            for x in 0..4 {
                for ch in 0..3 {
                    let want = if y >= 2 && x + 2 < 4 {
                        img[((y - 2) * 4 + x + 2) * 3 + ch]
                    } else {
                        0
                    };
                    assert_eq!(out[(y * 4 + x) * 3 + ch], want, "({y},{x},{ch})");
                }
            }
        }
        // With no padding the crop is the identity, whatever the seed.
        for seed in 0..5 {
            assert_eq!(only().apply(&img, (5, 4, 3), seed).unwrap(), img);
        }
    }

    #[test]
    fn blends_follow_pil() {
        // Brightness 1.5 of 100 → 150; of 200 → clipped 255; 0.5 of 3 → 1.5 truncated to 1.
        let mut x = vec![100, 200, 3];
        brightness(&mut x, 1.5);
        assert_eq!(x, [150, 255, 4]);
        let mut x = vec![3];
        brightness(&mut x, 0.5);
        assert_eq!(x, [1]);
        // Contrast on one channel: mean of (10, 30) = 20; factor 2 → (0, 40).
        let mut x = vec![10, 30];
        contrast(&mut x, 1, 2.0);
        assert_eq!(x, [0, 40]);
        // A constant image is a fixed point of contrast and saturation.
        let mut x = vec![77; 12];
        contrast(&mut x, 3, 1.4);
        saturation(&mut x, 3, 0.6);
        assert_eq!(x, vec![77; 12]);
        // Saturation 0 is grayscale; on one channel it does nothing.
        let mut x = vec![255, 0, 0, 0, 255, 0];
        saturation(&mut x, 3, 0.0);
        assert_eq!(x, [76, 76, 76, 150, 150, 150]);
        let mut x = vec![9, 200];
        saturation(&mut x, 1, 0.0);
        adjust_hue(&mut x, 1, 0.1);
        grayscale(&mut x, 1);
        assert_eq!(x, [9, 200]);
    }

    #[test]
    fn luma_is_pil_fixed_point() {
        assert_eq!(luma(&[255, 255, 255]), 255);
        assert_eq!(luma(&[255, 0, 0]), 76); // 0.299 · 255 = 76.2
        assert_eq!(luma(&[0, 255, 0]), 150); // 0.587 · 255 = 149.7
        assert_eq!(luma(&[0, 0, 255]), 29); // 0.114 · 255 = 29.1
    }

    #[test]
    fn hsv_round_trip_and_hue_rotation() {
        for rgb in [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [128, 128, 128],
            [0, 0, 0],
        ] {
            assert_eq!(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, "{rgb:?}");
        }
        assert_eq!(rgb_to_hsv([0, 255, 0]), [85, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 0, 255]), [170, 255, 255]);
        // A third of a turn takes red to (almost) green: shift int(85) → h = 85 → exactly 2/6.
        let mut x = vec![255, 0, 0];
        adjust_hue(&mut x, 3, 1.0 / 3.0 + 1e-6);
        assert_eq!(x, [0, 255, 0]);
        // A negative shift wraps: int(−86.0003) = −86 ≡ 170, red becomes blue.
        let mut x = vec![255, 0, 0];
        adjust_hue(&mut x, 3, -(86.0 / 255.0 + 1e-6));
        assert_eq!(x, [0, 0, 255]);
    }

    #[test]
    fn box_blur_radius_gives_the_gaussian_variance() {
        // Three extended box passes over an impulse have variance σ² (Gwosdek et al.).
        for sigma in [0.1, 0.5, 1.0, 1.7, 2.0] {
            let n = 41;
            let mut line = vec![0f32; n];
            line[20] = 1.0;
            let mut out = vec![0f32; n];
            let r = box_radius(sigma, 3);
            for _ in 0..3 {
                box_line(&line, r, &mut out);
                line.copy_from_slice(&out);
            }
            let mass: f32 = line.iter().sum();
            let var: f64 = line
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f64 * (i as f64 - 20.0).powi(2))
                .sum();
            assert!((mass - 1.0).abs() < 1e-5, "mass {mass}");
            assert!(
                (var - sigma * sigma).abs() < 1e-4,
                "σ {sigma}: variance {var}"
            );
        }
    }

    #[test]
    fn blur_keeps_constants_and_smooths_edges() {
        let mut x = vec![90u8; 6 * 7];
        gaussian_blur(&mut x, (6, 7, 1), 2.0);
        assert_eq!(x, vec![90; 42]);
        // A vertical step edge: blurred values lie between the sides and rise monotonically.
        let mut x: Vec<u8> = (0..8 * 8)
            .map(|i| if i % 8 < 4 { 0 } else { 240 })
            .collect();
        gaussian_blur(&mut x, (8, 8, 1), 1.5);
        let row = &x[24..32];
        assert!(row.windows(2).all(|p| p[0] <= p[1]), "{row:?}");
        assert!(row[3] > 0 && row[4] < 240, "{row:?}");
    }

    #[test]
    fn flip_and_grayscale() {
        let mut x = vec![1, 2, 3, 4, 5, 6, 7, 8, 9]; // 1×3×3
        hflip(&mut x, (1, 3, 3));
        assert_eq!(x, [7, 8, 9, 4, 5, 6, 1, 2, 3]);
        let aug = StrongAugment {
            grayscale_probability: 1.0,
            ..only()
        };
        let out = aug.apply(&ramp(4, 4, 3), (4, 4, 3), 3).unwrap();
        assert!(out.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn views_are_deterministic_and_differ() {
        let img = ramp(32, 32, 3);
        let aug = StrongAugment::cifar();
        let a = aug.view(&img, (32, 32, 3), 7, 0, 11).unwrap();
        assert_eq!(a, aug.view(&img, (32, 32, 3), 7, 0, 11).unwrap());
        assert_ne!(a, aug.view(&img, (32, 32, 3), 7, 1, 11).unwrap());
        assert_ne!(a, aug.view(&img, (32, 32, 3), 8, 0, 11).unwrap());
        let big = StrongAugment::imagenet(24);
        let b = big.apply(&ramp(40, 30, 3), (40, 30, 3), 1).unwrap();
        assert_eq!(b.len(), 24 * 24 * 3);
        let gray = aug.apply(&ramp(28, 28, 1), (28, 28, 1), 5).unwrap();
        assert_eq!(gray.len(), 28 * 28);
    }

    #[test]
    fn one_channel_jitter_is_brightness_and_contrast_only() {
        // With only saturation and hue spread, a gray image never changes.
        let aug = StrongAugment {
            jitter: ColorJitter {
                brightness: 0.0,
                contrast: 0.0,
                saturation: 0.4,
                hue: 0.1,
            },
            jitter_probability: 1.0,
            ..only()
        };
        let img = ramp(6, 6, 1);
        for seed in 0..10 {
            assert_eq!(aug.apply(&img, (6, 6, 1), seed).unwrap(), img);
        }
    }

    #[test]
    fn batch_is_the_normalised_per_image_views() {
        let (h, w) = (6, 5);
        let n = 4;
        let images: Vec<u8> = (0..n * h * w).map(|i| (i * 13 % 256) as u8).collect();
        let data = Dataset::new(
            "test",
            images,
            vec![0, 1, 0, 1],
            (h, w, 1),
            2,
            vec!["a".into(), "b".into()],
            (0..n).collect(),
        )
        .unwrap();
        let norm = Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let views = StrongViews::new(StrongAugment::cifar(), &norm, 9).unwrap();
        let t = views.batch(&data, &[3, 1], 2, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 1, h, w]);
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        for (k, &i) in [3usize, 1].iter().enumerate() {
            let img = StrongAugment::cifar()
                .view(data.image(i), (h, w, 1), 9, 2, i as u64)
                .unwrap();
            for (p, &v) in img.iter().enumerate() {
                let want = (v as f32 / 255.0 - 0.5) / 0.25;
                assert!((got[k * h * w + p] - want).abs() < 1e-6);
            }
        }
        assert!(matches!(
            views.batch(&data, &[4], 0, &Device::Cpu),
            Err(SadeError::SampleIndex { index: 4, len: 4 })
        ));
        let rgb = StrongViews::new(StrongAugment::cifar(), &Normalize::cifar(), 0).unwrap();
        assert!(matches!(
            rgb.batch(&data, &[0], 0, &Device::Cpu),
            Err(SadeError::Augment { .. })
        ));
    }

    #[test]
    fn bad_settings_and_inputs_are_errors() {
        let aug = StrongAugment::cifar();
        assert!(matches!(
            aug.apply(&[0; 5], (2, 2, 1), 0),
            Err(SadeError::ImageSize { got: 5, .. })
        ));
        assert!(aug.apply(&[0; 8], (2, 2, 2), 0).is_err());
        for bad in [
            StrongAugment {
                blur_probability: 1.5,
                ..StrongAugment::cifar()
            },
            StrongAugment {
                blur_sigma: (0.0, 2.0),
                ..StrongAugment::cifar()
            },
            StrongAugment {
                jitter: ColorJitter {
                    hue: 0.7,
                    ..StrongAugment::JITTER
                },
                ..StrongAugment::cifar()
            },
            StrongAugment::imagenet(0),
        ] {
            assert!(
                matches!(bad.check(8, 8, 3), Err(SadeError::Augment { .. })),
                "{bad:?}"
            );
        }
    }
}
