//! Readers on small files written here in the real formats, and their errors.

use std::path::Path;

use longtail_data::load::{load_splits_with, LoadOptions};
use longtail_data::readers::cifar::{read_cifar_file, CifarKind, CifarRecords};
use longtail_data::readers::idx::{encode_idx, read_idx};
use longtail_data::readers::image_list::ImageList;
use longtail_data::{load_splits, DataError, DataSpec, DatasetName, Splits};

use crate::util::{cifar_record, write_cifar10, write_gz};

fn spec(name: DatasetName, dir: &Path, imbalance: f64) -> DataSpec {
    DataSpec {
        name,
        data_dir: Some(dir.to_path_buf()),
        imbalance,
        val_fraction: None,
        seed: 0,
    }
}

/// [`load_splits`] accepting CIFAR files of any whole number of records, as the tiny files here.
fn load_tiny(spec: &DataSpec) -> longtail_data::Result<Splits> {
    load_splits_with(
        spec,
        LoadOptions {
            cifar_records: CifarRecords::AnyWhole,
        },
    )
}

/// Five train batches of 20 records (2 per class... in a rotating order) and a test batch of 10.
fn cifar10_dir(dir: &Path) {
    for b in 0..5 {
        let labels: Vec<u8> = (0..20).map(|k| ((b * 20 + k) % 10) as u8).collect();
        write_cifar10(
            &dir.join(format!("data_batch_{}.bin", b + 1)),
            &labels,
            b * 20,
        );
    }
    let labels: Vec<u8> = (0..10).collect();
    write_cifar10(&dir.join("test_batch.bin"), &labels, 1000);
}

#[test]
fn cifar10_reads_hwc_and_draws_the_ldam_subset() {
    let tmp = tempfile::tempdir().unwrap();
    cifar10_dir(tmp.path());
    let s = load_tiny(&spec(DatasetName::Cifar10Lt, tmp.path(), 10.0)).unwrap();
    // n_max = 100 / 10 = 10 per class: int(10 · 0.1^(i/9)).
    assert_eq!(s.train.class_counts(), [10, 7, 5, 4, 3, 2, 2, 1, 1, 1]);
    assert_eq!(s.test.len(), 10);
    assert_eq!(s.train.class_names[0], "airplane");
    // Planes → HWC: pixel p of image i has (R, G, B) = (i + p, i + 1 + p, i + 2 + p) mod 256.
    let k = 3;
    let i = s.train.source_indices[k];
    let img = s.train.image(k);
    for p in [0usize, 1, 33, 1023] {
        assert_eq!(img[3 * p], ((i + p) % 256) as u8);
        assert_eq!(img[3 * p + 1], ((i + 1 + p) % 256) as u8);
        assert_eq!(img[3 * p + 2], ((i + 2 + p) % 256) as u8);
    }
    // Class 0's ten images are 0, 10, …, 90 in the numpy seed-0 shuffle of 10 items.
    let want: Vec<usize> = [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
        .iter()
        .map(|k| 10 * k)
        .collect();
    assert_eq!(&s.train.source_indices[..10], &want[..]);
    // IF < 1 is an error.
    let e = load_tiny(&spec(DatasetName::Cifar10Lt, tmp.path(), 0.5)).unwrap_err();
    assert!(matches!(e, DataError::BadImbalance { .. }), "{e}");
}

#[test]
fn cifar_errors_are_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("b.bin");
    // Truncated: one whole record and 100 bytes.
    let mut bytes = cifar_record(0, &[3]);
    bytes.extend(&cifar_record(1, &[3])[..100]);
    std::fs::write(&p, &bytes).unwrap();
    let e = read_cifar_file(&p, CifarKind::Cifar10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                index: 1,
                got: 100,
                want: 3073,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("record 1 is truncated"), "{e}");
    // Label out of range.
    write_cifar10(&p, &[1, 10], 0);
    let e = read_cifar_file(&p, CifarKind::Cifar10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ),
        "{e}"
    );
    // CIFAR-100: coarse then fine label; fine 100 is out of range, fine 99 is fine.
    std::fs::write(
        &p,
        [cifar_record(0, &[19, 99]), cifar_record(1, &[2, 5])].concat(),
    )
    .unwrap();
    let (_, labels) = read_cifar_file(&p, CifarKind::Cifar100).unwrap();
    assert_eq!(labels, [99, 5]);
    std::fs::write(&p, cifar_record(0, &[1, 100])).unwrap();
    assert!(matches!(
        read_cifar_file(&p, CifarKind::Cifar100),
        Err(DataError::LabelOutOfRange { label: 100, .. })
    ));
    // Missing directory, missing file.
    let e = load_splits(&spec(
        DatasetName::Cifar100Lt,
        &tmp.path().join("nope"),
        100.0,
    ))
    .unwrap_err();
    assert!(matches!(e, DataError::MissingDir { .. }), "{e}");
    let e = load_splits(&spec(DatasetName::Cifar100Lt, tmp.path(), 100.0)).unwrap_err();
    assert!(matches!(e, DataError::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("train.bin"), "{e}");
    // No directory at all.
    let mut s = spec(DatasetName::Cifar10Lt, tmp.path(), 100.0);
    s.data_dir = None;
    assert!(matches!(load_splits(&s), Err(DataError::NoDataDir { .. })));
}

