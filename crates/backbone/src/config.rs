//! [`BackboneConfig`]: which network to build, checked before anything is allocated.

use serde::{Deserialize, Serialize};

use crate::error::{BackboneError, Result};
use crate::ops::Kernels;

/// Network family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// CIFAR ResNet-32 (He et al. 2016, §4.2): 3×3 stem, three stages of BasicBlocks with the
    /// parameter-free option-A shortcut (docs/ride.md §1.1). `blocks_per_stage` 5 gives ResNet-32,
    /// 1 gives ResNet-8, 2 gives ResNet-14.
    Resnet32,
    /// ImageNet ResNet-50 (Bottleneck [3, 4, 6, 3], stride on the 3×3 conv; docs/ride.md §1.2).
    Resnet50,
    /// ImageNet ResNeXt-50 32×4d (grouped 3×3 conv, 32 groups, 4 channels per group; docs/ride.md §1.2).
    Resnext50,
    /// ImageNet ResNet-152 (Bottleneck [3, 8, 36, 3]): SADE's Places-LT backbone (docs/sade.md §4).
    Resnet152,
}

impl Arch {
    /// True for the CIFAR-style network (3 stages, option-A shortcuts, fan-in init).
    pub fn is_cifar(self) -> bool {
        matches!(self, Arch::Resnet32)
    }

    /// Number of residual stages.
    pub fn num_stages(self) -> usize {
        if self.is_cifar() {
            3
        } else {
            4
        }
    }

    /// Output channels of the stem conv (`conv1`).
    pub fn stem_width(self) -> usize {
        if self.is_cifar() {
            16
        } else {
            64
        }
    }

    /// Blocks per stage of the full-size network.
    pub fn default_blocks(self) -> Vec<usize> {
        match self {
            Arch::Resnet32 => vec![5, 5, 5],
            Arch::Resnet152 => vec![3, 8, 36, 3],
            Arch::Resnet50 | Arch::Resnext50 => vec![3, 4, 6, 3],
        }
    }

    /// Stage planes: CIFAR 16/32/64 (reduced 16/24/48); ImageNet 64/128/256/512 (reduced
    /// 64/128/192/384), as `reduce_dimension` in the official code (docs/ride.md §1.1, §1.2).
    pub fn default_planes(self, reduce_dimension: bool) -> Vec<usize> {
        match (self.is_cifar(), reduce_dimension) {
            (true, false) => vec![16, 32, 64],
            (true, true) => vec![16, 24, 48],
            (false, false) => vec![64, 128, 256, 512],
            (false, true) => vec![64, 128, 192, 384],
        }
    }

    /// Channel expansion of the residual block (BasicBlock 1, Bottleneck 4).
    pub fn expansion(self) -> usize {
        if self.is_cifar() {
            1
        } else {
            4
        }
    }
}

/// Which stages all experts share and which each expert owns.
///
/// | layout | ResNet-32 (3 stages) | ResNet-50 / ResNeXt-50 (4 stages) |
/// |---|---|---|
/// | `shared_layer1` | stem, `layer1` shared; `layer2s`, `layer3s` per expert (RIDE, SADE) | stem, `layer1`, `layer2` shared; `layer3s`, `layer4s` per expert (RIDE, SADE ImageNet) |
/// | `per_expert_layer1` | stem shared; `layer1s`..`layer3s` per expert (TLC CIFAR) | stem shared; `layer1s`..`layer4s` per expert |
/// | `shared_layer3` | all stages shared; only `linears` per expert | stem, `layer1`..`layer3` shared; `layer4s` per expert (TLC ImageNet, docs/tlc.md §1) |
///
/// With one expert the layout does not matter: every stage is `layer{i}` and the classifier is
/// `linear`, the key names of the single-branch baseline (docs/ride.md §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// RIDE / SADE: experts own the last two stages.
    #[default]
    SharedLayer1,
    /// TLC CIFAR: only `conv1`/`bn1` are shared.
    PerExpertLayer1,
    /// TLC ImageNet: experts own only the last stage (on ResNet-32: only the classifier).
    SharedLayer3,
}

impl Layout {
    /// Number of leading stages in the shared trunk for `arch`.
    pub fn shared_stages(self, arch: Arch) -> usize {
        match self {
            Layout::SharedLayer1 => arch.num_stages() - 2,
            Layout::PerExpertLayer1 => 0,
            Layout::SharedLayer3 => 3,
        }
    }
}

/// Blocks per stage: one number for every stage, or one per stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Blocks {
    /// The same count in every stage (5 → ResNet-32, 1 → ResNet-8).
    Uniform(usize),
    /// One count per stage.
    PerStage(Vec<usize>),
}

