//! The trunks' integration tests, one binary (candle links once).

mod common;
mod errors;
mod feature_cache;
mod heads;
mod hub_cache;
mod parity;
