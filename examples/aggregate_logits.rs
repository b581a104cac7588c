//! Test-time self-supervised aggregation (SADE) on your own ensemble's logits.
//!
//! ```text
//! cargo run --example aggregate_logits -- FILE.safetensors [--preset NAME]
//! cargo run --example aggregate_logits            # writes and uses a synthetic demo file
//! ```
//!
//! FILE holds `view_a` and `view_b`, the per-expert logits `[E, N, C]` (f32 or f64) of two
//! independent strong augmentations of the same N unlabeled test images, and optionally `plain`
//! (`[E, N, C]`, the clean test-transform logits, used for prediction; `view_a` otherwise) and
//! `labels` (`[N]`, any integer or float dtype). From PyTorch:
//! `safetensors.torch.save_file({"view_a": a.permute(1, 0, 2).contiguous(), ...}, "f.safetensors")`
//! if your model returns `[N, E, C]`.
//!
//! It prints the learned weights and the per-epoch trace, and with labels the top-1 accuracy of
//! the mean of logits (the usual ensemble) against the aggregated logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use longtail_aggregate::{mean_logits, predictions, AggregatorConfig, TestTimeAggregator, PRESETS};

fn main() -> ExitCode {
    match cli() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, as the `longtail` binary does: `{:#}` joins the context chain.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn cli() -> Result<()> {
    let mut file = None;
    let mut preset = "aggregate.cifar100-lt".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--preset" => preset = args.next().context("--preset needs a name")?,
            "-h" | "--help" => {
                println!("usage: aggregate_logits [FILE.safetensors] [--preset NAME]\npresets:");
                for p in PRESETS {
                    println!("  {:28} {}", p.name, p.summary);
                }
                return Ok(());
            }
            _ if arg.starts_with('-') => bail!("unknown option {arg:?} (try --help)"),
            _ => file = Some(PathBuf::from(arg)),
        }
    }
    let config = AggregatorConfig::preset(&preset)?;
    let path = match file {
        Some(p) => p,
        None => {
            let dir = std::env::temp_dir().join("longtail-aggregate-demo");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("demo.safetensors");
            write_demo(&path)?;
            println!(
                "no file given: wrote a synthetic demo to {}",
                path.display()
            );
            println!(
                "  (3 experts biased toward head / no / tail classes, 10 classes, a forward-LT test set)\n"
            );
            path
        }
    };
    run(&path, &preset, config)
}

fn run(path: &Path, preset: &str, config: AggregatorConfig) -> Result<()> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let get = |name: &str| {
        t.get(name).with_context(|| {
            let mut keys: Vec<_> = t.keys().collect();
            keys.sort();
            format!("{} has no tensor {name:?} (found {keys:?})", path.display())
        })
    };
    let (view_a, view_b) = (get("view_a")?, get("view_b")?);
    let plain = t.get("plain").unwrap_or(view_a);
    let dims = view_a.dims().to_vec();
    println!(
        "{}: view_a {:?}, view_b {:?}, plain {}",
        path.display(),
        dims,
        view_b.dims(),
        if t.contains_key("plain") {
            format!("{:?}", plain.dims())
        } else {
            "absent (using view_a)".into()
        }
    );

    println!(
        "preset {preset}: lr {}, wd {}, batch {}, up to {} epochs, entropy {}",
        config.sgd.lr,
        config.sgd.weight_decay,
        config.batch_size,
        config.max_epochs,
        config.entropy_coef
    );
    let fit = TestTimeAggregator::new(config)?.fit(view_a, view_b)?;
    for e in &fit.trace {
        println!(
            "epoch {}: {} steps, loss {:.5}, cos {:.5}, weights {:?}{}",
            e.epoch,
            e.steps,
            e.mean_loss,
            e.mean_cosine,
            e.rounded_weights,
            if e.stopped { " → early stop" } else { "" }
        );
    }
    let shown: Vec<String> = fit.weights.iter().map(|w| format!("{w:.4}")).collect();
    println!("learned weights: [{}]", shown.join(", "));

    if let Some(labels) = t.get("labels") {
        let labels = labels_of(labels, dims[1], dims[2])?;
        let acc = |logits: &Tensor| -> Result<f64> {
            let p = predictions(logits)?;
            Ok(p.iter().zip(&labels).filter(|(p, y)| p == y).count() as f64 / labels.len() as f64)
        };
        let mean = acc(&mean_logits(plain)?)?;
        let agg = acc(&fit.predict(plain)?)?;
        println!("top-1 on {} labelled samples:", labels.len());
        for e in 0..dims[0] {
            println!(
                "  expert {e}:          {:.2}%",
                100.0 * acc(&plain.get(e)?)?
            );
        }
        println!("  mean of logits:    {:.2}%", 100.0 * mean);
        println!("  aggregated (SADE): {:.2}%", 100.0 * agg);
    }
    Ok(())
}

