//! Streamed images: decoding a file to RGB, and the torchvision-on-PIL transforms of the
//! ImageNet-style recipes (docs/ride.md §6), computed as PIL computes them.
//!
//! The real benchmarks (ImageNet-LT: 115,846 training images, about 22 GB decoded at 256²;
//! iNaturalist 2018: 437,513) are read from their list files and decoded per sample on the
//! [`crate::Batcher`]'s worker threads, so memory does not grow with the data set.
//!
//! - [`decode_rgb`]: JPEG / PNG (any colour type) to 8-bit RGB, as PIL's `convert('RGB')`.
//! - [`tv_resized_crop_params`]: `RandomResizedCrop.get_params` (10 tries, then the centre-crop
//!   fallback), with Python's rounding.
//! - [`tv_resize_size`] and [`tv_center_crop_offsets`]: `Resize(int)` and `CenterCrop`.
//! - [`pil_resize`]: PIL's antialiased `BILINEAR` resampling, in its fixed-point arithmetic.
//! - [`ColorJitter`]: `ColorJitter(b, c, s, 0)` through PIL's `ImageEnhance`.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// A decoded image: 8-bit RGB, HWC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbPixels {
    /// `height · width · 3` bytes.
    pub pixels: Vec<u8>,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// Decodes an image file to 8-bit RGB, as `PIL.Image.open(path).convert('RGB')` (the official
/// loaders' `pil_loader`): grayscale is replicated, CMYK converted, alpha dropped.
///
/// The decoder is the `image` crate's, whose JPEG path is `zune-jpeg` (SIMD IDCT and colour
/// conversion, pure Rust, maintained with `image`): about as fast as libjpeg-turbo without a C
/// dependency. It has no reduced-scale (DCT-domain) decoding; `jpeg-decoder` has (`scale`), but
/// it is slower at full scale, and at 224² crops of ImageNet-sized JPEGs (about 500 × 375) the
/// crop's shorter side is rarely twice the output side, the least a 1/2 DCT scale needs to keep
/// the resampling exact, so it would seldom pay.
///
/// Errors name the file: [`DataError::Io`] when it cannot be read, [`DataError::Decode`] when the
/// decoder fails, [`DataError::BadImage`] for a truncated JPEG (no end-of-image marker after its
/// last scan: the decoder in non-strict mode would fill the missing part with grey, where PIL
/// raises "image file is truncated").
pub fn decode_rgb(path: &Path) -> Result<RgbPixels> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.is_empty() {
        return Err(DataError::BadImage {
            path: path.to_path_buf(),
            reason: "empty file".into(),
        });
    }
    if bytes.starts_with(&[0xFF, 0xD8]) && jpeg_truncated(&bytes) {
        return Err(DataError::BadImage {
            path: path.to_path_buf(),
            reason: "truncated JPEG (no end-of-image marker after the last scan)".into(),
        });
    }
    let img = image::load_from_memory(&bytes).map_err(|source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::BadImage {
            path: path.to_path_buf(),
            reason: format!("image is {w}x{h}"),
        });
    }
    Ok(RgbPixels {
        pixels: rgb.into_raw(),
        height: h as usize,
        width: w as usize,
    })
}

/// Whether a JPEG stream lacks an end-of-image marker (`FF D9`) after its last start-of-scan
/// (`FF DA`). Entropy-coded data stuffs every `FF` byte as `FF 00`, so neither marker can occur
/// inside a scan by accident.
fn jpeg_truncated(bytes: &[u8]) -> bool {
    let last = |m: u8| bytes.windows(2).rposition(|p| p[0] == 0xFF && p[1] == m);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (Some(_), None) => true,
        // No scan at all: let the decoder say what is wrong.
        (None, _) => false,
    }
}

