//! `longtail train`: resolve the config from a preset or file plus flags, then train.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use longtail::registry::{self, preset};

use super::recipe::RecipeFlags;
use candle_core::Device;
use longtail::train::device::device_announced;
use longtail::train::trainer::LAST;
use longtail::train::{
    train_run, train_run_on, FitSummary, OutMode, Progress, RunConfig, TrainError, TrunkInit,
};

/// Arguments of `longtail train`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Method: ce, ride (the default), sade or tlc. With --dataset it picks the preset
    /// `<method>.<dataset>`; not with --preset or --config, which name the method themselves.
    #[arg(long, conflicts_with_all = ["preset", "config"])]
    pub method: Option<String>,
    /// A named preset (see `longtail presets`) instead of --method/--dataset.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A TOML config file (as saved in every run's config.toml); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data set: fmnist-lt (bundled, the default), cifar10-lt, cifar100-lt, fmnist, a benchmark
    /// streamed from disk with --data-dir ROOT holding its official lists: imagenet-lt
    /// (ImageNet_LT_{train,val,test}.txt), inat2018 (iNaturalist18_{train,val}.txt), places-lt
    /// (Places_LT_{train,val,test}.txt), or image-list: your own train.txt / test.txt (and
    /// val.txt) under ROOT, streamed with the method's ImageNet-LT recipe and as many classes as
    /// the lists hold. Not with --preset or --config, which name the data set themselves.
    #[arg(long, conflicts_with_all = ["preset", "config"])]
    pub dataset: Option<String>,
    /// Directory of the data files (CIFAR binary batches, Fashion-MNIST IDX files). Needs a data
    /// set that reads files: pass --dataset (or a --preset / --config naming one); the bundled
    /// fmnist-lt reads none, so --data-dir with it is an error.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides of the recipe's numbers.
    #[command(flatten)]
    pub recipe: RecipeFlags,
    /// Hold out this fraction of each training class for validation (best-checkpoint selection).
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Train with mixup of this α, whatever the method: each batch mixed with a permutation of
    /// itself by λ ~ Beta(α, α), the loss λ·L(y) + (1 − λ)·L(y[p]) (docs/balpoe.md §2.3).
    /// 0 turns off the mixup of a recipe that has it.
    #[arg(long, value_name = "ALPHA", conflicts_with = "backbone")]
    pub mixup: Option<f64>,
    /// Start the network from ImageNet-pretrained ResNet weights with torchvision / timm keys
    /// (`conv1.weight`, `layer3.0.conv1.weight`, …): a safetensors FILE or
    /// hf://owner/repo[@rev][/file.safetensors]. The stem and shared stages load by name, each
    /// expert's own stages from the same layers, the classifiers keep their initialisation;
    /// a trunk that does not fit the model is an error. The official Places-LT run starts from a
    /// ResNet-152, e.g. hf://timm/resnet152.tv_in1k (docs/sade.md §1.1). Ignored by --resume.
    #[arg(long, value_name = "FILE|hf://…", conflicts_with = "backbone")]
    pub pretrained: Option<String>,
    /// Run directory (default: runs/<preset>-seed<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (same config; an error when --out
    /// holds no checkpoint).
    #[arg(long)]
    pub resume: bool,
    /// Start a new run in an --out that holds a run or other files: the old run's files
    /// (checkpoints, metrics, config.toml, router) are replaced, other files kept.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// RIDE distillation (docs/ride.md §4): the teacher, a finished run folder or checkpoint of
    /// the same data set and classes (usually 6 experts). Turns distillation on with the official
    /// temperature 1.5 and weight 1 when the recipe has none; the `ride.<dataset>.distill` presets
    /// default to runs/ride.<dataset>.teacher-seed0.
    #[arg(long, value_name = "RUN", conflicts_with = "backbone")]
    pub teacher: Option<PathBuf>,
    /// Train the teacher first (the student's recipe with 6 experts and no distillation, e.g.
    /// the `ride.<dataset>.teacher` preset) into the teacher path, then the student; each run is
    /// continued if it stopped, and skipped if it finished.
    #[arg(long, conflicts_with_all = ["backbone", "overwrite"])]
    pub train_teacher: bool,
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
    /// Train multi-expert heads on a frozen foundation trunk instead of a ResNet: a local folder,
    /// hf://owner/name[@revision] or an alias (vit-b16, clip-b16, dinov2-s, …). Exactly
    /// `longtail heads --backbone …` with the method's preset (see `longtail heads --help` for
    /// the head options).
    #[arg(long, conflicts_with_all = ["config", "resume", "overwrite", "compare_ce", "val_fraction"])]
    pub backbone: Option<String>,
    /// Data-parallel training over the ranks `mpirun -np N` started: `mpi` (tensors reduced on
    /// the host; any device) or `nccl` (CUDA tensors reduced by NCCL; `--device cuda` takes the
    /// GPU of the local rank). Each rank trains `--batch-size` images per step; rank 0 writes
    /// the run. Needs a build with `--features mpi` (or `nccl`).
    #[arg(long, default_value = "none", value_name = "BACKEND", conflicts_with_all = ["backbone", "compare_ce", "train_teacher"])]
    pub distributed: String,
    /// Seconds a rank waits in one collective before it names the ranks that did not join and
    /// ends the job.
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    pub dist_timeout: f64,
    /// With `--distributed`: synchronised batch norm, each train-mode BN normalised with the
    /// statistics of all ranks' images (PyTorch `SyncBatchNorm`) rather than each rank's own
    /// (the default, as the official multi-GPU runs). Stored in the run's config.
    #[arg(long)]
    pub sync_bn: bool,
}

