//! The one place that chooses how convolutions and batch norms are computed.
//!
//! Every conv, BN and residual add of the backbones goes through [`conv2d`], [`BatchNorm2d`]
//! and [`add_relu`], dispatching on [`Kernels`]: [`Kernels::Fast`] (the default) uses the
//! `longtail-kernels` custom ops (im2col + GEMM convolutions with GEMM backward, fused BN + ReLU
//! with a fused backward) on CPU f32 tensors and candle's own ops anywhere else (CUDA keeps
//! candle's kernels); [`Kernels::Stock`] forces candle's ops everywhere, for comparison.
//!
//! Data-parallel training can make every train-mode batch norm use the statistics of the
//! whole global batch ([`set_sync_batch_norm`], PyTorch's `SyncBatchNorm`).

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// Convolution / batch-norm implementation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kernels {
    /// candle-core `Tensor::conv2d` and candle-nn `BatchNorm` (generic autograd backward).
    Stock,
    /// `longtail-kernels` on CPU f32 (about 9× faster training than `Stock` on ResNet-32, see
    /// `crates/kernels/README.md`), candle's ops on other devices and dtypes.
    #[default]
    Fast,
}

/// A sum over the ranks of a data-parallel job, for synchronised batch norm: every rank passes
/// its tensor and gets the sum of all ranks' tensors. It must be differentiable with the
/// matching backward: the gradient reaching each rank's input is the sum over the ranks of the
/// gradients of the output (as `torch.distributed.nn.all_reduce`).
pub trait RankSum {
    /// The element-wise sum of `t` over the ranks (same shape on every rank).
    fn sum_over_ranks(&self, t: &Tensor) -> Result<Tensor>;
}

thread_local! {
    static SYNC_BN: RefCell<Option<Rc<dyn RankSum>>> = const { RefCell::new(None) };
}

/// Makes every train-mode [`BatchNorm2d`] forward on this thread normalise with the statistics
/// of the global batch, gathered through `ranks` (PyTorch `SyncBatchNorm`: mean and biased
/// variance over all ranks' images, the running statistics updated with them, gradients
/// flowing across ranks); `None` goes back to per-rank statistics. Returns the previous
/// setting. Thread-local because the collectives run on the thread that owns the
/// communicator (MPI is initialised `MPI_THREAD_FUNNELED`). Synchronised layers are computed
/// with candle's ops in f64 and two passes (mean, then the centred variance: no
/// `E[x²] − E[x]²` cancellation), not with the fused kernels: slower, and their activations
/// take twice the memory while the backward pass needs them.
pub fn set_sync_batch_norm(ranks: Option<Rc<dyn RankSum>>) -> Option<Rc<dyn RankSum>> {
    SYNC_BN.with(|s| std::mem::replace(&mut *s.borrow_mut(), ranks))
}

fn sync_batch_norm() -> Option<Rc<dyn RankSum>> {
    SYNC_BN.with(|s| s.borrow().clone())
}

/// `relu(a + b)`: the residual join of every block.
pub fn add_relu(kernels: Kernels, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match kernels {
        Kernels::Stock => (a + b)?.relu(),
        Kernels::Fast => Ok(longtail_kernels::add_relu(a, b)?),
    }
}

/// Max pooling with PyTorch's semantics (−∞ padding, gradient to each window's first maximum):
/// the ImageNet stem's `MaxPool2d(3, 2, padding=1)`. candle's own `max_pool2d` has no backward
/// when kernel ≠ stride, so [`Kernels::Stock`] uses the stock-op formulation
/// [`longtail_kernels::max_pool2d_autograd`] (also what `Fast` uses off the CPU).
pub fn max_pool2d(
    kernels: Kernels,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    match kernels {
        Kernels::Stock => longtail_kernels::max_pool2d_autograd(x, kernel, stride, padding),
        Kernels::Fast => Ok(longtail_kernels::max_pool2d(x, kernel, stride, padding)?),
    }
}