/// Python's `round` (half to even), as torchvision's `int(round(x))`.
fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// torchvision `RandomResizedCrop.get_params(img, scale, ratio)`: `(top, left, height, width)`.
///
/// Up to ten tries: area fraction `U(scale)`, aspect `exp(U(log ratio))`, `w = round(√(A·r))`,
/// `h = round(√(A/r))`; the first that fits is placed uniformly (`randint(0, H − h + 1)`, then
/// the same for the left edge). Otherwise the fallback: the whole image with its aspect clamped
/// into `ratio` (`h = round(W / min ratio)` or `w = round(H · max ratio)`), centred with floor
/// division. Rounding is Python's (half to even). The draws come from `rng` (ChaCha8), not
/// torch's generator, so the crops match torchvision's in distribution, not draw for draw.
pub fn tv_resized_crop_params(
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
        let cw = py_round((target * aspect).sqrt());
        let ch = py_round((target / aspect).sqrt());
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        (py_round(w as f64 / ratio.0), w)
    } else if in_ratio > ratio.1 {
        (h, py_round(h as f64 * ratio.1))
    } else {
        (h, w)
    };
    // torchvision's values always lie in 1..=side; the clamp only guards degenerate ratios.
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size · long / short)` (truncated). Returns `(height, width)`.
pub fn tv_resize_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    }
}

/// torchvision `CenterCrop(crop)` offsets `(top, left)` on an `h × w` image at least `crop` a
/// side: `int(round((h − crop) / 2))` (Python rounding, so 16.5 → 16).
pub fn tv_center_crop_offsets(h: usize, w: usize, crop: usize) -> (usize, usize) {
    (
        py_round((h - crop) as f64 / 2.0),
        py_round((w - crop) as f64 / 2.0),
    )
}

/// PIL's fixed-point precision for 8-bit resampling (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// One axis of PIL's resampling: for every output index, the first input index, the number of
/// taps, and `ksize` fixed-point weights.
struct Taps {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

/// PIL `precompute_coeffs` for the bilinear (triangle) filter, support 1, over the input span
/// `0..in_size` to `out_size` samples, then `normalize_coeffs_8bpc`.
fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut pre = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, p) in pre.iter_mut().enumerate().take(n) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            let t = t.abs();
            *p = if t < 1.0 { 1.0 - t } else { 0.0 };
            ww += *p;
        }
        for (x, p) in pre.iter().enumerate().take(n) {
            let k = if ww != 0.0 { p / ww } else { *p };
            let f = k * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if k < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Taps {
        bounds,
        weights,
        ksize,
    }
}

/// PIL's `clip8`: the fixed-point sum shifted down, clamped to 0..=255.
#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.crop((left, top, left + cw, top + ch)).resize((ow, oh), BILINEAR)` on an HWC u8
/// image of `(h, w, c)`, returning only the window `(wy, wx, wh, ww)` of the resized image
/// (every output pixel's weights are its own, so the window is exactly what PIL's whole resize
/// followed by a crop gives, without computing the rest).
///
/// This is PIL's antialiased resampling (`ImagingResample`): a triangle filter stretched by the
/// downscale factor, normalised weights in 22-bit fixed point, a horizontal pass (rounded to
/// 8 bits) and then a vertical pass, each only where its size changes. Checked against Pillow
/// 13.0.0 (fixtures/pil): byte for byte when one axis changes; when both do, that build picks
/// the order of the two passes per image (its main-branch source always goes horizontal first,
/// as here), so a value may differ by 1.
///
/// # Panics
/// If the crop lies outside the image or the window outside the output, like slice indexing.
pub fn pil_resize(
    img: &[u8],
    (h, w, c): (usize, usize, usize),
    crop: (usize, usize, usize, usize),
    out_size: (usize, usize),
    window: (usize, usize, usize, usize),
) -> Vec<u8> {
    resize_with(Simd::detect(), img, (h, w, c), crop, out_size, window)
}

/// The instruction sets [`pil_resize`] may use, best first; every level gives the same bytes
/// (integer sums, computed in another order, are the same sums).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the SIMD parts are x86-only
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    /// Portable Rust, any CPU.
    Scalar,
    /// AVX2: two output pixels of the horizontal pass per 256-bit register; the vertical pass
    /// compiled for AVX2.
    Avx2,
    /// AVX-512 F + BW (and VL, for the masked 128-bit store): four output pixels of the
    /// horizontal pass per 512-bit register; the vertical pass as [`Simd::Avx2`].
    Avx512,
}

impl Simd {
    /// The best level this CPU runs (checked at run time: the crate is built for baseline
    /// x86-64).
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Scalar
    }
}

/// [`pil_resize`] at a given [`Simd`] level, which the CPU must support (`Simd::detect` or
/// lower).
fn resize_with(
    simd: Simd,
    img: &[u8],
    (h, w, c): (usize, usize, usize),
    (top, left, ch, cw): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    (wy, wx, wh, ww): (usize, usize, usize, usize),
) -> Vec<u8> {
    assert!(top + ch <= h && left + cw <= w && wy + wh <= oh && wx + ww <= ow);
    let hor = (ow != cw).then(|| taps(cw, ow));
    let ver = (oh != ch).then(|| taps(ch, oh));
    // Rows of the crop the vertical pass reads.
    let (r0, r1) = match &ver {
        Some(v) => {
            let rows = &v.bounds[wy..wy + wh];
            (
                rows.iter().map(|b| b.0).min().unwrap_or(0),
                rows.iter().map(|b| b.0 + b.1).max().unwrap_or(0),
            )
        }
        None => (wy, wy + wh),
    };
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut temp = vec![0u8; (r1 - r0) * ww * c];
    // The RGB taps laid out for the SIMD kernels once, for all rows.
    let lanes = match simd {
        Simd::Scalar => 0,
        Simd::Avx2 => 2,
        Simd::Avx512 => 4,
    };
    let groups = match &hor {
        Some(t) if c == 3 && lanes > 0 => Some(RgbGroups::new(t, wx, ww, lanes)),
        _ => None,
    };
    for r in r0..r1 {
        let start = ((top + r) * w + left) * c;
        let row = &img[start..start + cw * c];
        let out = &mut temp[(r - r0) * ww * c..(r - r0 + 1) * ww * c];
        match &hor {
            None => out.copy_from_slice(&row[wx * c..(wx + ww) * c]),
            // RGB: the three channels in one pass over the taps.
            Some(t) if c == 3 => {
                let pass = HorizontalRgb {
                    // From the row's start to the image's end: the SIMD kernels may read
                    // past the row (see `RgbGroups`), never past this.
                    src: &img[start..],
                    row,
                    taps: t,
                    wx,
                    half,
                };
                match (&groups, simd) {
                    #[cfg(target_arch = "x86_64")]
                    (Some(g), Simd::Avx2) => {
                        // SAFETY: the caller's level is one this CPU supports.
                        unsafe { pass.run_avx2(g, out) }
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Some(g), Simd::Avx512) => {
                        // SAFETY: as above.
                        unsafe { pass.run_avx512(g, out) }
                    }
                    _ => pass.run(out),
                }
            }
            Some(t) => {
                for j in 0..ww {
                    let (xmin, n) = t.bounds[wx + j];
                    let k = &t.weights[(wx + j) * t.ksize..(wx + j) * t.ksize + n];
                    let src = &row[xmin * c..(xmin + n) * c];
                    for ch in 0..c {
                        let mut ss = half;
                        for (x, &kx) in k.iter().enumerate() {
                            ss += src[x * c + ch] as i32 * kx;
                        }
                        out[j * c + ch] = clip8(ss);
                    }
                }
            }
        }
    }
    let stride = ww * c;
    match &ver {
        None => temp,
        Some(t) => {
            let mut out = vec![0u8; wh * stride];
            let pass = VerticalPass {
                temp: &temp,
                taps: t,
                rows: (wy, r0),
                stride,
                half,
            };
            #[cfg(target_arch = "x86_64")]
            if simd != Simd::Scalar {
                // SAFETY: every level above Scalar implies AVX2.
                unsafe { pass.run_avx2(&mut out) };
                return out;
            }
            pass.run(&mut out);
            out
        }
    }
}

