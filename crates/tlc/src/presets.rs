//! Training recipes with the official hyper-parameters (spec tlc.md §5), plus a short
//! Fashion-MNIST-LT recipe for CPU smoke runs.
//!
//! Our CIFAR presets use the **standard LDAM-DRW long-tailed subsets** (`n_i = ⌊n_max · IF^(−i/(C−1))⌋`,
//! IF 100: 12,406 / 10,847 images), not TLC's own `exp(−i/d)` profile with `n_i + 1` images
//! (13,540 / 11,222, effective IF ≈ 59.5 / 71.4; `tlc_cifar_lt_own_profile_counts.json`), so numbers
//! are comparable with RIDE and SADE. Differs from official: the training subset.

use serde::{Deserialize, Serialize};

use crate::early_exit::EarlyExit;
use crate::error::{Result, TlcError};
use crate::loss::TlcLossConfig;

/// Everything needed to train and evaluate one TLC model (the trainer and backbone crates read
/// these fields; the model is the backbone's `per_expert_layer1` multi-expert ResNet).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlcRecipe {
    /// Data set name (`cifar10-lt`, `cifar100-lt`, `imagenet-lt`, `fmnist-lt`).
    pub dataset: String,
    /// Imbalance factor of the LDAM-profile subset, if the set is built by subsampling.
    pub imbalance_factor: Option<f64>,
    /// Number of classes.
    pub num_classes: usize,
    /// Input `[channels, height, width]`.
    pub input_shape: [usize; 3],
    /// Backbone family: `resnet32` (CIFAR layout) or `resnet50`.
    pub backbone: String,
    /// Residual blocks of each stage: `[5, 5, 5]` for ResNet-32, `[3, 4, 6, 3]` for ResNet-50.
    pub stage_blocks: Vec<usize>,
    /// Channel widths of the stages (16/32/64 for ResNet-32).
    pub stage_widths: Vec<usize>,
    /// Number of experts.
    pub experts: usize,
    /// Cosine-classifier scale (logit = scale · cos).
    pub logit_scale: f64,
    /// Training epochs.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size (matters only for the official batch-normalised combination).
    pub eval_batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum (Nesterov).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay, on all parameters (no groups).
    pub weight_decay: f64,
    /// Linear warm-up epochs: epoch `e ≤ warmup` uses `lr · e / warmup`.
    pub warmup_epochs: usize,
    /// Step decays `(first 1-based epoch, factor of the base lr)`: CIFAR `[(161, 0.01), (181, 1e-4)]`.
    pub lr_steps: Vec<(usize, f64)>,
    /// Random crop padding (CIFAR 4) and horizontal flip are applied; rotation in degrees (CIFAR 15).
    pub rotation_degrees: f64,
    /// The loss settings (reweight epoch, f, η, τ, …).
    pub loss: TlcLossConfig,
    /// Early exit at inference, if any (official: none, every expert runs).
    pub early_exit: Option<EarlyExit>,
}

impl TlcRecipe {
    /// Learning rate of the 1-based epoch: warm-up, then the step decays (official `LambdaLR`,
    /// stepped after each epoch, so epoch `e` uses `λ(e − 1)`).
    pub fn learning_rate(&self, epoch: usize) -> f64 {
        let epoch = epoch.max(1);
        if epoch <= self.warmup_epochs {
            return self.lr * epoch as f64 / self.warmup_epochs as f64;
        }
        let factor = self
            .lr_steps
            .iter()
            .filter(|(from, _)| epoch >= *from)
            .max_by_key(|(from, _)| *from)
            .map(|(_, f)| *f)
            .unwrap_or(1.0);
        self.lr * factor
    }
}

/// A named recipe.
pub struct Preset {
    /// `method.dataset.variant`.
    pub name: &'static str,
    /// One line for `longtail presets`.
    pub summary: &'static str,
    /// Builds the recipe.
    pub build: fn() -> TlcRecipe,
}

