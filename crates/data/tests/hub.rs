//! CIFAR from the Hub's parquet files (feature `hub`), offline: tiny parquet files in the Hub's
//! schema, written with the parquet writer, laid out as an hf-hub cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use longtail_data::readers::cifar::{load_cifar_with, CifarKind, CifarRecords, CIFAR10_CLASSES};
use longtail_data::readers::hub::{
    load_cifar_hub, read_cifar_parquet, HubDataOptions, HubSource, CIFAR100_REPO, CIFAR10_REPO,
};
use longtail_data::{load_splits, DataError, DataSpec, DatasetName};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PIXELS: usize = 32 * 32 * 3;
const COMMIT: &str = "0b2714987fa478483af9968de7c934580d0bb9a2";

/// One synthetic image set: HWC pixels and labels (and CIFAR-100 coarse labels).
struct Synth {
    images: Vec<u8>,
    labels: Vec<u32>,
    coarse: Vec<u32>,
}

/// `per_class` random images of each of `classes` classes, in a shuffled-looking label order.
fn synth(classes: usize, per_class: usize, seed: u64) -> Synth {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = classes * per_class;
    let images = (0..n * PIXELS).map(|_| rng.random::<u8>()).collect();
    let labels = (0..n)
        .map(|i| ((i * 7) % classes) as u32)
        .collect::<Vec<_>>();
    let coarse = labels.iter().map(|&l| l / 5).collect();
    Synth {
        images,
        labels,
        coarse,
    }
}