/// The horizontal pass of [`pil_resize`] on one RGB row: output pixel `j` of the window from
/// the taps of output column `wx + j` over the crop row `row`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the SIMD parts are x86-only
struct HorizontalRgb<'a> {
    /// The image from the crop row's first byte to its end (`row` is its start).
    src: &'a [u8],
    row: &'a [u8],
    taps: &'a Taps,
    wx: usize,
    half: i32,
}

impl HorizontalRgb<'_> {
    /// Output pixel `j`, in scalar code: PIL's loop, the three channels at once.
    #[inline(always)]
    fn pixel(&self, j: usize) -> [u8; 3] {
        let t = self.taps;
        let x = self.wx + j;
        let (xmin, n) = t.bounds[x];
        let k = &t.weights[x * t.ksize..x * t.ksize + n];
        let src = &self.row[xmin * 3..(xmin + n) * 3];
        let (mut r, mut g, mut b) = (self.half, self.half, self.half);
        for (p, &kx) in src.chunks_exact(3).zip(k) {
            r += p[0] as i32 * kx;
            g += p[1] as i32 * kx;
            b += p[2] as i32 * kx;
        }
        [clip8(r), clip8(g), clip8(b)]
    }

    /// The whole row in scalar code (any CPU).
    fn run(&self, out: &mut [u8]) {
        for (j, o) in out.chunks_exact_mut(3).enumerate() {
            o.copy_from_slice(&self.pixel(j));
        }
    }

    /// The row with AVX2, two output pixels (one per 128-bit half) at a time.
    ///
    /// Exact: each 32-bit lane holds one channel's sum `half + Σ p·k` with the 8-bit pixel
    /// zero-extended and the scalar code's 32-bit weight, multiplied by `vpmulld` (the low 32
    /// bits of the product, here the whole product, as in the scalar `i32` code); the taps are
    /// added in the same order (extra taps add `p·0 = 0`); and `vpackssdw` + `vpackuswb` after
    /// the shift saturate to 0..=255 exactly as `clip8`'s clamp.
    ///
    /// # Safety
    /// The CPU must have AVX2; `g` must be `RgbGroups::new(self.taps, self.wx, out.len() / 3, 2)`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, g: &RgbGroups, out: &mut [u8]) {
        debug_assert_eq!(g.lanes, 2);
        // SAFETY: the caller's contract; a tap count the kernel unrolls (short, the common
        // case), or the general loop.
        unsafe {
            match g.taps {
                1 => self.avx2::<1>(g, out),
                2 => self.avx2::<2>(g, out),
                3 => self.avx2::<3>(g, out),
                4 => self.avx2::<4>(g, out),
                5 => self.avx2::<5>(g, out),
                _ => self.avx2::<0>(g, out),
            }
        }
    }

    /// [`HorizontalRgb::run_avx2`] for `T` taps per pixel (`0`: `g.taps`, any number).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn avx2<const T: usize>(&self, g: &RgbGroups, out: &mut [u8]) {
        use std::arch::x86_64::*;
        let taps = if T > 0 { T } else { g.taps };
        let masks = tap_masks().map(|m| _mm256_broadcastsi128_si256(m));
        let per_group = taps * 8;
        for (gi, grp) in g.groups.iter().enumerate() {
            let j = gi * 2;
            if grp.need > self.src.len() {
                out[j * 3..j * 3 + 3].copy_from_slice(&self.pixel(j));
                out[j * 3 + 3..j * 3 + 6].copy_from_slice(&self.pixel(j + 1));
                continue;
            }
            let p = self.src.as_ptr();
            let wts = &g.weights[gi * per_group..(gi + 1) * per_group];
            let mut acc = _mm256_set1_epi32(self.half);
            let mut x = 0;
            while x < taps {
                // SAFETY: `grp.need <= src.len()` bounds these 16-byte loads (`RgbGroups`).
                let v = unsafe {
                    _mm256_loadu2_m128i(
                        p.add(grp.off[1] + 3 * x) as *const __m128i,
                        p.add(grp.off[0] + 3 * x) as *const __m128i,
                    )
                };
                for (i, &m) in masks.iter().enumerate().take(taps - x) {
                    let px = _mm256_shuffle_epi8(v, m);
                    // SAFETY: 8 weights at `(x + i) * 8`, inside `wts` as `x + i < taps`.
                    let k = unsafe {
                        _mm256_loadu_si256(wts.as_ptr().add((x + i) * 8) as *const __m256i)
                    };
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, k));
                }
                x += TAPS_PER_LOAD;
            }
            let s = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(acc);
            let s = _mm256_packs_epi32(s, s);
            let s = _mm256_packus_epi16(s, s);
            let lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(s)).to_le_bytes();
            let hi = _mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(s)).to_le_bytes();
            out[j * 3..j * 3 + 3].copy_from_slice(&lo[..3]);
            out[j * 3 + 3..j * 3 + 6].copy_from_slice(&hi[..3]);
        }
        for j in g.groups.len() * 2..out.len() / 3 {
            out[j * 3..j * 3 + 3].copy_from_slice(&self.pixel(j));
        }
    }

    /// The row with AVX-512, four output pixels (one per 128-bit quarter) at a time; exact for
    /// the reasons [`HorizontalRgb::run_avx2`] gives (the clamp here is `vpmaxsd` + `vpminsd`).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VL; `g` must be
    /// `RgbGroups::new(self.taps, self.wx, out.len() / 3, 4)`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn run_avx512(&self, g: &RgbGroups, out: &mut [u8]) {
        debug_assert_eq!(g.lanes, 4);
        // SAFETY: as in `run_avx2`.
        unsafe {
            match g.taps {
                1 => self.avx512::<1>(g, out),
                2 => self.avx512::<2>(g, out),
                3 => self.avx512::<3>(g, out),
                4 => self.avx512::<4>(g, out),
                5 => self.avx512::<5>(g, out),
                _ => self.avx512::<0>(g, out),
            }
        }
    }

    /// [`HorizontalRgb::run_avx512`] for `T` taps per pixel (`0`: `g.taps`, any number).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn avx512<const T: usize>(&self, g: &RgbGroups, out: &mut [u8]) {
        use std::arch::x86_64::*;
        let taps = if T > 0 { T } else { g.taps };
        let masks = tap_masks().map(|m| _mm512_broadcast_i32x4(m));
        // The first three bytes of each pixel's 32-bit lane, packed to 12 bytes.
        let compact = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
        let per_group = taps * 16;
        for (gi, grp) in g.groups.iter().enumerate() {
            let j = gi * 4;
            if grp.need > self.src.len() {
                for jj in j..j + 4 {
                    out[jj * 3..jj * 3 + 3].copy_from_slice(&self.pixel(jj));
                }
                continue;
            }
            let p = self.src.as_ptr();
            let wts = &g.weights[gi * per_group..(gi + 1) * per_group];
            let mut acc = _mm512_set1_epi32(self.half);
            let mut x = 0;
            while x < taps {
                // SAFETY: `grp.need <= src.len()` bounds these 16-byte loads (`RgbGroups`).
                let v = unsafe {
                    let ld =
                        |l: usize| _mm_loadu_si128(p.add(grp.off[l] + 3 * x) as *const __m128i);
                    let v = _mm512_castsi128_si512(ld(0));
                    let v = _mm512_inserti32x4::<1>(v, ld(1));
                    let v = _mm512_inserti32x4::<2>(v, ld(2));
                    _mm512_inserti32x4::<3>(v, ld(3))
                };
                for (i, &m) in masks.iter().enumerate().take(taps - x) {
                    let px = _mm512_shuffle_epi8(v, m);
                    // SAFETY: 16 weights at `(x + i) * 16`, inside `wts` as `x + i < taps`.
                    let k = unsafe {
                        _mm512_loadu_si512(wts.as_ptr().add((x + i) * 16) as *const __m512i)
                    };
                    acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(px, k));
                }
                x += TAPS_PER_LOAD;
            }
            let s = _mm512_srai_epi32::<{ PRECISION_BITS }>(acc);
            // Clamped to 0..=255 like `clip8`, then the low byte of each lane.
            let s = _mm512_max_epi32(s, _mm512_setzero_si512());
            let s = _mm512_min_epi32(s, _mm512_set1_epi32(255));
            let b = _mm_shuffle_epi8(_mm512_cvtepi32_epi8(s), compact);
            let dst = &mut out[j * 3..j * 3 + 12];
            // SAFETY: the mask writes the 12 bytes of `dst` only.
            unsafe { _mm_mask_storeu_epi8(dst.as_mut_ptr() as *mut i8, 0x0fff, b) };
        }
        for j in g.groups.len() * 4..out.len() / 3 {
            out[j * 3..j * 3 + 3].copy_from_slice(&self.pixel(j));
        }
    }
}

