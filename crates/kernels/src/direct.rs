//! Direct 3×3, padding-1 convolution at stride 1 and 2 (forward and weight gradient; the
//! stride-1 input gradient is a forward) with AVX-512 and AVX2 micro-kernels chosen at run time
//! ([`crate::isa`]).
//!
//! Why: in the im2col + `gemm` path the 3×3 layers of ResNet-32 spend a third of their time
//! outside the multiply-adds (building `col`, `gemm` packing it), and their GEMMs have
//! `n = C_out = 16…64`, too narrow for `gemm`'s blocking. These layers are most of a CIFAR
//! ResNet's work (and, through the stride-1 input gradient, of its backward pass too).
//!
//! # Layout: three shifted copies of each input plane
//!
//! Output `(oh, ow)` has flat index `q = oh·W + ow`: the NCHW layout itself. Its tap `(kh, kw)`
//! reads input `(oh + kh − 1, ow + kw − 1)`, which in a plane with one zero row above and below
//! (and one zero float in front) lies at `q + kh·W + kw`: a fixed shift per tap, so the
//! convolution is nine shifted, contiguous multiply-adds over `q`, with no im2col matrix and no
//! packing. Only the side borders break the shift: tap `kw = 0` at `ow = 0` would read the
//! previous row's last pixel, and tap `kw = 2` at `ow = W − 1` the next row's first. So each
//! input plane is copied three times, once per kernel column: for `kw = 0` with its last column
//! zeroed, for `kw = 1` as it is, for `kw = 2` with its first column zeroed; each zeroed column
//! is read only by the taps that must see zeros there.
//!
//! Stride 2 (even `H`, `W`): output `(i, j)` reads input rows `2i − 1, 2i, 2i + 1`, i.e. rows of
//! the odd phase (`x(2i' + 1, ·)`) at `i' = i − 1, i` and of the even phase at `i' = i`; columns
//! likewise. So each input plane is split into its four `Ho × Wo` phase planes, and the taps
//! become shifts by 0 or −1 row and column within them: six copies per channel (the two
//! odd-column phases twice, once with the last column zeroed for the −1 column shift), each
//! with a zero row above. The kernels are the stride-1 ones with the taps' offsets ([`Planes`]).
//!
//! Every computed position is an output pixel (up to the last tile of a plane), so the forward
//! stores straight into the output tensor. (The layout before padded each row to `W + 2` and
//! computed two dropped columns per row: 6 % extra work at W = 32, 25 % at W = 8, plus a copy
//! of every output; kernels README, run 7.)
//!
//! * Forward: a register tile of `CO` output channels × `NV` vectors of `q`; per input channel
//!   and tap, `NV` unaligned loads of the input and `CO` broadcast weights feed `CO·NV` FMAs
//!   (AVX-512: up to 8 × 3 × 16 lanes in 24 of its 32 registers; AVX2: up to 4 × 2 × 8 lanes).
//! * Weight gradient: `dW[co, ci, kh, kw] = Σ_q dy[co, q] · x[ci, q + shift(kh, kw)]` with `dy`
//!   copied into aligned planes that are zero where no output pixel is; a tile of `CO` output
//!   channels × the 3 `kw` taps for one `(ci, kh)`, summed over `q` in vector lanes, then across
//!   lanes in a fixed order. It reads a new cache line of `dy` per channel and step, and of `x`
//!   per stream, so the three copies' three streams cost more than dropped columns do on long
//!   rows: for `W ≥ 16` it uses a single copy with rows padded to `W + 2` instead ([`DwPlanes`]).
//!
//! Images go over rayon threads (each kernel single-threaded); the weight gradient is summed in
//! the same fixed chunks of images as the im2col path, so results do not depend on the thread
//! count. The summation order differs from the `gemm` path's (results agree to rounding).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::conv::{dw_chunk, Geom};
use crate::isa::Isa;

