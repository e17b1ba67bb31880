//! Checkpoints: everything needed to continue a run exactly, written so that a crash or kill
//! at any moment never leaves a half-written checkpoint behind.
//!
//! `RUN/checkpoints/step_NNNNNN/` holds `generator.bpk`, `critic.bpk` (Burn's burnpack format,
//! with every spectral-norm u, v and the BatchNorm running statistics), `optim_g.bpk`,
//! `optim_d.bpk` (optimizer state), `generator_ema.bpk` (the moving average of G, when
//! `train.ema_decay > 0`) and `state.json` (iteration, data order, RNG, fixed sample
//! noise). Each is first written into a temporary folder beside it, which is renamed into
//! place only once complete; the last `output.keep_checkpoints` are kept.

use crate::atomic::write_atomic;
use crate::data::BatchSampler;
use crate::gan::Gan;
use crate::model::{Critic, Generator};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::tensor::Bytes;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder of a run that holds its checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";

/// The moving average of the generator in a checkpoint folder.
pub const EMA_FILE: &str = "generator_ema.bpk";

/// Version of the checkpoint layout, checked on loading.
pub const FORMAT_VERSION: u32 = 1;

/// The loop's own state, beside the networks and optimizers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Generator iterations done.
    pub step: usize,
    /// Data order: permutation, position and its RNG.
    pub sampler: BatchSampler,
    /// The noise RNG (latent vectors and interpolation weights).
    pub rng: ChaCha8Rng,
    /// The fixed sample-grid noise, `[grid_rows^2 * z_dim]`.
    pub fixed_noise: Vec<f32>,
    /// Training seconds before this checkpoint.
    pub elapsed_s: f64,
}

/// Saves `module`'s parameters and persistent state to `path` in burnpack format, atomically.
pub fn save_module<M: Module>(module: &M, path: &Path) -> Result<()> {
    write_atomic(path, &module_bytes(module, path)?)
}

fn module_bytes<M: Module>(module: &M, path: &Path) -> Result<Bytes> {
    // `valid()` flushes RunningState updates still pending on this thread (BatchNorm keeps
    // the latest statistics there until its next forward), so that the record is current.
    let _ = module.valid();
    module
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("cannot serialize the model for {}", path.display()))
}

/// Loads parameters saved by [`save_module`] into `module` (a freshly built one of the same
/// shape), naming the file when it is missing, truncated or of another shape.
pub fn load_module<M: Module>(module: M, path: &Path) -> Result<M> {
    let record = burn::store::ModuleRecord::load(path)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("cannot read {}", path.display()))?;
    module
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("{} does not fit this model", path.display()))
}

/// `step_NNNNNN`.
pub fn checkpoint_name(step: usize) -> String {
    format!("step_{step:06}")
}

/// The checkpoints of a run, oldest first, as `(step, folder)`.
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join(CHECKPOINTS)) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step_")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Writes a complete checkpoint of `gan` and `state`, then removes all but the newest `keep`.
/// Returns the checkpoint folder.
pub fn save(run_dir: &Path, gan: &Gan, state: &TrainState, keep: usize) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(&root)
        .with_context(|| {
            format!(
                "cannot create a folder in {}: is the disk full?",
                root.display()
            )
        })?;
    let mut files: Vec<(&str, Bytes)> = vec![
        ("generator.bpk", module_bytes(&gan.generator, &root)?),
        ("critic.bpk", module_bytes(&gan.critic, &root)?),
        ("optim_g.bpk", optimizer_bytes(&gan.optim_g)?),
        ("optim_d.bpk", optimizer_bytes(&gan.optim_d)?),
    ];
    if let Some(ema) = &gan.ema {
        files.push((EMA_FILE, module_bytes(ema, &root)?));
    }
    for (name, bytes) in files {
        write_synced(&tmp.path().join(name), &bytes)?;
    }
    let json = serde_json::to_vec(state).expect("TrainState serializes");
    write_synced(&tmp.path().join("state.json"), &json)?;
    let target = root.join(checkpoint_name(state.step));
    if target.exists() {
        std::fs::remove_dir_all(&target)
            .with_context(|| format!("cannot replace {}", target.display()))?;
    }
    std::fs::rename(tmp.keep(), &target)
        .with_context(|| format!("cannot move the new checkpoint into {}", target.display()))?;
    prune(run_dir, keep);
    Ok(target)
}

fn optimizer_bytes(optim: &ModuleOptimizer) -> Result<Bytes> {
    optim
        .to_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot serialize the optimizer state: {e:?}"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}: is the disk full?", path.display()))
}

