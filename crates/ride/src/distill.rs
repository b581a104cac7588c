//! RIDE's optional knowledge distillation (docs/ride.md §4 "Distillation"): a student (3 or 4
//! experts) learns from a finished, frozen 6-expert RIDE teacher.
//!
//! The student's loss is the RIDE loss plus `a · T_d² · KL(softmax(t̄/T_d) ‖ softmax(z̄/T_d))`,
//! `batchmean`, where `t̄` and `z̄` are the teacher's and the student's **mean** logits (both
//! already `×30`: the cosine scale lives in the model, so it is not applied again here). No
//! expert is distilled on its own. The teacher runs on the batch's images inside the loss, with
//! no gradient.
//!
//! Main items:
//! - [`DistillConfig`]: the `[method.distill]` table of a RIDE run (`teacher`, `temperature`,
//!   `weight`, `times_experts`).
//! - [`distill_kl`]: the distillation term on given logits.
//! - [`Teacher`]: a finished run loaded as a frozen teacher, checked against the student.
//! - [`teacher_config`], [`set_teacher`], [`check_teacher`]: what the CLI needs to train the
//!   teacher first, point a student at a teacher, and refuse a bad teacher before training.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use longtail_train::{checkpoint, load_run, LoadedRun, LrSchedule, MethodConfig, RunConfig};

use crate::{RideError, RideLossConfig};

/// Number of experts of the official teachers (`distill_arch` of every distill config).
pub const TEACHER_EXPERTS: usize = 6;

/// The official distillation temperature `T_d` (`distill_temperature` of every distill config).
pub const OFFICIAL_TEMPERATURE: f64 = 1.5;

/// Distillation settings: the `[method.distill]` table of a RIDE run (docs/ride.md §4).
///
/// Absent (the default), a RIDE run trains without a teacher, exactly as before this table
/// existed. The defaults are the official `RIDELossWithDistill` arguments of the distill configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// The teacher: a finished run folder (its `last.safetensors` is read) or a checkpoint file.
    /// A relative path is relative to the working directory of `longtail train`.
    pub teacher: PathBuf,
    /// `distill_temperature` `T_d` (official 1.5).
    #[serde(default = "official_temperature")]
    pub temperature: f64,
    /// `additional_distill_loss_factor` `a` (official 1.0).
    #[serde(default = "one")]
    pub weight: f64,
    /// Multiply the whole loss (RIDE term and distillation term) by the student's number of
    /// experts `E`, as the official code does: its `forward` loops over the student's experts and
    /// adds the full RIDE loss and the same KL term once per expert, without using the loop
    /// variable (docs/ride.md §4, pitfall 10). With SGD this scales the step of the data term by
    /// `E` (weight decay is not scaled), so the official numbers come with it; `false` gives the
    /// loss as the paper writes it.
    #[serde(default = "yes")]
    pub times_experts: bool,
}