/// Whether the direct kernels take this convolution with `isa`.
pub(crate) fn applies(g: &Geom, isa: Isa) -> bool {
    isa != Isa::Scalar
        && g.kh == 3
        && g.kw == 3
        && g.pad == 1
        // Stride 2 (the first layer of a stage) on even sizes: four whole phase planes. Its six
        // copies per channel are twice the data per multiply-add of stride 1's three: past 64
        // input channels they fall out of L2 and im2col + `gemm` is faster (ResNet-50's
        // 128 → 128 at 56² / 2, AVX2: 37.3 vs 27.1 ms for 16 images; `cargo bench -p
        // longtail-kernels -- layers-imagenet`).
        && (g.stride == 1
            || (g.stride == 2 && g.h.is_multiple_of(2) && g.w.is_multiple_of(2) && g.c_in <= 64))
        && g.groups == 1
        && g.h > 0
        && g.w > 0
        && g.c_in > 0
        && g.c_out > 0
        // Images over threads: with fewer images than threads the im2col path's threaded GEMMs
        // use the cores better.
        && (g.n >= rayon::current_num_threads() || rayon::current_num_threads() == 1)
}

/// Whether the direct weight gradient takes this convolution: [`applies`], and a chunk of images
/// with at least 256 output positions. It sums each `(ci, kh)` over a chunk in vector lanes and
/// then across them; with fewer positions the reductions outweigh the multiply-adds (ResNet-50's
/// 512 → 512 at 7² at batch 16, one image per chunk: 97 ms vs 64 ms on im2col + `gemm`).
pub(crate) fn applies_dw(g: &Geom, isa: Isa) -> bool {
    applies(g, isa) && dw_chunk(g.n) * g.ho * g.wo >= 256
}

/// Lanes of one vector, output channels of one forward tile, and the vectors per tile.
#[derive(Clone, Copy)]
struct Tiling {
    lanes: usize,
    co: usize,
    nv: usize,
}

/// The most floats one forward tile covers (AVX-512: 3 vectors of 16 lanes), and its most
/// output channels: the size of the stack buffer for a plane's last, partial tile.
const MAX_TILE: usize = 48;
const MAX_CO: usize = 8;

impl Tiling {
    fn of(isa: Isa, g: &Geom) -> Tiling {
        // AVX2 tiles at most 4 × 2 vectors: 4 × 3 takes 12 accumulators + 3 inputs + 1
        // broadcast, all 16 registers, and ran 1.4× slower than 4 × 2 (16 → 16 at 32 × 32:
        // 4.85 vs 3.46 ms for 128 images, `cargo bench -p longtail-kernels -- layers`).
        let (lanes, co, max_nv) = match isa {
            Isa::Avx512 => (16, 8, 3),
            _ => (8, 4, 2),
        };
        // The vectors per tile that waste the fewest computed positions (ties: more vectors),
        // a one-vector tile counted at 5/4 of its positions: it loads 1 + CO values per CO
        // FMAs and ran at half the AVX2 peak (64 → 64 at 7 × 7, Fashion-MNIST's last stage).
        let hw = g.ho * g.wo;
        let nv = (1..=max_nv)
            .rev()
            .min_by_key(|&nv| hw.div_ceil(lanes * nv) * lanes * nv * if nv == 1 { 5 } else { 4 })
            .unwrap_or(1);
        debug_assert!(lanes * nv <= MAX_TILE && co <= MAX_CO);
        Tiling { lanes, co, nv }
    }
}

/// Sizes of the planes of one convolution, and where each tap reads.
#[derive(Clone, Copy)]
struct Planes {
    /// Stride of the convolution (1 or 2).
    stride: usize,
    /// Input plane `H × W`.
    in_h: usize,
    in_w: usize,
    /// Output row length `Wo`: the row length of the copies too.
    w: usize,
    /// Output pixels per plane `Ho·Wo`.
    hw: usize,
    /// Floats per `dy` plane of the weight gradient: `Ho·Wo` rounded up to whole cache lines
    /// (a whole number of vectors for either level; zeros past `Ho·Wo`).
    dq: usize,
    /// Floats per copy of an input plane: every load of the last tile (forward) and of the
    /// last vector (weight gradient) stays inside it.
    ps: usize,
    /// Copies per input channel: 3 (stride 1) or 6 (stride 2).
    copies: usize,
    /// Where tap `kh·3 + kw` of output `q` reads: `offs[tap] + q` from the channel's first copy.
    offs: [usize; 9],
}

