//! `longtail compare`: several methods on the same data over several seeds, as one table.
//!
//! Each entry is a preset (or a run config file), optionally followed by a second stage applied
//! to its finished run (`ce.fmnist-lt+crt`, see `longtail decouple`). Every (entry, seed) trains
//! into `OUT/<entry>/seed-<s>/`; a finished run is read back instead of trained again and a
//! killed one is resumed, so the command can be re-run (or extended with more entries or seeds)
//! at the cost of the new runs only. Model selection never looks at the test set: each run's
//! model is its last epoch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use longtail::decouple::{Stage, StageOptions};
use longtail::registry::{self, preset};
use longtail::train::device::device_announced;
use longtail::train::eval::Evaluation;
use longtail::train::{train_run, OutMode, Progress, RunConfig};
use serde::Serialize;

/// Arguments of `longtail compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Entries: `PRESET` or `CONFIG.toml`, optionally `+STAGE` (a second stage on its finished
    /// run: crt, lws, tau-norm, la, wb; see `longtail decouple`). Default: every method's preset
    /// of --dataset and the second stages of the CE and weight-balancing runs.
    pub entries: Vec<String>,
    /// Data set of the default entries (their presets are `<method>.<dataset>`).
    #[arg(long, default_value = "fmnist-lt")]
    pub dataset: String,
    /// Seeds (comma-separated); each entry is trained once per seed.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1, 2])]
    pub seeds: Vec<u64>,
    /// Folder of the runs and of the table files (compare.csv, compare.json, per_class.png).
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    /// Directory of the data files, for presets that read files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Epochs of every entry instead of its preset's (a quicker, shorter comparison).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Compute device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print no per-epoch progress (the per-run lines and the table are still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// One entry of the comparison: a run config and the second stage applied to its runs.
#[derive(Clone, Debug)]
pub struct Entry {
    /// As written on the command line (the table's row label and the run folder's name).
    pub name: String,
    /// The run config (seed set per run).
    pub config: RunConfig,
    /// The second stage, if any.
    pub stage: Option<String>,
}

/// The measured numbers of one (entry, seed).
#[derive(Clone, Debug, Serialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The run folder.
    pub run: PathBuf,
    /// Overall top-1 (micro), in [0, 1].
    pub overall: f64,
    /// Many-shot accuracy (mean per class), `None` for an empty group.
    pub many: Option<f64>,
    /// Medium-shot accuracy.
    pub medium: Option<f64>,
    /// Few-shot accuracy.
    pub few: Option<f64>,
    /// Expected calibration error of the prediction's softmax confidence (15 bins).
    pub ece: f64,
    /// Accuracy of each class (`None` for a class without test images).
    pub per_class: Vec<Option<f64>>,
    /// Seconds this command spent on this run (training, stage and evaluation).
    pub seconds: f64,
    /// Whether the run was already finished and only read back.
    pub reused: bool,
}

/// Mean and sample standard deviation (n − 1; 0 for one seed) of one column.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct MeanStd {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds.
    pub std: f64,
}

impl MeanStd {
    /// Of the values; `None` when there are none (an empty shot group in every seed).
    pub fn of(values: &[f64]) -> Option<MeanStd> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = if values.len() < 2 {
            0.0
        } else {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Some(MeanStd { mean, std })
    }
}

/// The table's columns.
pub const COLUMNS: [&str; 5] = ["overall", "many", "medium", "few", "ece"];

/// One row of the table: an entry over its seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The entry's name.
    pub name: String,
    /// Its method (`[method] name`).
    pub method: String,
    /// Its second stage, if any.
    pub stage: Option<String>,
    /// One result per seed.
    pub seeds: Vec<SeedResult>,
    /// Mean ± std per column of [`COLUMNS`], in that order.
    pub summary: Vec<Option<MeanStd>>,
}

