//! Reader hardening (issue 15): malformed STAR, MRC/MRCS and .cs files and job configs.
//!
//! 1. [`malformed_inputs_fail_cleanly`]: a table of hand-made malformed inputs, each run
//!    through the real binary (`emclass import`, `info`, `simulate`, `subset`): exit code 1,
//!    exactly one `error:` line naming the file (and the field, label, header word or line
//!    where one applies), no panic, no output, the folder (inputs included) byte for byte and
//!    timestamp for timestamp as it was.
//! 2. `fuzz_*`: randomized corruption with a fixed seed (truncation at random offsets,
//!    flipped bytes, header words overwritten with extreme values, inserted, deleted and
//!    repeated bytes, extreme tokens in text) of valid files, fed to the reader functions
//!    in-process. Every input must give `Ok` or a one-line `Err` naming the file, never a
//!    panic, within a time bound, and without any single allocation larger than
//!    64 MiB + 64 × the input's size (measured by this binary's global allocator), so a huge
//!    declared size can never allocate before it is checked against the file.
//!    `EMCLASS_FUZZ_ITERATIONS` (inputs per format, default 250) and `EMCLASS_FUZZ_SEED`
//!    (default 15) set the run; `benches/fuzz.sh` runs a long one.

mod common;
use common::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::OsString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use emclass::formats::mrc::MrcStack;
use emclass::formats::{cs, relion, star};

// ---------------------------------------------------------------------------------------
// The largest single allocation request of the current thread.

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f`, returning its result (or the panic message) and the largest allocation it asked
/// for.
fn measured<T>(f: impl FnOnce() -> T) -> (std::result::Result<T, String>, usize) {
    LARGEST.with(|c| c.set(0));
    let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    });
    (r, LARGEST.with(|c| c.get()))
}

// ---------------------------------------------------------------------------------------
// Running the binary with arguments that need not be UTF-8.

fn emclass_os(dir: &Path, args: &[OsString]) -> Run {
    let out = run_command(
        Command::new(bin())
            .args(args)
            .current_dir(dir)
            .env_remove("EMCLASS_MPI"),
    )
    .expect("start emclass");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A non-UTF-8 file name: `prefix`, the bytes 0xFF 0xFE, then `suffix`.
#[cfg(unix)]
fn bad_name(prefix: &str, suffix: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let mut b = prefix.as_bytes().to_vec();
    b.extend_from_slice(&[0xff, 0xfe]);
    b.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(b)
}

// ---------------------------------------------------------------------------------------
// Valid inputs and small byte-level helpers.

/// Deterministic pseudo-random numbers (splitmix64), the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` ≥ 1).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

fn put_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// An NPY file of `version` (1, 2 or 3) holding header dict `dict` and `records`.
fn npy(version: u8, dict: &str, records: &[u8]) -> Vec<u8> {
    let len_bytes = if version == 1 { 2 } else { 4 };
    let mut text = dict.as_bytes().to_vec();
    while !(8 + len_bytes + text.len() + 1).is_multiple_of(64) {
        text.push(b' ');
    }
    text.push(b'\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if len_bytes == 2 {
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(&text);
    out.extend_from_slice(records);
    out
}

/// The fields of [`good_cs`]: records of [`CS_RECORD`] bytes (uid 8, path 24, idx 4,
/// psize 4, df1 4).
const CS_DESCR: &str = "[('uid', '<u8'), ('blob/path', '|S24'), ('blob/idx', '<u4'), \
                        ('blob/psize_A', '<f4'), ('ctf/df1_A', '<f4')]";

const CS_RECORD: usize = 44;

fn cs_dict(descr: &str, shape: &str) -> String {
    format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}")
}

/// Records of [`CS_DESCR`]: `n` particles, images 0..n of `Particles/stack_00.mrcs`.
fn cs_records(n: usize) -> Vec<u8> {
    let mut r = Vec::new();
    for i in 0..n {
        r.extend_from_slice(&(i as u64 + 1).to_le_bytes());
        let mut path = b"Particles/stack_00.mrcs".to_vec();
        path.resize(24, 0);
        r.extend_from_slice(&path);
        r.extend_from_slice(&(i as u32).to_le_bytes());
        r.extend_from_slice(&SET_PSIZE_A.to_le_bytes());
        r.extend_from_slice(&(10000.0f32 + i as f32).to_le_bytes());
    }
    r
}

/// A valid .cs file of 4 particles in `Particles/stack_00.mrcs` (see [`good_set`]).
fn good_cs() -> Vec<u8> {
    npy(1, &cs_dict(CS_DESCR, "(4,)"), &cs_records(4))
}

/// A valid RELION set: stack_00 (4 images) and stack_01 (3 images) of 16 px, and its STAR.
fn good_set(dir: &Path) -> RelionSet {
    write_relion_set(dir, &[4, 3], 16)
}

fn good_star_text() -> String {
    let dir = tempfile::tempdir().unwrap();
    let set = good_set(dir.path());
    std::fs::read_to_string(set.star).unwrap()
}

/// A valid float32 stack of 3 images of 16 px, as `write_mrc_stack` writes it.
fn good_mrcs() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.mrcs");
    write_mrc_stack(&p, 16, 16, 1.0, &test_images(0, 3, 16));
    std::fs::read(p).unwrap()
}

/// A hand-made MRC file of `mode` with `nsymbt` extended bytes and `data` after them.
fn raw_mrc(nx: i32, ny: i32, nz: i32, mode: i32, nsymbt: i32, big: bool, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let put = |b: &mut Vec<u8>, i: usize, v: i32| {
        let bytes = if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        b[4 * i..4 * i + 4].copy_from_slice(&bytes);
    };
    for (i, v) in [
        (0, nx),
        (1, ny),
        (2, nz),
        (3, mode),
        (7, nx),
        (8, ny),
        (9, 1),
        (16, 1),
        (17, 2),
        (18, 3),
        (23, nsymbt),
    ] {
        put(&mut b, i, v);
    }
    let cell = 1.5f32 * nx as f32;
    b[40..44].copy_from_slice(&if big {
        cell.to_be_bytes()
    } else {
        cell.to_le_bytes()
    });
    b[208..212].copy_from_slice(b"MAP ");
    b[212..214].copy_from_slice(if big { &[0x11, 0x11] } else { &[0x44, 0x44] });
    b.extend(std::iter::repeat_n(7u8, nsymbt.max(0) as usize));
    b.extend_from_slice(data);
    b
}

/// Replaces the first occurrence of `from` in `text` (which must hold it).
fn subst(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the text");
    text.replacen(from, to, 1)
}