/// Which multi-expert ResNet to build. Call [`BackboneConfig::check`] before use
/// ([`crate::MultiExpert::new`] does).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// Network family.
    pub arch: Arch,
    /// Which stages are shared.
    #[serde(default)]
    pub layout: Layout,
    /// Number of experts E (1 → the plain single-branch network).
    pub num_experts: usize,
    /// Number of classes C.
    pub num_classes: usize,
    /// Input channels (3 for CIFAR/ImageNet, 1 for Fashion-MNIST).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Blocks per stage; `None` → the full-size network (5 / [3, 4, 6, 3]).
    #[serde(default)]
    pub blocks_per_stage: Option<Blocks>,
    /// RIDE's reduced expert widths (CIFAR 24/48, ImageNet planes 192/384).
    #[serde(default)]
    pub reduce_dimension: bool,
    /// Explicit planes per stage (overrides `reduce_dimension`), e.g. `[16, 24, 48]`.
    #[serde(default)]
    pub widths: Option<Vec<usize>>,
    /// Cosine classifier (NormedLinear, weight `[in, out]`, times `scale`) instead of `nn.Linear`.
    #[serde(default = "default_true")]
    pub use_norm: bool,
    /// Cosine scale s (30 in every official config). Ignored when `use_norm` is false, where
    /// the official code forces s = 1.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Convolution / batch-norm implementation.
    #[serde(default)]
    pub kernels: Kernels,
}

fn default_in_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_scale() -> f64 {
    30.0
}

impl BackboneConfig {
    /// A config with the defaults of every optional field.
    pub fn new(arch: Arch, layout: Layout, num_experts: usize, num_classes: usize) -> Self {
        Self {
            arch,
            layout,
            num_experts,
            num_classes,
            in_channels: 3,
            blocks_per_stage: None,
            reduce_dimension: false,
            widths: None,
            use_norm: true,
            scale: 30.0,
            kernels: Kernels::default(),
        }
    }

    /// RIDE / SADE CIFAR model: ResNet-32, shared layer1, reduced 24/48 experts, NormedLinear ×30
    /// (`ResNet32Model(num_classes, reduce_dimension=True, use_norm=True, num_experts)`).
    pub fn ride_cifar(num_experts: usize, num_classes: usize) -> Self {
        Self {
            reduce_dimension: true,
            ..Self::new(
                Arch::Resnet32,
                Layout::SharedLayer1,
                num_experts,
                num_classes,
            )
        }
    }

    /// The single-expert LDAM-DRW ResNet-32 baseline (32/64 widths, NormedLinear ×30).
    pub fn baseline_cifar(num_classes: usize) -> Self {
        Self::new(Arch::Resnet32, Layout::SharedLayer1, 1, num_classes)
    }

    /// TLC CIFAR model: ResNet-32, only the stem shared, full 16/32/64 widths per expert.
    pub fn tlc_cifar(num_experts: usize, num_classes: usize) -> Self {
        Self::new(
            Arch::Resnet32,
            Layout::PerExpertLayer1,
            num_experts,
            num_classes,
        )
    }

    /// RIDE / SADE ImageNet model (ResNet-50 or ResNeXt-50 with reduced 192/384 expert planes).
    pub fn ride_imagenet(arch: Arch, num_experts: usize, num_classes: usize) -> Self {
        Self {
            reduce_dimension: true,
            ..Self::new(arch, Layout::SharedLayer1, num_experts, num_classes)
        }
    }

