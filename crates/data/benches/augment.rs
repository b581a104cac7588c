//! Augmented 32×32×3 images per second through the full `Batcher` (pad-crop + flip + rotation +
//! normalise + tensor), on rayon's default pool. `cargo bench -p longtail-data`.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use longtail_data::{Augment, Batcher, Dataset, Normalize, SamplerKind, Transform};

fn main() -> Result<(), longtail_data::DataError> {
    let n = 8192;
    let images: Vec<u8> = (0..n * 32 * 32 * 3)
        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 100) as u32).collect();
    let data = Arc::new(Dataset::new(
        "bench",
        images,
        labels,
        (32, 32, 3),
        100,
        vec![],
        vec![],
    )?);
    let tf = Transform::train(Augment::cifar(), Normalize::cifar());
    let run = |epoch: u64| -> Result<usize, longtail_data::DataError> {
        let mut seen = 0;
        for b in Batcher::new(
            Arc::clone(&data),
            SamplerKind::Shuffled,
            tf.clone(),
            128,
            0,
            epoch,
            &Device::Cpu,
        )? {
            seen += b?.indices.len();
        }
        Ok(seen)
    };
    run(0)?; // warm-up
    let epochs = 5;
    let start = Instant::now();
    let mut total = 0;
    for e in 1..=epochs {
        total += run(e)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "augment: {total} images of 32x32x3 (crop+flip+rotate15+normalise+tensor, batch 128) in {secs:.3} s = {:.0} images/s on {} rayon threads",
        total as f64 / secs,
        rayon::current_num_threads()
    );
    Ok(())
}