#[test]
fn cifar100_in_its_tarball_folder_with_an_empty_class() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("cifar-100-binary");
    std::fs::create_dir(&sub).unwrap();
    // 200 train records covering classes 0..99 twice; the test file covers them once.
    let rec = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| cifar_record(i, &[(i % 20) as u8, (i % 100) as u8]))
            .collect()
    };
    std::fs::write(sub.join("train.bin"), rec(200)).unwrap();
    std::fs::write(sub.join("test.bin"), rec(100)).unwrap();
    let s = load_tiny(&spec(DatasetName::Cifar100Lt, tmp.path(), 2.0)).unwrap();
    assert_eq!(s.train.num_classes, 100);
    assert_eq!(s.train.class_counts()[0], 2);
    assert_eq!(s.train.class_counts()[99], 1);
    // With class 7 missing from the training file, loading fails with EmptyClass.
    let bytes: Vec<u8> = (0..200)
        .filter(|i| i % 100 != 7)
        .flat_map(|i| cifar_record(i, &[0, (i % 100) as u8]))
        .collect();
    std::fs::write(sub.join("train.bin"), bytes).unwrap();
    let e = load_tiny(&spec(DatasetName::Cifar100Lt, tmp.path(), 2.0)).unwrap_err();
    assert!(matches!(e, DataError::EmptyClass { class: 7, .. }), "{e}");
}

fn idx_files(dir: &Path, prefix: &str, n: usize, gz: bool) {
    let images: Vec<u8> = (0..n * 4 * 3).map(|i| (i % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let img = encode_idx(&[n, 4, 3], &images);
    let lab = encode_idx(&[n], &labels);
    if gz {
        write_gz(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &img);
        write_gz(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &lab);
    } else {
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    }
}

#[test]
fn idx_raw_and_gzipped() {
    let tmp = tempfile::tempdir().unwrap();
    idx_files(tmp.path(), "train", 50, true);
    idx_files(tmp.path(), "t10k", 20, false);
    let s = load_splits(&DataSpec {
        val_fraction: Some(0.2),
        ..spec(DatasetName::Fmnist, tmp.path(), 1.0)
    })
    .unwrap();
    assert_eq!((s.train.height, s.train.width, s.train.channels), (4, 3, 1));
    let val = s.val.unwrap();
    assert_eq!(s.train.len() + val.len(), 50);
    assert_eq!(val.class_counts(), [1; 10]);
    assert_eq!(s.test.len(), 20);
    assert_eq!(
        s.test.image(1),
        &(12..24).map(|i| i as u8).collect::<Vec<_>>()[..]
    );
    assert_eq!(s.train.class_names[9], "Ankle boot");
}

#[test]
fn idx_errors_are_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x-idx3-ubyte");
    // Wrong magic.
    std::fs::write(&p, [1u8, 2, 3, 4, 0, 0, 0, 0]).unwrap();
    let e = read_idx(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                got: 0x01020304,
                ..
            }
        ),
        "{e}"
    );
    // Float element type.
    std::fs::write(&p, [0u8, 0, 0x0d, 1, 0, 0, 0, 0]).unwrap();
    assert!(matches!(read_idx(&p), Err(DataError::BadFormat { .. })));
    // Truncated data, raw and gzipped: 3 images of 2×2 announced, 9 bytes present.
    let mut b = encode_idx(&[3, 2, 2], &[7; 12]);
    b.truncate(b.len() - 3);
    std::fs::write(&p, &b).unwrap();
    let e = read_idx(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                index: 2,
                got: 1,
                want: 4,
                ..
            }
        ),
        "{e}"
    );
    write_gz(&p, &b);
    assert!(matches!(
        read_idx(&p),
        Err(DataError::Truncated { index: 2, .. })
    ));
    // Truncated header.
    std::fs::write(&p, [0u8, 0, 8, 3, 0, 0]).unwrap();
    assert!(matches!(read_idx(&p), Err(DataError::Truncated { .. })));
    // Labels out of range and image/label count mismatch.
    let dir = tmp.path().join("fm");
    std::fs::create_dir(&dir).unwrap();
    idx_files(&dir, "t10k", 10, false);
    idx_files(&dir, "train", 10, false);
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        encode_idx(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 12]),
    )
    .unwrap();
    let e = load_splits(&spec(DatasetName::Fmnist, &dir, 1.0)).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 9,
                label: 12,
                ..
            }
        ),
        "{e}"
    );
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        encode_idx(&[9], &[0; 9]),
    )
    .unwrap();
    let e = load_splits(&spec(DatasetName::Fmnist, &dir, 1.0)).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 10,
                labels: 9,
                ..
            }
        ),
        "{e}"
    );
    // Missing directory.
    let e = load_splits(&spec(DatasetName::Fmnist, &tmp.path().join("absent"), 1.0)).unwrap_err();
    assert!(matches!(e, DataError::MissingDir { .. }), "{e}");
}