/// Removes all but the newest `keep` checkpoints, and temporary folders of interrupted saves.
fn prune(run_dir: &Path, keep: usize) {
    let all = list(run_dir);
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Ok(entries) = std::fs::read_dir(run_dir.join(CHECKPOINTS)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Loads the checkpoint in `dir` into `gan` (freshly built from the run's config).
pub fn load(dir: &Path, gan: Gan) -> Result<(Gan, TrainState)> {
    let state_path = dir.join("state.json");
    let text = std::fs::read(&state_path)
        .with_context(|| format!("cannot read {}", state_path.display()))?;
    let state: TrainState = serde_json::from_slice(&text)
        .with_context(|| format!("{} is corrupt", state_path.display()))?;
    if state.format_version != FORMAT_VERSION {
        bail!(
            "{} has checkpoint format {}, this wgan-train reads {FORMAT_VERSION}",
            state_path.display(),
            state.format_version
        );
    }
    let generator: Generator = load_module(gan.generator, &dir.join("generator.bpk"))?;
    let critic: Critic = load_module(gan.critic, &dir.join("critic.bpk"))?;
    let optim_g = load_optimizer(gan.optim_g, &dir.join("optim_g.bpk"))?;
    let optim_d = load_optimizer(gan.optim_d, &dir.join("optim_d.bpk"))?;
    let ema_path = dir.join(EMA_FILE);
    let ema = match gan.ema {
        Some(fresh) if ema_path.exists() => Some(load_module(fresh, &ema_path)?),
        // The run kept no average (train.ema_decay was 0 when it was written): start one.
        Some(_) => {
            eprintln!(
                "note: {} holds no moving average of G; it starts from G at iteration {}",
                dir.display(),
                state.step
            );
            Some(generator.valid())
        }
        None => None,
    };
    let gan = Gan {
        generator,
        critic,
        optim_g,
        optim_d,
        ema,
        ..gan
    };
    Ok((gan, state))
}

fn load_optimizer(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    let record = OptimizerRecord::load(path)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(optim.load_record(record))
}

/// The newest checkpoint of `run_dir` that loads, with one warning line for each newer one
/// that does not. `fresh` builds the networks and optimizers to load into.
pub fn load_latest(
    run_dir: &Path,
    fresh: impl Fn() -> Gan,
) -> Result<(Gan, TrainState, PathBuf, Vec<String>)> {
    let all = list(run_dir);
    if all.is_empty() {
        bail!(
            "no checkpoint to resume from in {}: start the run without --resume (or with --force to overwrite the folder)",
            run_dir.join(CHECKPOINTS).display()
        );
    }
    let mut warnings = Vec::new();
    for (_, dir) in all.iter().rev() {
        match load(dir, fresh()) {
            Ok((gan, state)) => return Ok((gan, state, dir.clone(), warnings)),
            Err(e) => warnings.push(format!(
                "warning: checkpoint {} is unusable ({e:#}); trying the previous one",
                dir.display()
            )),
        }
    }
    bail!(
        "no usable checkpoint in {}: all {} are unreadable ({})",
        run_dir.join(CHECKPOINTS).display(),
        all.len(),
        warnings.join("; ")
    )
}

/// The generator of checkpoint `step` of a run (the newest usable one when `None`), loaded into
/// `fresh`, with the step it comes from.
pub fn load_generator(
    run_dir: &Path,
    step: Option<usize>,
    fresh: impl Fn() -> Generator,
) -> Result<(Generator, usize)> {
    load_network(run_dir, step, "generator", fresh)
}

/// The network `name` (`generator` or `critic`) of checkpoint `step` of a run (the newest usable
/// one when `None`), loaded into `fresh`, with the step it comes from.
pub fn load_network<M: Module>(
    run_dir: &Path,
    step: Option<usize>,
    name: &str,
    fresh: impl Fn() -> M,
) -> Result<(M, usize)> {
    let all = list(run_dir);
    let candidates: Vec<&(usize, PathBuf)> = match step {
        Some(s) => {
            let found: Vec<_> = all.iter().filter(|(k, _)| *k == s).collect();
            if found.is_empty() {
                let steps: Vec<String> = all.iter().map(|(k, _)| k.to_string()).collect();
                bail!(
                    "{} has no checkpoint {s}; it has: {}",
                    run_dir.display(),
                    if steps.is_empty() {
                        "none".to_string()
                    } else {
                        steps.join(", ")
                    }
                );
            }
            found
        }
        None => all.iter().rev().collect(),
    };
    if candidates.is_empty() {
        bail!(
            "no checkpoint in {}: train the run first",
            run_dir.join(CHECKPOINTS).display()
        );
    }
    let mut errors = Vec::new();
    for (k, dir) in candidates {
        match load_module(fresh(), &dir.join(format!("{name}.bpk"))) {
            Ok(g) => {
                for e in &errors {
                    eprintln!("warning: {e}; using checkpoint {k}");
                }
                return Ok((g, *k));
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!(
        "no usable {name} in {}: {}",
        run_dir.display(),
        errors.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_sorts_by_step_and_ignores_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["step_000010", "step_000002", ".tmp-xyz", "notes"] {
            std::fs::create_dir_all(dir.path().join(CHECKPOINTS).join(name)).unwrap();
        }
        let steps: Vec<usize> = list(dir.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![2, 10]);
    }
}
