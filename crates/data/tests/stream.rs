//! Streamed data sets: the official list layouts, decoding to RGB, the torchvision-on-PIL
//! transforms, and batches that do not depend on the thread count.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use longtail_data::stream::{
    adjust_brightness, adjust_contrast, adjust_saturation, decode_rgb, pil_resize,
    tv_center_crop_offsets, tv_resize_size, tv_resized_crop_params,
};
use longtail_data::synth::{write_tree, TreeSpec};
use longtail_data::{
    load_benchmark, load_image_lists_streamed, Augment, Batcher, BatcherConfig, DataError,
    DatasetName, Normalize, SamplerKind, StreamOptions, Transform,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tree(root: &Path, layout: DatasetName, counts: &[usize]) {
    write_tree(
        root,
        &TreeSpec {
            layout,
            train_counts: counts.to_vec(),
            test_per_class: 2,
            val_per_class: 1,
            sizes: vec![(40, 30), (24, 48), (33, 33), (64, 20)],
            quality: 90,
            seed: 7,
        },
    )
    .unwrap();
}

#[test]
fn official_lists_give_the_official_splits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tree(root, DatasetName::ImagenetLt, &[5, 3, 1]);
    let s = load_benchmark(DatasetName::ImagenetLt, root, StreamOptions::default()).unwrap();
    assert_eq!(s.train.class_counts(), [5, 3, 1]);
    assert_eq!(s.test.class_counts(), [2, 2, 2]);
    // RIDE's loader: no validation during training.
    assert!(s.val.is_none());
    assert!(s.train.is_streamed());
    assert_eq!(
        (s.train.height, s.train.width, s.train.channels),
        (224, 224, 3)
    );
    assert_eq!(
        s.train.image_path(1).unwrap(),
        root.join("train/c00000/000001.JPEG")
    );
    // SADE's: the val list for model selection.
    let s = load_benchmark(
        DatasetName::ImagenetLt,
        root,
        StreamOptions {
            side: 64,
            val_list: true,
        },
    )
    .unwrap();
    assert_eq!(s.val.as_ref().unwrap().class_counts(), [1, 1, 1]);
    assert_eq!(s.train.height, 64);
    assert_eq!(
        DatasetName::ImagenetLt.class_count_warning(3).unwrap(),
        "warning: the imagenet-lt lists hold 3 classes, the benchmark has 1000: training on a subset"
    );
    assert!(DatasetName::ImagenetLt.class_count_warning(1000).is_none());

    // iNaturalist 2018: the val list is the test set, and there is no validation.
    let inat = dir.path().join("inat");
    tree(&inat, DatasetName::Inat2018, &[2, 4]);
    let s = load_benchmark(
        DatasetName::Inat2018,
        &inat,
        StreamOptions {
            side: 64,
            val_list: true,
        },
    )
    .unwrap();
    assert!(s.val.is_none());
    assert_eq!(s.test.class_counts(), [2, 2]);
    assert!(s.test.image_path(0).unwrap().starts_with(inat.join("test")));
    assert!(inat.join("iNaturalist18_val.txt").is_file());
    assert_eq!(DatasetName::Inat2018.normalize(), Normalize::inaturalist());

    // A missing list names the file; a class without training images is an error.
    std::fs::remove_file(inat.join("iNaturalist18_val.txt")).unwrap();
    let e = load_benchmark(DatasetName::Inat2018, &inat, StreamOptions::default()).unwrap_err();
    assert!(
        matches!(&e, DataError::MissingFile { path, .. } if path.ends_with("iNaturalist18_val.txt")),
        "{e}"
    );
    let places = dir.path().join("places");
    tree(&places, DatasetName::PlacesLt, &[2, 0, 1]);
    let e = load_benchmark(DatasetName::PlacesLt, &places, StreamOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::EmptyClass { class: 1, .. }), "{e}");
}

