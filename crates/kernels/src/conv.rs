//! conv2d as im2col + `gemm`, with its input and weight gradients as further custom ops.
//!
//! # Layout
//!
//! Tensors stay NCHW (the rest of the model is NCHW, so no transposes are needed at the op
//! boundary). Each image is handled on its own: its im2col matrix `col` is `K × (Ho·Wo)` row-major
//! with `K = (C_in/groups)·kh·kw` ordered like the OIHW weight. That choice gives:
//!
//! * the forward product `W_g (C_out/g × K) · col (K × HoWo)` lands directly in the image's NCHW
//!   output rows, with no transpose after the GEMM;
//! * each `col` row is a shifted copy of one input row, so im2col is made of contiguous copies
//!   (`memcpy` for stride 1);
//! * one image's `col` is small (16 ch @ 32²: 144 × 1024 floats = 576 KiB), so it stays in the
//!   core's L2 cache between im2col and the GEMM that reads it, where a whole-batch im2col
//!   (75 MiB for the same layer at batch 128) would stream through memory;
//! * images are independent, so the batch is split over rayon threads with one single-threaded
//!   GEMM each (`Parallelism::None`): no synchronisation inside a GEMM and no tiny per-thread
//!   GEMM blocks. With fewer images than threads, the GEMM's own rayon parallelism is used instead.
//!
//! The `gemm` crate wants the destination column-major and transposes the problem itself, so the
//! microkernel sees `m = Ho·Wo` (large) and `n = C_out/g` (small): the shape it handles best.
//!
//! # Gradients
//!
//! * dx, stride 1 (square kernel, `padding ≤ k − 1`): a forward conv of `dy` with the flipped,
//!   transposed weight and padding `k − 1 − padding`. It reuses the forward path, whose GEMM has
//!   `K = C_out·k²`, instead of a `col2im` GEMM with `K = C_out` (16 for ResNet-32 stage 1).
//! * dx, other strides: `dcol = W_gᵀ · dy_g` per image, then `col2im` adds `dcol` back.
//! * dw: `dW_g += dy_g · colᵀ` per image, accumulated over fixed chunks of images whose partial
//!   sums are added in chunk order, so the result does not depend on the thread count.

use crate::cpu_slice;
use crate::direct;
use crate::isa::{current, Isa};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Shapes of one conv2d call (all sizes in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// Geometry of `x (n, c_in, h, w) ⋆ w (c_out, c_in/groups, kh, kw)`; arguments already checked.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (n, c_in, h, w): (usize, usize, usize, usize),
        (c_out, kh, kw): (usize, usize, usize),
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Self {
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        Self {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
            groups,
            ho,
            wo,
        }
    }
    fn cin_g(&self) -> usize {
        self.c_in / self.groups
    }
    fn cout_g(&self) -> usize {
        self.c_out / self.groups
    }
    /// Rows of the im2col matrix: the GEMM's reduction length in the forward pass.
    fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn hwo(&self) -> usize {
        self.ho * self.wo
    }
    /// A 1×1, stride-1, unpadded conv needs no im2col: the input planes are the matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    fn col_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.k() * self.hwo()
        }
    }
    /// Output shape (n, c_out, ho, wo).
    pub fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.c_out, self.ho, self.wo))
    }
}

/// How to split work: over images (each GEMM single-threaded) or inside each GEMM.
fn split(items: usize) -> (bool, Parallelism) {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        (false, Parallelism::None)
    } else if items >= threads {
        (true, Parallelism::None)
    } else {
        (false, Parallelism::Rayon(threads))
    }
}

/// `dst (m×n) = [dst +] lhs · rhs` for matrix views given by (row stride, column stride).
/// Checks that every view fits its slice, so the unsafe `gemm` call cannot read or write out of
/// bounds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, n, dst_rs, dst_cs) < dst.len(),
        "sgemm: dst view out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[r * dst_rs + c * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(
        last(m, k, lhs_rs, lhs_cs) < lhs.len(),
        "sgemm: lhs view out of bounds"
    );
    assert!(
        last(k, n, rhs_rs, rhs_cs) < rhs.len(),
        "sgemm: rhs view out of bounds"
    );
    // SAFETY: the three views were bounds-checked above, dst does not alias lhs or rhs
    // (distinct borrows), and gemm only reads dst when `read_dst` is true.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// Output columns `[lo, hi)` whose input column `ow·s + kj − p` lies inside `[0, w)`.