/// Taps one 16-byte load covers (5 RGB pixels are 15 bytes).
const TAPS_PER_LOAD: usize = 5;

/// `pshufb` masks: mask `i` zero-extends the R, G, B bytes of tap `i` of a 16-byte load into
/// 32-bit lanes 0..3, lane 3 zero.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tap_masks() -> [std::arch::x86_64::__m128i; TAPS_PER_LOAD] {
    use std::arch::x86_64::*;
    std::array::from_fn(|i| {
        let b = 3 * i as i8;
        // SAFETY: SSE2 is part of baseline x86-64.
        unsafe {
            _mm_setr_epi8(
                b,
                -1,
                -1,
                -1,
                b + 1,
                -1,
                -1,
                -1,
                b + 2,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
            )
        }
    })
}

/// The horizontal RGB taps of a window laid out for the SIMD kernels, once per resize: output
/// pixels in groups of `lanes` (the last `ww % lanes` are left to scalar code), every pixel
/// running over the same number of taps, the most any pixel has, its missing taps with weight
/// 0 (one count per resize keeps the kernels' loops branch-predictable and unrollable).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the SIMD parts are x86-only
struct RgbGroups {
    lanes: usize,
    /// Taps per pixel.
    taps: usize,
    groups: Vec<RgbGroup>,
    /// Per group, per tap: each pixel's weight four times (its R, G, B and spare lane).
    weights: Vec<i32>,
}

