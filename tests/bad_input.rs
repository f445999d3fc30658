//! Bad input to `emclass import` / `export` (and a mistyped `simulate` config): every case
//! must end with one `error:` line naming the file and the field, exit code 1, no panic, no
//! partial output (no dataset, no `*.tmp`, no hidden staging files) and the inputs untouched
//! (same files, bytes and modification times). Inputs are written here directly (MRC
//! headers by hand, STAR text), so these tests need no Python.

mod common;
use common::*;

use std::path::Path;

/// Runs `emclass args...` in `dir`, which must fail as [`Run::fails_with`] says and leave
/// `dir` exactly as it was; returns the error line.
fn fails_cleanly(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let before = tree_snapshot(dir);
    let line = emclass(dir, args).fails_with(needles);
    assert_same_tree(&before, &tree_snapshot(dir));
    eprintln!("emclass {}\n  {line}", args.join(" "));
    line
}

const IMPORT: [&str; 5] = ["import", "--star", "particles.star", "--out", "out.h5"];

/// A valid set: stack_00 (4 images) and stack_01 (3 images) of 16 px, and its STAR.
fn good_set(dir: &Path) -> RelionSet {
    write_relion_set(dir, &[4, 3], 16)
}

/// Deterministic bytes that are not any file format.
fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn valid_inputs_import_so_the_failures_below_are_the_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    good_set(d);
    emclass(d, &IMPORT).ok();
    let info = emclass(d, &["info", "out.h5"]).ok().stdout;
    assert!(info.contains("particles 7"), "{info}");
}

#[test]
fn truncated_stack_referenced_by_a_star_names_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = good_set(d);
    // The second stack: the import has started writing when it reaches it.
    let bytes = std::fs::read(&set.stacks[1]).unwrap();
    std::fs::write(&set.stacks[1], &bytes[..bytes.len() - 10]).unwrap();
    let line = fails_cleanly(d, &IMPORT, &["stack_01.mrcs", "truncated"]);
    assert!(line.contains("particles.star"), "{line}");
    // Cut inside the header, too.
    std::fs::write(&set.stacks[0], &bytes[..500]).unwrap();
    fails_cleanly(d, &IMPORT, &["stack_00.mrcs"]);
}

#[test]
fn corrupt_mrc_header_as_mrcs_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = [
        "import",
        "--mrcs",
        "bad.mrcs",
        "--pixel-size",
        "1.0",
        "--out",
        "out.h5",
    ];
    // Pure garbage of a plausible length.
    std::fs::write(d.join("bad.mrcs"), garbage(1024 + 3 * 16 * 16 * 4, 1)).unwrap();
    fails_cleanly(d, &args, &["bad.mrcs"]);
    // A real header with an unsupported mode.
    write_mrc_stack(&d.join("bad.mrcs"), 16, 16, 1.0, &test_images(0, 3, 16));
    let mut b = std::fs::read(d.join("bad.mrcs")).unwrap();
    b[12..16].copy_from_slice(&7i32.to_le_bytes());
    std::fs::write(d.join("bad.mrcs"), &b).unwrap();
    fails_cleanly(d, &args, &["bad.mrcs", "mode"]);
    // Negative dimensions.
    b[12..16].copy_from_slice(&2i32.to_le_bytes());
    b[0..4].copy_from_slice(&(-16i32).to_le_bytes());
    std::fs::write(d.join("bad.mrcs"), &b).unwrap();
    fails_cleanly(d, &args, &["bad.mrcs"]);
    // Shorter than a header.
    std::fs::write(d.join("bad.mrcs"), b"MRC?").unwrap();
    fails_cleanly(d, &args, &["bad.mrcs"]);
    // Empty stack (a valid header, zero images).
    write_mrc_stack(&d.join("bad.mrcs"), 16, 16, 1.0, &[]);
    fails_cleanly(d, &args, &["bad.mrcs"]);
}

#[test]
fn star_image_name_pointing_to_a_missing_stack_names_the_star_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut set = good_set(d);
    set.names[5] = "000002@Particles/missing.mrcs".to_string();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    fails_cleanly(
        d,
        &IMPORT,
        &["particles.star", "_rlnImageName", "missing.mrcs"],
    );
    // The very first stack missing.
    set.names[0] = "000001@Particles/gone.mrcs".to_string();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    fails_cleanly(
        d,
        &IMPORT,
        &["particles.star", "_rlnImageName", "gone.mrcs"],
    );
}

#[test]
fn star_image_index_out_of_range_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut set = good_set(d);
    set.names[2] = "999@Particles/stack_00.mrcs".to_string();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    fails_cleanly(d, &IMPORT, &["particles.star", "_rlnImageName", "999"]);
    // RELION's indices start at 1.
    set.names[2] = "000000@Particles/stack_00.mrcs".to_string();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    fails_cleanly(d, &IMPORT, &["particles.star", "_rlnImageName"]);
    // One past the end of the last stack, after the other rows have been copied.
    set.names[2] = "000003@Particles/stack_00.mrcs".to_string();
    set.names[6] = "000004@Particles/stack_01.mrcs".to_string();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    fails_cleanly(
        d,
        &IMPORT,
        &["particles.star", "_rlnImageName", "stack_01.mrcs"],
    );
    // Not a number.
    set.names[6] = "x@Particles/stack_01.mrcs".to_string();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    fails_cleanly(d, &IMPORT, &["particles.star", "_rlnImageName"]);
}

