//! Typed errors: missing files, wrong configs, tensors that do not fit the config, bad inputs.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use longtail_trunks::{LoadOptions, PretrainedTrunk, Trunk, TrunkConfig, TrunkError, TrunkRef};

use crate::common::{fixture_files, trunk_folder, TestResult};

fn load(dir: &std::path::Path) -> Result<PretrainedTrunk, TrunkError> {
    PretrainedTrunk::load(&TrunkRef::Local(dir.to_path_buf()), &LoadOptions::default())
}

#[test]
fn missing_files() -> TestResult {
    let d = tempfile::tempdir()?;
    let e = load(&d.path().join("nope")).unwrap_err();
    assert!(matches!(e, TrunkError::MissingFile { .. }), "{e}");
    let folder = trunk_folder(d.path(), "vit_tiny_random");
    std::fs::remove_file(folder.join("model.safetensors"))?;
    let e = load(&folder).unwrap_err();
    assert!(
        matches!(&e, TrunkError::MissingFile { path, .. } if path.ends_with("model.safetensors")),
        "{e}"
    );
    std::fs::remove_file(folder.join("config.json"))?;
    let e = load(&folder).unwrap_err();
    assert!(
        matches!(&e, TrunkError::MissingFile { path, .. } if path.ends_with("config.json")),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_wrong_config_is_a_typed_error() -> TestResult {
    let d = tempfile::tempdir()?;
    let folder = trunk_folder(d.path(), "vit_tiny_random");
    std::fs::write(folder.join("config.json"), r#"{"model_type": "bert"}"#)?;
    let e = load(&folder).unwrap_err();
    assert!(matches!(e, TrunkError::BadConfig { .. }), "{e}");
    std::fs::write(folder.join("config.json"), "not json")?;
    let e = load(&folder).unwrap_err();
    assert!(matches!(e, TrunkError::BadConfig { .. }), "{e}");
    // A preprocessor config that cannot be read is a config error too.
    std::fs::copy(
        fixture_files("vit_tiny_random").0,
        folder.join("config.json"),
    )?;
    std::fs::write(
        folder.join("preprocessor_config.json"),
        r#"{"resample": 7}"#,
    )?;
    let e = load(&folder).unwrap_err();
    assert!(
        matches!(&e, TrunkError::BadConfig { path, .. } if path.ends_with("preprocessor_config.json")),
        "{e}"
    );
    Ok(())
}

/// The config says one thing, the weights another.
#[test]
fn weights_that_do_not_fit_the_config() -> TestResult {
    let d = tempfile::tempdir()?;
    let folder = trunk_folder(d.path(), "dinov2_tiny_random");
    let config = std::fs::read_to_string(folder.join("config.json"))?;
    // A wider MLP than the weights have: a shape mismatch, named.
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"mlp_ratio\": 2", "\"mlp_ratio\": 4"),
    )?;
    let e = load(&folder).unwrap_err();
    let TrunkError::ShapeMismatch {
        name,
        expected,
        got,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(name, "encoder.layer.0.mlp.fc1.bias");
    assert_eq!(
        (expected.as_slice(), got.as_slice()),
        (&[128][..], &[64][..])
    );
    // More layers than the weights have: a missing tensor.
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )?;
    let e = load(&folder).unwrap_err();
    assert!(
        matches!(&e, TrunkError::MissingTensor { name, .. } if name.starts_with("encoder.layer.2.")),
        "{e}"
    );
    // Fewer: the weights hold tensors the config does not call for.
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )?;
    let e = load(&folder).unwrap_err();
    assert!(
        matches!(&e, TrunkError::UnexpectedTensor { name, .. } if name.starts_with("encoder.layer.1.")),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_missing_tensor_is_named() -> TestResult {
    let (config, model) = fixture_files("clip_vision_tiny_random");
    let cfg = TrunkConfig::from_file(&config)?;
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&model, &Device::Cpu)?;
    tensors.remove("vision_model.embeddings.class_embedding");
    let e = Trunk::from_tensors(&cfg, tensors, &model, DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&e, TrunkError::MissingTensor { name, .. } if name == "vision_model.embeddings.class_embedding"),
        "{e}"
    );
    Ok(())
}

/// A ViT checkpoint without a pooler (as ViTForImageClassification saves) still loads: its pooled
/// feature is the final CLS token. One pooler tensor without the other is an error.
#[test]
fn vit_without_pooler_pools_the_cls_token() -> TestResult {
    let (config, model) = fixture_files("vit_tiny_random");
    let cfg = TrunkConfig::from_file(&config)?;
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&model, &Device::Cpu)?;
    tensors.remove("pooler.dense.weight");
    let e =
        Trunk::from_tensors(&cfg, tensors.clone(), &model, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(e, TrunkError::MissingTensor { .. }), "{e}");
    tensors.remove("pooler.dense.bias");
    let trunk = Trunk::from_tensors(&cfg, tensors, &model, DType::F32, &Device::Cpu)?;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu)?;
    let out = trunk.forward(&x)?;
    let cls = out.last_hidden_state.i((.., 0, ..))?;
    assert_eq!(out.pooled.to_vec2::<f32>()?, cls.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn bad_inputs_are_typed_errors() -> TestResult {
    let (config, model) = fixture_files("vit_tiny_random");
    let cfg = TrunkConfig::from_file(&config)?;
    let trunk = Trunk::from_file(&cfg, &model, DType::F32, &Device::Cpu)?;
    for shape in [&[2usize, 3, 48, 48][..], &[2, 1, 32, 32], &[3, 32, 32]] {
        let x = Tensor::zeros(shape, DType::F32, &Device::Cpu)?;
        let e = trunk.forward(&x).unwrap_err();
        assert!(matches!(e, TrunkError::BadInput { .. }), "{shape:?}: {e}");
    }
    Ok(())
}
