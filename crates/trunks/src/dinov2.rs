//! DINOv2 (`facebook/dinov2-*`): transformers' `Dinov2Model`, written here.
//!
//! candle-transformers' `models::dinov2` does not fit: it reads Meta's original checkpoint
//! layout (`blocks.N.attn.qkv`, fused query/key/value, `ls1.gamma`) rather than the Hub's
//! transformers layout, fixes the input grid to 518 px and the patch to 14, interpolates
//! position embeddings by nearest neighbour where transformers uses bicubic, uses the tanh
//! GELU and LayerNorm epsilon 1e-5 where the Hub's configs say exact GELU and 1e-6, and
//! concatenates an unbroadcast CLS token (batch size 1 only).
//!
//! Position embeddings are interpolated to the input's patch grid as transformers'
//! `Dinov2Embeddings.interpolate_pos_encoding` does: `torch.nn.functional.interpolate(…,
//! size=(H/P, W/P), mode="bicubic", align_corners=False)` without antialiasing (see [`bicubic`]),
//! and left as they are when the grid matches and the input is square.

use candle_core::{DType, IndexOp, Module, Tensor, D};
use candle_nn::{Conv2d, LayerNorm, Linear, VarBuilder};

use crate::config::{Activation, Dinov2Config};
use crate::error::{Result, TrunkError};
use crate::vit::bad_rank;
use crate::weights::Manifest;
use crate::TrunkOutput;

/// PyTorch's bicubic coefficient (`upsample_bicubic2d`, A = −0.75; the antialiased path uses
/// −0.5, as PIL).
const A: f64 = -0.75;

fn cubic1(x: f64) -> f64 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn cubic2(x: f64) -> f64 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// The [`to`, `from`] matrix of 1-D bicubic interpolation from `from` samples to `to`, as
/// PyTorch's `upsample_bicubic2d` with `align_corners=False` and an output size (no scale
/// factor): source coordinate `(i + 0.5)·from/to − 0.5`, not clamped; the four taps at
/// `⌊x⌋−1 … ⌊x⌋+2` clamped to the edge.
pub fn bicubic(from: usize, to: usize) -> Vec<f64> {
    let mut m = vec![0.0; to * from];
    let scale = from as f64 / to as f64;
    for i in 0..to {
        let x = (i as f64 + 0.5) * scale - 0.5;
        let x0 = x.floor();
        let t = x - x0;
        let weights = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
        for (k, w) in weights.iter().enumerate() {
            let j = (x0 as i64 - 1 + k as i64).clamp(0, from as i64 - 1) as usize;
            m[i * from + j] += w;
        }
    }
    m
}

/// `pos` [1, 1 + G², D] (G = grid side) → [1, 1 + h·w, D]: the CLS position kept, the patch
/// positions resampled bicubically from G × G to h × w (row-major, as the patches).
pub fn interpolate_positions(pos: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, n1, d) = pos.dims3()?;
    let g = ((n1 - 1) as f64).sqrt().round() as usize;
    if g * g != n1 - 1 {
        return Err(TrunkError::BadInput {
            model: "dinov2",
            reason: format!("{} patch positions do not form a square grid", n1 - 1),
        });
    }
    let dev = pos.device();
    let dtype = pos.dtype();
    let cls = pos.i((.., ..1, ..))?;
    // [G, G·D] in f32, as transformers interpolates in float32.
    let grid = pos
        .i((0, 1.., ..))?
        .to_dtype(DType::F32)?
        .reshape((g, g * d))?;
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let wy = Tensor::from_vec(to_f32(bicubic(g, h)), (h, g), dev)?;
    let wx = Tensor::from_vec(to_f32(bicubic(g, w)), (w, g), dev)?;
    // Rows: [h, G] · [G, G·D] → [h, G, D]; then columns: [h, w, G] · [h, G, D] → [h, w, D].
    let rows = wy.matmul(&grid)?.reshape((h, g, d))?;
    let wx = wx.unsqueeze(0)?.broadcast_as((h, w, g))?.contiguous()?;
    let patches = wx.matmul(&rows)?.reshape((1, h * w, d))?.to_dtype(dtype)?;
    Ok(Tensor::cat(&[&cls, &patches], 1)?)
}

#[derive(Debug, Clone)]
enum Mlp {
    /// fc1 → act → fc2.
    Plain(Linear, Activation, Linear),
    /// `weights_in` → SiLU(x₁)·x₂ → `weights_out`.
    SwiGlu(Linear, Linear),
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Mlp::Plain(fc1, act, fc2) => fc2.forward(&act.apply(&fc1.forward(x)?)?)?,
            Mlp::SwiGlu(win, wout) => {
                let h = win.forward(x)?;
                let half = h.dim(D::Minus1)? / 2;
                let x1 = h.narrow(D::Minus1, 0, half)?;
                let x2 = h.narrow(D::Minus1, half, half)?;
                wout.forward(&(x1.silu()? * x2)?)?
            }
        })
    }
}

