//! Fast CPU training kernels for candle: conv2d, batch norm (+ReLU) and residual add + ReLU.
//!
//! candle 0.11 trains a CIFAR ResNet-32 at 13–15 img/s on a 2-core CPU (docs/candle.md
//! §5): its conv input gradient is a direct-loop `conv_transpose2d` and its batch norm is about
//! ten generic element-wise ops. This crate owns one idea: replacing those hot ops with
//! `candle_core::CustomOp*` kernels (direct 3×3 convolution with AVX-512 / AVX2 micro-kernels
//! picked at run time, [`Isa`], and im2col + the `gemm` crate for the other convolutions; fused
//! one-pass batch norm) whose backward passes are themselves custom ops, so candle's autograd
//! (`loss.backward()`) trains through them unchanged.
//!
//! Main entry points, all on `candle_core::Tensor`, NCHW, f32:
//! * [`conv2d`]: no bias, zero padding, any stride, groups; gradients for input and weight
//!   (also callable directly: [`conv2d_input_grad`], [`conv2d_weight_grad`]).
//! * [`batch_norm_train`]: batch statistics; returns the output and the batch mean/variance
//!   for the caller's running-stat update ([`update_running_stats`]).
//! * [`batch_norm_eval`]: running statistics, a per-channel affine.
//! * [`add_relu`]: `max(a + b, 0)`.
//! * [`max_pool2d`]: max pooling with padding and a gradient (candle's has none for kernel ≠
//!   stride); [`max_pool2d_autograd`] is its device-generic form.
//! * The backward passes autograd runs, callable directly (benchmarks, custom backward):
//!   [`batch_norm_backward`], [`relu_backward`], [`max_pool2d_backward`].
//! * [`with_isa`]: run ops at a chosen SIMD level on this thread (tests and benchmarks).
//!
//! Off the CPU or for another dtype every function falls back to candle's stock ops, so a CUDA
//! model keeps candle's kernels. Second-order gradients are not supported: the backward
//! results are constants to autograd (candle detaches gradients anyway).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let dev = Device::Cpu;
//! let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev)?;
//! let w = Var::randn(0f32, 0.1, (4, 3, 3, 3), &dev)?;
//! let (gamma, beta) = (Var::ones(4, candle_core::DType::F32, &dev)?, Var::zeros(4, candle_core::DType::F32, &dev)?);
//! let h = longtail_kernels::conv2d(&x, &w, 1, 1, 1)?;
//! let (y, _mean, _var) = longtail_kernels::batch_norm_train(&h, &gamma, &beta, 1e-5, true)?;
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&w).unwrap().dims(), &[4, 3, 3, 3]);
//! # Ok::<(), longtail_kernels::KernelError>(())
//! ```
#![deny(missing_docs)]

mod bn;
mod conv;
mod direct;
mod error;
mod isa;
mod pool;

pub use error::{KernelError, Result};
pub use isa::{isa, isa_from_env, with_isa, Isa};
pub use pool::max_pool2d_autograd;

use candle_core::{CpuStorage, DType, Layout, Tensor};
use std::sync::{Arc, OnceLock};

/// The contiguous f32 data of a CPU storage under `layout`.
fn cpu_slice<'a>(s: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => Err(candle_core::Error::Msg(
            "longtail-kernels: custom op got a non-contiguous input".into(),
        )),
    }
}

