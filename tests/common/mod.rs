//! Helpers for integration tests: run the real `emclass` binary (alone or under mpirun) in a
//! temporary folder and look at its exit code, stdout and stderr.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_emclass"))
}

/// What a finished run printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    /// Panics with the output unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "run failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
    /// Panics unless the run failed with exit code 1 and printed one `error:` line
    /// containing every string in `needles`; returns that line.
    pub fn fails_with(self, needles: &[&str]) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "expected failure:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "expected one error line, stderr:\n{}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        for n in needles {
            assert!(
                errors[0].contains(n),
                "error line lacks {n:?}: {}",
                errors[0]
            );
        }
        errors[0].to_string()
    }
}

/// Held while a test process writes HDF5 files itself, and while it starts a child process.
/// A child started while the test holds an HDF5 file open for writing inherits that file's
/// descriptor, and with it HDF5's lock on the file, until the child exits: a later open of the
/// file in the test then fails with "unable to lock file". Starting children only while no
/// such file is open prevents that.
pub static HDF5_OR_SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts `cmd` (under [`HDF5_OR_SPAWN`]) and waits for it.
pub fn run_command(cmd: &mut Command) -> std::io::Result<Output> {
    let child = {
        let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?
    };
    child.wait_with_output()
}

/// Runs `emclass args...` in `dir`.
pub fn emclass(dir: &Path, args: &[&str]) -> Run {
    emclass_env(dir, args, &[])
}

/// [`emclass`] with extra environment variables.
pub fn emclass_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = run_command(
        Command::new(bin())
            .args(args)
            .current_dir(dir)
            .env_remove("EMCLASS_MPI")
            .envs(env.iter().copied()),
    )
    .expect("start emclass");
    Run::from(out)
}

/// Runs `mpirun -n ranks emclass args...` in `dir`. Each launch gets its own OpenMPI
/// session folder: launches racing to create the shared default one (`/tmp/ompi.HOST.UID`)
/// fail with "orte_session_dir failed" when tests run in parallel.
pub fn mpirun(dir: &Path, ranks: usize, args: &[&str]) -> Run {
    mpirun_env(dir, ranks, args, &[])
}