fn valid_cols(wo: usize, w: usize, s: usize, kj: usize, p: usize) -> (usize, usize) {
    let lo = if p > kj { (p - kj).div_ceil(s) } else { 0 };
    let hi = if w + p <= kj {
        0
    } else {
        ((w - 1 + p - kj) / s + 1).min(wo)
    };
    (lo.min(hi), hi)
}

/// Fills `col (K × HoWo)` from one group of one image, `x (C_in/g × H × W)`; zero padding.
fn im2col(g: &Geom, x: &[f32], col: &mut [f32]) {
    let (hwo, s, p) = (g.hwo(), g.stride, g.pad);
    if s == 1 && g.wo == g.w {
        return im2col_same(g, x, col);
    }
    for c in 0..g.cin_g() {
        let xc = &x[c * g.hw()..][..g.hw()];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &mut col[((c * g.kh + ki) * g.kw + kj) * hwo..][..hwo];
                let (lo, hi) = valid_cols(g.wo, g.w, s, kj, p);
                zero_cols(row, g.wo, lo, hi);
                for (oh, out) in row.chunks_exact_mut(g.wo).enumerate() {
                    let ih = oh * s + ki;
                    if ih < p || ih - p >= g.h {
                        out.fill(0.0);
                        continue;
                    }
                    let xr = &xc[(ih - p) * g.w..][..g.w];
                    if s == 1 {
                        out[lo..hi].copy_from_slice(&xr[lo + kj - p..hi + kj - p]);
                    } else {
                        for (ow, o) in out[lo..hi].iter_mut().enumerate() {
                            *o = xr[(lo + ow) * s + kj - p];
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride 1 with "same" width (`Wo = W`, e.g. 3×3 with padding 1).
///
/// Then the valid rows of a `col` row are one contiguous shifted run of the input plane, so
/// each `(c, ki, kj)` row is a single `memcpy` plus zeroing the few columns that wrapped
/// into the neighbouring input row. Per-output-row copies of 32 floats cost about twice as
/// much for ResNet-32's stage 1 (profiled with `perf`, see README).
fn im2col_same(g: &Geom, x: &[f32], col: &mut [f32]) {
    let (hwo, wo, p, hw) = (g.hwo(), g.wo, g.pad, g.hw());
    for c in 0..g.cin_g() {
        let xc = &x[c * hw..][..hw];
        for ki in 0..g.kh {
            // Output rows whose input row oh + ki − p lies inside the image.
            let oh_lo = p.saturating_sub(ki).min(g.ho);
            let oh_hi = (g.h + p).saturating_sub(ki).min(g.ho).max(oh_lo);
            for kj in 0..g.kw {
                let row = &mut col[((c * g.kh + ki) * g.kw + kj) * hwo..][..hwo];
                row[..oh_lo * wo].fill(0.0);
                row[oh_hi * wo..].fill(0.0);
                let dst = &mut row[oh_lo * wo..oh_hi * wo];
                // dst[i] = xc[start + i], where in bounds of the plane.
                let start = ((oh_lo + ki) * g.w + kj) as isize - (p * g.w + p) as isize;
                let i_lo = (-start).clamp(0, dst.len() as isize) as usize;
                let i_hi = (hw as isize - start).clamp(i_lo as isize, dst.len() as isize) as usize;
                dst[..i_lo].fill(0.0);
                dst[i_hi..].fill(0.0);
                if i_hi > i_lo {
                    let src = (start + i_lo as isize) as usize;
                    dst[i_lo..i_hi].copy_from_slice(&xc[src..src + (i_hi - i_lo)]);
                }
                // Columns whose input column kj + ow − p falls outside [0, W) read a
                // neighbouring row above: zero them.
                let (lo, hi) = valid_cols(wo, g.w, 1, kj, p);
                zero_cols(dst, wo, lo, hi);
            }
        }
    }
}

/// Zeroes columns `[0, lo)` and `[hi, wo)` of every `wo`-wide row of `rows`.
///
/// Column by column with a stride rather than `fill` per row: the runs are 1–3 floats (the
/// padding), and a `memset` call per row cost ~7 % of a ResNet-32 step in `perf`.
fn zero_cols(rows: &mut [f32], wo: usize, lo: usize, hi: usize) {
    for col in (0..lo).chain(hi..wo) {
        for v in rows.iter_mut().skip(col).step_by(wo) {
            *v = 0.0;
        }
    }
}

/// Adds `col (K × HoWo)` back into one group of one image's input gradient (the adjoint of
/// [`im2col`]); padded positions are dropped.
fn col2im(g: &Geom, col: &[f32], dx: &mut [f32]) {
    let (hwo, s, p) = (g.hwo(), g.stride, g.pad);
    for c in 0..g.cin_g() {
        let dxc = &mut dx[c * g.hw()..][..g.hw()];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &col[((c * g.kh + ki) * g.kw + kj) * hwo..][..hwo];
                let (lo, hi) = valid_cols(g.wo, g.w, s, kj, p);
                for (oh, src) in row.chunks_exact(g.wo).enumerate() {
                    let ih = oh * s + ki;
                    if ih < p || ih - p >= g.h {
                        continue;
                    }
                    let dr = &mut dxc[(ih - p) * g.w..][..g.w];
                    for ow in lo..hi {
                        dr[ow * s + kj - p] += src[ow];
                    }
                }
            }
        }
    }
}

/// Runs `f(scratch, image index, image output)` for every image, over rayon threads when
/// there are enough images; `scratch` is a per-thread buffer of `scratch_len` floats.
fn for_each_image<F>(out: &mut [f32], per_image: usize, scratch_len: usize, outer: bool, f: F)
where
    F: Fn(&mut [f32], usize, &mut [f32]) + Sync,
{
    if per_image == 0 {
        return;
    }
    if outer {
        out.par_chunks_mut(per_image)
            .enumerate()
            .for_each_init(|| vec![0f32; scratch_len], |col, (i, o)| f(col, i, o));
    } else {
        let mut col = vec![0f32; scratch_len];
        for (i, o) in out.chunks_mut(per_image).enumerate() {
            f(&mut col, i, o);
        }
    }
}

/// Forward conv: `x (n, c_in, h, w)`, `w (c_out, c_in/g, kh, kw)` → `(n, c_out, ho, wo)`.
pub(crate) fn conv_fwd(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    conv_fwd_isa(g, x, w, current())
}

/// [`conv_fwd`] with the direct kernels of `isa` where they apply (`Isa::Scalar`: im2col only).
pub(crate) fn conv_fwd_isa(g: &Geom, x: &[f32], w: &[f32], isa: Isa) -> Vec<f32> {
    if direct::applies(g, isa) {
        return direct::conv_fwd(g, x, w, isa);
    }
    let (cin_g, cout_g, k, hw, hwo) = (g.cin_g(), g.cout_g(), g.k(), g.hw(), g.hwo());
    let mut out = vec![0f32; g.n * g.c_out * hwo];
    let (outer, par) = split(g.n);
    for_each_image(
        &mut out,
        g.c_out * hwo,
        g.col_len(),
        outer,
        |col, i, out_i| {
            for grp in 0..g.groups {
                let xg = &x[(i * g.c_in + grp * cin_g) * hw..][..cin_g * hw];
                let rhs: &[f32] = if g.pointwise() {
                    xg
                } else {
                    im2col(g, xg, col);
                    col
                };
                sgemm(
                    (cout_g, hwo, k),
                    &mut out_i[grp * cout_g * hwo..][..cout_g * hwo],
                    (hwo, 1),
                    false,
                    &w[grp * cout_g * k..][..cout_g * k],
                    (k, 1),
                    rhs,
                    (hwo, 1),
                    par,
                );
            }
        },
    );
    out
}

/// Input gradient: `dy (n, c_out, ho, wo)`, `w` → `dx (n, c_in, h, w)`.
pub(crate) fn conv_dx(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    conv_dx_isa(g, dy, w, current())
}

/// [`conv_dx`] with the direct kernels of `isa` where they apply.
pub(crate) fn conv_dx_isa(g: &Geom, dy: &[f32], w: &[f32], isa: Isa) -> Vec<f32> {
    let (cin_g, cout_g, k, hw, hwo) = (g.cin_g(), g.cout_g(), g.k(), g.hw(), g.hwo());
    if g.stride == 1 && g.kh == g.kw && g.pad < g.kh {
        // dx = dy ⋆ W', W'[g·cin_g + c, co, i, j] = W[g·cout_g + co, c, kh−1−i, kw−1−j].
        let mut wt = vec![0f32; g.c_out * k];
        for grp in 0..g.groups {
            for co in 0..cout_g {
                for c in 0..cin_g {
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            let src = (((grp * cout_g + co) * cin_g + c) * g.kh + i) * g.kw + j;
                            let dst = (((grp * cin_g + c) * cout_g + co) * g.kh + (g.kh - 1 - i))
                                * g.kw
                                + (g.kw - 1 - j);
                            wt[dst] = w[src];
                        }
                    }
                }
            }
        }
        let gt = Geom::new(
            (g.n, g.c_out, g.ho, g.wo),
            (g.c_in, g.kh, g.kw),
            1,
            g.kh - 1 - g.pad,
            g.groups,
        );
        debug_assert_eq!((gt.ho, gt.wo), (g.h, g.w));
        return conv_fwd_isa(&gt, dy, &wt, isa);
    }
    let mut dx = vec![0f32; g.n * g.c_in * hw];
    let (outer, par) = split(g.n);
    for_each_image(&mut dx, g.c_in * hw, k * hwo, outer, |col, i, dx_i| {
        for grp in 0..g.groups {
            let dyg = &dy[(i * g.c_out + grp * cout_g) * hwo..][..cout_g * hwo];
            sgemm(
                (k, hwo, cout_g),
                col,
                (hwo, 1),
                false,
                &w[grp * cout_g * k..][..cout_g * k],
                (1, k),
                dyg,
                (hwo, 1),
                par,
            );
            col2im(g, col, &mut dx_i[grp * cin_g * hw..][..cin_g * hw]);
        }
    });
    dx
}

/// Images per chunk of a weight gradient (im2col and direct paths alike): fixed by `n` alone,
/// so the chunks' summation order does not depend on the thread count.
pub(crate) fn dw_chunk(n: usize) -> usize {
    n.div_ceil(n.clamp(1, 16))
}

/// Weight gradient: `x (n, c_in, h, w)`, `dy (n, c_out, ho, wo)` → `dw (c_out, c_in/g, kh, kw)`.
pub(crate) fn conv_dw(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    conv_dw_isa(g, x, dy, current())
}

/// [`conv_dw`] with the direct kernels of `isa` where they apply.
pub(crate) fn conv_dw_isa(g: &Geom, x: &[f32], dy: &[f32], isa: Isa) -> Vec<f32> {
    if direct::applies_dw(g, isa) {
        return direct::conv_dw(g, x, dy, isa);
    }
    let (cin_g, cout_g, k, hw, hwo) = (g.cin_g(), g.cout_g(), g.k(), g.hw(), g.hwo());
    let len = g.c_out * k;
    if g.n == 0 {
        return vec![0f32; len];
    }
    let per_chunk = dw_chunk(g.n);
    let chunks = g.n.div_ceil(per_chunk);
    let (outer, par) = split(chunks);
    let chunk_sum = |col: &mut Vec<f32>, ci: usize| {
        let mut acc = vec![0f32; len];
        for i in ci * per_chunk..((ci + 1) * per_chunk).min(g.n) {
            for grp in 0..g.groups {
                let xg = &x[(i * g.c_in + grp * cin_g) * hw..][..cin_g * hw];
                let rhs: &[f32] = if g.pointwise() {
                    xg
                } else {
                    im2col(g, xg, col);
                    col
                };
                // dWᵀ (K × C_out/g) += col (K × HoWo) · dyᵀ: with the long `col` as the left
                // operand, `gemm` packs it along its rows, which is ~10 % faster than packing
                // `colᵀ` as the right operand of `dy · colᵀ` (measured for 16–64 channels).
                sgemm(
                    (k, cout_g, hwo),
                    &mut acc[grp * cout_g * k..][..cout_g * k],
                    (1, k),
                    true,
                    rhs,
                    (hwo, 1),
                    &dy[(i * g.c_out + grp * cout_g) * hwo..][..cout_g * hwo],
                    (1, hwo),
                    par,
                );
            }
        }
        acc
    };
    let partials: Vec<Vec<f32>> = if outer {
        (0..chunks)
            .into_par_iter()
            .map_init(|| vec![0f32; g.col_len()], chunk_sum)
            .collect()
    } else {
        let mut col = vec![0f32; g.col_len()];
        (0..chunks).map(|ci| chunk_sum(&mut col, ci)).collect()
    };
    let mut parts = partials.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for p in parts {
        dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    dw
}

/// The conv2d forward op; its backward applies [`Conv2dDx`] and [`Conv2dDw`].
pub(crate) struct Conv2d {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "longtail-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1)?;
        let w = cpu_slice(s2, l2)?;
        let (c_out, _, kh, kw) = l2.shape().dims4()?;
        let g = Geom::new(
            l1.shape().dims4()?,
            (c_out, kh, kw),
            self.stride,
            self.pad,
            self.groups,
        );
        Ok((CpuStorage::F32(conv_fwd(&g, x, w)), g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let (_, c_in, _, _) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() {
            let op = Conv2dDx {
                stride: self.stride,
                pad: self.pad,
                groups: self.groups,
                c_in,
                h,
                w: wd,
            };
            Some(grad.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = Conv2dDw {
                stride: self.stride,
                pad: self.pad,
                groups: self.groups,
                kh,
                kw,
            };
            Some(x.apply_op2_no_bwd(&grad, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Input gradient op: `(dy, w) → dx`, for an input of `c_in` channels and `h × w` pixels.
pub(crate) struct Conv2dDx {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
}

impl CustomOp2 for Conv2dDx {
    fn name(&self) -> &'static str {
        "longtail-conv2d-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = cpu_slice(s1, l1)?;
        let w = cpu_slice(s2, l2)?;
        let (n, _, _, _) = l1.shape().dims4()?;
        let (c_out, _, kh, kw) = l2.shape().dims4()?;
        let g = Geom::new(
            (n, self.c_in, self.h, self.w),
            (c_out, kh, kw),
            self.stride,
            self.pad,
            self.groups,
        );
        let shape = Shape::from((n, self.c_in, self.h, self.w));
        Ok((CpuStorage::F32(conv_dx(&g, dy, w)), shape))
    }
}

/// Weight gradient op: `(x, dy) → dw` for a `kh × kw` kernel.
pub(crate) struct Conv2dDw {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub kh: usize,
    pub kw: usize,
}

impl CustomOp2 for Conv2dDw {
    fn name(&self) -> &'static str {
        "longtail-conv2d-dw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1)?;
        let dy = cpu_slice(s2, l2)?;
        let (_, c_out, _, _) = l2.shape().dims4()?;
        let g = Geom::new(
            l1.shape().dims4()?,
            (c_out, self.kh, self.kw),
            self.stride,
            self.pad,
            self.groups,
        );
        let shape = Shape::from((c_out, g.c_in / g.groups, self.kh, self.kw));
        Ok((CpuStorage::F32(conv_dw(&g, x, dy)), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct-loop reference conv on f64 for the unit tests.
    fn naive(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (cin_g, cout_g) = (g.cin_g(), g.cout_g());
        let mut out = vec![0f32; g.n * g.c_out * g.hwo()];
        for n in 0..g.n {
            for co in 0..g.c_out {
                let grp = co / cout_g;
                for oh in 0..g.ho {
                    for ow in 0..g.wo {
                        let mut s = 0f64;
                        for c in 0..cin_g {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let ih = (oh * g.stride + i) as isize - g.pad as isize;
                                    let iw = (ow * g.stride + j) as isize - g.pad as isize;
                                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * g.c_in + grp * cin_g + c) * g.h
                                        + ih as usize)
                                        * g.w
                                        + iw as usize];
                                    let wv = w[((co * cin_g + c) * g.kh + i) * g.kw + j];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((n * g.c_out + co) * g.ho + oh) * g.wo + ow] = s as f32;
                    }
                }
            }
        }
        out
    }

    fn ramp(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn valid_cols_matches_brute_force() {
        for (wo, w, s, kj, p) in [
            (5, 5, 1, 0, 1),
            (3, 5, 2, 2, 1),
            (4, 7, 2, 0, 0),
            (1, 1, 1, 2, 1),
            (2, 2, 2, 6, 3),
        ] {
            let valid: Vec<usize> = (0..wo)
                .filter(|&ow| ow * s + kj >= p && ow * s + kj - p < w)
                .collect();
            let (lo, hi) = valid_cols(wo, w, s, kj, p);
            assert_eq!(
                (lo..hi).collect::<Vec<_>>(),
                valid,
                "wo {wo} w {w} s {s} kj {kj} p {p}"
            );
        }
    }

    #[test]
    fn forward_matches_direct_loop() {
        for &(c_in, c_out, h, w, k, s, p, groups) in &[
            (3, 4, 5, 7, 3, 1, 1, 1),
            (4, 6, 6, 5, 3, 2, 1, 2),
            (2, 3, 4, 4, 1, 1, 0, 1),
            (4, 4, 5, 5, 1, 2, 0, 4),
            (1, 2, 9, 9, 7, 2, 3, 1),
        ] {
            let g = Geom::new((2, c_in, h, w), (c_out, k, k), s, p, groups);
            let x = ramp(2 * c_in * h * w, 1);
            let wt = ramp(c_out * (c_in / groups) * k * k, 7);
            let got = conv_fwd(&g, &x, &wt);
            let want = naive(&g, &x, &wt);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{g:?}: {a} vs {b}");
            }
        }
    }
}