fn png(hwc: &[u8]) -> Vec<u8> {
    let img = image::RgbImage::from_raw(32, 32, hwc.to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A parquet file in the Hub's schema (`img {bytes, path}`, int64 labels), snappy-compressed,
/// with the `datasets` library's `huggingface` metadata naming the classes. `images` are the
/// encoded image bytes, one per row.
fn write_parquet(path: &Path, images: &[Vec<u8>], labels: &[(&str, Vec<u32>)], names: &[String]) {
    let mut schema = String::from(
        "message hf { optional group img { optional binary bytes; optional binary path (STRING); }",
    );
    for (col, _) in labels {
        schema.push_str(&format!(" optional int64 {col};"));
    }
    schema.push('}');
    let schema = Arc::new(parse_message_type(&schema).unwrap());
    let meta = serde_json::json!({"info": {"features": {
        "img": {"_type": "Image"},
        labels[0].0: {"names": names, "_type": "ClassLabel"},
    }}});
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "huggingface".to_string(),
            meta.to_string(),
        )]))
        .build();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
    let n = images.len();
    let mut rg = w.next_row_group().unwrap();
    let bytes: Vec<ByteArray> = images.iter().map(|b| ByteArray::from(b.clone())).collect();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&bytes, Some(&vec![2; n]), None)
        .unwrap();
    col.close().unwrap();
    // `img.path` is null, as in the Hub's files (level 1: `img` present, `path` absent).
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&[], Some(&vec![1; n]), None)
        .unwrap();
    col.close().unwrap();
    for (_, l) in labels {
        let vals: Vec<i64> = l.iter().map(|&v| v as i64).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(&vals, Some(&vec![1; n]), None)
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

fn pngs(s: &Synth) -> Vec<Vec<u8>> {
    s.images.chunks(PIXELS).map(png).collect()
}

/// Puts `bytes` in an hf-hub cache as `file` of dataset `repo` at [`COMMIT`]:
/// `refs/main`, `blobs/<etag>`, `snapshots/<commit>/<file>` → the blob (a relative symlink,
/// as hf-hub and Python write it).
fn put_in_cache(cache: &Path, repo: &str, file: &str, bytes: &[u8]) {
    let folder = cache.join(format!("datasets--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), COMMIT).unwrap();
    let etag = format!("{:016x}{:08x}", bytes.len(), file.len());
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    std::fs::write(folder.join("blobs").join(&etag), bytes).unwrap();
    let snap = folder.join("snapshots").join(COMMIT).join(file);
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    let up = "../".repeat(file.split('/').count() + 1);
    #[cfg(unix)]
    std::os::unix::fs::symlink(format!("{up}blobs/{etag}"), &snap).unwrap();
    #[cfg(not(unix))]
    std::fs::write(&snap, bytes).unwrap();
}

/// Writes a parquet split to a scratch file and puts it in the cache.
fn cache_split(
    cache: &Path,
    repo: &str,
    file: &str,
    images: &[Vec<u8>],
    labels: &[(&str, Vec<u32>)],
    names: &[String],
) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.parquet");
    write_parquet(&p, images, labels, names);
    put_in_cache(cache, repo, file, &std::fs::read(p).unwrap());
}

fn cifar10_names() -> Vec<String> {
    CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
}

fn offline(cache: &Path) -> HubDataOptions {
    HubDataOptions {
        offline: true,
        endpoint: None,
        cache_dir: Some(cache.to_path_buf()),
        retries: 0,
    }
}

/// A CIFAR binary record: label byte(s), then the R, G, B planes.
fn binary_records(s: &Synth, cifar100: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, img) in s.images.chunks(PIXELS).enumerate() {
        if cifar100 {
            out.push(s.coarse[i] as u8);
        }
        out.push(s.labels[i] as u8);
        for c in 0..3 {
            out.extend((0..1024).map(|p| img[3 * p + c]));
        }
    }
    out
}

/// The synthetic CIFAR-10 train (5 batches) and test sets in a cache.
fn cifar10_cache(cache: &Path, train: &Synth, test: &Synth) {
    let src = HubSource::default_for(CifarKind::Cifar10);
    let names = cifar10_names();
    cache_split(
        cache,
        CIFAR10_REPO,
        &src.train_file,
        &pngs(train),
        &[("label", train.labels.clone())],
        &names,
    );
    cache_split(
        cache,
        CIFAR10_REPO,
        &src.test_file,
        &pngs(test),
        &[("label", test.labels.clone())],
        &names,
    );
}

#[test]
fn hub_and_binary_cifar10_give_identical_datasets() {
    let (train, test) = (synth(10, 5, 1), synth(10, 2, 2));
    let cache = tempfile::tempdir().unwrap();
    cifar10_cache(cache.path(), &train, &test);
    let bin = tempfile::tempdir().unwrap();
    let recs = binary_records(&train, false);
    let per = recs.len() / 5;
    for b in 0..5 {
        std::fs::write(
            bin.path().join(format!("data_batch_{}.bin", b + 1)),
            &recs[b * per..(b + 1) * per],
        )
        .unwrap();
    }
    std::fs::write(
        bin.path().join("test_batch.bin"),
        binary_records(&test, false),
    )
    .unwrap();

    let (htr, hte) = load_cifar_hub(
        &HubSource::default_for(CifarKind::Cifar10),
        CifarKind::Cifar10,
        &offline(cache.path()),
    )
    .unwrap();
    let (btr, bte) =
        load_cifar_with(bin.path(), CifarKind::Cifar10, CifarRecords::AnyWhole).unwrap();
    assert_eq!(
        (htr.len(), htr.height, htr.width, htr.channels),
        (50, 32, 32, 3)
    );
    assert_eq!(htr.images, train.images);
    assert_eq!(htr, btr);
    assert_eq!(hte, bte);
    assert_eq!(htr.class_names[9], "truck");
}

#[test]
fn hub_and_binary_cifar100_give_identical_datasets() {
    let (train, test) = (synth(100, 1, 3), synth(100, 1, 4));
    let names: Vec<String> = (0..100).map(|c| format!("fine{c}")).collect();
    let src = HubSource::default_for(CifarKind::Cifar100);
    assert_eq!(src.repo, CIFAR100_REPO);
    let cache = tempfile::tempdir().unwrap();
    for (file, s) in [(&src.train_file, &train), (&src.test_file, &test)] {
        cache_split(
            cache.path(),
            CIFAR100_REPO,
            file,
            &pngs(s),
            &[
                ("fine_label", s.labels.clone()),
                ("coarse_label", s.coarse.clone()),
            ],
            &names,
        );
    }
    let bin = tempfile::tempdir().unwrap();
    std::fs::write(bin.path().join("train.bin"), binary_records(&train, true)).unwrap();
    std::fs::write(bin.path().join("test.bin"), binary_records(&test, true)).unwrap();
    std::fs::write(bin.path().join("fine_label_names.txt"), names.join("\n")).unwrap();
    let (htr, hte) = load_cifar_hub(&src, CifarKind::Cifar100, &offline(cache.path())).unwrap();
    let (btr, bte) =
        load_cifar_with(bin.path(), CifarKind::Cifar100, CifarRecords::AnyWhole).unwrap();
    assert_eq!(htr.num_classes, 100);
    assert_eq!(htr.labels, train.labels, "fine labels, not coarse");
    assert_eq!(
        htr.class_names[42], "fine42",
        "names from the parquet metadata"
    );
    assert_eq!(htr, btr);
    assert_eq!(hte, bte);
}

#[test]
fn an_asymmetric_image_keeps_its_orientation() {
    // Red encodes the row, green the column, blue marks one pixel near the top-right corner:
    // a transposed (H/W swapped) or flipped decoding changes all three.
    let mut hwc = vec![0u8; PIXELS];
    for y in 0..32 {
        for x in 0..32 {
            let p = 3 * (y * 32 + x);
            hwc[p] = (y * 8) as u8;
            hwc[p + 1] = (x * 8) as u8;
            hwc[p + 2] = if (y, x) == (2, 29) { 255 } else { 0 };
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.parquet");
    write_parquet(&path, &[png(&hwc)], &[("label", vec![3])], &cifar10_names());
    let got = read_cifar_parquet(&path, "label", 10).unwrap();
    assert_eq!(got.labels, vec![3]);
    let at = |y: usize, x: usize| &got.images[3 * (y * 32 + x)..3 * (y * 32 + x) + 3];
    assert_eq!(at(2, 29), &[16, 232, 255]);
    assert_eq!(at(29, 2), &[232, 16, 0]);
    assert_eq!(at(31, 0), &[248, 0, 0]);
    assert_eq!(got.images, hwc);
}

#[test]
fn load_splits_reads_hf_data_dir_offline_from_the_environment() {
    // The only test that sets these variables; every other test passes its options explicitly.
    let (train, test) = (synth(10, 4, 5), synth(10, 1, 6));
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    cifar10_cache(&cache, &train, &test);
    let spec = DataSpec {
        name: DatasetName::Cifar10Lt,
        data_dir: Some(PathBuf::from("hf://uoft-cs/cifar10")),
        imbalance: 2.0,
        val_fraction: None,
        seed: 0,
    };
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::remove_var("HUGGINGFACE_HUB_CACHE");
    // Through HF_HUB_CACHE.
    std::env::set_var("HF_HUB_CACHE", &cache);
    let a = load_splits(&spec).unwrap();
    // Through HF_HOME (the cache is $HF_HOME/hub).
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", home.path());
    let b = load_splits(&spec).unwrap();
    // Pinned to the commit.
    let pinned = DataSpec {
        data_dir: Some(PathBuf::from(format!("hf://uoft-cs/cifar10@{COMMIT}"))),
        ..spec.clone()
    };
    let c = load_splits(&pinned).unwrap();
    // Not cached: a repository that is not there.
    let missing = DataSpec {
        data_dir: Some(PathBuf::from("hf://someone/cifar10-copy")),
        ..spec.clone()
    };
    let t = Instant::now();
    let e = load_splits(&missing).unwrap_err();
    let took = t.elapsed().as_secs_f64();
    std::env::remove_var("HF_HOME");
    std::env::remove_var("HF_HUB_OFFLINE");

    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.test.images, test.images);
    // The LDAM-DRW subset of 4 per class at imbalance 2: 4, then fewer, down to 2.
    let counts = a.train.class_counts();
    assert_eq!((counts[0], counts[9]), (4, 2), "{counts:?}");
    assert!(matches!(e, DataError::MissingFile { .. }), "{e:?}");
    assert!(e.to_string().contains("someone/cifar10-copy"), "{e}");
    assert!(took < 1.0, "offline miss took {took} s");
}

#[test]
fn not_cached_offline_fails_at_once_saying_how_to_get_the_files() {
    let cache = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let e = load_cifar_hub(
        &HubSource::default_for(CifarKind::Cifar10),
        CifarKind::Cifar10,
        &offline(cache.path()),
    )
    .unwrap_err();
    let took = t.elapsed().as_secs_f64();
    assert!(took < 1.0, "offline miss took {took} s");
    let DataError::MissingFile { path, hint } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        path,
        Path::new("hf://uoft-cs/cifar10/plain_text/train-00000-of-00001.parquet")
    );
    for want in [
        "HF_HUB_OFFLINE",
        "huggingface-cli download --repo-type dataset uoft-cs/cifar10",
        "HF_HUB_CACHE",
        "--data-dir with the CIFAR binary files",
    ] {
        assert!(hint.contains(want), "missing `{want}` in: {e}");
    }
    assert!(hint.contains(&cache.path().display().to_string()), "{e}");
}

#[test]
fn corrupt_files_are_typed_errors() {
    let good = synth(10, 1, 7);
    let names = cifar10_names();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("good.parquet");
    write_parquet(&p, &pngs(&good), &[("label", good.labels.clone())], &names);
    let bytes = std::fs::read(&p).unwrap();

    let bad_format = |bytes: &[u8], want: &str| {
        let q = dir.path().join("bad.parquet");
        std::fs::write(&q, bytes).unwrap();
        let e = read_cifar_parquet(&q, "label", 10).unwrap_err();
        assert!(
            matches!(&e, DataError::BadFormat { path, .. } if path == &q),
            "{e:?}"
        );
        assert!(e.to_string().contains(want), "want `{want}`: {e}");
    };
    bad_format(b"this is not parquet at all", "not a readable parquet file");
    bad_format(&bytes[..bytes.len() / 2], "not a readable parquet file");
    // Garbage in the middle (page data), footer intact.
    let mut mangled = bytes.clone();
    for b in &mut mangled[8..bytes.len() / 2] {
        *b ^= 0x5a;
    }
    let q = dir.path().join("mangled.parquet");
    std::fs::write(&q, &mangled).unwrap();
    assert!(matches!(
        read_cifar_parquet(&q, "label", 10),
        Err(DataError::BadFormat { .. })
    ));

    let q = dir.path().join("x.parquet");
    // Not PNG bytes.
    write_parquet(&q, &[b"no png".to_vec()], &[("label", vec![0])], &names);
    let e = read_cifar_parquet(&q, "label", 10).unwrap_err();
    assert!(e.to_string().contains("row 0: cannot decode image"), "{e}");
    // Wrong size.
    let small = image::RgbImage::new(16, 32);
    let mut buf = std::io::Cursor::new(Vec::new());
    small.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    write_parquet(&q, &[buf.into_inner()], &[("label", vec![0])], &names);
    let e = read_cifar_parquet(&q, "label", 10).unwrap_err();
    assert!(e.to_string().contains("image is 16x32"), "{e}");
    // Label out of range.
    write_parquet(
        &q,
        &pngs(&good),
        &[("label", vec![0, 1, 2, 10, 0, 0, 0, 0, 0, 0])],
        &names,
    );
    let e = read_cifar_parquet(&q, "label", 10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 3,
                label: 10,
                num_classes: 10,
                ..
            }
        ),
        "{e:?}"
    );
    // No such label column (CIFAR-100's name on a CIFAR-10 file).
    write_parquet(&q, &pngs(&good), &[("label", good.labels.clone())], &names);
    let e = read_cifar_parquet(&q, "fine_label", 100).unwrap_err();
    assert!(e.to_string().contains("no column `fine_label`"), "{e}");

    // Through the cache and `load_cifar_hub`, a corrupt cached file is the same typed error.
    let cache = tempfile::tempdir().unwrap();
    let src = HubSource::default_for(CifarKind::Cifar10);
    put_in_cache(
        cache.path(),
        CIFAR10_REPO,
        &src.train_file,
        b"PAR1 truncated",
    );
    put_in_cache(cache.path(), CIFAR10_REPO, &src.test_file, &bytes);
    let e = load_cifar_hub(&src, CifarKind::Cifar10, &offline(cache.path())).unwrap_err();
    assert!(matches!(e, DataError::BadFormat { .. }), "{e:?}");
}

#[test]
fn an_hf_data_dir_with_a_bad_reference_is_a_typed_error() {
    let spec = DataSpec {
        name: DatasetName::Cifar100Lt,
        data_dir: Some(PathBuf::from("hf://only-owner")),
        imbalance: 10.0,
        val_fraction: None,
        seed: 0,
    };
    let e = load_splits(&spec).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadParameter {
                name: "hub data reference",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("hf://uoft-cs/cifar100"), "{e}");
}
