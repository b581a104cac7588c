//! `longtail heads`: multi-expert heads on a frozen foundation trunk's cached features (issue 20).
//!
//! The trunk (ViT, CLIP vision, DINOv2; a folder or `hf://`) turns every training and test image
//! into one feature, once: the features are cached (`longtail_trunks::extract_features`, reused
//! while trunk, preprocessing and data are the same). Then E light heads are trained on the cache
//! with the loss of a method preset (RIDE, SADE, TLC, CE: its method, settings, experts and
//! optimisation), and evaluated overall, many/medium/few and per expert; `--test-time` adds
//! SADE's test-time aggregation over two strong views of every test image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use longtail::aggregate::{experts_first, predictions, TestTimeAggregator};
use longtail::data::{shot_groups, Dataset, ShotRule};
use longtail::metrics::{classification_report, ClassificationReport};
use longtail::registry::{self, preset};
use longtail::sade::shift::ShiftConfig;

use super::recipe::RecipeFlags;
use longtail::train::checkpoint::write_atomic;
use longtail::train::device::device_announced;
use longtail::train::{load_data, Evaluation, RunConfig};
use longtail_trunks::{
    alias, evaluate_heads, extract_features, read_features, save_heads, train_heads, CacheStatus,
    ExpertHeads, ExtractOptions, FeatureKind, FeatureSet, HeadsConfig, HubOptions, LoadOptions,
    PretrainedTrunk, TrunkRef,
};
use rayon::prelude::*;

/// File name of the heads in the output folder.
pub const HEADS_FILE: &str = "heads.safetensors";

/// Arguments of `longtail heads`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The trunk: `hf://owner/name[@revision]` (e.g. hf://facebook/dinov2-small), a folder with
    /// config.json and model.safetensors, or an alias (vit-b16, vit-l16, clip-b16, clip-l14,
    /// dinov2-s, dinov2-b, dinov2-l). Not needed when --preset ends in an alias.
    #[arg(long)]
    pub backbone: Option<String>,
    /// A method preset (see `longtail presets`): its method and loss settings, experts,
    /// classifier and optimisation train the heads. `<preset>.<alias>` (e.g.
    /// ride.cifar100-lt.dinov2-s) also names the trunk. Default: ride.<dataset>.
    #[arg(long)]
    pub preset: Option<String>,
    /// Data set, instead of the preset's: fmnist-lt (bundled), cifar10-lt, cifar100-lt, fmnist,
    /// image-list.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory of the data files (not for the bundled fmnist-lt).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides of the preset's numbers (`--experts` is the number of heads).
    #[command(flatten)]
    pub recipe: RecipeFlags,
    /// Each expert's classifier: cosine (scale from the preset) or linear; default: the preset's.
    #[arg(long, value_parser = ["cosine", "linear"])]
    pub classifier: Option<String>,
    /// Give each expert a residual bottleneck adapter of this hidden width.
    #[arg(long)]
    pub adapter: Option<usize>,
    /// Train on the raw features (by default every dimension is standardised with the training
    /// set's mean and standard deviation).
    #[arg(long)]
    pub no_standardize: bool,
    /// Which trunk output the heads read: pooled (every family) or embeds (CLIP's image_embeds).
    #[arg(long, default_value = "pooled", value_parser = ["pooled", "embeds"])]
    pub features: String,
    /// Folder of the feature cache (one safetensors file per trunk, data set and split).
    #[arg(long, default_value = "runs/feature-cache")]
    pub cache_dir: PathBuf,
    /// Images per trunk call when the cache is built.
    #[arg(long, default_value_t = 64)]
    pub extract_batch: usize,
    /// Output folder: heads.safetensors, config.toml, metrics.jsonl (replaced if present).
    /// Default: runs/heads-<preset>-<trunk>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also SADE's test-time aggregation: learn the experts' weights on two strong views of every
    /// test image (each through the trunk once, cached like the rest).
    #[arg(long)]
    pub test_time: bool,
    /// Print no per-epoch progress.
    #[arg(long)]
    pub quiet: bool,
    /// Compute device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The run config and the trunk reference the arguments name; reads no data.