fn official_temperature() -> f64 {
    OFFICIAL_TEMPERATURE
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

impl DistillConfig {
    /// Distillation from `teacher` with the official temperature, weight and `×E`.
    pub fn official(teacher: impl Into<PathBuf>) -> Self {
        Self {
            teacher: teacher.into(),
            temperature: OFFICIAL_TEMPERATURE,
            weight: 1.0,
            times_experts: true,
        }
    }

    /// Checks the values: `temperature` finite and `> 0`, `weight` finite and `≥ 0`, `teacher`
    /// not empty. Reads no file (the teacher is checked by [`check_teacher`] and [`Teacher::load`]).
    pub fn check(&self) -> Result<(), RideError> {
        if !self.temperature.is_finite() {
            return Err(RideError::NonFinite {
                field: "distill.temperature",
                value: self.temperature,
            });
        }
        if self.temperature <= 0.0 {
            return Err(RideError::OutOfRange {
                field: "distill.temperature",
                value: self.temperature,
                expected: "> 0",
            });
        }
        if !self.weight.is_finite() {
            return Err(RideError::NonFinite {
                field: "distill.weight",
                value: self.weight,
            });
        }
        if self.weight < 0.0 {
            return Err(RideError::OutOfRange {
                field: "distill.weight",
                value: self.weight,
                expected: ">= 0",
            });
        }
        if self.teacher.as_os_str().is_empty() {
            return Err(RideError::TeacherMissing {
                path: self.teacher.clone(),
            });
        }
        Ok(())
    }
}

/// The distillation term `T² · KL(softmax(t/T) ‖ softmax(s/T))`, `batchmean`, for student
/// logits `s` and teacher logits `t`, both `[B, C]` (docs/ride.md §4).
///
/// `softmax(t/T)` is detached (the official `torch.no_grad()`), so the gradient flows only into
/// `s`: `∂/∂s = T · (softmax(s/T) − softmax(t/T)) / B`. The `T²` factor is the usual knowledge
/// distillation convention, which keeps the gradient's size independent of `T` (Hinton et al.,
/// 2015; RIDE issue #5).
pub fn distill_kl(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let (b, c) = student.dims2()?;
    if teacher.dims() != [b, c] {
        return Err(candle_core::Error::wrap(RideError::Shape {
            what: "teacher logits",
            expected: format!("[{b}, {c}] (the student's shape)"),
            got: format!("{:?}", teacher.dims()),
        }));
    }
    let teacher = teacher.detach().to_dtype(student.dtype())?;
    let log_p = log_softmax_last(&(teacher / temperature)?)?;
    let p = log_p.exp()?;
    let log_q = log_softmax_last(&(student / temperature)?)?;
    let kl = (p * (log_p - log_q)?)?.sum_all()?;
    kl * (temperature * temperature / b as f64)
}

/// `log_softmax` over the last dim with the max shift detached (a constant for the gradient).
fn log_softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The checkpoint file a teacher path names: `PATH/last.safetensors` for a run folder, `PATH`
/// itself for a file. Missing → [`RideError::TeacherMissing`].
pub fn teacher_checkpoint(path: &Path) -> Result<PathBuf, RideError> {
    let file = if path.is_dir() {
        path.join(longtail_train::trainer::LAST)
    } else {
        path.to_path_buf()
    };
    if file.is_file() {
        Ok(file)
    } else {
        Err(RideError::TeacherMissing {
            path: path.to_path_buf(),
        })
    }
}

/// The distillation settings of a RIDE run config, if it distils.
pub fn distill_settings(cfg: &RunConfig) -> Result<Option<DistillConfig>, RideError> {
    if cfg.method.name != "ride" {
        return Ok(None);
    }
    let s: RideLossConfig = cfg.method.settings()?;
    Ok(s.distill)
}

/// Checks, from its checkpoint header only (no weights are read), that the teacher of the RIDE
/// run `student` exists, is a finished longtail run and fits the student: same data set, same
/// input channels and class count. Returns the teacher's checkpoint file, or `None` when
/// `student` does not distil.
///
/// `longtail train` calls this before it writes anything, so a bad teacher is refused at once
/// rather than at the start of the first epoch.
pub fn check_teacher(student: &RunConfig) -> Result<Option<PathBuf>, RideError> {
    let Some(d) = distill_settings(student)? else {
        return Ok(None);
    };
    d.check()?;
    let file = teacher_checkpoint(&d.teacher)?;
    let header = checkpoint::read_header(&file)?;
    let text = header
        .metadata
        .get("config")
        .ok_or_else(|| RideError::TeacherMismatch {
            path: file.clone(),
            what: "run config",
            teacher: "none (not a longtail checkpoint)".into(),
            student: "a longtail run".into(),
        })?;
    let teacher = RunConfig::from_toml(text)?;
    check_fits_student(&file, &teacher, student)?;
    if let Some(epoch) = header.metadata.get("epoch").and_then(|e| e.parse().ok()) {
        if epoch < teacher.optim.epochs {
            return Err(RideError::TeacherUnfinished {
                path: file,
                epoch,
                epochs: teacher.optim.epochs,
            });
        }
    }
    Ok(Some(file))
}

/// The teacher's config against the student's: data set, input channels, classes.
fn check_fits_student(
    file: &Path,
    teacher: &RunConfig,
    student: &RunConfig,
) -> Result<(), RideError> {
    let mismatch = |what, t: String, s: String| RideError::TeacherMismatch {
        path: file.to_path_buf(),
        what,
        teacher: t,
        student: s,
    };
    if teacher.model.num_classes != student.model.num_classes {
        return Err(mismatch(
            "class count",
            teacher.model.num_classes.to_string(),
            student.model.num_classes.to_string(),
        ));
    }
    if teacher.model.in_channels != student.model.in_channels {
        return Err(mismatch(
            "input channels",
            teacher.model.in_channels.to_string(),
            student.model.in_channels.to_string(),
        ));
    }
    if teacher.data.dataset != student.data.dataset {
        return Err(mismatch(
            "data set (input size and normalisation)",
            teacher.data.dataset.clone(),
            student.data.dataset.clone(),
        ));
    }
    Ok(())
}

/// A finished run loaded as a frozen distillation teacher.
///
/// Its weights live in their own `VarMap`, which the student's optimizer never sees, and it runs
/// with `train = false`, so neither its weights nor its BN statistics change while the student
/// trains.
///
/// Differs from official: the official trainer never calls `teacher.eval()`, so the teacher's
/// BatchNorm runs in training mode, normalising with each batch's statistics under `no_grad`
/// (docs/ride.md §4 "Teacher BN bug"). Here the teacher is in eval mode and uses its running
/// statistics: its predictions are then those it is evaluated with (a training-mode teacher
/// gives an image a different target depending on the rest of its batch), and they do not depend
/// on the student's batch size or sampler.
pub struct Teacher {
    run: LoadedRun,
    file: PathBuf,
}

impl Teacher {
    /// Loads the teacher of the RIDE run `student` (see [`check_teacher`] for what is checked) on
    /// `device`.
    pub fn load(student: &RunConfig, device: &Device) -> Result<Teacher, RideError> {
        let file = check_teacher(student)?.ok_or(RideError::NotDistilling)?;
        let mut run = load_run(&file, device)?;
        check_fits_student(&file, &run.config, student)?;
        // Frozen: no autograd graph is kept through the teacher's forward passes.
        run.model = run.model.detached()?;
        Ok(Teacher { run, file })
    }

    /// The teacher's checkpoint file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The loaded run (config, network, weights, class counts).
    pub fn run(&self) -> &LoadedRun {
        &self.run
    }

    /// The teacher's mean logits `[B, C]` (already `×30`) on `images` `[B, C_in, H, W]`, in eval
    /// mode, detached from the graph.
    pub fn logits(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let want = self.run.config.model.in_channels;
        let dims = images.dims();
        if dims.len() != 4 || dims[1] != want {
            return Err(candle_core::Error::wrap(RideError::Shape {
                what: "images given to the distillation teacher",
                expected: format!("[B, {want}, H, W]"),
                got: format!("{dims:?}"),
            }));
        }
        Ok(self.run.model.forward_t(images, false)?.logits.detach())
    }
}

/// Points the RIDE run `cfg` at `teacher`: sets `[method.distill] teacher`, turning distillation
/// on with the official temperature, weight and `×E` if the config had none.
pub fn set_teacher(cfg: &mut RunConfig, teacher: &Path) -> Result<(), RideError> {
    if cfg.method.name != "ride" {
        return Err(RideError::NotRide {
            method: cfg.method.name.clone(),
        });
    }
    let mut s: RideLossConfig = cfg.method.settings()?;
    match &mut s.distill {
        Some(d) => d.teacher = teacher.to_path_buf(),
        None => s.distill = Some(DistillConfig::official(teacher)),
    }
    cfg.method = MethodConfig::new("ride", &s)?;
    Ok(())
}

/// The teacher's run config for the distilling RIDE run `student`: the student's recipe (data,
/// seed, epochs, optimisation) with [`TEACHER_EXPERTS`] experts and no distillation, as the
/// official teacher configs are the plain RIDE configs with 6 experts (docs/ride.md §5). When
/// `student` comes from a `<base>.distill` preset with a `<base>.teacher` sibling, the teacher's
/// warm-up is that preset's (CIFAR-100-LT: 5 epochs, where the student's is 20) and the config is
/// named after it.
pub fn teacher_config(student: &RunConfig) -> Result<RunConfig, RideError> {
    let Some(_) = distill_settings(student)? else {
        return Err(RideError::NotDistilling);
    };
    let mut s: RideLossConfig = student.method.settings()?;
    s.distill = None;
    let mut t = student.clone();
    t.method = MethodConfig::new("ride", &s)?;
    t.model.num_experts = TEACHER_EXPERTS;
    t.preset = None;
    let sibling = student
        .preset
        .as_deref()
        .and_then(|p| p.strip_suffix(".distill"))
        .map(|base| format!("{base}.teacher"))
        .and_then(|name| crate::presets::PRESETS.iter().find(|p| p.name == name));
    if let Some(p) = sibling {
        let official = p.config();
        if let (
            LrSchedule::Steps { warmup: w, .. },
            LrSchedule::Steps {
                warmup: official_w, ..
            },
        ) = (&mut t.optim.schedule, &official.optim.schedule)
        {
            *w = *official_w;
        }
        t.preset = Some(p.name.to_string());
    }
    Ok(t)
}
