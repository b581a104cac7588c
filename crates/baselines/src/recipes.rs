//! The shared recipes the baselines' presets are built from (docs/baselines.md §0, §1 and §11):
//! the LDAM CIFAR recipe, the Decoupling ImageNet-LT "joint" recipe and the bundled-set CPU
//! recipe of `ce.fmnist-lt`. Each method's module changes only what its paper changes.

use longtail_backbone::{Arch, BackboneConfig, Blocks, Layout};
use longtail_data::AugmentKind;
use longtail_train::{DataConfig, LrSchedule, MethodConfig, OptimConfig, RunConfig, SgdConfig};

/// A run of `method` on `data` with `model` and `optim`, seed 0.
pub(crate) fn run(
    method: MethodConfig,
    data: DataConfig,
    model: BackboneConfig,
    optim: OptimConfig,
) -> RunConfig {
    RunConfig {
        preset: None,
        seed: 0,
        method,
        data,
        model,
        optim,
    }
}

/// The LDAM-DRW CIFAR ResNet-32 with one expert (widths 16/32/64): a plain linear head with
/// bias (`nn.Linear`), or the cosine head ×30 when `cosine` (LDAM only; docs/baselines.md §0, §4).
pub(crate) fn cifar_resnet32(classes: usize, cosine: bool) -> BackboneConfig {
    let mut m = BackboneConfig::new(Arch::Resnet32, Layout::SharedLayer1, 1, classes);
    m.use_norm = cosine;
    m
}

/// The CIFAR-LT data (IF 100) with LDAM's pad-4 crop and flip.
pub(crate) fn cifar_data(classes: usize) -> DataConfig {
    let name = if classes == 10 {
        "cifar10-lt"
    } else {
        "cifar100-lt"
    };
    DataConfig::new(name, Some(100.0), AugmentKind::CropFlip)
}

/// The LDAM recipe (docs/baselines.md §0): SGD momentum 0.9 without Nesterov, lr 0.1, weight
/// decay 2e-4, batch 128, 200 epochs, warm-up `0.1·e/5` for e ≤ 5, ×0.01 from 0-based epoch
/// 160 and again from 180.
pub(crate) fn ldam_optim() -> OptimConfig {
    OptimConfig::new(
        200,
        128,
        0.1,
        SgdConfig {
            momentum: 0.9,
            weight_decay: 2e-4,
            nesterov: false,
        },
        LrSchedule::Steps {
            warmup: 5,
            step1: 160,
            step2: 180,
            gamma: 0.01,
        },
    )
}

/// The LDAM recipe on CIFAR-`classes`-LT IF 100 for `method`.
pub(crate) fn ldam_cifar(method: MethodConfig, classes: usize, cosine: bool) -> RunConfig {
    run(
        method,
        cifar_data(classes),
        cifar_resnet32(classes, cosine),
        ldam_optim(),
    )
}

/// The Decoupling "joint" ImageNet-LT recipe, the one its CE row (44.4 %) comes from
/// (docs/baselines.md §1, §6): ResNeXt-50 with one linear head (bias), 90 epochs, batch 512,
/// lr 0.2 cosine to 0, weight decay 5e-4, momentum 0.9 (no Nesterov).
pub(crate) fn imagenet_joint(method: MethodConfig) -> RunConfig {
    let mut model = BackboneConfig::new(Arch::Resnext50, Layout::SharedLayer1, 1, 1000);
    model.use_norm = false;
    run(
        method,
        DataConfig::new("imagenet-lt", None, AugmentKind::CropFlip),
        model,
        OptimConfig::new(
            90,
            512,
            0.2,
            SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: false,
            },
            LrSchedule::Cosine {
                warmup: 0,
                min_lr: 0.0,
            },
        ),
    )
}

/// The bundled Fashion-MNIST-LT recipe of `ce.fmnist-lt` (the `ride.fmnist-lt` recipe with one
/// plain expert), so that a comparison on the bundled set changes only the method: ResNet-s with
/// one block per stage (a ResNet-8, widths 16/32/64), one input channel, the cosine head ×30,
/// RIDE's augmentation, 48 epochs at batch 128, lr 0.1 Nesterov, weight decay 5e-4, warm-up 2,
/// ×0.1 from 0-based epoch 32 and again from 40. Not an official recipe.
pub fn fmnist_lt(method: MethodConfig) -> RunConfig {
    let mut model = BackboneConfig::ride_cifar(1, 10);
    model.reduce_dimension = false;
    model.blocks_per_stage = Some(Blocks::Uniform(1));
    model.in_channels = 1;
    run(
        method,
        DataConfig::new("fmnist-lt", None, AugmentKind::Standard),
        model,
        OptimConfig::new(
            48,
            128,
            0.1,
            SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: true,
            },
            LrSchedule::Steps {
                warmup: 2,
                step1: 32,
                step2: 40,
                gamma: 0.1,
            },
        ),
    )
}