/// `len` floats computed in parallel chunks of `chunk` (at least `min_chunks` per task) and
/// written straight into fresh memory: `values(i)` yields chunk `i`'s values, at least as many as
/// the chunk holds (checked before writing).
///
/// Why: these ops overwrite their whole output, and `vec![0.0; len]` first zeroed it in a
/// separate pass over every activation (memset was ~4 % of a ResNet-32 step once the allocator
/// kept blocks in the heap, see [`tune_allocator`]). Each chunk's loop (with the iterator
/// `values` returns, inlined) is compiled for `isa` through [`isa::dispatch`].
pub(crate) fn par_collect<F, I>(
    len: usize,
    chunk: usize,
    min_chunks: usize,
    isa: Isa,
    values: F,
) -> Vec<f32>
where
    F: Fn(usize) -> I + Sync + Send,
    I: ExactSizeIterator<Item = f32>,
{
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    if len > 0 {
        v.spare_capacity_mut()[..len]
            .par_chunks_mut(chunk.max(1))
            .with_min_len(min_chunks.max(1))
            .enumerate()
            .for_each(|(i, dst)| {
                isa::dispatch(
                    isa,
                    #[inline(always)]
                    || {
                        let src = values(i);
                        assert!(
                            src.len() >= dst.len(),
                            "par_collect: chunk {i} has {} values for {} slots",
                            src.len(),
                            dst.len()
                        );
                        for (d, x) in dst.iter_mut().zip(src) {
                            d.write(x);
                        }
                    },
                )
            });
    }
    // SAFETY: the chunks tile `[0, len)`, and each one was written in full above (the assert
    // guarantees the iterator was long enough; a panic there leaves `v` empty).
    unsafe { v.set_len(len) };
    v
}

