//! `longtail compare` end to end on tiny IDX data: two entries × two seeds, the table, its files,
//! and a second call that reuses every finished run.

mod util;
use util::{assert_fails, longtail, stderr, stdout, tiny_config};

#[test]
fn compare_two_methods_over_two_seeds_then_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ce = tiny_config(dir, "ce", 2, 20);
    let ride = tiny_config(dir, "ride", 2, 20);
    // Another augmentation on the same classes (as SADE's and TLC's presets): the per-class plot
    // still compares them.
    let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&ride).unwrap()).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    assert_ne!(data["augment"].as_str(), Some("crop-flip"));
    data.insert("augment".into(), "crop-flip".into());
    std::fs::write(&ride, toml::to_string(&cfg).unwrap()).unwrap();
    let (ce, ride) = (ce.to_str().unwrap(), ride.to_str().unwrap());
    // The τ-normalised CE model shares the CE entry's runs.
    let ce_tau = format!("{ce}+tau-norm");
    let args = [
        "compare", ce, ride, &ce_tau, "--seeds", "0,1", "--out", "cmp", "--quiet",
    ];
    let o = longtail(dir, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // One row per entry, every column with mean ± std, one best mark per column that has values.
    for name in ["ce.toml ", "ride.toml ", "ce.toml+tau-norm "] {
        let line = text
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.matches('±').count() >= 4, "{line}");
    }
    assert!(text.matches('*').count() >= 4, "{text}");
    for seed in [0, 1] {
        for run in ["ce", "ride"] {
            assert!(dir
                .join(format!("cmp/{run}/seed-{seed}/last.safetensors"))
                .is_file());
        }
    }
    let csv = std::fs::read_to_string(dir.join("cmp/compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.contains(",ce,tau-norm,2,"), "{csv}");
    assert!(
        csv.starts_with("entry,method,stage,seeds,overall_mean,overall_std"),
        "{csv}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cmp/compare.json")).unwrap())
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["method"], "ride");
    let seeds = rows[0]["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2);
    // Different seeds are different runs.
    assert_ne!(seeds[0]["per_class"], seeds[1]["per_class"]);
    let png = std::fs::read(dir.join("cmp/per_class.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(text.contains("per_class.png"), "{text}");

    // Again: every run is finished, so nothing trains and the table is the same.
    let again = longtail(dir, &args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again).matches("already trained").count(),
        6,
        "{}",
        stderr(&again)
    );
    let table = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.contains('±'))
            .map(String::from)
            .collect()
    };
    assert_eq!(table(&stdout(&again)), table(&text));
}

#[test]
fn compare_refuses_bad_entries_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_fails(
        &longtail(
            dir,
            &["compare", "ce.fmnist-lt", "nosuch.fmnist-lt", "--out", "c"],
        ),
        "nosuch",
    );
    assert_fails(
        &longtail(
            dir,
            &["compare", "ce.fmnist-lt", "--seeds", "1,1", "--out", "c"],
        ),
        "twice",
    );
    assert_fails(
        &longtail(dir, &["compare", "ce.fmnist-lt+", "--out", "c"]),
        "nothing after `+`",
    );
    assert_fails(
        &longtail(
            dir,
            &["compare", "ce.fmnist-lt", "ce.fmnist-lt", "--out", "c"],
        ),
        "listed twice",
    );
    // Nothing was trained or written.
    assert!(!dir.join("c").exists());
}
