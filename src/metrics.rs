//! Training metrics: one JSON object per line in `metrics.jsonl`.

use crate::lipschitz::Lipschitz;
use crate::swd::Swd;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Generator iterations done.
    pub step: usize,
    /// Critic loss of the last critic step: mean f(fake) - mean f(real) (+ penalty).
    pub critic_loss: f64,
    /// Generator loss: -mean f(fake).
    pub generator_loss: f64,
    /// Wasserstein estimate of the last critic step: mean f(real) - mean f(fake).
    pub wasserstein: f64,
    /// The constraint's penalty term in the last critic step (gradient or spectral penalty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub penalty: Option<f64>,
    /// Mean wall-clock seconds per generator iteration since the previous line.
    pub sec_per_iter: f64,
    /// Real images consumed per second since the previous line.
    pub images_per_sec: f64,
    /// Seconds of training since the run started (diagnostics, evaluation and plotting
    /// excluded, so that runs compare at equal training time).
    pub elapsed_s: f64,
    /// The critic's Lipschitz diagnostics (`output.diagnostics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lipschitz: Option<Lipschitz>,
    /// Sliced Wasserstein distance to the data (every `output.eval_every` iterations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swd: Option<Swd>,
    /// FID to the data, with the evaluations' images (where Inception weights are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    /// KID of the same images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<crate::fid::Kid>,
}

/// Appends [`Record`]s to a JSONL file, flushing each line.
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Opens (appending to) `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Appends one line.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let line = serde_json::to_string(record).expect("a Record always serializes");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("cannot write {}: is the disk full?", self.path.display()))
    }
}

/// Reads every line of a metrics file.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line in {}", path.display())))
        .collect()
}

/// Drops the lines of a metrics file whose step is after `step` (written after the checkpoint
/// a run resumes from), atomically. A missing file is left missing.
pub fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<Record>(l).is_ok_and(|r| r.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::atomic::write_atomic(path, kept.as_bytes())
}
