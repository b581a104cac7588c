//! The flags that override a recipe's numbers, shared by `train` and `heads`.

use longtail::train::RunConfig;

/// Overrides of a preset's or config file's numbers; each flag left out keeps the recipe's.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RecipeFlags {
    /// Imbalance factor of the long-tailed training subset.
    #[arg(long)]
    pub imbalance: Option<f64>,
    /// Number of experts.
    #[arg(long)]
    pub experts: Option<usize>,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of weights, data order and augmentation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Side of the square crops of a streamed data set (imagenet-lt, inat2018, places-lt, an
    /// image list with a resized-crop recipe): 224 in the recipes; evaluation resizes to
    /// round(side · 256/224) and centre-crops.
    #[arg(long)]
    pub image_size: Option<usize>,
}

impl RecipeFlags {
    /// Writes the given flags into `cfg` (the caller checks the result with the registry).
    pub fn apply(&self, cfg: &mut RunConfig) {
        if let Some(v) = self.imbalance {
            cfg.data.imbalance = v;
        }
        if let Some(v) = self.experts {
            cfg.model.num_experts = v;
        }
        if let Some(v) = self.epochs {
            cfg.optim.epochs = v;
        }
        if let Some(v) = self.batch_size {
            cfg.optim.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.optim.lr = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.image_size {
            cfg.data.image_size = Some(v);
        }
    }
}
