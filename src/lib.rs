//! wgan-train: Wasserstein GANs with a Lipschitz-constrained critic, on Burn.
//!
//! The backend is chosen once, at the edge ([`cli`]), and passed in as a Burn `Device`;
//! everything else is backend-agnostic.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod config;
pub mod constraint;
pub mod data;
pub mod eval;
pub mod export;
pub mod lipschitz;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod sample;
pub mod swd;
#[cfg(test)]
mod testing;
pub mod train;
