//! Batch norm (train and eval, optionally fused with ReLU) and residual add + ReLU.
//!
//! Data are viewed as `(n, c, s)` with `s = H·W`: channel `ch` of image `i` is the contiguous
//! plane `x[(i·c + ch)·s ..][..s]`. Per-channel reductions run in parallel over channels and
//! walk that channel's `n` planes; element-wise passes run in parallel over planes. Sums use
//! [`LANES`] f32 lanes within a plane and f64 across planes, so accuracy does not degrade with
//! the batch size.
//!
//! Every loop is plain Rust compiled per SIMD level by [`dispatch`] (the level is read once per
//! op on the calling thread, [`current`]): the results are bit-identical on every level.

use crate::isa::{current, dispatch, Isa};
use crate::{cpu_slice, par_collect};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// Planes handled per rayon task in element-wise passes (keeps tasks ≥ ~4k elements).
fn min_planes(s: usize) -> usize {
    (4096 / s.max(1)).max(1)
}

/// Accumulator lanes of the per-plane sums: one AVX-512 register, two AVX2 or four SSE2 ones,
/// i.e. 1–4 independent add chains (the sums are bound by the add latency, not by loads).
const LANES: usize = 16;

/// Sum of a slice with [`LANES`] f32 accumulators (vectorises; error ~ √(len/16)·ε).
#[inline(always)]
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rem.iter().sum::<f32>()
}

/// `Σ (v − m)²` with [`LANES`] f32 accumulators.
#[inline(always)]
fn lane_sq_dev(v: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - m;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rem.iter().map(|x| (x - m) * (x - m)).sum::<f32>()
}

/// Per-channel mean and biased variance of `x (n, c, s)`.
///
/// Each plane gives its own mean and squared deviation (two passes over a plane that is in L1),
/// and planes are merged with Chan et al.'s pairwise update in f64: one pass over memory, no
/// `E[x²] − E[x]²` cancellation.
pub(crate) fn channel_stats(
    x: &[f32],
    n: usize,
    c: usize,
    s: usize,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let per: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            dispatch(
                isa,
                #[inline(always)]
                || {
                    let (mut cnt, mut mean, mut m2) = (0f64, 0f64, 0f64);
                    let nb = s as f64;
                    for i in 0..n {
                        let p = &x[(i * c + ch) * s..][..s];
                        let bm = lane_sum(p) as f64 / nb;
                        let bm2 = lane_sq_dev(p, bm as f32) as f64;
                        let tot = cnt + nb;
                        let d = bm - mean;
                        mean += d * nb / tot;
                        m2 += bm2 + d * d * cnt * nb / tot;
                        cnt = tot;
                    }
                    (mean as f32, (m2 / cnt) as f32)
                },
            )
        })
        .collect();
    per.into_iter().unzip()
}

/// `y = x·scale[ch] + shift[ch]`, then `max(y, 0)` when `relu`.
fn affine_planes(
    x: &[f32],
    c: usize,
    s: usize,
    scale: &[f32],
    shift: &[f32],
    relu: bool,
    isa: Isa,
) -> Vec<f32> {
    if s == 0 {
        return vec![0f32; x.len()];
    }
    par_collect(
        x.len(),
        s,
        min_planes(s),
        isa,
        #[inline(always)]
        |pi| {
            let (a, b) = (scale[pi % c], shift[pi % c]);
            // `relu` is loop-invariant: the compiler splits the loop in two.
            x[pi * s..][..s].iter().map(
                #[inline(always)]
                move |&x| {
                    let v = x * a + b;
                    if relu {
                        v.max(0.0)
                    } else {
                        v
                    }
                },
            )
        },
    )
}

/// What a batch-norm forward computed and its backward needs: the statistics used to normalise.
#[derive(Debug)]
pub(crate) struct Saved {
    /// Mean used for normalisation (batch mean in train mode, running mean in eval mode).
    pub mean: Vec<f32>,
    /// Biased batch variance (train) or running variance (eval).
    pub var: Vec<f32>,
    /// `1/√(var + eps)`.
    pub invstd: Vec<f32>,
}

/// Which statistics normalise the input.
pub(crate) enum Mode {
    /// Batch statistics (training); `eps` is added to the biased batch variance.
    Batch { eps: f64 },
    /// Running statistics given by the caller (evaluation).
    Running,
}

/// Batch-norm forward op on `(x, gamma, beta)`. In eval mode `saved` is filled by the caller.
pub(crate) struct BatchNorm {
    pub mode: Mode,
    pub relu: bool,
    pub saved: Arc<OnceLock<Saved>>,
}

