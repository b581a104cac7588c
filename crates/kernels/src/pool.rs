//! Max pooling with a backward pass (the ImageNet stem's `MaxPool2d(3, 2, padding=1)`).
//!
//! candle 0.11's `max_pool2d` has no gradient unless kernel == stride, so a ResNet-50 stem
//! cannot train through it. Two implementations with PyTorch's semantics (padding is −∞, the
//! gradient goes to the *first* maximum of each window in row-major order):
//! * [`MaxPool2d`]: a CPU custom op; its backward recomputes each window's argmax from the
//!   input (no index tensor to keep alive) and scatters the gradient.
//! * [`max_pool2d_autograd`]: the same function written with stock, differentiable tensor ops
//!   (strided slices, first-maximum masks, `where_cond`), for CUDA and any other device.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_slice;
use crate::isa::{current, dispatch};

/// Output size of a pooling window along one axis.
pub(crate) fn pooled(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

/// Geometry of one pooling call on a contiguous `(N, C, H, W)` input.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MaxPool2d {
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

impl MaxPool2d {
    /// Index (within the `h × w` plane) of the first maximum of output cell `(oy, ox)`:
    /// PyTorch's rule `v > max || isnan(v)` scanning the window row by row.
    #[inline(always)]
    fn argmax(&self, plane: &[f32], h: usize, w: usize, oy: usize, ox: usize) -> usize {
        let y0 = (oy * self.stride) as isize - self.padding as isize;
        let x0 = (ox * self.stride) as isize - self.padding as isize;
        let (mut best, mut at) = (f32::NEG_INFINITY, usize::MAX);
        for dy in 0..self.kernel as isize {
            let y = y0 + dy;
            if y < 0 || y >= h as isize {
                continue;
            }
            for dx in 0..self.kernel as isize {
                let x = x0 + dx;
                if x < 0 || x >= w as isize {
                    continue;
                }
                let i = y as usize * w + x as usize;
                let v = plane[i];
                if at == usize::MAX || v > best || v.is_nan() {
                    best = v;
                    at = i;
                    if v.is_nan() {
                        return at;
                    }
                }
            }
        }
        at
    }

    fn dims(layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
        layout.shape().dims4()
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "longtail-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l)?;
        let (n, c, h, w) = Self::dims(l)?;
        let (oh, ow) = (
            pooled(h, self.kernel, self.stride, self.padding),
            pooled(w, self.kernel, self.stride, self.padding),
        );
        let isa = current();
        let mut y = vec![0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(out, plane)| {
                dispatch(
                    isa,
                    #[inline(always)]
                    || {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                out[oy * ow + ox] = plane[self.argmax(plane, h, w, oy, ox)];
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dx = arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPool2dBwd(*self))?;
        Ok(Some(dx))
    }
}

/// `(x, dy) → dx`: each window's gradient added at the window's first maximum.
pub(crate) struct MaxPool2dBwd(pub(crate) MaxPool2d);

impl CustomOp2 for MaxPool2dBwd {
    fn name(&self) -> &'static str {
        "longtail-max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1)?;
        let g = cpu_slice(s2, l2)?;
        let (n, c, h, w) = MaxPool2d::dims(l1)?;
        let (_, _, oh, ow) = l2.shape().dims4()?;
        let isa = current();
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(g.par_chunks(oh * ow)))
            .for_each(|(d, (plane, gp))| {
                dispatch(
                    isa,
                    #[inline(always)]
                    || {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                d[self.0.argmax(plane, h, w, oy, ox)] += gp[oy * ow + ox];
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Max pooling from stock candle ops that all have gradients, for devices without the custom
/// op (CUDA): the `k²` strided window slices of the (−∞-padded) input, a mask per slice marking
/// where it holds the window's first maximum, and `Σ where(mask, slice, 0)`. The masks are
/// computed on detached values, so the gradient reaches exactly the first maximum of each window,
/// as in PyTorch (NaN inputs are not given PyTorch's NaN-wins rule here).
pub fn max_pool2d_autograd(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (
        pooled(h, kernel, stride, padding),
        pooled(w, kernel, stride, padding),
    );
    // Pad so that every window offset `d` has `stride · o` rows/columns from `d` on: the slice
    // `d, d + stride, …` is then a narrow + reshape, no gather. Extra cells are never in a window.
    let (ph, pw) = (
        (kernel - 1 + stride * oh).max(h + 2 * padding),
        (kernel - 1 + stride * ow).max(w + 2 * padding),
    );
    let xp = pad_neg_inf(x, padding, ph - h - padding, 2)?;
    let xp = pad_neg_inf(&xp, padding, pw - w - padding, 3)?;
    let slice = |t: &Tensor, dy: usize, dx: usize| -> candle_core::Result<Tensor> {
        t.narrow(2, dy, stride * oh)?
            .narrow(3, dx, stride * ow)?
            .reshape((n, c, oh, stride, ow, stride))?
            .narrow(3, 0, 1)?
            .narrow(5, 0, 1)?
            .reshape((n, c, oh, ow))
    };
    let detached = xp.detach();
    let mut slices = Vec::with_capacity(kernel * kernel);
    let mut max: Option<Tensor> = None;
    for dy in 0..kernel {
        for dx in 0..kernel {
            let s = slice(&detached, dy, dx)?;
            max = Some(match max {
                None => s.clone(),
                Some(m) => m.maximum(&s)?,
            });
            slices.push((dy, dx, s));
        }
    }
    let max = max.expect("kernel > 0");
    let zeros = max.zeros_like()?;
    let mut taken = zeros.to_dtype(DType::U8)?;
    let mut y: Option<Tensor> = None;
    for (dy, dx, s) in slices {
        // First maximum only: equal to the max and no earlier offset took this cell.
        let hit = s.eq(&max)?.mul(&taken.ones_like()?.sub(&taken)?)?;
        taken = taken.add(&hit)?;
        let term = hit.where_cond(&slice(&xp, dy, dx)?, &zeros)?;
        y = Some(match y {
            None => term,
            Some(y) => (y + term)?,
        });
    }
    Ok(y.expect("kernel > 0"))
}

/// `x` with `before` and `after` rows of −∞ along `dim`.
fn pad_neg_inf(x: &Tensor, before: usize, after: usize, dim: usize) -> candle_core::Result<Tensor> {
    let block = |len: usize| -> candle_core::Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = len;
        Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())
    };
    let mut parts = vec![];
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}