fn png(path: &Path, w: u32, h: u32, v: u8) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([v, x as u8, y as u8]))
        .save(path)
        .unwrap();
}

#[test]
fn image_lists_decode_in_parallel() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("imgs/a b")).unwrap();
    for k in 0..4 {
        png(&root.join(format!("imgs/a b/{k}.png")), 5, 4, k as u8 * 10);
    }
    std::fs::write(
        root.join("Toy_LT_train.txt"),
        "imgs/a b/0.png 0\nimgs/a b/1.png 1\n\nimgs/a b/2.png 1\n",
    )
    .unwrap();
    std::fs::write(
        root.join("Toy_LT_test.txt"),
        "imgs/a b/3.png 0\nimgs/a b/2.png 1\n",
    )
    .unwrap();
    let s = load_splits(&spec(DatasetName::ImageList, root, 100.0)).unwrap();
    assert_eq!(s.train.labels, [0, 1, 1]);
    assert_eq!((s.train.height, s.train.width, s.train.channels), (4, 5, 3));
    // Pixel (y, x) = (v, x, y).
    assert_eq!(&s.train.image(1)[(2 * 5 + 3) * 3..][..3], &[10, 3, 2]);
    assert_eq!(s.test.len(), 2);

    // Mixed sizes are not resized behind the user's back: decoding into memory names the odd
    // image (from the headers, before decoding anything); streaming takes them.
    png(&root.join("imgs/a b/big.png"), 8, 6, 99);
    std::fs::write(
        root.join("Toy_LT_test.txt"),
        "imgs/a b/2.png 1\nimgs/a b/big.png 0\n",
    )
    .unwrap();
    let e = load_splits(&spec(DatasetName::ImageList, root, 100.0)).unwrap_err();
    assert!(
        matches!(&e, DataError::MixedSizes { path, got_w: 8, got_h: 6, want_w: 5, want_h: 4 }
            if path.ends_with("imgs/a b/big.png")),
        "{e}"
    );
    assert!(e.to_string().contains("streamed"), "{e}");
    let s = longtail_data::load_image_lists_streamed(root, 3).unwrap();
    assert!(s.train.is_streamed() && s.test.is_streamed());
    assert_eq!(s.test.labels, [1, 0]);
    assert_eq!((s.test.height, s.test.width), (3, 3));
    assert_eq!(longtail_data::image_list_classes(root).unwrap(), 2);

    // A bad label, a missing image, a missing list.
    let list = root.join("bad.txt");
    std::fs::write(&list, "imgs/a b/0.png zero\n").unwrap();
    let e = ImageList::read(&list, root).unwrap_err();
    assert!(matches!(e, DataError::ListLine { line: 1, .. }), "{e}");
    std::fs::write(&list, "imgs/none.png 0\n").unwrap();
    let l = ImageList::read(&list, root).unwrap();
    assert!(matches!(l.decode(1, vec![]), Err(DataError::Decode { .. })));
    std::fs::remove_file(root.join("Toy_LT_train.txt")).unwrap();
    let e = load_splits(&spec(DatasetName::ImageList, root, 100.0)).unwrap_err();
    assert!(matches!(e, DataError::MissingFile { .. }), "{e}");
}

#[test]
fn dataset_names_parse() {
    for d in DatasetName::ALL {
        assert_eq!(d.as_str().parse::<DatasetName>().unwrap(), d);
    }
    let e = "imagenet".parse::<DatasetName>().unwrap_err();
    assert!(e.to_string().contains("unknown data set `imagenet`"), "{e}");
    // The bundled set is fixed at IF 100.
    let e = load_splits(&DataSpec {
        imbalance: 50.0,
        ..DataSpec::default()
    })
    .unwrap_err();
    assert!(matches!(e, DataError::BadParameter { .. }), "{e}");
}