/// Replaces the first occurrence of `from` in `bytes` by `to`.
fn subst_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(from)));
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&bytes[at + from.len()..]);
    out
}

/// A valid dataset (simulated, 40 particles of 32 px with ground truth), made once.
fn simulated_h5() -> &'static [u8] {
    static H5: OnceLock<Vec<u8>> = OnceLock::new();
    H5.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        simulate_with(dir.path(), "views2d", "sim", 40, &["box_px=32"]);
        std::fs::read(dir.path().join("sim/particles.h5")).unwrap()
    })
}

// ---------------------------------------------------------------------------------------
// 1. Hand-made malformed inputs through the binary.

/// What a case starts from.
#[derive(Clone, Copy)]
enum Base {
    /// Nothing but the case's files.
    Empty,
    /// [`good_set`]: `particles.star` and `Particles/stack_0{0,1}.mrcs`.
    Relion,
}

struct Case {
    name: String,
    base: Base,
    /// Files written over the base (relative path, bytes).
    files: Vec<(OsString, Vec<u8>)>,
    args: Vec<OsString>,
    /// Strings the error line must hold (the file, and the field where one applies).
    needles: Vec<String>,
}

fn case(
    name: &str,
    base: Base,
    files: Vec<(&str, Vec<u8>)>,
    args: &[&str],
    needles: &[&str],
) -> Case {
    Case {
        name: name.to_string(),
        base,
        files: files
            .into_iter()
            .map(|(p, b)| (OsString::from(p), b))
            .collect(),
        args: os(args),
        needles: needles.iter().map(|s| s.to_string()).collect(),
    }
}

const IMPORT_STAR: &[&str] = &["import", "--star", "particles.star", "--out", "out.h5"];
const IMPORT_MRCS: &[&str] = &[
    "import",
    "--mrcs",
    "s.mrcs",
    "--pixel-size",
    "1.0",
    "--out",
    "out.h5",
];
const IMPORT_CS: &[&str] = &["import", "--cs", "p.cs", "--out", "out.h5"];

fn star_cases() -> Vec<Case> {
    let text = good_star_text();
    let star = |name: &str, body: Vec<u8>, needles: &[&str]| {
        let mut n = vec!["particles.star"];
        n.extend_from_slice(needles);
        case(
            name,
            Base::Relion,
            vec![("particles.star", body)],
            IMPORT_STAR,
            &n,
        )
    };
    let row3 = text.find("000003@").unwrap();
    let row3_line = text[..row3].lines().count() + 1;
    let line3 = format!("line {row3_line}");
    let mut v = vec![
        star(
            "star: truncated inside a particle row",
            text.as_bytes()[..row3 + 40].to_vec(),
            &[&line3, "fields"],
        ),
        star(
            "star: truncated inside the optics labels",
            text.as_bytes()[..text.find("_rlnVoltage").unwrap() + 6].to_vec(),
            &["_rlnImageName"],
        ),
        star("star: empty file", Vec::new(), &["_rlnImageName"]),
        star(
            "star: binary garbage",
            {
                let mut r = Rng(2);
                (0..3000).map(|_| r.next() as u8).collect()
            },
            &[],
        ),
        star(
            "star: non-UTF-8 bytes in an _rlnImageName path",
            subst_bytes(
                text.as_bytes(),
                b"000002@Particles/stack_00",
                b"000002@Particles/\xff\xfeack_00",
            ),
            &["_rlnImageName", "line", "UTF-8"],
        ),
        star(
            "star: non-UTF-8 bytes in a _rlnMicrographName cell",
            subst_bytes(text.as_bytes(), b"mic_001", b"mic\xc3\x28001"),
            &["_rlnMicrographName", "UTF-8"],
        ),
        star(
            "star: flipped byte in a defocus",
            subst(&text, "\t10200\t", "\t10\x0100\t").into_bytes(),
            &["_rlnDefocusU", "not a number"],
        ),
        star(
            "star: nan defocus",
            subst(&text, "\t9900\t", "\tnan\t").into_bytes(),
            &["_rlnDefocusV", "finite"],
        ),
        star(
            "star: coordinate beyond f64 (1e400)",
            subst(&text, "\t110.5\t", "\t1e400\t").into_bytes(),
            &["_rlnCoordinateX", "finite"],
        ),
        star(
            "star: image number beyond u32",
            subst(
                &text,
                "000002@Particles/stack_00",
                "99999999999@Particles/stack_00",
            )
            .into_bytes(),
            &["_rlnImageName", "too large"],
        ),
        star(
            "star: negative image number",
            subst(&text, "000002@Particles/stack_00", "-3@Particles/stack_00").into_bytes(),
            &["_rlnImageName", "positive integer"],
        ),
        star(
            "star: image name without a stack path",
            subst(&text, "000002@Particles/stack_00.mrcs", "2@").into_bytes(),
            &["_rlnImageName", "no stack path"],
        ),
        star(
            "star: NUL byte in a stack path",
            subst(
                &text,
                "000002@Particles/stack_00",
                "000002@Particles/st\0ck_00",
            )
            .into_bytes(),
            &["_rlnImageName", "line 38", "control character"],
        ),
        star(
            "star: unterminated quote",
            subst(&text, "000002@", "'000002@").into_bytes(),
            &["line", "unterminated"],
        ),
        star(
            "star: optics group not in data_optics",
            subst(&text, "\t1\t-119", "\t7\t-119").into_bytes(),
            &["_rlnOpticsGroup", "not defined"],
        ),
        star(
            "star: class number 0",
            {
                let line_end = text[row3..].find('\n').unwrap() + row3;
                let mut t = text.clone();
                let last_tab = t[..line_end].rfind('\t').unwrap();
                t.replace_range(last_tab + 1..line_end, "0");
                t.into_bytes()
            },
            &["_rlnClassNumber"],
        ),
        star(
            "star: negative image size",
            subst(&text, "1.25\t16\t2", "1.25\t-16\t2").into_bytes(),
            &["_rlnImageSize"],
        ),
        star(
            "star: zero pixel size",
            subst(&text, "\t1.25\t16\t2", "\t0\t16\t2").into_bytes(),
            &["_rlnImagePixelSize", "positive"],
        ),
        star(
            "star: control character in a block name, and a short row",
            subst(
                &subst(&text, "data_particles", "data_part\u{2}icles"),
                "\t9900\t",
                "\t",
            )
            .into_bytes(),
            &["data_part\\u{2}icles", "fields"],
        ),
        star(
            "star: label twice in a loop",
            subst(&text, "_rlnCoordinateY #4", "_rlnCoordinateX #4").into_bytes(),
            &["line", "appears twice"],
        ),
    ];
    // The referenced stacks.
    let mut empty_huge = raw_mrc(i32::MAX, i32::MAX, 0, 2, 0, false, &[]);
    put_f32(&mut empty_huge, 40, 1.0);
    v.push(case(
        "star: referenced stack declares 2^31-1 × 2^31-1 px and no images",
        Base::Relion,
        vec![("Particles/stack_00.mrcs", empty_huge)],
        IMPORT_STAR,
        &[
            "particles.star",
            "_rlnImageName",
            "stack_00.mrcs",
            "0 images",
        ],
    ));
    let mut stack = good_stack_bytes(4);
    put_i32(&mut stack, 12, 3);
    v.push(case(
        "star: referenced stack in mode 3 (complex int16)",
        Base::Relion,
        vec![("Particles/stack_00.mrcs", stack)],
        IMPORT_STAR,
        &["particles.star", "_rlnImageName", "stack_00.mrcs", "mode 3"],
    ));
    let mut stack = good_stack_bytes(3);
    put_f32(&mut stack, 1024 + 4 * (256 + 17), f32::INFINITY);
    v.push(case(
        "star: +inf pixel in the second stack",
        Base::Relion,
        vec![("Particles/stack_01.mrcs", stack)],
        IMPORT_STAR,
        &["stack_01.mrcs", "pixels", "image 2"],
    ));
    let stack = good_stack_bytes(3);
    v.push(case(
        "star: referenced stack truncated by 100 bytes",
        Base::Relion,
        vec![(
            "Particles/stack_01.mrcs",
            stack[..stack.len() - 100].to_vec(),
        )],
        IMPORT_STAR,
        &[
            "particles.star",
            "_rlnImageName",
            "stack_01.mrcs",
            "truncated",
        ],
    ));
    // A STAR file whose own name is not UTF-8 (and that holds a bad row).
    #[cfg(unix)]
    {
        let name = bad_name("p", ".star");
        v.push(Case {
            name: "star: non-UTF-8 file name".into(),
            base: Base::Relion,
            files: vec![(
                name.clone(),
                subst(&text, "\t9900\t", "\tinf\t").into_bytes(),
            )],
            args: vec![
                "import".into(),
                "--star".into(),
                name,
                "--out".into(),
                "out.h5".into(),
            ],
            needles: vec!["p\u{fffd}\u{fffd}.star".into(), "_rlnDefocusV".into()],
        });
    }
    v
}

