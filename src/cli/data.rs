//! `longtail data`: a data set's long-tail statistics as a table, and optionally the original
//! indices of the kept training images (to compare our subset with another codebase's).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use longtail_data::{
    load_image_lists_streamed, load_splits, DataSpec, DatasetName, ShotRule, Stats,
};

/// Arguments of `longtail data`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Data set: fmnist-lt (bundled), cifar10-lt, cifar100-lt, fmnist, image-list, or a
    /// benchmark streamed from its official lists: imagenet-lt, inat2018, places-lt.
    #[arg(long, default_value = "fmnist-lt", value_parser = parse_dataset)]
    pub dataset: DatasetName,
    /// Directory of the data set's files (fmnist defaults to /usr/share/datasets/fashion-mnist;
    /// an error with the bundled fmnist-lt, which reads no files).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Imbalance factor max/min of the long-tailed training subset (fmnist-lt is fixed at 100).
    #[arg(long = "imbalance", value_name = "IF", default_value_t = 100.0)]
    pub imbalance: f64,
    /// Carve this fraction of each class out of the training set as a validation set.
    #[arg(long, value_name = "FRACTION")]
    pub val_fraction: Option<f64>,
    /// Seed of the validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shot-group rule: ride (many >100, few <20) or oltr (many >=100, few <=20).
    #[arg(long, default_value = "ride", value_parser = parse_rule)]
    pub rule: ShotRule,
    /// Write the original file index of each kept training image to FILE, one per line.
    #[arg(long, value_name = "FILE")]
    pub list_indices: Option<PathBuf>,
    /// First write a synthetic JPEG tree into --data-dir in the layout of --dataset (image-list,
    /// imagenet-lt, inat2018, places-lt): --tree-classes classes, --tree-max training images in
    /// the largest falling exponentially to --tree-max/--imbalance, 5 test and 2 val images per
    /// class, ImageNet-like sizes (500×375, 375×500, 500×333, 400×400, 640×480).
    #[arg(long)]
    pub make_tree: bool,
    /// Classes of --make-tree.
    #[arg(long, default_value_t = 10)]
    pub tree_classes: usize,
    /// Training images of the largest class of --make-tree.
    #[arg(long, default_value_t = 100)]
    pub tree_max: usize,
}

fn parse_dataset(s: &str) -> Result<DatasetName, String> {
    s.parse()
        .map_err(|e: longtail_data::DataError| e.to_string())
}

fn parse_rule(s: &str) -> Result<ShotRule, String> {
    s.parse()
}

/// The data spec the arguments ask for.
pub fn spec(args: &Args) -> DataSpec {
    DataSpec {
        name: args.dataset,
        data_dir: args.data_dir.clone(),
        imbalance: args.imbalance,
        val_fraction: args.val_fraction,
        seed: args.seed,
    }
}

/// Run `longtail data`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let (Some(dir), DatasetName::FmnistLt) = (&args.data_dir, args.dataset) {
        anyhow::bail!(
            "data directory {} would not be used: the data set is fmnist-lt, which is bundled and reads no files; pass --dataset with it (fmnist, cifar10-lt, cifar100-lt, image-list) or drop --data-dir",
            dir.display()
        );
    }
    if args.make_tree {
        make_tree(&args)?;
    }
    let splits = match (args.dataset, &args.data_dir) {
        // Counts need no pixels: an image list is read as training streams it (any sizes).
        (DatasetName::ImageList, Some(dir)) => {
            let mut s = load_image_lists_streamed(dir, 224)
                .with_context(|| format!("loading {}", args.dataset))?;
            if let Some(f) = args.val_fraction {
                let (train, val) = s.train.split_validation(f, args.seed)?;
                s.train = train;
                s.val = Some(val);
            }
            s
        }
        _ => load_splits(&spec(&args)).with_context(|| format!("loading {}", args.dataset))?,
    };
    let train = &splits.train;
    let stats = Stats::from_counts(&train.class_counts(), args.rule);
    let mut extra = Vec::new();
    if let Some(val) = &splits.val {
        extra.push(("val", val.class_counts()));
    }
    extra.push(("test", splits.test.class_counts()));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "data set {}: {} training, {} validation, {} test images of {}x{}x{}, {} classes",
        args.dataset,
        train.len(),
        splits.val.as_ref().map_or(0, |v| v.len()),
        splits.test.len(),
        train.height,
        train.width,
        train.channels,
        train.num_classes
    )?;
    write!(out, "{}", stats.table(&train.class_names, &extra))?;
    if let Some(path) = &args.list_indices {
        let mut text = String::with_capacity(train.len() * 6);
        for i in &train.source_indices {
            text.push_str(&i.to_string());
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        writeln!(
            out,
            "wrote {} training indices to {}",
            train.len(),
            path.display()
        )?;
    }
    Ok(())
}

/// `--make-tree`: a synthetic JPEG tree (`longtail_data::synth`).
fn make_tree(args: &Args) -> anyhow::Result<()> {
    use longtail_data::synth::{write_tree, TreeSpec};
    let Some(dir) = &args.data_dir else {
        anyhow::bail!("--make-tree needs --data-dir DIR, where the tree goes");
    };
    if !(args.dataset == DatasetName::ImageList || args.dataset.is_streamed()) {
        anyhow::bail!("--make-tree writes image lists: --dataset image-list, imagenet-lt, inat2018 or places-lt");
    }
    let counts = longtail_data::profile::exponential_counts(
        args.tree_max as f64,
        args.tree_classes,
        args.imbalance,
    )?;
    let spec = TreeSpec {
        layout: args.dataset,
        train_counts: counts.iter().map(|&c| c.max(1)).collect(),
        test_per_class: 5,
        val_per_class: 2,
        sizes: vec![(500, 375), (375, 500), (500, 333), (400, 400), (640, 480)],
        quality: 90,
        seed: args.seed,
    };
    let t = write_tree(dir, &spec)?;
    eprintln!(
        "wrote {} JPEGs ({:.1} MB) and {} under {}",
        t.images,
        t.bytes as f64 / 1e6,
        t.train_list
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        dir.display()
    );
    Ok(())
}
