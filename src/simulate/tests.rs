//! Tests of the simulator as a whole: determinism, distinct views, SNR, junk and duplicate
//! fractions, hetero3d volumes and poses, and the files written by `run`.

use super::*;
use crate::numerics::rotation::{euler_deg_to_matrix, pose_to_matrix};

fn small(mode: SimMode) -> SimulateConfig {
    let mut c = SimulateConfig::with_output("unused");
    c.mode = mode;
    c.num_particles = 200;
    c.box_px = 64;
    c.psize_a = 3.0;
    c.particles_per_micrograph = 50;
    c.micrograph_shape_px = [1024, 1024];
    c.batch_size = 64;
    c
}

fn corr(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64 - ma, *y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn same_seed_same_data_whatever_the_batching_or_threads() {
    let c = small(SimMode::Views2d);
    let a = Simulation::new(&c).unwrap();
    let b = Simulation::new(&c).unwrap();
    let whole = a.images(0..60);
    assert_eq!(whole, b.images(0..60));
    assert_eq!(a.table(), b.table());
    // Batches of any size give the same rows.
    let mut parts = a.images(0..17).into_raw_vec_and_offset().0;
    parts.extend(a.images(17..60).into_raw_vec_and_offset().0);
    assert_eq!(whole.as_slice().unwrap(), &parts[..]);
    // So does a single thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(pool.install(|| a.images(0..60)), whole);
    // Another seed gives other data.
    let mut c2 = c.clone();
    c2.seed = 1;
    let other = Simulation::new(&c2).unwrap();
    let diff = other
        .images(0..60)
        .iter()
        .zip(&whole)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 1.0, "{diff}");
    assert_ne!(other.table().uid(), a.table().uid());
    // uids are unique.
    let mut u = a.table().uid().to_vec();
    u.sort_unstable();
    u.dedup();
    assert_eq!(u.len(), 200);
}

#[test]
fn views_give_clearly_different_projections() {
    // The default object at the default box: compare each view at psi = 0 with every view
    // at psi in 1° steps and keep the best correlation (best in-plane alignment).
    let mut c = SimulateConfig::with_output("unused");
    c.num_particles = 10;
    let sim = Simulation::new(&c).unwrap();
    let n = c.box_px;
    let centre = [(n / 2) as f64; 2];
    let psize = c.psize_a as f64;
    let refs = sim.view_projections();
    let views = &sim.plan.views;
    let mut rotated: Vec<Vec<Vec<f32>>> = Vec::new();
    for v in views {
        let mut per_psi = Vec::new();
        for k in 0..360 {
            let a = euler_deg_to_matrix(v[0].to_degrees(), v[1].to_degrees(), k as f64);
            let mut img = vec![0.0f32; n * n];
            phantom::project_into(sim.phantom.core(), &a, centre, psize, n, &mut img);
            per_psi.push(img);
        }
        rotated.push(per_psi);
    }
    let mut worst_across = 0.0f64;
    for i in 0..views.len() {
        let r = refs.index_axis(ndarray::Axis(0), i);
        let r = r.as_slice().unwrap();
        for (j, per_psi) in rotated.iter().enumerate() {
            // Within a view, skip psi = 0 itself: the best other angle must still match.
            let best = per_psi
                .iter()
                .enumerate()
                .filter(|(k, _)| i != j || *k != 0)
                .map(|(_, img)| corr(r, img))
                .fold(f64::MIN, f64::max);
            if i == j {
                assert!(best > 0.99, "view {i} vs itself rotated: {best}");
            } else {
                worst_across = worst_across.max(best);
                assert!(
                    best < 0.9,
                    "views {i} and {j} correlate at {best} after in-plane alignment"
                );
            }
        }
    }
    eprintln!("highest correlation across views after in-plane alignment: {worst_across:.3}");
}

