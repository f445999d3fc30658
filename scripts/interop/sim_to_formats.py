#!/usr/bin/env python3
"""Turns an emclass simulation into the files a user brings from RELION and CryoSPARC.

    sim_to_formats.py SIM_DIR STACK.mrcs OUTDIR [--formats star,cs] [--split per-micrograph|N]
                      [--order as-is|duplicates-first-then-by-view|shuffle] [--seed S]
                      [--poses auto|yes|no] [--autopick-columns]

Inputs (nothing else of emclass is read; no emclass writer is used):
  SIM_DIR/ground_truth.csv    written by `emclass simulate` (one line per particle, in row order)
  SIM_DIR/config.used.yaml    the simulation's effective config (voltage, Cs, amplitude
                              contrast, pixel size, box, micrograph shape, mode)
  STACK.mrcs                  the simulation's images in row order, as written by
                              `emclass export --in SIM_DIR/particles.h5 --mrcs STACK.mrcs`

Writes, with the reference libraries only (numpy, mrcfile, starfile, cryosparc-tools):
  OUTDIR/Extract/job005/Movies/mic_XXXX.mrcs   the images re-split into float32 stacks, as
        RELION's Extract writes them: one stack per micrograph (`--split per-micrograph`, the
        default; images in pick order) or N stacks in simulation order (`--split N`), named
        `Extract/job005/Particles/stack_XX.mrcs`. Voxel size = the pixel size.
  OUTDIR/particles.star   RELION 3.1: data_optics (rlnOpticsGroupName, rlnOpticsGroup,
        rlnMicrographOriginalPixelSize, rlnVoltage, rlnSphericalAberration,
        rlnAmplitudeContrast, rlnImagePixelSize, rlnImageSize, rlnImageDimensionality) and
        data_particles (rlnImageName `000001@Extract/job005/Movies/mic_0000.mrcs`,
        rlnMicrographName `MotionCorr/job002/Movies/mic_0000.mrc` (micrographs numbered by
        first appearance of micrograph_uid in the simulation), rlnCoordinateX/Y in micrograph
        pixels, rlnOpticsGroup, rlnDefocusU/V (Å), rlnDefocusAngle (deg), rlnCtfBfactor,
        rlnCtfScalefactor, rlnPhaseShift, rlnCtfMaxResolution, rlnCtfFigureOfMerit; with
        poses (hetero3d by default): rlnAngleRot/Tilt/Psi (deg, RELION's ZYZ Euler angles of
        A = R(pose)^T, normalised as RELION's Euler_matrix2angles) and rlnOriginXAngst/YAngst
        (= origin px x pixel size). `--autopick-columns` adds what RELION's AutoPick leaves in
        an Extract STAR: rlnAutopickFigureOfMerit, rlnClassNumber 0 and rlnAnglePsi -999.
  OUTDIR/particles.cs     CryoSPARC (cryosparc-tools Dataset.save): uid (the simulation's),
        blob/path (the same stacks, relative to OUTDIR = the project folder), blob/idx
        (0-based), blob/shape, blob/psize_A, blob/sign, ctf/* (type, exp_group_id, accel_kv,
        cs_mm, amp_contrast, df1_A, df2_A, df_angle_rad, phase_shift_rad, scale, bfactor,
        shift_A, tilt_A, trefoil_A, tetra_A, anisomag), location/micrograph_uid,
        micrograph_path, micrograph_shape (ny, nx), micrograph_psize_A, center_x_frac,
        center_y_frac; with poses: alignments3D/pose (axis-angle rad, as in ground_truth.csv),
        shift (px), psize_A, alpha (1), class_posterior (1), class (0).
  OUTDIR/truth.csv        the ground truth in the written row order (row i of the STAR and of
        the .cs): row, uid (simulation uid = .cs uid), sim_row, class (view or state, -1 for
        junk), is_junk, is_duplicate, duplicate_of, in_duplicate_pair (1 for a duplicate and
        for the original it duplicates), micrograph, image_name.

--order: `as-is` keeps the simulation order; `duplicates-first-then-by-view` puts every
particle of a duplicate pair first (pairs together, in simulation order of the original), then
the others sorted by true view/state (junk first), ties in simulation order, so that the last
of 3 MPI ranks holds no duplicate pair and only the last views; `shuffle` permutes the rows
with --seed. Same arguments give byte-identical files (the .cs and stacks; the STAR has no
time stamp either).
"""

import argparse
import csv
import os
import sys

