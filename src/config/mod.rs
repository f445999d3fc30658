//! Job configuration: YAML files deserialised into one serde struct per job
//! (`deny_unknown_fields`), `--set key=value` overrides, and validation. Errors name the
//! file, the key and, for keys read from the file, the line and column.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_norway::Value;

use crate::error::{Error, Result};

/// What every job config provides besides its own parameters.
pub trait JobConfig: DeserializeOwned + Serialize {
    /// Checks values and combinations; `path` is the config file, for error messages.
    fn validate(&self, path: &Path) -> Result<()>;
    /// The output folder the job writes.
    fn output(&self) -> &Path;
}

/// Reads `path`, applies `overrides` (`key=value`, dotted keys for nested maps, values
/// parsed as YAML scalars), deserialises and validates.
pub fn load<T: JobConfig>(path: &Path, overrides: &[String]) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at
            - bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        Error::config(
            path,
            "yaml",
            format!("not UTF-8 text at line {line} column {column} (a config is UTF-8 YAML)"),
        )
    })?;
    load_str(&text, path, overrides)
}

/// Deepest nesting of flow collections (`[`, `{`) accepted in a config: job configs nest
/// two levels at most, and the YAML parser's time grows with the square of the depth (a
/// few hundred kB of `[` would keep it busy for minutes).
const MAX_FLOW_DEPTH: usize = 64;

