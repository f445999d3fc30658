//! The library's error type. Every variant renders as one line that names the file and,
//! where there is one, the field, so the binary can print it as is and exit non-zero.

use std::path::{Path, PathBuf};

/// Errors raised by emclass library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused to read or write a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is readable but one of its fields is missing, malformed or out of range.
    #[error("{}: {field}: {msg}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// A file as a whole is malformed (truncated, wrong magic, wrong shape).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A configuration value is invalid (file, key, and what to change).
    #[error("{}: {key}: {msg}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        msg: String,
    },
    /// A command-line usage error (conflicting flags, missing required flag).
    #[error("{0}")]
    Usage(String),
    /// A setting that cannot work with this data or with the other settings, found when the
    /// configuration is turned into a plan (the message names the key to change).
    #[error("{0}")]
    Plan(String),
    /// The input data cannot be used as they are (shapes, sizes, values), found past the
    /// readers (which report `Field`/`File` with the file's path).
    #[error("{0}")]
    Input(String),
    /// The compute backend failed or is unavailable (CUDA libraries, devices, memory).
    #[error("backend: {0}")]
    Backend(String),
    /// A checkpoint cannot be resumed (finished run, other rank count, other settings).
    #[error("--resume: {0}")]
    Checkpoint(String),
    /// A broken invariant inside emclass: a bug to report, never the user's input.
    #[error("internal error (please report it): {0}")]
    Internal(String),
    /// Another rank failed; its own message says why (printed by that rank).
    #[error("another rank failed; see its message above")]
    Peer,
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    /// A problem with `field` of the file at `path`.
    pub fn field(path: impl AsRef<Path>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Field {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// A problem with the file at `path` as a whole.
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    /// A problem with configuration key `key` read from `path`.
    pub fn config(path: impl AsRef<Path>, key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            key: key.into(),
            msg: msg.into(),
        }
    }
    /// An HDF5 library error on `path` (the HDF5 message is kept on one line).
    pub fn hdf5(path: impl AsRef<Path>, what: impl Into<String>, e: hdf5::Error) -> Self {
        let msg = e.to_string().replace('\n', " ");
        Error::field(path, what, msg)
    }
}
