//! File formats of other programs: MRC stacks/volumes, RELION STAR, CryoSPARC .cs.

pub mod cs;
pub mod cs_classes;
pub mod mrc;
pub mod relion;
pub mod star;

use crate::error::Error;

/// `s` with every control character (line breaks, NUL, escape sequences…) written as its
/// Rust escape (`\n`, `\0`, `\u{1b}`), so that text copied from a corrupt file into an error
/// message keeps the message on one printable line.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .flat_map(|c| {
            let v: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            v
        })
        .collect()
}

/// `e` with [`printable`] field, key and message (readers apply it to every error they
/// return, since their messages quote labels, names and values from the file).
pub fn printable_error(e: Error) -> Error {
    match e {
        Error::Field { path, field, msg } => Error::Field {
            path,
            field: printable(&field),
            msg: printable(&msg),
        },
        Error::File { path, msg } => Error::File {
            path,
            msg: printable(&msg),
        },
        Error::Config { path, key, msg } => Error::Config {
            path,
            key: printable(&key),
            msg: printable(&msg),
        },
        other => other,
    }
}