/// A baseline JPEG of one 8×8 block with four components (Adobe APP14, transform 0: CMYK),
/// every component constant: quantiser 1, so the DC coefficient is 8·(value − 128), coded with
/// a DC table of twelve 4-bit codes (category s → code s) and an AC table holding only EOB.
fn cmyk_jpeg(values: [u8; 4]) -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8];
    j.extend([0xFF, 0xEE, 0, 14]);
    j.extend(b"Adobe");
    j.extend([0, 100, 0, 0, 0, 0, 0]);
    j.extend([0xFF, 0xDB, 0, 67, 0]);
    j.extend([1u8; 64]);
    j.extend([0xFF, 0xC0, 0, 20, 8, 0, 8, 0, 8, 4]);
    for id in 1..=4 {
        j.extend([id, 0x11, 0]);
    }
    j.extend([0xFF, 0xC4, 0, 31, 0x00]);
    let mut bits = [0u8; 16];
    bits[3] = 12;
    j.extend(bits);
    j.extend(0..12u8);
    j.extend([0xFF, 0xC4, 0, 20, 0x10]);
    let mut bits = [0u8; 16];
    bits[1] = 1;
    j.extend(bits);
    j.push(0x00);
    j.extend([0xFF, 0xDA, 0, 14, 4]);
    for id in 1..=4 {
        j.extend([id, 0x00]);
    }
    j.extend([0, 63, 0]);
    let mut bitstream: Vec<bool> = vec![];
    let put = |v: u32, n: u32, out: &mut Vec<bool>| {
        for i in (0..n).rev() {
            out.push((v >> i) & 1 == 1);
        }
    };
    for v in values {
        let dc = 8 * (v as i32 - 128);
        let s = 32 - dc.unsigned_abs().leading_zeros();
        put(s, 4, &mut bitstream);
        let mag = if dc >= 0 { dc } else { dc - 1 + (1 << s) };
        put(mag as u32, s, &mut bitstream);
        put(0, 2, &mut bitstream); // EOB
    }
    while !bitstream.len().is_multiple_of(8) {
        bitstream.push(true);
    }
    for byte in bitstream.chunks(8) {
        let b = byte.iter().fold(0u8, |a, &bit| (a << 1) | bit as u8);
        j.push(b);
        if b == 0xFF {
            j.push(0);
        }
    }
    j.extend([0xFF, 0xD9]);
    j
}

#[test]
fn decoding_gives_rgb_or_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // Grayscale JPEG → replicated channels.
    let gray: Vec<u8> = (0..16 * 12).map(|i| (i * 7 % 256) as u8).collect();
    let mut bytes = vec![];
    JpegEncoder::new_with_quality(&mut bytes, 95)
        .encode(&gray, 16, 12, ExtendedColorType::L8)
        .unwrap();
    std::fs::write(p("gray.jpg"), &bytes).unwrap();
    let g = decode_rgb(&p("gray.jpg")).unwrap();
    assert_eq!((g.height, g.width, g.pixels.len()), (12, 16, 16 * 12 * 3));
    assert!(g.pixels.chunks(3).all(|c| c[0] == c[1] && c[1] == c[2]));
    // RGBA PNG → alpha dropped, pixels exact (lossless).
    let rgba: Vec<u8> = (0..5 * 4 * 4).map(|i| (i * 13 % 256) as u8).collect();
    image::save_buffer(p("a.png"), &rgba, 5, 4, ExtendedColorType::Rgba8).unwrap();
    let a = decode_rgb(&p("a.png")).unwrap();
    let want: Vec<u8> = rgba.chunks(4).flat_map(|c| c[..3].to_vec()).collect();
    assert_eq!(a.pixels, want);
    // CMYK JPEG → RGB as Pillow: an Adobe CMYK JPEG stores inverted inks (PIL reads it as
    // "CMYK;I"), and cmyk2rgb gives R = MULDIV255(255 − C, 255 − K) on the true inks, i.e. the
    // stored values multiplied: 200·40/255 = 31.4 → 31, 40·40/255 = 6.3 → 6.
    std::fs::write(p("cmyk.jpg"), cmyk_jpeg([200, 40, 40, 40])).unwrap();
    let c = decode_rgb(&p("cmyk.jpg")).unwrap();
    assert_eq!((c.height, c.width), (8, 8));
    assert!(
        c.pixels.chunks(3).all(|q| q == [31, 6, 6]),
        "{:?}",
        &c.pixels[..3]
    );
    // Truncated JPEG → an error naming the file (as PIL, not a grey-filled image).
    let mut rgb = vec![0u8; 32 * 32 * 3];
    ChaCha8Rng::seed_from_u64(1).fill(&mut rgb[..]);
    let mut full = vec![];
    JpegEncoder::new_with_quality(&mut full, 90)
        .encode(&rgb, 32, 32, ExtendedColorType::Rgb8)
        .unwrap();
    std::fs::write(p("cut.jpg"), &full[..full.len() / 2]).unwrap();
    let e = decode_rgb(&p("cut.jpg")).unwrap_err();
    assert!(matches!(e, DataError::BadImage { .. }), "{e}");
    assert!(
        e.to_string().contains("cut.jpg") && e.to_string().contains("truncated"),
        "{e}"
    );
    // Not an image, and no file at all.
    std::fs::write(p("text.jpg"), b"hello").unwrap();
    assert!(matches!(
        decode_rgb(&p("text.jpg")),
        Err(DataError::Decode { .. })
    ));
    assert!(matches!(
        decode_rgb(&p("none.jpg")),
        Err(DataError::Io { .. })
    ));
}

