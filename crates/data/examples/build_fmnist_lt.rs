//! Rebuilds the bundled Fashion-MNIST-LT assets (`crates/data/assets/fmnist-lt/`) from the
//! Fashion-MNIST IDX files.
//!
//! `cargo run -p longtail-data --example build_fmnist_lt [IDX_DIR [OUT_DIR]]`; IDX_DIR defaults to
//! the Debian package's /usr/share/datasets/fashion-mnist, OUT_DIR to the crate's asset folder.

use std::path::PathBuf;

use longtail_data::bundled::{build_assets, build_from_dir, ASSET_NAMES};
use longtail_data::readers::idx::DEBIAN_FASHION_MNIST_DIR;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let src = PathBuf::from(
        args.next()
            .unwrap_or_else(|| DEBIAN_FASHION_MNIST_DIR.into()),
    );
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fmnist-lt"));
    let (train, test) = build_from_dir(&src)?;
    std::fs::create_dir_all(&out)?;
    for (name, bytes) in ASSET_NAMES.iter().zip(build_assets(&train, &test)?) {
        let path = out.join(name);
        std::fs::write(&path, &bytes)?;
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    println!("train counts {:?}", train.class_counts());
    println!("test counts  {:?}", test.class_counts());
    Ok(())
}