import mrcfile
import numpy as np
import pandas as pd
import starfile

ORDERS = ("as-is", "duplicates-first-then-by-view", "shuffle")


def read_config(path):
    """The flat `key: value` (and `- item` list) YAML that emclass writes as config.used.yaml."""
    cfg, key = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split(" #", 1)[0].rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.lstrip().startswith("- ") and key is not None:
                if not isinstance(cfg[key], list):
                    cfg[key] = []
                cfg[key].append(parse_scalar(line.lstrip()[2:]))
                continue
            k, _, v = line.partition(":")
            key = k.strip()
            v = v.strip()
            if v.startswith("[") and v.endswith("]"):
                cfg[key] = [parse_scalar(x) for x in v[1:-1].split(",") if x.strip()]
            else:
                cfg[key] = parse_scalar(v) if v else []
    return cfg


def parse_scalar(v):
    v = v.strip()
    if v in ("null", "~", ""):
        return None
    if v in ("true", "false"):
        return v == "true"
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v.strip("'\"")


def rotvec_to_matrix(v):
    """Rodrigues: R = exp([v]x), rows of (n, 3) rotation vectors -> (n, 3, 3)."""
    v = np.asarray(v, dtype=np.float64)
    th = np.linalg.norm(v, axis=1)
    k = v / np.where(th > 0, th, 1.0)[:, None]
    K = np.zeros((len(v), 3, 3))
    K[:, 0, 1], K[:, 0, 2] = -k[:, 2], k[:, 1]
    K[:, 1, 0], K[:, 1, 2] = k[:, 2], -k[:, 0]
    K[:, 2, 0], K[:, 2, 1] = -k[:, 1], k[:, 0]
    s, c = np.sin(th)[:, None, None], np.cos(th)[:, None, None]
    return np.eye(3)[None] + s * K + (1 - c) * (K @ K)


def relion_matrix_to_euler_deg(A):
    """RELION's Euler_matrix2angles for (n, 3, 3) matrices: (rot, tilt, psi) in degrees."""
    eps = np.finfo(np.float32).eps
    out = np.zeros((len(A), 3))
    for i, a in enumerate(A):
        abs_sb = np.hypot(a[0, 2], a[1, 2])
        if abs_sb > 16 * eps:
            gamma = np.arctan2(a[1, 2], -a[0, 2])
            alpha = np.arctan2(a[2, 1], a[2, 0])
            if abs(np.sin(gamma)) < eps:
                sign_sb = np.sign(-a[0, 2] / np.cos(gamma)) or 1.0
            elif np.sin(gamma) > 0:
                sign_sb = 1.0 if a[1, 2] >= 0 else -1.0
            else:
                sign_sb = -1.0 if a[1, 2] >= 0 else 1.0
            beta = np.arctan2(sign_sb * abs_sb, a[2, 2])
        elif a[2, 2] >= 0:
            alpha, beta, gamma = 0.0, 0.0, np.arctan2(-a[1, 0], a[0, 0])
        else:
            alpha, beta, gamma = 0.0, np.pi, np.arctan2(a[1, 0], -a[0, 0])
        out[i] = np.degrees([alpha, beta, gamma])
    return out


def relion_euler_deg_to_matrix(e):
    """RELION's Euler_angles2matrix for (n, 3) angles in degrees."""
    a, b, g = (np.radians(e[:, j]) for j in range(3))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    A = np.empty((len(e), 3, 3))
    A[:, 0, 0] = cg * cb * ca - sg * sa
    A[:, 0, 1] = cg * cb * sa + sg * ca
    A[:, 0, 2] = -cg * sb
    A[:, 1, 0] = -sg * cb * ca - cg * sa
    A[:, 1, 1] = -sg * cb * sa + cg * ca
    A[:, 1, 2] = sg * sb
    A[:, 2, 0] = sb * ca
    A[:, 2, 1] = sb * sa
    A[:, 2, 2] = cb
    return A