/// [`mpirun`] with extra environment variables, exported to every rank (`-x`).
pub fn mpirun_env(dir: &Path, ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Run {
    let session = tempfile::tempdir().expect("session folder");
    let out = run_command(
        Command::new("mpirun")
            .args([
                "--oversubscribe",
                "--allow-run-as-root",
                "-n",
                &ranks.to_string(),
            ])
            .args(env.iter().flat_map(|(k, _)| ["-x", k]))
            .envs(env.iter().copied())
            .arg(bin())
            .args(args)
            .current_dir(dir)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .env("OMPI_MCA_orte_tmpdir_base", session.path()),
    )
    .expect("start mpirun (install openmpi-bin)");
    Run::from(out)
}

/// Lists the entries of `dir` (names), sorted.
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- Small inputs written directly (no Python needed): MRC stacks and RELION STAR files,
// ---- and a snapshot of a folder to prove that a failed run changed nothing.

/// Writes `images` (each `nx`·`ny` values, row-major) as a float32 MRC2014 image stack with
/// pixel size `psize_a`. The 1024-byte header is written by hand here, as mrcfile writes an
/// image stack (ispg 0, mx = nx, my = ny, mz = 1, cell = (nx·apix, ny·apix, apix)), so these
/// tests do not rely on the library's own MRC writer.
pub fn write_mrc_stack(path: &Path, nx: usize, ny: usize, psize_a: f32, images: &[Vec<f32>]) {
    let nz = images.len();
    let mut h = vec![0u8; 1024];
    let put_i32 =
        |h: &mut Vec<u8>, at: usize, v: i32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut Vec<u8>, at: usize, v: f32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put_i32(&mut h, 0, nx as i32);
    put_i32(&mut h, 4, ny as i32);
    put_i32(&mut h, 8, nz as i32);
    put_i32(&mut h, 12, 2); // mode 2: float32
    put_i32(&mut h, 28, nx as i32);
    put_i32(&mut h, 32, ny as i32);
    put_i32(&mut h, 36, 1);
    put_f32(&mut h, 40, nx as f32 * psize_a);
    put_f32(&mut h, 44, ny as f32 * psize_a);
    put_f32(&mut h, 48, psize_a);
    for at in [52, 56, 60] {
        put_f32(&mut h, at, 90.0);
    }
    put_i32(&mut h, 64, 1);
    put_i32(&mut h, 68, 2);
    put_i32(&mut h, 72, 3);
    let all: Vec<f32> = images.iter().flatten().copied().collect();
    let finite: Vec<f64> = all
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v))
        .collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let mean = if finite.is_empty() {
        0.0
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    };
    let rms = if finite.is_empty() {
        0.0
    } else {
        (finite.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / finite.len() as f64).sqrt()
    };
    put_f32(&mut h, 76, if finite.is_empty() { 0.0 } else { lo as f32 });
    put_f32(&mut h, 80, if finite.is_empty() { 0.0 } else { hi as f32 });
    put_f32(&mut h, 84, mean as f32);
    put_i32(&mut h, 88, 0); // ispg 0: image stack
    put_i32(&mut h, 92, 0); // no extended header
    h[104..108].copy_from_slice(b"MRCO");
    put_i32(&mut h, 108, 20140);
    h[208..212].copy_from_slice(b"MAP ");
    h[212..216].copy_from_slice(&[0x44, 0x44, 0, 0]);
    put_f32(&mut h, 216, rms as f32);
    let mut bytes = h;
    for image in images {
        assert_eq!(
            image.len(),
            nx * ny,
            "write_mrc_stack: image of the wrong size"
        );
        for v in image {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// `n` deterministic, distinct `box_px`×`box_px` test images (a smooth pattern per image plus
/// a hash-like ripple), the first numbered from `first`.
pub fn test_images(first: usize, n: usize, box_px: usize) -> Vec<Vec<f32>> {
    (first..first + n)
        .map(|k| {
            (0..box_px * box_px)
                .map(|p| {
                    let (y, x) = ((p / box_px) as f32, (p % box_px) as f32);
                    let r = (x * 0.37 + y * 0.11 + k as f32 * 1.3).sin();
                    let s = ((p * 7919 + k * 104_729) % 1000) as f32 / 1000.0 - 0.5;
                    r + 0.25 * s + 0.01 * k as f32
                })
                .collect()
        })
        .collect()
}

/// A small RELION 3.1 particle set written by [`write_relion_set`].
pub struct RelionSet {
    /// `dir/particles.star`.
    pub star: PathBuf,
    /// `dir/Particles/stack_KK.mrcs`.
    pub stacks: Vec<PathBuf>,
    /// The `_rlnImageName` of each particle (`000001@Particles/stack_00.mrcs`, ...).
    pub names: Vec<String>,
}

/// Pixel size (Å) and image size of [`write_relion_set`].
pub const SET_PSIZE_A: f32 = 1.25;

/// Writes `dir/Particles/stack_KK.mrcs` (one stack per entry of `stack_sizes`, images from
/// [`test_images`], `box_px` square, pixel size [`SET_PSIZE_A`]) and `dir/particles.star`
/// (RELION 3.1, see [`relion_star`]) referencing every image in order.
pub fn write_relion_set(dir: &Path, stack_sizes: &[usize], box_px: usize) -> RelionSet {
    let mut stacks = Vec::new();
    let mut names = Vec::new();
    let mut first = 0;
    for (k, &n) in stack_sizes.iter().enumerate() {
        let rel = format!("Particles/stack_{k:02}.mrcs");
        let path = dir.join(&rel);
        write_mrc_stack(
            &path,
            box_px,
            box_px,
            SET_PSIZE_A,
            &test_images(first, n, box_px),
        );
        first += n;
        names.extend((0..n).map(|i| format!("{:06}@{rel}", i + 1)));
        stacks.push(path);
    }
    let star = dir.join("particles.star");
    std::fs::write(&star, relion_star(&names, box_px, &[])).unwrap();
    RelionSet {
        star,
        stacks,
        names,
    }
}

/// The text of a RELION 3.1 particle STAR file (data_optics + data_particles) for the given
/// image names, with every label of `drop` left out. Particle `i` gets defocus
/// 10000 + 100·i Å, angles, origins in Å and class `i % 3 + 1`.
pub fn relion_star(names: &[String], box_px: usize, drop: &[&str]) -> String {
    let optics = [
        ("_rlnOpticsGroup", "1".to_string()),
        ("_rlnOpticsGroupName", "opticsGroup1".to_string()),
        ("_rlnAmplitudeContrast", "0.1".to_string()),
        ("_rlnSphericalAberration", "2.7".to_string()),
        ("_rlnVoltage", "300".to_string()),
        ("_rlnImagePixelSize", SET_PSIZE_A.to_string()),
        ("_rlnImageSize", box_px.to_string()),
        ("_rlnImageDimensionality", "2".to_string()),
    ];
    let labels = [
        "_rlnImageName",
        "_rlnMicrographName",
        "_rlnCoordinateX",
        "_rlnCoordinateY",
        "_rlnDefocusU",
        "_rlnDefocusV",
        "_rlnDefocusAngle",
        "_rlnOpticsGroup",
        "_rlnAngleRot",
        "_rlnAngleTilt",
        "_rlnAnglePsi",
        "_rlnOriginXAngst",
        "_rlnOriginYAngst",
        "_rlnClassNumber",
    ];
    let mut s = String::from("\n# version 30001\n\ndata_optics\n\nloop_\n");
    let kept: Vec<&(&str, String)> = optics.iter().filter(|(l, _)| !drop.contains(l)).collect();
    for (k, (l, _)) in kept.iter().enumerate() {
        s += &format!("{l} #{}\n", k + 1);
    }
    s += &kept
        .iter()
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join("\t");
    s += "\n\n\n# version 30001\n\ndata_particles\n\nloop_\n";
    let kept: Vec<(usize, &str)> = labels
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, l)| !drop.contains(l))
        .collect();
    for (k, (_, l)) in kept.iter().enumerate() {
        s += &format!("{l} #{}\n", k + 1);
    }
    for (i, name) in names.iter().enumerate() {
        let f = i as f64;
        let values = [
            name.clone(),
            format!("MotionCorr/job002/mic_{:03}.mrc", i / 4),
            format!("{}", 100.0 + 10.5 * f),
            format!("{}", 200.0 + 3.25 * f),
            format!("{}", 10000.0 + 100.0 * f),
            format!("{}", 9800.0 + 100.0 * f),
            format!("{}", -170.0 + 25.0 * f),
            "1".to_string(),
            format!("{}", -150.0 + 31.0 * f),
            format!("{}", 10.0 + 17.0 * f),
            format!("{}", 170.0 - 23.0 * f),
            format!("{}", 1.25 * (f - 3.0)),
            format!("{}", -0.5 * f),
            format!("{}", i % 3 + 1),
        ];
        let row: Vec<&str> = kept.iter().map(|(j, _)| values[*j].as_str()).collect();
        s += &row.join("\t");
        s += "\n";
    }
    s += "\n";
    s
}

