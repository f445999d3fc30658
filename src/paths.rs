//! Path arithmetic for image references: absolute folders, and a path relative to another
//! folder (so an exported STAR refers to the original stacks from wherever it is written).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The folder of `path` ("." for a bare file name).
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The absolute, symlink-resolved folder that contains `file` (which may not exist yet).
pub fn abs_parent(file: &Path) -> Result<PathBuf> {
    let parent = folder_of(file);
    std::fs::canonicalize(&parent).map_err(|e| Error::io(&parent, e))
}

/// `target` (absolute) expressed relative to folder `base` (absolute); `target` itself when
/// they share no root.
pub fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return target.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Joins `path` onto `root` unless it is absolute, and removes `.` components.
pub fn resolve(root: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    joined
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// Writes `bytes` to `path` atomically: a temporary file next to it, fsync, rename (a kill
/// leaves the old file or the new one, never half of one).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let r = relative_to(Path::new("/a/b/Particles/s.mrcs"), Path::new("/a/b"));
        assert_eq!(r, PathBuf::from("Particles/s.mrcs"));
        let r = relative_to(Path::new("/a/b/Particles/s.mrcs"), Path::new("/a/c/d"));
        assert_eq!(r, PathBuf::from("../../b/Particles/s.mrcs"));
        assert_eq!(
            resolve(Path::new("/x"), "./P/s.mrcs"),
            PathBuf::from("/x/P/s.mrcs")
        );
        assert_eq!(
            resolve(Path::new("/x"), "/abs/s.mrcs"),
            PathBuf::from("/abs/s.mrcs")
        );
    }
}
