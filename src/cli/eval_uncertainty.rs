//! `longtail eval --uncertainty`: failure prediction, calibration, selective risk and OOD
//! detection of a checkpoint, per shot group; for TLC also its own uncertainty score, the
//! official vs per-sample combination and the early-exit accuracy / compute curve. The numbers
//! come from [`longtail::tlc::report`]; this file loads the OOD set and prints.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use longtail::data::{load_splits, DataSpec, Dataset, DatasetName};
use longtail::tlc::report::{
    evaluate_uncertainty, ScoreMetrics, UncertaintyInput, UncertaintyReport, DEFAULT_THRESHOLDS,
};
use longtail::tlc::Tlc;

use crate::plots::uncertainty as plot;

use super::eval::{Args, EvalContext};

/// Evaluates uncertainty metrics and prints them (tables or `--json`), writing plots with
/// `--plot-dir`.
pub fn run(args: &Args, ctx: &EvalContext) -> Result<()> {
    let ood = load_ood(args, ctx)?;
    let test = Arc::new(ctx.splits.test.clone());
    let tlc = match ctx.config.method.name.as_str() {
        "tlc" => Some(Tlc::settings(&ctx.config)?),
        _ => None,
    };
    let report = evaluate_uncertainty(&UncertaintyInput {
        model: &ctx.loaded.model,
        objective: ctx.objective.as_ref(),
        tlc: tlc.as_ref(),
        dataset: ctx.dataset.as_str(),
        test: &test,
        ood: ood.as_ref().map(|(n, d)| (n.as_str(), d)),
        transform: &ctx.eval_transform,
        shots: &ctx.shots,
        // The run's eval batch (TLC's official CIFAR recipe evaluates in batches of 4096,
        // ImageNet 512; docs/tlc.md §5): the official combination is normalised over it.
        batch_size: ctx.config.optim.eval_batch_size,
        thresholds: &DEFAULT_THRESHOLDS,
        device: &ctx.device,
    })?;
    let plots = match &args.plot_dir {
        Some(dir) => plot::write_plots(&report, dir)?,
        None => vec![],
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["plots"] = serde_json::json!(plots);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_report(&report);
        for p in &plots {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// Loads the test split of `--ood-data` and checks its images match the model's input.
fn load_ood(args: &Args, ctx: &EvalContext) -> Result<Option<(String, Arc<Dataset>)>> {
    let Some(name) = &args.ood_data else {
        if args.ood_data_dir.is_some() {
            bail!("--ood-data-dir needs --ood-data (the data set's kind, e.g. fmnist)");
        }
        return Ok(None);
    };
    let kind: DatasetName = name.parse()?;
    // Only the test split is used; its labels are ignored. The training split must still load:
    // keep all of it (imbalance 1) except for the bundled set, which is fixed at 100.
    let spec = DataSpec {
        name: kind,
        data_dir: args.ood_data_dir.clone(),
        imbalance: if kind == DatasetName::FmnistLt {
            DataSpec::default().imbalance
        } else {
            1.0
        },
        val_fraction: None,
        seed: 0,
    };
    let splits =
        load_splits(&spec).with_context(|| format!("cannot load the OOD data set `{name}`"))?;
    let (ood, id) = (splits.test, &ctx.splits.test);
    if (ood.channels, ood.height, ood.width) != (id.channels, id.height, id.width) {
        bail!(
            "the OOD data set `{name}` has {}×{}×{} images (channels×height×width) but {} has {}×{}×{}: OOD images must have the model's input shape",
            ood.channels,
            ood.height,
            ood.width,
            ctx.dataset,
            id.channels,
            id.height,
            id.width
        );
    }
    if ood.is_empty() {
        bail!("the OOD data set `{name}` has no test images");
    }
    Ok(Some((name.clone(), Arc::new(ood))))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v))
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.4}"))
}

fn print_report(r: &UncertaintyReport) {
    println!(
        "{} on {} ({} test images: many {} / medium {} / few {})",
        r.method, r.dataset, r.samples, r.group_samples[0], r.group_samples[1], r.group_samples[2]
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "", "overall", "many", "medium", "few"
    );
    let label = if r.tlc.is_some() {
        "accuracy (fused, %)"
    } else {
        "accuracy (%)"
    };
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        label,
        pct(Some(r.accuracy)),
        pct(r.many_shot_acc),
        pct(r.medium_shot_acc),
        pct(r.few_shot_acc)
    );
    for s in &r.scores {
        println!();
        println!("score `{}`: {}", s.score, s.description);
        let groups = [
            Some(&s.overall),
            s.many.as_ref(),
            s.medium.as_ref(),
            s.few.as_ref(),
        ];
        let row = |name: &str, f: &dyn Fn(&ScoreMetrics) -> Option<f64>| {
            let cells: Vec<String> = groups.iter().map(|g| num(g.and_then(f))).collect();
            println!(
                "{:<28} {:>9} {:>9} {:>9} {:>9}",
                name, cells[0], cells[1], cells[2], cells[3]
            );
        };
        row("failure AUROC", &|m| m.failure_auroc);
        row("FPR @ 95% TPR", &|m| m.fpr_at_95_tpr);
        row("ECE (15 bins)", &|m| Some(m.ece15));
        row("ECE (10 bins, TLC)", &|m| Some(m.ece10));
        row("AURC", &|m| Some(m.aurc));
        if let Some(o) = &r.ood {
            row(&format!("OOD AUROC vs {}", o.dataset), &|m| m.ood_auroc);
        }
    }
    if let Some(o) = &r.ood {
        println!("(OOD set: {} test images of {})", o.samples, o.dataset);
    }
    let Some(t) = &r.tlc else { return };
    println!();
    println!(
        "TLC combination (eta {}, configured {}): per-sample {} %, official (batch-normalised, batch {}) {} %; mean fused uncertainty {:.3e}",
        t.eta,
        t.configured_combination,
        pct(Some(t.per_sample_accuracy)),
        t.official_batch_size,
        pct(Some(t.official_accuracy)),
        t.mean_uncertainty
    );
    let x = &t.early_exit;
    println!(
        "early exit: a sample stops once its fused uncertainty w < threshold; MACs per image: trunk {} + experts {:?} = {}",
        x.trunk_macs, x.expert_macs, x.full_macs
    );
    println!(
        "{:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}  images by experts used",
        "threshold", "accuracy", "many", "medium", "few", "experts", "MMAC/img", "saved"
    );
    for p in &x.points {
        println!(
            "{:>10} {:>9} {:>8} {:>8} {:>8} {:>8.3} {:>10.3} {:>7.1}%  {:?}",
            format!("{:e}", p.threshold),
            pct(Some(p.accuracy)),
            pct(p.many),
            pct(p.medium),
            pct(p.few),
            p.mean_experts,
            p.macs_per_image / 1e6,
            100.0 * p.macs_saved,
            p.samples_by_experts
        );
    }
}