def row_order(gt, cls, how, seed):
    n = len(gt)
    if how == "as-is":
        return np.arange(n)
    if how == "shuffle":
        return np.random.default_rng(seed).permutation(n)
    # duplicates-first-then-by-view
    uid = gt["uid"].to_numpy()
    dup_of = gt["duplicate_of"].to_numpy()
    is_dup = gt["is_duplicate"].to_numpy() == 1
    row_of = {int(u): i for i, u in enumerate(uid)}
    first, seen = [], set()
    for i in range(n):
        if not is_dup[i]:
            continue
        o = row_of.get(int(dup_of[i]))
        for r in ([o] if o is not None else []) + [i]:
            if r not in seen:
                seen.add(r)
                first.append(r)
    rest = [i for i in range(n) if i not in seen]
    rest.sort(key=lambda i: (int(cls[i]), i))
    return np.asarray(first + rest, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sim_dir")
    ap.add_argument("stack")
    ap.add_argument("outdir")
    ap.add_argument("--formats", default="star,cs", help="comma-separated: star, cs (default both)")
    ap.add_argument("--split", default="per-micrograph", help="per-micrograph (default) or a number of stacks")
    ap.add_argument("--order", default="as-is", choices=ORDERS)
    ap.add_argument("--seed", type=int, default=0, help="seed of --order shuffle")
    ap.add_argument("--poses", default="auto", choices=("auto", "yes", "no"),
                    help="write the true 3D poses (auto: for hetero3d simulations)")
    ap.add_argument("--autopick-columns", action="store_true",
                    help="add rlnAutopickFigureOfMerit, rlnClassNumber 0, rlnAnglePsi -999 (as AutoPick leaves them)")
    args = ap.parse_args()
    formats = {f.strip() for f in args.formats.split(",") if f.strip()}
    if not formats or formats - {"star", "cs"}:
        ap.error("--formats takes star and/or cs")

    cfg = read_config(os.path.join(args.sim_dir, "config.used.yaml"))
    gt = pd.read_csv(os.path.join(args.sim_dir, "ground_truth.csv"), dtype={"uid": np.uint64, "duplicate_of": np.uint64, "micrograph_uid": np.uint64})
    n = len(gt)
    mode = cfg.get("mode", "views2d")
    cls_col = "state" if "state" in gt.columns else "view"
    cls = gt[cls_col].to_numpy().astype(np.int64)
    psize = float(cfg["psize_A"])
    box = int(cfg["box_px"])
    mic_ny, mic_nx = (int(x) for x in cfg.get("micrograph_shape_px") or [4096, 4096])
    poses = args.poses == "yes" or (args.poses == "auto" and mode == "hetero3d")
    if not cfg.get("ctf", True) or gt["df1_A"].isna().any():
        sys.exit("ERROR: the simulation has no CTF (ctf: false); RELION and CryoSPARC particles need one")

    with mrcfile.open(args.stack, permissive=False) as m:
        images = np.asarray(m.data, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.shape != (n, box, box):
        sys.exit(f"ERROR: {args.stack} holds {images.shape}, the simulation {n} images of {box}x{box}")

    # Micrographs numbered by first appearance; stacks per micrograph (in pick order) or N.
    mic_uid = gt["micrograph_uid"].to_numpy()
    mic_index = {}
    for u in mic_uid:
        mic_index.setdefault(int(u), len(mic_index))
    mic = np.asarray([mic_index[int(u)] for u in mic_uid])
    stack_of = np.empty(n, dtype=object)
    idx_in = np.empty(n, dtype=np.int64)
    groups = []
    if args.split == "per-micrograph":
        for m_i in range(len(mic_index)):
            groups.append((f"Extract/job005/Movies/mic_{m_i:04d}.mrcs", np.flatnonzero(mic == m_i)))
    else:
        k = int(args.split)
        if k < 1:
            ap.error("--split N needs N >= 1")
        bounds = np.linspace(0, n, k + 1).round().astype(int)
        for j in range(k):
            groups.append((f"Extract/job005/Particles/stack_{j:02d}.mrcs", np.arange(bounds[j], bounds[j + 1])))
    for rel, rows in groups:
        if len(rows) == 0:
            continue
        path = os.path.join(args.outdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(images[rows])
            m.set_image_stack()
            m.voxel_size = psize
            # mrcfile labels a new file with the time: a fixed label keeps the output deterministic.
            m.header.label[0] = b"Created by sim_to_formats.py with mrcfile"
        stack_of[rows] = rel
        idx_in[rows] = np.arange(len(rows))

    order = row_order(gt, cls, args.order, args.seed)
    g = gt.iloc[order].reset_index(drop=True)
    mic_o, stack_o, idx_o = mic[order], stack_of[order], idx_in[order]
    names = [f"{i + 1:06d}@{p}" for i, p in zip(idx_o, stack_o)]
    df1 = g["df1_A"].to_numpy(np.float64)
    df2 = g["df2_A"].to_numpy(np.float64)
    dfang = g["df_angle_rad"].to_numpy(np.float64)
    cx, cy = g["center_x_px"].to_numpy(np.float64), g["center_y_px"].to_numpy(np.float64)
    pose = g[["pose_x", "pose_y", "pose_z"]].to_numpy(np.float64)
    shift = g[["shift_x_px", "shift_y_px"]].to_numpy(np.float64)
    kv, cs_mm, w = float(cfg["accel_kv"]), float(cfg["cs_mm"]), float(cfg["amp_contrast"])
    bfac = float(cfg.get("bfactor_A2") or 0.0)

    os.makedirs(args.outdir, exist_ok=True)
    if "star" in formats:
        optics = pd.DataFrame(
            {
                "rlnOpticsGroupName": ["opticsGroup1"],
                "rlnOpticsGroup": [1],
                "rlnMicrographOriginalPixelSize": [psize],
                "rlnVoltage": [kv],
                "rlnSphericalAberration": [cs_mm],
                "rlnAmplitudeContrast": [w],
                "rlnImagePixelSize": [psize],
                "rlnImageSize": [box],
                "rlnImageDimensionality": [2],
            }
        )
        cols = {
            "rlnCoordinateX": np.round(cx, 6),
            "rlnCoordinateY": np.round(cy, 6),
        }
        if args.autopick_columns:
            cols["rlnAutopickFigureOfMerit"] = np.round(np.linspace(0.5, 2.5, n), 6)
            cols["rlnClassNumber"] = np.zeros(n, dtype=np.int64)
            cols["rlnAnglePsi"] = np.full(n, -999.0)
        cols.update(
            {
                "rlnImageName": names,
                "rlnMicrographName": [f"MotionCorr/job002/Movies/mic_{m_i:04d}.mrc" for m_i in mic_o],
                "rlnOpticsGroup": np.ones(n, dtype=np.int64),
                "rlnCtfMaxResolution": np.full(n, 4.5),
                "rlnCtfFigureOfMerit": np.full(n, 0.2),
                "rlnDefocusU": np.round(df1, 6),
                "rlnDefocusV": np.round(df2, 6),
                "rlnDefocusAngle": np.round(np.degrees(dfang), 6),
                "rlnCtfBfactor": np.full(n, bfac),
                "rlnCtfScalefactor": np.ones(n),
                "rlnPhaseShift": np.zeros(n),
            }
        )
        if poses:
            e = relion_matrix_to_euler_deg(np.transpose(rotvec_to_matrix(pose), (0, 2, 1)))
            # Self-check: RELION's matrix of the written angles is R(pose)^T.
            back = relion_euler_deg_to_matrix(np.round(e, 6))
            err = np.abs(back - np.transpose(rotvec_to_matrix(pose), (0, 2, 1))).max()
            if err > 1e-5:
                sys.exit(f"ERROR: Euler conversion failed (max matrix error {err})")
            cols["rlnAngleRot"] = np.round(e[:, 0], 6)
            cols["rlnAngleTilt"] = np.round(e[:, 1], 6)
            cols["rlnAnglePsi"] = np.round(e[:, 2], 6)
            cols["rlnOriginXAngst"] = np.round(shift[:, 0] * psize, 6)
            cols["rlnOriginYAngst"] = np.round(shift[:, 1] * psize, 6)
        particles = pd.DataFrame(cols)
        starfile.write({"optics": optics, "particles": particles}, os.path.join(args.outdir, "particles.star"),
                       overwrite=True)
        # starfile stamps its header with the time: drop that line for deterministic output.
        p = os.path.join(args.outdir, "particles.star")
        with open(p, encoding="utf-8") as f:
            text = [l for l in f if not l.startswith("# Created by the starfile")]
        with open(p, "w", encoding="utf-8") as f:
            f.writelines(text)

    if "cs" in formats:
        from cryosparc.dataset import Dataset

        fields = [
            ("blob/path", "O"), ("blob/idx", "u4"), ("blob/shape", "u4", (2,)), ("blob/psize_A", "f4"),
            ("blob/sign", "f4"), ("ctf/type", "O"), ("ctf/exp_group_id", "u4"), ("ctf/accel_kv", "f4"),
            ("ctf/cs_mm", "f4"), ("ctf/amp_contrast", "f4"), ("ctf/df1_A", "f4"), ("ctf/df2_A", "f4"),
            ("ctf/df_angle_rad", "f4"), ("ctf/phase_shift_rad", "f4"), ("ctf/scale", "f4"),
            ("ctf/scale_const", "f4"), ("ctf/bfactor", "f4"), ("ctf/shift_A", "f4", (2,)),
            ("ctf/tilt_A", "f4", (2,)), ("ctf/trefoil_A", "f4", (2,)), ("ctf/tetra_A", "f4", (4,)),
            ("ctf/anisomag", "f4", (4,)), ("location/micrograph_uid", "u8"), ("location/exp_group_id", "u4"),
            ("location/micrograph_path", "O"), ("location/micrograph_shape", "u4", (2,)),
            ("location/micrograph_psize_A", "f4"), ("location/center_x_frac", "f4"),
            ("location/center_y_frac", "f4"),
        ]
        if poses:
            fields += [
                ("alignments3D/split", "u4"), ("alignments3D/shift", "f4", (2,)), ("alignments3D/pose", "f4", (3,)),
                ("alignments3D/psize_A", "f4"), ("alignments3D/error", "f4"), ("alignments3D/alpha", "f4"),
                ("alignments3D/class_posterior", "f4"), ("alignments3D/class", "u4"),
            ]
        d = Dataset.allocate(n, fields)
        d["uid"] = g["uid"].to_numpy(np.uint64)
        d["blob/path"] = np.asarray(list(stack_o), dtype=object)
        d["blob/idx"] = idx_o.astype(np.uint32)
        d["blob/shape"] = np.tile([box, box], (n, 1))
        d["blob/psize_A"] = psize
        d["blob/sign"] = 1.0
        d["ctf/type"] = np.asarray(["imported"] * n, dtype=object)
        d["ctf/exp_group_id"] = 1
        d["ctf/accel_kv"] = kv
        d["ctf/cs_mm"] = cs_mm
        d["ctf/amp_contrast"] = w
        d["ctf/df1_A"] = df1
        d["ctf/df2_A"] = df2
        d["ctf/df_angle_rad"] = dfang
        d["ctf/phase_shift_rad"] = 0.0
        d["ctf/scale"] = 1.0
        d["ctf/scale_const"] = 0.0
        d["ctf/bfactor"] = bfac
        d["ctf/anisomag"] = np.tile([1.0, 0.0, 0.0, 1.0], (n, 1))
        d["location/micrograph_uid"] = g["micrograph_uid"].to_numpy(np.uint64)
        d["location/exp_group_id"] = 1
        d["location/micrograph_path"] = np.asarray(
            [f"J2/motioncorrected/{int(u)}_mic_{m_i:04d}_patch_aligned_doseweighted.mrc"
             for u, m_i in zip(g["micrograph_uid"], mic_o)], dtype=object)
        d["location/micrograph_shape"] = np.tile([mic_ny, mic_nx], (n, 1))
        d["location/micrograph_psize_A"] = psize
        d["location/center_x_frac"] = cx / mic_nx
        d["location/center_y_frac"] = cy / mic_ny
        if poses:
            d["alignments3D/split"] = np.arange(n) % 2
            d["alignments3D/shift"] = shift
            d["alignments3D/pose"] = pose
            d["alignments3D/psize_A"] = psize
            d["alignments3D/alpha"] = 1.0
            d["alignments3D/class_posterior"] = 1.0
            d["alignments3D/class"] = 0
        d.save(os.path.join(args.outdir, "particles.cs"))

    uid = gt["uid"].to_numpy(np.uint64)
    dup_of = gt["duplicate_of"].to_numpy(np.uint64)
    is_dup = gt["is_duplicate"].to_numpy() == 1
    originals = set(int(u) for u in dup_of[is_dup])
    in_pair = np.asarray([bool(is_dup[i]) or int(uid[i]) in originals for i in range(n)])
    with open(os.path.join(args.outdir, "truth.csv"), "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["row", "uid", "sim_row", "class", "is_junk", "is_duplicate", "duplicate_of",
                     "in_duplicate_pair", "micrograph", "image_name"])
        for r, i in enumerate(order):
            wr.writerow([r, int(uid[i]), int(i), int(cls[i]), int(gt["is_junk"].iat[i]), int(is_dup[i]),
                         int(dup_of[i]), int(in_pair[i]), int(mic[i]), names[r]])
    what = " + ".join(sorted(f"particles.{f}" for f in formats))
    print(f"wrote {what}, {len({p for p, _ in groups})} stacks and truth.csv to {args.outdir} "
          f"({n} particles, {len(mic_index)} micrographs, {mode}, order {args.order}, poses {'yes' if poses else 'no'})")


if __name__ == "__main__":
    main()