impl Row {
    fn new(entry: &Entry, seeds: Vec<SeedResult>) -> Row {
        let column = |f: &dyn Fn(&SeedResult) -> Option<f64>| {
            MeanStd::of(&seeds.iter().filter_map(f).collect::<Vec<_>>())
        };
        let summary = vec![
            column(&|s| Some(s.overall)),
            column(&|s| s.many),
            column(&|s| s.medium),
            column(&|s| s.few),
            column(&|s| Some(s.ece)),
        ];
        Row {
            name: entry.name.clone(),
            method: entry.config.method.name.clone(),
            stage: entry.stage.clone(),
            seeds,
            summary,
        }
    }
}

/// For each column, the rows with the best mean (highest accuracy, lowest ECE; ties all marked,
/// none when the column has no values).
pub fn best_rows(rows: &[Row]) -> Vec<Vec<usize>> {
    (0..COLUMNS.len())
        .map(|c| {
            let sign = if COLUMNS[c] == "ece" { -1.0 } else { 1.0 };
            let means: Vec<(usize, f64)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.summary[c].map(|m| (i, sign * m.mean)))
                .collect();
            let best = means.iter().map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
            means
                .iter()
                .filter(|m| m.1 >= best - 1e-12)
                .map(|m| m.0)
                .collect()
        })
        .collect()
}

/// The second stages of the default entries: the decoupling family on the CE run, and weight
/// balancing's own second stage on its first-stage run.
pub const DEFAULT_STAGES: [(&str, &str); 5] = [
    ("ce", "crt"),
    ("ce", "lws"),
    ("ce", "tau-norm"),
    ("ce", "la"),
    ("wb", "wb"),
];

/// The default entries for a data set: every method's `<method>.<dataset>` preset, then
/// [`DEFAULT_STAGES`] on the runs of those presets.
pub fn default_entries(dataset: &str) -> Vec<String> {
    // `<method>.<dataset>` resolves to the method's first preset of the data set.
    let first = |method: &str| preset(&format!("{method}.{dataset}")).ok()?.preset;
    let mut out: Vec<String> = registry::METHODS
        .iter()
        .filter_map(|m| first(m.name()))
        .collect();
    for (method, stage) in DEFAULT_STAGES {
        if let Some(p) = first(method) {
            out.push(format!("{p}+{stage}"));
        }
    }
    out
}

/// Parses an entry (`PRESET|FILE.toml[+STAGE]`) into its config; reads no data.
pub fn parse_entry(text: &str) -> Result<Entry> {
    let (base, stage) = match text.split_once('+') {
        Some((b, s)) if !s.is_empty() => (b, Some(s.to_string())),
        Some(_) => bail!("entry `{text}`: nothing after `+` (expected a stage such as crt)"),
        None => (text, None),
    };
    let config = if base.ends_with(".toml") {
        let text = std::fs::read_to_string(base).with_context(|| format!("cannot read {base}"))?;
        RunConfig::from_toml(&text).with_context(|| format!("in {base}"))?
    } else {
        preset(base)?
    };
    if let Some(s) = &stage {
        check_stage(s).with_context(|| format!("entry `{text}`"))?;
    }
    Ok(Entry {
        name: text.to_string(),
        config,
        stage,
    })
}

/// Parses a second stage's name (see [`longtail::decouple::Stage`]) before anything is trained.
fn check_stage(stage: &str) -> Result<Stage> {
    Ok(stage.parse::<Stage>()?)
}

/// Applies a second stage to a finished run (with the stage's own recipe and the run's seed) and
/// returns the re-balanced model's test evaluation and whether it was read back (a stage already
/// applied to the same weights is).
fn apply_stage(
    run: &Path,
    stage: &str,
    device: &candle_core::Device,
) -> Result<(Evaluation, bool)> {
    let stage = check_stage(stage)?;
    let r = longtail::decouple::apply(run, &stage, &StageOptions::default(), device)?;
    Ok((r.test, r.reused))
}

/// The folder name of an entry: its text with path separators and `+` made safe.
fn folder_name(entry: &str) -> String {
    let base = Path::new(entry.split('+').next().unwrap_or(entry))
        .file_name()
        .map_or_else(|| entry.to_string(), |f| f.to_string_lossy().into_owned());
    base.trim_end_matches(".toml").to_string()
}