/// True when the fast kernels apply: CPU tensors of dtype f32.
fn fast(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn check_rank(op: &'static str, arg: &'static str, t: &Tensor, want: usize) -> Result<()> {
    if t.rank() != want {
        return Err(KernelError::Rank {
            op,
            arg,
            want,
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

fn check_like(op: &'static str, arg: &'static str, x: &Tensor, t: &Tensor) -> Result<()> {
    if t.dtype() != x.dtype() {
        return Err(KernelError::DType {
            op,
            arg,
            want: x.dtype(),
            got: t.dtype(),
        });
    }
    if !t.device().same_device(x.device()) {
        return Err(KernelError::Device { op, arg });
    }
    Ok(())
}

fn check_channel_vec(op: &'static str, arg: &'static str, x: &Tensor, t: &Tensor) -> Result<()> {
    check_like(op, arg, x, t)?;
    let c = x.dim(1)?;
    if t.dims() != [c] {
        return Err(KernelError::Shape {
            op,
            arg,
            want: vec![c],
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// 2-D convolution of `x (N, C_in, H, W)` with `w (C_out, C_in/groups, kh, kw)`, no bias,
/// zero `padding` on all sides, dilation 1: `(N, C_out, Ho, Wo)` with
/// `Ho = (H + 2·padding − kh)/stride + 1`. Same semantics as `Tensor::conv2d` and PyTorch
/// `F.conv2d`; gradients flow to `x` and `w`.
///
/// On CPU f32 this is im2col + `gemm`, with dx and dw as GEMM-based custom ops (see the `conv`
/// module docs for the layout choice). Elsewhere it calls `x.conv2d(w, padding, stride, 1, groups)`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    check_rank(OP, "x", x, 4)?;
    check_rank(OP, "w", w, 4)?;
    check_like(OP, "w", x, w)?;
    check_conv(OP, x.dims4()?, w.dims4()?, stride, padding, groups)?;
    if !fast(x) {
        return Ok(x.conv2d(w, padding, stride, 1, groups)?);
    }
    let op = conv::Conv2d {
        stride,
        pad: padding,
        groups,
    };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?)
}

/// Checks conv arguments shared by the forward and the two gradient functions; returns the
/// output spatial size.
fn check_conv(
    op: &'static str,
    x_dims: (usize, usize, usize, usize),
    w_dims: (usize, usize, usize, usize),
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<(usize, usize)> {
    let (_, c_in, h, wd) = x_dims;
    let (c_out, w_cin, kh, kw) = w_dims;
    if stride == 0 {
        return Err(KernelError::Zero { op, arg: "stride" });
    }
    if groups == 0 || c_out % groups != 0 {
        return Err(KernelError::Groups { groups, c_out });
    }
    if w_cin * groups != c_in {
        return Err(KernelError::ChannelMismatch {
            x_channels: c_in,
            w_channels: w_cin,
            groups,
        });
    }
    if kh == 0 || kw == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(KernelError::KernelTooLarge {
            h,
            w: wd,
            kh,
            kw,
            padding,
        });
    }
    Ok((
        (h + 2 * padding - kh) / stride + 1,
        (wd + 2 * padding - kw) / stride + 1,
    ))
}

fn check_dy(op: &'static str, dy: &Tensor, want: [usize; 4]) -> Result<()> {
    if dy.dims() != want {
        return Err(KernelError::Shape {
            op,
            arg: "dy",
            want: want.to_vec(),
            got: dy.dims().to_vec(),
        });
    }
    Ok(())
}

/// Gradient of [`conv2d`] with respect to its input: given `dy (N, C_out, Ho, Wo)` and the weight,
/// returns `dx (N, C_in, H, W)` for an input of `input_hw = (H, W)` pixels (needed because
/// stride > 1 maps several input sizes to one output size).
///
/// This is what [`conv2d`]'s backward runs; it is public for benchmarks and for callers that
/// write their own backward. The result carries no autograd graph. Off the CPU or for another
/// dtype it is computed through candle's stock conv2d autograd.
pub fn conv2d_input_grad(
    dy: &Tensor,
    w: &Tensor,
    input_hw: (usize, usize),
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    const OP: &str = "conv2d_input_grad";
    check_rank(OP, "dy", dy, 4)?;
    check_rank(OP, "w", w, 4)?;
    check_like(OP, "w", dy, w)?;
    let n = dy.dim(0)?;
    let c_in = w.dim(1)? * groups;
    let x_dims = (n, c_in, input_hw.0, input_hw.1);
    let (ho, wo) = check_conv(OP, x_dims, w.dims4()?, stride, padding, groups)?;
    check_dy(OP, dy, [n, w.dim(0)?, ho, wo])?;
    if !fast(dy) {
        let x = candle_core::Var::zeros(x_dims, dy.dtype(), dy.device())?;
        let y = x.conv2d(&w.detach(), padding, stride, 1, groups)?;
        let grads = (y * dy.detach())?.sum_all()?.backward()?;
        let dx = grads.get(&x).cloned();
        return dx.ok_or_else(|| {
            candle_core::Error::Msg("conv2d_input_grad: no gradient".into()).into()
        });
    }
    let op = conv::Conv2dDx {
        stride,
        pad: padding,
        groups,
        c_in,
        h: input_hw.0,
        w: input_hw.1,
    };
    Ok(dy.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?)
}

/// Gradient of [`conv2d`] with respect to its weight: given the input `x (N, C_in, H, W)` and
/// `dy (N, C_out, Ho, Wo)`, returns `dw (C_out, C_in/groups, kh, kw)` for `kernel_hw = (kh, kw)`.
///
/// This is what [`conv2d`]'s backward runs; public for benchmarks and custom backward passes.
/// The result carries no autograd graph. Off the CPU or for another dtype it is computed
/// through candle's stock conv2d autograd.
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    kernel_hw: (usize, usize),
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    const OP: &str = "conv2d_weight_grad";
    check_rank(OP, "x", x, 4)?;
    check_rank(OP, "dy", dy, 4)?;
    check_like(OP, "dy", x, dy)?;
    let (n, c_in, _, _) = x.dims4()?;
    let c_out = dy.dim(1)?;
    if groups == 0 || c_in % groups != 0 {
        return Err(KernelError::Groups { groups, c_out });
    }
    let w_dims = (c_out, c_in / groups, kernel_hw.0, kernel_hw.1);
    let (ho, wo) = check_conv(OP, x.dims4()?, w_dims, stride, padding, groups)?;
    check_dy(OP, dy, [n, c_out, ho, wo])?;
    if !fast(x) {
        let w = candle_core::Var::zeros(w_dims, x.dtype(), x.device())?;
        let y = x.detach().conv2d(&w, padding, stride, 1, groups)?;
        let grads = (y * dy.detach())?.sum_all()?.backward()?;
        let dw = grads.get(&w).cloned();
        return dw.ok_or_else(|| {
            candle_core::Error::Msg("conv2d_weight_grad: no gradient".into()).into()
        });
    }
    let op = conv::Conv2dDw {
        stride,
        pad: padding,
        groups,
        kh: kernel_hw.0,
        kw: kernel_hw.1,
    };
    Ok(x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)?)
}

fn check_bn(op: &'static str, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<()> {
    if x.rank() < 2 {
        return Err(KernelError::Rank {
            op,
            arg: "x",
            want: 4,
            got: x.dims().to_vec(),
        });
    }
    check_channel_vec(op, "gamma", x, gamma)?;
    check_channel_vec(op, "beta", x, beta)?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(KernelError::Eps { op, eps });
    }
    Ok(())
}

/// `(N, C, …)` → `(N, C, S)` dims with `S` the product of the trailing dims.
fn ncs(x: &Tensor) -> (usize, usize, usize) {
    let d = x.dims();
    (d[0], d[1], d[2..].iter().product())
}

/// Training-mode batch norm over `x (N, C, H, W)` (any rank ≥ 2; statistics over every dim but 1).
///
/// `y = γ·(x − μ_B)/√(σ²_B + eps) + β` with the batch mean `μ_B` and the *biased* batch
/// variance `σ²_B` (PyTorch `BatchNorm2d` in train mode), then `max(y, 0)` when `relu`.
/// Returns `(y, μ_B, σ²_B)`; the two statistics have shape `(C,)` and carry no gradient. The
/// caller updates its running statistics from them with [`update_running_stats`].
///
/// Gradients flow to `x`, `gamma` and `beta`. On CPU f32 the forward is one statistics pass and
/// one normalise pass, and the backward computes dx, dγ, dβ in one fused op. The ReLU gradient
/// is zero where `y ≤ 0`, as PyTorch's `threshold_backward`.
/// Differs from candle's stock `relu` backward, which passes the gradient at exactly 0.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "batch_norm_train";
    check_bn(OP, x, gamma, beta, eps)?;
    let (n, c, s) = ncs(x);
    if n * s < 2 {
        return Err(KernelError::TooFewValues { count: n * s });
    }
    if !fast(x) {
        return stock_bn_train(x, gamma, beta, eps, relu);
    }
    let saved = Arc::new(OnceLock::new());
    let op = bn::BatchNorm {
        mode: bn::Mode::Batch { eps },
        relu,
        saved: saved.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = saved.get().ok_or_else(|| {
        candle_core::Error::Msg("batch_norm_train: statistics not computed".into())
    })?;
    let mean = Tensor::from_vec(stats.mean.clone(), c, x.device())?;
    let var = Tensor::from_vec(stats.var.clone(), c, x.device())?;
    Ok((y, mean, var))
}

fn stock_bn_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, s) = ncs(x);
    let xr = x.reshape((n, c, s))?;
    let mean = xr.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = xr.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
    let y = xc
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&gamma.reshape((1, c, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((
        y.reshape(x.shape())?,
        mean.flatten_all()?.detach(),
        var.flatten_all()?.detach(),
    ))
}

/// Evaluation-mode batch norm: `y = γ·(x − running_mean)/√(running_var + eps) + β`, a
/// per-channel affine, then `max(y, 0)` when `relu`. `running_*` have shape `(C,)` and get no
/// gradient; `x`, `gamma` and `beta` do (for fine-tuning with frozen statistics).
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    const OP: &str = "batch_norm_eval";
    check_bn(OP, x, gamma, beta, eps)?;
    check_channel_vec(OP, "running_mean", x, running_mean)?;
    check_channel_vec(OP, "running_var", x, running_var)?;
    if !fast(x) {
        let (n, c, s) = ncs(x);
        let scale = (gamma / (running_var + eps)?.sqrt()?)?;
        let shift = (beta - (running_mean * &scale)?)?;
        let y = x
            .reshape((n, c, s))?
            .broadcast_mul(&scale.reshape((1, c, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1))?)?;
        let y = if relu { y.relu()? } else { y };
        return Ok(y.reshape(x.shape())?);
    }
    let mean = running_mean.to_vec1::<f32>()?;
    let var = running_var.to_vec1::<f32>()?;
    let invstd = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let saved = Arc::new(OnceLock::new());
    let _ = saved.set(bn::Saved { mean, var, invstd });
    let op = bn::BatchNorm {
        mode: bn::Mode::Running,
        relu,
        saved,
    };
    Ok(x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?)
}

/// `max(a + b, 0)` for two tensors of one shape: the residual join of a ResNet block.
/// Gradients flow to both; the ReLU gradient is zero where the output is 0 (PyTorch semantics).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add_relu";
    check_like(OP, "b", a, b)?;
    if a.dims() != b.dims() {
        return Err(KernelError::Shape {
            op: OP,
            arg: "b",
            want: a.dims().to_vec(),
            got: b.dims().to_vec(),
        });
    }
    if !fast(a) {
        return Ok((a + b)?.relu()?);
    }
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, bn::AddRelu)?)
}

