//! The state both aggregators share: ω, its optimiser, and one gradient step.

use candle_core::{DType, Tensor, Var};

use crate::error::Result;
use crate::objective::{self, StabilityLoss};
use crate::sgd::{Sgd, TestTimeSgd};

/// `softmax(ω)` on the host, in f64.
pub(crate) fn softmax(omega: &[f64]) -> Vec<f64> {
    let max = omega.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = omega.iter().map(|o| (o - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|x| x / sum).collect()
}

/// Rounds like `np.round(w, decimals=2)`: half to even on `100·w`.
pub(crate) fn round2(w: &[f64]) -> Vec<f64> {
    w.iter()
        .map(|x| (x * 100.0).round_ties_even() / 100.0)
        .collect()
}

#[derive(Clone, Debug)]
pub(crate) struct Learner {
    pub(crate) omega: Vec<f64>,
    pub(crate) sgd: Sgd,
    entropy_coef: f64,
}

impl Learner {
    /// ω filled with `1/E`, as the official `aggregation_weight.data.fill_(1/3)`: the weights
    /// start uniform, and weight decay then acts on `1/E`, not 0, exactly as there.
    pub(crate) fn new(experts: usize, sgd: TestTimeSgd, entropy_coef: f64) -> Result<Self> {
        Ok(Self {
            omega: vec![1.0 / experts as f64; experts],
            sgd: Sgd::new(sgd)?,
            entropy_coef,
        })
    }

    pub(crate) fn experts(&self) -> usize {
        self.omega.len()
    }

    pub(crate) fn weights(&self) -> Vec<f64> {
        softmax(&self.omega)
    }

    /// One SGD step on a validated pair of views (same shape, same float dtype, finite).
    /// Returns the objective at the weights *before* the step, as the official loss meter does.
    pub(crate) fn step(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<StabilityLoss> {
        let dtype = view_a.dtype();
        let e = self.experts();
        let omega = Var::from_tensor(
            &Tensor::from_slice(&self.omega, e, view_a.device())?.to_dtype(dtype)?,
        )?;
        // w = softmax(ω) over the expert axis; the max shift is a constant, so it is detached.
        let shifted = omega
            .as_tensor()
            .broadcast_sub(&omega.as_tensor().max_keepdim(0)?.detach())?;
        let exps = shifted.exp()?;
        let w = exps.broadcast_div(&exps.sum_keepdim(0)?)?;
        let terms = objective::terms(view_a, view_b, &w, self.entropy_coef)?;
        let grads = terms.loss.backward()?;
        let grad = match grads.get(omega.as_tensor()) {
            Some(g) => g.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            None => vec![0.0; e],
        };
        let values = terms.values()?;
        self.sgd.step(&mut self.omega, &grad)?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_softmax_and_rounding() {
        let w = softmax(&[0.0, 0.0, 0.0, 0.0]);
        assert!(w.iter().all(|x| (x - 0.25).abs() < 1e-15));
        let w = softmax(&[1000.0, 0.0]);
        assert_eq!(w, vec![1.0, 0.0]);
        assert_eq!(
            round2(&[0.044, 0.046, 0.125, 0.135]),
            vec![0.04, 0.05, 0.12, 0.14]
        );
    }
}
