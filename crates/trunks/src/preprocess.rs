//! What turns a u8 image into a trunk's input: resize, centre crop, rescale, normalise — read
//! from the model's `preprocessor_config.json` when it has one, else the family's defaults.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{Family, TrunkConfig};
use crate::error::{io, Result, TrunkError};

/// How an image is resized before the crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// To exactly `height` × `width` (ViT's processor).
    Exact {
        /// Output height.
        height: usize,
        /// Output width.
        width: usize,
    },
    /// The shorter side to this many pixels, the longer `⌊n · long / short⌋` (CLIP, DINOv2).
    ShortestEdge(usize),
}

/// The resampling filter (PIL's codes in `preprocessor_config.json`'s `resample`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// 0.
    Nearest,
    /// 1.
    Lanczos,
    /// 2.
    Bilinear,
    /// 3 (Catmull-Rom, PIL's a = −0.5).
    Bicubic,
}

impl Resample {
    fn from_pil(code: u64) -> Option<Self> {
        Some(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            _ => return None,
        })
    }

    fn filter(self) -> FilterType {
        match self {
            Resample::Nearest => FilterType::Nearest,
            Resample::Lanczos => FilterType::Lanczos3,
            Resample::Bilinear => FilterType::Triangle,
            Resample::Bicubic => FilterType::CatmullRom,
        }
    }
}

/// A trunk's preprocessing, in the order transformers' image processors apply it: resize,
/// centre crop, `x · rescale`, `(x − mean) / std` per channel. Grey images are repeated to three
/// channels first (`do_convert_rgb`).
///
/// Differs from transformers: resizing uses the `image` crate's filters (Catmull-Rom for PIL's
/// bicubic, a triangle for bilinear) instead of PIL's, so a resized pixel may differ from PIL's by
/// a rounding step; a crop larger than the image pads with zeros, as transformers does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// The resize, if any (`do_resize`).
    pub resize: Option<Resize>,
    /// The resize filter.
    pub resample: Resample,
    /// Centre crop to (height, width), if any (`do_center_crop`).
    pub crop: Option<(usize, usize)>,
    /// Factor from u8 to the model's range (`rescale_factor`, 1/255; 1 without `do_rescale`).
    pub rescale: f32,
    /// Per-channel mean (`image_mean`; 0 without `do_normalize`).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (`image_std`; 1 without `do_normalize`).
    pub std: [f32; 3],
}

/// ImageNet statistics (DINOv2, torchvision).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP's statistics.
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