#[test]
fn measured_snr_matches_the_request() {
    let mut c = small(SimMode::Views2d);
    c.num_particles = 600;
    c.particles_per_micrograph = 20;
    let sim = Simulation::new(&c).unwrap();
    let signals = sim.signals(0..600);
    let images = sim.images(0..600);
    let classes = sim.classes();
    let (mut sig, mut noise, mut junk_sig) = (0.0, 0.0, 0.0);
    let (mut n_part, mut n_junk) = (0usize, 0usize);
    for (r, &class) in classes.iter().enumerate() {
        let s = signals.index_axis(ndarray::Axis(0), r);
        let i = images.index_axis(ndarray::Axis(0), r);
        let s = s.as_slice().unwrap();
        let e: Vec<f32> = i.iter().zip(s).map(|(a, b)| a - b).collect();
        let vn = sim.renderer.masked_variance(&e);
        if class >= 0 {
            sig += sim.renderer.masked_variance(s);
            noise += vn;
            n_part += 1;
        } else {
            junk_sig += sim.renderer.masked_variance(s);
            n_junk += 1;
        }
    }
    let snr = sig / noise;
    assert!((snr / 0.05 - 1.0).abs() < 0.2, "measured SNR {snr}");
    assert!(
        (noise / n_part as f64 - 1.0).abs() < 0.02,
        "noise variance {}",
        noise / n_part as f64
    );
    let junk = junk_sig / n_junk as f64;
    assert!(
        (junk / 0.05 - 1.0).abs() < 0.3,
        "junk signal variance {junk} (n = {n_junk})"
    );
    assert!((sim.renderer.calibrated_snr() - 0.05).abs() < 1e-9);
}

#[test]
fn junk_and_duplicates_as_configured() {
    let mut c = small(SimMode::Views2d);
    c.num_particles = 2000;
    let sim = Simulation::new(&c).unwrap();
    let t = sim.table();
    let junk = t.u32("gt/is_junk").unwrap();
    let junk_frac = junk.iter().sum::<u32>() as f64 / 2000.0;
    assert!((junk_frac - 0.15).abs() < 0.015, "{junk_frac}");
    let dup = t.u32("gt/is_duplicate").unwrap();
    assert_eq!(dup.iter().sum::<u32>(), 100);
    let dup_of = t.u64("gt/duplicate_of").unwrap();
    let uid = t.uid();
    let row_of: std::collections::HashMap<u64, usize> =
        uid.iter().enumerate().map(|(r, &u)| (u, r)).collect();
    let mic = t.u64("location/micrograph_uid").unwrap();
    let (fx, fy) = (
        t.f32("location/center_x_frac").unwrap(),
        t.f32("location/center_y_frac").unwrap(),
    );
    let view = match &t.get("gt/view").unwrap().data {
        ColumnData::I32(v) => v.clone(),
        other => panic!("gt/view is {}", other.type_name()),
    };
    let psi = t.f32("gt/psi_rad").unwrap();
    let max_px = c.duplicate_max_offset_a as f64 / c.psize_a as f64;
    for r in 0..2000 {
        let o = row_of[&dup_of[r]];
        if dup[r] == 0 {
            assert_eq!(o, r, "an original is its own duplicate_of");
            continue;
        }
        assert_eq!(dup[o], 0);
        assert_eq!(mic[r], mic[o], "same micrograph");
        assert_eq!(
            (view[r], psi[r], junk[r]),
            (view[o], psi[o], junk[o]),
            "same particle"
        );
        let d = (((fx[r] - fx[o]) as f64 * 1024.0).powi(2)
            + ((fy[r] - fy[o]) as f64 * 1024.0).powi(2))
        .sqrt();
        assert!(
            d <= max_px + 1e-2,
            "duplicate {r} is {d} px from its original"
        );
    }
    // A duplicate's clean image is its original's, moved by the pick offset: its correlation
    // with the original after undoing the (sub-pixel) offset is ~1.
    let shifts = t.f32("gt/shift_px").unwrap();
    let r = (0..2000).find(|&r| dup[r] == 1 && junk[r] == 0).unwrap();
    let o = row_of[&dup_of[r]];
    let mut p = sim.plan.picks[r];
    p.shift_px = [shifts[2 * o], shifts[2 * o + 1]];
    let n = c.box_px;
    let mut moved_back = vec![0.0f32; n * n];
    sim.renderer.signal_into(&p, &mut moved_back);
    let orig = sim.signals(o..o + 1);
    assert!(corr(&moved_back, orig.as_slice().unwrap()) > 0.9999);
    let dup_img = sim.signals(r..r + 1);
    assert!(corr(dup_img.as_slice().unwrap(), orig.as_slice().unwrap()) < 0.9999);
}

