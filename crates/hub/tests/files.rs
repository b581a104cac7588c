//! Bad safetensors files: each is a clear, typed error that names the file.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use longtail_hub::{read_checked, HubError};

use crate::common::{values, write, TestResult};

fn good(path: &Path) {
    let t = BTreeMap::from([
        ("a.weight".to_string(), values(&[4, 3], 1)),
        ("b.bias".to_string(), values(&[5], 2)),
    ]);
    write(path, &t, &[("config", "x = 1")]);
}

fn check(path: &Path, want: &str) -> String {
    let e = read_checked(path, &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(want), "`{want}` missing from: {msg}");
    msg
}

#[test]
fn a_good_file_reads_back() -> TestResult {
    let d = tempfile::tempdir()?;
    let p = d.path().join("ok.safetensors");
    good(&p);
    let f = read_checked(&p, &Device::Cpu)?;
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.metadata["config"], "x = 1");
    Ok(())
}

#[test]
fn truncated_files_are_errors() -> TestResult {
    let d = tempfile::tempdir()?;
    let p = d.path().join("t.safetensors");
    good(&p);
    let bytes = std::fs::read(&p)?;
    std::fs::write(&p, &bytes[..bytes.len() - 7])?;
    check(&p, "not a valid safetensors file");
    std::fs::write(&p, &bytes[..5])?;
    check(&p, "shorter than the 8-byte header length");
    std::fs::write(&p, &bytes[..40])?;
    check(&p, "truncated");
    std::fs::write(&p, b"")?;
    check(&p, "0 bytes");
    Ok(())
}

#[test]
fn headers_that_lie_are_errors() -> TestResult {
    let d = tempfile::tempdir()?;
    let p = d.path().join("h.safetensors");
    good(&p);
    let bytes = std::fs::read(&p)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n])?.to_string();

    // A header length far beyond the file.
    let mut lie = bytes.clone();
    lie[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &lie)?;
    check(&p, "header claims");

    // A tensor whose shape needs more bytes than its offsets give (same header length).
    let bigger = header.replacen("[4,3]", "[4,9]", 1);
    assert_ne!(bigger, header, "{header}");
    let mut lie = bytes.clone();
    lie[8..8 + n].copy_from_slice(bigger.as_bytes());
    std::fs::write(&p, &lie)?;
    check(&p, "not a valid safetensors file");

    // Offsets that claim more data than the file holds.
    let a_end = (4 * 3 * 4).to_string();
    let b_end = ((4 * 3 + 5) * 4).to_string();
    let longer = header.replacen(
        &format!(",{b_end}]"),
        &format!(",{}]", b_end.parse::<usize>()? + 400),
        1,
    );
    assert_ne!(longer, header, "{header} / {a_end}");
    let mut lie = (longer.len() as u64).to_le_bytes().to_vec();
    lie.extend_from_slice(longer.as_bytes());
    lie.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, &lie)?;
    check(&p, "not a valid safetensors file");

    // A header that is not JSON.
    let mut lie = bytes.clone();
    lie[8] = b'#';
    std::fs::write(&p, &lie)?;
    check(&p, "not a valid safetensors file");
    Ok(())
}

#[test]
fn nan_and_inf_weights_are_errors() -> TestResult {
    let d = tempfile::tempdir()?;
    let p = d.path().join("n.safetensors");
    for (bad, count) in [(f32::NAN, 2), (f32::INFINITY, 1), (f32::NEG_INFINITY, 3)] {
        let mut v = vec![0.5f32; 12];
        for x in v.iter_mut().take(count) {
            *x = bad;
        }
        let t = BTreeMap::from([
            ("fine".to_string(), values(&[3], 3)),
            (
                "layer.weight".to_string(),
                Tensor::from_vec(v, (4, 3), &Device::Cpu)?,
            ),
        ]);
        write(&p, &t, &[]);
        let e = read_checked(&p, &Device::Cpu).unwrap_err();
        assert!(
            matches!(&e, HubError::NonFinite { name, count: c, .. } if name == "layer.weight" && *c == count),
            "{e}"
        );
        assert!(e.to_string().contains("NaN or infinite"), "{e}");
    }
    Ok(())
}