/// All TLC presets.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tlc.cifar10-lt.if100.e3",
        summary: "TLC, 3 ResNet-32 experts, CIFAR-10-LT IF 100 (LDAM subset), 200 epochs",
        build: cifar10,
    },
    Preset {
        name: "tlc.cifar100-lt.if100.e3",
        summary: "TLC, 3 ResNet-32 experts, CIFAR-100-LT IF 100 (LDAM subset), 200 epochs, wd 5e-4",
        build: cifar100,
    },
    Preset {
        name: "tlc.imagenet-lt.e3",
        summary: "TLC, ResNet-50 with 3 layer4 experts, ImageNet-LT, 100 epochs",
        build: imagenet,
    },
    Preset {
        name: "tlc.fmnist-lt",
        summary: "TLC smoke recipe: Fashion-MNIST-LT 28x28x1, 3 shallow experts, 8 epochs with DRW from epoch 7",
        build: fmnist,
    },
];

/// Looks a preset up by name.
pub fn preset(name: &str) -> Result<TlcRecipe> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .map(|p| (p.build)())
        .ok_or_else(|| TlcError::UnknownPreset {
            name: name.to_string(),
            known: PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn cifar10() -> TlcRecipe {
    TlcRecipe {
        dataset: "cifar10-lt".into(),
        imbalance_factor: Some(100.0),
        num_classes: 10,
        input_shape: [3, 32, 32],
        backbone: "resnet32".into(),
        stage_blocks: vec![5, 5, 5],
        stage_widths: vec![16, 32, 64],
        experts: 3,
        logit_scale: 30.0,
        epochs: 200,
        batch_size: 128,
        eval_batch_size: 4096,
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 2e-4,
        warmup_epochs: 5,
        lr_steps: vec![(161, 0.01), (181, 1e-4)],
        rotation_degrees: 15.0,
        loss: TlcLossConfig::cifar(),
        early_exit: None,
    }
}

fn cifar100() -> TlcRecipe {
    TlcRecipe {
        dataset: "cifar100-lt".into(),
        num_classes: 100,
        weight_decay: 5e-4,
        ..cifar10()
    }
}

fn imagenet() -> TlcRecipe {
    TlcRecipe {
        dataset: "imagenet-lt".into(),
        imbalance_factor: None,
        num_classes: 1000,
        input_shape: [3, 224, 224],
        backbone: "resnet50".into(),
        stage_blocks: vec![3, 4, 6, 3],
        stage_widths: vec![256, 512, 1024, 2048],
        epochs: 100,
        batch_size: 256,
        eval_batch_size: 512,
        weight_decay: 2e-4,
        lr_steps: vec![(61, 0.1), (81, 0.01)],
        rotation_degrees: 0.0,
        loss: TlcLossConfig::imagenet(),
        ..cifar10()
    }
}

/// Short CPU recipe on the bundled Fashion-MNIST-LT (~2,500 images, 10 classes): one block per
/// stage at half width (8/16/32), 32 epochs (about 3 minutes on 2 cores), DRW and per-class
/// temperatures from epoch 25 so the re-weighting phase is exercised; the lr drops ×0.1 with DRW,
/// as the CIFAR recipe drops at 161 (the 200-epoch schedule compressed ~6×). The first version
/// trained 8 epochs: 59.0 % and a fused uncertainty too poorly trained to rank errors (failure
/// AUROC 0.684, ECE 0.377); 32 epochs give 74.9 %, 0.771 and 0.213.
fn fmnist() -> TlcRecipe {
    let mut loss = TlcLossConfig::cifar();
    loss.reweight_epoch = 24;
    TlcRecipe {
        dataset: "fmnist-lt".into(),
        imbalance_factor: None,
        num_classes: 10,
        input_shape: [1, 28, 28],
        backbone: "resnet32".into(),
        stage_blocks: vec![1, 1, 1],
        stage_widths: vec![16, 16, 32],
        epochs: 32,
        batch_size: 64,
        eval_batch_size: 256,
        warmup_epochs: 2,
        lr_steps: vec![(25, 0.1)],
        rotation_degrees: 0.0,
        loss,
        early_exit: None,
        ..cifar10()
    }
}
