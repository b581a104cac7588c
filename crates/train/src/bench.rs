//! How fast one training step runs on this machine, with our CPU kernels and with candle's
//! stock ops, in one process (`longtail bench train`).
//!
//! For each model (ResNet-32 and RIDE-3 on 32×32×3 inputs, 100 classes) it times the real
//! training step of the `train` command: the backbone's train-mode forward, the method's loss
//! (cross-entropy for ResNet-32, the RIDE loss for RIDE-3), `backward()`, Nesterov SGD with weight
//! decay, and the one host read of the loss. Then the eval forward. Ours and stock start from the
//! same seeded weights and inputs, so their loss sequences must agree (printed) and the
//! comparison is of speed alone.
//!
//! FLOPs: a forward pass costs `2 · MACs` (the model's own count, `MultiExpert::macs`) and a
//! training step the usual `3×` that (forward, input gradient, weight gradient), so
//! GFLOP/s = `6 · MACs · img/s`. The fraction of peak divides by a GEMM of `1024³` on all threads
//! measured in the same command ([`longtail_kernels::gemm_peak_gflops`]).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use longtail_backbone::{trainable_vars, Kernels, MultiExpert};

use crate::{MethodKind, RunConfig, Sgd, SgdConfig, TrainError};

type Result<T> = std::result::Result<T, TrainError>;

/// The network of `cfg` with `experts` experts as `scripts/torch_models.py` rebuilds it in
/// PyTorch: the fields shared by `bench train --torch`'s case and the GPU check's JSON lines.
pub fn torch_model_fields(
    cfg: &RunConfig,
    experts: usize,
) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(fields) = serde_json::json!({
        "arch": format!("{:?}", cfg.model.arch),
        "method": cfg.method.name.as_str(),
        "blocks": cfg.model.blocks(),
        "planes": cfg.model.planes(),
        "shared_stages": cfg.model.shared_stages(),
        "use_norm": cfg.model.use_norm,
        "scale": cfg.model.logit_scale(),
        "experts": experts,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    fields
}

/// One benchmarked model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Short name (`resnet32`, `ride3`).
    pub name: &'static str,
    /// The preset whose model and method are used.
    pub preset: &'static str,
    /// Experts of the model.
    pub experts: usize,
}

/// The models `longtail bench train` knows: plain ResNet-32 with cross-entropy (the usual
/// PyTorch reference point) and RIDE-3 with reduced experts and the RIDE loss.
pub fn models() -> Vec<Model> {
    vec![
        Model {
            name: "resnet32",
            preset: "ce.cifar100-lt",
            experts: 1,
        },
        Model {
            name: "ride3",
            preset: "ride.cifar100-lt",
            experts: 3,
        },
    ]
}

/// Settings of one benchmark run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Images per step.
    pub batch: usize,
    /// Timed training steps (after one warm-up step).
    pub steps: usize,
    /// Timed eval forwards per kernel choice.
    pub eval_reps: usize,
}

/// What one (model, kernels) pair measured.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The model's name.
    pub model: &'static str,
    /// Median seconds of one training step.
    pub step_s: f64,
    /// Median seconds of the forward part of a step.
    pub forward_s: f64,
    /// Training images per second (batch / median step).
    pub train_img_s: f64,
    /// Eval-forward images per second (batch / median forward).
    pub eval_img_s: f64,
    /// Forward multiply-adds per image.
    pub macs: u64,
    /// Peak resident memory while training, MiB (None where /proc is missing).
    pub train_peak_mib: Option<f64>,
    /// The losses of every step, warm-up included.
    pub losses: Vec<f32>,
}

impl Measurement {
    /// Training GFLOP/s: `6 · MACs · img/s` (see the module docs).
    pub fn train_gflops(&self) -> f64 {
        6.0 * self.macs as f64 * self.train_img_s / 1e9
    }
}

/// Class counts of a CIFAR-100-LT-shaped training set (n_max 500, imbalance 100): the RIDE
/// loss's margins and weights depend on them.
fn lt_counts(classes: usize) -> Vec<usize> {
    (0..classes)
        .map(|i| (500.0 * 0.01f64.powf(i as f64 / (classes - 1) as f64)) as usize)
        .map(|n| n.max(1))
        .collect()
}

/// A deterministic pseudo-random `[n]` tensor in (-1, 1) (candle's CPU RNG cannot be seeded).
fn det_uniform(n: usize, seed: u64, shape: &[usize]) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            // xorshift64*
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (r as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Resets the kernel's peak-RSS counter (VmHWM) to the current RSS; false where unsupported.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// VmHWM of this process in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Times `steps` training steps (after one warm-up) and the eval forward of `model` with
/// `kernels`, on the CPU. `cfg` is the config of `model.preset`, `method` its method.
pub fn measure(
    model: &Model,
    mut cfg: RunConfig,
    method: &dyn MethodKind,
    kernels: Kernels,
    settings: &Settings,
) -> Result<Measurement> {
    let dev = Device::Cpu;
    cfg.model.num_experts = model.experts;
    cfg.model.num_classes = 100;
    cfg.model.kernels = kernels;
    let counts = lt_counts(cfg.model.num_classes);
    let (varmap, net) = MultiExpert::seeded(&cfg.model, 1, &dev)?;
    let experts: Vec<usize> = (0..model.experts).collect();
    let macs = net.macs(32, 32, &experts)?.total();
    let mut objective = method.build(&cfg, &counts, &dev)?;
    objective.begin_epoch(1)?;
    let mut opt = Sgd::new(trainable_vars(&varmap), SgdConfig::default())?;
    opt.set_lr(0.1);
    let b = settings.batch;
    let x = det_uniform(b * 3 * 32 * 32, 7, &[b, 3, 32, 32])?;
    let y: Vec<u32> = (0..b as u32).map(|i| (i * 37) % 100).collect();
    let y = Tensor::from_vec(y, b, &dev)?;
    let batch = longtail_data::Batch {
        images: x.clone(),
        labels: y,
        indices: (0..b).collect(),
    };

    longtail_kernels::trim_allocator();
    let rss = reset_peak_rss();
    let (mut steps, mut forwards, mut losses) = (vec![], vec![], vec![]);
    for step in 0..=settings.steps {
        let t0 = Instant::now();
        let out = net.forward_t(&x, true)?;
        let loss = objective.loss(&out, &batch)?;
        let t_fwd = t0.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        opt.step(&grads)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let t = t0.elapsed().as_secs_f64();
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                epoch: 1,
                step,
                value,
            });
        }
        losses.push(value);
        if step > 0 {
            steps.push(t);
            forwards.push(t_fwd);
        }
    }
    let train_peak_mib = if rss { peak_rss_mib() } else { None };
    let mut evals = vec![];
    // As `evaluate` runs it (and PyTorch under `no_grad`): on detached weights, no graph kept.
    let frozen = net.detached()?;
    for _ in 0..settings.eval_reps.max(1) {
        let t0 = Instant::now();
        let out = frozen.forward_t(&x, false)?;
        out.logits
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        evals.push(t0.elapsed().as_secs_f64());
    }
    let step_s = median(steps);
    Ok(Measurement {
        model: model.name,
        step_s,
        forward_s: median(forwards),
        train_img_s: b as f64 / step_s,
        eval_img_s: b as f64 / median(evals),
        macs,
        train_peak_mib,
        losses,
    })
}
