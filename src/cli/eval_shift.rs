//! `longtail eval --test-dist`: being written (SADE end-to-end work).

use anyhow::{bail, Result};

use super::eval::{Args, EvalContext};

/// Evaluates under test-time label shift.
pub fn run(_args: &Args, _ctx: &EvalContext) -> Result<()> {
    bail!("--test-dist is not available in this build yet")
}