impl Planes {
    fn of(g: &Geom, t: Tiling) -> Planes {
        let (w, hw) = (g.wo, g.ho * g.wo);
        // Computed positions per output plane: `Ho·Wo` rounded up to whole tiles.
        let nq = hw.div_ceil(t.lanes * t.nv) * t.lanes * t.nv;
        let dq = hw.next_multiple_of(16);
        // Loads reach position `max(nq, dq) − 1 + 2·Wo + 2` of a copy. Whole cache lines, so
        // every copy of an aligned buffer starts on one.
        let ps = (nq.max(dq) + 2 * w + 2).next_multiple_of(16);
        let mut offs = [0; 9];
        let copies = if g.stride == 1 {
            for (k, o) in offs.iter_mut().enumerate() {
                let (kh, kw) = (k / 3, k % 3);
                *o = kw * ps + kh * w + kw;
            }
            3
        } else {
            for (k, o) in offs.iter_mut().enumerate() {
                let ((a, di), (b, dj)) = (S2_TAP[k / 3], S2_TAP[k % 3]);
                *o = s2_copy(a, b, dj) * ps + di * w + dj;
            }
            6
        };
        Planes {
            stride: g.stride,
            in_h: g.h,
            in_w: g.w,
            w,
            hw,
            dq,
            ps,
            copies,
            offs,
        }
    }

    /// Floats of one input channel: its copies.
    fn chan(&self) -> usize {
        self.copies * self.ps
    }

    /// Copies `c` input planes `H × W` of `src` into their copies (`[c][copy][ps]`, module
    /// docs): copy pixel `(i, j)` at `Wo + 1 + i·Wo + j`. Writes only those `Ho·Wo` floats of
    /// each copy: `dst` must be zero elsewhere, as a fresh [`Aligned::zeroed`] buffer is and
    /// stays when only this function (with the same sizes) writes to it. That skips a zeroing
    /// pass over every padded input.
    fn fill(&self, src: &[f32], c: usize, dst: &mut [f32]) {
        let (w, hw, in_hw) = (self.w, self.hw, self.in_h * self.in_w);
        for ch in 0..c {
            let s = &src[ch * in_hw..][..in_hw];
            let dst = &mut dst[ch * self.chan()..][..self.chan()];
            if self.stride == 1 {
                for kw in 0..3 {
                    let d = &mut dst[kw * self.ps + w + 1..][..hw];
                    d.copy_from_slice(s);
                    match kw {
                        0 => d.iter_mut().skip(w - 1).step_by(w).for_each(|v| *v = 0.0),
                        2 => d.iter_mut().step_by(w).for_each(|v| *v = 0.0),
                        _ => {}
                    }
                }
                continue;
            }
            // Stride 2: copy (a, b[, masked]) holds x(2i + a, 2j + b).
            for (copy, (a, b, masked)) in S2_COPIES.into_iter().enumerate() {
                let d = &mut dst[copy * self.ps + w + 1..][..hw];
                for (i, drow) in d.chunks_exact_mut(w).enumerate() {
                    let srow = &s[(2 * i + a) * self.in_w + b..];
                    for (j, v) in drow.iter_mut().enumerate() {
                        *v = srow[2 * j];
                    }
                    if masked {
                        drow[w - 1] = 0.0;
                    }
                }
            }
        }
    }
}

/// Stride 2, kernel row (column) `k`: the input row `2·i + k − 1` of output row `i` lies in
/// phase `a` (even 0, odd 1) at phase row `i − 1 + di`.
const S2_TAP: [(usize, usize); 3] = [(1, 0), (0, 1), (1, 1)];

/// Stride 2: the six copies of an input channel, `(row phase, column phase, last column
/// zeroed)`. A tap with column shift −1 (`dj = 0`) reads a copy with its last column zeroed, so
/// that output column 0 sees zero where the shift wraps to the row above; rows shifted by −1
/// read the zero row above the copy.
const S2_COPIES: [(usize, usize, bool); 6] = [
    (0, 0, false),
    (0, 1, false),
    (0, 1, true),
    (1, 0, false),
    (1, 1, false),
    (1, 1, true),
];

