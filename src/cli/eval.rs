//! `longtail eval`: accuracy of a trained checkpoint, overall, per group, per expert, per class.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;
use longtail::data::{shot_groups, ShotRule};
use longtail::run;
use longtail::train::evaluate;

/// Arguments of `longtail eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A checkpoint file (`runs/NAME/last.safetensors`) or a run directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Evaluate on another data set than the one the run was trained on (same classes).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory of the data files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Many/medium/few rule: ride (>100 / 20–100 / <20) or oltr (>=100 / <=20).
    #[arg(long, default_value = "ride")]
    pub rule: ShotRule,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Run `longtail eval`.
pub fn run(args: Args) -> Result<()> {
    let device = Device::Cpu;
    let loaded = run::load_checkpoint(&args.checkpoint, &device)?;
    let mut cfg = loaded.config.clone();
    if let Some(d) = &args.dataset {
        cfg.data.dataset = d.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data.data_dir = Some(d.clone());
    }
    let (name, splits) = run::load_data(&cfg)?;
    if splits.test.num_classes != loaded.config.model.num_classes {
        bail!(
            "the checkpoint has {} classes but {} has {}",
            loaded.config.model.num_classes,
            cfg.data.dataset,
            splits.test.num_classes
        );
    }
    let objective = longtail::methods::objective(&cfg.method, &loaded.class_counts, &device)?;
    let (_, eval_t) = run::transforms(&cfg, name);
    let shots = shot_groups(&loaded.class_counts, args.rule);
    let ev = evaluate(
        &loaded.model,
        objective.as_ref(),
        &Arc::new(splits.test),
        &eval_t,
        256,
        &shots,
        &device,
    )?;
    let r = &ev.report;
    if args.json {
        let experts: Vec<f64> = ev.experts.iter().map(|e| e.accuracy).collect();
        let out = serde_json::json!({
            "method": cfg.method.name(),
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
    println!(
        "{} on {} ({} test images)",
        cfg.method.name(),
        cfg.data.dataset,
        r.samples
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}",
        "", "overall", "many", "medium", "few"
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}",
        "mean of experts",
        pct(Some(r.accuracy)),
        pct(r.many),
        pct(r.medium),
        pct(r.few)
    );
    for (e, x) in ev.experts.iter().enumerate() {
        println!(
            "{:<24} {:>8} {:>8} {:>8} {:>8}",
            format!("expert {e}"),
            pct(Some(x.accuracy)),
            pct(x.many),
            pct(x.medium),
            pct(x.few)
        );
    }
    println!(
        "classes per group: many {} / medium {} / few {}",
        r.group_classes[0], r.group_classes[1], r.group_classes[2]
    );
    println!("per-class accuracy:");
    let names: Vec<String> = splits_names(&cfg, r.per_class.len());
    for (c, acc) in r.per_class.iter().enumerate() {
        println!(
            "  {:>3} {:<20} n_train={:<6} {:>7}",
            c,
            names[c],
            loaded.class_counts[c],
            pct(*acc)
        );
    }
    Ok(())
}

fn splits_names(cfg: &longtail::config::RunConfig, n: usize) -> Vec<String> {
    let _ = cfg;
    (0..n).map(|c| format!("class {c}")).collect()
}
