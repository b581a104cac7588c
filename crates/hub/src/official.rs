//! Official RIDE / SADE / TLC state dicts (converted to safetensors with their original key
//! names) → our network: the architecture is read off the keys and shapes, then the weights are
//! loaded strictly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::{
    load_weights, Arch, BackboneConfig, BackboneError, Blocks, Layout, MultiExpert,
    DATA_PARALLEL_PREFIX,
};

use crate::error::{HubError, Result};
use crate::file::read_checked;

/// The official code base a state dict comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfficialMethod {
    /// `frank-xwang/RIDE-LongTailRecognition` (also its single-expert LDAM-DRW baseline).
    Ride,
    /// `Vanint/SADE-AgnosticLT`.
    Sade,
    /// `lblaoke/TLC`.
    Tlc,
}

impl OfficialMethod {
    /// The name as `--from` spells it.
    pub fn name(self) -> &'static str {
        match self {
            OfficialMethod::Ride => "ride",
            OfficialMethod::Sade => "sade",
            OfficialMethod::Tlc => "tlc",
        }
    }

    /// Layouts the method's official models use (any layout is accepted for one expert).
    fn layouts(self) -> &'static [Layout] {
        match self {
            OfficialMethod::Ride | OfficialMethod::Sade => &[Layout::SharedLayer1],
            OfficialMethod::Tlc => &[Layout::PerExpertLayer1, Layout::SharedLayer3],
        }
    }
}

impl fmt::Display for OfficialMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OfficialMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ride" => Ok(OfficialMethod::Ride),
            "sade" => Ok(OfficialMethod::Sade),
            "tlc" => Ok(OfficialMethod::Tlc),
            other => Err(format!(
                "unknown official layout `{other}` (expected ride, sade or tlc)"
            )),
        }
    }
}

/// Drops a leading `module.` (PyTorch `DataParallel`, docs/sade.md §6) from every key.
pub fn strip_data_parallel(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, t)| match k.strip_prefix(DATA_PARALLEL_PREFIX) {
            Some(s) => (s.to_string(), t),
            None => (k, t),
        })
        .collect()
}

/// Where a `backbone.` key sits in the network.
enum Part<'a> {
    Stem,
    /// `layer{stage}.{block}.…` (stage 1-based).
    Shared {
        stage: usize,
        block: usize,
    },
    /// `layer{stage}s.{expert}.{block}.…`.
    Expert {
        stage: usize,
        block: usize,
    },
    /// `linear.…` (one expert) or `linears.{e}.…`.
    Head {
        expert: Option<usize>,
        leaf: &'a str,
    },
    Other,
}

fn parse_key(key: &str) -> Part<'_> {
    let Some(rest) = key.strip_prefix("backbone.") else {
        return Part::Other;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let num = |i: usize| parts.get(i).and_then(|s| s.parse::<usize>().ok());
    match parts[0] {
        "conv1" | "bn1" => Part::Stem,
        "linear" => Part::Head {
            expert: None,
            leaf: parts.get(1).copied().unwrap_or(""),
        },
        "linears" => match num(1) {
            Some(e) => Part::Head {
                expert: Some(e),
                leaf: parts.get(2).copied().unwrap_or(""),
            },
            None => Part::Other,
        },
        p => {
            let Some(s) = p.strip_prefix("layer") else {
                return Part::Other;
            };
            if let Some(stage) = s.strip_suffix('s').and_then(|n| n.parse().ok()) {
                match (num(1), num(2)) {
                    (Some(_), Some(block)) => Part::Expert { stage, block },
                    _ => Part::Other,
                }
            } else if let Ok(stage) = s.parse() {
                match num(1) {
                    Some(block) => Part::Shared { stage, block },
                    None => Part::Other,
                }
            } else {
                Part::Other
            }
        }
    }
}