    /// Validates every field; returns the config unchanged when it can be built.
    pub fn check(self) -> Result<Self> {
        let bad = |field, reason: String| Err(BackboneError::Config { field, reason });
        let stages = self.arch.num_stages();
        if self.num_experts == 0 {
            return bad("num_experts", "must be at least 1".into());
        }
        if self.num_classes == 0 {
            return bad("num_classes", "must be at least 1".into());
        }
        if self.in_channels == 0 {
            return bad("in_channels", "must be at least 1".into());
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad(
                "scale",
                format!("must be finite and positive, got {}", self.scale),
            );
        }
        if let Some(Blocks::PerStage(b)) = &self.blocks_per_stage {
            if b.len() != stages {
                return bad(
                    "blocks_per_stage",
                    format!(
                        "{:?} has {} entries, {:?} has {stages} stages",
                        b,
                        b.len(),
                        self.arch
                    ),
                );
            }
        }
        if self.blocks().contains(&0) {
            return bad(
                "blocks_per_stage",
                "every stage needs at least one block".into(),
            );
        }
        let planes = self.planes();
        if planes.len() != stages {
            return bad(
                "widths",
                format!(
                    "{planes:?} has {} entries, {:?} has {stages} stages",
                    planes.len(),
                    self.arch
                ),
            );
        }
        if planes.contains(&0) {
            return bad("widths", "every width must be at least 1".into());
        }
        if self.arch.is_cifar() {
            // Option A pads (planes - in_planes) / 2 zero channels on each side (docs/ride.md §1.1):
            // widths may not shrink, and each increase must be even.
            let mut prev = self.arch.stem_width();
            for &p in &planes {
                if p < prev || !(p - prev).is_multiple_of(2) {
                    return bad(
                        "widths",
                        format!(
                            "option-A shortcut cannot go from {prev} to {p} channels (needs a non-decreasing, even step)"
                        ),
                    );
                }
                prev = p;
            }
        } else if self.arch == Arch::Resnext50 && planes.iter().any(|&p| p * 4 / 64 == 0) {
            return bad(
                "widths",
                "resnext50 needs planes >= 16 (32 groups of planes*4/64 channels)".into(),
            );
        }
        Ok(self)
    }

    /// Blocks in each stage.
    pub fn blocks(&self) -> Vec<usize> {
        match &self.blocks_per_stage {
            None => self.arch.default_blocks(),
            Some(Blocks::Uniform(n)) => vec![*n; self.arch.num_stages()],
            Some(Blocks::PerStage(v)) => v.clone(),
        }
    }

    /// Planes of each stage (a Bottleneck stage outputs 4× its planes).
    pub fn planes(&self) -> Vec<usize> {
        self.widths
            .clone()
            .unwrap_or_else(|| self.arch.default_planes(self.reduce_dimension))
    }

    /// Number of leading stages in the shared trunk (all of them when E = 1).
    pub fn shared_stages(&self) -> usize {
        if self.num_experts == 1 {
            self.arch.num_stages()
        } else {
            self.layout.shared_stages(self.arch)
        }
    }

    /// Dimension D of each expert's pooled feature (the classifier input).
    pub fn feature_dim(&self) -> usize {
        self.planes().last().copied().unwrap_or(0) * self.arch.expansion()
    }

    /// Scale applied to each expert's logits: `scale` for NormedLinear, 1 for `nn.Linear`.
    pub fn logit_scale(&self) -> f64 {
        if self.use_norm {
            self.scale
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_official_widths() {
        let c = BackboneConfig::ride_cifar(3, 100).check().unwrap();
        assert_eq!(c.planes(), vec![16, 24, 48]);
        assert_eq!(c.blocks(), vec![5, 5, 5]);
        assert_eq!(c.shared_stages(), 1);
        assert_eq!(c.feature_dim(), 48);
        let c = BackboneConfig::ride_imagenet(Arch::Resnext50, 3, 1000)
            .check()
            .unwrap();
        assert_eq!(c.planes(), vec![64, 128, 192, 384]);
        assert_eq!(c.shared_stages(), 2);
        assert_eq!(c.feature_dim(), 1536);
        let c = BackboneConfig::tlc_cifar(3, 10);
        assert_eq!(c.shared_stages(), 0);
        assert_eq!(BackboneConfig::baseline_cifar(10).shared_stages(), 3);
    }

    #[test]
    fn check_rejects_bad_values() {
        let base = BackboneConfig::ride_cifar(3, 10);
        let cases = [
            (
                BackboneConfig {
                    num_experts: 0,
                    ..base.clone()
                },
                "num_experts",
            ),
            (
                BackboneConfig {
                    num_classes: 0,
                    ..base.clone()
                },
                "num_classes",
            ),
            (
                BackboneConfig {
                    scale: f64::NAN,
                    ..base.clone()
                },
                "scale",
            ),
            (
                BackboneConfig {
                    widths: Some(vec![16, 23, 48]),
                    ..base.clone()
                },
                "widths",
            ),
            (
                BackboneConfig {
                    widths: Some(vec![16, 32]),
                    ..base.clone()
                },
                "widths",
            ),
            (
                BackboneConfig {
                    blocks_per_stage: Some(Blocks::Uniform(0)),
                    ..base.clone()
                },
                "blocks_per_stage",
            ),
            (
                BackboneConfig {
                    blocks_per_stage: Some(Blocks::PerStage(vec![1, 2])),
                    ..base.clone()
                },
                "blocks_per_stage",
            ),
        ];
        for (cfg, field) in cases {
            match cfg.check() {
                Err(BackboneError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a config error on {field}, got {other:?}"),
            }
        }
    }
}
