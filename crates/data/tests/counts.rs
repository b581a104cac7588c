//! Exact record counts: CIFAR files hold their published number of records, IDX payloads what
//! their headers announce, image-list labels stay bounded. Full-size CIFAR files are sparse
//! (`set_len`), so nothing large is written.

use std::fs::File;
use std::path::Path;

use longtail_data::readers::cifar::{read_cifar_file_exact, CifarKind};
use longtail_data::readers::idx::{encode_idx, read_idx};
use longtail_data::readers::image_list::{ImageList, MAX_LABEL};
use longtail_data::{load_splits, DataError, DataSpec, DatasetName};

use crate::util::{write_cifar10, write_gz};

const REC10: u64 = 3073;
const REC100: u64 = 3074;

fn spec(name: DatasetName, dir: &Path) -> DataSpec {
    DataSpec {
        name,
        data_dir: Some(dir.to_path_buf()),
        imbalance: 100.0,
        val_fraction: None,
        seed: 0,
    }
}

/// A file of `len` zero bytes without writing them (records of label 0, black pixels).
fn sparse(path: &Path, len: u64) {
    File::create(path).unwrap().set_len(len).unwrap();
}

/// The five CIFAR-10 training batches at their full 10,000 records.
fn full_cifar10_train(dir: &Path) {
    for b in 1..=5 {
        sparse(&dir.join(format!("data_batch_{b}.bin")), 10_000 * REC10);
    }
}

fn record_count(e: &DataError) -> (String, usize, usize, usize) {
    match e {
        DataError::RecordCount {
            path,
            found,
            stray_bytes,
            expected,
            ..
        } => (
            path.file_name().unwrap().to_string_lossy().into_owned(),
            *found,
            *stray_bytes,
            *expected,
        ),
        other => panic!("expected RecordCount, got {other:?}"),
    }
}

#[test]
fn a_cifar10_test_batch_of_one_record_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    full_cifar10_train(tmp.path());
    write_cifar10(&tmp.path().join("test_batch.bin"), &[3], 0);
    let e = load_splits(&spec(DatasetName::Cifar10Lt, tmp.path())).unwrap_err();
    assert_eq!(record_count(&e), ("test_batch.bin".into(), 1, 0, 10_000));
    let msg = e.to_string();
    assert!(
        msg.ends_with(
            "test_batch.bin: 1 record of 3073 bytes, expected exactly 10000 as in the CIFAR-10 \
             binary version's test_batch.bin (is the file cut short, over-long or of another data set?)"
        ),
        "{msg}"
    );
}

#[test]
fn a_cifar10_batch_cut_or_padded_is_refused_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    full_cifar10_train(tmp.path());
    sparse(&tmp.path().join("test_batch.bin"), 10_000 * REC10);
    let batch2 = tmp.path().join("data_batch_2.bin");
    // Cut to 5,000 whole records (was: 11,165 training images, silently).
    sparse(&batch2, 5_000 * REC10);
    let e = load_splits(&spec(DatasetName::Cifar10Lt, tmp.path())).unwrap_err();
    assert_eq!(
        record_count(&e),
        ("data_batch_2.bin".into(), 5_000, 0, 10_000)
    );
    assert!(
        e.to_string()
            .contains("data_batch_2.bin: 5000 records of 3073 bytes, expected exactly 10000"),
        "{e}"
    );
    // One record too many; 9,999 records and 100 bytes.
    sparse(&batch2, 10_001 * REC10);
    let e = load_splits(&spec(DatasetName::Cifar10Lt, tmp.path())).unwrap_err();
    assert_eq!(
        record_count(&e),
        ("data_batch_2.bin".into(), 10_001, 0, 10_000)
    );
    sparse(&batch2, 9_999 * REC10 + 100);
    let e = load_splits(&spec(DatasetName::Cifar10Lt, tmp.path())).unwrap_err();
    assert_eq!(
        record_count(&e),
        ("data_batch_2.bin".into(), 9_999, 100, 10_000)
    );
    assert!(
        e.to_string()
            .contains("9999 records of 3073 bytes and 100 bytes more"),
        "{e}"
    );
    // A tiny batch as the other tests write is refused too: the default is the real format.
    write_cifar10(&tmp.path().join("data_batch_1.bin"), &[0; 20], 0);
    let e = load_splits(&spec(DatasetName::Cifar10Lt, tmp.path())).unwrap_err();
    assert_eq!(record_count(&e), ("data_batch_1.bin".into(), 20, 0, 10_000));
}

#[test]
fn cifar100_train_holds_50000_and_test_10000() {
    let tmp = tempfile::tempdir().unwrap();
    sparse(&tmp.path().join("train.bin"), 49_999 * REC100);
    sparse(&tmp.path().join("test.bin"), 10_000 * REC100);
    let e = load_splits(&spec(DatasetName::Cifar100Lt, tmp.path())).unwrap_err();
    assert_eq!(record_count(&e), ("train.bin".into(), 49_999, 0, 50_000));
    assert!(
        e.to_string()
            .contains("CIFAR-100 binary version's train.bin"),
        "{e}"
    );
    sparse(&tmp.path().join("train.bin"), 50_000 * REC100);
    sparse(&tmp.path().join("test.bin"), 10_000 * REC10);
    let e = load_splits(&spec(DatasetName::Cifar100Lt, tmp.path())).unwrap_err();
    // 10,000 CIFAR-10 records read as CIFAR-100 ones: 9,996 records and 2,296 bytes.
    assert_eq!(record_count(&e), ("test.bin".into(), 9_996, 2_296, 10_000));
}

