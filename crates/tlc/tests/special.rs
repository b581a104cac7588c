//! lgamma / digamma against values computed from known constants.

use candle_core::{Device, Tensor, Var};
use longtail_tlc::special::{digamma, lgamma};

const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

fn ln_factorial(n: u32) -> f64 {
    (1..=n).map(|k| (k as f64).ln()).sum()
}

fn harmonic(n: u32) -> f64 {
    (1..=n).map(|k| 1.0 / k as f64).sum()
}

/// Gauss's digamma theorem: ψ(r/m) for 0 < r < m.
fn digamma_rational(r: u32, m: u32) -> f64 {
    use std::f64::consts::PI;
    let (r, mf) = (r as f64, m as f64);
    let mut s = -EULER_GAMMA - (2.0 * mf).ln() - PI / 2.0 / (PI * r / mf).tan();
    for n in 1..=((m - 1) / 2) {
        let n = n as f64;
        s += 2.0 * (2.0 * PI * n * r / mf).cos() * (PI * n / mf).sin().ln();
    }
    s
}

/// (x, lnΓ(x), ψ(x)) from closed forms. lnΓ(0.1) and lnΓ(0.7) are the tabulated constants
/// ln 9.513507698668731836… and ln 1.298055332647557785…
fn references() -> Vec<(f64, f64, f64)> {
    let sqrt_pi_ln = 0.5 * std::f64::consts::PI.ln();
    let ln2 = std::f64::consts::LN_2;
    let lg07 = 1.298_055_332_647_558_f64.ln();
    vec![
        (0.1, 9.513_507_698_668_732_f64.ln(), digamma_rational(1, 10)),
        (0.5, sqrt_pi_ln, -EULER_GAMMA - 2.0 * ln2),
        (1.0, 0.0, -EULER_GAMMA),
        (1.5, sqrt_pi_ln - ln2, -EULER_GAMMA - 2.0 * ln2 + 2.0),
        (
            3.7,
            lg07 + (0.7f64 * 1.7 * 2.7).ln(),
            digamma_rational(7, 10) + 1.0 / 0.7 + 1.0 / 1.7 + 1.0 / 2.7,
        ),
        (10.0, ln_factorial(9), harmonic(9) - EULER_GAMMA),
        (100.0, ln_factorial(99), harmonic(99) - EULER_GAMMA),
        (1000.0, ln_factorial(999), harmonic(999) - EULER_GAMMA),
    ]
}

#[test]
fn gauss_theorem_helper_matches_known_values() {
    // ψ(1/2) = −γ − 2 ln 2 and ψ(1/10) ≈ −10.4237549404110768 (tables).
    assert!((digamma_rational(1, 2) + EULER_GAMMA + 2.0 * std::f64::consts::LN_2).abs() < 1e-14);
    assert!((digamma_rational(1, 10) + 10.423_754_940_411_077).abs() < 1e-12);
}

#[test]
fn lgamma_and_digamma_match_closed_forms_in_f64() {
    let refs = references();
    let xs: Vec<f64> = refs.iter().map(|r| r.0).collect();
    let x = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
    let lg = lgamma(&x).unwrap().to_vec1::<f64>().unwrap();
    let dg = digamma(&x).unwrap().to_vec1::<f64>().unwrap();
    for (i, (x, want_lg, want_dg)) in refs.iter().enumerate() {
        let tol = 1e-9 * want_lg.abs().max(1.0);
        assert!(
            (lg[i] - want_lg).abs() < tol,
            "lgamma({x}) = {} want {want_lg}",
            lg[i]
        );
        assert!(
            (dg[i] - want_dg).abs() < 1e-9,
            "digamma({x}) = {} want {want_dg}",
            dg[i]
        );
    }
}

#[test]
fn lgamma_and_digamma_work_in_f32() {
    let refs = references();
    let xs: Vec<f32> = refs.iter().map(|r| r.0 as f32).collect();
    let x = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
    let lg = lgamma(&x).unwrap().to_vec1::<f32>().unwrap();
    let dg = digamma(&x).unwrap().to_vec1::<f32>().unwrap();
    for (i, (x, want_lg, want_dg)) in refs.iter().enumerate() {
        assert!(
            (lg[i] as f64 - want_lg).abs() < 1e-5 * want_lg.abs().max(1.0) + 1e-5,
            "lgamma({x}) f32 = {}",
            lg[i]
        );
        assert!(
            (dg[i] as f64 - want_dg).abs() < 2e-5 * want_dg.abs().max(1.0),
            "digamma({x}) f32 = {}",
            dg[i]
        );
    }
}

#[test]
fn autograd_of_lgamma_is_digamma_and_of_digamma_is_trigamma() {
    let x = Var::new(&[0.1f64, 1.0, 3.7, 100.0], &Device::Cpu).unwrap();
    let grads = lgamma(x.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let d = grads.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
    let want = digamma(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
    for (a, b) in d.iter().zip(&want) {
        assert!((a - b).abs() < 1e-9, "d lgamma = {a}, digamma = {b}");
    }
    // trigamma(1) = π²/6.
    let one = Var::new(&[1.0f64], &Device::Cpu).unwrap();
    let g = digamma(one.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let t = g.get(one.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0];
    assert!(
        (t - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-9,
        "trigamma(1) = {t}"
    );
}