/// 2-D convolution without bias: `x` `[B, Cin, H, W]`, `w` `[Cout, Cin/groups, kh, kw]`,
/// symmetric zero `padding`, dilation 1 (PyTorch `F.conv2d(x, w, None, stride, padding, 1, groups)`).
pub fn conv2d(
    kernels: Kernels,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    match kernels {
        Kernels::Stock => x.conv2d(w, padding, stride, 1, groups),
        Kernels::Fast => Ok(longtail_kernels::conv2d(x, w, stride, padding, groups)?),
    }
}

/// `BatchNorm2d` with PyTorch semantics (eps 1e-5, momentum 0.1): train mode normalises with the
/// batch statistics (biased variance) and updates the running statistics in place (unbiased
/// variance `n/(n-1)`, n = B·H·W); eval mode uses the running statistics.
///
/// Its four tensors live in the VarMap under `weight`, `bias`, `running_mean`, `running_var`,
/// the PyTorch state-dict names; the running statistics are Vars but get no gradient.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    kernels: Kernels,
    stock: candle_nn::BatchNorm,
}

impl BatchNorm2d {
    /// PyTorch `BatchNorm2d` defaults.
    pub const EPS: f64 = 1e-5;
    /// PyTorch `BatchNorm2d` default momentum.
    pub const MOMENTUM: f64 = 0.1;