#[test]
fn a_full_size_cifar_file_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("test_batch.bin");
    sparse(&p, 10_000 * REC10);
    let (images, labels) = read_cifar_file_exact(&p, CifarKind::Cifar10, 10_000).unwrap();
    assert_eq!((images.len(), labels.len()), (10_000 * 3072, 10_000));
    let e = read_cifar_file_exact(&p, CifarKind::Cifar10, 9_999).unwrap_err();
    assert_eq!(
        record_count(&e),
        ("test_batch.bin".into(), 10_000, 0, 9_999)
    );
}

#[test]
fn idx_payloads_must_match_their_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("train-images-idx3-ubyte");
    // 10 images of 2×2 announced; 5 present (the file ends on a record boundary).
    let mut b = encode_idx(&[10, 2, 2], &[7; 40]);
    b.truncate(b.len() - 20);
    std::fs::write(&p, &b).unwrap();
    let e = read_idx(&p).unwrap_err();
    assert_eq!(
        record_count(&e),
        ("train-images-idx3-ubyte".into(), 5, 0, 10)
    );
    assert!(
        e.to_string().ends_with(
            "train-images-idx3-ubyte: 5 records of 4 bytes, expected exactly 10 as its IDX header \
             announces (dimensions [10, 2, 2])"
        ),
        "{e}"
    );
    // Longer than announced, raw and gzipped.
    let long = encode_idx(&[3, 2, 2], &[7; 15]);
    std::fs::write(&p, &long).unwrap();
    let e = read_idx(&p).unwrap_err();
    assert_eq!(
        record_count(&e),
        ("train-images-idx3-ubyte".into(), 3, 3, 3)
    );
    let gz = tmp.path().join("train-labels-idx1-ubyte.gz");
    write_gz(&gz, &encode_idx(&[4], &[1; 6]));
    let e = read_idx(&gz).unwrap_err();
    assert_eq!(
        record_count(&e),
        ("train-labels-idx1-ubyte.gz".into(), 6, 0, 4)
    );
    // Dimensions whose product overflows are an error, not a panic; a zero dimension with data
    // after the header too.
    std::fs::write(
        &p,
        encode_idx(
            &[u32::MAX as usize, u32::MAX as usize, u32::MAX as usize],
            &[1],
        ),
    )
    .unwrap();
    let e = read_idx(&p).unwrap_err();
    assert!(
        matches!(&e, DataError::BadFormat { reason, .. } if reason.contains("overflow")),
        "{e}"
    );
    std::fs::write(&p, encode_idx(&[3, 0, 2], &[1])).unwrap();
    assert!(matches!(read_idx(&p), Err(DataError::BadFormat { .. })));
    // Two concatenated gzip members are read whole, as gunzip does.
    let both = [
        gz_bytes(&encode_idx(&[4], &[1; 4])[..5]),
        gz_bytes(&encode_idx(&[4], &[1; 4])[5..]),
    ]
    .concat();
    std::fs::write(&gz, both).unwrap();
    assert_eq!(read_idx(&gz).unwrap().data, [1; 4]);
}

fn gz_bytes(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_image_and_label_counts_must_agree_and_be_positive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for prefix in ["train", "t10k"] {
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[10, 2, 2], &[0; 40]),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte"),
        encode_idx(&[11], &[0; 11]),
    )
    .unwrap();
    let e = load_splits(&spec(DatasetName::Fmnist, dir)).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 10,
                labels: 11,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("images file ")
            && msg.contains("t10k-images-idx3-ubyte and labels file ")
            && msg.ends_with("t10k-labels-idx1-ubyte: 10 images but 11 labels"),
        "{msg}"
    );
    // No images at all.
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte"),
        encode_idx(&[0, 2, 2], &[]),
    )
    .unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode_idx(&[0], &[])).unwrap();
    let e = load_splits(&spec(DatasetName::Fmnist, dir)).unwrap_err();
    assert!(matches!(e, DataError::Empty { .. }), "{e}");
}

#[test]
fn image_list_labels_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let list = root.join("train.txt");
    std::fs::write(&list, "a.png 0\nb.png 1\nc.png 4000000000\n").unwrap();
    let e = ImageList::read(&list, root).unwrap_err();
    assert!(matches!(e, DataError::ListLine { line: 3, .. }), "{e}");
    assert!(
        e.to_string().ends_with(
            "train.txt:3: label 4000000000 is above 1048575, the largest class index an image list may use"
        ),
        "{e}"
    );
    std::fs::write(&list, format!("a.png {MAX_LABEL}\n")).unwrap();
    let l = ImageList::read(&list, root).unwrap();
    assert_eq!(l.num_classes(), MAX_LABEL as usize + 1);
    assert_eq!(l.first_missing_class(l.num_classes()), Some(0));
    // Through load_splits: the training list lacks class 2 of the test list's labels, which is
    // an error before any image is decoded (none of these images exist).
    std::fs::write(&list, "a.png 0\nb.png 1\nc.png 3\n").unwrap();
    std::fs::write(root.join("test.txt"), "d.png 2\n").unwrap();
    let e = load_splits(&spec(DatasetName::ImageList, root)).unwrap_err();
    assert!(matches!(e, DataError::EmptyClass { class: 2, .. }), "{e}");
    std::fs::write(root.join("test.txt"), "d.png 999999\n").unwrap();
    let e = load_splits(&spec(DatasetName::ImageList, root)).unwrap_err();
    assert!(matches!(e, DataError::EmptyClass { class: 2, .. }), "{e}");
}
