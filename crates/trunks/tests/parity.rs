//! Our trunks against transformers: the outputs stored in `fixtures/hf/*.io*.safetensors` (made
//! by `make_hf_fixtures.py` with transformers 5.25.0, eval mode; see fixtures/hf/README.md).

use candle_core::{DType, Device, Tensor};
use longtail_trunks::{Trunk, TrunkConfig};

use crate::common::{fixture_files, hf_dir, max_abs_diff, TestResult};

const TOL: f32 = 1e-4;

/// Runs `model` on the fixture `io` and compares every output stored there; returns
/// (output, max |diff|) pairs.
fn check(model: &str, io: &str) -> Result<Vec<(&'static str, f32)>, Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let (config, weights) = fixture_files(model);
    let cfg = TrunkConfig::from_file(&config)?;
    let trunk = Trunk::from_file(&cfg, &weights, DType::F32, &dev)?;
    let io = candle_core::safetensors::load(hf_dir().join(io), &dev)?;
    let out = trunk.forward(&io["pixel_values"])?;
    let mut diffs = vec![];
    let mut compare = |name: &'static str, got: &Tensor| {
        if let Some(want) = io.get(name) {
            let d = max_abs_diff(got, want);
            eprintln!("{model} {name} {:?}: max |diff| {d:.3e}", want.dims());
            diffs.push((name, d));
        }
    };
    compare("last_hidden_state", &out.last_hidden_state);
    compare("pooler_output", &out.pooled);
    if let Some(e) = &out.embeds {
        compare("image_embeds", e);
    }
    for (name, d) in &diffs {
        assert!(*d < TOL, "{model} {name}: max |diff| {d} ≥ {TOL}");
    }
    Ok(diffs)
}

#[test]
fn vit_matches_transformers() -> TestResult {
    let d = check("vit_tiny_random", "vit_tiny_random.io.safetensors")?;
    assert_eq!(d.len(), 2, "last_hidden_state and pooler_output compared");
    Ok(())
}

#[test]
fn clip_matches_transformers() -> TestResult {
    let d = check(
        "clip_vision_tiny_random",
        "clip_vision_tiny_random.io.safetensors",
    )?;
    // The fixture stores last_hidden_state and image_embeds (image_embeds is the projection of
    // pooler_output, so it checks the pooled output too).
    assert_eq!(d.len(), 2);
    Ok(())
}

#[test]
fn dinov2_matches_transformers() -> TestResult {
    let d = check("dinov2_tiny_random", "dinov2_tiny_random.io.safetensors")?;
    assert_eq!(d.len(), 2);
    Ok(())
}

/// 48² inputs on a model trained for 32²: 6 × 6 patches from a 4 × 4 grid of positions,
/// interpolated bicubically as transformers does.
#[test]
fn dinov2_interpolates_positions_as_transformers() -> TestResult {
    let d = check("dinov2_tiny_random", "dinov2_tiny_random.io48.safetensors")?;
    assert_eq!(d.len(), 2);
    Ok(())
}

/// The same DINOv2 on a non-square input runs (positions interpolated to 4 × 6) and its CLS
/// output differs from the square one.
#[test]
fn dinov2_takes_non_square_inputs() -> TestResult {
    let (config, weights) = fixture_files("dinov2_tiny_random");
    let cfg = TrunkConfig::from_file(&config)?;
    let trunk = Trunk::from_file(&cfg, &weights, DType::F32, &Device::Cpu)?;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 48), &Device::Cpu)?;
    let out = trunk.forward(&x)?;
    assert_eq!(out.last_hidden_state.dims(), &[2, 1 + 4 * 6, 32]);
    assert_eq!(out.pooled.dims(), &[2, trunk.feature_dim()]);
    Ok(())
}
