//! `longtail eval --uncertainty`: being written (TLC end-to-end work).

use anyhow::{bail, Result};

use super::eval::{Args, EvalContext};

/// Evaluates uncertainty metrics.
pub fn run(_args: &Args, _ctx: &EvalContext) -> Result<()> {
    bail!("--uncertainty is not available in this build yet")
}