/// Refuses text whose brackets nest deeper than [`MAX_FLOW_DEPTH`] (counted over the raw
/// text, quoted or not: no job config comes near it).
fn check_depth(text: &str, path: &Path) -> Result<()> {
    let mut depth = 0usize;
    let mut line = 1;
    for c in text.bytes() {
        match c {
            b'\n' => line += 1,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(Error::config(
                        path,
                        "yaml",
                        format!("brackets nested more than {MAX_FLOW_DEPTH} deep at line {line}"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// As [`load`], from text already read (`path` names it in errors).
pub fn load_str<T: JobConfig>(text: &str, path: &Path, overrides: &[String]) -> Result<T> {
    load_text(text, path, overrides).map_err(crate::formats::printable_error)
}

fn load_text<T: JobConfig>(text: &str, path: &Path, overrides: &[String]) -> Result<T> {
    check_depth(text, path)?;
    // First pass straight from the text, so errors in the file carry line and column.
    let from_file: std::result::Result<T, _> = serde_norway::from_str(text);
    let cfg = match (from_file, overrides.is_empty()) {
        (Ok(cfg), true) => cfg,
        (Err(e), _) => return Err(yaml_error(path, &e.to_string())),
        (Ok(_), false) => {
            let mut value: Value =
                serde_norway::from_str(text).map_err(|e| yaml_error(path, &e.to_string()))?;
            for ov in overrides {
                apply_override(&mut value, ov, path)?;
            }
            serde_norway::from_value(value).map_err(|e| {
                let msg = e.to_string();
                let (key, msg) = error_key(&msg).unwrap_or_else(|| ("--set".to_string(), &msg));
                Error::config(
                    path,
                    key,
                    format!(
                        "{} (after --set {})",
                        msg.replace('\n', " "),
                        overrides.join(" --set ")
                    ),
                )
            })?
        }
    };
    cfg.validate(path)?;
    Ok(cfg)
}

/// The effective configuration as YAML, to save next to a job's outputs.
pub fn to_yaml<T: Serialize>(cfg: &T) -> String {
    serde_norway::to_string(cfg).unwrap_or_else(|e| format!("# could not serialise: {e}\n"))
}

fn yaml_error(path: &Path, msg: &str) -> Error {
    // serde_norway puts the path of the offending key first ("box_px: invalid type: ...",
    // "view_weights[1]: ..."); "unknown field `x`" and "missing field `x`" name it in
    // backticks. The key is taken from there, never from a quoted value.
    let (key, msg) = error_key(msg).unwrap_or_else(|| ("yaml".to_string(), msg));
    Error::config(path, key, msg.replace('\n', " "))
}

/// The key a serde message is about, and the message without a leading key path.
fn error_key(msg: &str) -> Option<(String, &str)> {
    let Some((key, rest)) = leading_key(msg) else {
        return backticked(msg).map(|k| (k, msg));
    };
    let named = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| rest.starts_with(p));
    match backticked(rest) {
        Some(inner) if named => Some((format!("{key}.{inner}"), rest)),
        _ => Some((key.to_string(), rest)),
    }
}

/// `("a.b[0]", "rest")` for a message starting with a key path and ": ".
fn leading_key(msg: &str) -> Option<(&str, &str)> {
    let (key, rest) = msg.split_once(": ")?;
    let is_path = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
    is_path.then_some((key, rest))
}

/// The first `quoted` name in a serde message ("unknown field `x`, expected ...").
fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

fn apply_override(root: &mut Value, ov: &str, path: &Path) -> Result<()> {
    let (key, raw) = ov
        .split_once('=')
        .ok_or_else(|| Error::config(path, ov, "--set expects key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(Error::config(
            path,
            ov,
            "--set expects key=value with a non-empty key",
        ));
    }
    let value: Value = serde_norway::from_str(raw).map_err(|e| {
        Error::config(
            path,
            key,
            format!("--set value {raw:?} is not valid YAML: {e}"),
        )
    })?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().ok_or_else(|| {
            Error::config(
                path,
                key,
                format!("--set: `{}` is not a map", parts[..i].join(".")),
            )
        })?;
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

/// Checks that a floating-point parameter is finite and within `[lo, hi]`.
pub fn check_range(path: &Path, key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(Error::config(
            path,
            key,
            format!("{v} is outside [{lo}, {hi}]"),
        ));
    }
    Ok(())
}

/// Checks an online-EM learning-rate schedule shared by the EM jobs: the initial rate
/// `oem_learning_rate_init` in `(0, 1]` and its half-life (the key names its unit) in
/// `[0, 1e6]`.
pub fn check_learning_rate(
    path: &Path,
    init: f64,
    halflife_key: &str,
    halflife: f64,
) -> Result<()> {
    check_range(path, "oem_learning_rate_init", init, 1e-6, 1.0)?;
    check_range(path, halflife_key, halflife, 0.0, 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::path::PathBuf;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        output: PathBuf,
        #[serde(default = "ten")]
        num_classes: u32,
        #[serde(default)]
        inner: Inner,
    }
    #[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        rate: f64,
    }
    fn ten() -> u32 {
        10
    }
    impl JobConfig for Demo {
        fn validate(&self, path: &Path) -> Result<()> {
            check_range(path, "inner.rate", self.inner.rate, 0.0, 1.0)
        }
        fn output(&self) -> &Path {
            &self.output
        }
    }

    fn p() -> PathBuf {
        PathBuf::from("job.yaml")
    }

    #[test]
    fn defaults_and_overrides() {
        let d: Demo = load_str("output: out\n", &p(), &[]).unwrap();
        assert_eq!(d.num_classes, 10);
        let d: Demo = load_str(
            "output: out\n",
            &p(),
            &["num_classes=3".into(), "inner.rate=0.5".into()],
        )
        .unwrap();
        assert_eq!(d.num_classes, 3);
        assert_eq!(d.inner.rate, 0.5);
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let e = load_str::<Demo>("output: out\nnum_clases: 4\n", &p(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("job.yaml: num_clases: unknown field"), "{e}");
        assert!(e.contains("line 2 column 1"), "{e}");
    }

    #[test]
    fn mistyped_value_and_bad_override() {
        let e = load_str::<Demo>("output: out\nnum_classes: many\n", &p(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = load_str::<Demo>("output: out\n", &p(), &["bogus=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = load_str::<Demo>("output: out\n", &p(), &["nokey".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value"), "{e}");
    }

    #[test]
    fn validation_runs_after_overrides() {
        let e = load_str::<Demo>("output: out\n", &p(), &["inner.rate=2".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "job.yaml: inner.rate: 2 is outside [0, 1]");
        let e = load_str::<Demo>("output: out\ninner: {rate: .nan}\n", &p(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("inner.rate: NaN"), "{e}");
    }
}