/// A float32 stack of `n` 16-px images with pixel size [`SET_PSIZE_A`].
fn good_stack_bytes(n: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.mrcs");
    write_mrc_stack(&p, 16, 16, SET_PSIZE_A, &test_images(0, n, 16));
    std::fs::read(p).unwrap()
}

fn mrc_cases() -> Vec<Case> {
    let good = good_mrcs();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let mrc = |name: &str, body: Vec<u8>, needles: &[&str]| {
        let mut n = vec!["s.mrcs"];
        n.extend_from_slice(needles);
        case(name, Base::Empty, vec![("s.mrcs", body)], IMPORT_MRCS, &n)
    };
    let max = i32::MAX;
    let mut v = vec![
        mrc(
            "mrc: nx = ny = nz = 2^31-1",
            with(&|b| {
                put_i32(b, 0, max);
                put_i32(b, 4, max);
                put_i32(b, 8, max);
            }),
            &["overflow"],
        ),
        mrc(
            "mrc: nz = 2^31-1 (header/extent mismatch)",
            with(&|b| put_i32(b, 8, max)),
            &["truncated", "expected", "found 4096 bytes"],
        ),
        mrc("mrc: negative nz", with(&|b| put_i32(b, 8, -1)), &["nz=-1"]),
        mrc("mrc: nx = 0", with(&|b| put_i32(b, 0, 0)), &["nx=0"]),
        mrc(
            "mrc: extended header of 2^31-1 bytes",
            with(&|b| put_i32(b, 92, max)),
            &["truncated", "2147483647 extended"],
        ),
        mrc(
            "mrc: negative extended header size",
            with(&|b| put_i32(b, 92, -8)),
            &["nsymbt = -8"],
        ),
        mrc(
            "mrc: mode 4 (complex float32)",
            with(&|b| put_i32(b, 12, 4)),
            &["mode 4", "not supported"],
        ),
        mrc(
            "mrc: mode 101 (packed 4-bit)",
            with(&|b| put_i32(b, 12, 101)),
            &["mode 101"],
        ),
        mrc("mrc: mode -1", with(&|b| put_i32(b, 12, -1)), &["mode -1"]),
        mrc(
            "mrc: mode 1 on float32 data (file longer than its header says)",
            with(&|b| put_i32(b, 12, 1)),
            &["longer than its header says"],
        ),
        mrc(
            "mrc: truncated inside the header (1023 bytes)",
            good[..1023].to_vec(),
            &["1023 bytes", "1024-byte"],
        ),
        mrc(
            "mrc: truncated inside the data",
            good[..1024 + 1000].to_vec(),
            &["truncated", "found 2024 bytes"],
        ),
        mrc(
            "mrc: one byte short",
            good[..good.len() - 1].to_vec(),
            &["truncated"],
        ),
        mrc(
            "mrc: 7 bytes too long",
            with(&|b| b.extend_from_slice(&[0; 7])),
            &["longer than its header says"],
        ),
        mrc("mrc: empty file", Vec::new(), &["0 bytes"]),
        mrc(
            "mrc: no MAP word",
            with(&|b| b[208..212].copy_from_slice(b"PAM ")),
            &["MAP"],
        ),
        mrc(
            "mrc: axis order 3/2/1",
            with(&|b| {
                put_i32(b, 64, 3);
                put_i32(b, 72, 1);
            }),
            &["axis order"],
        ),
        mrc(
            "mrc: big-endian stamp on a little-endian file",
            with(&|b| b[212..214].copy_from_slice(&[0x11, 0x11])),
            &[],
        ),
        mrc(
            "mrc: NaN pixel",
            with(&|b| put_f32(b, 1024 + 4 * (2 * 256 + 100), f32::NAN)),
            &["pixels", "image 3", "NaN"],
        ),
        mrc(
            "mrc: -inf pixel in the first image",
            with(&|b| put_f32(b, 1024, f32::NEG_INFINITY)),
            &["pixels", "image 1"],
        ),
        mrc(
            "mrc: float16 stack with an infinite pixel",
            raw_mrc(2, 2, 1, 12, 0, false, &[0, 0x3c, 0, 0x7c, 0, 0, 0, 0]),
            &["pixels"],
        ),
        mrc(
            "mrc: no images, 2^31-1 × 2^31-1 px declared",
            raw_mrc(max, max, 0, 2, 0, false, &[]),
            &["no particles"],
        ),
        mrc(
            "mrc: int16 stack with a 16-byte extended header cut short",
            raw_mrc(4, 4, 2, 1, 16, true, &[0u8; 60]),
            &["truncated", "16 extended"],
        ),
    ];
    #[cfg(unix)]
    {
        let name = bad_name("s", ".mrcs");
        v.push(Case {
            name: "mrc: non-UTF-8 file name".into(),
            base: Base::Empty,
            files: vec![(name.clone(), good[..2000].to_vec())],
            args: vec![
                "import".into(),
                "--mrcs".into(),
                name,
                "--pixel-size".into(),
                "1".into(),
                "--out".into(),
                "out.h5".into(),
            ],
            needles: vec!["s\u{fffd}\u{fffd}.mrcs".into(), "truncated".into()],
        });
    }
    v
}

