//! `lnΓ` and `ψ` (digamma) on candle tensors, built from differentiable primitives.
//!
//! candle 0.11 has neither (shared notes `docs/candle.md` §2). Both use the recurrence to shift the
//! argument by 6, then the asymptotic (Stirling) series in `1/z`, `z = x + 6 ≥ 6`, whose first
//! omitted term is below `1e-10` there. Valid for `x > 0`, which covers every Dirichlet parameter
//! `α ≥ 1` of the evidential loss. Because they are compositions of `log`, `recip`, `mul` and
//! `add`, autograd differentiates them: `d lgamma/dx` is (a series for) digamma, and
//! `d digamma/dx` is trigamma. They work in the input's dtype; the TLC loss calls them on `f64`.

use candle_core::Tensor;

use crate::error::Result;

const SHIFT: usize = 6;

/// `ln Γ(x)` element-wise, for `x > 0` (non-positive inputs give NaN or ±inf).
///
/// `ln Γ(x) = ln Γ(x + 6) − Σ_{k=0}^{5} ln(x + k)`, and for `z = x + 6`
/// `ln Γ(z) ≈ (z − ½) ln z − z + ½ ln 2π + 1/(12z) − 1/(360z³) + 1/(1260z⁵) − 1/(1680z⁷)`.
pub fn lgamma(x: &Tensor) -> Result<Tensor> {
    // Σ ln(x + k) = ln Π (x + k) would overflow for large x, so sum the logs.
    let mut shift = x.log()?;
    for k in 1..SHIFT {
        shift = (shift + x.affine(1.0, k as f64)?.log()?)?;
    }
    let z = x.affine(1.0, SHIFT as f64)?;
    let zi = z.recip()?;
    let zi2 = zi.sqr()?;
    // ((−1/1680 · zi² + 1/1260) · zi² − 1/360) · zi² + 1/12, times zi.
    let poly = zi2.affine(-1.0 / 1680.0, 1.0 / 1260.0)?;
    let poly = (poly * &zi2)?.affine(1.0, -1.0 / 360.0)?;
    let poly = (poly * &zi2)?.affine(1.0, 1.0 / 12.0)?;
    let series = (poly * &zi)?;
    let stirling = ((z.affine(1.0, -0.5)? * z.log()?)? - &z)?
        .affine(1.0, 0.5 * (2.0 * std::f64::consts::PI).ln())?;
    Ok(((stirling + series)? - shift)?)
}

/// Digamma `ψ(x) = d/dx ln Γ(x)` element-wise, for `x > 0`.
///
/// `ψ(x) = ψ(x + 6) − Σ_{k=0}^{5} 1/(x + k)`, and for `z = x + 6`
/// `ψ(z) ≈ ln z − 1/(2z) − 1/(12z²) + 1/(120z⁴) − 1/(252z⁶) + 1/(240z⁸)`.
pub fn digamma(x: &Tensor) -> Result<Tensor> {
    let mut shift = x.recip()?;
    for k in 1..SHIFT {
        shift = (shift + x.affine(1.0, k as f64)?.recip()?)?;
    }
    let z = x.affine(1.0, SHIFT as f64)?;
    let zi = z.recip()?;
    let zi2 = zi.sqr()?;
    // (((1/240 · zi² − 1/252) · zi² + 1/120) · zi² − 1/12) · zi².
    let poly = zi2.affine(1.0 / 240.0, -1.0 / 252.0)?;
    let poly = (poly * &zi2)?.affine(1.0, 1.0 / 120.0)?;
    let poly = (poly * &zi2)?.affine(1.0, -1.0 / 12.0)?;
    let poly = (poly * &zi2)?;
    let asym = ((z.log()? - zi.affine(0.5, 0.0)?)? + poly)?;
    Ok((asym - shift)?)
}
