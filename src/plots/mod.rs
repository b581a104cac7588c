//! The PNG figures of `longtail eval`: the label-shift figure ([`shift`]) and the uncertainty
//! figures ([`uncertainty`]).
//!
//! Drawn with `plotters`' bitmap backend. Text uses DejaVu Sans, embedded in the binary
//! (`DejaVuSans.ttf` beside this file, Bitstream Vera licence in `DejaVuSans-LICENSE.txt`, from
//! Debian's `fonts-dejavu-core`) and registered once with `plotters`' `ab_glyph` backend, so
//! plotting needs no system font.

pub mod compare;
pub mod shift;
pub mod uncertainty;

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

/// Registers the embedded font as `sans-serif` (once per process).
fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font cannot be parsed"))
    }
}