fn cs_cases() -> Vec<Case> {
    let good = good_cs();
    let cs = |name: &str, body: Vec<u8>, needles: &[&str]| {
        let mut n = vec!["p.cs"];
        n.extend_from_slice(needles);
        case(name, Base::Relion, vec![("p.cs", body)], IMPORT_CS, &n)
    };
    let dict = |descr: &str, shape: &str| cs_dict(descr, shape);
    let recs = cs_records(4);
    let patched = |at: usize, bytes: &[u8]| {
        let mut r = recs.clone();
        r[at..at + bytes.len()].copy_from_slice(bytes);
        npy(1, &dict(CS_DESCR, "(4,)"), &r)
    };
    let mut v2 = b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec();
    v2.extend_from_slice(&good[10..]);
    vec![
        cs(
            "cs: header declares 10^12 records",
            npy(1, &dict(CS_DESCR, "(1000000000000,)"), &recs),
            &["truncated", "1000000000000 records"],
        ),
        cs(
            "cs: header length 2^32-1 (NPY 2.0)",
            v2,
            &["truncated inside the NPY header"],
        ),
        cs(
            "cs: truncated inside the header",
            good[..100].to_vec(),
            &["truncated inside the NPY header"],
        ),
        cs(
            "cs: truncated inside the records",
            good[..good.len() - 5].to_vec(),
            &["truncated", "4 records"],
        ),
        cs(
            "cs: 2-D shape whose product overflows u64",
            npy(1, &dict(CS_DESCR, "(4294967296, 4294967297)"), &recs),
            &["1-D"],
        ),
        cs(
            "cs: negative shape",
            npy(1, &dict(CS_DESCR, "(-1,)"), &recs),
            &["negative"],
        ),
        cs(
            "cs: brackets nested 20000 deep",
            npy(
                2,
                &dict(
                    &format!("{}{}", "[".repeat(20000), "]".repeat(20000)),
                    "(4,)",
                ),
                &recs,
            ),
            &["nested"],
        ),
        cs(
            "cs: |S0 field with a 10^15-element subarray",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("]", ", ('x/nothing', '|S0', (1000000000000000,))]"),
                    "(4,)",
                ),
                &recs,
            ),
            &["x/nothing", "zero bytes"],
        ),
        cs(
            "cs: <f4 field with a 2^40-element subarray",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("]", ", ('x/big', '<f4', (1099511627776,))]"),
                    "(4,)",
                ),
                &recs,
            ),
            &["truncated"],
        ),
        cs(
            "cs: <U string of 2^62 code points",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("]", ", ('x/u', '<U4611686018427387904')]"),
                    "(4,)",
                ),
                &recs,
            ),
            &["NPY header"],
        ),
        cs(
            "cs: non-UTF-8 blob/path",
            patched(CS_RECORD + 8 + 3, &[0xff, 0xfe]),
            &["blob/path", "row 1", "UTF-8"],
        ),
        cs(
            "cs: non-UTF-8 field name",
            subst_bytes(&good, b"ctf/df1_A", b"ctf/\xff\xfe1_A"),
            &["NPY header"],
        ),
        cs(
            "cs: NaN ctf/df1_A",
            patched(2 * CS_RECORD + 40, &f32::NAN.to_le_bytes()),
            &["ctf/df1_A", "row 2", "finite"],
        ),
        cs(
            "cs: NPY version 9",
            {
                let mut b = good.clone();
                b[6] = 9;
                b
            },
            &["version 9"],
        ),
        cs(
            "cs: CryoSPARC compressed stream format",
            b"\x95CSDAT\x01\x00\x00\x00".to_vec(),
            &["compressed stream"],
        ),
        cs(
            "cs: not an NPY file",
            b"uid,blob/path\n1,a.mrcs\n".to_vec(),
            &["NPY magic"],
        ),
        cs(
            "cs: uid as <f8",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('uid', '<u8')", "('uid', '<f8')"),
                    "(4,)",
                ),
                &recs,
            ),
            &["uid", "not an integer"],
        ),
        cs(
            "cs: negative uid (<i8)",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('uid', '<u8')", "('uid', '<i8')"),
                    "(4,)",
                ),
                &{
                    let mut r = recs.clone();
                    r[CS_RECORD..CS_RECORD + 8].copy_from_slice(&(-5i64).to_le_bytes());
                    r
                },
            ),
            &["uid", "row 1", "negative"],
        ),
        cs(
            "cs: no uid field",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('uid', '<u8')", "('x/id', '<u8')"),
                    "(4,)",
                ),
                &recs,
            ),
            &["uid", "missing"],
        ),
        cs(
            "cs: blob/path with 2 values per row",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('blob/path', '|S24')", "('blob/path', '|S12', (2,))"),
                    "(4,)",
                ),
                &recs,
            ),
            &["blob/path", "2 values per row"],
        ),
        cs(
            "cs: blob/idx as a string",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('blob/idx', '<u4')", "('blob/idx', '|S4')"),
                    "(4,)",
                ),
                &recs,
            ),
            &["blob/idx", "integer"],
        ),
        cs(
            "cs: big-endian field",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('ctf/df1_A', '<f4')", "('ctf/df1_A', '>f4')"),
                    "(4,)",
                ),
                &recs,
            ),
            &["ctf/df1_A", "big-endian"],
        ),
        cs(
            "cs: field twice",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('ctf/df1_A', '<f4')", "('blob/idx', '<f4')"),
                    "(4,)",
                ),
                &recs,
            ),
            &["blob/idx", "twice"],
        ),
        cs(
            "cs: NUL inside a blob/path string",
            patched(2 * CS_RECORD + 8 + 4, b"\0"),
            &["blob/path", "row 2", "control character"],
        ),
        cs(
            "cs: control characters in a field name holding non-UTF-8",
            npy(
                1,
                &dict(
                    &CS_DESCR.replace("('blob/path', '|S24')", "('blob/pa\\x1b[2Jth', '|S24')"),
                    "(4,)",
                ),
                &{
                    let mut r = recs.clone();
                    r[8] = 0xff;
                    r
                },
            ),
            &["blob/pa\\u{1b}[2Jth", "UTF-8"],
        ),
        cs(
            "cs: image index past the end of its stack",
            patched(3 * CS_RECORD + 32, &9u32.to_le_bytes()),
            &["blob/path", "image 10"],
        ),
    ]
}

