//! Kernel benchmark: GEMM ceiling, per-layer conv / batch-norm timings for the ResNet-32 (and RIDE expert) shapes
//! at batch 128 (ours vs candle stock), and a whole ResNet-32 training step and eval forward.
//!
//! Run: `cargo bench -p longtail-kernels` (release build). Optional arguments pick sections:
//! `gemm`, `layers`, `bn`, `ops`, `train` (default: all), and `layers-imagenet` (ResNet-50's 3×3
//! layers at batch 16; only when named). Environment: `LT_BENCH_REPS` (per-layer
//! repetitions, default 5), `LT_BENCH_STEPS` (timed train steps for ours, default 5),
//! `LT_BENCH_STOCK_STEPS` (for stock, default 3; 0 also skips stock in `layers`),
//! `LONGTAIL_ISA` (`avx512`, `avx2`, `scalar`: the SIMD level of our kernels; `scalar` is the
//! im2col + `gemm` path everywhere). Every number is a median; ours and stock are
//! interleaved within one process, because the machine is shared and timings drift.

use candle_core::{DType, Device, Tensor, Var, D};
use gemm::Parallelism;
use longtail_kernels as lk;
use rayon::prelude::*;
use std::time::Instant;

type R<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 128;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds taken by `f` (which must finish its work before returning).
fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed().as_secs_f64(), r)
}

/// Deterministic pseudo-random data in [-1, 1) (xorshift; the CPU device RNG cannot be seeded).
fn rand_t(shape: &[usize], seed: u64, scale: f32) -> R<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn proc_status(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the kernel's peak-RSS mark (VmHWM) so each phase reports its own peak.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_rss_mib() -> f64 {
    proc_status("VmHWM:").map_or(f64::NAN, |kb| kb as f64 / 1024.0)
}

// ------------------------------------------------------------------ GEMM

