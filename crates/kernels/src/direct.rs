//! Direct 3×3, stride-1, padding-1 convolution (forward and weight gradient) with AVX-512 and
//! AVX2 micro-kernels chosen at run time ([`crate::isa`]).
//!
//! Why: in the im2col + `gemm` path the 3×3 layers of ResNet-32 spend a third of their time
//! outside the multiply-adds (building `col`, `gemm` packing it), and their GEMMs have
//! `n = C_out = 16…64`, too narrow for `gemm`'s blocking. These layers are most of a CIFAR
//! ResNet's work (and, through the stride-1 input gradient, of its backward pass too).
//!
//! # Layout: the padded flat plane
//!
//! Each input plane is copied once into a zero-padded plane `(H + 2) × WP` with `WP = W + 2`
//! and read as one flat vector. Output `(oh, ow)` has flat index `q = oh·WP + ow`, and its tap
//! `(kh, kw)` reads padded input `q + kh·WP + kw`: a fixed shift per tap. So the convolution is
//! nine shifted, contiguous multiply-adds over `q`, with no im2col matrix and no packing; the two
//! columns per row with `ow ≥ W` are computed and dropped (6 % extra work at W = 32, 20 % at 8).
//!
//! * Forward: a register tile of `CO` output channels × `NV` vectors of `q`; per input channel
//!   and tap, `NV` unaligned loads of the input and `CO` broadcast weights feed `CO·NV` FMAs
//!   (AVX-512: 8 × 3 × 16 lanes in 24 of its 32 registers; AVX2: 4 × 3 × 8 lanes in 12 of 16).
//! * Weight gradient: `dW[co, ci, kh, kw] = Σ_q dy[co, q] · x[ci, q + kh·WP + kw]` with `dy`
//!   zero in the dropped columns; a tile of `CO` output channels × the 3 `kw` taps for one
//!   `(ci, kh)`, summed over `q` in vector lanes, then across lanes in a fixed order.
//!
//! Images go over rayon threads (each kernel single-threaded); the weight gradient is summed in
//! the same fixed chunks of images as the im2col path, so results do not depend on the thread
//! count. The summation order differs from the `gemm` path's (results agree to rounding).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::conv::Geom;
use crate::isa::Isa;

/// Whether the direct kernels take this convolution with `isa`.
pub(crate) fn applies(g: &Geom, isa: Isa) -> bool {
    isa != Isa::Scalar
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.groups == 1
        && g.h > 0
        && g.w > 0
        && g.c_in > 0
        && g.c_out > 0
        // Images over threads: with fewer images than threads the im2col path's threaded GEMMs
        // use the cores better.
        && (g.n >= rayon::current_num_threads() || rayon::current_num_threads() == 1)
}

/// Lanes of one vector, output channels of one forward tile, and the vectors per tile.
#[derive(Clone, Copy)]
struct Tiling {
    lanes: usize,
    co: usize,
    nv: usize,
}

impl Tiling {
    fn of(isa: Isa, g: &Geom) -> Tiling {
        let (lanes, co) = match isa {
            Isa::Avx512 => (16, 8),
            _ => (8, 4),
        };
        // The vectors per tile that waste the fewest computed positions (ties: more vectors).
        let hwp = g.h * (g.w + 2);
        let nv = (1..=3)
            .rev()
            .min_by_key(|&nv| hwp.div_ceil(lanes * nv) * lanes * nv)
            .unwrap_or(1);
        Tiling { lanes, co, nv }
    }
}

/// Sizes of the padded flat planes of one convolution.
#[derive(Clone, Copy)]
struct Planes {
    /// Padded row length `W + 2`.
    wp: usize,
    /// Computed positions per output plane: `H·WP` rounded up to whole tiles.
    nq: usize,
    /// Floats per padded input plane: every load of the last tile stays inside it.
    ps: usize,
}

impl Planes {
    fn of(g: &Geom, t: Tiling) -> Planes {
        let wp = g.w + 2;
        let nq = (g.h * wp).div_ceil(t.lanes * t.nv) * t.lanes * t.nv;
        Planes {
            wp,
            nq,
            // Whole cache lines, so every plane of an aligned buffer starts on one.
            ps: (nq + 2 * wp + 2).next_multiple_of(16),
        }
    }
}

