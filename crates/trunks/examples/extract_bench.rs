//! Feature-extraction speed of a full-size trunk with random weights (the real shapes, so the
//! real cost; no download).
//!
//! ```sh
//! cargo run --release -p longtail-trunks --example extract_bench -- [vit-b16|clip-b16|dinov2-s] [batch] [images]
//! ```
//!
//! Prints two figures: the trunk alone on preprocessed 224² batches, and the whole feature cache
//! ([`extract_features`]: resize of 32×32 CIFAR-sized images to 224², normalise, trunk, write)
//! into a temporary file.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use longtail_data::Dataset;
use longtail_trunks::{
    extract_features, ExtractOptions, Preprocess, PretrainedTrunk, Trunk, TrunkConfig, TrunkFiles,
};

fn config(name: &str) -> TrunkConfig {
    let json = match name {
        // google/vit-base-patch16-224-in21k
        "vit-b16" => {
            r#"{"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "image_size": 224, "patch_size": 16}"#
        }
        // openai/clip-vit-base-patch16 (vision tower)
        "clip-b16" => {
            r#"{"model_type": "clip_vision_model", "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "image_size": 224, "patch_size": 16,
            "projection_dim": 512}"#
        }
        // facebook/dinov2-small (518 px grid, run at 224 px: interpolated positions)
        "dinov2-s" => {
            r#"{"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12,
            "num_attention_heads": 6, "image_size": 518, "patch_size": 14}"#
        }
        other => panic!("unknown trunk {other}: vit-b16, clip-b16 or dinov2-s"),
    };
    TrunkConfig::from_json(json, "config.json".as_ref()).expect("a valid config")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("vit-b16", String::as_str);
    let batch: usize = args.get(1).map_or(Ok(32), |s| s.parse())?;
    let images: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let dev = Device::Cpu;
    let cfg = config(name);
    let trunk = Trunk::random(&cfg, DType::F32, &dev)?;
    let params: usize = Trunk::manifest(&cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    println!(
        "{name}: {:.1} M parameters, feature dim {}, {} threads, batch {batch}",
        params as f64 / 1e6,
        trunk.feature_dim(),
        rayon::current_num_threads()
    );

    // Multiply-adds per 224² image (patch projection, attention projections and scores, MLP),
    // and the machine's matmul rate on the MLP's shape under its current load, to read the
    // figures below against.
    let d = trunk.hidden_size();
    let (p, mlp) = match &cfg {
        TrunkConfig::Vit(c) => (c.patch_size, c.intermediate_size),
        TrunkConfig::Clip(c) => (c.patch_size, c.intermediate_size),
        TrunkConfig::Dinov2(c) => (c.patch_size, (c.hidden_size as f64 * c.mlp_ratio) as usize),
    };
    let blocks = match &cfg {
        TrunkConfig::Vit(c) => c.num_hidden_layers,
        TrunkConfig::Clip(c) => c.num_hidden_layers,
        TrunkConfig::Dinov2(c) => c.num_hidden_layers,
    };
    let n = (224 / p) * (224 / p) + 1;
    let macs = (n - 1) * 3 * p * p * d + blocks * (4 * n * d * d + 2 * n * n * d + 2 * n * d * mlp);
    let a = Tensor::randn(0f32, 1.0, (batch * n, d), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (d, mlp), &dev)?;
    a.matmul(&b)?;
    let t0 = Instant::now();
    for _ in 0..3 {
        a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
    }
    let gemm = 3.0 * 2.0 * (batch * n * d * mlp) as f64 / t0.elapsed().as_secs_f64() / 1e9;
    println!(
        "{:.2} GMAC per 224² image; matmul [{}×{d}]·[{d}×{mlp}] runs at {gemm:.0} GFLOP/s here now",
        macs as f64 / 1e9,
        batch * n
    );

    // 1. The trunk alone, on 224² inputs; one warm-up batch first.
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &dev)?;
    trunk.forward(&x)?;
    let t0 = Instant::now();
    let mut seen = 0;
    while seen < images {
        let out = trunk.forward(&x)?;
        out.pooled.sum_all()?.to_scalar::<f32>()?;
        seen += batch;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "trunk forward: {seen} images in {secs:.2} s = {:.2} img/s ({:.0} GFLOP/s)",
        seen as f64 / secs,
        2.0 * macs as f64 * seen as f64 / secs / 1e9
    );

    // 2. The whole cache: 32×32 RGB images → resize 224 → trunk → safetensors.
    let pixels: Vec<u8> = (0..images * 32 * 32 * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let labels: Vec<u32> = (0..images as u32).map(|i| i % 10).collect();
    let data = Dataset::new("bench", pixels, labels, (32, 32, 3), 10, vec![], vec![])?;
    let preprocess = Preprocess::defaults(&cfg);
    let pt = PretrainedTrunk {
        trunk,
        config: cfg,
        preprocess,
        files: TrunkFiles {
            config: "config.json".into(),
            model: "model.safetensors".into(),
            preprocessor: None,
            id: format!("random:{name}"),
            revision: "random".into(),
        },
        device: dev,
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("features.safetensors");
    let opts = ExtractOptions {
        batch_size: batch,
        ..Default::default()
    };
    let t0 = Instant::now();
    let status = extract_features(&pt, &data, &path, &opts)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "extract_features ({status:?}): {images} images in {secs:.2} s = {:.2} img/s",
        images as f64 / secs
    );
    Ok(())
}