/// Reads the architecture off an official state dict (keys `backbone.…`, `module.` already
/// stripped): stem kernel (3×3 → CIFAR ResNet-32 family, 7×7 → ImageNet), which stages are
/// shared (`layer{i}`) or per expert (`layer{i}s.{e}`), blocks per stage, stage widths,
/// Bottleneck and grouped convolutions (ResNeXt), and the classifier (NormedLinear `[in, out]`
/// without bias, or `nn.Linear` `[out, in]` with bias).
///
/// Only a few keys are read here; [`import_tensors`] then checks every key and shape strictly.
/// The cosine scale cannot be read from weights and stays at 30 (every official config).
pub fn infer_backbone(
    tensors: &HashMap<String, Tensor>,
) -> std::result::Result<BackboneConfig, String> {
    let dims = |k: &str| tensors.get(k).map(|t| t.dims().to_vec());
    let stem = dims("backbone.conv1.weight").ok_or_else(|| {
        let mut sample: Vec<&String> = tensors.keys().collect();
        sample.sort();
        sample.truncate(4);
        let hint = if tensors.contains_key("conv1.weight") && tensors.contains_key("fc.weight") {
            " (this looks like a torchvision/timm ImageNet classifier: load it as a pretrained trunk instead)"
        } else {
            ""
        };
        format!("no `backbone.conv1.weight` (first keys: {sample:?}){hint}")
    })?;
    if stem.len() != 4 {
        return Err(format!(
            "`backbone.conv1.weight` has shape {stem:?}, not a conv weight"
        ));
    }
    let in_channels = stem[1];
    let cifar = match stem[2] {
        3 => true,
        7 => false,
        k => {
            return Err(format!(
                "stem kernel {k}×{k} is neither CIFAR (3×3) nor ImageNet (7×7)"
            ))
        }
    };
    // stage → (shared?, set of block indices); expert heads.
    let mut stages: BTreeMap<usize, (bool, BTreeSet<usize>)> = BTreeMap::new();
    let mut heads: BTreeSet<Option<usize>> = BTreeSet::new();
    let mut head_bias = false;
    let mut head_key = None;
    for k in tensors.keys() {
        match parse_key(k) {
            Part::Shared { stage, block } => {
                stages
                    .entry(stage)
                    .or_insert((true, BTreeSet::new()))
                    .1
                    .insert(block);
            }
            Part::Expert { stage, block } => {
                stages
                    .entry(stage)
                    .or_insert((false, BTreeSet::new()))
                    .1
                    .insert(block);
            }
            Part::Head { expert, leaf } => {
                heads.insert(expert);
                head_bias |= leaf == "bias";
                if leaf == "weight" && expert.unwrap_or(0) == 0 {
                    head_key = Some(k.clone());
                }
            }
            Part::Stem | Part::Other => {}
        }
    }
    let num_stages = if cifar { 3 } else { 4 };
    let found: Vec<usize> = stages.keys().copied().collect();
    if found != (1..=num_stages).collect::<Vec<_>>() {
        return Err(format!(
            "expected stages layer1..layer{num_stages} for a {} network, found {found:?}",
            if cifar { "CIFAR" } else { "ImageNet" }
        ));
    }
    let num_experts = match (heads.contains(&None), heads.iter().flatten().count()) {
        (true, 0) => 1,
        (false, n) if n > 0 => n,
        (true, _) => return Err("both `linear` and `linears.{e}` classifiers".into()),
        _ => return Err("no classifier (`linear.weight` or `linears.{e}.weight`)".into()),
    };
    let shared: Vec<bool> = stages.values().map(|(s, _)| *s).collect();
    let n_shared = shared.iter().take_while(|s| **s).count();
    if shared[n_shared..].iter().any(|s| *s) {
        return Err(format!(
            "a shared stage follows a per-expert stage ({shared:?})"
        ));
    }
    let layout = if num_experts == 1 {
        if n_shared != num_stages {
            return Err("one classifier (`linear`) but per-expert stages".into());
        }
        Layout::SharedLayer1
    } else if n_shared == num_stages - 2 {
        Layout::SharedLayer1
    } else if n_shared == 0 {
        Layout::PerExpertLayer1
    } else if n_shared == 3 {
        Layout::SharedLayer3
    } else {
        return Err(format!("{n_shared} shared stages is no known layout"));
    };
    let blocks: Vec<usize> = stages.values().map(|(_, b)| b.len()).collect();
    let prefix = |stage: usize| {
        if stage <= n_shared {
            format!("backbone.layer{stage}.0")
        } else {
            format!("backbone.layer{stage}s.0.0")
        }
    };
    let bottleneck = dims(&format!("{}.conv3.weight", prefix(1))).is_some();
    if cifar == bottleneck {
        return Err(format!(
            "{} stem with {} blocks is no known network",
            if cifar { "a 3×3" } else { "a 7×7" },
            if bottleneck { "Bottleneck" } else { "Basic" }
        ));
    }
    let mut planes = Vec::with_capacity(num_stages);
    let mut grouped = false;
    for stage in 1..=num_stages {
        let p = prefix(stage);
        let width = if bottleneck {
            let c3 = dims(&format!("{p}.conv3.weight"));
            let c2 = dims(&format!("{p}.conv2.weight"));
            if let Some(c2) = &c2 {
                grouped |= c2.len() == 4 && c2[1] != c2[0];
            }
            c3.map(|d| d[0] / 4)
        } else {
            dims(&format!("{p}.conv1.weight")).map(|d| d[0])
        };
        planes.push(width.ok_or_else(|| format!("no first conv weight under `{p}`"))?);
    }
    let arch = match (cifar, grouped) {
        (true, _) => Arch::Resnet32,
        (false, true) => Arch::Resnext50,
        (false, false) if blocks == Arch::Resnet152.default_blocks() => Arch::Resnet152,
        (false, false) => Arch::Resnet50,
    };
    let head = dims(head_key.as_deref().unwrap_or("")).ok_or("no classifier weight")?;
    if head.len() != 2 {
        return Err(format!("classifier weight has shape {head:?}"));
    }
    // NormedLinear is [in, out]; nn.Linear is [out, in] with a bias.
    let num_classes = if head_bias { head[0] } else { head[1] };
    let mut cfg = BackboneConfig::new(arch, layout, num_experts, num_classes);
    cfg.in_channels = in_channels;
    cfg.use_norm = !head_bias;
    if blocks != arch.default_blocks() {
        cfg.blocks_per_stage = Some(if blocks.iter().all(|&b| b == blocks[0]) {
            Blocks::Uniform(blocks[0])
        } else {
            Blocks::PerStage(blocks)
        });
    }
    // Express the widths the way the presets do: reduce_dimension, else explicit widths.
    if planes == arch.default_planes(true) && planes != arch.default_planes(false) {
        cfg.reduce_dimension = true;
    } else if planes != arch.default_planes(false) {
        cfg.widths = Some(planes);
    }
    cfg.check().map_err(|e| e.to_string())
}