/// One group of [`RgbGroups`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the SIMD parts are x86-only
struct RgbGroup {
    /// Byte offset of each pixel's first tap in the crop row.
    off: [usize; 4],
    /// Bytes from the crop row's start its 16-byte loads reach: taps past a pixel's own (weight
    /// 0) and the spare 16th byte may lie past the row, so the kernels check this against the
    /// image's end and leave a group that reaches past it to scalar code (only near the end of
    /// the image's last row).
    need: usize,
}

impl RgbGroups {
    fn new(t: &Taps, wx: usize, ww: usize, lanes: usize) -> RgbGroups {
        let ngroups = ww / lanes;
        let px = |j: usize| t.bounds[wx + j];
        let taps = (0..ngroups * lanes).map(|j| px(j).1).max().unwrap_or(0);
        let mut groups = Vec::with_capacity(ngroups);
        let mut weights = Vec::with_capacity(ngroups * taps * lanes * 4);
        for j in (0..ngroups).map(|g| g * lanes) {
            let mut off = [0; 4];
            for (l, o) in off.iter_mut().enumerate().take(lanes) {
                *o = px(j + l).0 * 3;
            }
            let need = match taps {
                0 => 0,
                _ => {
                    off.iter().max().unwrap()
                        + 3 * TAPS_PER_LOAD * ((taps - 1) / TAPS_PER_LOAD)
                        + 16
                }
            };
            for x in 0..taps {
                for l in 0..lanes {
                    let (_, n) = px(j + l);
                    let k = if x < n {
                        t.weights[(wx + j + l) * t.ksize + x]
                    } else {
                        0
                    };
                    weights.extend([k; 4]);
                }
            }
            groups.push(RgbGroup { off, need });
        }
        RgbGroups {
            lanes,
            taps,
            groups,
            weights,
        }
    }
}

/// The vertical pass of [`pil_resize`]: output row `i` from the taps of output row `wy + i`
/// over the horizontally resized rows (`temp`, its first row is crop row `r0`).
struct VerticalPass<'a> {
    temp: &'a [u8],
    taps: &'a Taps,
    rows: (usize, usize),
    stride: usize,
    half: i32,
}

impl VerticalPass<'_> {
    #[inline(always)]
    fn run(&self, out: &mut [u8]) {
        let (wy, r0) = self.rows;
        let (t, stride) = (self.taps, self.stride);
        let mut acc = vec![0i32; stride];
        for (i, out_row) in out.chunks_exact_mut(stride).enumerate() {
            let (ymin, n) = t.bounds[wy + i];
            let k = &t.weights[(wy + i) * t.ksize..(wy + i) * t.ksize + n];
            acc.fill(self.half);
            for (y, &ky) in k.iter().enumerate() {
                let src = &self.temp[(ymin + y - r0) * stride..(ymin + y - r0 + 1) * stride];
                for (a, &s) in acc.iter_mut().zip(src) {
                    *a += s as i32 * ky;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
    }

    /// [`VerticalPass::run`] compiled for AVX2: the crate is built for baseline x86-64, where
    /// the 32-bit multiply of this loop has no SSE2 instruction and is emulated.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, out: &mut [u8]) {
        self.run(out)
    }
}

/// torchvision `ColorJitter(brightness, contrast, saturation, hue = 0)` on a PIL RGB image:
/// factors drawn uniformly in `[max(0, 1 − v), 1 + v]`, applied in a random order
/// (`torch.randperm(4)`; the hue slot does nothing), each through PIL's `ImageEnhance`.
/// ImageNet-LT and Places-LT train with `(0.4, 0.4, 0.4)` (docs/ride.md §6); iNaturalist 2018
/// without.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    /// Brightness strength (0: off).
    pub brightness: f32,
    /// Contrast strength (0: off).
    pub contrast: f32,
    /// Saturation strength (0: off).
    pub saturation: f32,
}