/// Stride 2: the copy a tap of phases `(a, b)` and column shift `dj − 1` reads.
fn s2_copy(a: usize, b: usize, dj: usize) -> usize {
    let masked = dj == 0;
    S2_COPIES
        .iter()
        .position(|&c| c == (a, b, masked && b == 1))
        .expect("every phase has a copy")
}

/// The weight gradient's layout of one image's `x` and `dy`: each tap a fixed shift in both.
#[derive(Clone, Copy)]
struct DwPlanes {
    /// Floats per input channel of `x`.
    chan: usize,
    /// Where tap `kh·3 + kw` reads `x` for position `q`: `offs[tap] + q` in the channel.
    offs: [usize; 9],
    /// Floats per `dy` plane: whole cache lines, zeros where no output pixel is.
    dq: usize,
    /// Rows padded to `W + 2` (one copy per channel) rather than the forward's copies.
    row_padded: bool,
}

impl DwPlanes {
    /// The forward's copies per channel (`x` laid out by [`Planes::fill`]) for stride 2 or
    /// `W < 16`, else one copy with rows padded to `W + 2`. Measured (`cargo bench -p
    /// longtail-kernels -- layers`, ms for 128 images, AVX2 / AVX-512): at 32 × 32, 16 → 16,
    /// row-padded 4.21 / 3.49, three copies 4.80 / 3.77; at 8 × 8, 64 → 64, row-padded 5.41 /
    /// 4.56, three copies 5.16 / 3.97 (25 % of the row-padded positions are dropped columns).
    fn of(g: &Geom, p: Planes) -> DwPlanes {
        if g.stride != 1 || g.w < 16 {
            return DwPlanes {
                chan: p.chan(),
                offs: p.offs,
                dq: p.dq,
                row_padded: false,
            };
        }
        let wp = g.w + 2;
        let dq = (g.h * wp).next_multiple_of(16);
        let mut offs = [0; 9];
        for (k, o) in offs.iter_mut().enumerate() {
            *o = k / 3 * wp + k % 3;
        }
        DwPlanes {
            // Loads reach position `dq − 1 + 2·WP + 2`.
            chan: (dq + 2 * wp + 2).next_multiple_of(16),
            offs,
            dq,
            row_padded: true,
        }
    }

    /// Copies one image's `x` (`c_in` planes) and `dy` (`c_out` planes) into `xp` and `dyp`,
    /// zero elsewhere as for [`Planes::fill`].
    fn fill(&self, g: &Geom, p: Planes, x: &[f32], dy: &[f32], xp: &mut [f32], dyp: &mut [f32]) {
        let hwo = g.ho * g.wo;
        if !self.row_padded {
            p.fill(x, g.c_in, xp);
            for (c, plane) in dy[..g.c_out * hwo].chunks_exact(hwo).enumerate() {
                dyp[c * self.dq..][..hwo].copy_from_slice(plane);
            }
            return;
        }
        let (w, wp) = (g.w, g.w + 2);
        for (c, plane) in x[..g.c_in * g.h * w].chunks_exact(g.h * w).enumerate() {
            for (r, row) in plane.chunks_exact(w).enumerate() {
                xp[c * self.chan + (r + 1) * wp + 1..][..w].copy_from_slice(row);
            }
        }
        for (c, plane) in dy[..g.c_out * hwo].chunks_exact(hwo).enumerate() {
            for (r, row) in plane.chunks_exact(w).enumerate() {
                dyp[c * self.dq + r * wp..][..w].copy_from_slice(row);
            }
        }
    }
}

/// A zeroed scratch buffer whose first float sits on a 64-byte boundary. With plane sizes in
/// whole cache lines, the weight gradient's loads of `dy` then never split a cache line (a
/// split AVX-512 load costs two; `Vec<f32>` only promises 4-byte alignment).
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

/// Index of weight `(co, ci, tap k)` in the kernels' tiled layout `[co / CO][ci][k][co % CO]`
/// (tiles of `co_t` output channels): how the forward reads weights and the weight gradient
/// writes them.
fn tiled(co: usize, ci: usize, k: usize, c_in: usize, co_t: usize) -> usize {
    ((co / co_t * c_in + ci) * 9 + k) * co_t + co % co_t
}