fn yaml_cases() -> Vec<Case> {
    let sim = |name: &str, body: &[u8], needles: &[&str]| {
        let mut n = vec!["c.yaml"];
        n.extend_from_slice(needles);
        case(
            name,
            Base::Empty,
            vec![("c.yaml", body.to_vec())],
            &["simulate", "c.yaml"],
            &n,
        )
    };
    let subset = |name: &str, body: &str, needles: &[&str]| {
        let mut n = vec!["s.yaml"];
        n.extend_from_slice(needles);
        case(
            name,
            Base::Empty,
            vec![("s.yaml", body.as_bytes().to_vec())],
            &["subset", "s.yaml"],
            &n,
        )
    };
    vec![
        sim(
            "yaml: binary garbage (not UTF-8)",
            &{
                let mut r = Rng(3);
                (0..500).map(|_| r.next() as u8).collect::<Vec<u8>>()
            },
            &["UTF-8"],
        ),
        sim(
            "yaml: non-UTF-8 byte in a value",
            b"output: sim\xff\n",
            &["UTF-8", "line 1 column 12"],
        ),
        sim(
            "yaml: text for a count",
            b"output: sim\nnum_particles: many\n",
            &["num_particles", "line 2"],
        ),
        sim(
            "yaml: negative count",
            b"output: sim\nnum_particles: -5\n",
            &["c.yaml: num_particles: invalid type"],
        ),
        sim(
            "yaml: count beyond u64",
            b"output: sim\nnum_particles: 99999999999999999999999\n",
            &["c.yaml: num_particles:"],
        ),
        sim(
            "yaml: fraction for an integer",
            b"output: sim\nbox_px: 32.5\n",
            &["c.yaml: box_px:"],
        ),
        sim(
            "yaml: unknown key",
            b"output: sim\nnum_particle: 10\n",
            &["num_particle", "unknown field", "line 2"],
        ),
        sim(
            "yaml: list of lists for a list of numbers",
            b"output: sim\nview_weights: [[1, 2]]\n",
            &["view_weights"],
        ),
        sim(
            "yaml: brackets nested 100000 deep",
            format!("output: sim\nview_weights: {}{}\n", "[".repeat(100_000), "]".repeat(100_000))
                .as_bytes(),
            &["nested", "line 2"],
        ),
        sim(
            "yaml: a list instead of a map",
            b"- output\n- sim\n",
            &["invalid type"],
        ),
        sim(
            "yaml: tab indentation",
            b"output: sim\n\tnum_particles: 5\n",
            &["tab"],
        ),
        sim(
            "yaml: unknown key holding a line break and an escape sequence",
            b"output: sim\n\"num\\nparticles\\e[2J\": 3\n",
            &["c.yaml: num\\nparticles\\u{1b}[2J: unknown field"],
        ),
        sim(
            "yaml: key twice",
            b"output: sim\nnum_particles: 10\nnum_particles: 20\n",
            &["num_particles", "duplicate"],
        ),
        sim(
            "yaml: recursive alias",
            b"output: sim\nview_weights: &a [1, *a]\n",
            &["view_weights"],
        ),
        sim(
            "yaml: unknown mode",
            b"output: sim\nmode: views3d\n",
            &["mode", "views3d"],
        ),
        sim("yaml: nan snr", b"output: sim\nsnr: .nan\n", &["snr"]),
        sim(
            "yaml: float beyond f64",
            b"output: sim\nsnr: 1e999\n",
            &["snr"],
        ),
        sim("yaml: empty file", b"", &["output", "missing"]),
        sim(
            "yaml: unclosed flow list",
            b"output: sim\nview_weights: [1, 2\n",
            &["yaml"],
        ),
        case(
            "yaml: --set with an unclosed list",
            Base::Empty,
            vec![("c.yaml", b"output: sim\n".to_vec())],
            &["simulate", "c.yaml", "--set", "view_weights=[1,"],
            &["c.yaml", "view_weights"],
        ),
        subset(
            "yaml: subset thresholds as text",
            "input: none.h5\noutput: sub\nthresholds: high\n",
            &["thresholds"],
        ),
        subset(
            "yaml: subset unknown key",
            "input: none.h5\noutput: sub\ntreshold: 0.5\n",
            &["treshold", "unknown field"],
        ),
        subset(
            "yaml: subset negative component count",
            "input: none.h5\noutput: sub\nmethod: gmm\nmode: statistic\nfield: ctf/df1_A\ngmm_components: -2\n",
            &["gmm_components"],
        ),
    ]
}

fn info_cases() -> Vec<Case> {
    let h5 = simulated_h5().to_vec();
    let info = |name: &str, body: Vec<u8>, needles: &[&str]| {
        let mut n = vec!["d.h5"];
        n.extend_from_slice(needles);
        case(
            name,
            Base::Empty,
            vec![("d.h5", body)],
            &["info", "d.h5"],
            &n,
        )
    };
    vec![
        info(
            "info: dataset truncated to half",
            h5[..h5.len() / 2].to_vec(),
            &[],
        ),
        info(
            "info: dataset truncated inside its superblock",
            h5[..40].to_vec(),
            &[],
        ),
        info("info: a .cs file given as a dataset", good_cs(), &[]),
        info("info: an MRC stack given as a dataset", good_mrcs(), &[]),
        info("info: empty file", Vec::new(), &[]),
        case(
            "subset: input dataset truncated",
            Base::Empty,
            vec![
                ("d.h5", h5[..h5.len() / 3].to_vec()),
                (
                    "s.yaml",
                    b"input: d.h5\noutput: sub\nmode: statistic\nfield: ctf/df1_A\nthresholds: [20000]\n"
                        .to_vec(),
                ),
            ],
            &["subset", "s.yaml"],
            &["d.h5"],
        ),
    ]
}