/// Builds the run config from the arguments; reads no images (an `image-list` recipe reads its
/// list files for the class count).
pub fn resolve(args: &Args) -> Result<RunConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            RunConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => preset(args.preset.as_deref().unwrap_or(&format!(
            "{}.{}",
            args.method.as_deref().unwrap_or("ride"),
            args.dataset.as_deref().unwrap_or("fmnist-lt")
        )))?,
    };
    if let Some(d) = &args.data_dir {
        cfg.data.data_dir = Some(d.clone());
    }
    if args.config.is_none() {
        // A recipe that reads lists (your own, or a benchmark's, perhaps a subset of it) takes
        // its class count from them; a config file says its own.
        longtail::registry::size_to_lists(&mut cfg)?;
    }
    args.recipe.apply(&mut cfg);
    if let Some(t) = &args.teacher {
        longtail::ride::distill::set_teacher(&mut cfg, t)?;
    }
    if let Some(v) = args.val_fraction {
        cfg.data.val_fraction = Some(v);
    }
    if args.sync_bn {
        if args.distributed == "none" {
            bail!("--sync-bn synchronises batch norm over the ranks of a data-parallel run: add --distributed mpi|nccl (under mpirun)");
        }
        cfg.optim.sync_bn = true;
    }
    if let Some(a) = args.mixup {
        cfg.optim.mixup_alpha = (a != 0.0).then_some(a);
    }
    if let (Some(dir), "fmnist-lt") = (&cfg.data.data_dir, cfg.data.dataset.as_str()) {
        let fix = if args.dataset.is_none() && args.preset.is_none() && args.config.is_none() {
            "pass --dataset with it (fmnist for Fashion-MNIST IDX files, cifar10-lt or cifar100-lt for CIFAR binaries, image-list)"
        } else {
            "name a data set that reads files (--dataset fmnist, cifar10-lt, cifar100-lt or image-list), or drop --data-dir"
        };
        bail!(
            "data directory {} would not be used: the data set is fmnist-lt, which is bundled and reads no files; {fix}",
            dir.display()
        );
    }
    registry::check(&cfg)?;
    Ok(cfg)
}

/// Run `longtail train`.
pub fn run(args: Args) -> Result<()> {
    if let Some(backbone) = &args.backbone {
        return super::heads::run(heads_args(&args, backbone));
    }
    let backend: longtail::train::dist::Backend = args.distributed.parse()?;
    let (comm, device) = if backend == longtail::train::dist::Backend::None {
        (longtail::train::Communicator::local(), None)
    } else {
        let (comm, device) = join_job(backend, &args)?;
        (comm, Some(device))
    };
    // Past this point a rank's error ends every rank at once, naming this rank.
    let result = run_rank(args, &comm, device);
    match result {
        Err(e) if comm.world_size() > 1 => comm.abort(&format!("{e:#}").replace('\n', " "), 2),
        r => r,
    }
}