/// An official model read into our network.
pub struct Imported {
    /// The architecture read off the file.
    pub config: BackboneConfig,
    /// Its weights (official key names; BN running statistics included).
    pub varmap: VarMap,
    /// The network, ready for `forward_t(xs, false)`.
    pub model: MultiExpert,
    /// Keys skipped on purpose (`num_batches_tracked`).
    pub ignored: Vec<String>,
}

/// Builds the network [`infer_backbone`] reads off `tensors` and loads them into it strictly:
/// any missing or unexpected key or wrong shape is a [`HubError::Mismatch`] listing them all.
/// `path` only labels errors. `classes`, when given, must equal the file's class count.
pub fn import_tensors(
    path: &Path,
    tensors: HashMap<String, Tensor>,
    method: OfficialMethod,
    classes: Option<usize>,
    device: &Device,
) -> Result<Imported> {
    let tensors = strip_data_parallel(tensors);
    let config = infer_backbone(&tensors).map_err(|reason| HubError::Layout {
        path: path.to_path_buf(),
        reason,
    })?;
    if config.num_experts > 1 && !method.layouts().contains(&config.layout) {
        return Err(HubError::Mismatch {
            path: path.to_path_buf(),
            reason: format!(
                "the keys form a {:?} network ({} experts), not an official {method} model; pick the right --from",
                config.layout, config.num_experts
            ),
        });
    }
    if let Some(c) = classes {
        if c != config.num_classes {
            return Err(HubError::Mismatch {
                path: path.to_path_buf(),
                reason: format!(
                    "the classifier has {} classes but {c} were asked for (a checkpoint for another data set?)",
                    config.num_classes
                ),
            });
        }
    }
    let varmap = VarMap::new();
    let model = MultiExpert::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let report = load_weights(&varmap, &tensors).map_err(|e| match e {
        e @ BackboneError::StateDict { .. } => HubError::Mismatch {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        other => HubError::Backbone(other),
    })?;
    Ok(Imported {
        config,
        varmap,
        model,
        ignored: report.ignored,
    })
}

/// [`import_tensors`] from a safetensors file, checked by [`read_checked`] first.
pub fn import_file(
    path: &Path,
    method: OfficialMethod,
    classes: Option<usize>,
    device: &Device,
) -> Result<Imported> {
    let file = read_checked(path, device)?;
    import_tensors(path, file.tensors, method, classes, device)
}