fn ramp(h: usize, w: usize) -> Vec<u8> {
    (0..h * w * 3).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn centre_transform_crops_where_torchvision_does() {
    // 25 wide, 24 tall: Resize(24) keeps the size (shorter side 24, 24·25/24 = 25), and
    // CenterCrop(16) starts at top round(4.0) = 4, left round(4.5) = 4 (half to even).
    let img = ramp(24, 25);
    let p = Transform::train(Augment::center(24, 16), Normalize::identity(3))
        .prepare(16, 16, 3)
        .unwrap();
    assert!(p.takes_any_size());
    let mut out = vec![0f32; 3 * 16 * 16];
    p.apply_decoded(&img, (24, 25), 0, Path::new("x"), &mut out)
        .unwrap();
    for c in 0..3 {
        for y in 0..16 {
            for x in 0..16 {
                let want = img[((y + 4) * 25 + x + 4) * 3 + c] as f32 / 255.0;
                assert_eq!(out[c * 256 + y * 16 + x], want, "({c},{y},{x})");
            }
        }
    }
    // ImageNet eval at 224 on 500×375: Resize(256) → 341×256, crop at (16, 58).
    assert_eq!(tv_resize_size(375, 500, 256), (256, 341));
    assert_eq!(tv_center_crop_offsets(256, 341, 224), (16, 58));
    assert_eq!(Augment::imagenet_eval(224), Augment::center(256, 224));
    assert_eq!(Augment::imagenet_eval(64), Augment::center(73, 64));
    // A downscaling centre transform is PIL's resize of the whole image, then the crop.
    let img = ramp(30, 41);
    let p = Transform::train(Augment::center(20, 12), Normalize::identity(3))
        .prepare(12, 12, 3)
        .unwrap();
    let mut out = vec![0f32; 3 * 144];
    p.apply_decoded(&img, (30, 41), 0, Path::new("x"), &mut out)
        .unwrap();
    let (nh, nw) = tv_resize_size(30, 41, 20);
    assert_eq!((nh, nw), (20, 27)); // 20 · 41/30 = 27.33
    let whole = pil_resize(&img, (30, 41, 3), (0, 0, 30, 41), (nh, nw), (0, 0, nh, nw));
    let (t, l) = tv_center_crop_offsets(nh, nw, 12); // (4, round(7.5) = 8)
    assert_eq!((t, l), (4, 8));
    for y in 0..12 {
        for x in 0..12 {
            let want = whole[((y + t) * nw + x + l) * 3] as f32 / 255.0;
            assert_eq!(out[y * 12 + x], want);
        }
    }
}

#[test]
fn random_resized_crop_draws_in_torchvision_order() {
    // The stream: crop parameters, then the flip, then the jitter (none here).
    let img = ramp(30, 40);
    let aug = Augment::imagenet_train(16);
    let p = Transform::train(aug, Normalize::identity(3))
        .prepare(16, 16, 3)
        .unwrap();
    let mut seen_flip = [false; 2];
    for seed in 0..12 {
        let mut out = vec![0f32; 3 * 256];
        p.apply_decoded(&img, (30, 40), seed, Path::new("x"), &mut out)
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (t, l, ch, cw) =
            tv_resized_crop_params(30, 40, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert!(t + ch <= 30 && l + cw <= 40);
        let flip = rng.random_bool(0.5);
        seen_flip[flip as usize] = true;
        let crop = pil_resize(&img, (30, 40, 3), (t, l, ch, cw), (16, 16), (0, 0, 16, 16));
        for y in 0..16 {
            for x in 0..16 {
                let sx = if flip { 15 - x } else { x };
                assert_eq!(out[y * 16 + x], crop[(y * 16 + sx) * 3] as f32 / 255.0);
            }
        }
    }
    assert_eq!(seen_flip, [true, true]);
    // The jitter changes pixels but keeps the crop deterministic per seed.
    let j = Transform::train(Augment::imagenet_lt(16), Normalize::imagenet())
        .prepare(16, 16, 3)
        .unwrap();
    let (mut a, mut b) = (vec![0f32; 768], vec![0f32; 768]);
    j.apply_decoded(&img, (30, 40), 5, Path::new("x"), &mut a)
        .unwrap();
    j.apply_decoded(&img, (30, 40), 5, Path::new("x"), &mut b)
        .unwrap();
    assert_eq!(a, b);
    // A CIFAR recipe cannot take images of any size.
    let c = Transform::train(Augment::cifar(), Normalize::identity(3))
        .prepare(16, 16, 3)
        .unwrap();
    assert!(!c.takes_any_size());
    assert!(c
        .apply_decoded(&img, (30, 40), 0, Path::new("odd.jpg"), &mut a)
        .is_err());
}

#[test]
fn streamed_batches_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), DatasetName::ImageList, &[6, 4, 3]);
    let s = load_image_lists_streamed(dir.path(), 32).unwrap();
    let train = Arc::new(s.train);
    let run = |threads: usize| {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap(),
        );
        let cfg = BatcherConfig {
            sampler: SamplerKind::Shuffled,
            transform: Transform::train(Augment::imagenet_lt(32), Normalize::imagenet()),
            batch_size: 5,
            seed: 11,
            epoch: 2,
            prefetch: 1,
        };
        Batcher::with_config(Arc::clone(&train), cfg, &Device::Cpu, Some(pool))
            .unwrap()
            .map(|b| {
                let b = b.unwrap();
                (
                    b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    b.indices,
                )
            })
            .collect::<Vec<_>>()
    };
    let one = run(1);
    assert_eq!(one.len(), 3);
    assert_eq!(one[0].0.len(), 5 * 3 * 32 * 32);
    assert_eq!(one, run(2));
    // A CIFAR transform on a streamed set is refused before any decoding.
    let cfg = BatcherConfig {
        sampler: SamplerKind::Sequential,
        transform: Transform::train(Augment::cifar(), Normalize::imagenet()),
        batch_size: 4,
        seed: 0,
        epoch: 0,
        prefetch: 1,
    };
    assert!(Batcher::with_config(Arc::clone(&train), cfg, &Device::Cpu, None).is_err());
}