fn dims_ncs(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.dims();
    (d[0], d[1], d[2..].iter().product())
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "longtail-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1)?;
        let gamma = cpu_slice(s2, l2)?;
        let beta = cpu_slice(s3, l3)?;
        let (n, c, s) = dims_ncs(l1.shape());
        let isa = current();
        if let Mode::Batch { eps } = self.mode {
            let (mean, var) = channel_stats(x, n, c, s, isa);
            let invstd = var
                .iter()
                .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
                .collect();
            // Only this op's forward sets it; a second call would be a logic error upstream.
            let _ = self.saved.set(Saved { mean, var, invstd });
        }
        let saved = self
            .saved
            .get()
            .ok_or_else(|| candle_core::Error::Msg("batch norm: statistics missing".into()))?;
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&saved.invstd)
            .map(|(g, i)| g * i)
            .collect();
        let shift: Vec<f32> = beta
            .iter()
            .zip(&saved.mean)
            .zip(&scale)
            .map(|((b, m), a)| b - m * a)
            .collect();
        let y = affine_planes(x, c, s, &scale, &shift, self.relu, isa);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self
            .saved
            .get()
            .ok_or_else(|| candle_core::Error::Msg("batch norm: backward before forward".into()))?;
        let op = BatchNormBwd {
            gamma: gamma.to_vec1::<f32>()?,
            mean: saved.mean.clone(),
            invstd: saved.invstd.clone(),
            relu: self.relu,
            batch_stats: matches!(self.mode, Mode::Batch { .. }),
            param_grads: OnceLock::new(),
        };
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(res, &grad, &op)?;
        let (dg, db) = op
            .param_grads
            .into_inner()
            .ok_or_else(|| candle_core::Error::Msg("batch norm backward: no sums".into()))?;
        let c = dg.len();
        let dg = Tensor::from_vec(dg, c, x.device())?;
        let db = Tensor::from_vec(db, c, x.device())?;
        Ok((
            x.track_op().then_some(dx),
            gamma.track_op().then_some(dg),
            beta.track_op().then_some(db),
        ))
    }
}

/// Fused batch-norm backward on `(x, y, dy)`: returns dx and leaves (dγ, dβ) in `param_grads`.
///
/// With `g = dy·[y > 0]` (ReLU) or `g = dy`, `x̂ = (x − μ)·σ⁻¹`, `M = n·s`:
/// `dβ = Σ g`, `dγ = Σ g·x̂`, and in train mode
/// `dx = γσ⁻¹·(g − dβ/M − x̂·dγ/M)` (Ioffe & Szegedy 2015, §3), in eval mode `dx = γσ⁻¹·g`.
/// One parallel-over-channels reduction pass, then one element-wise pass.
pub(crate) struct BatchNormBwd {
    pub gamma: Vec<f32>,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub relu: bool,
    pub batch_stats: bool,
    pub param_grads: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl CustomOp3 for BatchNormBwd {
    fn name(&self) -> &'static str {
        "longtail-batch-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1)?;
        let y = cpu_slice(s2, l2)?;
        let dy = cpu_slice(s3, l3)?;
        let (n, c, s) = dims_ncs(l1.shape());
        let relu = self.relu;
        let isa = current();
        // Σ g and Σ g·(x − μ) per channel.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                dispatch(
                    isa,
                    #[inline(always)]
                    || {
                        let m = self.mean[ch];
                        let (mut s1, mut s2) = (0f64, 0f64);
                        for i in 0..n {
                            let o = (i * c + ch) * s;
                            let planes = (&x[o..o + s], &y[o..o + s], &dy[o..o + s]);
                            let (p1, p2) = if relu {
                                plane_sums::<true>(planes, m)
                            } else {
                                plane_sums::<false>(planes, m)
                            };
                            s1 += p1 as f64;
                            s2 += p2 as f64;
                        }
                        (s1, s2)
                    },
                )
            })
            .collect();
        let count = (n * s) as f64;
        let mut dgamma = Vec::with_capacity(c);
        let mut dbeta = Vec::with_capacity(c);
        // dx = a·g + b·x + k per channel.
        let mut coef = Vec::with_capacity(c);
        for (ch, &(sg, sgx)) in sums.iter().enumerate() {
            let inv = self.invstd[ch] as f64;
            let dg = sgx * inv;
            dgamma.push(dg as f32);
            dbeta.push(sg as f32);
            let a = self.gamma[ch] as f64 * inv;
            if self.batch_stats {
                let b = -a * inv * dg / count;
                let k = -a * sg / count - b * self.mean[ch] as f64;
                coef.push((a as f32, b as f32, k as f32));
            } else {
                coef.push((a as f32, 0.0, 0.0));
            }
        }
        let _ = self.param_grads.set((dgamma, dbeta));
        let dx = if s == 0 {
            vec![]
        } else {
            par_collect(
                x.len(),
                s,
                min_planes(s),
                isa,
                #[inline(always)]
                |pi| {
                    let (a, b, k) = coef[pi % c];
                    let o = pi * s;
                    x[o..o + s].iter().zip(&y[o..o + s]).zip(&dy[o..o + s]).map(
                        #[inline(always)]
                        move |((&x, &y), &g)| {
                            // dx = a·g + b·x + k, g zeroed where the fused ReLU clipped.
                            let g = clip_grad(relu, g, y);
                            a * g + b * x + k
                        },
                    )
                },
            )
        };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The gradient reaching the batch-norm output: `dy`, zeroed where the fused ReLU clipped.
