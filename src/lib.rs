//! longtail: long-tailed image classification with multi-expert ensembles (RIDE, SADE, TLC) on
//! candle.
//!
//! The root package is the `longtail` binary and [`registry`], the one place that names every
//! method and preset. Everything else lives in the workspace's crates, re-exported here: library
//! users mostly want [`aggregate`] (test-time aggregation of any ensemble's logits), [`data`],
//! [`backbone`] and [`train`], and one method crate ([`ride`], [`sade`], [`tlc`],
//! [`baselines`]).

pub mod registry;

pub use longtail_aggregate as aggregate;
pub use longtail_backbone as backbone;
pub use longtail_balpoe as balpoe;
pub use longtail_baselines as baselines;
pub use longtail_data as data;
pub use longtail_decouple as decouple;
pub use longtail_hub as hub;
pub use longtail_losses as losses;
pub use longtail_metrics as metrics;
pub use longtail_ride as ride;
pub use longtail_sade as sade;
pub use longtail_tlc as tlc;
pub use longtail_train as train;