#[test]
fn the_same_image_twice_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut set = good_set(d);
    set.names[3] = set.names[1].clone();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    fails_cleanly(d, &IMPORT, &["particles.star", "_rlnImageName"]);
}

#[test]
fn missing_ctf_column_names_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = good_set(d);
    for label in [
        "_rlnDefocusV",
        "_rlnDefocusU",
        "_rlnVoltage",
        "_rlnSphericalAberration",
    ] {
        std::fs::write(&set.star, relion_star(&set.names, 16, &[label])).unwrap();
        fails_cleanly(d, &IMPORT, &["particles.star", label]);
    }
}

#[test]
fn malformed_star_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = good_set(d);
    let text = relion_star(&set.names, 16, &[]);
    // Drop the last field of the third particle row.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let row = lines.iter().position(|l| l.starts_with("000003@")).unwrap();
    let cut = lines[row].rfind('\t').unwrap();
    lines[row].truncate(cut);
    std::fs::write(&set.star, lines.join("\n")).unwrap();
    let line = fails_cleanly(d, &IMPORT, &["particles.star"]);
    assert!(line.contains(&format!("line {}", row + 1)), "{line}");
    // A number column with text in it.
    let bad = text.replace("\t10200\t", "\tten-thousand\t");
    assert_ne!(bad, text);
    std::fs::write(&set.star, bad).unwrap();
    fails_cleanly(d, &IMPORT, &["particles.star", "_rlnDefocusU"]);
    // Not a STAR file at all, and a missing one.
    std::fs::write(&set.star, garbage(3000, 2)).unwrap();
    fails_cleanly(d, &IMPORT, &["particles.star"]);
    fails_cleanly(
        d,
        &["import", "--star", "nope.star", "--out", "out.h5"],
        &["nope.star"],
    );
}

#[test]
fn nan_pixels_name_the_stack_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = good_set(d);
    let mut images = test_images(4, 3, 16);
    images[1][100] = f32::NAN;
    write_mrc_stack(&set.stacks[1], 16, 16, SET_PSIZE_A, &images);
    fails_cleanly(d, &IMPORT, &["stack_01.mrcs"]);
    // Infinity in a bare stack, and NaN in its very first pixel.
    let mut images = test_images(0, 5, 16);
    images[4][255] = f32::INFINITY;
    write_mrc_stack(&d.join("s.mrcs"), 16, 16, 1.0, &images);
    let args = [
        "import",
        "--mrcs",
        "s.mrcs",
        "--pixel-size",
        "1.0",
        "--out",
        "out.h5",
    ];
    fails_cleanly(d, &args, &["s.mrcs"]);
    images[4][255] = 0.0;
    images[0][0] = f32::NAN;
    write_mrc_stack(&d.join("s.mrcs"), 16, 16, 1.0, &images);
    fails_cleanly(d, &args, &["s.mrcs"]);
}

#[test]
fn stacks_of_different_image_sizes_name_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = good_set(d);
    write_mrc_stack(&set.stacks[1], 24, 24, SET_PSIZE_A, &test_images(4, 3, 24));
    fails_cleanly(
        d,
        &IMPORT,
        &["particles.star", "_rlnImageName", "stack_01.mrcs"],
    );
}

#[test]
fn float16_out_of_range_pixels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut images = test_images(0, 3, 16);
    images[2][7] = 1.0e6;
    write_mrc_stack(&d.join("s.mrcs"), 16, 16, 1.0, &images);
    let args = [
        "import",
        "--mrcs",
        "s.mrcs",
        "--pixel-size",
        "1.0",
        "--out",
        "out.h5",
        "--dtype",
        "f16",
    ];
    // The error names the input that holds the pixels, not only the dataset being written.
    fails_cleanly(d, &args, &["s.mrcs", "f32"]);
}

#[test]
fn existing_import_output_is_refused_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = good_set(d);
    std::fs::write(d.join("out.h5"), "precious").unwrap();
    fails_cleanly(d, &IMPORT, &["out.h5", "--overwrite"]);
    // A failing import with --overwrite must not destroy the existing output either.
    std::fs::write(&set.star, relion_star(&set.names, 16, &["_rlnDefocusV"])).unwrap();
    let mut args = IMPORT.to_vec();
    args.push("--overwrite");
    fails_cleanly(d, &args, &["_rlnDefocusV"]);
    // With --overwrite and good input it succeeds, and leaves nothing else.
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    let before = ls(d);
    emclass(d, &args).ok();
    assert_eq!(ls(d), before);
    let info = emclass(d, &["info", "out.h5"]).ok().stdout;
    assert!(info.contains("particles 7"), "{info}");
}