/// The numbers of one evaluation.
fn measure(
    eval: &Evaluation,
    seed: u64,
    run: &Path,
    seconds: f64,
    reused: bool,
) -> Result<SeedResult> {
    let predictions = eval.predictions();
    let correct: Vec<bool> = predictions
        .iter()
        .zip(&eval.labels)
        .map(|(p, l)| p == l)
        .collect();
    let ece = longtail_metrics::uncertainty::ece15(&eval.confidences(), &correct)?;
    let r = &eval.report;
    Ok(SeedResult {
        seed,
        run: run.to_path_buf(),
        overall: r.accuracy,
        many: r.many,
        medium: r.medium,
        few: r.few,
        ece,
        per_class: r.per_class.clone(),
        seconds,
        reused,
    })
}

/// Run `longtail compare`.
pub fn run(args: Args) -> Result<()> {
    if args.seeds.is_empty() {
        bail!("--seeds lists no seed");
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(s) = args.seeds.iter().find(|s| !seen.insert(**s)) {
        bail!("--seeds lists seed {s} twice");
    }
    let texts = if args.entries.is_empty() {
        let d = default_entries(&args.dataset);
        if d.is_empty() {
            bail!(
                "no method has a preset for the data set `{}`; name the entries",
                args.dataset
            );
        }
        d
    } else {
        args.entries.clone()
    };
    // Every entry is resolved and checked before anything trains.
    let mut entries = Vec::new();
    for t in &texts {
        let mut e = parse_entry(t)?;
        if let Some(d) = &args.data_dir {
            e.config.data.data_dir = Some(d.clone());
        }
        if !t.split('+').next().unwrap_or(t).ends_with(".toml") {
            // A preset that reads lists takes its class count from them, as in `train`.
            registry::size_to_lists(&mut e.config).with_context(|| format!("entry `{t}`"))?;
        }
        if let Some(n) = args.epochs {
            e.config.optim.epochs = n;
        }
        registry::check(&e.config).with_context(|| format!("entry `{t}`"))?;
        entries.push(e);
    }
    // Entries sharing a folder (`P` and `P+crt`) share its runs, so they must be one config.
    let mut folders: std::collections::BTreeMap<String, &Entry> = Default::default();
    let mut names = std::collections::BTreeSet::new();
    for e in &entries {
        if !names.insert(&e.name) {
            bail!("entry `{}` is listed twice", e.name);
        }
        match folders.get(&folder_name(&e.name)) {
            Some(other) if other.config != e.config => bail!(
                "entries `{}` and `{}` would train different configs into the same folder {}",
                other.name,
                e.name,
                args.out.join(folder_name(&e.name)).display()
            ),
            Some(_) => {}
            None => {
                folders.insert(folder_name(&e.name), e);
            }
        }
    }
    let device = device_announced(&args.device)?;
    let progress = if args.quiet {
        Progress::Quiet
    } else {
        Progress::Auto
    };
    let t0 = Instant::now();
    let mut rows = Vec::new();
    for e in &entries {
        let method = registry::method(&e.config.method.name)?;
        let mut results = Vec::new();
        for &seed in &args.seeds {
            let mut cfg = e.config.clone();
            cfg.seed = seed;
            let run = args
                .out
                .join(folder_name(&e.name))
                .join(format!("seed-{seed}"));
            let t = Instant::now();
            let last = run.join(longtail::train::trainer::LAST);
            let mode = if last.exists() {
                OutMode::Resume
            } else {
                OutMode::New
            };
            let summary = train_run(&cfg, method, &run, mode, progress, &device)
                .with_context(|| format!("{} (seed {seed}) in {}", e.name, run.display()))?;
            let trained_before = summary.resumed_from >= cfg.optim.epochs;
            let (eval, reused) = match &e.stage {
                None => (summary.test, trained_before),
                Some(stage) => {
                    let (eval, stage_reused) =
                        apply_stage(&run, stage, &device).with_context(|| {
                            format!("{} (seed {seed}) in {}", e.name, run.display())
                        })?;
                    (eval, trained_before && stage_reused)
                }
            };
            let r = measure(&eval, seed, &run, t.elapsed().as_secs_f64(), reused)?;
            eprintln!(
                "{} seed {seed}: {:.2}% (many {} / medium {} / few {}), ECE {:.2}%{}; {:.0}s",
                e.name,
                100.0 * r.overall,
                pct(r.many),
                pct(r.medium),
                pct(r.few),
                100.0 * r.ece,
                if reused { ", already trained" } else { "" },
                r.seconds
            );
            results.push(r);
        }
        rows.push(Row::new(e, results));
    }
    let wall = t0.elapsed().as_secs_f64();
    let table = render_table(&rows, &args.seeds);
    println!("{table}");
    println!(
        "{} entries × {} seeds in {:.0} s; model of each run: its last epoch",
        rows.len(),
        args.seeds.len(),
        wall
    );
    let plotted = write_outputs(&args.out, &rows, &args.seeds, wall, &entries)?;
    let csv = args.out.join("compare.csv");
    let json = args.out.join("compare.json");
    if plotted {
        println!(
            "wrote {}, {} and {}",
            csv.display(),
            json.display(),
            args.out.join("per_class.png").display()
        );
    } else {
        println!(
            "wrote {} and {} (no per_class.png: the entries do not share one data config)",
            csv.display(),
            json.display()
        );
    }
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

/// The table as text: mean ± std (%) per column, `*` on the best of each column.
pub fn render_table(rows: &[Row], seeds: &[u64]) -> String {
    let best = best_rows(rows);
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    let seeds_text: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let mut out = format!(
        "test accuracy and ECE (%), mean ± std over seeds {}; * = best of the column\n",
        seeds_text.join(", ")
    );
    out.push_str(&format!("{:<width$}", "entry"));
    for c in COLUMNS {
        out.push_str(&format!(" {c:>15}"));
    }
    out.push('\n');
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&format!("{:<width$}", r.name));
        for (c, m) in r.summary.iter().enumerate() {
            let cell = match m {
                None => "-".to_string(),
                Some(m) => format!(
                    "{:.2} ± {:.2}{}",
                    100.0 * m.mean,
                    100.0 * m.std,
                    if best[c].contains(&i) { "*" } else { " " }
                ),
            };
            out.push_str(&format!(" {cell:>15}"));
        }
        out.push('\n');
    }
    out
}

