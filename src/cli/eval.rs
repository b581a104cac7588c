//! `longtail eval`: accuracy of a trained checkpoint, overall, per group, per expert, per class.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;
use longtail::data::{shot_groups, ShotRule};
use longtail::registry::{self, Registry};
use longtail::train::{device::device_announced, evaluate, load_data, transforms, LoadedRun};

/// Arguments of `longtail eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A checkpoint file (`runs/NAME/last.safetensors`) or a run directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Evaluate on another data set than the one the run was trained on (same classes).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory of the data files (for a data set that reads files: not the bundled fmnist-lt,
    /// where it is an error).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Many/medium/few rule: ride (>100 / 20–100 / <20) or oltr (>=100 / <=20).
    #[arg(long, default_value = "ride")]
    pub rule: ShotRule,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Evaluate under test-time label shift: `all` (the eleven SADE distributions, forward 50 …
    /// uniform … backward 50), or one of them (`forward10`, `uniform`, `backward5`, …), each with
    /// plain averaging and with test-time self-supervised aggregation.
    #[arg(long, conflicts_with = "uncertainty")]
    pub test_dist: Option<String>,
    /// Report uncertainty metrics (failure AUROC, FPR@95, ECE, AURC, OOD AUROC) and early exit.
    #[arg(long)]
    pub uncertainty: bool,
    /// An out-of-distribution data set for OOD AUROC (only with --uncertainty), e.g. `fmnist`
    /// or a CIFAR directory via --ood-data-dir.
    #[arg(long)]
    pub ood_data: Option<String>,
    /// Directory of the OOD data files (only with --uncertainty and --ood-data).
    #[arg(long)]
    pub ood_data_dir: Option<PathBuf>,
    /// Write PNG plots into this directory (only with --test-dist or --uncertainty).
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// Compute device: cpu, cuda, cuda:N, or auto (CUDA when built with the `cuda` feature
    /// and a GPU answers, else CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// What every evaluation mode starts from: the loaded model, its method and the test data.
pub struct EvalContext {
    /// The checkpoint.
    pub loaded: LoadedRun,
    /// The run config, with --dataset/--data-dir applied.
    pub config: longtail::train::RunConfig,
    /// The data set's name.
    pub dataset: longtail::data::DatasetName,
    /// Train/val/test splits.
    pub splits: longtail::data::Splits,
    /// The method's objective (prediction rule).
    pub objective: Box<dyn longtail::train::Method>,
    /// Evaluation transform.
    pub eval_transform: longtail::data::Transform,
    /// Shot group of each class.
    pub shots: Vec<longtail::data::Shot>,
    /// Device.
    pub device: Device,
}

/// Run `longtail eval`.
pub fn run(args: Args) -> Result<()> {
    if !args.uncertainty {
        if let Some(flag) = [
            (args.ood_data.is_some(), "--ood-data"),
            (args.ood_data_dir.is_some(), "--ood-data-dir"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
        {
            bail!("{flag} is for the OOD AUROC of --uncertainty: pass --uncertainty with it, or drop {flag}");
        }
    }
    if args.plot_dir.is_some() && args.test_dist.is_none() && !args.uncertainty {
        bail!("--plot-dir draws the --test-dist or --uncertainty plots: pass one of them, or drop --plot-dir");
    }
    let ctx = context(&args)?;
    if args.test_dist.is_some() {
        return super::eval_shift::run(&args, &ctx);
    }
    if args.uncertainty {
        return super::eval_uncertainty::run(&args, &ctx);
    }
    let test = Arc::new(ctx.splits.test.clone());
    let ev = evaluate(
        &ctx.loaded.model,
        ctx.objective.as_ref(),
        &test,
        &ctx.eval_transform,
        ctx.config.optim.eval_batch_size,
        &ctx.shots,
        &ctx.device,
    )?;
    let (cfg, counts) = (&ctx.config, &ctx.loaded.class_counts);
    let r = &ev.report;
    if args.json {
        let experts: Vec<f64> = ev.experts.iter().map(|e| e.accuracy).collect();
        let out = serde_json::json!({
            "method": cfg.method.name,
            "dataset": cfg.data.dataset,
            "accuracy": r.accuracy,
            "many_shot_acc": r.many,
            "medium_shot_acc": r.medium,
            "few_shot_acc": r.few,
            "group_classes": r.group_classes,
            "expert_accuracy": experts,
            "per_class_accuracy": r.per_class,
            "samples": r.samples,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v));
    let row = |name: &str, r: &longtail::metrics::ClassificationReport| {
        println!(
            "{:<24} {:>8} {:>8} {:>8} {:>8}",
            name,
            pct(Some(r.accuracy)),
            pct(r.many),
            pct(r.medium),
            pct(r.few)
        )
    };
    println!(
        "{} on {} ({} test images)",
        cfg.method.name, ctx.dataset, r.samples
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}",
        "", "overall", "many", "medium", "few"
    );
    let label = match cfg.method.name.as_str() {
        "tlc" => "fused (TLC)",
        _ => "mean of experts",
    };
    row(label, r);
    for (e, x) in ev.experts.iter().enumerate() {
        row(&format!("expert {e}"), x);
    }
    println!(
        "classes per group: many {} / medium {} / few {}",
        r.group_classes[0], r.group_classes[1], r.group_classes[2]
    );
    println!("per-class accuracy:");
    for (c, acc) in r.per_class.iter().enumerate() {
        let name = test.class_names.get(c).map_or("", |s| s.as_str());
        println!(
            "  {:>3} {:<20} n_train={:<6} {:>7}",
            c,
            name,
            counts[c],
            pct(*acc)
        );
    }
    Ok(())
}

/// Loads the checkpoint and the data it is evaluated on.
pub fn context(args: &Args) -> Result<EvalContext> {
    let device = device_announced(&args.device)?;
    let loaded = longtail::hub::load_checkpoint(&args.checkpoint, &Registry, &device)?;
    let mut cfg = loaded.config.clone();
    if let Some(d) = &args.dataset {
        cfg.data.dataset = d.clone();
    }
    if let Some(d) = &args.data_dir {
        if cfg.data.dataset == "fmnist-lt" {
            bail!(
                "data directory {} would not be used: the data set is fmnist-lt, which is bundled and reads no files; pass --dataset with it (fmnist, cifar10-lt, cifar100-lt, image-list) or drop --data-dir",
                d.display()
            );
        }
        let hub = d.to_str().is_some_and(|s| s.starts_with("hf://"));
        if !hub && !d.is_dir() {
            bail!("data directory {} does not exist", d.display());
        }
        cfg.data.data_dir = Some(d.clone());
    }
    let (name, splits) = load_data(&cfg)?;
    if splits.test.num_classes != loaded.config.model.num_classes {
        bail!(
            "the checkpoint has {} classes but {} has {}",
            loaded.config.model.num_classes,
            cfg.data.dataset,
            splits.test.num_classes
        );
    }
    let objective =
        registry::method(&cfg.method.name)?.build(&cfg, &loaded.class_counts, &device)?;
    let (_, eval_transform) = transforms(&cfg, name);
    let shots = shot_groups(&loaded.class_counts, args.rule);
    Ok(EvalContext {
        loaded,
        config: cfg,
        dataset: name,
        splits,
        objective,
        eval_transform,
        shots,
        device,
    })
}