#[test]
fn export_refuses_existing_outputs_and_writes_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    good_set(d);
    emclass(d, &["import", "--star", "particles.star", "--out", "d.h5"]).ok();
    std::fs::write(d.join("out.star"), "old star").unwrap();
    std::fs::write(d.join("out.cs"), "old cs").unwrap();
    fails_cleanly(
        d,
        &["export", "--in", "d.h5", "--star", "out.star"],
        &["out.star", "--overwrite"],
    );
    // One existing output among several: none is written.
    fails_cleanly(
        d,
        &[
            "export", "--in", "d.h5", "--star", "new.star", "--mrcs", "new.mrcs", "--cs", "out.cs",
        ],
        &["out.cs", "--overwrite"],
    );
    // No output asked for: a usage error.
    fails_cleanly(
        d,
        &["export", "--in", "d.h5"],
        &["--star", "--cs", "--mrcs"],
    );
    // The same file named twice.
    fails_cleanly(
        d,
        &["export", "--in", "d.h5", "--star", "x.out", "--cs", "x.out"],
        &["x.out"],
    );
    // A folder that does not exist.
    fails_cleanly(
        d,
        &["export", "--in", "d.h5", "--star", "no/such/dir/x.star"],
        &["no/such/dir"],
    );
    // --overwrite replaces them.
    emclass(
        d,
        &[
            "export",
            "--in",
            "d.h5",
            "--star",
            "out.star",
            "--cs",
            "out.cs",
            "--overwrite",
        ],
    )
    .ok();
    assert!(std::fs::read_to_string(d.join("out.star"))
        .unwrap()
        .contains("data_particles"));
    assert_ne!(std::fs::read(d.join("out.cs")).unwrap(), b"old cs");
    let mut want = vec!["Particles", "d.h5", "out.cs", "out.star", "particles.star"];
    want.sort();
    assert_eq!(ls(d), want);
}

#[test]
fn export_of_a_file_that_is_not_an_emclass_dataset_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("random.bin"), garbage(4096, 3)).unwrap();
    fails_cleanly(
        d,
        &["export", "--in", "random.bin", "--star", "o.star"],
        &["random.bin"],
    );
    fails_cleanly(
        d,
        &["export", "--in", "random.bin", "--mrcs", "o.mrcs"],
        &["random.bin"],
    );
    fails_cleanly(
        d,
        &["export", "--in", "missing.h5", "--star", "o.star"],
        &["missing.h5"],
    );
    // A valid HDF5 file that some other program wrote.
    {
        let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        let f = hdf5::File::create(d.join("other.h5")).unwrap();
        f.new_dataset::<f32>()
            .shape([4, 4])
            .create("images")
            .unwrap();
    }
    fails_cleanly(
        d,
        &["export", "--in", "other.h5", "--star", "o.star"],
        &["other.h5", "emclass"],
    );
    fails_cleanly(d, &["info", "other.h5"], &["other.h5"]);
}

#[test]
fn garbage_cs_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.cs"), garbage(2048, 4)).unwrap();
    fails_cleanly(d, &["import", "--cs", "p.cs", "--out", "out.h5"], &["p.cs"]);
    // An NPY header promising more rows than the file holds.
    let header = "{'descr': [('uid', '<u8'), ('blob/idx', '<u4')], 'fortran_order': False, 'shape': (100,), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&[0u8; 12 * 10]);
    std::fs::write(d.join("p.cs"), bytes).unwrap();
    fails_cleanly(d, &["import", "--cs", "p.cs", "--out", "out.h5"], &["p.cs"]);
}

#[test]
fn a_failing_import_under_mpirun_fails_every_rank_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut set = good_set(d);
    set.names[5] = "000002@Particles/missing.mrcs".to_string();
    std::fs::write(&set.star, relion_star(&set.names, 16, &[])).unwrap();
    for n in [2, 3] {
        let before = tree_snapshot(d);
        let r = mpirun(d, n, &IMPORT);
        assert_ne!(r.code, Some(0), "{}", r.stderr);
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(errors.len(), 1, "{}", r.stderr);
        assert!(
            errors[0].contains("missing.mrcs") && errors[0].contains("_rlnImageName"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert_same_tree(&before, &tree_snapshot(d));
    }
}

#[test]
fn mistyped_simulate_key_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("sim.yaml"),
        "output: sim_out\nnum_particle: 10\nbox_px: 32\n",
    )
    .unwrap();
    let line = fails_cleanly(
        d,
        &["simulate", "sim.yaml"],
        &["sim.yaml", "num_particle", "line 2"],
    );
    assert!(!line.contains("not implemented"), "{line}");
    // A --set override with an unknown key, too.
    std::fs::write(
        d.join("sim.yaml"),
        "output: sim_out\nnum_particles: 10\nbox_px: 32\n",
    )
    .unwrap();
    fails_cleanly(
        d,
        &["simulate", "sim.yaml", "--set", "box_pixels=16"],
        &["box_pixels"],
    );
}
