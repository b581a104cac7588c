//! Seeded mutation fuzzing of what this crate parses from text: `hf://` checkpoint references
//! (`CheckpointRef::parse`) and the Hub cache's `refs/<branch>` file, read when a reference is
//! resolved offline.
//!
//! Every case must end in a typed error or a valid result, never a panic. A parsed reference
//! must print back to itself, and a resolved file must lie inside the repository's
//! `snapshots/` folder of the cache. A failure names the case to replay
//! (`LONGTAIL_FUZZ_SEED`, `LONGTAIL_FUZZ_CASES`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};

use longtail_hub::{resolve_with, CheckpointRef, HubOptions, MODEL_FILE};

/// Cases per target; `LONGTAIL_FUZZ_CASES` overrides it.
const CASES: usize = 400;
/// The fixed seed; `LONGTAIL_FUZZ_SEED` overrides it.
const SEED: u64 = 0x1415_4B0B;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: a small fixed-seed generator (this crate has no `rand`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces spliced into references and refs files: separators, traversal, odd characters.
const TOKENS: [&str; 18] = [
    "/",
    "@",
    ".",
    "..",
    "../",
    "/..",
    "//",
    "hf://",
    " ",
    "\n",
    "\t",
    "\0",
    "é",
    "%2e%2e",
    "~",
    "\\",
    "-",
    "refs/pr/1",
];

/// One to three mutations of `input` (bytes; the caller decides what invalid UTF-8 means).
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(len + 1)),
            2 | 3 => {
                let at = rng.below(len + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(at..at, t.bytes());
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below(len - at);
                b.drain(at..at + n);
            }
            _ => {
                // A long run of one name character.
                let at = rng.below(len + 1);
                let n = 1 + rng.below(300);
                b.splice(at..at, std::iter::repeat_n(b'a', n));
            }
        }
    }
    b
}

