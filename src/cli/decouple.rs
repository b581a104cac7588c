//! `longtail decouple`: a second stage on a finished run — re-balance its classifier (cRT, LWS,
//! τ-norm, post-hoc logit adjustment, weight balancing) with the trunk frozen, store it in
//! `RUN/stage-<name>/`, and print overall / many / medium / few before and after.

use std::path::PathBuf;

use anyhow::Result;
use longtail::decouple::{apply, Stage, StageOptions, Summary, TauSource};
use longtail::metrics::ClassificationReport;
use longtail::train::device::device_announced;

/// Arguments of `longtail decouple`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The finished run folder (what `longtail train --out` wrote).
    pub run: PathBuf,
    /// crt, lws, tau-norm[:τ], la[:τ] or wb[:thresh]. Without τ, τ-norm and la choose τ on the
    /// run's validation split (--val-fraction at training) or use 1.
    #[arg(long)]
    pub stage: String,
    /// Epochs of a training stage (official: cRT 10, LWS 5, WB 10).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step of a training stage (official: 512 for cRT/LWS, 128 on the bundled set; WB 64).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Initial learning rate, cosine-annealed per epoch to 0 (official: cRT/LWS 0.2, WB 0.01).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay of a training stage (official: cRT/LWS 5e-4, WB 0.1).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Seed of the classifier's re-initialisation, the sampler and the augmentation (default: the run's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Recompute even when RUN/stage-<name>/ holds a result with the same settings.
    #[arg(long)]
    pub force: bool,
    /// Print result.json's numbers as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compute device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Run `longtail decouple`.
pub fn run(args: Args) -> Result<()> {
    let stage: Stage = args.stage.parse()?;
    let device = device_announced(&args.device)?;
    let opts = StageOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        force: args.force,
    };
    let r = apply(&args.run, &stage, &opts, &device)?;
    if args.json {
        let v = serde_json::json!({
            "stage": stage.to_string(),
            "dir": r.dir,
            "reused": r.reused,
            "tau": r.tau,
            "tau_source": r.tau_source,
            "seconds": r.seconds,
            "notes": r.notes,
            "before_test": Summary::of(&r.before_test.report),
            "test": Summary::of(&r.test.report),
            "before_val": r.before_val.as_ref().map(|v| Summary::of(&v.report)),
            "val": r.val.as_ref().map(|v| Summary::of(&v.report)),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match &r.recipe {
        Some(rc) => println!(
            "stage {stage} on {}: {} epochs, batch {}, lr {} (cosine), weight decay {}, {} sampler, seed {}",
            args.run.display(),
            rc.epochs,
            rc.batch_size,
            rc.lr,
            rc.weight_decay,
            serde_json::to_value(rc.sampler)?.as_str().unwrap_or("?"),
            r.seed
        ),
        None => println!("stage {stage} on {}", args.run.display()),
    }
    if let (Some(t), Some(src)) = (r.tau, r.tau_source) {
        let from = match src {
            TauSource::Given => "given",
            TauSource::Validation => "chosen on the validation split",
            TauSource::Default => "default: the run has no validation split",
        };
        println!("τ = {t} ({from})");
    }
    for ep in &r.epochs {
        println!(
            "epoch {}: loss {:.4}, lr {:.5}, {:.1} s",
            ep.epoch, ep.loss, ep.lr, ep.seconds
        );
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v));
    let row = |label: &str, rep: &ClassificationReport| {
        println!(
            "{label:<24} {:>8} {:>8} {:>8} {:>8}",
            pct(Some(rep.accuracy)),
            pct(rep.many),
            pct(rep.medium),
            pct(rep.few)
        );
    };
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}",
        "test accuracy (%)", "overall", "many", "medium", "few"
    );
    row("before", &r.before_test.report);
    row(&format!("after {}", stage.name()), &r.test.report);
    if let (Some(bv), Some(v)) = (&r.before_val, &r.val) {
        row("val before", &bv.report);
        row(&format!("val after {}", stage.name()), &v.report);
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    if r.reused {
        println!(
            "reused the stored result in {} (same stage, settings and weights; --force recomputes)",
            r.dir.display()
        );
    } else {
        println!("wrote {} ({:.1} s)", r.dir.display(), r.seconds);
    }
    Ok(())
}