#[test]
fn hetero3d_states_differ_only_in_the_domain() {
    let c = small(SimMode::Hetero3d);
    let sim = Simulation::new(&c).unwrap();
    let vols = sim.volumes();
    assert_eq!(
        vols.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["state_00", "state_01"]
    );
    let (v0, v1) = (&vols[0].1, &vols[1].1);
    let diff = v0 - v1;
    let n = c.box_px as f64;
    let psize = c.psize_a as f64;
    let domain = &sim.phantom.domains()[0];
    let mut nonzero_far = 0usize;
    for ((z, y, x), d) in diff.indexed_iter() {
        let far = domain.iter().all(|b| {
            let s = b.sigma_a / psize;
            let cx = [
                n / 2.0 + b.pos_a[0] / psize,
                n / 2.0 + b.pos_a[1] / psize,
                n / 2.0 + b.pos_a[2] / psize,
            ];
            let cheb = (x as f64 - cx[0])
                .abs()
                .max((y as f64 - cx[1]).abs())
                .max((z as f64 - cx[2]).abs());
            cheb > 4.5 * s + 1.0
        });
        if far && *d != 0.0 {
            nonzero_far += 1;
        }
    }
    assert_eq!(nonzero_far, 0, "voxels away from the domain differ");
    let frac = diff.sum() as f64 / v0.sum() as f64;
    assert!(
        (frac - 0.10).abs() < 0.005,
        "domain carries {frac} of the mass"
    );
    // The difference is local: most voxels are identical.
    let changed = diff.iter().filter(|d| **d != 0.0).count() as f64 / diff.len() as f64;
    assert!(changed < 0.1, "{changed}");
}

#[test]
fn hetero3d_poses_are_uniform_and_stored_as_poses() {
    let mut c = small(SimMode::Hetero3d);
    c.num_particles = 6000;
    c.particles_per_micrograph = 100;
    c.micrograph_shape_px = [2048, 2048];
    let sim = Simulation::new(&c).unwrap();
    let mut mean = [[0.0f64; 3]; 3];
    for p in &sim.plan.picks {
        let a = pick_matrix(p);
        for i in 0..3 {
            for j in 0..3 {
                mean[i][j] += a[i][j] / 6000.0;
            }
        }
    }
    // Each entry of a uniform random rotation has mean 0 and variance 1/3.
    for row in &mean {
        for &m in row {
            assert!(m.abs() < 0.04, "{mean:?}");
        }
    }
    let t = sim.table();
    let poses = t.f32("alignments3D/pose").unwrap();
    for (r, p) in sim.plan.picks.iter().enumerate().take(200) {
        let a = pick_matrix(p);
        let b = pose_to_matrix([
            poses[3 * r] as f64,
            poses[3 * r + 1] as f64,
            poses[3 * r + 2] as f64,
        ]);
        for i in 0..3 {
            for j in 0..3 {
                assert!((a[i][j] - b[i][j]).abs() < 1e-5);
            }
        }
    }
    assert_eq!(
        t.f32("alignments3D/shift").unwrap(),
        t.f32("gt/shift_px").unwrap()
    );
    let states = match &t.get("gt/state").unwrap().data {
        ColumnData::I32(v) => v.clone(),
        _ => panic!("gt/state is not i32"),
    };
    let s1 = states.iter().filter(|&&s| s == 1).count() as f64;
    let s0 = states.iter().filter(|&&s| s == 0).count() as f64;
    assert!((s1 / (s0 + s1) - 0.5).abs() < 0.03);
}

