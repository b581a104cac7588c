//! Integration tests of longtail-aggregate (one binary; modules below).

mod common;
mod errors;
mod fit;
mod fixture;
mod stream;