/// `m×n = m×k · k×n`, all row-major contiguous.
fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], par: Parallelism) {
    // SAFETY: a is m×k, b is k×n, c is m×n (checked by the asserts), row-major contiguous.
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

fn gemm_gflops(m: usize, n: usize, k: usize, batch: usize, reps: usize) -> f64 {
    let threads = rayon::current_num_threads();
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let flops = 2.0 * (m * n * k * batch) as f64;
    let mut times = Vec::new();
    if batch == 1 {
        let mut c = vec![0f32; m * n];
        for _ in 0..reps {
            times.push(time(|| sgemm(m, n, k, &a, &b, &mut c, Parallelism::Rayon(threads))).0);
        }
    } else {
        // As the conv kernels run: one single-threaded GEMM per image, images over threads.
        let mut c = vec![0f32; m * n * batch];
        for _ in 0..reps {
            times.push(
                time(|| {
                    c.par_chunks_mut(m * n)
                        .for_each(|ci| sgemm(m, n, k, &a, &b, ci, Parallelism::None))
                })
                .0,
            );
        }
    }
    flops / median(times) / 1e9
}

fn bench_gemm(reps: usize) -> f64 {
    println!(
        "\n== GEMM (gemm 0.19, f32, {} rayon threads)",
        rayon::current_num_threads()
    );
    let peak = lk::gemm_peak_gflops(1024, reps);
    println!(
        "{:<44} {:>8.1} GFLOP/s   <- peak used below",
        "1024x1024x1024", peak
    );
    let whole = [
        (131072, 16, 144),
        (32768, 32, 288),
        (8192, 64, 576),
        (144, 16, 131072),
    ];
    for (m, n, k) in whole {
        let g = gemm_gflops(m, n, k, 1, reps);
        println!(
            "{:<44} {:>8.1} GFLOP/s  {:>5.0}%",
            format!("{m}x{n}x{k} (whole-batch im2col)"),
            g,
            g / peak * 100.0
        );
    }
    // Per-image shapes our kernels issue at batch 128: fwd (C_out × HW × 9C_in),
    // dx (C_in × HW × 9C_out, flipped-weight conv), dw (C_out × 9C_in × HW).
    for (c, hw) in [(16, 1024), (32, 256), (64, 64)] {
        for (what, m, n, k) in [("fwd", c, hw, 9 * c), ("dw", c, 9 * c, hw)] {
            let g = gemm_gflops(m, n, k, BATCH, reps);
            let name = format!("{m}x{n}x{k} x{BATCH} images ({what} {c}ch)");
            println!("{name:<44} {g:>8.1} GFLOP/s  {:>5.0}%", g / peak * 100.0);
        }
    }
    peak
}

// ------------------------------------------------------------------ per-layer conv

struct Layer {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    hw: usize,
    stride: usize,
}

const LAYERS: [Layer; 12] = [
    Layer {
        name: "conv1 3->16 @32",
        c_in: 3,
        c_out: 16,
        hw: 32,
        stride: 1,
    },
    Layer {
        name: "s1 16->16 @32",
        c_in: 16,
        c_out: 16,
        hw: 32,
        stride: 1,
    },
    Layer {
        name: "s2in 16->32 @32/2",
        c_in: 16,
        c_out: 32,
        hw: 32,
        stride: 2,
    },
    Layer {
        name: "s2 32->32 @16",
        c_in: 32,
        c_out: 32,
        hw: 16,
        stride: 1,
    },
    Layer {
        name: "s3in 32->64 @16/2",
        c_in: 32,
        c_out: 64,
        hw: 16,
        stride: 2,
    },
    Layer {
        name: "s3 64->64 @8",
        c_in: 64,
        c_out: 64,
        hw: 8,
        stride: 1,
    },
    // RIDE's reduced CIFAR experts (24 and 48 channels).
    Layer {
        name: "ride 24->24 @16",
        c_in: 24,
        c_out: 24,
        hw: 16,
        stride: 1,
    },
    Layer {
        name: "ride 24->48 @16/2",
        c_in: 24,
        c_out: 48,
        hw: 16,
        stride: 2,
    },
    Layer {
        name: "ride 48->48 @8",
        c_in: 48,
        c_out: 48,
        hw: 8,
        stride: 1,
    },
    // The bundled Fashion-MNIST set: 28 → 14 → 7.
    Layer {
        name: "fm 16->16 @28",
        c_in: 16,
        c_out: 16,
        hw: 28,
        stride: 1,
    },
    Layer {
        name: "fm 32->32 @14",
        c_in: 32,
        c_out: 32,
        hw: 14,
        stride: 1,
    },
    Layer {
        name: "fm 64->64 @7",
        c_in: 64,
        c_out: 64,
        hw: 7,
        stride: 1,
    },
];

fn stock_dx(dy: &Tensor, w: &Tensor, hw: usize, stride: usize) -> R<Tensor> {
    // As candle's conv2d backward (backprop.rs): conv_transpose2d with output padding.
    let k = w.dim(2)?;
    let out_size = (dy.dim(2)? - 1) * stride + (k - 1) + 1 - 2;
    Ok(dy.conv_transpose2d(w, 1, hw - out_size, stride, 1)?)
}

fn stock_dw(x: &Tensor, dy: &Tensor, stride: usize) -> R<Tensor> {
    let g = x
        .transpose(0, 1)?
        .conv2d(&dy.transpose(0, 1)?, 1, stride, 1, 1)?
        .transpose(0, 1)?;
    Ok(g.narrow(2, 0, 3)?.narrow(3, 0, 3)?.contiguous()?)
}

/// The 3×3 layers of ResNet-50 / ResNet-152 at 224² (stride 2 where a stage starts), timed
/// at batch 16 by `cargo bench -p longtail-kernels -- layers-imagenet` (not part of the default
/// run); compare `LONGTAIL_ISA=scalar` (im2col + `gemm`) with the direct kernels.
const IMAGENET_LAYERS: [Layer; 7] = [
    Layer {
        name: "r50 64->64 @56",
        c_in: 64,
        c_out: 64,
        hw: 56,
        stride: 1,
    },
    Layer {
        name: "r50 128->128 @56/2",
        c_in: 128,
        c_out: 128,
        hw: 56,
        stride: 2,
    },
    Layer {
        name: "r50 128->128 @28",
        c_in: 128,
        c_out: 128,
        hw: 28,
        stride: 1,
    },
    Layer {
        name: "r50 256->256 @28/2",
        c_in: 256,
        c_out: 256,
        hw: 28,
        stride: 2,
    },
    Layer {
        name: "r50 256->256 @14",
        c_in: 256,
        c_out: 256,
        hw: 14,
        stride: 1,
    },
    Layer {
        name: "r50 512->512 @14/2",
        c_in: 512,
        c_out: 512,
        hw: 14,
        stride: 2,
    },
    Layer {
        name: "r50 512->512 @7",
        c_in: 512,
        c_out: 512,
        hw: 7,
        stride: 1,
    },
];

fn bench_layers(peak: f64, reps: usize, layers: &[Layer], batch: usize) -> R<()> {
    println!("\n== conv 3x3 pad 1, batch {batch}: median of {reps}, ours and stock interleaved");
    println!(
        "{:<20} {:<4} {:>9} {:>8} {:>6} {:>10} {:>8} {:>8}",
        "layer", "pass", "ours ms", "GFLOP/s", "%peak", "stock ms", "GFLOP/s", "speedup"
    );
    let (mut tot_ours, mut tot_stock) = (0.0, 0.0);
    let with_stock = env_usize("LT_BENCH_STOCK_STEPS", 3) > 0;
    for (li, l) in layers.iter().enumerate() {
        let ho = (l.hw + 2 - 3) / l.stride + 1;
        let x = rand_t(&[batch, l.c_in, l.hw, l.hw], li as u64 + 1, 1.0)?;
        let w = rand_t(&[l.c_out, l.c_in, 3, 3], li as u64 + 11, 0.2)?;
        let dy = rand_t(&[batch, l.c_out, ho, ho], li as u64 + 21, 1.0)?;
        let flops = 2.0 * (batch * l.c_out * ho * ho * l.c_in * 9) as f64;
        // Check once that both sides agree before timing them.
        let err = (lk::conv2d_input_grad(&dy, &w, (l.hw, l.hw), l.stride, 1, 1)?
            - stock_dx(&dy, &w, l.hw, l.stride)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
        assert!(err < 1e-3, "{}: dx differs from stock by {err}", l.name);
        for pass in ["fwd", "dx", "dw"] {
            let (mut ours, mut stock) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let run = |fast: bool| -> R<f64> {
                    let t = Instant::now();
                    let out = match (pass, fast) {
                        ("fwd", true) => lk::conv2d(&x, &w, l.stride, 1, 1)?,
                        ("fwd", false) => x.conv2d(&w, 1, l.stride, 1, 1)?,
                        ("dx", true) => {
                            lk::conv2d_input_grad(&dy, &w, (l.hw, l.hw), l.stride, 1, 1)?
                        }
                        ("dx", false) => stock_dx(&dy, &w, l.hw, l.stride)?,
                        ("dw", true) => lk::conv2d_weight_grad(&x, &dy, (3, 3), l.stride, 1, 1)?,
                        _ => stock_dw(&x, &dy, l.stride)?,
                    };
                    let dt = t.elapsed().as_secs_f64();
                    drop(out);
                    Ok(dt)
                };
                ours.push(run(true)?);
                // LT_BENCH_STOCK_STEPS=0 skips candle's stock ops here too (NaN in the table).
                stock.push(if with_stock { run(false)? } else { f64::NAN });
            }
            let (o, s) = (median(ours), median(stock));
            tot_ours += o;
            tot_stock += s;
            println!(
                "{:<20} {:<4} {:>9.2} {:>8.1} {:>5.0}% {:>10.2} {:>8.1} {:>7.1}x",
                l.name,
                pass,
                o * 1e3,
                flops / o / 1e9,
                flops / o / 1e9 / peak * 100.0,
                s * 1e3,
                flops / s / 1e9,
                s / o
            );
        }
    }
    println!(
        "sum over the {} layers x 3 passes: ours {:.1} ms, stock {:.1} ms",
        layers.len(),
        tot_ours * 1e3,
        tot_stock * 1e3
    );
    Ok(())
}

// ------------------------------------------------------------------ batch norm

/// Stock training batch norm from candle primitives (what candle-nn's `BatchNorm` does).
fn stock_bn(x: &Tensor, g: &Tensor, b: &Tensor, relu: bool) -> R<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc
        .sqr()?
        .mean_keepdim(3)?
        .mean_keepdim(2)?
        .mean_keepdim(0)?;
    let y = xc
        .broadcast_div(&(var.clone() + 1e-5)?.sqrt()?)?
        .broadcast_mul(&g.reshape((1, c, 1, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
}

fn bench_bn(reps: usize) -> R<()> {
    println!("\n== batch norm + ReLU (train), batch {BATCH}: median of {reps}");
    println!("   bwd = backward() of sum(y * r): same extra mul/sum on both sides");
    println!(
        "{:<18} {:<8} {:>9} {:>7} {:>10} {:>8}",
        "shape", "pass", "ours ms", "GB/s", "stock ms", "speedup"
    );
    for (i, (c, hw)) in [(16, 32), (32, 16), (64, 8)].into_iter().enumerate() {
        let shape = [BATCH, c, hw, hw];
        let bytes = (BATCH * c * hw * hw * 4) as f64;
        let x = Var::from_tensor(&rand_t(&shape, 31 + i as u64, 2.0)?)?;
        let g = Var::from_tensor(&(rand_t(&[c], 41, 0.5)? + 1.0)?)?;
        let b = Var::from_tensor(&rand_t(&[c], 51, 0.5)?)?;
        let r = rand_t(&shape, 61, 1.0)?;
        let other = rand_t(&shape, 71, 1.0)?;
        let (mut f, mut fs, mut bw, mut bws, mut ar, mut ars) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            let (t, y) = time(|| lk::batch_norm_train(&x, &g, &b, 1e-5, true));
            f.push(t);
            let loss = (y?.0 * &r)?.sum_all()?;
            bw.push(time(|| loss.backward()).0);
            let (t, y) = time(|| stock_bn(&x, &g, &b, true));
            fs.push(t);
            let loss = (y?.0 * &r)?.sum_all()?;
            bws.push(time(|| loss.backward()).0);
            ar.push(time(|| lk::add_relu(&r, &other)).0);
            ars.push(time(|| (&r + &other).and_then(|s| s.relu())).0);
        }
        // Bytes: fwd reads x twice (stats, normalise) and writes y; bwd reads x, y, dy, writes dx.
        for (pass, o, s, traffic) in [
            ("fwd", median(f), median(fs), 3.0 * bytes),
            ("bwd", median(bw), median(bws), 5.0 * bytes),
            ("add+relu", median(ar), median(ars), 3.0 * bytes),
        ] {
            println!(
                "{:<18} {:<8} {:>9.2} {:>7.1} {:>10.2} {:>7.1}x",
                format!("{BATCH}x{c}x{hw}x{hw}"),
                pass,
                o * 1e3,
                traffic / o / 1e9,
                s * 1e3,
                s / o
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ element-wise ops

/// Our batch-norm, add + ReLU and max-pool kernels alone (forward and the backward functions
/// `loss.backward()` runs, called directly: no autograd glue), per ResNet-32 shape and for the
/// ImageNet stem's pooling, at every SIMD level up to `LONGTAIL_ISA` (forced with
/// `lk::with_isa`), levels interleaved within each repetition. Median ms of `max(reps, 15)`.
fn bench_ops(reps: usize) -> R<()> {
    let reps = reps.max(15);
    let levels: Vec<lk::Isa> = lk::Isa::available()
        .into_iter()
        .filter(|&l| l <= lk::isa())
        .collect();
    println!("\n== batch norm / add+relu / max pool kernels alone: median of {reps} (ms)");
    print!("{:<16} {:<14}", "shape", "op");
    for l in &levels {
        print!(" {:>8}", l.name());
    }
    println!();
    type Op<'a> = (&'static str, Box<dyn Fn() -> R<()> + 'a>);
    let run = |shape: String, ops: Vec<Op>| -> R<()> {
        let mut t = vec![vec![Vec::new(); levels.len()]; ops.len()];
        for rep in 0..reps {
            for (oi, (_, f)) in ops.iter().enumerate() {
                // A different level goes first in each repetition (no order bias).
                for k in 0..levels.len() {
                    let li = (rep + k) % levels.len();
                    let l = levels[li];
                    let s = Instant::now();
                    lk::with_isa(l, f)??;
                    t[oi][li].push(s.elapsed().as_secs_f64());
                }
            }
        }
        for (oi, (name, _)) in ops.iter().enumerate() {
            print!("{shape:<16} {name:<14}");
            for ts in &t[oi] {
                print!(" {:>8.3}", median(ts.clone()) * 1e3);
            }
            println!();
        }
        Ok(())
    };
    for (i, (c, hw)) in [(16, 32), (32, 16), (64, 8)].into_iter().enumerate() {
        let shape = [BATCH, c, hw, hw];
        let x = rand_t(&shape, 31 + i as u64, 2.0)?;
        let g = (rand_t(&[c], 41, 0.5)? + 1.0)?;
        let b = rand_t(&[c], 51, 0.5)?;
        let (rm, rv) = (rand_t(&[c], 52, 0.5)?, (rand_t(&[c], 53, 0.5)? + 1.0)?);
        let other = rand_t(&shape, 71, 1.0)?;
        let dy = rand_t(&shape, 61, 1.0)?;
        let (y, mean, var) = lk::batch_norm_train(&x, &g, &b, 1e-5, true)?;
        let yr = lk::add_relu(&x, &other)?;
        let (x, g, b) = (&x, &g, &b);
        let (y, mean, var, dy, other, rm, rv, yr) = (&y, &mean, &var, &dy, &other, &rm, &rv, &yr);
        let ops: Vec<Op> = vec![
            (
                "bn fwd+relu",
                Box::new(move || {
                    lk::batch_norm_train(x, g, b, 1e-5, true)?;
                    Ok(())
                }),
            ),
            (
                "bn eval+relu",
                Box::new(move || {
                    lk::batch_norm_eval(x, g, b, rm, rv, 1e-5, true)?;
                    Ok(())
                }),
            ),
            (
                "bn bwd+relu",
                Box::new(move || {
                    lk::batch_norm_backward(x, Some(y), dy, g, (mean, var), 1e-5, true)?;
                    Ok(())
                }),
            ),
            (
                "bn bwd",
                Box::new(move || {
                    lk::batch_norm_backward(x, None, dy, g, (mean, var), 1e-5, true)?;
                    Ok(())
                }),
            ),
            (
                "add+relu",
                Box::new(move || {
                    lk::add_relu(x, other)?;
                    Ok(())
                }),
            ),
            (
                "relu bwd",
                Box::new(move || {
                    lk::relu_backward(dy, yr)?;
                    Ok(())
                }),
            ),
        ];
        run(format!("{BATCH}x{c}x{hw}x{hw}"), ops)?;
    }
    // The ImageNet stem: MaxPool2d(3, 2, padding 1) on 64 channels at 112², batch 16.
    let x = rand_t(&[16, 64, 112, 112], 81, 1.0)?;
    let dy = rand_t(&[16, 64, 56, 56], 82, 1.0)?;
    let (x, dy) = (&x, &dy);
    let ops: Vec<Op> = vec![
        (
            "max pool fwd",
            Box::new(move || {
                lk::max_pool2d(x, 3, 2, 1)?;
                Ok(())
            }),
        ),
        (
            "max pool bwd",
            Box::new(move || {
                lk::max_pool2d_backward(x, dy, 3, 2, 1)?;
                Ok(())
            }),
        ),
    ];
    run("16x64x112x112".into(), ops)
}

// ------------------------------------------------------------------ ResNet-32

/// Conv + BN parameters of one conv layer of the benchmark ResNet-32.
struct ConvBn {
    w: Var,
    gamma: Var,
    beta: Var,
    running_mean: Tensor,
    running_var: Tensor,
    stride: usize,
}

impl ConvBn {
    fn new(c_in: usize, c_out: usize, stride: usize, seed: u64) -> R<Self> {
        let std = (2.0 / (9 * c_in) as f32).sqrt() * 1.7; // uniform(-a, a) with kaiming variance
        Ok(Self {
            w: Var::from_tensor(&rand_t(&[c_out, c_in, 3, 3], seed, std)?)?,
            gamma: Var::ones(c_out, DType::F32, &Device::Cpu)?,
            beta: Var::zeros(c_out, DType::F32, &Device::Cpu)?,
            running_mean: Tensor::zeros(c_out, DType::F32, &Device::Cpu)?,
            running_var: Tensor::ones(c_out, DType::F32, &Device::Cpu)?,
            stride,
        })
    }

    /// conv → BN (train: batch stats and running-stat update; eval: running stats) → optional ReLU.
    fn forward(&mut self, x: &Tensor, fast: bool, train: bool, relu: bool) -> R<Tensor> {
        let h = if fast {
            lk::conv2d(x, &self.w, self.stride, 1, 1)?
        } else {
            x.conv2d(&self.w, 1, self.stride, 1, 1)?
        };
        if !train {
            if fast {
                return Ok(lk::batch_norm_eval(
                    &h,
                    &self.gamma,
                    &self.beta,
                    &self.running_mean,
                    &self.running_var,
                    1e-5,
                    relu,
                )?);
            }
            let c = (1, h.dim(1)?, 1, 1);
            let scale = (self.gamma.as_tensor() / (&self.running_var + 1e-5)?.sqrt()?)?;
            let shift = (self.beta.as_tensor() - (&self.running_mean * &scale)?)?;
            let y = h
                .broadcast_mul(&scale.reshape(c)?)?
                .broadcast_add(&shift.reshape(c)?)?;
            return Ok(if relu { y.relu()? } else { y });
        }
        let (y, m, v) = if fast {
            lk::batch_norm_train(&h, &self.gamma, &self.beta, 1e-5, relu)?
        } else {
            stock_bn(&h, &self.gamma, &self.beta, relu)?
        };
        let count = h.dim(0)? * h.dim(2)? * h.dim(3)?;
        let (rm, rv) =
            lk::update_running_stats(&self.running_mean, &self.running_var, &m, &v, count, 0.1)?;
        self.running_mean = rm;
        self.running_var = rv;
        Ok(y)
    }

    fn vars(&self) -> [&Var; 3] {
        [&self.w, &self.gamma, &self.beta]
    }
}

/// CIFAR ResNet-32 (He et al. 2016): 3 stages × 5 BasicBlocks, widths 16/32/64, option-A
/// shortcut (`x[:, :, ::2, ::2]` + zero channels), global average pool, FC 64 → 100.
struct ResNet32 {
    stem: ConvBn,
    blocks: Vec<(ConvBn, ConvBn)>,
    fc_w: Var,
    fc_b: Var,
}

impl ResNet32 {
    fn new() -> R<Self> {
        let stem = ConvBn::new(3, 16, 1, 1)?;
        let mut blocks = Vec::new();
        let mut c_in = 16;
        for (si, planes) in [16, 32, 64].into_iter().enumerate() {
            for bi in 0..5 {
                let stride = if si > 0 && bi == 0 { 2 } else { 1 };
                let seed = 100 + (si * 10 + bi) as u64 * 2;
                blocks.push((
                    ConvBn::new(c_in, planes, stride, seed)?,
                    ConvBn::new(planes, planes, 1, seed + 1)?,
                ));
                c_in = planes;
            }
        }
        let fc_w = Var::from_tensor(&rand_t(&[100, 64], 999, 0.125)?)?;
        let fc_b = Var::zeros(100, DType::F32, &Device::Cpu)?;
        Ok(Self {
            stem,
            blocks,
            fc_w,
            fc_b,
        })
    }

    fn forward(&mut self, x: &Tensor, fast: bool, train: bool) -> R<Tensor> {
        let mut h = self.stem.forward(x, fast, train, true)?;
        for (c1, c2) in self.blocks.iter_mut() {
            let o = c1.forward(&h, fast, train, true)?;
            let o = c2.forward(&o, fast, train, false)?;
            let short = if c1.stride != 1 || h.dim(1)? != o.dim(1)? {
                let hw = h.dim(2)?;
                let idx = Tensor::arange_step(0u32, hw as u32, 2, &Device::Cpu)?;
                let sub = h.index_select(&idx, 2)?.index_select(&idx, 3)?;
                let pad = (o.dim(1)? - h.dim(1)?) / 2;
                sub.pad_with_zeros(1, pad, pad)?
            } else {
                h.clone()
            };
            h = if fast {
                lk::add_relu(&o, &short)?
            } else {
                (o + short)?.relu()?
            };
        }
        let feat = h.mean(D::Minus1)?.mean(D::Minus1)?;
        Ok(feat.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)?)
    }

    fn vars(&self) -> Vec<&Var> {
        let mut v: Vec<&Var> = self.stem.vars().to_vec();
        for (a, b) in &self.blocks {
            v.extend(a.vars());
            v.extend(b.vars());
        }
        v.push(&self.fc_w);
        v.push(&self.fc_b);
        v
    }
}

fn cross_entropy(logits: &Tensor, labels: &Tensor) -> R<Tensor> {
    let logp = logits.broadcast_sub(&logits.log_sum_exp(1)?.unsqueeze(1)?)?;
    Ok(logp.gather(&labels.unsqueeze(1)?, 1)?.mean_all()?.neg()?)
}

/// One step; returns (fwd s, bwd s, opt s, loss).
fn train_step(net: &mut ResNet32, x: &Tensor, y: &Tensor, fast: bool) -> R<(f64, f64, f64, f32)> {
    let t = Instant::now();
    let loss = cross_entropy(&net.forward(x, fast, true)?, y)?;
    let tf = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let grads = loss.backward()?;
    let tb = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for v in net.vars() {
        if let Some(g) = grads.get(v) {
            v.set(&(v.as_tensor() - (g * 0.1)?)?)?;
        }
    }
    let to = t.elapsed().as_secs_f64();
    Ok((tf, tb, to, loss.to_scalar()?))
}

fn bench_train() -> R<()> {
    let steps = env_usize("LT_BENCH_STEPS", 5);
    let stock_steps = env_usize("LT_BENCH_STOCK_STEPS", 3);
    println!(
        "\n== ResNet-32 (option A, 100 classes), batch {BATCH} 3x32x32, CE + plain SGD (lr 0.1)"
    );
    println!("   1 warm-up step, then median of timed steps; peak RSS = VmHWM, reset per phase");
    let x = rand_t(&[BATCH, 3, 32, 32], 7, 1.0)?;
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| (i * 37) % 100).collect();
    let y = Tensor::new(labels.as_slice(), &Device::Cpu)?;
    println!(
        "{:<6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10}",
        "ops",
        "steps",
        "fwd s",
        "bwd s",
        "opt s",
        "step s",
        "img/s",
        "peak MiB",
        "eval img/s",
        "eval MiB"
    );
    let mut results = Vec::new();
    for (fast, n) in [(true, steps), (false, stock_steps)] {
        if n == 0 {
            continue;
        }
        let mut net = ResNet32::new()?;
        let reset = reset_peak_rss();
        let mut rows = Vec::new();
        let mut losses = Vec::new();
        for i in 0..=n {
            let r = train_step(&mut net, &x, &y, fast)?;
            losses.push(r.3);
            if i > 0 {
                rows.push(r);
            }
        }
        let peak = if reset { peak_rss_mib() } else { f64::NAN };
        let med = |f: fn(&(f64, f64, f64, f32)) -> f64| median(rows.iter().map(f).collect());
        let step = med(|r| r.0 + r.1 + r.2);
        reset_peak_rss();
        let mut ev = Vec::new();
        for _ in 0..n.max(3) {
            let (t, out) = time(|| net.forward(&x, fast, false));
            out?;
            ev.push(t);
        }
        let eval_peak = if reset { peak_rss_mib() } else { f64::NAN };
        let eval = BATCH as f64 / median(ev);
        let name = if fast { "ours" } else { "stock" };
        println!(
            "{:<6} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.1} {:>10.0} {:>10.1} {:>10.0}",
            name,
            n,
            med(|r| r.0),
            med(|r| r.1),
            med(|r| r.2),
            step,
            BATCH as f64 / step,
            peak,
            eval,
            eval_peak
        );
        println!("       losses: {losses:.4?}");
        results.push((step, eval));
    }
    if let [ours, stock] = results[..] {
        println!(
            "speedup ours/stock: train {:.1}x, eval {:.1}x",
            stock.0 / ours.0,
            ours.1 / stock.1
        );
    }
    println!("targets: >= 170 img/s train, >= 600 img/s eval, peak RSS <= 1331 MiB (1.3 GiB)");
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let asked = |s: &str| args.iter().any(|a| a == s);
    let reps = env_usize("LT_BENCH_REPS", 5);
    // LT_BENCH_MALLOC=default keeps glibc's defaults, to measure what the tuning gives.
    let tuned =
        std::env::var("LT_BENCH_MALLOC").as_deref() != Ok("default") && lk::tune_allocator();
    println!("allocator tuned (longtail_kernels::tune_allocator): {tuned}");
    println!(
        "longtail-kernels benchmark: {} rayon threads, {} CPUs online",
        rayon::current_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let peak = if want("gemm") || want("layers") || asked("layers-imagenet") {
        bench_gemm(reps)
    } else {
        f64::NAN
    };
    if want("layers") {
        bench_layers(peak, reps, &LAYERS, BATCH)?;
    }
    if asked("layers-imagenet") {
        bench_layers(peak, reps, &IMAGENET_LAYERS, 16)?;
    }
    if want("bn") {
        bench_bn(reps)?;
    }
    if want("ops") {
        bench_ops(reps)?;
    }
    if want("train") {
        bench_train()?;
    }
    Ok(())
}
