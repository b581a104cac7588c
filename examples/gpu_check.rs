//! GPU check (issue #9): official-fixture parity and a training-throughput benchmark on one
//! device, so that a CUDA build can be validated on the first machine with a GPU.
//!
//! ```text
//! cargo run --release --features cuda --example gpu_check -- --device cuda
//! cargo run --release --example gpu_check -- --device cpu --quick   # the same checks on CPU
//! ```
//!
//! Parity (`fixtures/official`, found by walking up from the crate or via `--fixtures`):
//! - the four official CIFAR models' eval forward (RIDE-3, RIDE baseline, SADE-3, TLC-3):
//!   per-expert logits and mean logits within `--logit-tol` (1e-3) of the official float32
//!   outputs, computed with TF32 off (candle's default; `--tf32` turns it on to measure it);
//! - the RIDE, SADE and TLC losses and their gradients at epochs 1 and 170, within the same
//!   tolerances as the CPU parity tests (loss 1e-4 + 1e-6·|ref|, gradient 1e-5 + 1e-5·|ref|
//!   for TLC, 1e-6 + 1e-5·|ref| for RIDE/SADE, relaxed by `--grad-slack`, 10× by default, since
//!   GPU reductions sum in another order).
//!
//! Benchmark: one full training step (train-mode forward, the method's loss, backward, Nesterov
//! SGD with weight decay, and reading the loss back: the trainer's one host round trip) on random
//! data, median over the timed steps, for ResNet-32 CE and RIDE-3 (CIFAR-100, 32², batch 128)
//! and RIDE-3 on ResNeXt-50 (ImageNet-LT, 224², batch 64). Results go to stdout and, with
//! `--json FILE`, one JSON object per line (read by `scripts/gpu_bench_torch.py` for the PyTorch
//! ratio). Exit status 1 when any parity check fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use longtail::backbone::{load_weights_file, trainable_vars, BackboneConfig, MultiExpert};
use longtail::registry::{self, preset};
use longtail::ride::RideLoss;
use longtail::sade::{SadeLoss, SadeLossConfig};
use longtail::tlc::{TlcLoss, TlcLossConfig};
use longtail::train::device::{describe, device};
use longtail::train::{Sgd, SgdConfig};

#[derive(Parser, Debug)]
#[command(about = "Official-fixture parity and training throughput on one device")]
struct Args {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Directory of the official fixtures (default: fixtures/official above the crate).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Largest allowed |logit − official logit|.
    #[arg(long, default_value_t = 1e-3)]
    logit_tol: f32,
    /// Factor on the CPU tests' gradient tolerances.
    #[arg(long, default_value_t = 10.0)]
    grad_slack: f32,
    /// Allow TF32 in f32 matrix products (cuBLAS); off by default, as parity needs.
    #[arg(long)]
    tf32: bool,
    /// Skip the parity checks.
    #[arg(long)]
    skip_parity: bool,
    /// Skip the benchmark.
    #[arg(long)]
    skip_bench: bool,
    /// Small benchmark (batch 8, 2 timed steps, 64² for ResNeXt-50): for CPU smoke runs.
    #[arg(long)]
    quick: bool,
    /// Timed steps per model (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Only these benchmarks (comma-separated: resnet32, ride3, resnext50).
    #[arg(long)]
    only: Option<String>,
    /// Append one JSON object per benchmark to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = device(&args.device)?;
    candle_core::cuda::set_gemm_reduced_precision_f32(args.tf32);
    println!(
        "gpu_check: device {} (cuda feature: {}), TF32 {}",
        describe(&dev),
        longtail::train::device::CUDA_BUILT,
        if args.tf32 { "on" } else { "off" }
    );
    let mut failures = 0;
    if !args.skip_parity {
        let dir = match &args.fixtures {
            Some(d) => d.clone(),
            None => fixtures_dir()?,
        };
        failures += parity(&args, &dev, &dir)?;
    }
    if !args.skip_bench {
        bench(&args, &dev)?;
    }
    if failures > 0 {
        bail!("{failures} parity check(s) failed");
    }
    Ok(())
}

/// The repository's `fixtures/official` (the official parity fixtures).
fn fixtures_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/official");
    if !dir.is_dir() {
        bail!("{} not found: pass --fixtures DIR", dir.display());
    }
    Ok(dir)
}

fn load(dir: &Path, name: &str, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(name);
    candle_core::safetensors::load(&path, dev)
        .with_context(|| format!("cannot read fixture {}", path.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        bail!("shape {:?} vs {:?}", a.dims(), b.dims());
    }
    let b = b.to_device(a.device())?.to_dtype(a.dtype())?;
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?)
}

