//! Several output files written as one: each is written under a hidden staging name, and
//! only when all are complete are they renamed into place. On error (drop without commit)
//! the staged files are removed, so a failed export leaves nothing behind.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::jobs::output::check_writable;

#[derive(Default)]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Staged {
    /// Registers `target` (refused if it exists and not `overwrite`) and returns the
    /// staging path to write instead.
    pub fn stage(&mut self, target: &Path, overwrite: bool) -> Result<PathBuf> {
        check_writable(target, overwrite)?;
        if self.files.iter().any(|(t, _)| t == target) {
            return Err(Error::file(target, "named twice as an output"));
        }
        let name = target
            .file_name()
            .ok_or_else(|| Error::file(target, "not a file name"))?
            .to_string_lossy();
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::file(
                    target,
                    format!("folder {} does not exist (create it first)", dir.display()),
                ));
            }
        }
        let part = target.with_file_name(format!(".{name}.emclass-part"));
        self.files.push((target.to_path_buf(), part.clone()));
        Ok(part)
    }
    /// Renames every staged file into place.
    pub fn commit(mut self) -> Result<()> {
        for (target, part) in &self.files {
            std::fs::rename(part, target).map_err(|e| Error::io(target, e))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            for (_, part) in &self.files {
                let _ = std::fs::remove_file(part);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_in_a_missing_folder_is_refused_naming_the_folder() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("nope/x.star");
        let e = Staged::default()
            .stage(&target, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
        assert!(!d.path().join("nope").exists());
    }
}