/// A zeroed scratch buffer whose first float sits on a 64-byte boundary. With plane sizes in
/// whole cache lines, the kernels' loads of `dy` and stores of the output then never split a
/// cache line (a split AVX-512 load costs two; `Vec<f32>` only promises 4-byte alignment).
struct Aligned {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let buf = vec![0f32; len + 15];
        let off = buf.as_ptr().align_offset(64).min(15);
        Aligned { buf, off, len }
    }

    fn get(&self) -> &[f32] {
        &self.buf[self.off..][..self.len]
    }

    fn get_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..][..self.len]
    }
}

/// Copies `c` planes `H × W` of `src` into zero-padded planes of `ps` floats: the plane's
/// pixel `(r, c)` goes to `(r + 1)·WP + c + 1`. Only pixels are written: `dst` must be zero
/// elsewhere, as a fresh [`Aligned::zeroed`] buffer is and stays when only this function (with
/// the same sizes) writes to it. That skips a zeroing pass over every padded input.
fn pad_planes(src: &[f32], c: usize, h: usize, w: usize, p: Planes, dst: &mut [f32]) {
    for ch in 0..c {
        let s = &src[ch * h * w..][..h * w];
        let d = &mut dst[ch * p.ps..][..p.ps];
        for (r, row) in s.chunks_exact(w).enumerate() {
            d[(r + 1) * p.wp + 1..][..w].copy_from_slice(row);
        }
    }
}

/// Copies `c` planes `H × W` into flat planes of `nq` floats (`(r, c)` at `r·WP + c`) with
/// zeros in the dropped columns and the tail: the layout of the forward output, for `dy`.
/// Like [`pad_planes`], it writes only pixels into a `dst` that is zero elsewhere.
fn flat_planes(src: &[f32], c: usize, h: usize, w: usize, p: Planes, dst: &mut [f32]) {
    for ch in 0..c {
        let s = &src[ch * h * w..][..h * w];
        let d = &mut dst[ch * p.nq..][..p.nq];
        for (r, row) in s.chunks_exact(w).enumerate() {
            d[r * p.wp..][..w].copy_from_slice(row);
        }
    }
}

/// Index of weight `(co, ci, tap k)` in the kernels' tiled layout `[co / CO][ci][k][co % CO]`
/// (tiles of `co_t` output channels): how the forward reads weights and the weight gradient
/// writes them.
fn tiled(co: usize, ci: usize, k: usize, c_in: usize, co_t: usize) -> usize {
    ((co / co_t * c_in + ci) * 9 + k) * co_t + co % co_t
}