#[derive(Debug, Clone)]
struct Layer {
    norm1: LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    scale1: Tensor,
    norm2: LayerNorm,
    mlp: Mlp,
    scale2: Tensor,
    heads: usize,
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let h = self.norm1.forward(x)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(&h)?)?;
        let k = split(self.key.forward(&h)?)?;
        let v = split(self.value.forward(&h)?)?;
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, d))?;
        let attn = self.output.forward(&ctx)?.broadcast_mul(&self.scale1)?;
        let x = (attn + x)?;
        let m = self
            .mlp
            .forward(&self.norm2.forward(&x)?)?
            .broadcast_mul(&self.scale2)?;
        Ok((m + x)?)
    }
}

/// A DINOv2 trunk.
#[derive(Debug, Clone)]
pub struct Dinov2 {
    cls_token: Tensor,
    patch: Conv2d,
    /// [1, 1 + G², D].
    position_embeddings: Tensor,
    layers: Vec<Layer>,
    layernorm: LayerNorm,
    cfg: Dinov2Config,
}

/// Hidden width of the MLP: `int(hidden_size · mlp_ratio)`, and for SwiGLU transformers'
/// `(int(hidden · 2 / 3) + 7) // 8 · 8`.
fn mlp_hidden(cfg: &Dinov2Config) -> usize {
    let h = (cfg.hidden_size as f64 * cfg.mlp_ratio) as usize;
    if cfg.use_swiglu_ffn {
        ((h as f64 * 2.0 / 3.0) as usize).div_ceil(8) * 8
    } else {
        h
    }
}

impl Dinov2 {
    /// Every tensor a `Dinov2Model` with this config has (transformers 4 names), less the
    /// `mask_token` (unused without masking).
    pub(crate) fn manifest(cfg: &Dinov2Config) -> Manifest {
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        let n = (cfg.image_size / p) * (cfg.image_size / p);
        let hid = mlp_hidden(cfg);
        let mut m: Manifest = vec![
            ("embeddings.cls_token".into(), vec![1, 1, d]),
            ("embeddings.position_embeddings".into(), vec![1, n + 1, d]),
            (
                "embeddings.patch_embeddings.projection.weight".into(),
                vec![d, cfg.num_channels, p, p],
            ),
            (
                "embeddings.patch_embeddings.projection.bias".into(),
                vec![d],
            ),
            ("layernorm.weight".into(), vec![d]),
            ("layernorm.bias".into(), vec![d]),
        ];
        for l in 0..cfg.num_hidden_layers {
            let pre = format!("encoder.layer.{l}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| {
                m.push((format!("{pre}.{name}.weight"), vec![out, inp]));
                if bias {
                    m.push((format!("{pre}.{name}.bias"), vec![out]));
                }
            };
            for qkv in ["query", "key", "value"] {
                lin(&format!("attention.attention.{qkv}"), d, d, cfg.qkv_bias);
            }
            lin("attention.output.dense", d, d, true);
            if cfg.use_swiglu_ffn {
                lin("mlp.weights_in", 2 * hid, d, true);
                lin("mlp.weights_out", d, hid, true);
            } else {
                lin("mlp.fc1", hid, d, true);
                lin("mlp.fc2", d, hid, true);
            }
            for ln in ["norm1", "norm2"] {
                m.push((format!("{pre}.{ln}.weight"), vec![d]));
                m.push((format!("{pre}.{ln}.bias"), vec![d]));
            }
            m.push((format!("{pre}.layer_scale1.lambda1"), vec![d]));
            m.push((format!("{pre}.layer_scale2.lambda1"), vec![d]));
        }
        m
    }