fn labels_of(labels: &Tensor, n: usize, classes: usize) -> Result<Vec<u32>> {
    if labels.dims() != [n] {
        bail!("labels have shape {:?}, expected [{n}]", labels.dims());
    }
    let values = labels.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    values
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if y.fract() == 0.0 && y >= 0.0 && (y as usize) < classes {
                Ok(y as u32)
            } else {
                bail!("label {i} is {y}, not a class index in 0..{classes}")
            }
        })
        .collect()
}

/// Synthetic demo: a forward-long-tailed test set (class k drawn ∝ 10^(−k/9)) scored by three
/// experts that share a noisy per-image evidence and differ in their class bias, as SADE's
/// forward (head-biased), uniform and backward (tail-biased) experts do. Each augmented view adds
/// independent noise. Nothing here is real data; it only shows the mechanics.
fn write_demo(path: &Path) -> Result<()> {
    const E: usize = 3;
    const N: usize = 2048;
    const C: usize = 10;
    let mut rng = Demo(0x5ADE);
    let prior: Vec<f64> = (0..C)
        .map(|k| 10f64.powf(-(k as f64) / (C - 1) as f64))
        .collect();
    let total: f64 = prior.iter().sum();
    // Training prior of a ρ = 100 long-tailed set; expert biases ±0.5·(log π_train − mean).
    let log_train: Vec<f64> = (0..C)
        .map(|k| -(k as f64) / (C - 1) as f64 * 100f64.ln())
        .collect();
    let mean_log = log_train.iter().sum::<f64>() / C as f64;
    let bias = |e: usize, c: usize| (1.0 - e as f64) * 0.5 * (log_train[c] - mean_log);

    let mut labels = Vec::with_capacity(N);
    let (mut a, mut b, mut plain) = (
        vec![0f32; E * N * C],
        vec![0f32; E * N * C],
        vec![0f32; E * N * C],
    );
    for i in 0..N {
        let mut u = rng.uniform() * total;
        let y = prior
            .iter()
            .position(|p| {
                u -= p;
                u < 0.0
            })
            .unwrap_or(C - 1);
        labels.push(y as f32);
        let evidence: Vec<f64> = (0..C)
            .map(|c| if c == y { 2.5 } else { 0.0 } + 1.2 * rng.normal())
            .collect();
        for e in 0..E {
            for (c, ev) in evidence.iter().enumerate() {
                let clean = ev + bias(e, c) + 0.5 * rng.normal();
                let at = (e * N + i) * C + c;
                plain[at] = clean as f32;
                a[at] = (clean + 1.0 * rng.normal()) as f32;
                b[at] = (clean + 1.0 * rng.normal()) as f32;
            }
        }
    }
    let dev = Device::Cpu;
    let tensors: HashMap<String, Tensor> = [
        ("view_a", Tensor::from_vec(a, (E, N, C), &dev)?),
        ("view_b", Tensor::from_vec(b, (E, N, C), &dev)?),
        ("plain", Tensor::from_vec(plain, (E, N, C), &dev)?),
        ("labels", Tensor::from_vec(labels, N, &dev)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&tensors, path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// SplitMix64 with a Box–Muller normal, enough for a reproducible demo.
struct Demo(u64);

impl Demo {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