/// Forward conv `x (n, c_in, h, w) ⋆ w (c_out, c_in, 3, 3)` → `(n, c_out, h, w)`; `applies`
/// must hold.
pub(crate) fn conv_fwd(g: &Geom, x: &[f32], w: &[f32], isa: Isa) -> Vec<f32> {
    let t = Tiling::of(isa, g);
    let p = Planes::of(g, t);
    let tiles = g.c_out.div_ceil(t.co);
    // Weights as [tile][ci][tap][CO], zero for the channels past c_out of the last tile.
    let mut wt = vec![0f32; tiles * g.c_in * 9 * t.co];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            for k in 0..9 {
                wt[tiled(co, ci, k, g.c_in, t.co)] = w[(co * g.c_in + ci) * 9 + k];
            }
        }
    }
    let (hw, per_out) = (g.h * g.w, g.c_out * g.h * g.w);
    // Every output value is written below: no zeroing pass over the output first.
    let mut out: Vec<f32> = Vec::with_capacity(g.n * per_out);
    let scratch = || {
        (
            Aligned::zeroed(g.c_in * p.ps),
            Aligned::zeroed(tiles * t.co * p.nq),
        )
    };
    let image = |(xp, op): &mut (Aligned, Aligned),
                 (i, out_i): (usize, &mut [MaybeUninit<f32>])| {
        let (xp, op) = (xp.get_mut(), op.get_mut());
        pad_planes(
            &x[i * g.c_in * hw..][..g.c_in * hw],
            g.c_in,
            g.h,
            g.w,
            p,
            xp,
        );
        for tile in 0..tiles {
            let wt_t = &wt[tile * g.c_in * 9 * t.co..][..g.c_in * 9 * t.co];
            let op_t = &mut op[tile * t.co * p.nq..][..t.co * p.nq];
            fwd_tile_planes(isa, t, p, g.c_in, xp, wt_t, op_t);
        }
        for co in 0..g.c_out {
            let src = &op[co * p.nq..];
            for (r, row) in out_i[co * hw..][..hw].chunks_exact_mut(g.w).enumerate() {
                for (d, &v) in row.iter_mut().zip(&src[r * p.wp..][..g.w]) {
                    d.write(v);
                }
            }
        }
    };
    if g.n > 1 && rayon::current_num_threads() > 1 {
        out.spare_capacity_mut()[..g.n * per_out]
            .par_chunks_mut(per_out)
            .enumerate()
            .for_each_init(scratch, image);
    } else {
        let mut s = scratch();
        out.spare_capacity_mut()[..g.n * per_out]
            .chunks_mut(per_out)
            .enumerate()
            .for_each(|item| image(&mut s, item));
    }
    // SAFETY: the chunks tile `[0, n·per_out)` and `image` writes all `c_out·h·w` values of its
    // chunk (every row of every output plane).
    unsafe { out.set_len(g.n * per_out) };
    out
}

/// One forward tile row: `CO` output planes (`op`, `CO × nq`) from all padded input planes.
fn fwd_tile_planes(
    isa: Isa,
    t: Tiling,
    p: Planes,
    c_in: usize,
    xp: &[f32],
    wt: &[f32],
    op: &mut [f32],
) {
    assert!(xp.len() >= c_in * p.ps && wt.len() >= c_in * 9 * t.co && op.len() >= t.co * p.nq);
    // SAFETY: `isa` was checked against the CPU by `isa::isa` (callers pass it or a lower level
    // from `Isa::available`); the asserts above and `Planes::of` bound every load and store:
    // loads reach at most `q0 + lanes·nv − 1 + 2·WP + 2 < ps` in each input plane.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        match (isa, t.nv) {
            (Isa::Avx512, 1) => return avx512::fwd::<8, 1>(p, c_in, xp, wt, op),
            (Isa::Avx512, 2) => return avx512::fwd::<8, 2>(p, c_in, xp, wt, op),
            (Isa::Avx512, _) => return avx512::fwd::<8, 3>(p, c_in, xp, wt, op),
            (Isa::Avx2, 1) => return avx2::fwd::<4, 1>(p, c_in, xp, wt, op),
            (Isa::Avx2, 2) => return avx2::fwd::<4, 2>(p, c_in, xp, wt, op),
            (Isa::Avx2, _) => return avx2::fwd::<4, 3>(p, c_in, xp, wt, op),
            (Isa::Scalar, _) => {}
        }
    }
    unreachable!("direct conv called without a SIMD level");
}

