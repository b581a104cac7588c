//! Shared helpers: the repository's fixtures directory and small files in the real formats.

use std::path::{Path, PathBuf};

/// `<workspace root>/fixtures`, the parity fixtures kept in the repository (this crate sits at
/// `crates/data`, two levels below the root; see `fixtures/README.md`).
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Parses the JSON fixture `rel` (e.g. `numpy/legacy_shuffle.json`) under the repository's
/// `fixtures/` folder.
pub fn fixture_json(rel: &str) -> serde_json::Value {
    let p = fixtures_root().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the file is missing from the repository's fixtures/ folder; see \
             fixtures/README.md)",
            p.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A JSON array of integers as `Vec<u64>`.
pub fn ints(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer"))
        .collect()
}

/// Pixel planes of synthetic CIFAR record `i`: R plane value `i`, G `i + 1`, B `i + 2` (mod 256),
/// with the top-left pixel of R set to the label so orientation can be checked.
pub fn cifar_record(i: usize, labels: &[u8]) -> Vec<u8> {
    let mut r = labels.to_vec();
    for plane in 0..3 {
        for p in 0..1024 {
            r.push(((i + plane + p) % 256) as u8);
        }
    }
    r
}

/// Writes a CIFAR-10 binary file of records with `labels`, indices starting at `first`.
pub fn write_cifar10(path: &Path, labels: &[u8], first: usize) {
    let mut bytes = Vec::new();
    for (k, &l) in labels.iter().enumerate() {
        bytes.extend(cifar_record(first + k, &[l]));
    }
    std::fs::write(path, bytes).unwrap();
}

/// Writes a gzip file.
pub fn write_gz(path: &Path, raw: &[u8]) {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(raw).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}