impl ColorJitter {
    /// The ImageNet-LT / Places-LT jitter, `ColorJitter(0.4, 0.4, 0.4, 0)`.
    pub fn imagenet() -> ColorJitter {
        ColorJitter {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
        }
    }

    /// Fails unless every strength is finite and non-negative.
    pub fn check(&self) -> Result<()> {
        for v in [self.brightness, self.contrast, self.saturation] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(DataError::BadParameter {
                    name: "colour jitter",
                    value: format!("{self:?}"),
                    reason: "strengths must be finite and non-negative".into(),
                });
            }
        }
        Ok(())
    }

    /// Draws the order and the factors: `(order, [brightness, contrast, saturation])`, where
    /// `order` is a permutation of `0..4` (0 brightness, 1 contrast, 2 saturation, 3 hue) and a
    /// factor is `None` when its strength is 0, as torchvision's `get_params`.
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> ([usize; 4], [Option<f32>; 3]) {
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        let mut f = [None; 3];
        for (slot, v) in f
            .iter_mut()
            .zip([self.brightness, self.contrast, self.saturation])
        {
            if v > 0.0 {
                *slot = Some(rng.random_range((1.0 - v).max(0.0)..=1.0 + v));
            }
        }
        (order, f)
    }

    /// Draws ([`ColorJitter::draw`]) and applies the jitter to an RGB HWC image in place.
    ///
    /// The result is that of [`adjust_brightness`], [`adjust_contrast`] and
    /// [`adjust_saturation`] applied one after the other in the drawn order (tested equal), in
    /// fewer passes over the image: brightness and contrast are value tables, so consecutive
    /// ones are composed into one table (contrast's grey level read through the pending table),
    /// and a pending table is applied inside the saturation pass rather than before it.
    pub fn apply(&self, rgb: &mut [u8], rng: &mut ChaCha8Rng) {
        let (order, f) = self.draw(rng);
        // `pending[v]`: what the value-table steps so far make of an input value `v`.
        let mut pending: Option<[u8; 256]> = None;
        for op in order {
            match (op, f.get(op).copied().flatten()) {
                (0, Some(b)) => pending = Some(compose(pending, &blend_lut(0, b))),
                (1, Some(c)) => {
                    let mean = mean_luma(rgb, pending.as_ref());
                    pending = Some(compose(pending, &blend_lut(mean, c)));
                }
                (2, Some(s)) => {
                    saturate_through(rgb, pending.take().as_ref(), s);
                }
                _ => {}
            }
        }
        if let Some(t) = pending {
            for v in rgb.iter_mut() {
                *v = t[*v as usize];
            }
        }
    }
}

/// The table of `second ∘ first` (`first` absent: the identity).
fn compose(first: Option<[u8; 256]>, second: &[u8; 256]) -> [u8; 256] {
    match first {
        None => *second,
        Some(f) => f.map(|v| second[v as usize]),
    }
}

/// Contrast's grey level `int(mean(L) + 0.5)` of the image as `table` would leave it.
fn mean_luma(rgb: &[u8], table: Option<&[u8; 256]>) -> u8 {
    let n = rgb.len() / 3;
    if n == 0 {
        return 0;
    }
    let sum: u64 = match table {
        None => rgb.chunks_exact(3).map(|p| luma(p) as u64).sum(),
        Some(t) => rgb
            .chunks_exact(3)
            .map(|p| luma(&[t[p[0] as usize], t[p[1] as usize], t[p[2] as usize]]) as u64)
            .sum(),
    };
    (sum as f64 / n as f64 + 0.5) as u8
}

/// [`adjust_saturation`] of the image as `table` would leave it, in one pass.
fn saturate_through(rgb: &mut [u8], table: Option<&[u8; 256]>, f: f32) {
    match table {
        None => adjust_saturation(rgb, f),
        Some(t) => {
            for p in rgb.chunks_exact_mut(3) {
                let q = [t[p[0] as usize], t[p[1] as usize], t[p[2] as usize]];
                let l = luma(&q);
                for (v, &x) in p.iter_mut().zip(&q) {
                    *v = blend(l, x, f);
                }
            }
        }
    }
}

/// PIL `Image.blend(degenerate, image, alpha)` for one value: `deg + α·(v − deg)` in float32,
/// truncated and clamped to 0..=255 (`ImagingBlend`).
#[inline]
fn blend(deg: u8, v: u8, alpha: f32) -> u8 {
    let t = deg as f32 + alpha * (v as i32 - deg as i32) as f32;
    // Rust's float → u8 `as` truncates toward zero and saturates at 0 and 255: exactly PIL's
    // truncate-and-clamp, without branches (the saturation blend runs on every value).
    t as u8
}