/// Runs one case in a fresh folder; `Err` says what went wrong.
fn run_case(c: &Case) -> std::result::Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if let Base::Relion = c.base {
        good_set(d);
    }
    for (rel, bytes) in &c.files {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let before = tree_snapshot(d);
    let t0 = Instant::now();
    let run = emclass_os(d, &c.args);
    let secs = t0.elapsed().as_secs_f64();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let needles: Vec<&str> = c.needles.iter().map(|s| s.as_str()).collect();
        let line = run.fails_with(&needles);
        assert!(one_clean_line(&line), "control character in {line:?}");
        assert_same_tree(&before, &tree_snapshot(d));
        line
    }));
    match result {
        Ok(line) if secs < 20.0 => Ok(line),
        Ok(line) => Err(format!("took {secs:.1} s: {line}")),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "assertion failed".into())),
    }
}

#[test]
fn valid_bases_import_so_the_failures_below_are_the_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    good_set(d);
    emclass(d, IMPORT_STAR).ok();
    std::fs::write(d.join("p.cs"), good_cs()).unwrap();
    emclass(d, &["import", "--cs", "p.cs", "--out", "cs.h5"]).ok();
    std::fs::write(d.join("s.mrcs"), good_mrcs()).unwrap();
    emclass(
        d,
        &[
            "import",
            "--mrcs",
            "s.mrcs",
            "--pixel-size",
            "1.0",
            "--out",
            "m.h5",
        ],
    )
    .ok();
    std::fs::write(
        d.join("c.yaml"),
        "output: sim\nnum_particles: 8\nbox_px: 32\n",
    )
    .unwrap();
    emclass(d, &["-q", "simulate", "c.yaml"]).ok();
    std::fs::write(d.join("d.h5"), simulated_h5()).unwrap();
    emclass(d, &["info", "d.h5"]).ok();
}

