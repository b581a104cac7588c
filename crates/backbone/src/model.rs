//! [`MultiExpert`]: shared trunk + per-expert stages and classifiers.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::config::BackboneConfig;
use crate::error::{BackboneError, Result};
use crate::layers::{global_avg_pool, Classifier, Stage, Stem};
use crate::ExpertOutput;

/// One expert's output.
#[derive(Debug, Clone)]
pub struct BranchOutput {
    /// Logits `[B, C]` (already times the cosine scale s).
    pub logits: Tensor,
    /// Pooled features `[B, D]` that feed the classifier.
    pub features: Tensor,
}

/// Multiply-accumulates of the conv and linear layers for one image (BN, ReLU, pooling and adds
/// are not counted, as thop / `FlopCounterMode` conventions in docs/ride.md §4 and docs/candle.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacCount {
    /// Stem and shared stages.
    pub trunk: u64,
    /// Each requested expert's own stages plus its classifier, in request order.
    pub per_expert: Vec<u64>,
    /// The classifier's share of each expert's count (`D · C`).
    pub classifier: u64,
}

impl MacCount {
    /// Trunk plus every requested expert.
    pub fn total(&self) -> u64 {
        self.trunk + self.per_expert.iter().sum::<u64>()
    }
}

#[derive(Clone, Debug)]
struct Expert {
    stages: Vec<Stage>,
    head: Classifier,
}

/// A multi-expert ResNet (RIDE / SADE / TLC backbones, or the plain network when E = 1).
///
/// The trunk (stem and the shared stages) runs once; each expert runs its own stages, a global
/// average pool and its classifier. Parameters live under the official state-dict keys, rooted at
/// `backbone.` (e.g. `backbone.layer2s.1.0.conv1.weight`, `backbone.linears.0.weight`).
#[derive(Clone, Debug)]
pub struct MultiExpert {
    cfg: BackboneConfig,
    stem: Stem,
    shared: Vec<Stage>,
    experts: Vec<Expert>,
}