/// Forward conv `x (n, c_in, h, w) ⋆ w (c_out, c_in, 3, 3)` → `(n, c_out, ho, wo)`; `applies`
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
    let (hw, per_out, in_hw) = (p.hw, g.c_out * p.hw, g.h * g.w);
    // Every output value is written below: no zeroing pass over the output first.
    let mut out: Vec<f32> = Vec::with_capacity(g.n * per_out);
    let scratch = || Aligned::zeroed(g.c_in * p.chan());
    let image = |xp: &mut Aligned, (i, out_i): (usize, &mut [MaybeUninit<f32>])| {
        let xp = xp.get_mut();
        p.fill(&x[i * g.c_in * in_hw..][..g.c_in * in_hw], g.c_in, xp);
        for tile in 0..tiles {
            let wt_t = &wt[tile * g.c_in * 9 * t.co..][..g.c_in * 9 * t.co];
            let co0 = tile * t.co;
            let cv = t.co.min(g.c_out - co0);
            fwd_tile(
                isa,
                t,
                p,
                g.c_in,
                xp,
                wt_t,
                &mut out_i[co0 * hw..][..cv * hw],
            );
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
    // chunk (`fwd_tile` writes every float of its slice).
    unsafe { out.set_len(g.n * per_out) };
    out
}

/// One tile row of output channels: writes all of `out` (`cv × H·W`, `cv ≤ CO` channels) from
/// all input copies `xp`.
fn fwd_tile(
    isa: Isa,
    t: Tiling,
    p: Planes,
    c_in: usize,
    xp: &[f32],
    wt: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    let cv = out.len() / p.hw.max(1);
    assert!(xp.len() >= c_in * p.chan() && wt.len() >= c_in * 9 * t.co);
    assert!((1..=t.co).contains(&cv) && out.len() == cv * p.hw);
    let out = out.as_mut_ptr().cast::<f32>();
    // SAFETY: `isa` was checked against the CPU by `isa::isa` (callers pass it or a lower level
    // from `Isa::available`); the asserts above and `Planes::of` bound every load and store:
    // loads reach at most `q0 + lanes·nv − 1 + 2·W + 2 < ps` in each copy, and the kernel
    // stores only positions below `H·W` of the first `cv` planes.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        match (isa, t.nv) {
            (Isa::Avx512, 1) => return avx512::fwd::<8, 1>(p, c_in, xp, wt, out, cv),
            (Isa::Avx512, 2) => return avx512::fwd::<8, 2>(p, c_in, xp, wt, out, cv),
            (Isa::Avx512, _) => return avx512::fwd::<8, 3>(p, c_in, xp, wt, out, cv),
            (Isa::Avx2, 1) => return avx2::fwd::<4, 1>(p, c_in, xp, wt, out, cv),
            (Isa::Avx2, _) => return avx2::fwd::<4, 2>(p, c_in, xp, wt, out, cv),
            (Isa::Scalar, _) => {}
        }
    }
    unreachable!("direct conv called without a SIMD level");
}

