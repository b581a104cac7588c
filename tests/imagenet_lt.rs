//! `longtail train` on a streamed benchmark: a tiny JPEG tree in the official ImageNet-LT layout
//! (4 classes, images of several sizes). The `ride.imagenet-lt` preset itself trains on it with
//! its classifier sized from the lists; a config of it with a ResNet-50 trunk and 64² crops
//! trains, resumes after a kill to the same weights, and writes per_class.csv.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use longtail::data::synth::{write_tree, TreeSpec};
use longtail::data::DatasetName;

fn longtail(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the longtail binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The tree and a config: `ride.imagenet-lt` with ResNet-50, 4 classes, 64² crops, 2 epochs of
/// batch 6.
fn setup(dir: &Path) -> PathBuf {
    let root = dir.join("ImageNet_LT");
    write_tree(
        &root,
        &TreeSpec {
            layout: DatasetName::ImagenetLt,
            train_counts: vec![8, 5, 3, 2],
            test_per_class: 2,
            val_per_class: 1,
            sizes: vec![(48, 40), (40, 56), (72, 48), (80, 60)],
            quality: 90,
            seed: 3,
        },
    )
    .unwrap();
    let o = longtail(dir, &["presets", "ride.imagenet-lt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cfg: toml::Table = toml::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    assert_eq!(data["augment"].as_str(), Some("imagenet"));
    data.insert(
        "data_dir".into(),
        root.to_string_lossy().into_owned().into(),
    );
    data.insert("image_size".into(), 64.into());
    let model = cfg["model"].as_table_mut().unwrap();
    model.insert("arch".into(), "resnet50".into());
    model.insert("num_classes".into(), 4.into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), 2.into());
    optim.insert("batch_size".into(), 6.into());
    optim.insert("eval_batch_size".into(), 8.into());
    let path = dir.join("inlt.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

#[test]
fn imagenet_lt_trains_resumes_and_writes_per_class_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let cfg = cfg.to_str().unwrap();

    // The preset itself, on the 4-class subset: its classifier is sized from the lists (the
    // real ResNeXt-50 RIDE-3 model, one epoch of 64² crops).
    let root = dir.path().join("ImageNet_LT");
    let o = longtail(
        dir.path(),
        &[
            "train",
            "--preset",
            "ride.imagenet-lt",
            "--data-dir",
            root.to_str().unwrap(),
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "6",
            "--out",
            "preset",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("preset/config.toml")).unwrap())
            .unwrap();
    assert_eq!(saved["model"]["num_classes"].as_integer(), Some(4));
    assert_eq!(saved["model"]["arch"].as_str(), Some("resnext50"));
    let csv = std::fs::read_to_string(dir.path().join("preset/per_class.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");

    // A config file says its own class count: 1000 against the 4-class lists is a clear error,
    // and nothing is run.
    let mut wrong: toml::Table = toml::from_str(&std::fs::read_to_string(cfg).unwrap()).unwrap();
    wrong["model"]
        .as_table_mut()
        .unwrap()
        .insert("num_classes".into(), 1000.into());
    let wrong_path = dir.path().join("wrong.toml");
    std::fs::write(&wrong_path, toml::to_string(&wrong).unwrap()).unwrap();
    let o = longtail(
        dir.path(),
        &[
            "train",
            "--config",
            wrong_path.to_str().unwrap(),
            "--out",
            "wrong",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("has 4 classes but the model is configured for 1000"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("wrong").exists());

    let o = longtail(dir.path(), &["train", "--config", cfg, "--out", "straight"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "warning: the imagenet-lt lists hold 4 classes, the benchmark has 1000: training on a subset"
        ),
        "{}",
        stderr(&o)
    );
    let csv = std::fs::read_to_string(dir.path().join("straight/per_class.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "class",
            "name",
            "train_count",
            "test_count",
            "shot",
            "accuracy"
        ]
    );
    assert_eq!(rows.len(), 5);
    for (c, (row, n)) in rows[1..].iter().zip([8, 5, 3, 2]).enumerate() {
        assert_eq!(row[0], c.to_string());
        assert_eq!(row[2], n.to_string());
        assert_eq!(row[3], "2");
        assert_eq!(row[4], "few"); // RIDE rule: fewer than 20 training images
        let acc: f64 = row[5].parse().unwrap();
        assert!([0.0, 0.5, 1.0].contains(&acc), "{acc}");
    }

    // Killed after its first epoch and resumed: the same weights as the straight run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(["train", "--config", cfg, "--out", "killed", "--quiet"])
        .current_dir(dir.path())
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("killed/metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 1 {
        assert!(t0.elapsed().as_secs() < 600, "no epoch finished");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = std::fs::read_to_string(&metrics).unwrap().lines().count();
    assert!(done < 2, "the run finished before it could be killed");
    let o = longtail(
        dir.path(),
        &[
            "train", "--config", cfg, "--out", "killed", "--resume", "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(dir.path().join("straight/last.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("killed/last.safetensors")).unwrap();
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(ta.len(), tb.len());
    for (name, t) in ta.tensors() {
        assert!(
            t.data() == tb.tensor(&name).unwrap().data(),
            "{name} differs after resume"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("killed/per_class.csv")).unwrap(),
        csv
    );
}

/// `--pretrained` with a trunk that does not fit the model is one clear error, and leaves no
/// run folder behind.
#[test]
fn a_pretrained_trunk_that_does_not_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    // conv1 has torchvision's shape; layer1.0.conv1 has not, and the rest of the trunk is
    // missing.
    let conv1 = vec![0u8; 64 * 3 * 7 * 7 * 4];
    let odd = vec![0u8; 7 * 4];
    let views = vec![
        (
            "conv1.weight".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![64, 3, 7, 7],
                &conv1,
            )
            .unwrap(),
        ),
        (
            "layer1.0.conv1.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![7], &odd).unwrap(),
        ),
    ];
    let file = dir.path().join("trunk.safetensors");
    safetensors::serialize_to_file(views, None, &file).unwrap();
    let o = longtail(
        dir.path(),
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "pre",
            "--pretrained",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--pretrained") && err.contains("missing keys"),
        "{err}"
    );
    assert!(err.contains("layer1.0.conv1.weight"), "{err}");
    assert!(!dir.path().join("pre").exists());
}

/// `--dataset image-list`: your own lists of mixed-size JPEGs train with the method's
/// ImageNet-LT recipe, streamed, the classifier sized from the lists; a fixed-size (CIFAR)
/// recipe on the same lists is refused, naming the odd image, instead of resizing it silently.
#[test]
fn your_own_image_lists_stream_with_the_imagenet_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mine");
    write_tree(
        &root,
        &TreeSpec {
            layout: DatasetName::ImageList,
            train_counts: vec![6, 4, 3],
            test_per_class: 2,
            val_per_class: 1,
            sizes: vec![(48, 40), (40, 56), (72, 48)],
            quality: 90,
            seed: 5,
        },
    )
    .unwrap();
    let root_s = root.to_str().unwrap();
    let o = longtail(
        dir.path(),
        &["data", "--dataset", "image-list", "--data-dir", root_s],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("13 training, 3 validation, 6 test images"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let o = longtail(
        dir.path(),
        &[
            "train",
            "--method",
            "ce",
            "--dataset",
            "image-list",
            "--data-dir",
            root_s,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--image-size",
            "64",
            "--out",
            "own",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("own/config.toml")).unwrap())
            .unwrap();
    assert_eq!(cfg["preset"].as_str(), Some("ce.image-list"));
    assert_eq!(cfg["data"]["dataset"].as_str(), Some("image-list"));
    assert_eq!(cfg["data"]["augment"].as_str(), Some("imagenet"));
    assert_eq!(cfg["data"]["image_size"].as_integer(), Some(64));
    assert_eq!(cfg["model"]["num_classes"].as_integer(), Some(3));
    let csv = std::fs::read_to_string(dir.path().join("own/per_class.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");

    // The same lists under a CIFAR recipe (pad-and-crop of same-sized images, in memory).
    let o = longtail(dir.path(), &["presets", "ce.cifar10-lt"]);
    let mut cifar: toml::Table = toml::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let data = cifar["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "image-list".into());
    data.insert("data_dir".into(), root_s.into());
    cifar["model"]
        .as_table_mut()
        .unwrap()
        .insert("num_classes".into(), 3.into());
    let path = dir.path().join("cifar.toml");
    std::fs::write(&path, toml::to_string(&cifar).unwrap()).unwrap();
    let o = longtail(
        dir.path(),
        &[
            "train",
            "--config",
            path.to_str().unwrap(),
            "--out",
            "cifar",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(".JPEG: image is") && err.contains("streamed"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(!dir.path().join("cifar/last.safetensors").exists());
}
