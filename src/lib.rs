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
pub mod lipschitz;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod pytorch;
pub mod sample;
pub mod swd;
#[doc(hidden)]
pub mod testing;
pub mod train;