pub fn resolve(args: &Args) -> Result<(RunConfig, String)> {
    let name = args
        .preset
        .clone()
        .unwrap_or_else(|| format!("ride.{}", args.dataset.as_deref().unwrap_or("fmnist-lt")));
    let (mut cfg, from_preset) = match preset(&name) {
        Ok(cfg) => (cfg, None),
        Err(e) => match name
            .rsplit_once('.')
            .and_then(|(p, a)| Some((p, alias(a)?)))
        {
            Some((p, reference)) => (preset(p)?, Some(reference.to_string())),
            None => return Err(e),
        },
    };
    let backbone = match (&args.backbone, from_preset) {
        (Some(b), _) => match alias(b) {
            Some(r) if !Path::new(b).exists() => r.to_string(),
            _ => b.clone(),
        },
        (None, Some(r)) => r,
        (None, None) => bail!(
            "name the trunk with --backbone (hf://owner/name, a folder, or an alias such as dinov2-s), or end --preset in an alias (e.g. {name}.dinov2-s)"
        ),
    };
    if let Some(d) = &args.dataset {
        cfg.data.dataset = d.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data.data_dir = Some(d.clone());
    }
    args.recipe.apply(&mut cfg);
    match args.classifier.as_deref() {
        Some("cosine") => cfg.model.use_norm = true,
        Some("linear") => cfg.model.use_norm = false,
        _ => {}
    }
    registry::check(&cfg)?;
    Ok((cfg, backbone))
}