/// Weight gradient `dw (c_out, c_in, 3, 3)` from `x (n, c_in, h, w)` and `dy (n, c_out, h, w)`,
/// summed over fixed chunks of images in chunk order; `applies` must hold.
pub(crate) fn conv_dw(g: &Geom, x: &[f32], dy: &[f32], isa: Isa) -> Vec<f32> {
    let t = Tiling::of(isa, g);
    let p = Planes::of(g, t);
    let len = g.c_out * g.c_in * 9;
    if g.n == 0 {
        return vec![0f32; len];
    }
    // Output-channel tiles of the weight-gradient kernel: 3·CO accumulators.
    let co_t = t.co;
    let tiles = g.c_out.div_ceil(co_t);
    let hw = g.h * g.w;
    // The same chunking as the im2col path (it depends on n only).
    let per_chunk = g.n.div_ceil(g.n.min(16));
    let chunks = g.n.div_ceil(per_chunk);
    let chunk_sum = |chunk: usize| {
        let first = chunk * per_chunk;
        let imgs = per_chunk.min(g.n - first);
        // The chunk's images side by side: padded x planes, and dy planes padded to whole
        // tiles of channels (zero planes past c_out).
        let (xs, ds) = (g.c_in * p.ps, tiles * co_t * p.nq);
        let mut xp = Aligned::zeroed(imgs * xs);
        let mut dyp = Aligned::zeroed(imgs * ds);
        for j in 0..imgs {
            let i = first + j;
            let (xi, dyi) = (&x[i * g.c_in * hw..], &dy[i * g.c_out * hw..]);
            pad_planes(xi, g.c_in, g.h, g.w, p, &mut xp.get_mut()[j * xs..]);
            flat_planes(dyi, g.c_out, g.h, g.w, p, &mut dyp.get_mut()[j * ds..]);
        }
        let (xp, dyp) = (xp.get(), dyp.get());
        // dW as [tile][ci][kh][kw][CO], reordered at the end.
        let mut acc = vec![0f32; tiles * g.c_in * 9 * co_t];
        for tile in 0..tiles {
            let a = &mut acc[tile * g.c_in * 9 * co_t..][..g.c_in * 9 * co_t];
            let d = &dyp[tile * co_t * p.nq..];
            dw_tile(isa, co_t, p, g.c_in, (imgs, xs, ds), xp, d, a);
        }
        acc
    };
    let partials: Vec<Vec<f32>> = if chunks > 1 && rayon::current_num_threads() > 1 {
        (0..chunks).into_par_iter().map(chunk_sum).collect()
    } else {
        (0..chunks).map(chunk_sum).collect()
    };
    let mut dw = vec![0f32; len];
    for part in &partials {
        for co in 0..g.c_out {
            for ci in 0..g.c_in {
                for k in 0..9 {
                    dw[(co * g.c_in + ci) * 9 + k] += part[tiled(co, ci, k, g.c_in, co_t)];
                }
            }
        }
    }
    dw
}

/// Writes the weight gradient of one output-channel tile, summed over `imgs` images, into
/// `acc ([ci][tap][CO])`. Image `j`'s planes start at `j·xs` in `xp` and `j·ds` in `dyp`.
#[allow(clippy::too_many_arguments)]
fn dw_tile(
    isa: Isa,
    co: usize,
    p: Planes,
    c_in: usize,
    (imgs, xs, ds): (usize, usize, usize),
    xp: &[f32],
    dyp: &[f32],
    acc: &mut [f32],
) {
    assert!(imgs > 0 && xs >= c_in * p.ps && ds >= co * p.nq);
    assert!(xp.len() >= (imgs - 1) * xs + c_in * p.ps);
    assert!(dyp.len() >= (imgs - 1) * ds + co * p.nq && acc.len() >= c_in * 9 * co);
    // SAFETY: as in `fwd_tile_planes`; `nq` is a whole number of vectors for either level
    // (a multiple of `lanes·nv` of the forward tiling) and loads of `x` stop below `ps`.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        match isa {
            Isa::Avx512 => return avx512::dw::<8>(p, c_in, (imgs, xs, ds), xp, dyp, acc),
            Isa::Avx2 => return avx2::dw::<4>(p, c_in, (imgs, xs, ds), xp, dyp, acc),
            Isa::Scalar => {}
        }
    }
    unreachable!("direct conv called without a SIMD level");
}

