//! Building blocks: conv, residual blocks, stages, stem and classifier heads.
//!
//! Each module is built through a `VarBuilder` so that its path is the official state-dict key
//! (docs/ride.md §2, docs/tlc.md §7). Each also reports its multiply-accumulates for a given input size,
//! which is how [`crate::MacCount`] is computed from the real module tree.

use candle_core::{Module, Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use crate::config::{Arch, BackboneConfig};
use crate::ops::{self, BatchNorm2d, Kernels};

/// Output size of a conv / pool along one axis (PyTorch's floor formula).
pub(crate) fn out_size(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// A bias-free 2-D convolution whose weight is `<prefix>.weight` `[out, in/groups, k, k]`.
#[derive(Clone, Debug)]
pub(crate) struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    kernels: Kernels,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        in_c: usize,
        out_c: usize,
        k: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        cfg: &BackboneConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        // Unseeded hint with the official distribution; `init_weights` gives the seeded one.
        let fan = if cfg.arch.is_cifar() {
            FanInOut::FanIn
        } else {
            FanInOut::FanOut
        };
        let init = Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan,
            non_linearity: NonLinearity::ReLU,
        };
        let weight = vb.get_with_hints((out_c, in_c / groups, k, k), "weight", init)?;
        Ok(Self {
            weight,
            stride,
            padding,
            groups,
            kernels: cfg.kernels,
        })
    }

    fn detached(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            ..self.clone()
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(
            self.kernels,
            x,
            &self.weight,
            self.stride,
            self.padding,
            self.groups,
        )
    }

    /// MACs on an `h × w` input, and the output size.
    fn macs(&self, h: usize, w: usize) -> (u64, usize, usize) {
        let (out_c, in_per_group, k, _) = self.weight.dims4().unwrap_or((0, 0, 0, 0));
        let oh = out_size(h, k, self.stride, self.padding);
        let ow = out_size(w, k, self.stride, self.padding);
        ((oh * ow * out_c * in_per_group * k * k) as u64, oh, ow)
    }
}

/// Option-A shortcut (docs/ride.md §1.1): `x[:, :, ::2, ::2]` when `stride` is 2, then
/// `(out - in) / 2` zero channels on each side.
///
/// Differs from official: with stride 1 and a width change (only possible with explicit
/// `widths` whose first entry is not 16) the channels are padded without subsampling; the
/// official lambda would subsample anyway and fail on the residual add.
fn option_a(x: &Tensor, stride: usize, in_c: usize, out_c: usize) -> Result<Tensor> {
    let x = if stride == 1 {
        x.clone()
    } else {
        let (_, _, h, w) = x.dims4()?;
        let rows = Tensor::arange_step(0u32, h as u32, stride as u32, x.device())?;
        let cols = Tensor::arange_step(0u32, w as u32, stride as u32, x.device())?;
        x.index_select(&rows, 2)?.index_select(&cols, 3)?
    };
    let pad = (out_c - in_c) / 2;
    if pad == 0 {
        Ok(x)
    } else {
        x.pad_with_zeros(1, pad, pad)
    }
}

/// CIFAR BasicBlock (expansion 1): conv3x3 → BN → ReLU → conv3x3 → BN, + shortcut, ReLU.
#[derive(Clone, Debug)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    stride: usize,
    in_c: usize,
    out_c: usize,
    kernels: Kernels,
}

impl BasicBlock {
    fn new(
        in_c: usize,
        planes: usize,
        stride: usize,
        cfg: &BackboneConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv1: Conv::new(in_c, planes, 3, stride, 1, 1, cfg, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(planes, vb.pp("bn1"), cfg.kernels)?,
            conv2: Conv::new(planes, planes, 3, 1, 1, 1, cfg, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(planes, vb.pp("bn2"), cfg.kernels)?,
            stride,
            in_c,
            out_c: planes,
            kernels: cfg.kernels,
        })
    }