#[inline(always)]
fn masked<const RELU: bool>(g: f32, y: f32) -> f32 {
    clip_grad(RELU, g, y)
}

/// `if relu && y <= 0 { 0.0 } else { g }` as a bit mask (`g & 0` is `+0.0`): branch-free on
/// every level (as a select, LLVM made the AVX-512 build a masked conditional load of `g`).
#[inline(always)]
fn clip_grad(relu: bool, g: f32, y: f32) -> f32 {
    let keep = ((relu & (y <= 0.0)) as u32).wrapping_sub(1);
    f32::from_bits(g.to_bits() & keep)
}

/// `(Σ g, Σ g·(x − m))` over one plane, [`LANES`] lanes, branch-free so it vectorises.
///
/// Two passes over the plane (it is in L1), one accumulator array each: with both arrays in
/// one loop LLVM's SLP vectoriser paired `a1[l]` with `a2[l]` in 2-wide vectors instead of
/// vectorising along the lanes, and the AVX2 / SSE2 backward ran 3–4× slower than AVX-512's.
#[inline(always)]
fn plane_sums<const RELU: bool>((x, y, g): (&[f32], &[f32], &[f32]), m: f32) -> (f32, f32) {
    (
        lane_sum_of((x, y, g), |_, y, g| masked::<RELU>(g, y)),
        lane_sum_of((x, y, g), |x, y, g| masked::<RELU>(g, y) * (x - m)),
    )
}

/// `Σ f(x[i], y[i], g[i])` with [`LANES`] f32 accumulators; the tail past the last full
/// chunk is summed first, on its own, and added last.
#[inline(always)]
fn lane_sum_of((x, y, g): (&[f32], &[f32], &[f32]), f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (xc, yc, gc) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        g.chunks_exact(LANES),
    );
    let mut rem = 0f32;
    for ((x, y), g) in xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .zip(gc.remainder())
    {
        rem += f(*x, *y, *g);
    }
    for ((x, y), g) in xc.zip(yc).zip(gc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l], g[l]);
        }
    }
    acc.iter().sum::<f32>() + rem
}

/// `max(a + b, 0)`: the residual join of a ResNet block. Its backward is [`ReluMask`].
pub(crate) struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "longtail-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = cpu_slice(s1, l1)?;
        let b = cpu_slice(s2, l2)?;
        let y = par_collect(
            a.len(),
            8192,
            1,
            current(),
            #[inline(always)]
            |i| {
                let r = i * 8192..(i * 8192 + 8192).min(a.len());
                a[r.clone()].iter().zip(&b[r]).map(
                    #[inline(always)]
                    |(a, b)| (a + b).max(0.0),
                )
            },
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.apply_op2_no_bwd(res, &ReluMask)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `(dy, y) → dy·[y > 0]`: the gradient through a ReLU given its output.
pub(crate) struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "longtail-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = cpu_slice(s1, l1)?;
        let y = cpu_slice(s2, l2)?;
        let out = par_collect(
            g.len(),
            8192,
            1,
            current(),
            #[inline(always)]
            |i| {
                let r = i * 8192..(i * 8192 + 8192).min(g.len());
                g[r.clone()].iter().zip(&y[r]).map(
                    #[inline(always)]
                    // `y > 0 ? g : 0` as a bit mask, as in `clip_grad`.
                    |(g, y)| f32::from_bits(g.to_bits() & ((*y > 0.0) as u32).wrapping_neg()),
                )
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_stats_match_two_pass_f64() {
        let (n, c, s) = (3, 2, 13);
        let x: Vec<f32> = (0..n * c * s)
            .map(|i| 100.0 + ((i * 37) % 17) as f32 * 0.25)
            .collect();
        let (mean, var) = channel_stats(&x, n, c, s, Isa::Scalar);
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| x[(i * c + ch) * s..][..s].iter().map(|&v| v as f64))
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
            assert!(
                (mean[ch] as f64 - m).abs() < 1e-5,
                "mean {} vs {m}",
                mean[ch]
            );
            assert!(
                (var[ch] as f64 - v).abs() < 1e-5 * v.max(1.0),
                "var {} vs {v}",
                var[ch]
            );
        }
    }
}
