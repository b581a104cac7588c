//! The real Fashion-MNIST from the Debian package `dataset-fashion-mnist` (CI installs it), and the
//! bundled subset drawn from it. Where the package is absent these tests print how to install it
//! and pass without checking anything; under CI (`CI` set) its absence is a failure.

use std::path::Path;

use longtail_data::bundled;
use longtail_data::readers::idx::DEBIAN_FASHION_MNIST_DIR;
use longtail_data::{load_splits, DataSpec, DatasetName, ShotRule, Stats};

/// The Debian files, or `None` (the test is skipped, saying why) on a machine without them.
fn debian_dir() -> Option<&'static Path> {
    let dir = Path::new(DEBIAN_FASHION_MNIST_DIR);
    if dir.join("train-images-idx3-ubyte.gz").is_file() {
        return Some(dir);
    }
    let how = format!(
        "Fashion-MNIST not found in {}: install it with `apt-get install -y dataset-fashion-mnist`",
        dir.display()
    );
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(!in_ci, "{how} (CI must)");
    eprintln!("skipped: {how}");
    None
}

#[test]
fn real_fashion_mnist_from_the_debian_package() {
    let Some(dir) = debian_dir() else { return };
    let s = load_splits(&DataSpec {
        name: DatasetName::Fmnist,
        data_dir: Some(dir.to_path_buf()),
        imbalance: 100.0,
        val_fraction: None,
        seed: 0,
    })
    .unwrap();
    // n_max = 60000 / 10 = 6000: int(6000 · 0.01^(i/9)) (checked with Python floats).
    assert_eq!(
        s.train.class_counts(),
        [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    );
    assert_eq!(s.test.len(), 10_000);
    assert_eq!(s.test.class_counts(), [1000; 10]);
    assert_eq!((s.test.height, s.test.width, s.test.channels), (28, 28, 1));
    let st = Stats::from_counts(&s.train.class_counts(), ShotRule::Ride);
    assert_eq!(st.imbalance_factor, 100.0);
    assert_eq!(st.group_sizes, [8, 2, 0]); // 100 is medium under the RIDE rule
}

#[test]
fn bundled_set_matches_a_rebuild_from_the_debian_files() {
    let Some(dir) = debian_dir() else { return };
    let (train, test) = bundled::build_from_dir(dir).unwrap();
    let (etrain, etest) = bundled::load().unwrap();
    assert_eq!(train, etrain);
    assert_eq!(test, etest);
}
