//! `longtail bench train`: training-step throughput on this CPU, our kernels vs candle's stock
//! ops, with GFLOP/s, the fraction of the machine's measured GEMM peak and peak memory.
//! `longtail bench data`: the streamed input pipeline (JPEG decode + augmentation + batching),
//! images per second and peak RSS, next to PyTorch's `DataLoader` on the same files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use longtail::backbone::Kernels;
use longtail::data::{
    load_benchmark, load_image_lists_streamed, Augment, Batcher, BatcherConfig, DatasetName,
    SamplerKind, StreamOptions, Transform,
};
use longtail::registry;
use longtail::train::bench::{measure, models, Measurement, Settings};

/// What to benchmark.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum What {
    /// One training step (forward + loss + backward + SGD) and the eval forward.
    Train,
    /// The streamed input pipeline: JPEG files → decoded, augmented, normalised batches.
    Data,
}

/// Arguments of `longtail bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The benchmark to run.
    #[arg(value_enum)]
    pub what: What,
    /// Models, comma-separated: resnet32, ride3.
    #[arg(long, default_value = "resnet32,ride3", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Timed steps with our kernels, after one warm-up step (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Timed steps with candle's stock ops (about 8x slower; 0 skips them and the ratio).
    #[arg(long, default_value_t = 2)]
    pub stock_steps: usize,
    /// Timed eval forwards per model and kernel choice.
    #[arg(long, default_value_t = 5)]
    pub eval_reps: usize,
    /// `bench data`: the layout of --data-dir: image-list (train.txt / NAME_train.txt …),
    /// imagenet-lt, inat2018 or places-lt. Its training list is read.
    #[arg(long, default_value = "image-list")]
    pub dataset: String,
    /// `bench data`: the image root holding the lists (`longtail data --make-tree` writes one).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `bench data`: images to time (after one warm-up batch); 0 for the whole training list.
    #[arg(long, default_value_t = 2048)]
    pub images: usize,
    /// `bench data`: crop side.
    #[arg(long, default_value_t = 224)]
    pub side: usize,
    /// `bench data`: worker threads (default: rayon's, RAYON_NUM_THREADS or the cores); the
    /// PyTorch reference gets as many DataLoader workers and one torch thread each.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Skip the PyTorch reference (`bench train` and `bench data`).
    #[arg(long)]
    pub no_torch: bool,
    /// `bench train`: the Python whose torch runs the same step (default: python3 when it
    /// imports torch); it runs `scripts/bench_train_torch.py`.
    #[arg(long, value_name = "PYTHON", conflicts_with = "no_torch")]
    pub torch: Option<String>,
    /// `bench train`: rounds of ours (and PyTorch, alternating); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Run `longtail bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let What::Data = args.what {
        return run_data(&args);
    }
    if args.batch < 2 || args.steps == 0 {
        bail!("--batch must be at least 2 and --steps at least 1");
    }
    let known = models();
    let mut chosen = vec![];
    for name in &args.models {
        match known.iter().find(|m| m.name == name.trim()) {
            Some(m) => chosen.push(m.clone()),
            None => bail!(
                "unknown model `{name}` for --models (known: {})",
                known.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    let settings = Settings {
        batch: args.batch,
        steps: args.steps,
        eval_reps: args.eval_reps,
    };
    let rounds = args.rounds.max(1);
    let threads = rayon::current_num_threads();
    let torch = torch_python(&args)?;
    // 15 products of ~10 ms: a single one swings by ±15 % on a shared VM.
    let peak = longtail_kernels::gemm_peak_gflops(1024, 15);
    println!(
        "longtail bench train: {threads} threads, batch {} of 3x32x32, 100 classes; median of {} steps (ours{}) / {} (stock) after 1 warm-up; {rounds} round(s){}",
        args.batch,
        args.steps,
        if torch.is_some() { ", pytorch" } else { "" },
        args.stock_steps,
        if torch.is_some() { ", ours and pytorch alternating" } else { "" },
    );
    println!("cpu: {}", cpu_model().unwrap_or_else(|| "unknown".into()));
    let isa = match longtail_kernels::isa() {
        longtail_kernels::Isa::Scalar => "off (scalar: im2col + gemm only)".to_string(),
        isa => isa.to_string(),
    };
    println!(
        "simd: our direct 3x3 conv kernels {isa} (best on this cpu: {}; LONGTAIL_ISA=avx2|scalar caps it); gemm crate: its own run-time choice, AVX2+FMA at best (built without x86-v4)",
        longtail_kernels::Isa::detected()
    );
    println!(
        "allocator: {}",
        if longtail_kernels::allocator_tuned() {
            "glibc tuned for training (longtail_kernels::tune_allocator)"
        } else {
            "defaults (LONGTAIL_DEFAULT_MALLOC is set, or not glibc)"
        }
    );
    println!("GEMM 1024^3 f32 (gemm crate, {threads} threads): {peak:.1} GFLOP/s = the peak below");
    println!(
        "{:<9} {:<8} {:>9} {:>8} {:>8} {:>11} {:>9} {:>6} {:>10} {:>13}",
        "model",
        "ops",
        "MMAC/img",
        "fwd s",
        "step s",
        "train img/s",
        "GFLOP/s",
        "%peak",
        "eval img/s",
        "train RSS MiB"
    );
    for model in &chosen {
        let cfg = registry::preset(model.preset)?;
        let method = registry::method(&cfg.method.name)?;
        let case = torch_case(model, &cfg, args.batch);
        let (mut ours, mut theirs) = (vec![], vec![]);
        // The last round's losses, checked against the stock ops' below.
        let mut our_losses = vec![];
        for _ in 0..rounds {
            let m = measure(model, cfg.clone(), method, Kernels::Fast, &settings)?;
            our_losses = m.losses.clone();
            ours.push(Row::of(&m));
            if let Some(py) = &torch {
                let macs = ours.last().map_or(0, |r: &Row| r.macs);
                theirs.push(run_torch(py, &case, threads, &args, macs)?);
            }
        }
        let mut rows = vec![("ours", Row::median(&ours))];
        if !theirs.is_empty() {
            rows.push(("pytorch", Row::median(&theirs)));
        }
        let mut stock_losses = None;
        if args.stock_steps > 0 {
            let m = measure(
                model,
                cfg.clone(),
                method,
                Kernels::Stock,
                &Settings {
                    steps: args.stock_steps,
                    ..settings.clone()
                },
            )?;
            stock_losses = Some(m.losses.clone());
            rows.push(("stock", Row::of(&m)));
        }
        for (label, r) in &rows {
            let gflops = 6.0 * r.macs as f64 * r.train_img_s / 1e9;
            println!(
                "{:<9} {:<8} {:>9.1} {:>8.3} {:>8.3} {:>11.1} {:>9.1} {:>5.0}% {:>10.1} {:>13}",
                model.name,
                label,
                r.macs as f64 / 1e6,
                r.forward_s,
                r.step_s,
                r.train_img_s,
                gflops,
                gflops / peak * 100.0,
                r.eval_img_s,
                r.rss_mib.map_or("n/a".into(), |v| format!("{v:.0}")),
            );
        }
        if rounds > 1 {
            let list = |v: &[Row]| {
                v.iter()
                    .map(|r| format!("{:.1}", r.train_img_s))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let mut line = format!(
                "{:<9} train img/s by round: ours {}",
                model.name,
                list(&ours)
            );
            if !theirs.is_empty() {
                line += &format!(" | pytorch {}", list(&theirs));
            }
            println!("{line}");
        }
        let ours_row = &rows[0].1;
        for (label, r) in &rows[1..] {
            println!(
                "{:<9} ours/{label}: train {:.2}x, eval {:.2}x, peak RSS {}",
                model.name,
                ours_row.train_img_s / r.train_img_s,
                ours_row.eval_img_s / r.eval_img_s,
                match (ours_row.rss_mib, r.rss_mib) {
                    (Some(a), Some(b)) => format!("{:.2}x", a / b),
                    _ => "n/a".into(),
                }
            );
        }
        if let Some(stock) = stock_losses {
            let n = our_losses.len().min(stock.len());
            let drift = our_losses[..n]
                .iter()
                .zip(&stock[..n])
                .map(|(a, b)| ((a - b) / b.abs().max(1e-6)).abs())
                .fold(0f32, f32::max);
            println!(
                "{:<9} losses ours {:.4?} vs stock {:.4?} (max rel. diff {drift:.1e})",
                model.name,
                &our_losses[..n],
                &stock[..n],
            );
        }
    }
    Ok(())
}

/// One side's figures for one model (ours, stock or PyTorch).
#[derive(Clone, Debug)]
struct Row {
    macs: u64,
    forward_s: f64,
    step_s: f64,
    train_img_s: f64,
    eval_img_s: f64,
    rss_mib: Option<f64>,
}

impl Row {
    fn of(m: &Measurement) -> Row {
        Row {
            macs: m.macs,
            forward_s: m.forward_s,
            step_s: m.step_s,
            train_img_s: m.train_img_s,
            eval_img_s: m.eval_img_s,
            rss_mib: m.train_peak_mib,
        }
    }

    /// Per-figure medians over rounds; the peak RSS is the largest.
    fn median(rows: &[Row]) -> Row {
        let med = |f: fn(&Row) -> f64| {
            let mut v: Vec<f64> = rows.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Row {
            macs: rows[0].macs,
            forward_s: med(|r| r.forward_s),
            step_s: med(|r| r.step_s),
            train_img_s: med(|r| r.train_img_s),
            eval_img_s: med(|r| r.eval_img_s),
            rss_mib: rows.iter().filter_map(|r| r.rss_mib).reduce(f64::max),
        }
    }
}

/// The CPU's model name (`/proc/cpuinfo`), for the record: ratios depend on it.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The Python that runs the PyTorch reference: `--torch PYTHON` (which must import torch), else
/// `python3` when it imports torch; None with a note when there is none or `--no-torch`.
fn torch_python(args: &Args) -> anyhow::Result<Option<String>> {
    if args.no_torch {
        return Ok(None);
    }
    let imports = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match &args.torch {
        Some(py) if imports(py) => Ok(Some(py.clone())),
        Some(py) => bail!("--torch {py}: that Python cannot import torch (pip install torch into it, or drop --torch)"),
        None if imports("python3") => Ok(Some("python3".into())),
        None => {
            println!("pytorch: skipped (python3 cannot import torch; pass --torch PYTHON for a Python that can, or pip install torch)");
            Ok(None)
        }
    }
}

/// The model as `scripts/torch_models.py` rebuilds it.
fn torch_case(
    model: &longtail::train::bench::Model,
    cfg: &longtail::train::RunConfig,
    batch: usize,
) -> String {
    let mut case = longtail::train::bench::torch_model_fields(cfg, model.experts);
    case.insert("model".into(), model.name.into());
    case.insert("classes".into(), 100.into());
    case.insert("batch".into(), batch.into());
    case.insert("size".into(), 32.into());
    serde_json::Value::Object(case).to_string()
}

/// One PyTorch measurement of `case` through `scripts/bench_train_torch.py`.
/// `macs` is the model's forward multiply-adds per image (the same network as ours).
fn run_torch(py: &str, case: &str, threads: usize, args: &Args, macs: u64) -> anyhow::Result<Row> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_train_torch.py");
    let mut cmd = std::process::Command::new(py);
    if longtail_kernels::isa() == longtail_kernels::Isa::Avx2 {
        // LONGTAIL_ISA=avx2 stands for a CPU without AVX-512: cap PyTorch the same way (oneDNN's
        // kernels and ATen's vectorised loops), or the ratio would compare two different CPUs.
        // The user's own settings win.
        for (var, value) in [
            ("ONEDNN_MAX_CPU_ISA", "AVX2"),
            ("ATEN_CPU_CAPABILITY", "avx2"),
        ] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, value);
            }
        }
    }
    let out = cmd
        .arg(&script)
        .args(["--case", case])
        .args(["--threads", &threads.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--eval-reps", &args.eval_reps.to_string()])
        .output()
        .with_context(|| format!("running {py} {}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed: {} {}",
            script.display(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("{} printed no result: {}", script.display(), text.trim()))?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{} printed no `{k}`", script.display()))
    };
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        println!(
            "pytorch: torch {} on {} threads, ATen cpu capability {}, ONEDNN_MAX_CPU_ISA {} ({})",
            v["torch"].as_str().unwrap_or("?"),
            v["threads"],
            v["isa"].as_str().unwrap_or("?"),
            v["onednn_max_isa"].as_str().unwrap_or("?"),
            script.display()
        )
    });
    Ok(Row {
        macs,
        forward_s: num("forward_s")?,
        step_s: num("step_s")?,
        train_img_s: num("train_img_s")?,
        eval_img_s: num("eval_img_s")?,
        rss_mib: v["train_peak_mib"].as_f64(),
    })
}

/// This process's `VmRSS` / `VmHWM` (peak) line of /proc/self/status, in MiB.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `longtail bench data`: the training list of --data-dir through the streamed pipeline with
/// the ImageNet-LT training transform (RandomResizedCrop, flip, ColorJitter, normalise), timed
/// end to end (the consumer only drops the batches), then the same through PyTorch.
fn run_data(args: &Args) -> anyhow::Result<()> {
    let Some(dir) = &args.data_dir else {
        bail!("bench data needs --data-dir DIR (an image root with its lists; `longtail data --dataset image-list --data-dir DIR --make-tree` writes a synthetic one)");
    };
    let name: DatasetName = args.dataset.parse()?;
    let splits = if name.is_streamed() {
        load_benchmark(
            name,
            dir,
            StreamOptions {
                side: args.side,
                val_list: false,
            },
        )?
    } else if name == DatasetName::ImageList {
        load_image_lists_streamed(dir, args.side)?
    } else {
        bail!("bench data reads image lists: --dataset image-list, imagenet-lt, inat2018 or places-lt");
    };
    let train = Arc::new(splits.train);
    let threads = args
        .threads
        .unwrap_or_else(rayon::current_num_threads)
        .max(1);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?,
    );
    let images = if args.images == 0 {
        train.len()
    } else {
        args.images.min(train.len())
    };
    let batch = args.batch.clamp(1, images.max(1));
    let norm = name.normalize();
    let cfg = BatcherConfig {
        sampler: SamplerKind::Shuffled,
        transform: Transform::train(Augment::imagenet_lt(args.side), norm),
        batch_size: batch,
        seed: 0,
        epoch: 0,
        prefetch: 2,
    };
    println!(
        "longtail bench data: {} ({} training images, {} classes) from {}; {threads} threads, batch {batch}, prefetch 2; RandomResizedCrop({}) + flip + ColorJitter(0.4, 0.4, 0.4) + normalise",
        name, train.len(), train.num_classes, dir.display(), args.side
    );
    let rss0 = status_mib("VmRSS:");
    let mut batches = Batcher::with_config(
        Arc::clone(&train),
        cfg,
        &candle_core::Device::Cpu,
        Some(pool),
    )?;
    // One warm-up batch (thread start, page cache), then the timed ones.
    let first = batches.next().context("empty epoch")??;
    drop(first);
    let mut done = 0usize;
    let mut rss_max: f64 = 0.0;
    let t0 = Instant::now();
    for b in batches.by_ref() {
        let b = b?;
        done += b.indices.len();
        rss_max = rss_max.max(status_mib("VmRSS:").unwrap_or(0.0));
        if done + batch > images {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(batches);
    let ours = done as f64 / secs.max(1e-9);
    println!(
        "ours:    {done} images in {secs:.2} s = {ours:.1} img/s ({:.1} per thread); RSS {:.0} MiB before, at most {rss_max:.0} MiB while streaming; peak (VmHWM) {:.0} MiB",
        ours / threads as f64,
        rss0.unwrap_or(f64::NAN),
        status_mib("VmHWM:").unwrap_or(f64::NAN),
    );
    if args.no_torch {
        return Ok(());
    }
    let python = args.torch.as_deref().unwrap_or("python3");
    let have_torch = std::process::Command::new(python)
        .args(["-c", "import torch, torchvision"])
        .output()
        .is_ok_and(|o| o.status.success());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_data_torch.py");
    if !have_torch {
        println!("pytorch: skipped ({python} cannot import torch and torchvision; pip install torch torchvision, or pass --torch PYTHON, then run again, or run {} yourself)", script.display());
        return Ok(());
    }
    let paths: Vec<String> = (0..train.len())
        .filter_map(|i| train.image_path(i))
        .map(|p| p.display().to_string())
        .collect();
    let tmp = std::env::temp_dir().join(format!("longtail-bench-data-{}.txt", std::process::id()));
    std::fs::write(&tmp, paths.join("\n")).with_context(|| format!("writing {}", tmp.display()))?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(["--files", &tmp.display().to_string()])
        .args(["--workers", &threads.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--images", &images.to_string()])
        .args(["--side", &args.side.to_string()])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let _ = std::fs::remove_file(&tmp);
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Some(theirs) = text
        .lines()
        .find_map(|l| l.strip_prefix("pytorch img/s: "))
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        println!(
            "ours / pytorch: {:.2}x images per second on the same files and {threads} cores",
            ours / theirs
        );
    }
    Ok(())
}
