//! Job output folders: written under a hidden temporary name next to the final one and
//! renamed into place only when the job has finished, so a failed or killed job leaves no
//! partial output. An existing output is refused unless `--overwrite` is given.

use std::path::{Path, PathBuf};

use crate::comm::Comm;
use crate::error::{Error, Result};

/// An output folder being written.
pub struct OutputDir {
    final_path: PathBuf,
    tmp_path: PathBuf,
    overwrite: bool,
    committed: bool,
    /// A resumed run keeps its staging folder (and checkpoint) if it fails again.
    keep_on_failure: bool,
}

/// The temporary sibling of `path` used while writing it.
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    path.with_file_name(format!(".{name}.emclass-tmp"))
}

/// Refuses an existing `path` unless `overwrite`.
pub fn check_writable(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(Error::file(
            path,
            "output already exists; choose another output or pass --overwrite to replace it",
        ));
    }
    Ok(())
}

impl OutputDir {
    /// Starts writing the folder `path` (its parent must exist).
    pub fn create(path: &Path, overwrite: bool) -> Result<OutputDir> {
        check_writable(path, overwrite)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(Error::file(
                    path,
                    "the folder that should contain the output does not exist",
                ));
            }
        }
        let tmp_path = tmp_sibling(path);
        if tmp_path.exists() {
            // Left by a killed run of the same job: nothing in it is trustworthy.
            std::fs::remove_dir_all(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        }
        std::fs::create_dir(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        Ok(OutputDir {
            final_path: path.to_path_buf(),
            tmp_path,
            overwrite,
            committed: false,
            keep_on_failure: false,
        })
    }
    /// Continues writing the staging folder of a killed run of `path` (it must exist; the
    /// finished folder must not).
    pub fn resume(path: &Path) -> Result<OutputDir> {
        if path.exists() {
            return Err(Error::file(
                path,
                "this run already finished; nothing to resume",
            ));
        }
        let tmp_path = tmp_sibling(path);
        if !tmp_path.is_dir() {
            return Err(Error::file(
                path,
                format!(
                    "nothing to resume: no staging folder {} (the run never started here)",
                    tmp_path.display()
                ),
            ));
        }
        Ok(OutputDir {
            final_path: path.to_path_buf(),
            tmp_path,
            overwrite: false,
            committed: false,
            keep_on_failure: true,
        })
    }
    /// Where to write now (the temporary folder).
    pub fn path(&self) -> &Path {
        &self.tmp_path
    }
    /// The name the folder will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
    /// Writes `summary.json` and the effective config (`config.used.yaml`) of job `job`,
    /// then moves the folder into place.
    pub fn finish<C: serde::Serialize>(
        self,
        summary: &serde_json::Value,
        cfg: &C,
        job: &str,
    ) -> Result<()> {
        let write = |name: &str, text: String| {
            let p = self.tmp_path.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
        };
        let json =
            serde_json::to_string_pretty(summary).map_err(|e| Error::Internal(e.to_string()))?;
        write("summary.json", json + "\n")?;
        write("config.used.yaml", crate::config::to_yaml(cfg))?;
        self.remove_checkpoints()?;
        let done = self.commit()?;
        log::info!("{job}: wrote {}", done.display());
        Ok(())
    }
    /// Removes the checkpoint files (`checkpoint*`, every rank's) of a finished run: they
    /// only serve `--resume`, which a finished run no longer needs.
    fn remove_checkpoints(&self) -> Result<()> {
        let entries =
            std::fs::read_dir(&self.tmp_path).map_err(|e| Error::io(&self.tmp_path, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.tmp_path, e))?;
            if e.file_name().to_string_lossy().starts_with("checkpoint") {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
        Ok(())
    }
    /// Moves the finished folder into place (replacing an old one when overwriting).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.final_path.exists() {
            if !self.overwrite {
                return Err(Error::file(
                    &self.final_path,
                    "output appeared while the job ran; not replacing it",
                ));
            }
            let meta = std::fs::symlink_metadata(&self.final_path)
                .map_err(|e| Error::io(&self.final_path, e))?;
            if meta.is_dir() {
                std::fs::remove_dir_all(&self.final_path)
            } else {
                std::fs::remove_file(&self.final_path)
            }
            .map_err(|e| Error::io(&self.final_path, e))?;
        }
        std::fs::rename(&self.tmp_path, &self.final_path)
            .map_err(|e| Error::io(&self.final_path, e))?;
        self.committed = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed && !self.keep_on_failure {
            let _ = std::fs::remove_dir_all(&self.tmp_path);
        }
    }
}

/// A job's configuration as YAML without `output` (what a resumed run must match).
pub fn config_without_output<T: serde::Serialize>(cfg: &T) -> String {
    let mut v = serde_norway::to_value(cfg).unwrap_or(serde_norway::Value::Null);
    if let Some(m) = v.as_mapping_mut() {
        m.remove("output");
    }
    serde_norway::to_string(&v).unwrap_or_default()
}

/// The bytes of rank 0's checkpoint file `file` (None on other ranks), on every rank, for
/// `--resume DIR`. Rank 0 always joins the broadcast, even when its read fails.
pub fn checkpoint_bytes(comm: &dyn Comm, file: Option<&Path>, dir: &Path) -> Result<Vec<u8>> {
    let read = match file {
        Some(p) if p.exists() => std::fs::read(p).map_err(|e| Error::io(p, e)),
        _ => Ok(Vec::new()),
    };
    let (mut bytes, failed) = match read {
        Ok(b) => (b, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    comm.broadcast_bytes(0, &mut bytes);
    if let Some(e) = failed {
        return Err(e);
    }
    if bytes.is_empty() {
        return Err(Error::file(
            dir,
            "nothing to resume: the killed run wrote no checkpoint yet (it ended in its first iteration)",
        ));
    }
    Ok(bytes)
}

/// Refuses a checkpoint made with another configuration.
pub fn check_same_config(dir: &Path, checkpoint_yaml: &str, config_yaml: &str) -> Result<()> {
    if checkpoint_yaml == config_yaml {
        Ok(())
    } else {
        Err(Error::file(
            dir,
            "the checkpoint was made with another configuration (apart from output); resume with the same config and --set values",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("job");
        {
            let o = OutputDir::create(&out, false).unwrap();
            std::fs::write(o.path().join("a.txt"), "x").unwrap();
        }
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let o = OutputDir::create(&out, false).unwrap();
        std::fs::write(o.path().join("a.txt"), "x").unwrap();
        o.commit().unwrap();
        assert!(out.join("a.txt").exists());
        let e = OutputDir::create(&out, false).err().unwrap().to_string();
        assert!(e.contains("--overwrite"), "{e}");
        let o = OutputDir::create(&out, true).unwrap();
        std::fs::write(o.path().join("b.txt"), "y").unwrap();
        o.commit().unwrap();
        assert!(out.join("b.txt").exists() && !out.join("a.txt").exists());
    }
}
