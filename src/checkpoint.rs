//! Saving modules and files so that a crash never leaves a half-written file behind:
//! everything is written to a temporary file in the destination folder, then renamed.

use anyhow::{Context, Result};
use burn::module::Module;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| {
            format!(
                "cannot create a file in {}: check that it is writable and the disk is not full",
                dir.display()
            )
        })?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}: is the disk full?", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot move the new {} into place", path.display()))?;
    Ok(())
}

/// Saves `module`'s parameters (and persistent state such as spectral-norm `u`, `v` and
/// BatchNorm running statistics) to `path` in Burn's burnpack format, atomically.
pub fn save_module<M: Module>(module: &M, path: &Path) -> Result<()> {
    let bytes = module
        .clone()
        .into_record()
        .into_bytes()
        .with_context(|| format!("cannot serialize the model for {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Loads parameters saved by [`save_module`] into `module` (a freshly built one of the same
/// shape), naming the file when it is missing, truncated or of another shape.
pub fn load_module<M: Module>(module: M, path: &Path) -> Result<M> {
    let record = burn::store::ModuleRecord::load(path)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    module
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("checkpoint {} does not fit this model", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
