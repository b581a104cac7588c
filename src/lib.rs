//! longtail: long-tailed image classification with multi-expert ensembles (RIDE, SADE, TLC) on
//! candle.
//!
//! The `longtail` binary is a thin layer over these crates; library users mostly want
//! [`aggregate`] (test-time aggregation of any ensemble's logits), [`data`], [`backbone`] and
//! [`train`].

pub mod bench;
pub mod config;
pub mod device;
pub mod methods;
pub mod router;
pub mod run;
pub mod shift;
pub mod uncertainty;

pub use longtail_aggregate as aggregate;
pub use longtail_backbone as backbone;
pub use longtail_data as data;
pub use longtail_metrics as metrics;
pub use longtail_ride as ride;
pub use longtail_sade as sade;
pub use longtail_tlc as tlc;
pub use longtail_train as train;