/// Gradient through a ReLU given its output `y`: `dy·[y > 0]` (PyTorch's `threshold_backward`).
/// What [`add_relu`]'s backward runs; public for benchmarks and custom backward passes.
pub fn relu_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    const OP: &str = "relu_backward";
    check_like(OP, "y", dy, y)?;
    if dy.dims() != y.dims() {
        return Err(KernelError::Shape {
            op: OP,
            arg: "y",
            want: dy.dims().to_vec(),
            got: y.dims().to_vec(),
        });
    }
    if !fast(dy) {
        return Ok((dy * y.gt(0.0)?.to_dtype(dy.dtype())?)?);
    }
    Ok(dy
        .contiguous()?
        .apply_op2_no_bwd(&y.contiguous()?, &bn::ReluMask)?)
}

/// Gradients of a batch norm given its output gradient `dy`: `(dx, dγ, dβ)`, the values
/// `loss.backward()` gives through [`batch_norm_train`] (`train`) or [`batch_norm_eval`].
/// `mean_var` is what normalised `x`: the batch statistics [`batch_norm_train`] returned, or the
/// running ones; `relu_out` is the forward's output when it was fused with ReLU (the gradient is
/// masked by `y > 0`), `None` otherwise. What the batch-norm backward runs; public for
/// benchmarks and custom backward passes (no autograd graph).
pub fn batch_norm_backward(
    x: &Tensor,
    relu_out: Option<&Tensor>,
    dy: &Tensor,
    gamma: &Tensor,
    mean_var: (&Tensor, &Tensor),
    eps: f64,
    train: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "batch_norm_backward";
    let (mean, var) = mean_var;
    check_bn(OP, x, gamma, gamma, eps)?;
    check_channel_vec(OP, "mean", x, mean)?;
    check_channel_vec(OP, "var", x, var)?;
    for (arg, t) in [("dy", Some(dy)), ("relu_out", relu_out)] {
        let Some(t) = t else { continue };
        check_like(OP, arg, x, t)?;
        if t.dims() != x.dims() {
            return Err(KernelError::Shape {
                op: OP,
                arg,
                want: x.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
    }
    let (n, c, s) = ncs(x);
    if !fast(x) {
        let g = match relu_out {
            Some(y) => (dy * y.gt(0.0)?.to_dtype(dy.dtype())?)?,
            None => dy.clone(),
        }
        .reshape((n, c, s))?;
        let invstd = (var + eps)?.sqrt()?.recip()?.reshape((1, c, 1))?;
        let xhat = x
            .reshape((n, c, s))?
            .broadcast_sub(&mean.reshape((1, c, 1))?)?
            .broadcast_mul(&invstd)?;
        let dbeta = g.sum((0, 2))?;
        let dgamma = (&g * &xhat)?.sum((0, 2))?;
        let a = gamma.reshape((1, c, 1))?.broadcast_mul(&invstd)?;
        let g = if train {
            let count = (n * s) as f64;
            ((&g - (xhat.broadcast_mul(&dgamma.reshape((1, c, 1))?)? / count)?)?
                .broadcast_sub(&(dbeta.reshape((1, c, 1))? / count)?))?
        } else {
            g
        };
        let dx = g.broadcast_mul(&a)?.reshape(x.shape())?;
        return Ok((dx, dgamma, dbeta));
    }
    let mean = mean.to_vec1::<f32>()?;
    let invstd = var
        .to_vec1::<f32>()?
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let op = bn::BatchNormBwd {
        gamma: gamma.to_vec1::<f32>()?,
        mean,
        invstd,
        relu: relu_out.is_some(),
        batch_stats: train,
        param_grads: OnceLock::new(),
    };
    // Without a ReLU the op does not read its second input: `dy` stands in for it.
    let y = relu_out.unwrap_or(dy).contiguous()?;
    let dx = x
        .contiguous()?
        .apply_op3_no_bwd(&y, &dy.contiguous()?, &op)?;
    let (dg, db) = op
        .param_grads
        .into_inner()
        .ok_or_else(|| candle_core::Error::Msg("batch_norm_backward: no sums".into()))?;
    let dgamma = Tensor::from_vec(dg, c, x.device())?;
    let dbeta = Tensor::from_vec(db, c, x.device())?;
    Ok((dx, dgamma, dbeta))
}

/// Max pooling of `x (N, C, H, W)` over `kernel × kernel` windows every `stride`, with `padding`
/// cells of −∞ on each side (PyTorch `F.max_pool2d(x, kernel, stride, padding)`, floor mode):
/// `(N, C, Ho, Wo)`, `Ho = (H + 2·padding − kernel)/stride + 1`. The gradient goes to the first
/// maximum of each window in row-major order, as PyTorch's.
///
/// On CPU f32 a custom op (direct loops, parallel over planes); elsewhere
/// [`max_pool2d_autograd`]. PyTorch's limit holds: `padding ≤ kernel / 2`.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    check_pool("max_pool2d", x, kernel, stride, padding)?;
    if !fast(x) {
        return Ok(pool::max_pool2d_autograd(x, kernel, stride, padding)?);
    }
    let op = pool::MaxPool2d {
        kernel,
        stride,
        padding,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// Gradient of [`max_pool2d`] with respect to its input, given `dy (N, C, Ho, Wo)`: each window's
/// gradient added at its first maximum. What [`max_pool2d`]'s backward runs; public for
/// benchmarks and custom backward passes (no autograd graph). Off the CPU or for another dtype
/// it is computed through [`max_pool2d_autograd`].
pub fn max_pool2d_backward(
    x: &Tensor,
    dy: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    const OP: &str = "max_pool2d_backward";
    check_pool(OP, x, kernel, stride, padding)?;
    check_like(OP, "dy", x, dy)?;
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (
        pool::pooled(h, kernel, stride, padding),
        pool::pooled(w, kernel, stride, padding),
    );
    check_dy(OP, dy, [n, c, ho, wo])?;
    if !fast(x) {
        let xv = candle_core::Var::from_tensor(&x.detach())?;
        let y = pool::max_pool2d_autograd(&xv, kernel, stride, padding)?;
        let grads = (y * dy.detach())?.sum_all()?.backward()?;
        let dx = grads.get(&xv).cloned();
        return dx.ok_or_else(|| {
            candle_core::Error::Msg("max_pool2d_backward: no gradient".into()).into()
        });
    }
    let op = pool::MaxPool2dBwd(pool::MaxPool2d {
        kernel,
        stride,
        padding,
    });
    Ok(x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)?)
}

/// Argument checks shared by [`max_pool2d`] and [`max_pool2d_backward`].
fn check_pool(
    op: &'static str,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<()> {
    check_rank(op, "x", x, 4)?;
    if kernel == 0 {
        return Err(KernelError::Zero { op, arg: "kernel" });
    }
    if stride == 0 {
        return Err(KernelError::Zero { op, arg: "stride" });
    }
    let (_, _, h, w) = x.dims4()?;
    if 2 * padding > kernel || h + 2 * padding < kernel || w + 2 * padding < kernel {
        return Err(KernelError::PoolWindow {
            h,
            w,
            kernel,
            padding,
        });
    }
    Ok(())
}

/// Tunes glibc's `malloc` for training: large blocks (up to 32 MiB, glibc's ceiling) come from
/// the heap instead of a fresh `mmap`, and freed memory is kept (trim threshold 2 GiB, top pad
/// 256 MiB) for the next step's tensors of the same sizes.
///
/// Why: every op of a training step allocates its output and candle frees it a few ops later.
/// By default glibc serves each block over 128 KiB with `mmap` and unmaps it on free, so the
/// next step faults in and zeroes the same pages again (9 % of a ResNet-32 step in `perf`; more on
/// a VM). Measured with `cargo bench -p longtail-kernels train`: 141 → 174 img/s (median of three
/// runs each, interleaved), same peak RSS. It changes process-wide allocator settings, so the
/// binaries call it at start-up (the `longtail` CLI does) and a library never does it behind
/// its caller's back. Returns whether the settings were applied (false off Linux/glibc).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let ok = false;
    ALLOCATOR_TUNED.store(ok, std::sync::atomic::Ordering::Relaxed);
    ok
}

static ALLOCATOR_TUNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`tune_allocator`] has run successfully in this process.
pub fn allocator_tuned() -> bool {
    ALLOCATOR_TUNED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Gives the heap's free memory back to the OS (`malloc_trim`), e.g. between benchmark phases
/// so one phase's peak RSS does not include memory another phase left in the heap. No-op off
/// Linux/glibc.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// This machine's reachable f32 GEMM throughput in GFLOP/s: the median of `reps` products of two
/// `n × n` matrices with the `gemm` crate (the one our convolutions call) over all rayon threads.
/// The denominator of "fraction of peak" in `longtail bench train`.
pub fn gemm_peak_gflops(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut c = vec![0f32; n * n];
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    let mut times = Vec::with_capacity(reps + 1);
    for rep in 0..=reps.max(1) {
        let t = std::time::Instant::now();
        conv::sgemm(
            (n, n, n),
            &mut c,
            (n, 1),
            false,
            &a,
            (n, 1),
            &b,
            (n, 1),
            par,
        );
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    2.0 * (n * n * n) as f64 / times[times.len() / 2] / 1e9
}

/// PyTorch's running-statistics update after a training-mode batch norm over `count = N·H·W`
/// values: `m ← (1 − momentum)·m + momentum·μ_B`, `v ← (1 − momentum)·v + momentum·σ²_B·count/(count − 1)`
/// (the unbiased batch variance; PyTorch uses momentum 0.1). Returns the new `(mean, var)`,
/// detached, for the caller to store (e.g. `Var::set`).
pub fn update_running_stats(
    running_mean: &Tensor,
    running_var: &Tensor,
    batch_mean: &Tensor,
    batch_var: &Tensor,
    count: usize,
    momentum: f64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "update_running_stats";
    if count < 2 {
        return Err(KernelError::TooFewValues { count });
    }
    for (arg, t) in [
        ("running_var", running_var),
        ("batch_mean", batch_mean),
        ("batch_var", batch_var),
    ] {
        check_like(OP, arg, running_mean, t)?;
        if t.dims() != running_mean.dims() {
            return Err(KernelError::Shape {
                op: OP,
                arg,
                want: running_mean.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
    }
    let unbias = count as f64 / (count as f64 - 1.0);
    let mean = ((running_mean.detach() * (1.0 - momentum))? + (batch_mean.detach() * momentum)?)?;
    let var =
        ((running_var.detach() * (1.0 - momentum))? + (batch_var.detach() * (momentum * unbias))?)?;
    Ok((mean, var))
}