fn num(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

impl Preprocess {
    /// The family's defaults for `cfg`, as the Hub's processors for the real checkpoints set them:
    /// - ViT (`google/vit-*`): resize to `image_size` × `image_size` (bilinear), mean = std = 0.5;
    /// - CLIP (`openai/clip-vit-*`): shortest edge to `image_size` (bicubic), centre crop
    ///   `image_size`, CLIP's mean and std;
    /// - DINOv2 (`facebook/dinov2-*`): shortest edge 256, centre crop 224 (bicubic), ImageNet's
    ///   mean and std — scaled to `min(image_size, 224)` for smaller models.
    pub fn defaults(cfg: &TrunkConfig) -> Self {
        let s = cfg.image_size();
        match cfg.family() {
            Family::Vit => Preprocess {
                resize: Some(Resize::Exact {
                    height: s,
                    width: s,
                }),
                resample: Resample::Bilinear,
                crop: None,
                rescale: 1.0 / 255.0,
                mean: [0.5; 3],
                std: [0.5; 3],
            },
            Family::Clip => Preprocess {
                resize: Some(Resize::ShortestEdge(s)),
                resample: Resample::Bicubic,
                crop: Some((s, s)),
                rescale: 1.0 / 255.0,
                mean: CLIP_MEAN,
                std: CLIP_STD,
            },
            Family::Dinov2 => {
                let crop = s.min(224);
                Preprocess {
                    resize: Some(Resize::ShortestEdge(crop * 256 / 224)),
                    resample: Resample::Bicubic,
                    crop: Some((crop, crop)),
                    rescale: 1.0 / 255.0,
                    mean: IMAGENET_MEAN,
                    std: IMAGENET_STD,
                }
            }
        }
    }

    /// Reads `preprocessor_config.json` (any of the processors' spellings: `size` as a number or
    /// as `{"height", "width"}` / `{"shortest_edge"}`, `crop_size` likewise), filling what it
    /// does not say from [`Preprocess::defaults`].
    pub fn from_file(path: &Path, cfg: &TrunkConfig) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        Self::from_json(&text, cfg, path)
    }

    /// [`Preprocess::from_file`] on the file's text; `path` names it in errors.
    pub fn from_json(text: &str, cfg: &TrunkConfig, path: &Path) -> Result<Self> {
        let bad = |reason: String| TrunkError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let mut p = Self::defaults(cfg);
        let flag = |key: &str| v.get(key).and_then(|x| x.as_bool());
        let side = |x: &serde_json::Value| -> Option<usize> {
            x.as_u64().filter(|&n| n > 0).map(|n| n as usize)
        };
        // A bare number: a square for ViT's processor, the shortest edge for CLIP's and DINOv2's.
        if let Some(size) = v.get("size") {
            let r = if let Some(n) = side(size) {
                if cfg.family() == Family::Vit {
                    Resize::Exact {
                        height: n,
                        width: n,
                    }
                } else {
                    Resize::ShortestEdge(n)
                }
            } else if let Some(n) = size.get("shortest_edge").and_then(side) {
                Resize::ShortestEdge(n)
            } else if let (Some(h), Some(w)) = (
                size.get("height").and_then(side),
                size.get("width").and_then(side),
            ) {
                Resize::Exact {
                    height: h,
                    width: w,
                }
            } else {
                return Err(bad(format!("`size` {size} is not a size this crate reads")));
            };
            p.resize = Some(r);
        }
        if flag("do_resize") == Some(false) {
            p.resize = None;
        }
        if let Some(code) = v.get("resample") {
            p.resample = code
                .as_u64()
                .and_then(Resample::from_pil)
                .ok_or_else(|| bad(format!("`resample` {code} is not one of PIL's 0–3")))?;
        }
        if let Some(crop) = v.get("crop_size") {
            p.crop = Some(if let Some(n) = side(crop) {
                (n, n)
            } else if let (Some(h), Some(w)) = (
                crop.get("height").and_then(side),
                crop.get("width").and_then(side),
            ) {
                (h, w)
            } else {
                return Err(bad(format!(
                    "`crop_size` {crop} is not a size this crate reads"
                )));
            });
        }
        match flag("do_center_crop") {
            Some(false) => p.crop = None,
            Some(true) if p.crop.is_none() => {
                return Err(bad("`do_center_crop` without `crop_size`".into()))
            }
            _ => {}
        }
        if let Some(f) = v.get("rescale_factor") {
            p.rescale =
                num(f).ok_or_else(|| bad(format!("`rescale_factor` {f} is not a number")))? as f32;
        }
        if flag("do_rescale") == Some(false) {
            p.rescale = 1.0;
        }
        let triple = |key: &str| -> Result<Option<[f32; 3]>> {
            let Some(x) = v.get(key) else { return Ok(None) };
            let vals: Option<Vec<f64>> = x.as_array().map(|a| a.iter().filter_map(num).collect());
            match vals {
                Some(v) if v.len() == 3 => Ok(Some([v[0] as f32, v[1] as f32, v[2] as f32])),
                _ => Err(bad(format!("`{key}` {x} is not three numbers"))),
            }
        };
        if let Some(m) = triple("image_mean")? {
            p.mean = m;
        }
        if let Some(s) = triple("image_std")? {
            p.std = s;
        }
        if flag("do_normalize") == Some(false) {
            p.mean = [0.0; 3];
            p.std = [1.0; 3];
        }
        if p.std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(bad(format!("`image_std` {:?} must be positive", p.std)));
        }
        Ok(p)
    }

    /// The (height, width) after resizing an `h` × `w` image.
    pub fn resized_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self.resize {
            None => (h, w),
            Some(Resize::Exact { height, width }) => (height, width),
            Some(Resize::ShortestEdge(n)) => {
                // transformers' get_resize_output_image_size(default_to_square=False).
                if w <= h {
                    (n * h / w, n)
                } else {
                    (n, n * w / h)
                }
            }
        }
    }

    /// The (height, width) of the trunk's input for an `h` × `w` image.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.crop.unwrap_or_else(|| self.resized_size(h, w))
    }

    /// One image, u8 HWC with 1 or 3 channels → f32 CHW, 3 channels.
    pub fn apply_one(&self, pixels: &[u8], (h, w, c): (usize, usize, usize)) -> Result<Vec<f32>> {
        if !(c == 1 || c == 3) || pixels.len() != h * w * c || h == 0 || w == 0 {
            return Err(TrunkError::BadInput {
                model: "preprocessing",
                reason: format!(
                    "an image of {} bytes is not {h}×{w}×{c} with 1 or 3 channels",
                    pixels.len()
                ),
            });
        }
        let rgb: Vec<u8> = if c == 3 {
            pixels.to_vec()
        } else {
            pixels.iter().flat_map(|&g| [g, g, g]).collect()
        };
        let img = image::RgbImage::from_raw(w as u32, h as u32, rgb)
            .expect("the buffer length was checked above");
        let (rh, rw) = self.resized_size(h, w);
        let img = if (rh, rw) == (h, w) {
            img
        } else {
            image::imageops::resize(&img, rw as u32, rh as u32, self.resample.filter())
        };
        let (oh, ow) = self.output_size(h, w);
        // transformers' center_crop: top = (H − h) // 2 (floor), zero padding where the crop
        // leaves the image.
        let top = (rh as i64 - oh as i64).div_euclid(2);
        let left = (rw as i64 - ow as i64).div_euclid(2);
        let mut out = vec![0f32; 3 * oh * ow];
        let scale: [f32; 3] = std::array::from_fn(|k| self.rescale / self.std[k]);
        let shift: [f32; 3] = std::array::from_fn(|k| -self.mean[k] / self.std[k]);
        for y in 0..oh {
            let sy = y as i64 + top;
            for x in 0..ow {
                let sx = x as i64 + left;
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < rh && (sx as usize) < rw;
                for k in 0..3 {
                    let v = if inside {
                        img.get_pixel(sx as u32, sy as u32)[k] as f32
                    } else {
                        0.0
                    };
                    out[k * oh * ow + y * ow + x] = v * scale[k] + shift[k];
                }
            }
        }
        Ok(out)
    }

    /// `n` images of the same size, u8 HWC back to back → [n, 3, H', W'] on `device` (images in
    /// parallel).
    pub fn apply(
        &self,
        pixels: &[u8],
        (h, w, c): (usize, usize, usize),
        device: &Device,
    ) -> Result<Tensor> {
        let per = h * w * c;
        if per == 0 || !pixels.len().is_multiple_of(per) {
            return Err(TrunkError::BadInput {
                model: "preprocessing",
                reason: format!("{} bytes are not whole {h}×{w}×{c} images", pixels.len()),
            });
        }
        let n = pixels.len() / per;
        let (oh, ow) = self.output_size(h, w);
        let chunks = pixels
            .par_chunks(per)
            .map(|img| self.apply_one(img, (h, w, c)))
            .collect::<Result<Vec<_>>>()?;
        let flat: Vec<f32> = chunks.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (n, 3, oh, ow), device)?)
    }

    /// A canonical one-line description (the feature cache's metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Preprocess always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrunkConfig;

    fn cfg(json: &str) -> TrunkConfig {
        TrunkConfig::from_json(json, Path::new("config.json")).unwrap()
    }

    #[test]
    fn reads_the_hubs_processor_configs() {
        // facebook/dinov2-small's preprocessor_config.json.
        let dino = cfg(r#"{"model_type": "dinov2", "image_size": 518}"#);
        let p = Preprocess::from_json(
            r#"{"crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
                "do_convert_rgb": true, "do_normalize": true, "do_rescale": true,
                "do_resize": true, "image_mean": [0.485, 0.456, 0.406],
                "image_processor_type": "BitImageProcessor",
                "image_std": [0.229, 0.224, 0.225], "resample": 3,
                "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256}}"#,
            &dino,
            Path::new("p.json"),
        )
        .unwrap();
        assert_eq!(p.resize, Some(Resize::ShortestEdge(256)));
        assert_eq!(p.crop, Some((224, 224)));
        assert_eq!(p.resample, Resample::Bicubic);
        assert_eq!(p, Preprocess::defaults(&dino));
        assert_eq!(p.resized_size(32, 48), (256, 384));
        assert_eq!(p.output_size(32, 48), (224, 224));
        // google/vit-base-patch16-224-in21k's (an older spelling: size as a number).
        let vit = cfg(r#"{"model_type": "vit"}"#);
        let p = Preprocess::from_json(
            r#"{"do_normalize": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}"#,
            &vit,
            Path::new("p.json"),
        )
        .unwrap();
        assert_eq!(p, Preprocess::defaults(&vit));
        // openai/clip-vit-base-patch16's.
        let clip = cfg(r#"{"model_type": "clip"}"#);
        let p = Preprocess::from_json(
            r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true,
                "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#,
            &clip,
            Path::new("p.json"),
        )
        .unwrap();
        assert_eq!(p, Preprocess::defaults(&clip));
        for bad in [
            r#"{"resample": 9}"#,
            r#"{"image_std": [1, 0, 1]}"#,
            r#"{"size": "big"}"#,
        ] {
            let e = Preprocess::from_json(bad, &clip, Path::new("p.json")).unwrap_err();
            assert!(matches!(e, TrunkError::BadConfig { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn normalises_grey_and_crops_centrally() {
        let p = Preprocess {
            resize: None,
            resample: Resample::Bilinear,
            crop: Some((2, 2)),
            rescale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        // 3×4 grey image, values 0..12; crop rows 0..2 ((3−2)//2 = 0), cols 1..3.
        let img: Vec<u8> = (0..12).map(|v| v * 20).collect();
        let out = p.apply_one(&img, (3, 4, 1)).unwrap();
        let want = |v: u8| v as f32 / 255.0 * 2.0 - 1.0;
        assert_eq!(out.len(), 12);
        for k in 0..3 {
            let expected = [want(20), want(40), want(100), want(120)];
            for (g, w) in out[k * 4..k * 4 + 4].iter().zip(expected) {
                assert!((g - w).abs() < 1e-6, "{g} vs {w}");
            }
        }
        // A crop larger than the image pads with zeros (→ (0 − 0.5) / 0.5 = −1).
        let p = Preprocess {
            crop: Some((3, 3)),
            ..p
        };
        let out = p.apply_one(&[255], (1, 1, 1)).unwrap();
        assert_eq!(&out[..9], &[-1., -1., -1., -1., 1., -1., -1., -1., -1.]);
    }
}