/// Largest `|got − want| − (atol + rtol·|want|)` (≤ 0 means within tolerance).
fn excess(got: &Tensor, want: &Tensor, atol: f32, rtol: f32) -> Result<f32> {
    let g = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let w = want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if g.len() != w.len() {
        bail!("{} values vs {}", g.len(), w.len());
    }
    Ok(g.iter()
        .zip(&w)
        .map(|(g, w)| (g - w).abs() - (atol + rtol * w.abs()))
        .fold(f32::NEG_INFINITY, f32::max))
}

fn report(name: &str, ok: bool, detail: String) -> usize {
    println!(
        "  {:<44} {}  {detail}",
        name,
        if ok { "ok  " } else { "FAIL" }
    );
    usize::from(!ok)
}

fn counts_of(fx: &HashMap<String, Tensor>) -> Result<Vec<usize>> {
    Ok(fx["cls_num_list"]
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|n| n as usize)
        .collect())
}

/// `[E, B, C]` fixture logits as a `[B, E, C]` variable on `dev`.
fn logits_var(fx: &HashMap<String, Tensor>, dev: &Device) -> Result<Var> {
    Ok(Var::from_tensor(
        &fx["expert_logits"]
            .transpose(0, 1)?
            .contiguous()?
            .to_device(dev)?,
    )?)
}

fn parity(args: &Args, dev: &Device, dir: &Path) -> Result<usize> {
    println!("parity against {}", dir.display());
    let mut fails = 0;
    let models = [
        ("ride_cifar_e3_c10", BackboneConfig::ride_cifar(3, 10)),
        (
            "ride_baseline_cifar_e1_c10",
            BackboneConfig::baseline_cifar(10),
        ),
        ("sade_cifar_e3_c10", BackboneConfig::ride_cifar(3, 10)),
        ("tlc_cifar_e3_c10", BackboneConfig::tlc_cifar(3, 10)),
    ];
    for (stem, cfg) in models {
        let varmap = VarMap::new();
        let net = MultiExpert::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
        load_weights_file(&varmap, dir.join(format!("{stem}.safetensors")))?;
        let io = load(dir, &format!("{stem}.io.safetensors"), dev)?;
        let out = net.forward_t(&io["input"], false)?;
        let de = max_abs_diff(&out.expert_logits, &io["expert_logits"])?;
        let dl = max_abs_diff(&out.logits, &io["logits"])?;
        let ok = de <= args.logit_tol && dl <= args.logit_tol;
        fails += report(
            &format!("{stem} forward"),
            ok,
            format!("max |Δ expert logits| {de:.2e}, |Δ logits| {dl:.2e}"),
        );
    }
    let slack = args.grad_slack;

    let fx = load(dir, "ride_loss_c10.safetensors", dev)?;
    let logits = logits_var(&fx, dev)?;
    let cfg = longtail::ride::RideLossConfig {
        diversity_factor: -0.45,
        reweight_epoch: Some(160),
        ..Default::default()
    };
    let mut ride = RideLoss::new(&cfg, &counts_of(&fx)?, dev)?;
    for epoch in [1usize, 170] {
        ride.begin_epoch(epoch);
        let v = ride.forward(logits.as_tensor(), &fx["targets"])?;
        fails += check_loss(
            "ride",
            epoch,
            &v,
            &logits,
            &fx,
            (1e-6 * slack, 1e-5 * slack),
        )?;
    }

    let fx = load(dir, "sade_loss_c10.safetensors", dev)?;
    let logits = logits_var(&fx, dev)?;
    let sade = SadeLoss::new(&SadeLossConfig { tau: 2.0 }, &counts_of(&fx)?, dev)?;
    for epoch in [1usize, 170] {
        let v = sade.forward(logits.as_tensor(), &fx["targets"])?;
        fails += check_loss(
            "sade",
            epoch,
            &v,
            &logits,
            &fx,
            (1e-6 * slack, 1e-5 * slack),
        )?;
    }

    let fx = load(dir, "tlc_loss_c10.safetensors", dev)?;
    let logits = logits_var(&fx, dev)?;
    for epoch in [1usize, 170] {
        let mut tlc = TlcLoss::new(TlcLossConfig::cifar().official(), &counts_of(&fx)?)?;
        tlc.begin_epoch(epoch)?;
        let out = tlc.forward(logits.as_tensor(), &fx["targets"])?;
        fails += check_loss(
            "tlc",
            epoch,
            &out.loss,
            &logits,
            &fx,
            (1e-5 * slack, 1e-5 * slack),
        )?;
    }
    println!(
        "parity: {} failed ({})",
        fails,
        if fails == 0 { "all ok" } else { "see FAIL" }
    );
    Ok(fails)
}

