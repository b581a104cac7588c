//! `longtail export`: a training run → a folder ready for the Hub: `model.safetensors` (weights
//! and run metadata, no optimizer state), `config.json`, and a `README.md` model card.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use longtail_train::checkpoint::MOMENTUM_PREFIX;
use longtail_train::trainer::{read_history, EpochRecord, METRICS};

use crate::error::{HubError, Result};
use crate::file::{read_checked, to_bytes, write_dir_atomic};
use crate::reference::{checkpoint_file, CARD_FILE, CONFIG_FILE, MODEL_FILE};

/// Test results shown in the model card.
#[derive(Clone, Debug, PartialEq)]
pub struct Results {
    /// Epoch the numbers belong to.
    pub epoch: usize,
    /// Overall top-1 accuracy (0–1).
    pub overall: f64,
    /// Many-shot accuracy (mean per class), when the group has classes.
    pub many: Option<f64>,
    /// Medium-shot accuracy.
    pub medium: Option<f64>,
    /// Few-shot accuracy.
    pub few: Option<f64>,
}

impl From<&EpochRecord> for Results {
    fn from(r: &EpochRecord) -> Self {
        Results {
            epoch: r.epoch,
            overall: r.test_accuracy,
            many: r.many_shot_acc,
            medium: r.medium_shot_acc,
            few: r.few_shot_acc,
        }
    }
}

/// Settings of the model card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardOptions {
    /// SPDX-style license id for the YAML front matter (`apache-2.0`, `mit`, …).
    pub license: String,
    /// `owner/repo` the folder will be uploaded to, for the loading instructions
    /// (`OWNER/REPO` when unknown).
    pub repo_id: Option<String>,
}

impl Default for CardOptions {
    fn default() -> Self {
        CardOptions {
            license: "apache-2.0".into(),
            repo_id: None,
        }
    }
}

/// What [`export_run`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportReport {
    /// The checkpoint that was exported.
    pub source: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// Model tensors written.
    pub tensors: usize,
    /// Optimizer entries left out.
    pub dropped: usize,
    /// The results put in the card (none when the run has no matching `metrics.jsonl` line).
    pub results: Option<Results>,
}

/// The Hub data set id for one of our data set names (the card's `datasets:` list).
pub fn hub_dataset(name: &str) -> &str {
    match name {
        "cifar10-lt" => "cifar10",
        "cifar100-lt" => "cifar100",
        "fmnist-lt" | "fmnist" => "fashion_mnist",
        "imagenet-lt" => "imagenet-1k",
        "places-lt" => "places365",
        other => other,
    }
}

/// `config.json`: the run config (TOML metadata `config`, as JSON) with method, data set, class
/// counts and names, so that tools that read only JSON see what the model is.
pub fn config_json(metadata: &BTreeMap<String, String>) -> Result<serde_json::Value> {
    let bad = |reason: String| HubError::NotARun {
        path: PathBuf::from(MODEL_FILE),
        reason,
    };
    let text = metadata
        .get("config")
        .ok_or_else(|| bad("no run config in the metadata: not a longtail checkpoint".into()))?;
    let config: toml::Value =
        toml::from_str(text).map_err(|e| bad(format!("bad config metadata: {e}")))?;
    let config = serde_json::to_value(config).map_err(|e| bad(e.to_string()))?;
    let json_list = |key: &str| -> Result<serde_json::Value> {
        match metadata.get(key) {
            None => Ok(serde_json::Value::Null),
            Some(s) => {
                serde_json::from_str(s).map_err(|e| bad(format!("bad `{key}` metadata: {e}")))
            }
        }
    };
    Ok(serde_json::json!({
        "library_name": "longtail",
        "format": metadata.get("format"),
        "method": metadata.get("method"),
        "dataset": metadata.get("dataset"),
        "num_classes": config.pointer("/model/num_classes"),
        "num_experts": config.pointer("/model/num_experts"),
        "arch": config.pointer("/model/arch"),
        "class_counts": json_list("class_counts")?,
        "class_names": json_list("class_names")?,
        "epoch": metadata.get("epoch").and_then(|e| e.parse::<usize>().ok()),
        "config": config,
    }))
}