/// The two micro-kernels for one vector type; `$feat` is the `target_feature` they need.
macro_rules! simd_kernels {
    ($modname:ident, $feat:literal, $vec:ty, $lanes:expr,
     zero: $zero:ident, load: $load:ident, store: $store:ident, set1: $set1:ident,
     fma: $fma:ident, hsum: $hsum:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $modname {
            use super::Planes;
            #[allow(unused_imports)]
            use std::arch::x86_64::*;

            const LANES: usize = $lanes;

            /// Forward: for each tile of `LANES·NV` positions, `CO × NV` accumulators over every
            /// input channel and tap; stores the tile into `op (CO × nq)`.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn fwd<const CO: usize, const NV: usize>(
                p: Planes,
                c_in: usize,
                xp: &[f32],
                wt: &[f32],
                op: &mut [f32],
            ) {
                // SAFETY: the caller bounds every access (see `fwd_tile_planes`).
                unsafe {
                    let (xp, wt, op) = (xp.as_ptr(), wt.as_ptr(), op.as_mut_ptr());
                    let mut q0 = 0;
                    while q0 < p.nq {
                        let mut acc = [[$zero(); NV]; CO];
                        for ci in 0..c_in {
                            let xc = xp.add(ci * p.ps + q0);
                            let wc = wt.add(ci * 9 * CO);
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let base = xc.add(kh * p.wp + kw);
                                    let mut v = [$zero(); NV];
                                    for (j, vj) in v.iter_mut().enumerate() {
                                        *vj = $load(base.add(j * LANES));
                                    }
                                    let wk = wc.add((kh * 3 + kw) * CO);
                                    for (c, row) in acc.iter_mut().enumerate() {
                                        let b = $set1(*wk.add(c));
                                        for (a, &vj) in row.iter_mut().zip(v.iter()) {
                                            *a = $fma(b, vj, *a);
                                        }
                                    }
                                }
                            }
                        }
                        for (c, row) in acc.iter().enumerate() {
                            for (j, &a) in row.iter().enumerate() {
                                $store(op.add(c * p.nq + q0 + j * LANES), a);
                            }
                        }
                        q0 += LANES * NV;
                    }
                }
            }

            /// Weight gradient: for each input channel and kernel row, `CO × 3` accumulators
            /// (output channel × kernel column) summed over all positions of all images, then
            /// across lanes (once per chunk of images: at 8 × 8 that reduction would otherwise
            /// cost more than the multiply-adds), written to `acc ([ci][kh·3 + kw][CO])`.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn dw<const CO: usize>(
                p: Planes,
                c_in: usize,
                (imgs, xs, ds): (usize, usize, usize),
                xp: &[f32],
                dyp: &[f32],
                acc: &mut [f32],
            ) {
                // SAFETY: the caller bounds every access (see `dw_tile`).
                unsafe {
                    let (xp, dyp, out) = (xp.as_ptr(), dyp.as_ptr(), acc.as_mut_ptr());
                    for ci in 0..c_in {
                        for kh in 0..3 {
                            let mut s0 = [$zero(); CO];
                            let mut s1 = [$zero(); CO];
                            let mut s2 = [$zero(); CO];
                            for j in 0..imgs {
                                let xr = xp.add(j * xs + ci * p.ps + kh * p.wp);
                                let dj = dyp.add(j * ds);
                                let mut q = 0;
                                while q < p.nq {
                                    let x0 = $load(xr.add(q));
                                    let x1 = $load(xr.add(q + 1));
                                    let x2 = $load(xr.add(q + 2));
                                    for c in 0..CO {
                                        let d = $load(dj.add(c * p.nq + q));
                                        s0[c] = $fma(d, x0, s0[c]);
                                        s1[c] = $fma(d, x1, s1[c]);
                                        s2[c] = $fma(d, x2, s2[c]);
                                    }
                                    q += LANES;
                                }
                            }
                            for c in 0..CO {
                                let o = out.add((ci * 9 + kh * 3) * CO + c);
                                *o = $hsum(s0[c]);
                                *o.add(CO) = $hsum(s1[c]);
                                *o.add(2 * CO) = $hsum(s2[c]);
                            }
                        }
                    }
                }
            }
        }
    };
}

/// Sum of the 16 lanes, in a fixed order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn hsum512(v: std::arch::x86_64::__m512) -> f32 {
    std::arch::x86_64::_mm512_reduce_add_ps(v)
}

/// Sum of the 8 lanes, in a fixed order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

// AVX-512VL matters: without it the 256- and 128-bit instructions of the horizontal sums can
// only name registers 0–15, which confined the 24 accumulators of the weight-gradient tile to
// those 16 registers and spilled the rest to the stack on every step (found in the disassembly).
simd_kernels!(avx512, "avx512f,avx512vl", __m512, 16,
    zero: _mm512_setzero_ps, load: _mm512_loadu_ps, store: _mm512_storeu_ps,
    set1: _mm512_set1_ps, fma: _mm512_fmadd_ps, hsum: super::hsum512);