    fn detached(&self) -> Result<Self> {
        Ok(Self {
            conv1: self.conv1.detached(),
            bn1: self.bn1.detached()?,
            conv2: self.conv2.detached(),
            bn2: self.bn2.detached()?,
            ..*self
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_relu_t(&self.conv1.forward(x)?, train)?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let shortcut = if self.stride != 1 || self.in_c != self.out_c {
            option_a(x, self.stride, self.in_c, self.out_c)?
        } else {
            x.clone()
        };
        ops::add_relu(self.kernels, &y, &shortcut)
    }

    fn macs(&self, h: usize, w: usize) -> (u64, usize, usize) {
        let (m1, h, w) = self.conv1.macs(h, w);
        let (m2, h, w) = self.conv2.macs(h, w);
        (m1 + m2, h, w)
    }
}

/// ImageNet Bottleneck (expansion 4, stride on the 3×3 conv, docs/ride.md §1.2): conv1x1 → BN → ReLU →
/// conv3x3(stride, groups) → BN → ReLU → conv1x1 → BN, + downsample (conv1x1 + BN) or identity, ReLU.
#[derive(Clone, Debug)]
struct Bottleneck {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    conv3: Conv,
    bn3: BatchNorm2d,
    downsample: Option<(Conv, BatchNorm2d)>,
    kernels: Kernels,
}

impl Bottleneck {
    fn new(
        in_c: usize,
        planes: usize,
        stride: usize,
        cfg: &BackboneConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        // torchvision: width = planes * (base_width / 64) * groups; ResNeXt 32x4d: int(planes*4/64)*32.
        let (width, groups) = match cfg.arch {
            Arch::Resnext50 => (planes * 4 / 64 * 32, 32),
            _ => (planes, 1),
        };
        let out_c = planes * 4;
        let downsample = if stride != 1 || in_c != out_c {
            let ds = vb.pp("downsample");
            Some((
                Conv::new(in_c, out_c, 1, stride, 0, 1, cfg, ds.pp("0"))?,
                BatchNorm2d::new(out_c, ds.pp("1"), cfg.kernels)?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::new(in_c, width, 1, 1, 0, 1, cfg, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(width, vb.pp("bn1"), cfg.kernels)?,
            conv2: Conv::new(width, width, 3, stride, 1, groups, cfg, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(width, vb.pp("bn2"), cfg.kernels)?,
            conv3: Conv::new(width, out_c, 1, 1, 0, 1, cfg, vb.pp("conv3"))?,
            bn3: BatchNorm2d::new(out_c, vb.pp("bn3"), cfg.kernels)?,
            downsample,
            kernels: cfg.kernels,
        })
    }

    fn detached(&self) -> Result<Self> {
        Ok(Self {
            conv1: self.conv1.detached(),
            bn1: self.bn1.detached()?,
            conv2: self.conv2.detached(),
            bn2: self.bn2.detached()?,
            conv3: self.conv3.detached(),
            bn3: self.bn3.detached()?,
            downsample: match &self.downsample {
                Some((conv, bn)) => Some((conv.detached(), bn.detached()?)),
                None => None,
            },
            kernels: self.kernels,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_relu_t(&self.conv1.forward(x)?, train)?;
        let y = self.bn2.forward_relu_t(&self.conv2.forward(&y)?, train)?;
        let y = self.bn3.forward_t(&self.conv3.forward(&y)?, train)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        ops::add_relu(self.kernels, &y, &shortcut)
    }

    fn macs(&self, h: usize, w: usize) -> (u64, usize, usize) {
        let (m1, h1, w1) = self.conv1.macs(h, w);
        let (m2, h2, w2) = self.conv2.macs(h1, w1);
        let (m3, h3, w3) = self.conv3.macs(h2, w2);
        let md = self.downsample.as_ref().map_or(0, |(c, _)| c.macs(h, w).0);
        (m1 + m2 + m3 + md, h3, w3)
    }
}

/// A residual block (boxed: the stage holds one kind, and the two differ a lot in size).
#[derive(Clone, Debug)]
enum Block {
    Basic(Box<BasicBlock>),
    Bottleneck(Box<Bottleneck>),
}

/// One residual stage (`layer{i}` or `layer{i}s.{e}`): blocks `0..n`, the first with the stride.
#[derive(Clone, Debug)]
pub(crate) struct Stage {
    blocks: Vec<Block>,
}

impl Stage {
    /// Stage `index` (0-based) of `cfg`, taking `in_c` channels.
    pub(crate) fn new(
        cfg: &BackboneConfig,
        index: usize,
        in_c: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let planes = cfg.planes()[index];
        let n = cfg.blocks()[index];
        let stride = if index == 0 { 1 } else { 2 };
        let mut blocks = Vec::with_capacity(n);
        let mut c = in_c;
        for b in 0..n {
            let s = if b == 0 { stride } else { 1 };
            let block = if cfg.arch.is_cifar() {
                Block::Basic(Box::new(BasicBlock::new(c, planes, s, cfg, vb.pp(b))?))
            } else {
                Block::Bottleneck(Box::new(Bottleneck::new(c, planes, s, cfg, vb.pp(b))?))
            };
            blocks.push(block);
            c = planes * cfg.arch.expansion();
        }
        Ok(Self { blocks })
    }

    /// The same stage on detached weights ([`crate::MultiExpert::detached`]).
    pub(crate) fn detached(&self) -> Result<Self> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(match b {
                    Block::Basic(b) => Block::Basic(Box::new(b.detached()?)),
                    Block::Bottleneck(b) => Block::Bottleneck(Box::new(b.detached()?)),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { blocks })
    }

    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks {
            x = match block {
                Block::Basic(b) => b.forward_t(&x, train)?,
                Block::Bottleneck(b) => b.forward_t(&x, train)?,
            };
        }
        Ok(x)
    }

    pub(crate) fn macs(&self, mut h: usize, mut w: usize) -> (u64, usize, usize) {
        let mut total = 0;
        for block in &self.blocks {
            let (m, nh, nw) = match block {
                Block::Basic(b) => b.macs(h, w),
                Block::Bottleneck(b) => b.macs(h, w),
            };
            total += m;
            h = nh;
            w = nw;
        }
        (total, h, w)
    }
}

/// `conv1` → `bn1` → ReLU, plus maxpool 3/2 pad 1 on the ImageNet networks.
#[derive(Clone, Debug)]
pub(crate) struct Stem {
    conv1: Conv,
    bn1: BatchNorm2d,
    max_pool: bool,
    kernels: Kernels,
}

impl Stem {
    pub(crate) fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        let width = cfg.arch.stem_width();
        let conv1 = if cfg.arch.is_cifar() {
            Conv::new(cfg.in_channels, width, 3, 1, 1, 1, cfg, vb.pp("conv1"))?
        } else {
            Conv::new(cfg.in_channels, width, 7, 2, 3, 1, cfg, vb.pp("conv1"))?
        };
        Ok(Self {
            conv1,
            bn1: BatchNorm2d::new(width, vb.pp("bn1"), cfg.kernels)?,
            max_pool: !cfg.arch.is_cifar(),
            kernels: cfg.kernels,
        })
    }

    pub(crate) fn detached(&self) -> Result<Self> {
        Ok(Self {
            conv1: self.conv1.detached(),
            bn1: self.bn1.detached()?,
            ..*self
        })
    }

    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_relu_t(&self.conv1.forward(x)?, train)?;
        if self.max_pool {
            // MaxPool2d(3, 2, padding=1), with a gradient (candle's max_pool2d has none here).
            ops::max_pool2d(self.kernels, &y, 3, 2, 1)
        } else {
            Ok(y)
        }
    }

    pub(crate) fn macs(&self, h: usize, w: usize) -> (u64, usize, usize) {
        let (m, h, w) = self.conv1.macs(h, w);
        if self.max_pool {
            (m, out_size(h, 3, 2, 1), out_size(w, 3, 2, 1))
        } else {
            (m, h, w)
        }
    }
}

/// An expert's classifier: NormedLinear (cosine, ×s) or `nn.Linear`.
#[derive(Clone, Debug)]
pub(crate) enum Classifier {
    /// `s · normalize(x, dim=1) @ normalize(W, dim=0)`, W `[in, out]` (docs/ride.md §1.1).
    Normed { weight: Tensor, scale: f64 },
    /// `x Wᵀ + b`, W `[out, in]`.
    Linear(candle_nn::Linear),
}

/// `v / max(‖v‖₂, 1e-12)` along `dim`, as PyTorch `F.normalize`.
fn l2_normalize(v: &Tensor, dim: usize) -> Result<Tensor> {
    let norm = v.sqr()?.sum_keepdim(dim)?.sqrt()?.maximum(1e-12)?;
    v.broadcast_div(&norm)
}

impl Classifier {
    pub(crate) fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        let (d, c) = (cfg.feature_dim(), cfg.num_classes);
        if cfg.use_norm {
            let weight =
                vb.get_with_hints((d, c), "weight", Init::Uniform { lo: -1.0, up: 1.0 })?;
            Ok(Self::Normed {
                weight,
                scale: cfg.scale,
            })
        } else {
            let bound = 1.0 / (d as f64).sqrt();
            let weight = vb.get_with_hints(
                (c, d),
                "weight",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?;
            let bias = vb.get_with_hints(
                c,
                "bias",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?;
            Ok(Self::Linear(candle_nn::Linear::new(weight, Some(bias))))
        }
    }

    pub(crate) fn detached(&self) -> Self {
        match self {
            Self::Normed { weight, scale } => Self::Normed {
                weight: weight.detach(),
                scale: *scale,
            },
            Self::Linear(l) => Self::Linear(candle_nn::Linear::new(
                l.weight().detach(),
                l.bias().map(Tensor::detach),
            )),
        }
    }

    /// `features` `[B, D]` → logits `[B, C]`.
    pub(crate) fn forward(&self, features: &Tensor) -> Result<Tensor> {
        match self {
            Self::Normed { weight, scale } => {
                let x = l2_normalize(features, 1)?;
                let w = l2_normalize(weight, 0)?;
                x.matmul(&w)? * *scale
            }
            Self::Linear(l) => l.forward(features),
        }
    }

    pub(crate) fn macs(&self) -> u64 {
        let w = match self {
            Self::Normed { weight, .. } => weight,
            Self::Linear(l) => l.weight(),
        };
        w.elem_count() as u64
    }
}

/// Global average pool `[B, D, H, W]` → `[B, D]`. The official code's `avg_pool2d(8)` /
/// `AvgPool2d(7)` equal this at 32×32 / 224×224 input; any other size also works here.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}