/// A license id for the card's YAML front matter: one word of ASCII letters, digits and
/// `.` `-` `+` `_` (`apache-2.0`, `mit`, `cc-by-nc-4.0`, `other`), the shape of the Hub's ids.
/// Anything else (a newline, `:`, `#`, spaces) would change or break the YAML, so it is refused.
pub fn check_license(license: &str) -> Result<()> {
    let ok = !license.is_empty()
        && license.len() <= 64
        && license
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    if ok {
        return Ok(());
    }
    Err(HubError::BadOption {
        name: "--license",
        value: license.escape_debug().to_string(),
        reason: "a license id is one word of letters, digits, `.`, `-`, `+` or `_` (apache-2.0, mit, cc-by-4.0, other)".into(),
    })
}

/// `s` as a YAML scalar: as is when it is a plain word, else double-quoted with JSON escapes
/// (a JSON string is a valid YAML double-quoted scalar), so metadata from a checkpoint file
/// cannot add lines or keys to the front matter.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

/// The model card: YAML front matter in the Hub's format (`library_name`, `license`, `tags`,
/// `datasets`, `metrics`, `pipeline_tag`), what the model is, a results table (overall /
/// many / medium / few), how to load it with this tool, and the full run config.
pub fn model_card(
    metadata: &BTreeMap<String, String>,
    results: Option<&Results>,
    opts: &CardOptions,
) -> Result<String> {
    check_license(&opts.license)?;
    let json = config_json(metadata)?;
    let method = metadata.get("method").map_or("unknown", String::as_str);
    let dataset = metadata.get("dataset").map_or("unknown", String::as_str);
    let s = |p: &str| {
        json.pointer(p)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .unwrap_or_else(|| "?".into())
    };
    let (arch, experts, classes) = (s("/arch"), s("/num_experts"), s("/num_classes"));
    let repo = opts.repo_id.as_deref().unwrap_or("OWNER/REPO");
    let title = match method {
        "ride" => "RIDE",
        "sade" => "SADE",
        "tlc" => "TLC",
        "ce" => "Cross-entropy baseline",
        m => m,
    };
    let mut c = String::new();
    c.push_str("---\n");
    c.push_str("library_name: longtail\n");
    c.push_str(&format!("license: {}\n", opts.license));
    c.push_str("pipeline_tag: image-classification\n");
    c.push_str("tags:\n- long-tailed\n- image-classification\n");
    c.push_str(&format!("- {}\n", yaml_scalar(method)));
    if experts != "1" {
        c.push_str("- mixture-of-experts\n");
    }
    c.push_str(&format!(
        "datasets:\n- {}\nmetrics:\n- accuracy\n",
        yaml_scalar(hub_dataset(dataset))
    ));
    c.push_str("---\n\n");
    c.push_str(&format!("# {title} on {dataset}\n\n"));
    c.push_str(&format!(
        "A long-tailed image classifier trained with `longtail` (Rust, candle): \
         method `{method}`, backbone `{arch}` with {experts} expert(s), {classes} classes, \
         data set `{dataset}`.\n\n"
    ));
    if let Some(src) = metadata.get("source") {
        c.push_str(&format!("Source: {src}.\n\n"));
    }
    c.push_str("## Results\n\n");
    match results {
        Some(r) => {
            c.push_str(&format!(
                "Top-1 accuracy (%) on the test split after epoch {}; many-shot classes have more than 100 \
                 training images, medium-shot 20–100, few-shot fewer than 20.\n\n",
                r.epoch
            ));
            c.push_str("| split | overall | many-shot | medium-shot | few-shot |\n");
            c.push_str("|---|---:|---:|---:|---:|\n");
            c.push_str(&format!(
                "| test | {} | {} | {} | {} |\n\n",
                pct(Some(r.overall)),
                pct(r.many),
                pct(r.medium),
                pct(r.few)
            ));
        }
        None => c.push_str(
            "Not evaluated by this tool yet: run `longtail eval --checkpoint` on this folder.\n\n",
        ),
    }
    c.push_str("## How to use\n\n");
    c.push_str("```sh\n");
    c.push_str(&format!("# from the Hub (cached under HF_HOME; HF_HUB_OFFLINE=1 reads the cache only)\nlongtail pull hf://{repo}\nlongtail eval --checkpoint hf://{repo}\n"));
    c.push_str(
        "# from a local copy of this folder\nlongtail eval --checkpoint path/to/this/folder\n",
    );
    c.push_str("```\n\n");
    c.push_str(&format!(
        "`{MODEL_FILE}` holds the weights under the official state-dict names, and the run config, method, \
         class counts and class names in its metadata; `{CONFIG_FILE}` holds the same as JSON.\n\n"
    ));
    if let Some(cfg) = metadata.get("config") {
        c.push_str("## Training config\n\n```toml\n");
        c.push_str(cfg.trim_end());
        c.push_str("\n```\n");
    }
    Ok(c)
}