simd_kernels!(avx2, "avx2,fma", __m256, 8,
    zero: _mm256_setzero_ps, load: _mm256_loadu_ps, store: _mm256_storeu_ps,
    set1: _mm256_set1_ps, fma: _mm256_fmadd_ps, hsum: super::hsum256);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{conv_dw_isa, conv_dx_isa, conv_fwd_isa};

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// Every SIMD level the CPU has gives the im2col path's forward, input and weight gradients
    /// on the backbone shapes (CIFAR 32/16/8, Fashion-MNIST 28/14/7, ImageNet 56 and odd sizes,
    /// channel counts that are and are not whole tiles).
    #[test]
    fn direct_kernels_match_im2col_on_every_isa() {
        let shapes = [
            (4, 16, 32, 32, 16),
            (3, 32, 16, 16, 32),
            (2, 64, 8, 8, 64),
            (2, 12, 28, 28, 12),
            (2, 24, 14, 7, 20),
            (1, 3, 5, 9, 7),
            (2, 64, 56, 56, 64),
            (2, 5, 1, 1, 3),
        ];
        let levels: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|&i| i != Isa::Scalar)
            .collect();
        if levels.is_empty() {
            eprintln!("no SIMD level on this CPU: the direct kernels are never used here");
            return;
        }
        for &(n, c_in, h, w, c_out) in &shapes {
            let g = Geom::new((n, c_in, h, w), (c_out, 3, 3), 1, 1, 1);
            let x = data(n * c_in * h * w, 1);
            let wt = data(c_out * c_in * 9, 2);
            let dy = data(n * c_out * h * w, 3);
            let want_y = conv_fwd_isa(&g, &x, &wt, Isa::Scalar);
            let want_dx = conv_dx_isa(&g, &dy, &wt, Isa::Scalar);
            let want_dw = conv_dw_isa(&g, &x, &dy, Isa::Scalar);
            for &isa in &levels {
                assert!(applies(&g, isa) || n < rayon::current_num_threads());
                let ctx = format!("{isa} {n}x{c_in}x{h}x{w} -> {c_out}");
                let e = max_rel(&conv_fwd_isa(&g, &x, &wt, isa), &want_y);
                assert!(e < 1e-5, "forward {ctx}: {e}");
                let e = max_rel(&conv_dx_isa(&g, &dy, &wt, isa), &want_dx);
                assert!(e < 1e-5, "input gradient {ctx}: {e}");
                let e = max_rel(&conv_dw_isa(&g, &x, &dy, isa), &want_dw);
                assert!(e < 1e-5, "weight gradient {ctx}: {e}");
            }
        }
    }

    /// The weight gradient does not depend on the number of threads (fixed chunks of images),
    /// and the forward is right whichever thread count shares out the images.
    #[test]
    fn direct_weight_gradient_is_thread_count_independent() {
        let Some(&isa) = Isa::available().first().filter(|&&i| i != Isa::Scalar) else {
            return;
        };
        let g = Geom::new((9, 16, 12, 12), (16, 3, 3), 1, 1, 1);
        let x = data(9 * 16 * 144, 4);
        let dy = data(9 * 16 * 144, 5);
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let one = on(1).install(|| conv_dw(&g, &x, &dy, isa));
        assert_eq!(one, on(2).install(|| conv_dw(&g, &x, &dy, isa)));
        assert_eq!(one, on(3).install(|| conv_dw(&g, &x, &dy, isa)));
        // The forward reuses one padded-input buffer for all images of a thread: its borders
        // must still be zero for the last image (one thread: all nine images in one buffer).
        let w = data(16 * 16 * 9, 6);
        let want = crate::conv::conv_fwd_isa(&g, &x, &w, Isa::Scalar);
        for threads in [1, 2] {
            let got = on(threads).install(|| conv_fwd(&g, &x, &w, isa));
            let e = max_rel(&got, &want);
            assert!(e < 1e-5, "forward on {threads} thread(s): {e}");
        }
    }
}