/// PIL's RGB → L: `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`.
#[inline]
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// The 256-entry table of `v ↦ blend(deg, v, f)`.
fn blend_lut(deg: u8, f: f32) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (v, o) in t.iter_mut().enumerate() {
        *o = blend(deg, v as u8, f);
    }
    t
}

/// `ImageEnhance.Brightness(img).enhance(f)`: a blend with black.
pub fn adjust_brightness(rgb: &mut [u8], f: f32) {
    let t = blend_lut(0, f);
    for v in rgb.iter_mut() {
        *v = t[*v as usize];
    }
}

/// `ImageEnhance.Contrast(img).enhance(f)`: a blend with the grey `int(mean(L) + 0.5)`.
pub fn adjust_contrast(rgb: &mut [u8], f: f32) {
    if rgb.len() < 3 {
        return;
    }
    let t = blend_lut(mean_luma(rgb, None), f);
    for v in rgb.iter_mut() {
        *v = t[*v as usize];
    }
}

/// `ImageEnhance.Color(img).enhance(f)`: a blend with the image's own grey (`convert('L')`).
pub fn adjust_saturation(rgb: &mut [u8], f: f32) {
    for p in rgb.chunks_exact_mut(3) {
        let l = luma(p);
        for v in p.iter_mut() {
            *v = blend(l, *v, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The fused jitter gives exactly the three PIL steps applied one by one in the drawn
    /// order, for every order (many seeds) on a random image.
    #[test]
    fn fused_jitter_equals_the_steps_in_order() {
        let jitter = ColorJitter::imagenet();
        let mut img_rng = ChaCha8Rng::seed_from_u64(7);
        let img: Vec<u8> = (0..37 * 23 * 3).map(|_| img_rng.random()).collect();
        let mut orders = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut fused = img.clone();
            jitter.apply(&mut fused, &mut ChaCha8Rng::seed_from_u64(seed));
            let (order, f) = jitter.draw(&mut ChaCha8Rng::seed_from_u64(seed));
            orders.insert(order);
            let mut steps = img.clone();
            for op in order {
                match (op, f.get(op).copied().flatten()) {
                    (0, Some(b)) => adjust_brightness(&mut steps, b),
                    (1, Some(c)) => adjust_contrast(&mut steps, c),
                    (2, Some(s)) => adjust_saturation(&mut steps, s),
                    _ => {}
                }
            }
            assert_eq!(fused, steps, "seed {seed}, order {order:?}");
        }
        assert_eq!(orders.len(), 24, "every order of the four steps was drawn");
    }

    /// The branch-free blend is PIL's truncate-then-clamp for every pair of values and for
    /// factors below 0, between 0 and 1, and far above (where the clamps bite).
    #[test]
    fn blend_is_pils_truncate_and_clamp() {
        for alpha in [-0.7f32, 0.0, 0.6, 1.0, 1.4, 7.3, 1e9] {
            for deg in 0..=255u8 {
                for v in 0..=255u8 {
                    let t = deg as f32 + alpha * (v as i32 - deg as i32) as f32;
                    let want = if t <= 0.0 {
                        0
                    } else if t >= 255.0 {
                        255
                    } else {
                        t.trunc() as i32 as u8
                    };
                    assert_eq!(blend(deg, v, alpha), want, "deg {deg} v {v} alpha {alpha}");
                }
            }
        }
    }

    #[test]
    fn pil_taps_match_hand_computed_weights() {
        // 4 → 2: scale 2, support 2; output 0 has centre 1, taps x = 0, 1, 2 with triangle
        // weights 0.75, 0.75, 0.25 (over 1.75).
        let t = taps(4, 2);
        assert_eq!(t.ksize, 5);
        assert_eq!(t.bounds, [(0, 3), (1, 3)]);
        let one = (1u32 << PRECISION_BITS) as f64;
        let want = [0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75];
        for (k, w) in t.weights[..3].iter().zip(want) {
            assert_eq!(*k, (0.5 + w * one) as i32);
        }
        // A 1-row ramp: (0·0.75 + 100·0.75 + 200·0.25) / 1.75 = 71.43 → 71 (round-half-up in
        // fixed point); (100·0.25 + 200·0.75 + 255·0.75) / 1.75 = 209.3 → 209.
        let row = [0u8, 100, 200, 255];
        let out = pil_resize(&row, (1, 4, 1), (0, 0, 1, 4), (1, 2), (0, 0, 1, 2));
        assert_eq!(out, [71, 209]);
        // Upscaling 2 → 4 is plain bilinear with half-pixel centres: 0, 25, 75, 100.
        let out = pil_resize(&[0, 100], (1, 2, 1), (0, 0, 1, 2), (1, 4), (0, 0, 1, 4));
        assert_eq!(out, [0, 25, 75, 100]);
        // Same size on both axes is a copy of the crop.
        let img: Vec<u8> = (0..30).collect();
        let out = pil_resize(&img, (5, 6, 1), (1, 2, 3, 3), (3, 3), (0, 0, 3, 3));
        assert_eq!(out, [8, 9, 10, 14, 15, 16, 20, 21, 22]);
    }

    #[test]
    fn torchvision_sizes_use_python_rounding() {
        // Resize(256) of 500×375 (w×h): 256 × 500/375 = 341.33 → 341.
        assert_eq!(tv_resize_size(375, 500, 256), (256, 341));
        assert_eq!(tv_resize_size(500, 375, 256), (341, 256));
        // CenterCrop(224) of 256×341: (341 − 224)/2 = 58.5 → 58 (half to even), top 16.
        assert_eq!(tv_center_crop_offsets(256, 341, 224), (16, 58));
        assert_eq!(tv_center_crop_offsets(227, 229, 224), (2, 2)); // 1.5 → 2, 2.5 → 2
    }

    #[test]
    fn resized_crop_fallback_is_the_ratio_clamped_centre() {
        // A 1×100 strip: no try fits (h ≤ 1 needs w ≤ 1.33 at area ≥ 8), so the fallback:
        // in_ratio 100 > 4/3 → h = 1, w = round(1 · 4/3) = 1, centred at (0, 49).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(
            tv_resized_crop_params(1, 100, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng),
            (0, 49, 1, 1)
        );
        // 10×2: in_ratio 0.2 < 3/4 → w = 2, h = round(2 / 0.75) = round(2.67) = 3, top (10−3)/2 = 3.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(
            tv_resized_crop_params(10, 2, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng),
            (3, 0, 3, 2)
        );
    }

    #[test]
    fn enhance_ops_follow_pil() {
        let mut px = [10u8, 200, 100];
        adjust_brightness(&mut px, 1.5);
        assert_eq!(px, [15, 255, 150]); // 15.0, 300 → 255, 150.0
                                        // PIL truncates rather than rounds: 0.5 · 7 = 3.5 → 3.
        let mut px = [7u8, 9, 1];
        adjust_brightness(&mut px, 0.5);
        assert_eq!(px, [3, 4, 0]);
        // Luma of (10, 200, 100): (195950 + 7694000 + 747100 + 32768) >> 16 = 132.
        assert_eq!(luma(&[10, 200, 100]), 132);
        let mut px = [10u8, 200, 100];
        adjust_saturation(&mut px, 0.5);
        // 132 + 0.5·(10 − 132) = 71; 132 + 34 = 166; 132 − 16 = 116.
        assert_eq!(px, [71, 166, 116]);
        // Contrast: mean luma of two pixels (0 and 255 grey) = 127.5 → int(128.0) = 128.
        let mut px = [0u8, 0, 0, 255, 255, 255];
        adjust_contrast(&mut px, 0.5);
        assert_eq!(px, [64, 64, 64, 191, 191, 191]); // 128 − 64, 128 + 63.5 → 191
    }

    #[test]
    fn truncation_marker_rule() {
        let ok = [0xFF, 0xD8, 0xFF, 0xDA, 1, 0xFF, 0x00, 2, 0xFF, 0xD9];
        assert!(!jpeg_truncated(&ok));
        assert!(jpeg_truncated(&ok[..8]));
    }

    /// Every [`Simd`] level this CPU runs, lowest first.
    fn levels() -> Vec<Simd> {
        let best = Simd::detect();
        [Simd::Scalar, Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&s| s as u8 <= best as u8)
            .collect()
    }

    /// The SIMD horizontal (and vertical) passes give exactly the scalar bytes: random images
    /// 1..600 wide (RGB mostly, also 1 and 4 channels), random crops (half of them reaching
    /// the image's last pixel, where the kernels fall back to scalar code near the end),
    /// output sizes from 1 to twice the crop (up- and downscaling, up to 600× fewer taps, so
    /// several 16-byte loads per pixel) and random windows, at every level the CPU has.
    #[test]
    fn simd_resize_equals_scalar() {
        let levels = levels();
        eprintln!("resize levels checked: {levels:?}");
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for case in 0..1500 {
            let w = rng.random_range(1..=600);
            let h = rng.random_range(1..=12);
            let c = [3, 3, 3, 3, 1, 4][case % 6];
            let img: Vec<u8> = (0..h * w * c).map(|_| rng.random()).collect();
            let (ch, cw) = (rng.random_range(1..=h), rng.random_range(1..=w));
            let (top, left) = if rng.random_bool(0.5) {
                (h - ch, w - cw)
            } else {
                (rng.random_range(0..=h - ch), rng.random_range(0..=w - cw))
            };
            let ow = match rng.random_range(0..4) {
                0 => cw,
                1 => rng.random_range(1..=cw.min(8)),
                _ => rng.random_range(1..=2 * cw),
            };
            let oh = rng.random_range(1..=2 * ch);
            let (wh, ww) = (rng.random_range(1..=oh), rng.random_range(1..=ow));
            let (wy, wx) = if rng.random_bool(0.3) {
                (0, 0)
            } else {
                (rng.random_range(0..=oh - wh), rng.random_range(0..=ow - ww))
            };
            let args = ((h, w, c), (top, left, ch, cw), (oh, ow), (wy, wx, wh, ww));
            let want = resize_with(Simd::Scalar, &img, args.0, args.1, args.2, args.3);
            for &simd in &levels[1..] {
                let got = resize_with(simd, &img, args.0, args.1, args.2, args.3);
                assert!(got == want, "{simd:?} differs from scalar on {args:?}");
            }
        }
    }
}
