//! Seeded mutation fuzzing of checkpoint reading (`checkpoint::load`).
//!
//! Starts from a small valid checkpoint and applies a fixed-seed series of mutations: bit flips,
//! truncation, inserted bytes, the header length overwritten with huge values, and JSON-aware
//! edits of the header (numbers in shapes and offsets replaced by huge or off-by-one values,
//! dtypes swapped). Every case must load or fail with a typed error, never panic; a loaded
//! checkpoint holds no more tensor bytes than the file; and the largest single allocation
//! (measured by this binary's global allocator, per thread) stays within a bound tied to the
//! file size.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use longtail_fixtures::fuzz::{env_or, largest_during, Largest};
use longtail_train::checkpoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Cases (each a fresh mutation of the valid file); `LONGTAIL_FUZZ_CASES` overrides it.
const CASES: usize = 400;
/// The fixed seed; `LONGTAIL_FUZZ_SEED` overrides it.
const SEED: u64 = 0x1415_C4EC;

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Slack for fixed-size allocations (paths, error messages, small maps).
const SLACK: usize = 64 << 10;

// ---- Mutations ------------------------------------------------------------------------------

/// Numbers written over the header's shapes and offsets.
const NUMBERS: [&str; 9] = [
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "4294967296",
    "4294967295",
    "0",
    "1",
    "-1",
    "1e3",
];

/// Dtypes written over the header's (`safetensors` names, some candle cannot hold).
const DTYPES: [&str; 12] = [
    "F32", "F64", "F16", "BF16", "U8", "I8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "F4",
];

fn header_len(b: &[u8]) -> usize {
    b.get(..8)
        .map(|h| u64::from_le_bytes(h.try_into().unwrap()) as usize)
        .unwrap_or(0)
}

/// One to three mutations of the checkpoint `input`.
fn mutate(rng: &mut ChaCha8Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let len = b.len();
        let n = header_len(&b).min(len.saturating_sub(8));
        match rng.random_range(0..8) {
            // Flip a bit anywhere.
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            // Truncate.
            1 => b.truncate(rng.random_range(0..=len)),
            // Insert random bytes.
            2 => {
                let at = rng.random_range(0..=len);
                let k = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..k).map(|_| rng.random()).collect();
                b.splice(at..at, bytes);
            }
            // The header length: huge, off by a little, or past the end.
            3 if len >= 8 => {
                let v: u64 = match rng.random_range(0..5) {
                    0 => u64::MAX,
                    1 => 100_000_001,
                    2 => (n as u64).wrapping_add(rng.random_range(1..=9)),
                    3 => (n as u64).saturating_sub(rng.random_range(1..=9)),
                    _ => len as u64,
                };
                b[..8].copy_from_slice(&v.to_le_bytes());
            }
            // A number in the JSON header (shape, offset) replaced.
            4 | 5 if n > 0 => {
                let digits: Vec<usize> = (8..8 + n).filter(|&i| b[i].is_ascii_digit()).collect();
                if let Some(&i) = digits.get(rng.random_range(0..digits.len().max(1))) {
                    let end = (i..8 + n)
                        .find(|&j| !b[j].is_ascii_digit())
                        .unwrap_or(8 + n);
                    let start = (8..=i)
                        .rev()
                        .find(|&j| !b[j].is_ascii_digit())
                        .map_or(8, |j| j + 1);
                    let num = if rng.random_bool(0.3) {
                        let old: u64 = std::str::from_utf8(&b[start..end])
                            .unwrap()
                            .parse()
                            .unwrap_or(0);
                        old.saturating_add(rng.random_range(1..=4)).to_string()
                    } else {
                        NUMBERS[rng.random_range(0..NUMBERS.len())].to_string()
                    };
                    b.splice(start..end, num.bytes());
                    fix_header_len(&mut b, n, end - start, num.len());
                }
            }
            // A dtype swapped.
            6 if n > 0 => {
                let key = b"\"dtype\":\"";
                if let Some(at) = b[8..8 + n].windows(key.len()).position(|w| w == key) {
                    let s = 8 + at + key.len();
                    let e = (s..8 + n).find(|&j| b[j] == b'"').unwrap_or(s);
                    let d = DTYPES[rng.random_range(0..DTYPES.len())];
                    b.splice(s..e, d.bytes());
                    fix_header_len(&mut b, n, e - s, d.len());
                }
            }
            // Set a byte of the header to a random value.
            _ if n > 0 => {
                let i = 8 + rng.random_range(0..n);
                b[i] = rng.random();
            }
            _ => b.push(rng.random()),
        }
    }
    b
}

/// After replacing `old` header bytes by `new`, keeps the header length consistent half of the
/// time (so the JSON is parsed rather than rejected for its length).
fn fix_header_len(b: &mut [u8], n: usize, old: usize, new: usize) {
    if b.len() >= 8 && (n + old + new).is_multiple_of(2) {
        let fixed = (n + new).saturating_sub(old) as u64;
        b[..8].copy_from_slice(&fixed.to_le_bytes());
    }
}

fn seed_checkpoint(path: &std::path::Path) -> Vec<u8> {
    let vm = VarMap::new();
    vm.get(
        (2, 3),
        "a.weight",
        Init::Const(0.5),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    vm.get(
        4,
        "bn.running_var",
        Init::Const(1.0),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    vm.get(3, "c.bias", Init::Const(0.25), DType::F64, &Device::Cpu)
        .unwrap();
    let momentum = BTreeMap::from([(
        "a.weight".to_string(),
        Tensor::full(0.1f32, (2, 3), &Device::Cpu).unwrap(),
    )]);
    let meta = BTreeMap::from([
        ("epoch".to_string(), "3".to_string()),
        ("config".to_string(), "[run]\nseed = 1\n".to_string()),
    ]);
    checkpoint::save(path, &vm, Some(&momentum), &meta).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn checkpoint_load_never_panics_and_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ck.safetensors");
    let valid = seed_checkpoint(&path);
    let (cases, seed) = (
        env_or("LONGTAIL_FUZZ_CASES", CASES),
        env_or("LONGTAIL_FUZZ_SEED", SEED),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut failures = vec![];
    let mut loaded = 0;
    for case in 0..cases {
        let bytes = mutate(&mut rng, &valid);
        std::fs::write(&path, &bytes).unwrap();
        let (r, largest) = largest_during(|| {
            checkpoint::load(&path, &Device::Cpu).map(|ck| {
                let all = ck.tensors.values().chain(ck.momentum.values());
                let data: usize = all
                    .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                    .sum();
                let epoch = ck.epoch().ok();
                (data, epoch)
            })
        });
        match r {
            None => failures.push(format!("case {case}: panic on {} bytes", bytes.len())),
            Some(Ok((data, _))) => {
                loaded += 1;
                if data > bytes.len() {
                    failures.push(format!(
                        "case {case}: {data} tensor bytes from a {}-byte file",
                        bytes.len()
                    ));
                }
            }
            Some(Err(_)) => {}
        }
        // The file itself, plus at most f32 copies of each tensor for the finiteness check
        // (8 bytes per 1-byte element at worst, counting the flattened copy).
        if largest > 8 * bytes.len() + SLACK {
            failures.push(format!(
                "case {case}: allocated {largest} bytes for a {}-byte file",
                bytes.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed (LONGTAIL_FUZZ_SEED={seed}, LONGTAIL_FUZZ_CASES={cases}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The mutations are not all fatal: some files still load.
    assert!(loaded > 0, "no mutated checkpoint loaded");
}