/// `hf://facebook/dinov2-small` → `facebook_dinov2-small`; a folder → its name and a hash of
/// its path (the cache's metadata decides reuse; this only keeps trunks apart).
fn slug(id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    match id.strip_prefix("hf://") {
        Some(repo) => clean(repo),
        None => {
            let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
            });
            let name = Path::new(id)
                .file_name()
                .map_or("trunk".into(), |n| n.to_string_lossy().into_owned());
            format!("{}-{:08x}", clean(&name), h as u32)
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

fn row(label: &str, r: &ClassificationReport) -> String {
    format!(
        "{label:<28} {:>8} {:>7} {:>7} {:>7}",
        pct(Some(r.accuracy)),
        pct(r.many),
        pct(r.medium),
        pct(r.few)
    )
}

/// Builds or reuses the cache of `data`'s features and reads it back.
fn features(
    trunk: &PretrainedTrunk,
    data: &Dataset,
    path: &Path,
    opts: &ExtractOptions,
    what: &str,
    device: &Device,
) -> Result<FeatureSet> {
    let t0 = Instant::now();
    let status = extract_features(trunk, data, path, opts)
        .with_context(|| format!("extracting the {what} features"))?;
    let secs = t0.elapsed().as_secs_f64();
    match status {
        CacheStatus::Reused => eprintln!("{what} features: reused {}", path.display()),
        CacheStatus::Built { reason } => eprintln!(
            "{what} features: built {} ({reason}): {} images in {secs:.1} s, {:.1} img/s",
            path.display(),
            data.len(),
            data.len() as f64 / secs.max(1e-9)
        ),
    }
    Ok(read_features(path, device)?.into())
}

/// Two strong views (SADE's augmentation, seeded) of every test image, as data sets.
fn strong_views(shift: &ShiftConfig, test: &Dataset) -> Result<[Dataset; 2]> {
    let shape = (test.height, test.width, test.channels);
    let (oh, ow) = shift.strong.output_size(test.height, test.width);
    let view = |v: u64| -> Result<Dataset> {
        let images: Vec<Vec<u8>> = (0..test.len())
            .into_par_iter()
            .map(|i| {
                shift
                    .strong
                    .view(test.image(i), shape, shift.view_seed, v, i as u64)
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Dataset::new(
            &format!("test view {v}"),
            images.concat(),
            test.labels.clone(),
            (oh, ow, test.channels),
            test.num_classes,
            vec![],
            vec![],
        )?)
    };
    Ok([view(1)?, view(2)?])
}

fn expert_tensor(e: &Evaluation) -> Result<Tensor> {
    let n = e.labels.len();
    Ok(experts_first(&Tensor::from_vec(
        e.expert_logits.clone(),
        (n, e.num_experts, e.num_classes),
        &Device::Cpu,
    )?)?)
}

/// Runs `longtail heads`.
pub fn run(args: Args) -> Result<()> {
    let (mut cfg, backbone) = resolve(&args)?;
    let device = device_announced(&args.device)?;
    let t_all = Instant::now();
    let trunk = PretrainedTrunk::load(
        &TrunkRef::parse(&backbone)?,
        &LoadOptions {
            hub: HubOptions::from_env(),
            device: device.clone(),
            dtype: candle_core::DType::F32,
        },
    )
    .with_context(|| format!("loading the trunk {backbone}"))?;
    let kind = match args.features.as_str() {
        "embeds" => FeatureKind::Embeds,
        _ => FeatureKind::Pooled,
    };
    let (_, splits) = load_data(&cfg)?;
    let (train, test) = (&splits.train, &splits.test);
    cfg.model.num_classes = train.num_classes;
    registry::check(&cfg)?;

    let slug = slug(&trunk.files.id);
    let cache = args.cache_dir.join(&slug);
    let stem = format!(
        "{}-if{}-{}",
        cfg.data.dataset,
        cfg.data.imbalance,
        kind.name()
    );
    let opts = ExtractOptions {
        batch_size: args.extract_batch.max(1),
        kind,
    };
    let t_feat = Instant::now();
    let train_set = features(
        &trunk,
        train,
        &cache.join(format!("{stem}-train.safetensors")),
        &opts,
        "train",
        &device,
    )?;
    let test_set = features(
        &trunk,
        test,
        &cache.join(format!("{stem}-test.safetensors")),
        &opts,
        "test",
        &device,
    )?;
    let feature_secs = t_feat.elapsed().as_secs_f64();
    let dim = train_set.features.dim(1)?;

    let counts = train.class_counts();
    let shots = shot_groups(&counts, ShotRule::Ride);
    let kind_m = registry::method(&cfg.method.name)?;
    let mut method = kind_m.build(&cfg, &counts, &device)?;
    let mut heads_cfg = HeadsConfig::for_run(&cfg, dim);
    heads_cfg.adapter = args.adapter;
    heads_cfg.standardize = !args.no_standardize;
    heads_cfg.check()?;
    let (varmap, heads) = ExpertHeads::seeded(&heads_cfg, cfg.seed, &device)?;
    let quiet = args.quiet;
    eprintln!(
        "heads: {}; method {}, {} epochs",
        heads_cfg.describe(),
        cfg.method.name,
        cfg.optim.epochs
    );
    let fit = train_heads(
        &heads,
        &varmap,
        method.as_mut(),
        &train_set,
        Some(&test_set),
        &shots,
        &cfg.train_config(),
        |r| {
            if !quiet {
                eprintln!(
                    "epoch {:>3}  loss {:.4}  train {:.1}%  test {:.1}% (many {} / medium {} / few {})  lr {:.2e}  {:.3}s",
                    r.epoch,
                    r.loss,
                    100.0 * r.accuracy,
                    100.0 * r.test_accuracy.unwrap_or(f64::NAN),
                    pct(r.many),
                    pct(r.medium),
                    pct(r.few),
                    r.lr,
                    r.train_seconds
                );
            }
        },
    )?;
    let eval = fit.test.as_ref().expect("a test set was given");

    println!(
        "trunk {} ({}, revision {}), {} features, {dim} wide",
        trunk.files.id,
        trunk.trunk.family().name(),
        trunk.files.revision,
        kind.name()
    );
    println!(
        "{}: {}; {} training features, {} test",
        cfg.preset.as_deref().unwrap_or(&cfg.method.name),
        heads_cfg.describe(),
        train_set.len(),
        test_set.len()
    );
    println!(
        "head training: {} epochs in {:.2} s ({:.0} samples/s); features {:.1} s; total {:.1} s",
        cfg.optim.epochs,
        fit.train_seconds,
        (train_set.len() * cfg.optim.epochs) as f64 / fit.train_seconds.max(1e-9),
        feature_secs,
        t_all.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "{:<28} {:>8} {:>7} {:>7} {:>7}",
        "test accuracy (%)", "overall", "many", "medium", "few"
    );
    println!(
        "{}",
        row(
            &format!(
                "{} ({} expert{})",
                cfg.method.name,
                heads_cfg.num_experts,
                if heads_cfg.num_experts == 1 { "" } else { "s" }
            ),
            &eval.report
        )
    );
    for (e, r) in eval.experts.iter().enumerate() {
        println!("{}", row(&format!("expert {e}"), r));
    }

    let mut aggregated = None;
    if args.test_time {
        let shift = ShiftConfig::for_run(&cfg, test.height, test.width)?;
        let views = strong_views(&shift, test)?;
        let mut logits = vec![];
        for (v, data) in views.iter().enumerate() {
            let set = features(
                &trunk,
                data,
                &cache.join(format!(
                    "{stem}-test-strong{}-seed{}.safetensors",
                    v + 1,
                    shift.view_seed
                )),
                &opts,
                &format!("test view {}", v + 1),
                &device,
            )?;
            let ev = evaluate_heads(
                &heads,
                &|o| Ok(o.logits.clone()),
                &set,
                &shots,
                cfg.optim.eval_batch_size,
            )?;
            logits.push(expert_tensor(&ev)?);
        }
        let fitted = TestTimeAggregator::new(shift.aggregator)?.fit(&logits[0], &logits[1])?;
        let plain = fitted.predict(&expert_tensor(eval)?)?;
        let report = classification_report(&predictions(&plain)?, &eval.labels, &shots)?;
        let weights: Vec<String> = fitted.weights.iter().map(|w| format!("{w:.2}")).collect();
        println!("{}", row("test-time aggregation", &report));
        println!("  learned expert weights: {}", weights.join(" / "));
        aggregated = Some((fitted.weights, report));
    }

    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "heads-{}-{slug}",
            cfg.preset.as_deref().unwrap_or(&cfg.method.name)
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let config = cfg.to_toml()?;
    let mut meta = BTreeMap::from([
        ("trunk".to_string(), trunk.files.id.clone()),
        ("revision".to_string(), trunk.files.revision.clone()),
        (
            "family".to_string(),
            trunk.trunk.family().name().to_string(),
        ),
        ("features".to_string(), kind.name().to_string()),
        ("preprocess".to_string(), trunk.preprocess.to_json()),
        ("config".to_string(), config.clone()),
        ("method".to_string(), cfg.method.name.clone()),
        ("epoch".to_string(), cfg.optim.epochs.to_string()),
        ("class_counts".to_string(), serde_json::to_string(&counts)?),
        (
            "test_accuracy".to_string(),
            eval.report.accuracy.to_string(),
        ),
    ]);
    if let Some((w, _)) = &aggregated {
        meta.insert("test_time_weights".into(), serde_json::to_string(w)?);
    }
    save_heads(&out.join(HEADS_FILE), &varmap, &heads_cfg, &meta)?;
    write_atomic(&out.join("config.toml"), config.as_bytes())?;
    let mut lines = String::new();
    for r in &fit.history {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    write_atomic(&out.join("metrics.jsonl"), lines.as_bytes())?;
    println!();
    println!("saved {}", out.join(HEADS_FILE).display());
    Ok(())
}
