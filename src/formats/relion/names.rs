//! RELION image names: `N@stack` (image N, 1-based, of a stack file) ↔ (0-based index, path).

/// Splits `N@path` into (N − 1, path); a name without `@` is image 0 of a single-image file.
pub fn parse_image_name(name: &str) -> std::result::Result<(u32, String), String> {
    let Some((num, path)) = name.split_once('@') else {
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(format!(
                "{name:?}: the stack path holds the control character {c:?}"
            ));
        }
        return Ok((0, name.to_string()));
    };
    let k: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{name:?}: image number {num:?} is not a positive integer"))?;
    if k < 1 {
        return Err(format!(
            "{name:?}: image number {k} is < 1 (RELION numbers images from 1)"
        ));
    }
    if k - 1 > u32::MAX as u64 {
        return Err(format!("{name:?}: image number {k} is too large"));
    }
    if path.is_empty() {
        return Err(format!("{name:?}: no stack path after '@'"));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{name:?}: the stack path holds the control character {c:?}"
        ));
    }
    Ok(((k - 1) as u32, path.to_string()))
}

/// RELION's image name `NNNNNN@path` for 0-based index `idx` (zero-padded to 6 digits, as
/// RELION writes them).
pub fn format_image_name(idx: u64, path: &str) -> String {
    format!("{:06}@{path}", idx + 1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_data::{parse, with_names, P};
    use super::*;
    use crate::formats::relion::{star_to_table_with, CtfPolicy};

    #[test]
    fn bad_image_index_is_an_error_naming_the_line() {
        for (name, what) in [
            ("0@a.mrcs", "< 1"),
            ("x@a.mrcs", "not a positive integer"),
            ("-3@a.mrcs", "not a positive"),
            ("5@", "no stack path"),
        ] {
            let s = parse(&with_names(&["1@a.mrcs", name]));
            let e = star_to_table_with(&s, Path::new(P), CtfPolicy::IfPresent)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("in.star: _rlnImageName: line 5 of data_particles"),
                "{e}"
            );
            assert!(e.contains(what), "{e}");
        }
        let s = parse(&with_names(&["single.mrc", "000010@b.mrcs"]));
        let t = star_to_table_with(&s, Path::new(P), CtfPolicy::IfPresent).unwrap();
        assert_eq!(t.u32("blob/idx").unwrap(), &[0, 9]);
        assert_eq!(t.str("blob/path").unwrap(), &["single.mrc", "b.mrcs"]);
    }

    #[test]
    fn names_parse_and_format_as_relion_writes_them() {
        assert_eq!(
            parse_image_name("000010@b.mrcs"),
            Ok((9, "b.mrcs".to_string()))
        );
        assert_eq!(
            parse_image_name("single.mrc"),
            Ok((0, "single.mrc".to_string()))
        );
        assert_eq!(format_image_name(9, "b.mrcs"), "000010@b.mrcs");
        assert_eq!(format_image_name(999_999, "b.mrcs"), "1000000@b.mrcs");
    }
}