/// One loss fixture check: `loss` (computed from `logits`) against `loss_epoch{epoch}`, and its
/// gradient (`[B, E, C]` → the fixture's `[E, B, C]`) against `grad_epoch{epoch}` within
/// `(atol, rtol)`. Prints one line; returns 1 on failure.
fn check_loss(
    method: &str,
    epoch: usize,
    loss: &Tensor,
    logits: &Var,
    fx: &HashMap<String, Tensor>,
    (atol, rtol): (f32, f32),
) -> Result<usize> {
    let got = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let want = fx[&format!("loss_epoch{epoch}")]
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?[0];
    let grads = loss.backward()?;
    let grad = grads
        .get(logits.as_tensor())
        .context("no gradient")?
        .transpose(0, 1)?;
    let ex = excess(&grad, &fx[&format!("grad_epoch{epoch}")], atol, rtol)?;
    Ok(report(
        &format!("{method} loss epoch {epoch}"),
        (got - want).abs() <= 1e-4 + 1e-6 * want.abs() && ex <= 0.0,
        format!("loss {got:.6} vs {want:.6}, grad excess {ex:.1e}"),
    ))
}

/// Long-tailed class counts `n_max · ρ^(−i/(C−1))` (the LDAM profile).
fn lt_counts(classes: usize, n_max: f64, imbalance: f64) -> Vec<usize> {
    (0..classes)
        .map(|i| (n_max * (1.0 / imbalance).powf(i as f64 / (classes - 1) as f64)) as usize)
        .map(|n| n.max(1))
        .collect()
}

struct BenchCase {
    name: &'static str,
    preset: &'static str,
    experts: usize,
    batch: usize,
    size: usize,
    counts: Vec<usize>,
}

fn bench(args: &Args, dev: &Device) -> Result<()> {
    let quick = args.quick;
    let cases = [
        BenchCase {
            name: "resnet32",
            preset: "ce.cifar100-lt",
            experts: 1,
            batch: if quick { 8 } else { 128 },
            size: 32,
            counts: lt_counts(100, 500.0, 100.0),
        },
        BenchCase {
            name: "ride3",
            preset: "ride.cifar100-lt",
            experts: 3,
            batch: if quick { 8 } else { 128 },
            size: 32,
            counts: lt_counts(100, 500.0, 100.0),
        },
        BenchCase {
            name: "resnext50",
            preset: "ride.imagenet-lt",
            experts: 3,
            batch: if quick { 2 } else { 64 },
            size: if quick { 64 } else { 224 },
            counts: lt_counts(1000, 1280.0, 256.0),
        },
    ];
    let steps = if quick { 2 } else { args.steps.max(1) };
    println!(
        "benchmark: one training step (fwd + loss + bwd + SGD + loss read), median of {steps}"
    );
    println!(
        "  {:<10} {:<18} {:>6} {:>5} {:>10} {:>10}",
        "model", "preset", "batch", "size", "step ms", "img/s"
    );
    for case in cases {
        if let Some(only) = &args.only {
            if !only.split(',').any(|o| o.trim() == case.name) {
                continue;
            }
        }
        let mut cfg = preset(case.preset)?;
        cfg.model.num_experts = case.experts;
        cfg.model.num_classes = case.counts.len();
        let (varmap, model) = MultiExpert::seeded(&cfg.model, 1, dev)?;
        let mut objective = registry::method(&cfg.method.name)?.build(&cfg, &case.counts, dev)?;
        objective.begin_epoch(1)?;
        let mut opt = Sgd::new(trainable_vars(&varmap), SgdConfig::default())?;
        opt.set_lr(0.1);
        let x = Tensor::randn(0f32, 1.0, (case.batch, 3, case.size, case.size), dev)?;
        let y: Vec<u32> = (0..case.batch)
            .map(|i| ((i * 7919) % case.counts.len()) as u32)
            .collect();
        let y = Tensor::from_vec(y, case.batch, dev)?;
        let batch = longtail::data::Batch {
            images: x.clone(),
            labels: y,
            indices: (0..case.batch).collect(),
        };
        let mut times = vec![];
        for step in 0..steps + 2 {
            dev.synchronize()?;
            let t0 = Instant::now();
            let out = model.forward_t(&x, true)?;
            let loss = objective.loss(&out, &batch)?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            dev.synchronize()?;
            if !value.is_finite() {
                bail!("{}: non-finite loss {value} at step {step}", case.name);
            }
            if step >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let ips = case.batch as f64 / median;
        println!(
            "  {:<10} {:<18} {:>6} {:>5} {:>10.2} {:>10.1}",
            case.name,
            case.preset,
            case.batch,
            case.size,
            median * 1e3,
            ips
        );
        if let Some(path) = &args.json {
            use std::io::Write;
            let mut line = longtail::train::bench::torch_model_fields(&cfg, case.experts);
            if let serde_json::Value::Object(run) = serde_json::json!({
                "framework": "candle",
                "device": describe(dev),
                "model": case.name,
                "preset": case.preset,
                "classes": case.counts.len(),
                "batch": case.batch,
                "size": case.size,
                "steps": steps,
                "step_ms": median * 1e3,
                "img_per_s": ips,
                "tf32": args.tf32,
            }) {
                line.extend(run);
            }
            let line = serde_json::Value::Object(line);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
