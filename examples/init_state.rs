//! Writes the networks that a run of CONFIG with SEED starts from, as one safetensors file in
//! the PyTorch peer's names (`g.*` generator, `d.*` critic with spectral-norm u, v), so that
//! the peer can be trained from our initial weights (`PEER_INIT=OUT scripts/peer_train.py`):
//!
//!     cargo run --release --no-default-features --features x86-v4 --example init_state -- CONFIG SEED OUT

use anyhow::{Context, Result};
use burn::prelude::*;
use std::path::Path;
use wgan_train::config::Config;
use wgan_train::gan::Gan;
use wgan_train::pytorch::{critic_state, generator_state, write_safetensors};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, seed, out] = args.as_slice() else {
        anyhow::bail!("usage: init_state CONFIG SEED OUT.safetensors");
    };
    let seed: u64 = seed
        .parse()
        .with_context(|| format!("SEED {seed}: give an integer"))?;
    let config = Config::load(Path::new(config), &[format!("train.seed={seed}")])?;
    let gan = Gan::new(&config, &Device::flex().autodiff());
    let mut entries = generator_state(&gan.generator, "g.", Some(0));
    entries.extend(critic_state(&gan.critic, "d."));
    write_safetensors(&entries, Path::new(out))
}
