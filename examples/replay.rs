//! Trains wgan-train on inputs drawn by the PyTorch side (`scripts/torch_parity.py`), from the
//! same initial weights, for as many iterations as those inputs hold, and writes our state in
//! the peer's names after the iterations listed in SAVE_AT (comma-separated):
//!
//!     cargo run --release --example replay -- CONFIG PARITY_DIR OUT_DIR 1,10,100,400 [KEY=VALUE...]
//!
//! (KEY=VALUE as `--set` takes them.)
//! PARITY_DIR holds `init.safetensors` and `inputs.safetensors` (real batches as `real`
//! [K, B, C, S, S], or as `data` [N, C, S, S] with `real_index` [K, B]; `z_critic`, `epsilon`,
//! `z_gen`). OUT_DIR gets `iter_N.safetensors`. `scripts/replay_compare.py` runs both sides at
//! full size and compares how far they drift apart, and the sample quality each ends with: the
//! long-run form of the parity test in tests/torch_parity.rs.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use std::path::Path;
use wgan_train::config::Config;
use wgan_train::gan::Gan;
use wgan_train::pytorch::{Replay, gan_state, load_gan, write_safetensors};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, parity, out, save_at, sets @ ..] = args.as_slice() else {
        bail!(
            "usage: replay CONFIG PARITY_DIR OUT_DIR SAVE_AT [KEY=VALUE...] (SAVE_AT e.g. 1,10,400)"
        );
    };
    let save_at: Vec<usize> = save_at
        .split(',')
        .map(|s| s.parse().with_context(|| format!("SAVE_AT {s}")))
        .collect::<Result<_>>()?;
    let config = Config::load(Path::new(config), sets)?;
    let (parity, out) = (Path::new(parity), Path::new(out));
    std::fs::create_dir_all(out)?;
    let device = Device::flex().autodiff();
    let mut gan = load_gan(Gan::new(&config, &device), &parity.join("init.safetensors"))?;
    let (channels, size) = (config.data.channels, config.data.image_size);
    let replay = Replay::load(&parity.join("inputs.safetensors"), channels, size, &device)?;
    let (iters, _, _) = replay.dims();
    let started = std::time::Instant::now();
    for it in 0..iters {
        replay.iteration(&mut gan, it, &config.train, |_, _| {});
        if save_at.contains(&(it + 1)) {
            let path = out.join(format!("iter_{}.safetensors", it + 1));
            write_safetensors(&gan_state(&gan), &path)?;
            eprintln!(
                "iteration {} of {iters} ({:.0} s)",
                it + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
