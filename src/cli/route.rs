//! `longtail route`: RIDE stage 2 on a trained run — learn the expert-assignment router with
//! the backbone frozen, save it as `router.safetensors` beside the run, and print routed vs
//! all-experts accuracy, how many experts the test images used and the compute that saved.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use longtail::data::{shot_groups, ShotRule};
use longtail::registry::Registry;
use longtail::ride::stage2::{
    evaluate_routed, load_router, save_router, train_router, RouterRecipe, ROUTER_FILE,
};
use longtail::train::device::device_announced;

/// Arguments of `longtail route`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stage-1 run: a run directory, a checkpoint file or hf://owner/repo.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write router.safetensors (default: the run directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only evaluate the router already saved in --out / the run directory.
    #[arg(long)]
    pub eval_only: bool,
    /// Epochs of stage 2 (official: 5).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step (official: 512).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Initial learning rate, cosine-annealed per epoch to 0 (official: 0.01).
    #[arg(long)]
    pub lr: Option<f64>,
    /// BCE weight of "consult the next expert": higher uses more experts (official: 100).
    #[arg(long)]
    pub pos_weight: Option<f64>,
    /// k of the top-k logit input (default: 30 for up to 100 classes, else 50).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the head's initialisation, sampler and augmentation (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Many/medium/few rule: ride or oltr.
    #[arg(long, default_value = "ride")]
    pub rule: ShotRule,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Compute device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Run `longtail route`.
pub fn run(args: Args) -> Result<()> {
    let device = device_announced(&args.device)?;
    let loaded = longtail::hub::load_checkpoint(&args.checkpoint, &Registry, &device)?;
    let e = loaded.config.model.num_experts;
    if e < 2 {
        bail!(
            "{} has {e} expert: routing needs a multi-expert model (e.g. a RIDE run)",
            args.checkpoint.display()
        );
    }
    let method = loaded.config.method.name.as_str();
    if method != "ride" && !args.json {
        println!(
            "note: routing is RIDE's stage 2; on this {method} run it routes over the mean of the \
             expert logits, which is not {method}'s own prediction rule"
        );
    }
    let out = match (&args.out, args.checkpoint.is_dir()) {
        (Some(o), _) => o.clone(),
        (None, true) => args.checkpoint.clone(),
        (None, false) => match args.checkpoint.parent() {
            Some(p) if args.checkpoint.is_file() => p.to_path_buf(),
            _ => bail!("give --out DIR for the router (the checkpoint is not a local run)"),
        },
    };
    // router.safetensors goes into `out`, often a run folder: take its lock (no `train` or other
    // `route` writes there meanwhile) before any training, which also checks that `out` can be
    // written at all.
    let _lock = if args.eval_only {
        None
    } else {
        Some(longtail::train::RunLock::acquire(&out, "longtail route")?)
    };
    let data = loaded.data()?;
    let (splits, train_tf, eval_tf) = (data.splits, data.train_transform, data.eval_transform);
    let router = if args.eval_only {
        load_router(&out.join(ROUTER_FILE), &loaded.model, &device)?
    } else {
        let official = RouterRecipe::default();
        let recipe = RouterRecipe {
            epochs: args.epochs.unwrap_or(official.epochs),
            batch_size: args.batch_size.unwrap_or(official.batch_size),
            lr: args.lr.unwrap_or(official.lr),
            pos_weight: args.pos_weight.unwrap_or(official.pos_weight),
            top_k: args.top_k.or(official.top_k),
            seed: args.seed.unwrap_or(official.seed),
        };
        let train = Arc::new(splits.train.clone());
        let (varmap, router) = train_router(
            &loaded.model,
            &train,
            &train_tf,
            &recipe,
            &device,
            |ep| {
                if !args.json {
                    println!(
                    "router epoch {}/{}: loss {:.4}, lr {:.6}, targets 'consult next' {:.1} %, {:.1} s",
                    ep.epoch,
                    recipe.epochs,
                    ep.loss,
                    ep.lr,
                    100.0 * ep.positive,
                    ep.seconds
                );
                }
            },
        )?;
        let path = save_router(&out, &varmap, &router)?;
        if !args.json {
            println!("wrote {}", path.display());
        }
        router
    };
    let shots = shot_groups(&loaded.class_counts, args.rule);
    let test = Arc::new(splits.test.clone());
    let ev = evaluate_routed(
        &loaded.model,
        &router,
        &test,
        &eval_tf,
        &shots,
        loaded.config.optim.eval_batch_size,
        &device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ev)?);
        return Ok(());
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v));
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "test accuracy (%)", "overall", "many", "medium", "few", "MMAC/img"
    );
    for (label, r, macs) in [
        (format!("all {e} experts"), &ev.all_experts, ev.all_macs),
        ("routed".to_string(), &ev.routed, ev.routed_macs),
    ] {
        println!(
            "{:<22} {:>8} {:>8} {:>8} {:>8} {:>10.1}",
            label,
            pct(Some(r.accuracy)),
            pct(r.many),
            pct(r.medium),
            pct(r.few),
            macs / 1e6
        );
    }
    let used: Vec<String> = ev
        .used
        .iter()
        .enumerate()
        .map(|(k, f)| format!("{}: {:.2} %", k + 1, 100.0 * f))
        .collect();
    println!(
        "experts used per image: {} (mean {:.2}); compute {:.1} % of all experts",
        used.join(", "),
        ev.mean_experts,
        100.0 * ev.routed_macs / ev.all_macs
    );
    Ok(())
}