/// `--distributed`: threads per rank, the GPU of the local rank, and the communicator.
fn join_job(
    backend: longtail::train::dist::Backend,
    args: &Args,
) -> Result<(longtail::train::Communicator, Device)> {
    // Ranks on one machine share its cores: unless RAYON_NUM_THREADS says otherwise, each takes
    // cores / (ranks on this machine) threads, at least 1 (set before MPI starts any thread).
    let local: usize = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var(
            "RAYON_NUM_THREADS",
            (cores / local.max(1)).max(1).to_string(),
        );
    }
    if !(args.dist_timeout > 0.0 && args.dist_timeout.is_finite()) {
        bail!("--dist-timeout must be a positive number of seconds");
    }
    let device = rank_device(&args.device)?;
    let comm = longtail::train::Communicator::init(
        backend,
        std::time::Duration::from_secs_f64(args.dist_timeout),
        &device,
    )?;
    if comm.is_root() {
        eprintln!(
            "device: {} on rank 0",
            longtail::train::device::describe(&device)
        );
    }
    Ok((comm, device))
}

/// `--device cuda` (or auto) on a rank: the GPU of its local rank (`LOCAL_RANK`,
/// `OMPI_COMM_WORLD_LOCAL_RANK`, …), as `cuda:N`; `auto` falls back to the CPU.
fn rank_device(asked: &str) -> Result<Device> {
    use longtail::train::device::device;
    let gpu = format!("cuda:{}", longtail::train::dist::cuda_ordinal(None));
    Ok(match asked {
        "cuda" => device(&gpu)?,
        "auto" => device(&gpu).unwrap_or(Device::Cpu),
        other => device(other)?,
    })
}