    /// Builds the trunk from checked weights.
    pub(crate) fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let (d, p, eps) = (cfg.hidden_size, cfg.patch_size, cfg.layer_norm_eps);
        let n = (cfg.image_size / p) * (cfg.image_size / p);
        let e = vb.pp("embeddings");
        let cls_token = e.get((1, 1, d), "cls_token")?;
        let position_embeddings = e.get((1, n + 1, d), "position_embeddings")?;
        let patch = candle_nn::conv2d(
            cfg.num_channels,
            d,
            p,
            candle_nn::Conv2dConfig {
                stride: p,
                ..Default::default()
            },
            e.pp("patch_embeddings.projection"),
        )?;
        let act = Activation::parse(&cfg.hidden_act).unwrap_or(Activation::Gelu);
        let hid = mlp_hidden(cfg);
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| -> Result<Layer> {
                let vb = vb.pp(format!("encoder.layer.{l}"));
                let a = vb.pp("attention");
                let qkv = |name: &str| {
                    candle_nn::linear_b(d, d, cfg.qkv_bias, a.pp("attention").pp(name))
                };
                let mlp = if cfg.use_swiglu_ffn {
                    Mlp::SwiGlu(
                        candle_nn::linear(d, 2 * hid, vb.pp("mlp.weights_in"))?,
                        candle_nn::linear(hid, d, vb.pp("mlp.weights_out"))?,
                    )
                } else {
                    Mlp::Plain(
                        candle_nn::linear(d, hid, vb.pp("mlp.fc1"))?,
                        act,
                        candle_nn::linear(hid, d, vb.pp("mlp.fc2"))?,
                    )
                };
                Ok(Layer {
                    norm1: candle_nn::layer_norm(d, eps, vb.pp("norm1"))?,
                    query: qkv("query")?,
                    key: qkv("key")?,
                    value: qkv("value")?,
                    output: candle_nn::linear(d, d, a.pp("output.dense"))?,
                    scale1: vb.pp("layer_scale1").get(d, "lambda1")?,
                    norm2: candle_nn::layer_norm(d, eps, vb.pp("norm2"))?,
                    mlp,
                    scale2: vb.pp("layer_scale2").get(d, "lambda1")?,
                    heads: cfg.num_attention_heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let layernorm = candle_nn::layer_norm(d, eps, vb.pp("layernorm"))?;
        Ok(Dinov2 {
            cls_token,
            patch,
            position_embeddings,
            layers,
            layernorm,
            cfg: cfg.clone(),
        })
    }

    /// The config.
    pub fn config(&self) -> &Dinov2Config {
        &self.cfg
    }

    /// `pixels` [B, 3, H, W] → `last_hidden_state` [B, 1 + ⌊H/P⌋·⌊W/P⌋, D] (after the final
    /// LayerNorm) and `pooled` = `pooler_output` = `last_hidden_state[:, 0]`. Any size of at
    /// least one patch is taken: the position embeddings are interpolated to the grid (a
    /// remainder below a patch is ignored, as transformers' strided convolution does).
    pub fn forward(&self, pixels: &Tensor) -> Result<TrunkOutput> {
        let (b, c, h, w) = pixels.dims4().map_err(|_| bad_rank(pixels))?;
        let p = self.cfg.patch_size;
        if c != self.cfg.num_channels || h < p || w < p {
            return Err(TrunkError::BadInput {
                model: "dinov2",
                reason: format!(
                    "input is {c}×{h}×{w}, the trunk takes {} channels and sides of at least one patch ({p})",
                    self.cfg.num_channels
                ),
            });
        }
        let d = self.cfg.hidden_size;
        let patches = self
            .patch
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let (gh, gw) = (h / p, w / p);
        let n = self.position_embeddings.dim(1)? - 1;
        let pos = if gh * gw == n && h == w {
            self.position_embeddings.clone()
        } else {
            interpolate_positions(&self.position_embeddings, gh, gw)?
        };
        let mut x = x.broadcast_add(&pos)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        let last_hidden_state = self.layernorm.forward(&x)?;
        let pooled = last_hidden_state.i((.., 0, ..))?;
        Ok(TrunkOutput {
            last_hidden_state,
            pooled,
            embeds: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_rows_sum_to_one_and_identity_at_scale_one() {
        for (from, to) in [(4, 6), (37, 16), (5, 5), (2, 9)] {
            let m = bicubic(from, to);
            for i in 0..to {
                let s: f64 = m[i * from..(i + 1) * from].iter().sum();
                assert!((s - 1.0).abs() < 1e-12, "{from}->{to} row {i}: {s}");
            }
        }
        let m = bicubic(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(m[i * 5 + j], if i == j { 1.0 } else { 0.0 });
            }
        }
    }

    /// Hand-computed: 2 → 4 samples, output 0 sits at source x = −0.25 (t = 0.75 from ⌊x⌋ = −1).
    #[test]
    fn bicubic_matches_hand_values() {
        let m = bicubic(2, 4);
        let t: f64 = 0.75;
        let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
        // taps −2, −1, 0, 1 → clamped 0, 0, 0, 1.
        assert!((m[0] - (w[0] + w[1] + w[2])).abs() < 1e-15);
        assert!((m[1] - w[3]).abs() < 1e-15);
        // A = −0.75 at t = 0.5: the classic (−0.09375, 0.59375, 0.59375, −0.09375).
        let h = [cubic2(1.5), cubic1(0.5), cubic1(0.5), cubic2(1.5)];
        assert!((h[0] + 0.09375).abs() < 1e-15 && (h[1] - 0.59375).abs() < 1e-15);
    }
}
