//! Integration tests of longtail-data: one binary, one module per area.

mod batching;
mod counts;
mod fashion_mnist;
mod formats;
mod fuzz;
mod reference;
mod stream;
mod util;