/// What compare.json holds.
#[derive(Serialize)]
struct Report<'a> {
    seeds: &'a [u64],
    wall_seconds: f64,
    columns: [&'static str; 5],
    rows: &'a [Row],
    best: Vec<Vec<String>>,
    class_counts: Vec<usize>,
}

fn write_outputs(
    out: &Path,
    rows: &[Row],
    seeds: &[u64],
    wall: f64,
    entries: &[Entry],
) -> Result<bool> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let best = best_rows(rows);
    let mut csv = String::from("entry,method,stage,seeds");
    for c in COLUMNS {
        csv.push_str(&format!(",{c}_mean,{c}_std"));
    }
    csv.push('\n');
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{}",
            r.name,
            r.method,
            r.stage.as_deref().unwrap_or(""),
            r.seeds.len()
        ));
        for m in &r.summary {
            match m {
                Some(m) => csv.push_str(&format!(",{:.6},{:.6}", m.mean, m.std)),
                None => csv.push_str(",,"),
            }
        }
        csv.push('\n');
    }
    let write = |name: &str, bytes: &[u8]| {
        longtail::train::checkpoint::write_atomic(&out.join(name), bytes)
            .with_context(|| format!("cannot write {}", out.join(name).display()))
    };
    write("compare.csv", csv.as_bytes())?;
    // Class sizes of the first entry's training set (read back from its first run).
    let class_counts = rows
        .first()
        .and_then(|r| r.seeds.first())
        .map(|s| training_counts(&s.run))
        .transpose()?
        .unwrap_or_default();
    let report = Report {
        seeds,
        wall_seconds: wall,
        columns: COLUMNS,
        rows,
        best: best
            .iter()
            .map(|b| b.iter().map(|&i| rows[i].name.clone()).collect())
            .collect(),
        class_counts: class_counts.clone(),
    };
    write(
        "compare.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    // One plot of accuracy against class size needs one set of classes: the same data set,
    // subset and split (augmentation and sampler do not change the class sizes).
    let classes_of = |e: &Entry| {
        let d = &e.config.data;
        (
            d.dataset.clone(),
            d.data_dir.clone(),
            d.imbalance.to_bits(),
            d.val_fraction.map(f64::to_bits),
            d.val_list,
        )
    };
    let same_data = entries
        .iter()
        .all(|e| classes_of(e) == classes_of(&entries[0]));
    if same_data && !class_counts.is_empty() {
        crate::plots::compare::write_png(rows, &class_counts, &out.join("per_class.png"))?;
        return Ok(true);
    }
    Ok(false)
}