/// Writes a model folder atomically ([`write_dir_atomic`]): `model.safetensors` from `tensors`
/// and `metadata`, `config.json`, `README.md`.
pub fn write_model_dir(
    out: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    results: Option<&Results>,
    opts: &CardOptions,
) -> Result<()> {
    let card = model_card(metadata, results, opts)?;
    let json =
        serde_json::to_vec_pretty(&config_json(metadata)?).map_err(|e| HubError::NotARun {
            path: out.to_path_buf(),
            reason: e.to_string(),
        })?;
    let weights = to_bytes(tensors, metadata)?;
    write_dir_atomic(
        out,
        &[
            (MODEL_FILE, weights),
            (CONFIG_FILE, json),
            (CARD_FILE, card.into_bytes()),
        ],
    )
}

/// Exports a run directory (its `last.safetensors`) or a checkpoint file to `out`.
///
/// The optimizer's momentum buffers are left out; the metadata is kept as is. The card's
/// results come from the run's `metrics.jsonl` line of the checkpoint's epoch (for a run
/// directory, the last line). Nothing is written if the checkpoint is invalid or `out` is not
/// empty.
pub fn export_run(run: &Path, out: &Path, opts: &CardOptions) -> Result<ExportReport> {
    let source = checkpoint_file(run)?;
    let file = read_checked(&source, &Device::Cpu)?;
    if !file.metadata.contains_key("config") {
        return Err(HubError::NotARun {
            path: source,
            reason: "no run config in its metadata: not a longtail checkpoint (import official weights with `longtail import`)".into(),
        });
    }
    let mut tensors = BTreeMap::new();
    let mut dropped = 0;
    for (k, t) in file.tensors {
        if k.starts_with(MOMENTUM_PREFIX) {
            dropped += 1;
        } else {
            tensors.insert(k, t);
        }
    }
    let run_dir = source.parent().unwrap_or(Path::new("."));
    let history = read_history(&run_dir.join(METRICS)).map_err(|e| HubError::NotARun {
        path: run_dir.join(METRICS),
        reason: e.to_string(),
    })?;
    let epoch = file
        .metadata
        .get("epoch")
        .and_then(|e| e.parse::<usize>().ok());
    let results = history
        .iter()
        .rev()
        .find(|r| epoch.is_none_or(|e| r.epoch == e))
        .map(Results::from);
    write_model_dir(out, &tensors, &file.metadata, results.as_ref(), opts)?;
    Ok(ExportReport {
        source,
        out: out.to_path_buf(),
        tensors: tensors.len(),
        dropped,
        results,
    })
}
