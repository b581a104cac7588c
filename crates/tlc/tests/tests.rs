//! Integration tests of longtail-tlc (one binary; modules per topic).

mod common;
mod early_exit;
mod fusion;
mod loss;
mod presets;
mod special;