/// Every file under `dir` (hidden ones included, recursively): relative path → (contents,
/// modification time). Two equal snapshots mean nothing was added, removed or touched.
pub fn tree_snapshot(
    dir: &Path,
) -> std::collections::BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<String, (Vec<u8>, std::time::SystemTime)>,
    ) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), meta.modified().unwrap()));
                walk(root, &p, out);
            } else {
                out.insert(rel, (std::fs::read(&p).unwrap(), meta.modified().unwrap()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Panics, naming the paths, unless two [`tree_snapshot`]s are equal.
pub fn assert_same_tree(
    before: &std::collections::BTreeMap<String, (Vec<u8>, std::time::SystemTime)>,
    after: &std::collections::BTreeMap<String, (Vec<u8>, std::time::SystemTime)>,
) {
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "files added: {added:?}, removed: {removed:?}"
    );
    for (k, (bytes, mtime)) in before {
        let (b2, m2) = &after[k];
        assert!(bytes == b2, "{k}: contents changed");
        assert_eq!(mtime, m2, "{k}: modification time changed");
    }
}

/// Checks `configs/<name>`: its values equal `defaults(parsed file)` (the job's defaults with
/// the file's required values), it lists every key of the config, and every key line has a
/// ` # ` explanation.
pub fn assert_example_config<T>(name: &str, defaults: impl FnOnce(&T) -> T)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let map: serde_norway::Mapping = serde_norway::from_str(&text).unwrap();
    let cfg: T = serde_norway::from_str(&text).unwrap();
    let defaults = defaults(&cfg);
    assert_eq!(
        cfg, defaults,
        "configs/{name} values differ from the defaults"
    );
    let all: serde_norway::Value = serde_norway::to_value(&defaults).unwrap();
    for key in all.as_mapping().unwrap().keys() {
        let k = key.as_str().unwrap();
        assert!(map.contains_key(k), "configs/{name} lacks {k}");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(':'))
    {
        assert!(
            line.contains(" # "),
            "configs/{name}: no explanation on: {line}"
        );
    }
}

/// The PIDs of the direct children of process `pid` (e.g. the ranks under mpirun), sorted.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .expect("run pgrep");
    let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Runs `emclass simulate` in `dir` (single process) into `dir/<name>`: `mode` (views2d or
/// hetero3d), `n` particles, then the `key=value` settings in `sets` (later ones win).
/// Leaves the config it used as `dir/sim.yaml`.
pub fn simulate_with(dir: &Path, mode: &str, name: &str, n: usize, sets: &[&str]) {
    std::fs::write(
        dir.join("sim.yaml"),
        format!("output: unused\nmode: {mode}\n"),
    )
    .unwrap();
    let (out, count) = (format!("output={name}"), format!("num_particles={n}"));
    let mut args = vec!["-q", "simulate", "sim.yaml", "--set", &out, "--set", &count];
    for s in sets {
        args.extend(["--set", s]);
    }
    emclass(dir, &args).ok();
}

/// Starts `cmd` in `d`, waits until `trigger` exists (the run still going), then SIGKILLs
/// it (under mpirun: its last rank) and checks that the run failed and left no `out`.
pub fn kill_when(d: &Path, mut cmd: Command, trigger: &Path, out: &str, mpi: bool) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    cmd.current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = {
        let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        cmd.spawn().unwrap()
    };
    let t0 = Instant::now();
    while !trigger.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let victim = if mpi {
        *child_pids(child.id()).last().expect("a rank under mpirun")
    } else {
        child.id()
    };
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    assert!(!child.wait().unwrap().success());
    assert!(!d.join(out).exists(), "a killed run left a final output");
}

// ---- Reading results back: a column of an emclass dataset per uid (any job's output).

/// The uids of emclass dataset `path` in row order, and column `field` as `width` f64 values
/// per row (integers are exact up to 2^53). Read through the library while holding
/// [`HDF5_OR_SPAWN`], so no child process inherits the open file. Panics naming the file
/// when it cannot be read or lacks a numeric `field`.
pub fn read_column(path: &Path, field: &str) -> (Vec<u64>, Vec<Vec<f64>>) {
    let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    let ds = emclass::dataset::Dataset::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let t = ds.table();
    let col = t
        .get(field)
        .unwrap_or_else(|| panic!("{} has no column {field}", path.display()));
    let values = col
        .data
        .to_f64()
        .unwrap_or_else(|| panic!("{}: {field} is not numeric", path.display()));
    let width = col.width.max(1);
    let rows = values.chunks(width).map(|r| r.to_vec()).collect();
    (t.uid().to_vec(), rows)
}

/// The uids of emclass dataset `path`, in row order.
pub fn dataset_uids(path: &Path) -> Vec<u64> {
    let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    emclass::dataset::Dataset::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .table()
        .uid()
        .to_vec()
}

/// Scalar column `field` of emclass dataset `path` (e.g. `alignments2D/class` of a
/// classify2d `particles.h5`) as uid → value. Panics if a uid repeats.
pub fn column_by_uid(path: &Path, field: &str) -> std::collections::HashMap<u64, f64> {
    let (uids, rows) = read_column(path, field);
    let mut out = std::collections::HashMap::with_capacity(uids.len());
    for (u, r) in uids.into_iter().zip(rows) {
        assert!(
            out.insert(u, r[0]).is_none(),
            "{}: uid {u} appears twice",
            path.display()
        );
    }
    out
}

/// The fraction of uids with the same value in `a` and `b` (two [`column_by_uid`] maps, e.g.
/// the classes of one job run on different rank counts). Panics, naming a few, unless both
/// hold the same uids.
pub fn agreement_by_uid(
    a: &std::collections::HashMap<u64, f64>,
    b: &std::collections::HashMap<u64, f64>,
) -> f64 {
    let only_a: Vec<&u64> = a.keys().filter(|u| !b.contains_key(u)).take(5).collect();
    let only_b: Vec<&u64> = b.keys().filter(|u| !a.contains_key(u)).take(5).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && a.len() == b.len(),
        "different particles: {} vs {} uids; only in the first e.g. {only_a:?}, only in the second e.g. {only_b:?}",
        a.len(),
        b.len()
    );
    if a.is_empty() {
        return 1.0;
    }
    a.iter().filter(|(u, v)| b[u] == **v).count() as f64 / a.len() as f64
}

