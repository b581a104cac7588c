//! Integration tests of longtail-hub: the Hub cache read with the network off, bad files,
//! official-layout import against the official logits, the torchvision trunk, export.

mod cache;
mod common;
mod export;
mod files;
mod fuzz;
mod official;
mod torchvision;