/// The training class counts stored in a run's last checkpoint.
fn training_counts(run: &Path) -> Result<Vec<usize>> {
    let path = run.join(longtail::train::trainer::LAST);
    let header = longtail::train::checkpoint::read_header(&path)?;
    let text = header
        .metadata
        .get("class_counts")
        .with_context(|| format!("{} holds no class counts", path.display()))?;
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, overall: &[f64], ece: &[f64]) -> Row {
        let seeds = overall
            .iter()
            .zip(ece)
            .enumerate()
            .map(|(k, (&o, &e))| SeedResult {
                seed: k as u64,
                run: PathBuf::new(),
                overall: o,
                many: Some(o),
                medium: None,
                few: Some(1.0 - o),
                ece: e,
                per_class: vec![],
                seconds: 0.0,
                reused: false,
            })
            .collect();
        let entry = Entry {
            name: name.into(),
            config: preset("ce.fmnist-lt").unwrap(),
            stage: None,
        };
        Row::new(&entry, seeds)
    }

    #[test]
    fn mean_and_sample_std() {
        let m = MeanStd::of(&[0.5, 0.7, 0.9]).unwrap();
        assert!((m.mean - 0.7).abs() < 1e-12);
        // Sample std: sqrt(((0.2)² + 0 + (0.2)²) / 2) = 0.2.
        assert!((m.std - 0.2).abs() < 1e-12);
        assert_eq!(MeanStd::of(&[0.3]).unwrap().std, 0.0);
        assert!(MeanStd::of(&[]).is_none());
    }

    #[test]
    fn best_is_highest_accuracy_and_lowest_ece() {
        let rows = vec![
            row("a", &[0.6, 0.8], &[0.05, 0.07]),
            row("b", &[0.75, 0.75], &[0.10, 0.12]),
        ];
        let best = best_rows(&rows);
        // overall: a 0.70 vs b 0.75 → b; many same; medium empty everywhere; few: a 0.30 vs
        // b 0.25 → a; ece: a 0.06 vs b 0.11 → a.
        assert_eq!(best, vec![vec![1], vec![1], vec![], vec![0], vec![0]]);
        // Ties are all marked.
        let tied = vec![row("a", &[0.5], &[0.1]), row("b", &[0.5], &[0.2])];
        assert_eq!(best_rows(&tied)[0], vec![0, 1]);
        let table = render_table(&rows, &[0, 1]);
        assert!(table.contains("75.00 ± 0.00*"), "{table}");
        assert!(table.contains("70.00 ± 14.14 "), "{table}");
        assert!(table.contains("6.00 ± 1.41*"), "{table}");
    }

    #[test]
    fn entries_parse_and_folders_are_safe() {
        assert!(parse_entry("ce.fmnist-lt").unwrap().stage.is_none());
        assert!(parse_entry("no-such.preset").is_err());
        assert!(parse_entry("ce.fmnist-lt+").is_err());
        assert_eq!(folder_name("ce.fmnist-lt+crt"), "ce.fmnist-lt");
        assert_eq!(folder_name("/tmp/x/my.toml"), "my");
        let defaults = default_entries("fmnist-lt");
        for e in [
            "ride.fmnist-lt",
            "ce.fmnist-lt",
            "ce.fmnist-lt+crt",
            "wb.fmnist-lt+wb",
        ] {
            assert!(defaults.contains(&e.to_string()), "{defaults:?}");
        }
        assert!(parse_entry("ce.fmnist-lt+crt").unwrap().stage.is_some());
        assert!(parse_entry("ce.fmnist-lt+nosuch").is_err());
        assert!(default_entries("no-such-data").is_empty());
    }
}