impl MultiExpert {
    /// Builds the network under `vb.pp("backbone")`: pass the root `VarBuilder`.
    ///
    /// New Vars get candle's unseeded initialisers with the official distributions; call
    /// [`crate::init_weights`] (or use [`MultiExpert::seeded`]) for reproducible weights, or
    /// [`crate::load_weights`] for official ones.
    pub fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        let cfg = cfg.clone().check()?;
        let vb = vb.pp("backbone");
        let stem = Stem::new(&cfg, vb.clone())?;
        let n_shared = cfg.shared_stages();
        let stages = cfg.arch.num_stages();
        let out_c = |i: usize| cfg.planes()[i] * cfg.arch.expansion();
        let mut shared = Vec::with_capacity(n_shared);
        let mut c = cfg.arch.stem_width();
        for i in 0..n_shared {
            shared.push(Stage::new(&cfg, i, c, vb.pp(format!("layer{}", i + 1)))?);
            c = out_c(i);
        }
        let trunk_c = c;
        let mut experts = Vec::with_capacity(cfg.num_experts);
        for e in 0..cfg.num_experts {
            let mut c = trunk_c;
            let mut own = Vec::new();
            for i in n_shared..stages {
                own.push(Stage::new(
                    &cfg,
                    i,
                    c,
                    vb.pp(format!("layer{}s", i + 1)).pp(e),
                )?);
                c = out_c(i);
            }
            let head_vb = if cfg.num_experts == 1 {
                vb.pp("linear")
            } else {
                vb.pp("linears").pp(e)
            };
            experts.push(Expert {
                stages: own,
                head: Classifier::new(&cfg, head_vb)?,
            });
        }
        Ok(Self {
            cfg,
            stem,
            shared,
            experts,
        })
    }

    /// A fresh `VarMap` holding a network initialised from `seed` by [`crate::init_weights`].
    pub fn seeded(cfg: &BackboneConfig, seed: u64, device: &Device) -> Result<(VarMap, Self)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Self::new(cfg, vb)?;
        crate::init_weights(&varmap, model.config(), seed)?;
        Ok((varmap, model))
    }

    /// The same network on detached copies of its weights (sharing their storage), for
    /// inference: its outputs build no autograd graph, so each layer's activations are freed as
    /// soon as the next layer has used them, as under PyTorch's `torch.no_grad()`. The network
    /// itself keeps every op of a forward pass alive until the output is dropped (its weights
    /// are Vars): a ResNeXt-50 RIDE-3 evaluation of 50 images at 224² peaked at 9.2 GB that way.
    /// Loading into or training the original's VarMap reaches the copy too (shared storage;
    /// the BN running statistics are the same Vars). Gradients with respect to the input still
    /// flow; the weights get none.
    pub fn detached(&self) -> Result<Self> {
        Ok(Self {
            cfg: self.cfg.clone(),
            stem: self.stem.detached()?,
            shared: self
                .shared
                .iter()
                .map(Stage::detached)
                .collect::<candle_core::Result<_>>()?,
            experts: self
                .experts
                .iter()
                .map(|e| {
                    Ok(Expert {
                        stages: e
                            .stages
                            .iter()
                            .map(Stage::detached)
                            .collect::<candle_core::Result<_>>()?,
                        head: e.head.detached(),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// The (checked) config the network was built from.
    pub fn config(&self) -> &BackboneConfig {
        &self.cfg
    }

    /// Number of experts E.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    fn check_input(&self, xs: &Tensor) -> Result<()> {
        let dims = xs.dims();
        if dims.len() != 4 || dims[1] != self.cfg.in_channels {
            return Err(BackboneError::InputShape {
                channels: self.cfg.in_channels,
                got: dims.to_vec(),
            });
        }
        Ok(())
    }

    fn check_experts(&self, experts: &[usize]) -> Result<()> {
        let n = self.experts.len();
        let dup = experts
            .iter()
            .enumerate()
            .any(|(i, e)| experts[..i].contains(e));
        if experts.is_empty() || dup || experts.iter().any(|&e| e >= n) {
            return Err(BackboneError::ExpertIndex {
                experts: experts.to_vec(),
                num_experts: n,
            });
        }
        Ok(())
    }

    /// Stem and shared stages: `xs` `[B, in_channels, H, W]` → the feature map every expert takes.
    pub fn forward_trunk(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        let mut x = self.stem.forward_t(xs, train)?;
        for stage in &self.shared {
            x = stage.forward_t(&x, train)?;
        }
        Ok(x)
    }

    /// Expert `e` on a trunk output (or any batch subset of one, for early exit).
    pub fn forward_expert(
        &self,
        trunk_out: &Tensor,
        e: usize,
        train: bool,
    ) -> Result<BranchOutput> {
        self.check_experts(&[e])?;
        let expert = &self.experts[e];
        let mut x = trunk_out.clone();
        for stage in &expert.stages {
            x = stage.forward_t(&x, train)?;
        }
        let features = global_avg_pool(&x)?;
        let logits = expert.head.forward(&features)?;
        Ok(BranchOutput { logits, features })
    }

    /// Runs the trunk once and the listed experts (distinct, in range, in this order); the
    /// output's expert axis follows `experts`, and `logits` is their mean.
    pub fn forward_experts(
        &self,
        xs: &Tensor,
        experts: &[usize],
        train: bool,
    ) -> Result<ExpertOutput> {
        self.check_experts(experts)?;
        let trunk = self.forward_trunk(xs, train)?;
        let mut logits = Vec::with_capacity(experts.len());
        let mut features = Vec::with_capacity(experts.len());
        for &e in experts {
            let out = self.forward_expert(&trunk, e, train)?;
            logits.push(out.logits);
            features.push(out.features);
        }
        let expert_logits = Tensor::stack(&logits, 1)?;
        let features = Tensor::stack(&features, 1)?;
        let logits = expert_logits.mean(1)?;
        Ok(ExpertOutput {
            expert_logits,
            logits,
            features,
        })
    }

    /// All experts: `xs` `[B, in_channels, H, W]` → logits `[B, E, C]`, their mean `[B, C]`,
    /// features `[B, E, D]`. `train` selects BatchNorm batch statistics (and running-stat updates).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<ExpertOutput> {
        let all: Vec<usize> = (0..self.experts.len()).collect();
        self.forward_experts(xs, &all, train)
    }

    /// MACs per image of size `height × width` when running the trunk and `experts`.
    ///
    /// Plain ResNet-32 (E = 1, 32/64 widths, C = 100) at 32×32 gives 68,868,352 (docs/candle.md §5.1).
    pub fn macs(&self, height: usize, width: usize, experts: &[usize]) -> Result<MacCount> {
        self.check_experts(experts)?;
        let (mut trunk, mut h, mut w) = self.stem.macs(height, width);
        for stage in &self.shared {
            let (m, nh, nw) = stage.macs(h, w);
            trunk += m;
            h = nh;
            w = nw;
        }
        let classifier = self.experts[0].head.macs();
        let per_expert = experts
            .iter()
            .map(|&e| {
                let (mut eh, mut ew) = (h, w);
                let mut total = self.experts[e].head.macs();
                for stage in &self.experts[e].stages {
                    let (m, nh, nw) = stage.macs(eh, ew);
                    total += m;
                    eh = nh;
                    ew = nw;
                }
                total
            })
            .collect();
        Ok(MacCount {
            trunk,
            per_expert,
            classifier,
        })
    }
}
