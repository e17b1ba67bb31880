//! wgan-train: Wasserstein GANs with a Lipschitz-constrained critic, on Burn.
//!
//! The backend is chosen once, at the edge ([`cli`]), and passed in as a Burn `Device`;
//! everything else is backend-agnostic. The modules depend one way, bottom to top (a test in
//! `tests/layout.rs` checks that no module reaches up):
//!
//! - foundations: [`atomic`] (file writing), [`backend`], [`data`], [`noise`], [`swd`], [`fid`]
//!   (FID/KID statistics), [`inception`] (the FID Inception network);
//!   [`config`] over them;
//! - the networks: [`model`] (generator, critic, spectral norm; the CPU kernels come from the
//!   `burn-flex-kernels` crate), [`constraint`] (how the critic is kept Lipschitz),
//!   [`lipschitz`] (measuring it), [`gan`] (networks + optimizers + constraint, and the two
//!   updates of an iteration);
//! - what a run writes and reads: [`checkpoint`], [`pytorch`] (state dicts), [`sample`],
//!   [`metrics`], [`plot`], [`eval`];
//! - the run: [`train`] (the loop), [`compare`] (several runs side by side), [`parity`] (one
//!   step on two backends), [`cli`].

pub mod atomic;
pub mod backend;
pub mod cache;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod config;
pub mod constraint;
pub mod data;
pub mod ema;
pub mod eval;
pub mod fid;
pub mod gan;
pub mod inception;
pub mod lipschitz;
pub mod metrics;
pub mod model;
pub mod noise;
pub mod parity;
pub mod plot;
pub mod pytorch;
pub mod sample;
pub mod swd;
pub mod toy;
pub mod train;