fn report(what: &str, failures: Vec<String>, seed: u64, cases: usize) {
    assert!(
        failures.is_empty(),
        "{what}: {} cases failed (LONGTAIL_FUZZ_SEED={seed}, LONGTAIL_FUZZ_CASES={cases}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn checkpoint_references_never_panic_and_print_back() {
    let corpus = [
        "hf://me/ride-c10",
        "hf://me/ride-c10@v1.0/weights/best.safetensors",
        "hf://org/m@0123456789abcdef0123456789abcdef01234567/runs/best.safetensors",
        "hf://a.b/c_d-e@main/",
        "runs/a/last.safetensors",
    ];
    let (seed, cases) = (
        env_or("LONGTAIL_FUZZ_SEED", SEED),
        env_or("LONGTAIL_FUZZ_CASES", CASES),
    );
    let mut rng = Rng(seed);
    let mut failures = vec![];
    for case in 0..cases {
        let bytes = mutate(&mut rng, corpus[case % corpus.len()].as_bytes());
        let s = String::from_utf8_lossy(&bytes).into_owned();
        let r = catch_unwind(AssertUnwindSafe(|| {
            CheckpointRef::parse(&s).map_err(|e| e.to_string())
        }));
        match r {
            Err(_) => failures.push(format!("case {case}: panic on {s:?}")),
            Ok(Ok(CheckpointRef::Hub(h))) => {
                let printed = h.to_string();
                let back = CheckpointRef::parse(&printed);
                if !matches!(&back, Ok(CheckpointRef::Hub(b)) if *b == h) {
                    failures.push(format!(
                        "case {case}: {s:?} prints as {printed:?}, which parses as {back:?}"
                    ));
                }
                let parts = [&h.owner, &h.repo]
                    .into_iter()
                    .chain(h.revision.as_ref())
                    .map(String::as_str)
                    .chain(h.file.split('/'));
                for p in parts {
                    if p.is_empty() || p == "." || p == ".." || p.contains(['/', '\\', '\0', ' ']) {
                        failures.push(format!("case {case}: {s:?} has the component {p:?}"));
                    }
                }
            }
            Ok(Ok(CheckpointRef::Local(p))) => {
                if s.starts_with("hf://") || p != Path::new(&s) {
                    failures.push(format!("case {case}: {s:?} read as the local path {p:?}"));
                }
            }
            Ok(Err(_)) => {}
        }
    }
    report("checkpoint references", failures, seed, cases);
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A cache holding `model.safetensors` of `someone/model` at `COMMIT` (a symlink to its blob, as
/// hf-hub writes it); returns the repository folder.
fn cache_with_model(cache: &Path) -> PathBuf {
    let folder = cache.join("models--someone--model");
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("blobs/etag0"), b"not parsed here").unwrap();
    let snap = folder.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::os::unix::fs::symlink("../../blobs/etag0", snap.join(MODEL_FILE)).unwrap();
    folder
}

/// Whether `path` is `<folder>/snapshots/<commit>/<file…>` with plain components only.
fn inside_snapshots(folder: &Path, path: &Path) -> bool {
    path.strip_prefix(folder.join("snapshots"))
        .is_ok_and(|rest| {
            rest.components().count() >= 2
                && rest.components().all(|c| matches!(c, Component::Normal(_)))
        })
}

#[test]
fn cached_refs_files_never_panic_and_stay_in_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let folder = cache_with_model(&cache);
    // A model outside the cache that a refs file must not lead to.
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join(MODEL_FILE), b"elsewhere").unwrap();
    let opts = HubOptions {
        offline: true,
        endpoint: Some("http://127.0.0.1:9".into()),
        cache_dir: Some(cache.clone()),
        retries: 0,
    };
    let reference = CheckpointRef::parse("hf://someone/model").unwrap();
    let outside_text = outside.display().to_string();
    let corpus: [&[u8]; 4] = [
        COMMIT.as_bytes(),
        b"0123456789abcdef0123456789abcdef01234567\n",
        b"../../../outside",
        outside_text.as_bytes(),
    ];
    let (seed, cases) = (
        env_or("LONGTAIL_FUZZ_SEED", SEED) ^ 1,
        env_or("LONGTAIL_FUZZ_CASES", CASES) / 2,
    );
    let mut rng = Rng(seed);
    let mut failures = vec![];
    let mut resolved = 0;
    for case in 0..cases {
        // The corpus as is first, then mutations of it.
        let bytes = match case < corpus.len() {
            true => corpus[case].to_vec(),
            false => mutate(&mut rng, corpus[case % corpus.len()]),
        };
        std::fs::write(folder.join("refs/main"), &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            resolve_with(&reference, &opts).map_err(|e| e.to_string())
        }));
        let text = String::from_utf8_lossy(&bytes);
        match r {
            Err(_) => failures.push(format!("case {case}: panic on refs/main = {text:?}")),
            Ok(Ok(p)) => {
                resolved += 1;
                if !inside_snapshots(&folder, &p) {
                    failures.push(format!(
                        "case {case}: refs/main = {text:?} resolves to {}",
                        p.display()
                    ));
                }
            }
            Ok(Err(_)) => {}
        }
    }
    report("cached refs files", failures, seed, cases);
    assert!(resolved > 0, "no case resolved");
}

#[test]
fn a_refs_file_leading_outside_the_cache_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let folder = cache_with_model(&cache);
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join(MODEL_FILE), b"elsewhere").unwrap();
    let opts = HubOptions {
        offline: true,
        endpoint: Some("http://127.0.0.1:9".into()),
        cache_dir: Some(cache.clone()),
        retries: 0,
    };
    let reference = CheckpointRef::parse("hf://someone/model").unwrap();
    for refs in [outside.display().to_string(), "../../../outside".into()] {
        std::fs::write(folder.join("refs/main"), &refs).unwrap();
        let e = resolve_with(&reference, &opts).unwrap_err();
        assert!(matches!(e, longtail_hub::HubError::Hub { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("outside the cache") && msg.contains("refs/main"),
            "{msg}"
        );
    }
    // The commit itself still resolves.
    std::fs::write(folder.join("refs/main"), COMMIT).unwrap();
    let p = resolve_with(&reference, &opts).unwrap();
    assert!(inside_snapshots(&folder, &p), "{}", p.display());
}