/// Issue 19: after a hard pass, `<group>/class_probs` (K per row) is the soft posterior (rows
/// sum to 1, not every value 0 or 1), `class` its hard assignment (argmax), and
/// `class_posterior` / `class_ess` are that posterior's best-class probability and
/// 1/Σ_k p_k².
pub fn assert_soft_posterior_with_hard_class(
    t: &emclass::dataset::ParticleTable,
    group: &str,
    k: usize,
) {
    let f = |name: &str| format!("{group}/{name}");
    let probs = t.f32(&f("class_probs")).unwrap();
    let class = t.u32(&f("class")).unwrap();
    let post = t.f32(&f("class_posterior")).unwrap();
    let ess = t.f32(&f("class_ess")).unwrap();
    assert_eq!(probs.len(), class.len() * k);
    let soft = probs
        .iter()
        .filter(|&&p| p > 1e-4 && p < 1.0 - 1e-4)
        .count();
    assert!(soft > 0, "every {group}/class_probs value is 0 or 1");
    assert!(
        post.iter().any(|&p| p < 0.999),
        "{group}/class_posterior all 1"
    );
    assert!(ess.iter().any(|&e| e > 1.001), "{group}/class_ess all 1");
    for (i, row) in probs.chunks(k).enumerate() {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "row {i} sums to {sum}");
        let c = class[i] as usize;
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        assert!(
            row[c] >= max - 1e-6,
            "row {i}: class {c} is not the argmax of {row:?}"
        );
        assert_eq!(post[i], row[c], "row {i}: class_posterior");
        let e = 1.0 / row.iter().map(|p| (*p as f64).powi(2)).sum::<f64>();
        assert!(
            (ess[i] as f64 - e).abs() < 1e-3 * e,
            "row {i}: class_ess {} vs {e}",
            ess[i]
        );
    }
}