/// Weight gradient `dw (c_out, c_in, 3, 3)` from `x (n, c_in, h, w)` and `dy (n, c_out, ho, wo)`,
/// summed over fixed chunks of images in chunk order; `applies_dw` must hold.
pub(crate) fn conv_dw(g: &Geom, x: &[f32], dy: &[f32], isa: Isa) -> Vec<f32> {
    let t = Tiling::of(isa, g);
    let p = Planes::of(g, t);
    let d = DwPlanes::of(g, p);
    let len = g.c_out * g.c_in * 9;
    if g.n == 0 {
        return vec![0f32; len];
    }
    // Output-channel tiles of the weight-gradient kernel: 3·CO accumulators.
    let co_t = t.co;
    let tiles = g.c_out.div_ceil(co_t);
    let hw = p.hw;
    let per_chunk = dw_chunk(g.n);
    let chunks = g.n.div_ceil(per_chunk);
    // The chunk's images side by side: x's planes, and aligned dy planes for whole tiles of
    // channels (zero planes past c_out). One pair of buffers serves every chunk a thread takes:
    // `fill` writes the same pixels each time, so the rest stays zero.
    let (xs, ds) = (g.c_in * d.chan, tiles * co_t * d.dq);
    let scratch = || {
        (
            Aligned::zeroed(per_chunk * xs),
            Aligned::zeroed(per_chunk * ds),
        )
    };
    let chunk_sum = |(xp, dyp): &mut (Aligned, Aligned), chunk: usize| {
        let first = chunk * per_chunk;
        let imgs = per_chunk.min(g.n - first);
        for j in 0..imgs {
            let i = first + j;
            d.fill(
                g,
                p,
                &x[i * g.c_in * g.h * g.w..],
                &dy[i * g.c_out * hw..],
                &mut xp.get_mut()[j * xs..],
                &mut dyp.get_mut()[j * ds..],
            );
        }
        let (xp, dyp) = (xp.get(), dyp.get());
        // dW as [tile][ci][kh][kw][CO], reordered at the end.
        let mut acc = vec![0f32; tiles * g.c_in * 9 * co_t];
        for tile in 0..tiles {
            let a = &mut acc[tile * g.c_in * 9 * co_t..][..g.c_in * 9 * co_t];
            let dy_t = &dyp[tile * co_t * d.dq..];
            dw_tile(isa, co_t, d, g.c_in, (imgs, xs, ds), xp, dy_t, a);
        }
        acc
    };
    let partials: Vec<Vec<f32>> = if chunks > 1 && rayon::current_num_threads() > 1 {
        (0..chunks)
            .into_par_iter()
            .map_init(scratch, chunk_sum)
            .collect()
    } else {
        let mut s = scratch();
        (0..chunks).map(|chunk| chunk_sum(&mut s, chunk)).collect()
    };
    // Sum the chunks in chunk order, reading each in its tiled order `[tile][ci][k][CO]`.
    let mut dw = vec![0f32; len];
    for part in &partials {
        for (tile, part_t) in part.chunks_exact(g.c_in * 9 * co_t).enumerate() {
            for (ci, part_c) in part_t.chunks_exact(9 * co_t).enumerate() {
                for (k, taps) in part_c.chunks_exact(co_t).enumerate() {
                    for (c, &v) in taps.iter().enumerate().take(g.c_out - tile * co_t) {
                        dw[((tile * co_t + c) * g.c_in + ci) * 9 + k] += v;
                    }
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
    d: DwPlanes,
    c_in: usize,
    (imgs, xs, ds): (usize, usize, usize),
    xp: &[f32],
    dyp: &[f32],
    acc: &mut [f32],
) {
    assert!(imgs > 0 && xs >= c_in * d.chan && ds >= co * d.dq);
    assert!(xp.len() >= (imgs - 1) * xs + c_in * d.chan);
    assert!(dyp.len() >= (imgs - 1) * ds + co * d.dq && acc.len() >= c_in * 9 * co);
    // Images per block: the block's dy tile in about 24 KiB, so it stays in L1 (32 × 32 planes:
    // one image; 8 × 8: the whole chunk, one block).
    let block = (6144 / (co * d.dq)).max(1);
    let lanes = if isa == Isa::Avx512 { 16 } else { 8 };
    let mut part = vec![
        0f32;
        if imgs > block {
            c_in * 9 * co * lanes
        } else {
            0
        }
    ];
    let imgs_xs_ds = (imgs, xs, ds);
    // SAFETY: as in `fwd_tile`; `dq` is a whole number of vectors for either level, loads of `x`
    // stay inside each channel's `chan` floats (`DwPlanes::of`), and `part` is only touched
    // with more than one block, when it holds `c_in·9·CO` vectors.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        match isa {
            Isa::Avx512 => {
                return avx512::dw::<8>(d, c_in, imgs_xs_ds, block, xp, dyp, acc, &mut part)
            }
            Isa::Avx2 => return avx2::dw::<4>(d, c_in, imgs_xs_ds, block, xp, dyp, acc, &mut part),
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
            use super::{DwPlanes, Planes, MAX_CO, MAX_TILE};
            #[allow(unused_imports)]
            use std::arch::x86_64::*;

            const LANES: usize = $lanes;

            /// Forward: for each tile of `LANES·NV` positions, `CO × NV` accumulators over every
            /// input channel and tap; stores the first `cv` channels of the tile into `out`
            /// (planes of `H·W`), the last, partial tile of a plane through a stack buffer.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn fwd<const CO: usize, const NV: usize>(
                p: Planes,
                c_in: usize,
                xp: &[f32],
                wt: &[f32],
                out: *mut f32,
                cv: usize,
            ) {
                // SAFETY: the caller bounds every access (see `fwd_tile`).
                unsafe {
                    let (xp, wt) = (xp.as_ptr(), wt.as_ptr());
                    let tile = LANES * NV;
                    let mut q0 = 0;
                    while q0 < p.hw {
                        let mut acc = [[$zero(); NV]; CO];
                        for ci in 0..c_in {
                            let xc = xp.add(ci * p.chan() + q0);
                            let wc = wt.add(ci * 9 * CO);
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let base = xc.add(p.offs[kh * 3 + kw]);
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
                        if cv == CO && q0 + tile <= p.hw {
                            for (c, row) in acc.iter().enumerate() {
                                for (j, &a) in row.iter().enumerate() {
                                    $store(out.add(c * p.hw + q0 + j * LANES), a);
                                }
                            }
                        } else {
                            let mut buf = [[0f32; MAX_TILE]; MAX_CO];
                            for (c, row) in acc.iter().enumerate() {
                                for (j, &a) in row.iter().enumerate() {
                                    $store(buf[c].as_mut_ptr().add(j * LANES), a);
                                }
                            }
                            let n = tile.min(p.hw - q0);
                            for (c, b) in buf.iter().take(cv).enumerate() {
                                std::ptr::copy_nonoverlapping(
                                    b.as_ptr(),
                                    out.add(c * p.hw + q0),
                                    n,
                                );
                            }
                        }
                        q0 += tile;
                    }
                }
            }

            /// Weight gradient: for each input channel and kernel row, `CO × 3` accumulators
            /// (output channel × kernel column) summed over all positions of all images, then
            /// across lanes (once per chunk of images: at 8 × 8 that reduction would otherwise
            /// cost more than the multiply-adds), written to `acc ([ci][kh·3 + kw][CO])`.
            /// Images go in blocks of `block`, all channels and kernel rows per block, so the
            /// block's `dy` tile is read from L1 by every `(ci, kh)`; between blocks the
            /// accumulators wait in `part` (`[ci][kh][kw][CO][LANES]`). The sums are those of
            /// one block: per lane, images in order, positions in order.
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn dw<const CO: usize>(
                d: DwPlanes,
                c_in: usize,
                (imgs, xs, ds): (usize, usize, usize),
                block: usize,
                xp: &[f32],
                dyp: &[f32],
                acc: &mut [f32],
                part: &mut [f32],
            ) {
                // SAFETY: the caller bounds every access (see `dw_tile`).
                unsafe {
                    let (xp, dyp, out) = (xp.as_ptr(), dyp.as_ptr(), acc.as_mut_ptr());
                    let part = part.as_mut_ptr();
                    let mut j0 = 0;
                    while j0 < imgs {
                        let jn = (j0 + block).min(imgs);
                        for ci in 0..c_in {
                            for kh in 0..3 {
                                let pv = part.add((ci * 3 + kh) * 3 * CO * LANES);
                                let mut s0 = [$zero(); CO];
                                let mut s1 = [$zero(); CO];
                                let mut s2 = [$zero(); CO];
                                if j0 > 0 {
                                    for c in 0..CO {
                                        s0[c] = $load(pv.add(c * LANES));
                                        s1[c] = $load(pv.add((CO + c) * LANES));
                                        s2[c] = $load(pv.add((2 * CO + c) * LANES));
                                    }
                                }
                                for j in j0..jn {
                                    let xc = xp.add(j * xs + ci * d.chan);
                                    let xr = xc.add(d.offs[kh * 3]);
                                    let xr1 = xc.add(d.offs[kh * 3 + 1]);
                                    let xr2 = xc.add(d.offs[kh * 3 + 2]);
                                    let dj = dyp.add(j * ds);
                                    let mut step = |q: usize| {
                                        let x0 = $load(xr.add(q));
                                        let x1 = $load(xr1.add(q));
                                        let x2 = $load(xr2.add(q));
                                        for c in 0..CO {
                                            let dv = $load(dj.add(c * d.dq + q));
                                            s0[c] = $fma(dv, x0, s0[c]);
                                            s1[c] = $fma(dv, x1, s1[c]);
                                            s2[c] = $fma(dv, x2, s2[c]);
                                        }
                                    };
                                    let mut q = 0;
                                    while q + 4 * LANES <= d.dq {
                                        step(q);
                                        step(q + LANES);
                                        step(q + 2 * LANES);
                                        step(q + 3 * LANES);
                                        q += 4 * LANES;
                                    }
                                    while q < d.dq {
                                        step(q);
                                        q += LANES;
                                    }
                                }
                                if jn < imgs {
                                    for c in 0..CO {
                                        $store(pv.add(c * LANES), s0[c]);
                                        $store(pv.add((CO + c) * LANES), s1[c]);
                                        $store(pv.add((2 * CO + c) * LANES), s2[c]);
                                    }
                                    continue;
                                }
                                for c in 0..CO {
                                    let o = out.add((ci * 9 + kh * 3) * CO + c);
                                    *o = $hsum(s0[c]);
                                    *o.add(CO) = $hsum(s1[c]);
                                    *o.add(2 * CO) = $hsum(s2[c]);
                                }
                            }
                        }
                        j0 = jn;
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
    /// channel counts that are and are not whole tiles, one and several images per chunk), at
    /// stride 1 and 2.
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
            // Several images per chunk of the weight gradient, in one block and in several.
            (40, 8, 16, 16, 8),
            (34, 4, 32, 32, 4),
            (80, 8, 8, 8, 12),
        ];
        let levels: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|&i| i != Isa::Scalar)
            .collect();
        if levels.is_empty() {
            eprintln!("no SIMD level on this CPU: the direct kernels are never used here");
            return;
        }
        // Stride 2 (first layer of a stage): CIFAR 32 → 16 and 16 → 8, a RIDE expert,
        // ImageNet 56 → 28, a non-square odd-channel case, 2 × 2 → 1 × 1, several images per chunk.
        let s2 = [
            (4, 16, 32, 32, 32),
            (3, 32, 16, 16, 64),
            (2, 24, 16, 16, 48),
            (2, 8, 56, 56, 16),
            (2, 3, 6, 10, 5),
            (2, 5, 2, 2, 3),
            (64, 8, 16, 16, 8),
        ];
        let cases = shapes
            .iter()
            .map(|&s| (s, 1))
            .chain(s2.iter().map(|&s| (s, 2)));
        // Shapes whose weight gradient took the direct kernel, per layout (row-padded, copies).
        let mut direct_dw = [0; 2];
        for ((n, c_in, h, w, c_out), stride) in cases {
            let g = Geom::new((n, c_in, h, w), (c_out, 3, 3), stride, 1, 1);
            let x = data(n * c_in * h * w, 1);
            let wt = data(c_out * c_in * 9, 2);
            let dy = data(n * c_out * g.ho * g.wo, 3);
            let want_y = conv_fwd_isa(&g, &x, &wt, Isa::Scalar);
            let want_dx = conv_dx_isa(&g, &dy, &wt, Isa::Scalar);
            let want_dw = conv_dw_isa(&g, &x, &dy, Isa::Scalar);
            for &isa in &levels {
                assert!(applies(&g, isa) || n < rayon::current_num_threads());
                let ctx = format!("{isa} {n}x{c_in}x{h}x{w} -> {c_out}, stride {stride}");
                let e = max_rel(&conv_fwd_isa(&g, &x, &wt, isa), &want_y);
                assert!(e < 1e-5, "forward {ctx}: {e}");
                let e = max_rel(&conv_dx_isa(&g, &dy, &wt, isa), &want_dx);
                assert!(e < 1e-5, "input gradient {ctx}: {e}");
                let e = max_rel(&conv_dw_isa(&g, &x, &dy, isa), &want_dw);
                assert!(e < 1e-5, "weight gradient {ctx}: {e}");
                if applies_dw(&g, isa) {
                    direct_dw[usize::from(stride == 2 || w < 16)] += 1;
                }
            }
        }
        assert!(
            direct_dw.iter().all(|&k| k > 0),
            "direct weight gradient taken (row-padded, copies): {direct_dw:?}"
        );
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