#[test]
fn a_broken_image_stops_the_epoch_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), DatasetName::ImageList, &[3, 2]);
    let victim = dir.path().join("train/c00001/000000.JPEG");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let s = load_image_lists_streamed(dir.path(), 16).unwrap();
    let tf = Transform::train(Augment::imagenet_eval(16), Normalize::imagenet());
    let results: Vec<_> = Batcher::new(
        Arc::new(s.train),
        SamplerKind::Sequential,
        tf,
        2,
        0,
        0,
        &Device::Cpu,
    )
    .unwrap()
    .collect();
    let err = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(err.to_string().contains("c00001/000000.JPEG"), "{err}");
}

/// Standard base64 (the fixture's encoding of raw bytes).
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn pil_fixture() -> serde_json::Value {
    let path = longtail_fixtures::fixtures_root().join("pil/torchvision_pil.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn dim(v: &serde_json::Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// What Pillow 13 and torchvision 0.29 compute (fixtures/pil, made by
/// scripts/make_pil_fixtures.py): `crop(box).resize(size, BILINEAR)` (byte for byte when one
/// axis changes, within 1 when both do), `Resize(s)` → `CenterCrop(c)`, and
/// `adjust_brightness / contrast / saturation` byte for byte, and a CMYK JPEG's RGB.
#[test]
fn resampling_and_jitter_match_pillow_byte_for_byte() {
    let fx = pil_fixture();
    for case in fx["resize"].as_array().unwrap() {
        let (h, w) = (dim(&case["h"]), dim(&case["w"]));
        let b: Vec<usize> = case["box"].as_array().unwrap().iter().map(dim).collect();
        let (oh, ow) = (dim(&case["out"][0]), dim(&case["out"][1]));
        let img = unbase64(case["input"].as_str().unwrap());
        let got = pil_resize(
            &img,
            (h, w, 3),
            (b[0], b[1], b[2], b[3]),
            (oh, ow),
            (0, 0, oh, ow),
        );
        let want = unbase64(case["expected"].as_str().unwrap());
        if oh == b[2] || ow == b[3] {
            // One pass: exact.
            assert_eq!(got, want, "resize {h}x{w} box {b:?} to {oh}x{ow}");
        } else {
            // Two passes: Pillow 13.0.0's wheel picks the order of the passes per image (its
            // main-branch Resample.c, which we follow, always runs the horizontal one first),
            // and the intermediate's rounding differs by at most 1.
            let worst = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
            assert!(
                worst <= Some(1),
                "resize {h}x{w} box {b:?} to {oh}x{ow}: {worst:?}"
            );
        }
    }
    for case in fx["center"].as_array().unwrap() {
        let (h, w) = (dim(&case["h"]), dim(&case["w"]));
        let (size, crop) = (dim(&case["resize"]), dim(&case["crop"]));
        let img = unbase64(case["input"].as_str().unwrap());
        let p = Transform::train(Augment::center(size, crop), Normalize::identity(3))
            .prepare(crop, crop, 3)
            .unwrap();
        let mut out = vec![0f32; 3 * crop * crop];
        p.apply_decoded(&img, (h, w), 0, Path::new("x"), &mut out)
            .unwrap();
        let want = unbase64(case["expected"].as_str().unwrap());
        for y in 0..crop {
            for x in 0..crop {
                for c in 0..3 {
                    let v = want[(y * crop + x) * 3 + c] as f32 / 255.0;
                    assert_eq!(out[c * crop * crop + y * crop + x], v, "centre {h}x{w}");
                }
            }
        }
    }
    for case in fx["enhance"].as_array().unwrap() {
        let f = case["factor"].as_f64().unwrap() as f32;
        let mut img = unbase64(case["input"].as_str().unwrap());
        match case["op"].as_str().unwrap() {
            "brightness" => adjust_brightness(&mut img, f),
            "contrast" => adjust_contrast(&mut img, f),
            _ => adjust_saturation(&mut img, f),
        }
        assert_eq!(
            img,
            unbase64(case["expected"].as_str().unwrap()),
            "{}",
            case["op"]
        );
    }
    // A CMYK JPEG written by Pillow decodes to Pillow's RGB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmyk.jpg");
    std::fs::write(&path, unbase64(fx["cmyk"]["jpeg"].as_str().unwrap())).unwrap();
    let rgb = decode_rgb(&path).unwrap();
    let want: Vec<u8> = fx["cmyk"]["expected_rgb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let at = (3 * 8 + 3) * 3;
    assert_eq!(&rgb.pixels[at..at + 3], &want[..]);
}