    /// Creates (or fetches) the four tensors under `vb` (γ = 1, β = 0, mean 0, var 1 when new).
    pub fn new(channels: usize, vb: VarBuilder, kernels: Kernels) -> Result<Self> {
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        // `Var::from_tensor` keeps the storage of a tensor that already is a Var (the VarMap's),
        // so updates and loads through the VarMap reach this layer.
        let running_mean = Var::from_tensor(&running_mean)?;
        let running_var = Var::from_tensor(&running_var)?;
        let stock = candle_nn::BatchNorm::new_with_momentum(
            channels,
            running_mean.as_tensor().clone(),
            running_var.as_tensor().clone(),
            weight.clone(),
            bias.clone(),
            Self::EPS,
            Self::MOMENTUM,
        )?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps: Self::EPS,
            momentum: Self::MOMENTUM,
            kernels,
            stock,
        })
    }

    /// The same layer with detached γ and β, for inference ([`crate::MultiExpert::detached`]):
    /// its outputs keep no autograd graph. The running statistics stay the layer's own Vars
    /// (they never get a gradient; eval mode reads them detached).
    pub fn detached(&self) -> Result<Self> {
        let (weight, bias) = (self.weight.detach(), self.bias.detach());
        let stock = candle_nn::BatchNorm::new_with_momentum(
            weight.dim(0)?,
            self.running_mean.as_tensor().detach(),
            self.running_var.as_tensor().detach(),
            weight.clone(),
            bias.clone(),
            self.eps,
            self.momentum,
        )?;
        Ok(Self {
            weight,
            bias,
            running_mean: self.running_mean.clone(),
            running_var: self.running_var.clone(),
            eps: self.eps,
            momentum: self.momentum,
            kernels: self.kernels,
            stock,
        })
    }

    /// Normalises `x` `[B, C, H, W]`; `train` selects batch statistics (and updates the running ones).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (true, Some(ranks)) = (train, sync_batch_norm()) {
            return self.synced(x, false, ranks.as_ref());
        }
        match self.kernels {
            Kernels::Stock => candle_nn::ModuleT::forward_t(&self.stock, x, train),
            Kernels::Fast => self.fast(x, train, false),
        }
    }

    /// `relu(bn(x))`, the pair every block uses; a fused kernel can replace it.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (true, Some(ranks)) = (train, sync_batch_norm()) {
            return self.synced(x, true, ranks.as_ref());
        }
        match self.kernels {
            Kernels::Stock => self.forward_t(x, train)?.relu(),
            Kernels::Fast => self.fast(x, train, true),
        }
    }

    /// The fused kernels: batch statistics (and the running-statistics update) in train mode,
    /// running statistics in eval mode, with the ReLU folded in when `relu`.
    fn fast(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !train {
            return Ok(longtail_kernels::batch_norm_eval(
                x,
                &self.weight,
                &self.bias,
                &self.running_mean.as_tensor().detach(),
                &self.running_var.as_tensor().detach(),
                self.eps,
                relu,
            )?);
        }
        let (y, mean, var) =
            longtail_kernels::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        let (b, _, h, w) = x.dims4()?;
        let (rm, rv) = longtail_kernels::update_running_stats(
            self.running_mean.as_tensor(),
            self.running_var.as_tensor(),
            &mean,
            &var,
            b * h * w,
            self.momentum,
        )?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(y)
    }

    /// Train mode over the global batch of a data-parallel job ([`set_sync_batch_norm`]): the
    /// per-channel count and sum, then the sum of squared deviations from the global mean, are
    /// summed over the ranks; the running statistics get the global mean and the unbiased
    /// global variance, so they stay equal on every rank.
    ///
    /// Computed in f64 and cast back: the backward pass's per-channel reductions (Σdy,
    /// Σdy·(x − μ)) run over every image and pixel of the rank, and where the incoming gradient
    /// is nearly constant per channel (the last BN before global pooling) their f32 rounding
    /// survives the subtraction `dy − mean(dy)`: in f32 the 2-rank gradients of `ride.fmnist-lt`
    /// were 2e-4 off (on gradients of 1e-2); in f64 the 2-rank gradients are within 1e-6 of
    /// this layer's over one process. The fused f32 kernels agree with it to rounding, except
    /// where an activation within rounding of zero lands on the other side of a ReLU: that
    /// alone moves a weight gradient by ~1e-4 in the same test.
    fn synced(&self, x: &Tensor, relu: bool, ranks: &dyn RankSum) -> Result<Tensor> {
        use candle_core::DType::F64;
        let (b, c, h, w) = x.dims4()?;
        let xd = x.to_dtype(F64)?;
        let count = Tensor::new(&[(b * h * w) as f64], x.device())?;
        let local = Tensor::cat(&[xd.sum((0, 2, 3))?, count], 0)?;
        let global = ranks.sum_over_ranks(&local)?;
        let n = global.get(c)?.to_scalar::<f64>()?;
        let mean = (global.narrow(0, 0, c)? / n)?;
        let centred = xd.broadcast_sub(&mean.reshape((1, c, 1, 1))?)?;
        // The variance around the detached mean: its gradient through the mean, −2·Σ(x − μ)/N
        // over all ranks' images, is exactly zero, though each rank's share of it is not
        // (PyTorch's SyncBatchNorm backward leaves it out too).
        let around = xd.broadcast_sub(&mean.detach().reshape((1, c, 1, 1))?)?;
        let var = (ranks.sum_over_ranks(&around.sqr()?.sum((0, 2, 3))?)? / n)?;
        let scale = ((var.clone() + self.eps)?.sqrt()?.recip()? * self.weight.to_dtype(F64)?)?;
        let y = centred
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.to_dtype(F64)?.reshape((1, c, 1, 1))?)?;
        let y = if relu { y.relu()? } else { y };
        let m = self.momentum;
        let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let stats = self.running_mean.dtype();
        let rm =
            ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach().to_dtype(stats)? * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))?
            + (var.detach().to_dtype(stats)? * (m * unbiased))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        y.to_dtype(x.dtype())
    }

    /// Scale γ `[C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// Shift β `[C]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
    /// Running mean `[C]` (updated in train mode).
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }
    /// Running (unbiased) variance `[C]` (updated in train mode).
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }
    /// Epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
    /// Running-statistics momentum.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }
}