#[test]
fn run_writes_particles_ground_truth_and_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = small(SimMode::Hetero3d);
    c.num_particles = 150;
    c.batch_size = 40;
    let summary = run(&c, dir.path()).unwrap();
    assert_eq!(summary.num_particles, 150);
    assert_eq!(summary.num_duplicates, 8);
    let ds = crate::dataset::Dataset::open(&dir.path().join("particles.h5")).unwrap();
    let sim = Simulation::new(&c).unwrap();
    assert_eq!(ds.table().uid(), sim.table().uid());
    assert_eq!(ds.table().f32("ctf/df1_A"), sim.table().f32("ctf/df1_A"));
    assert_eq!(
        ds.table().f32("alignments3D/pose"),
        sim.table().f32("alignments3D/pose")
    );
    assert_eq!(ds.read_images(100..150).unwrap(), sim.images(100..150));
    assert_eq!(ds.box_px(), 64);
    let csv = std::fs::read_to_string(dir.path().join("ground_truth.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 151);
    assert!(lines[0].starts_with("uid,state,is_junk,is_duplicate,duplicate_of,psi_rad,shift_x_px"));
    assert_eq!(
        lines[1].split(',').next().unwrap(),
        sim.table().uid()[0].to_string()
    );
    assert_eq!(lines[1].split(',').count(), lines[0].split(',').count());
    for name in ["state_00.mrc", "state_01.mrc"] {
        let (vol, psize) =
            crate::formats::mrc::read_volume(dir.path().join("volumes").join(name)).unwrap();
        assert_eq!(vol.dim(), (64, 64, 64));
        assert_eq!(psize, 3.0);
    }
    assert!(!dir.path().join("ground_truth.csv.tmp").exists());
}

#[test]
fn run_views2d_f16_gzip_and_no_ctf() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = small(SimMode::Views2d);
    c.num_particles = 90;
    c.dtype = SimDtype::F16;
    c.gzip = Some(4);
    c.ctf = false;
    let summary = run(&c, dir.path()).unwrap();
    assert_eq!(
        summary.class_counts.iter().sum::<usize>() + summary.num_junk,
        90
    );
    let ds = crate::dataset::Dataset::open(&dir.path().join("particles.h5")).unwrap();
    let sim = Simulation::new(&c).unwrap();
    let (stored, exact) = (ds.read_images(0..90).unwrap(), sim.images(0..90));
    let err = stored
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(err < 1e-3, "f16 relative error {err}");
    assert!(!ds.table().has("ctf/df1_A"), "no CTF fields without a CTF");
    assert!(ds.table().has("gt/view") && !ds.table().has("alignments3D/pose"));
    let views = crate::formats::mrc::MrcStack::open(dir.path().join("volumes/views.mrcs")).unwrap();
    assert_eq!(views.len(), c.num_views);
    assert!(dir.path().join("volumes/phantom.mrc").exists());
    let csv = std::fs::read_to_string(dir.path().join("ground_truth.csv")).unwrap();
    assert!(
        csv.lines().nth(1).unwrap().contains(",,,"),
        "empty CTF columns"
    );
}

/// `cargo test --release --lib simulate::tests::timing_20k -- --ignored --nocapture`
#[test]
#[ignore]
fn timing_20k() {
    let dir = tempfile::tempdir().unwrap();
    let c = SimulateConfig::with_output(dir.path());
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            if r.target().starts_with("emclass") {
                eprintln!("{}", r.args());
            }
        }
        fn flush(&self) {}
    }
    let _ = log::set_logger(&Stderr);
    log::set_max_level(log::LevelFilter::Info);
    let t = std::time::Instant::now();
    let s = run(&c, dir.path()).unwrap();
    eprintln!(
        "20k particles, box {}: {:.2} s total ({:?}), {} threads",
        c.box_px,
        t.elapsed().as_secs_f64(),
        s.class_counts,
        rayon::current_num_threads()
    );
}