/// `longtail train` on one rank (`comm`), on `device` when the job chose it.
fn run_rank(
    args: Args,
    comm: &longtail::train::Communicator,
    device: Option<Device>,
) -> Result<()> {
    let root = comm.is_root();
    let cfg = resolve(&args)?;
    let name = cfg
        .preset
        .clone()
        .unwrap_or_else(|| format!("{}.{}", cfg.method.name, cfg.data.dataset));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/{name}-seed{}", cfg.seed)));
    let progress = if args.quiet || !root {
        Progress::Quiet
    } else {
        Progress::Auto
    };
    if root {
        eprintln!(
            "training {name} ({} experts, {} epochs) into {}{}",
            cfg.model.num_experts,
            cfg.optim.epochs,
            out.display(),
            if comm.world_size() > 1 {
                format!(
                    " on {} ranks ({}), {} images per step",
                    comm.world_size(),
                    comm.backend(),
                    comm.world_size() * cfg.optim.batch_size
                )
            } else {
                String::new()
            }
        );
    }
    let device = match device {
        Some(d) => d,
        None => device_announced(&args.device)?,
    };
    let method = registry::method(&cfg.method.name)?;
    if args.train_teacher {
        train_teacher(&cfg, progress, &device)?;
    }
    if let Some(file) = longtail::ride::distill::check_teacher(&cfg)? {
        eprintln!("distilling from the teacher {}", file.display());
    }
    let t0 = Instant::now();
    let mode = if args.resume || (args.train_teacher && out.join(LAST).is_file()) {
        OutMode::Resume
    } else if args.overwrite {
        OutMode::Overwrite
    } else {
        OutMode::New
    };
    let init = match &args.pretrained {
        Some(r) if mode != OutMode::Resume => Some(pretrained_init(r, &cfg)?),
        _ => {
            if cfg.preset.as_deref() == Some("sade.places-lt") && mode != OutMode::Resume {
                eprintln!("note: the official Places-LT run starts from an ImageNet-pretrained ResNet-152; pass --pretrained hf://timm/resnet152.tv_in1k (or a torchvision safetensors file)");
            }
            None
        }
    };
    let summary = train_run_on(
        &cfg,
        method,
        &out,
        mode,
        progress,
        &device,
        init.as_ref(),
        comm,
    )?;
    let wall = t0.elapsed().as_secs_f64();
    if !root {
        return Ok(());
    }
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
        // The baseline of an earlier --compare-ce run is continued (same recipe), unless the main
        // run is being overwritten.
        let ce_mode = if args.overwrite {
            OutMode::Overwrite
        } else if ce_out.join(longtail::train::trainer::LAST).exists() {
            OutMode::Resume
        } else {
            OutMode::New
        };
        let ce_summary = train_run(
            &ce,
            registry::method("ce")?,
            &ce_out,
            ce_mode,
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

/// `--train-teacher`: trains the teacher of the distilling run `student` into its teacher path
/// (continued if it stopped there, only evaluated if it finished).
fn train_teacher(student: &RunConfig, progress: Progress, device: &Device) -> Result<()> {
    let teacher = longtail::ride::distill::teacher_config(student)?;
    let Some(d) = longtail::ride::distill::distill_settings(student)? else {
        bail!("--train-teacher needs a distilling RIDE recipe (a ride.<dataset>.distill preset or --teacher)");
    };
    let name = teacher
        .preset
        .clone()
        .unwrap_or_else(|| format!("ride.{}.teacher", teacher.data.dataset));
    let mode = if d.teacher.join(LAST).is_file() {
        OutMode::Resume
    } else {
        OutMode::New
    };
    eprintln!(
        "training the teacher {name} ({} experts, {} epochs) into {}{}",
        teacher.model.num_experts,
        teacher.optim.epochs,
        d.teacher.display(),
        if mode == OutMode::Resume {
            " (continued, or skipped if finished)"
        } else {
            ""
        }
    );
    let t0 = Instant::now();
    let summary = train_run(
        &teacher,
        registry::method("ride")?,
        &d.teacher,
        mode,
        progress,
        device,
    )?;
    print_summary(&name, &summary, t0.elapsed().as_secs_f64());
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

fn print_summary(name: &str, s: &FitSummary, wall: f64) {
    let r = &s.test.report;
    // Training speed of the epochs this process trained (none when it resumed a finished run).
    let speed = if s.timing.is_empty() {
        String::new()
    } else {
        let mean = s.timing.iter().map(|t| t.images_per_sec).sum::<f64>() / s.timing.len() as f64;
        format!("{mean:.0} train img/s; ")
    };
    println!(
        "{name}: test {}% (many {} / medium {} / few {}) after {} epochs; {speed}{:.0}s",
        pct(Some(r.accuracy)),
        pct(r.many),
        pct(r.medium),
        pct(r.few),
        s.history.last().map_or(0, |h| h.epoch),
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

/// `train --backbone …` as `heads --backbone …`: the preset (or `<method>.<dataset>`), data and
/// optimisation flags carry over; the head options keep their defaults.
fn heads_args(args: &Args, backbone: &str) -> super::heads::Args {
    let preset = args.preset.clone().unwrap_or_else(|| {
        format!(
            "{}.{}",
            args.method.as_deref().unwrap_or("ride"),
            args.dataset.as_deref().unwrap_or("fmnist-lt")
        )
    });
    super::heads::Args {
        backbone: Some(backbone.to_string()),
        preset: Some(preset),
        dataset: None,
        data_dir: args.data_dir.clone(),
        recipe: args.recipe.clone(),
        classifier: None,
        adapter: None,
        no_standardize: false,
        features: "pooled".into(),
        cache_dir: "runs/feature-cache".into(),
        extract_batch: 64,
        out: args.out.clone(),
        test_time: false,
        quiet: args.quiet,
        device: args.device.clone(),
    }
}

/// `--pretrained`: resolves the reference (downloading an `hf://` file into the Hub cache) and
/// returns the loader that copies the torchvision trunk into a new run's network
/// (`longtail_hub::load_torchvision_file`).
fn pretrained_init(reference: &str, cfg: &RunConfig) -> Result<TrunkInit<'static>> {
    use longtail::hub::reference::{resolve, CheckpointRef};
    let path = match CheckpointRef::parse(reference)? {
        CheckpointRef::Local(p) => p,
        hub => resolve(&hub)?,
    };
    if !path.is_file() {
        bail!(
            "--pretrained {reference}: {} is not a file (a torchvision ResNet state dict as safetensors)",
            path.display()
        );
    }
    let model = cfg.model.clone();
    let source = reference.to_string();
    Ok(TrunkInit {
        source: source.clone(),
        load: Box::new(move |varmap| {
            let report = longtail::hub::load_torchvision_file(varmap, &model, &path)
                .map_err(|e| TrainError::Config(format!("--pretrained {source}: {e}")))?;
            eprintln!(
                "pretrained trunk {source}: {} tensors loaded, {} classifier tensors kept, {} skipped (fc, num_batches_tracked)",
                report.loaded.len(),
                report.kept.len(),
                report.skipped.len()
            );
            Ok(())
        }),
    })
}