#[test]
fn malformed_inputs_fail_cleanly() {
    let mut cases = star_cases();
    cases.extend(mrc_cases());
    cases.extend(cs_cases());
    cases.extend(yaml_cases());
    cases.extend(info_cases());
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names must be distinct");
    assert!(cases.len() >= 30, "{} cases", cases.len());
    // Several at a time: each is a separate process in its own folder.
    let threads = 8;
    let results: Vec<(usize, std::result::Result<String, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let cases = &cases;
                s.spawn(move || {
                    (t..cases.len())
                        .step_by(threads)
                        .map(|i| (i, run_case(&cases[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    let mut failed = Vec::new();
    for (i, r) in &results {
        match r {
            Ok(line) => eprintln!("ok   {:<70} {line}", cases[*i].name),
            Err(e) => {
                eprintln!("FAIL {:<70} {e}", cases[*i].name);
                failed.push(cases[*i].name.clone());
            }
        }
    }
    eprintln!("{} malformed inputs, {} failed", cases.len(), failed.len());
    assert!(
        failed.is_empty(),
        "cases that did not fail cleanly: {failed:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Randomized corruption, in-process.

fn iterations() -> usize {
    std::env::var("EMCLASS_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250)
}

fn seed() -> u64 {
    std::env::var("EMCLASS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// Valid files the mutations start from: STAR and .cs as `emclass export` writes them (from
/// an imported RELION set), the test helpers' STAR and stacks, and hand-made stacks of every
/// mode and byte order.
struct Bases {
    star: Vec<Vec<u8>>,
    mrc: Vec<Vec<u8>>,
    cs: Vec<Vec<u8>>,
    yaml: Vec<Vec<u8>>,
}

fn bases() -> &'static Bases {
    static B: OnceLock<Bases> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        good_set(d);
        emclass(
            d,
            &["-q", "import", "--star", "particles.star", "--out", "d.h5"],
        )
        .ok();
        emclass(
            d,
            &[
                "-q", "export", "--in", "d.h5", "--star", "e.star", "--cs", "e.cs", "--mrcs",
                "e.mrcs",
            ],
        )
        .ok();
        let read = |p: &str| std::fs::read(d.join(p)).unwrap();
        let vals: Vec<u8> = (0..4 * 4 * 2 * 2).map(|i| (i * 37 % 251) as u8).collect();
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let yaml = [
            "simulate_views2d.yaml",
            "subset.yaml",
            "classify2d.yaml",
            "select2d.yaml",
        ]
        .iter()
        .map(|n| std::fs::read(configs.join(n)).unwrap())
        .collect();
        Bases {
            star: vec![read("particles.star"), read("e.star")],
            mrc: vec![
                good_mrcs(),
                read("e.mrcs"),
                raw_mrc(4, 4, 2, 1, 16, false, &vals[..64]),
                raw_mrc(4, 4, 2, 1, 0, true, &vals[..64]),
                raw_mrc(4, 4, 4, 0, 0, false, &vals[..64]),
                raw_mrc(4, 4, 2, 6, 0, false, &vals[..64]),
                raw_mrc(4, 4, 2, 12, 8, false, &vals[..64]),
            ],
            cs: vec![read("e.cs"), good_cs()],
            yaml,
        }
    })
}

/// Header words worth writing over an MRC header word.
const EXTREME_WORDS: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    12,
    101,
    1024,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0xffff_fff8,
    0x7fc0_0000, // NaN
    0x7f80_0000, // +inf
    0xff80_0000, // -inf
    0x0000_0001, // subnormal
];

/// Tokens worth writing over a token of a STAR or YAML text.
const EXTREME_TOKENS: &[&[u8]] = &[
    b"nan",
    b"inf",
    b"-inf",
    b"1e400",
    b"-1",
    b"0",
    b"4294967296",
    b"99999999999999999999",
    b"\0",
    b"'",
    b"\"",
    b"@",
    b"1@",
    b"0@x.mrcs",
    b"-3@y.mrcs",
    b"999999@Particles/stack_00.mrcs",
    b"data_",
    b"loop_",
    b"_rlnImageName",
    b"_",
    b"#",
    b"\xff\xfe",
    b"\xc3\x28",
    b"[",
    b"{",
    b"&a",
    b"*a",
    b"!!binary",
    b"- x",
    b":",
    b"\t",
];

/// Type strings and shapes worth writing into an NPY header.
const EXTREME_NPY: &[&str] = &[
    "1000000000000",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "0",
    "4294967296, 4294967296",
    "",
    "1, 2, 3",
    "'<f4'",
    "'|S0'",
    "'<U4611686018427387904'",
    "'>f4'",
    "'|O'",
    "'<c8'",
    "'<f16'",
    "'|V3'",
    "'<M8[s]'",
    "'|S99999999999999999999'",
    "(1099511627776,)",
    "(0,)",
    "[('a', '<f4')]",
    "True",
    "'\\xff'",
];

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next() as u8).collect()
}

/// A random offset, with a bias towards the first `head` bytes (the header).
fn offset(rng: &mut Rng, len: usize, head: usize) -> usize {
    if rng.chance(0.5) {
        rng.below(head.min(len).max(1))
    } else {
        rng.below(len.max(1))
    }
}

/// One random generic byte-level mutation.
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>, head: usize) -> &'static str {
    let len = b.len();
    match rng.below(6) {
        0 => {
            b.truncate(offset(rng, len, head));
            "truncate"
        }
        1 => {
            for _ in 0..1 + rng.below(8) {
                if !b.is_empty() {
                    let i = offset(rng, b.len(), head);
                    b[i] ^= 1 << rng.below(8);
                }
            }
            "flip bits"
        }
        2 => {
            for _ in 0..1 + rng.below(4) {
                if !b.is_empty() {
                    let i = offset(rng, b.len(), head);
                    b[i] = rng.next() as u8;
                }
            }
            "overwrite bytes"
        }
        3 => {
            let at = offset(rng, len, head);
            let n = 1 + rng.below(16);
            let ins = random_bytes(rng, n);
            b.splice(at..at, ins);
            "insert bytes"
        }
        4 => {
            let at = offset(rng, len, head);
            let n = rng.below(64).min(len - at.min(len));
            b.drain(at..at + n);
            "delete bytes"
        }
        _ => {
            let at = offset(rng, len, head);
            let n = rng.below(256).min(len - at.min(len));
            let copy = b[at..at + n].to_vec();
            b.splice(at..at, copy);
            "repeat bytes"
        }
    }
}

/// Overwrites a 4-byte word of the first `head` bytes with an extreme value (either order).
fn mutate_word(rng: &mut Rng, b: &mut [u8], head: usize) {
    let words = head.min(b.len()) / 4;
    if words == 0 {
        return;
    }
    let i = 4 * rng.below(words);
    let w = *rng.pick(EXTREME_WORDS);
    let bytes = if rng.chance(0.8) {
        w.to_le_bytes()
    } else {
        w.to_be_bytes()
    };
    b[i..i + 4].copy_from_slice(&bytes);
}

/// Replaces a random whitespace-separated token of a text with an extreme token.
fn mutate_token(rng: &mut Rng, b: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..b.len())
        .filter(|&i| !b[i].is_ascii_whitespace() && (i == 0 || b[i - 1].is_ascii_whitespace()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let s = *rng.pick(&starts);
    let mut e = s;
    while e < b.len() && !b[e].is_ascii_whitespace() {
        e += 1;
    }
    let tok = rng.pick(EXTREME_TOKENS).to_vec();
    if rng.chance(0.7) {
        b.splice(s..e, tok);
    } else {
        // Inside the token.
        let at = s + rng.below(e - s + 1);
        b.splice(at..at, tok);
    }
}

/// Rewrites part of an NPY header's dict (a shape, a type string, a subarray), keeping the
/// header well-formed (padding and length recomputed) or not.
fn mutate_npy_header(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return;
    }
    let (version, hl_bytes) = (b[6], if b[6] == 1 { 2 } else { 4 });
    if b.len() < 8 + hl_bytes {
        return;
    }
    let hl = if hl_bytes == 2 {
        u16::from_le_bytes([b[8], b[9]]) as usize
    } else {
        u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize
    };
    let start = 8 + hl_bytes;
    let end = (start + hl).min(b.len());
    let mut text = b[start..end].to_vec();
    let records = b[end..].to_vec();
    // Where to write: inside the shape tuple, over a quoted type string, or anywhere.
    let shape_at = text
        .windows(10)
        .position(|w| w == b"'shape': (")
        .map(|p| p + 10);
    let quotes: Vec<usize> = (0..text.len()).filter(|&i| text[i] == b'\'').collect();
    let new = rng.pick(EXTREME_NPY).as_bytes().to_vec();
    match (rng.below(3), shape_at) {
        (0, Some(at)) => {
            let close = text[at..]
                .iter()
                .position(|&c| c == b')')
                .map_or(at, |p| at + p);
            text.splice(at..close, new);
        }
        (1, _) if quotes.len() >= 2 => {
            let k = rng.below(quotes.len() - 1);
            text.splice(quotes[k]..=quotes[k + 1], new);
        }
        _ => {
            let at = rng.below(text.len() + 1);
            text.splice(at..at, new);
        }
    }
    while text.last() == Some(&b'\n') || text.last() == Some(&b' ') {
        text.pop();
    }
    let dict = String::from_utf8_lossy(&text).into_owned();
    *b = if rng.chance(0.8) {
        npy(version.clamp(1, 3), &dict, &records)
    } else {
        // Length field left as it was: the text no longer fits it.
        let mut out = b[..start].to_vec();
        out.extend_from_slice(dict.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&records);
        out
    };
}

/// True for a message that prints as one line: no line break and no other control
/// character (a NUL, a carriage return or an escape sequence copied from a corrupt file).
fn one_clean_line(msg: &str) -> bool {
    !msg.chars().any(|c| c.is_control() && c != '\t')
}

/// Tallies of a fuzz run.
#[derive(Default)]
struct Tally {
    inputs: usize,
    ok: usize,
    err: usize,
    panics: Vec<String>,
    bad_errors: Vec<String>,
    largest_alloc: usize,
    slowest: Duration,
}

/// Mutates inputs of `kind` `iterations()` times with `mutate` and runs `read` on each
/// (written to `file`): counts outcomes and collects every panic, every error that is not
/// one line naming the file, and every over-large allocation or slow input.
fn fuzz(
    kind: &str,
    file: &str,
    bases: &[Vec<u8>],
    mutate: impl Fn(&mut Rng, &mut Vec<u8>),
    read: impl Fn(&Path) -> std::result::Result<(), emclass::Error>,
) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    let mut rng = Rng(seed()
        ^ kind
            .bytes()
            .fold(0u64, |h, c| h.wrapping_mul(31) + c as u64));
    let mut t = Tally::default();
    let t0 = Instant::now();
    for i in 0..iterations() {
        let mut input = rng.pick(bases).clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut input);
        }
        std::fs::write(&path, &input).unwrap();
        let start = Instant::now();
        let (r, largest) = measured(|| read(&path));
        let took = start.elapsed();
        t.inputs += 1;
        t.slowest = t.slowest.max(took);
        t.largest_alloc = t.largest_alloc.max(largest);
        let limit = (64 << 20) + 64 * input.len();
        let keep = |what: &str| {
            let p = std::env::temp_dir().join(format!("emclass-fuzz-{kind}-{i}-{file}"));
            std::fs::write(&p, &input).unwrap();
            format!("input {i} ({what}), saved as {}", p.display())
        };
        match r {
            Ok(Ok(())) => t.ok += 1,
            Ok(Err(e)) => {
                t.err += 1;
                let msg = e.to_string();
                if !one_clean_line(&msg) || !msg.contains(file) {
                    t.bad_errors.push(keep(&format!("error {msg:?}")));
                }
            }
            Err(p) => t.panics.push(keep(&format!("panic: {p}"))),
        }
        if largest > limit {
            t.bad_errors
                .push(keep(&format!("allocated {largest} bytes in one request")));
        }
        if took > Duration::from_secs(5) {
            t.bad_errors.push(keep(&format!("took {took:?}")));
        }
    }
    eprintln!(
        "fuzz {kind}: {} inputs (seed {}), {} read, {} refused with an error, {} panics, \
         largest single allocation {} bytes, slowest input {:.1} ms, total {:.2} s",
        t.inputs,
        seed(),
        t.ok,
        t.err,
        t.panics.len(),
        t.largest_alloc,
        t.slowest.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64()
    );
    t
}

fn assert_clean(t: &Tally) {
    assert!(t.panics.is_empty(), "panics: {:#?}", t.panics);
    assert!(t.bad_errors.is_empty(), "bad errors: {:#?}", t.bad_errors);
    // Both outcomes happen, so the mutations neither always break nor never touch the files.
    assert!(t.err > 0, "no input was refused");
}

#[test]
fn fuzz_star_reader() {
    let t = fuzz(
        "star",
        "f.star",
        &bases().star,
        |rng, b| {
            if rng.chance(0.5) {
                mutate_token(rng, b)
            } else {
                mutate_bytes(rng, b, 600);
            }
        },
        |p| {
            let s = star::read_star(p)?;
            relion::star_to_table_with(&s, p, relion::CtfPolicy::IfPresent)?;
            relion::star_to_table(&s, p).map(|_| ())
        },
    );
    assert_clean(&t);
}

#[test]
fn fuzz_mrc_reader() {
    let t = fuzz(
        "mrc",
        "f.mrcs",
        &bases().mrc,
        |rng, b| {
            if rng.chance(0.4) {
                mutate_word(rng, b, 1024)
            } else {
                mutate_bytes(rng, b, 1100);
            }
        },
        |p| {
            let s = MrcStack::open(p)?;
            let _ = s.psize_a();
            if !s.is_empty() {
                s.read(s.len() - 1..s.len())?;
            }
            s.read_all().map(|_| ())
        },
    );
    assert_clean(&t);
    assert!(t.ok > 0, "no mutated stack was read");
}

#[test]
fn fuzz_cs_reader() {
    let t = fuzz(
        "cs",
        "f.cs",
        &bases().cs,
        |rng, b| match rng.below(3) {
            0 => mutate_npy_header(rng, b),
            1 => mutate_word(rng, b, 16),
            _ => {
                mutate_bytes(rng, b, 600);
            }
        },
        |p| {
            cs::inspect_cs(p)?;
            cs::read_cs(p).map(|_| ())
        },
    );
    assert_clean(&t);
    assert!(t.ok > 0, "no mutated .cs was read");
}

#[test]
fn fuzz_yaml_configs() {
    use emclass::classify2d::config::Classify2dConfig;
    use emclass::config::load;
    use emclass::curate::config::{Select2dConfig, SubsetConfig};
    use emclass::simulate::SimulateConfig;
    let t = fuzz(
        "yaml",
        "f.yaml",
        &bases().yaml,
        |rng, b| {
            if rng.chance(0.5) {
                mutate_token(rng, b)
            } else {
                mutate_bytes(rng, b, 4096);
            }
        },
        |p| {
            // Each type is tried: a config for one job is garbage for another, too.
            let r1 = load::<SimulateConfig>(p, &[]).map(|_| ());
            let r2 = load::<SubsetConfig>(p, &[]).map(|_| ());
            let r3 = load::<Classify2dConfig>(p, &[]).map(|_| ());
            let r4 = load::<Select2dConfig>(p, &["output=x".into()]).map(|_| ());
            // Every error must be one line naming the file (a bad one is returned, so the
            // tally reports it); the input counts as read when one of the jobs accepts it
            // (each base config is valid for one job).
            let results = [r1, r2, r3, r4];
            let bad = results.iter().position(|r| {
                r.as_ref().err().is_some_and(|e| {
                    !one_clean_line(&e.to_string()) || !e.to_string().contains("f.yaml")
                })
            });
            let any_ok = results.iter().any(|r| r.is_ok());
            let mut results = results.into_iter();
            match (bad, any_ok) {
                (Some(k), _) => results.nth(k).unwrap(),
                (None, true) => Ok(()),
                (None, false) => results.next().unwrap(),
            }
        },
    );
    assert_clean(&t);
}

// ---------------------------------------------------------------------------------------
// `emclass info` shows identifiers as identifiers.

#[test]
fn info_prints_id_fields_as_counts_not_means() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("d.h5"), simulated_h5()).unwrap();
    let out = emclass(d, &["info", "d.h5"]).ok().stdout;
    let line = |field: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(field))
            .unwrap_or_else(|| panic!("no {field} line:\n{out}"))
            .to_string()
    };
    for f in ["uid", "location/micrograph_uid", "gt/duplicate_of"] {
        let l = line(f);
        assert!(l.contains("distinct") && l.contains("e.g. 0x"), "{l}");
        assert!(!l.contains("mean") && !l.contains("min "), "{l}");
    }
    assert!(line("uid").contains("40 distinct (all different)"), "{out}");
    // 5% duplicates of 40: two rows point at another pick, the rest at themselves.
    let dup = line("gt/duplicate_of");
    assert!(dup.contains("rows hold their own uid"), "{dup}");
    // Quantities keep their ranges.
    assert!(line("ctf/df1_A").contains("mean"), "{out}");
    assert!(line("blob/image_row").contains("max 39"), "{out}");
}
