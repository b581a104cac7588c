//! `longtail train`: resolve the config from a preset or file plus flags, then train.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use longtail::registry::{self, preset};
use longtail::train::device::device_announced;
use longtail::train::{train_run, FitSummary, Progress, RunConfig};

/// Arguments of `longtail train`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Method: ce, ride, sade or tlc. With --dataset it picks the preset `<method>.<dataset>`.
    #[arg(long, default_value = "ride")]
    pub method: String,
    /// A named preset (see `longtail presets`); overrides --method/--dataset's choice.
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML config file (as saved in every run's config.toml); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data set: fmnist-lt (bundled), cifar10-lt, cifar100-lt.
    #[arg(long, default_value = "fmnist-lt")]
    pub dataset: String,
    /// Directory of the data files (CIFAR binary batches).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Imbalance factor of the long-tailed training subset.
    #[arg(long)]
    pub imbalance: Option<f64>,
    /// Number of experts.
    #[arg(long)]
    pub experts: Option<usize>,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of weights, data order and augmentation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Hold out this fraction of each training class for validation (best-checkpoint selection).
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Run directory (default: runs/<preset>-seed<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// After training, also train the CE baseline of the same recipe and print both side by side.
    #[arg(long)]
    pub compare_ce: bool,
    /// Print no progress.
    #[arg(long)]
    pub quiet: bool,
    /// Compute device: cpu, cuda, cuda:N, or auto (CUDA when built with the `cuda` feature
    /// and a GPU answers, else CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Builds the run config from the arguments; reads no data.
pub fn resolve(args: &Args) -> Result<RunConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            RunConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => preset(
            args.preset
                .as_deref()
                .unwrap_or(&format!("{}.{}", args.method, args.dataset)),
        )?,
    };
    if let Some(d) = &args.data_dir {
        cfg.data.data_dir = Some(d.clone());
    }
    if let Some(v) = args.imbalance {
        cfg.data.imbalance = v;
    }
    if let Some(e) = args.experts {
        if cfg.method.name == "ce" && e != 1 {
            bail!("the CE baseline has one expert (got --experts {e})");
        }
        cfg.model.num_experts = e;
    }
    if let Some(v) = args.epochs {
        cfg.optim.epochs = v;
    }
    if let Some(v) = args.batch_size {
        cfg.optim.batch_size = v;
    }
    if let Some(v) = args.lr {
        cfg.optim.lr = v;
    }
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.val_fraction {
        cfg.data.val_fraction = Some(v);
    }
    registry::check(&cfg)?;
    Ok(cfg)
}

/// Run `longtail train`.
pub fn run(args: Args) -> Result<()> {
    let cfg = resolve(&args)?;
    let name = cfg
        .preset
        .clone()
        .unwrap_or_else(|| format!("{}.{}", cfg.method.name, cfg.data.dataset));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/{name}-seed{}", cfg.seed)));
    let progress = if args.quiet {
        Progress::Quiet
    } else {
        Progress::Auto
    };
    eprintln!(
        "training {name} ({} experts, {} epochs) into {}",
        cfg.model.num_experts,
        cfg.optim.epochs,
        out.display()
    );
    let device = device_announced(&args.device)?;
    let method = registry::method(&cfg.method.name)?;
    let t0 = Instant::now();
    let summary = train_run(&cfg, method, &out, args.resume, progress, &device)?;
    let wall = t0.elapsed().as_secs_f64();
    print_summary(&name, &summary, wall);
    if args.compare_ce && cfg.method.name != "ce" {
        let ce_name = format!(
            "ce.{}",
            name.split_once('.')
                .map_or(cfg.data.dataset.as_str(), |(_, d)| d)
        );
        // The same data, network family and optimisation with one plain expert.
        let mut ce = longtail::baselines::ce_baseline_of(&cfg);
        ce.preset = Some(ce_name.clone());
        let ce_out = out.with_file_name(format!(
            "{}-ce",
            out.file_name()
                .map_or("run".into(), |s| s.to_string_lossy())
        ));
        eprintln!(
            "training the CE baseline {ce_name} into {}",
            ce_out.display()
        );
        let t1 = Instant::now();
        let resume = ce_out.join(longtail::train::trainer::LAST).exists();
        let ce_summary = train_run(
            &ce,
            registry::method("ce")?,
            &ce_out,
            resume,
            progress,
            &device,
        )?;
        print_summary(&ce_name, &ce_summary, t1.elapsed().as_secs_f64());
        println!();
        println!(
            "{:<22} {:>8} {:>8} {:>8} {:>8}",
            "test accuracy (%)", "overall", "many", "medium", "few"
        );
        for (n, s) in [(name.as_str(), &summary), (ce_name.as_str(), &ce_summary)] {
            let r = &s.test.report;
            println!(
                "{:<22} {:>8} {:>8} {:>8} {:>8}",
                n,
                pct(Some(r.accuracy)),
                pct(r.many),
                pct(r.medium),
                pct(r.few)
            );
        }
    }
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

fn print_summary(name: &str, s: &FitSummary, wall: f64) {
    let r = &s.test.report;
    let ips: Vec<f64> = s.history.iter().map(|h| h.images_per_sec).collect();
    let mean_ips = if ips.is_empty() {
        0.0
    } else {
        ips.iter().sum::<f64>() / ips.len() as f64
    };
    println!(
        "{name}: test {}% (many {} / medium {} / few {}) after {} epochs; {:.0} train img/s; {:.0}s",
        pct(Some(r.accuracy)),
        pct(r.many),
        pct(r.medium),
        pct(r.few),
        s.history.last().map_or(0, |h| h.epoch),
        mean_ips,
        wall
    );
    if s.test.experts.len() > 1 {
        let each: Vec<String> = s
            .test
            .experts
            .iter()
            .map(|e| pct(Some(e.accuracy)))
            .collect();
        println!("  each expert alone: {}%", each.join("%, "));
    }
}
