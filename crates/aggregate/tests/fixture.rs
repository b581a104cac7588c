//! The official SADE model's output is the mean of its expert logits.

use std::path::PathBuf;

use candle_core::Device;
use longtail_aggregate::{experts_first, mean_logits, weighted_logits};

/// `<workspace root>/fixtures/official`, the official parity fixtures kept in the repository
/// (this crate sits at `crates/aggregate`, two levels below the root; see `fixtures/README.md`).
fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/official");
    assert!(
        dir.is_dir(),
        "{} is missing: the repository's fixtures/official folder is required (see \
         fixtures/README.md)",
        dir.display()
    );
    dir
}

/// Expected: `sade_cifar_e3_c10.io.safetensors` (official SADE ResNet-32, E = 3, C = 10, eval mode;
/// recipe in `sade_cifar_e3_c10.json`): its `logits` [4, 10] is the forward's `output`, the mean of
/// `expert_logits` [4, 3, 10] (docs/sade.md §1.1).
#[test]
fn mean_logits_matches_the_official_forward_output() {
    let path = fixtures().join("sade_cifar_e3_c10.io.safetensors");
    let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let experts = experts_first(&t["expert_logits"]).unwrap();
    assert_eq!(experts.dims(), &[3, 4, 10]);
    let want = t["logits"].to_vec2::<f32>().unwrap();
    let uniform = weighted_logits(&experts, &[1.0 / 3.0; 3]).unwrap();
    for got in [mean_logits(&experts).unwrap(), uniform] {
        for (g, w) in got
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .flatten()
            .zip(want.iter().flatten())
        {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
