//! `longtail bench train`: training-step throughput on this CPU, our kernels vs candle's stock
//! ops, with GFLOP/s, the fraction of the machine's measured GEMM peak and peak memory.

use anyhow::bail;
use longtail::backbone::Kernels;
use longtail::registry;
use longtail::train::bench::{measure, models, Measurement, Settings};

/// What to benchmark.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum What {
    /// One training step (forward + loss + backward + SGD) and the eval forward.
    Train,
}

/// Arguments of `longtail bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The benchmark to run.
    #[arg(value_enum)]
    pub what: What,
    /// Models, comma-separated: resnet32, ride3.
    #[arg(long, default_value = "resnet32,ride3", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Timed steps with our kernels, after one warm-up step (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Timed steps with candle's stock ops (about 8x slower; 0 skips them and the ratio).
    #[arg(long, default_value_t = 2)]
    pub stock_steps: usize,
    /// Timed eval forwards per model and kernel choice.
    #[arg(long, default_value_t = 5)]
    pub eval_reps: usize,
}

/// Run `longtail bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let What::Train = args.what;
    if args.batch < 2 || args.steps == 0 {
        bail!("--batch must be at least 2 and --steps at least 1");
    }
    let known = models();
    let mut chosen = vec![];
    for name in &args.models {
        match known.iter().find(|m| m.name == name.trim()) {
            Some(m) => chosen.push(m.clone()),
            None => bail!(
                "unknown model `{name}` for --models (known: {})",
                known.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    let settings = Settings {
        batch: args.batch,
        steps: args.steps,
        eval_reps: args.eval_reps,
    };
    let threads = rayon::current_num_threads();
    // 15 products of ~10 ms: a single one swings by ±15 % on a shared VM.
    let peak = longtail_kernels::gemm_peak_gflops(1024, 15);
    println!(
        "longtail bench train: {threads} threads, batch {} of 3x32x32, 100 classes; median of {} steps (ours) / {} (stock) after 1 warm-up",
        args.batch, args.steps, args.stock_steps
    );
    println!(
        "allocator: {}",
        if longtail_kernels::allocator_tuned() {
            "glibc tuned for training (longtail_kernels::tune_allocator)"
        } else {
            "defaults (LONGTAIL_DEFAULT_MALLOC is set, or not glibc)"
        }
    );
    println!("GEMM 1024^3 f32 (gemm crate, {threads} threads): {peak:.1} GFLOP/s = the peak below");
    println!(
        "{:<9} {:<6} {:>9} {:>8} {:>8} {:>11} {:>9} {:>6} {:>10} {:>13}",
        "model",
        "ops",
        "MMAC/img",
        "fwd s",
        "step s",
        "train img/s",
        "GFLOP/s",
        "%peak",
        "eval img/s",
        "train RSS MiB"
    );
    for model in &chosen {
        let mut rows: Vec<Measurement> = vec![];
        for (kernels, steps) in [
            (Kernels::Fast, args.steps),
            (Kernels::Stock, args.stock_steps),
        ] {
            if steps == 0 {
                continue;
            }
            let cfg = registry::preset(model.preset)?;
            let method = registry::method(&cfg.method.name)?;
            let m = measure(
                model,
                cfg,
                method,
                kernels,
                &Settings {
                    steps,
                    ..settings.clone()
                },
            )?;
            println!(
                "{:<9} {:<6} {:>9.1} {:>8.3} {:>8.3} {:>11.1} {:>9.1} {:>5.0}% {:>10.1} {:>13}",
                m.model,
                if kernels == Kernels::Fast {
                    "ours"
                } else {
                    "stock"
                },
                m.macs as f64 / 1e6,
                m.forward_s,
                m.step_s,
                m.train_img_s,
                m.train_gflops(),
                m.train_gflops() / peak * 100.0,
                m.eval_img_s,
                m.train_peak_mib.map_or("n/a".into(), |v| format!("{v:.0}")),
            );
            rows.push(m);
        }
        if let [ours, stock] = &rows[..] {
            let n = ours.losses.len().min(stock.losses.len());
            let drift = ours.losses[..n]
                .iter()
                .zip(&stock.losses[..n])
                .map(|(a, b)| ((a - b) / b.abs().max(1e-6)).abs())
                .fold(0f32, f32::max);
            println!(
                "{:<9} ours/stock: train {:.1}x, eval {:.1}x; losses {:.4?} vs {:.4?} (max rel. diff {drift:.1e})",
                model.name,
                stock.step_s / ours.step_s,
                ours.eval_img_s / stock.eval_img_s,
                &ours.losses[..n],
                &stock.losses[..n],
            );
        }
    }
    Ok(())
}
