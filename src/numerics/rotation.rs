//! Rotations: RELION's ZYZ Euler angles (rot, tilt, psi), 3×3 rotation matrices, rotation
//! vectors (axis-angle), and the in-plane (2D) rotations used for 2D classification.
//!
//! Conventions (all implemented here and nowhere else):
//!
//! - **RELION Euler matrix.** For (rot, tilt, psi) = (α, β, γ), RELION's
//!   `Euler_angles2matrix` gives `A = Rz(γ) · Ry(β) · Rz(α)` with the *passive* elementary
//!   rotations `Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`,
//!   `Ry(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]`, i.e.
//!   ```text
//!   A = [ cγ cβ cα − sγ sα    cγ cβ sα + sγ cα   −cγ sβ ]
//!       [ −sγ cβ cα − cγ sα  −sγ cβ sα + cγ cα    sγ sβ ]
//!       [ sβ cα               sβ sα               cβ    ]
//!   ```
//!   RELION projects a reference with `A` (a 3D frequency `A^T · (x, y, 0)` of the reference
//!   is sampled for the 2D frequency (x, y) of the particle).
//! - **Rotation vectors** (`rotvec_to_matrix`, `matrix_to_rotvec`) are the standard ones
//!   (as scipy's `Rotation.from_rotvec`): `R = exp([v]×) = I + sinθ K + (1 − cosθ) K²`,
//!   θ = |v|, K the cross-product matrix of v/θ.
//! - **Poses** (`alignments3D/pose`, CryoSPARC's field) are rotation vectors `p` with
//!   `A = rotvec_to_matrix(p)ᵀ`, i.e. `p = −matrix_to_rotvec(A)`. This is the convention of
//!   pyem's `csparc2star` (`A = expmap(p)`, whose `expmap` returns the transposed Rodrigues
//!   matrix), which is how CryoSPARC poses and RELION angles are exchanged in practice. With
//!   it, rot = tilt = 0 gives `p = (0, 0, psi)`, the same angle as a 2D pose.
//! - **2D poses** (`alignments2D/pose`) are RELION's psi in radians. The in-plane matrix of
//!   psi is the upper-left 2×2 block of `A(0, 0, psi)`: `[[c, s], [−s, c]]`
//!   ([`psi_matrix2d`]). RELION's `rotation2DMatrix(ang)` is its transpose `[[c, −s], [s, c]]`
//!   ([`rotation2d`]).
//!
//! Matrices are row-major `[[f64; 3]; 3]`; angles in names say their unit.

/// A 3×3 matrix, row-major (`m[row][col]`).
pub type Mat3 = [[f64; 3]; 3];
/// A 2×2 matrix, row-major.
pub type Mat2 = [[f64; 2]; 2];

/// `FLT_EPSILON`, which RELION's `Euler_matrix2angles` uses for its gimbal-lock tests.
const FLT_EPSILON: f64 = f32::EPSILON as f64;

/// RELION's `Euler_angles2matrix(rot, tilt, psi)` (angles in degrees); see the module doc for
/// the formula.
pub fn euler_deg_to_matrix(rot_deg: f64, tilt_deg: f64, psi_deg: f64) -> Mat3 {
    let (sa, ca) = rot_deg.to_radians().sin_cos();
    let (sb, cb) = tilt_deg.to_radians().sin_cos();
    let (sg, cg) = psi_deg.to_radians().sin_cos();
    let cc = cb * ca;
    let cs = cb * sa;
    let sc = sb * ca;
    let ss = sb * sa;
    [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
}

/// RELION's `Euler_matrix2angles`: (rot, tilt, psi) in degrees with tilt in [0, 180] and rot,
/// psi in (−180, 180]. When |sin tilt| ≤ 16·FLT_EPSILON (gimbal lock, tilt ≈ 0 or 180) RELION
/// sets rot = 0 and puts the whole in-plane rotation into psi; so does this.
pub fn matrix_to_euler_deg(a: &Mat3) -> [f64; 3] {
    let abs_sb = (a[0][2] * a[0][2] + a[1][2] * a[1][2]).sqrt();
    let (alpha, beta, gamma);
    if abs_sb > 16.0 * FLT_EPSILON {
        gamma = a[1][2].atan2(-a[0][2]);
        alpha = a[2][1].atan2(a[2][0]);
        let sign_sb = if gamma.sin().abs() < FLT_EPSILON {
            sgn(-a[0][2] / gamma.cos())
        } else if gamma.sin() > 0.0 {
            sgn(a[1][2])
        } else {
            -sgn(a[1][2])
        };
        beta = (sign_sb * abs_sb).atan2(a[2][2]);
    } else if sgn(a[2][2]) > 0.0 {
        // A rotation about z only.
        alpha = 0.0;
        beta = 0.0;
        gamma = (-a[1][0]).atan2(a[0][0]);
    } else {
        alpha = 0.0;
        beta = std::f64::consts::PI;
        gamma = a[1][0].atan2(-a[0][0]);
    }
    [alpha.to_degrees(), beta.to_degrees(), gamma.to_degrees()]
}

/// RELION's `SGN`: 1 for x ≥ 0, −1 otherwise.
fn sgn(x: f64) -> f64 {
    if x >= 0.0 {
        1.0
    } else {
        -1.0
    }
}

/// The rotation matrix `exp([v]×)` of rotation vector `v` (radians), by Rodrigues' formula.
pub fn rotvec_to_matrix(v: [f64; 3]) -> Mat3 {
    let theta2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    let theta = theta2.sqrt();
    // sinθ/θ and (1 − cosθ)/θ², with Taylor series near 0 to avoid 0/0.
    let (a, b) = if theta < 1e-4 {
        (1.0 - theta2 / 6.0, 0.5 - theta2 / 24.0)
    } else {
        (theta.sin() / theta, (1.0 - theta.cos()) / theta2)
    };
    let [x, y, z] = v;
    // R = I + a [v]× + b [v]×², [v]× = [[0, −z, y], [z, 0, −x], [−y, x, 0]].
    [
        [
            1.0 - b * (y * y + z * z),
            -a * z + b * x * y,
            a * y + b * x * z,
        ],
        [
            a * z + b * x * y,
            1.0 - b * (x * x + z * z),
            -a * x + b * y * z,
        ],
        [
            -a * y + b * x * z,
            a * x + b * y * z,
            1.0 - b * (x * x + y * y),
        ],
    ]
}

/// The rotation vector (radians, angle in [0, π]) of rotation matrix `m`, the inverse of
/// [`rotvec_to_matrix`]. Goes through a unit quaternion (Shepperd's method), which is
/// well conditioned at every angle including 0 and π.
pub fn matrix_to_rotvec(m: &Mat3) -> [f64; 3] {
    let [w, x, y, z] = matrix_to_quat(m);
    // q = (cos θ/2, sin θ/2 · axis) with w ≥ 0, so θ ∈ [0, π].
    let s = (x * x + y * y + z * z).sqrt();
    let theta = 2.0 * s.atan2(w);
    // θ / sin(θ/2); near 0 use the series 2/w · (1 + s²/(6 w²)).
    let k = if s < 1e-8 {
        2.0 / w * (1.0 + s * s / (6.0 * w * w))
    } else {
        theta / s
    };
    [k * x, k * y, k * z]
}

/// Unit quaternion (w, x, y, z), w ≥ 0, of rotation matrix `m` (Shepperd's method).
fn matrix_to_quat(m: &Mat3) -> [f64; 4] {
    let tr = m[0][0] + m[1][1] + m[2][2];
    let mut q = if tr >= m[0][0] && tr >= m[1][1] && tr >= m[2][2] {
        let w = 0.5 * (1.0 + tr).max(0.0).sqrt();
        let f = 0.25 / w;
        [
            w,
            (m[2][1] - m[1][2]) * f,
            (m[0][2] - m[2][0]) * f,
            (m[1][0] - m[0][1]) * f,
        ]
    } else if m[0][0] >= m[1][1] && m[0][0] >= m[2][2] {
        let x = 0.5 * (1.0 + 2.0 * m[0][0] - tr).max(0.0).sqrt();
        let f = 0.25 / x;
        [
            (m[2][1] - m[1][2]) * f,
            x,
            (m[0][1] + m[1][0]) * f,
            (m[0][2] + m[2][0]) * f,
        ]
    } else if m[1][1] >= m[2][2] {
        let y = 0.5 * (1.0 + 2.0 * m[1][1] - tr).max(0.0).sqrt();
        let f = 0.25 / y;
        [
            (m[0][2] - m[2][0]) * f,
            (m[0][1] + m[1][0]) * f,
            y,
            (m[1][2] + m[2][1]) * f,
        ]
    } else {
        let z = 0.5 * (1.0 + 2.0 * m[2][2] - tr).max(0.0).sqrt();
        let f = 0.25 / z;
        [
            (m[1][0] - m[0][1]) * f,
            (m[0][2] + m[2][0]) * f,
            (m[1][2] + m[2][1]) * f,
            z,
        ]
    };
    if q[0] < 0.0 {
        q = [-q[0], -q[1], -q[2], -q[3]];
    }
    let n = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt();
    [q[0] / n, q[1] / n, q[2] / n, q[3] / n]
}

/// The transpose of `m` (the inverse of a rotation).
pub fn transpose(m: &Mat3) -> Mat3 {
    let mut t = [[0.0; 3]; 3];
    for (i, row) in m.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j][i] = v;
        }
    }
    t
}

/// Matrix product `a · b`.
pub fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

/// The pose (CryoSPARC `alignments3D/pose` convention, see the module doc) of RELION's
/// matrix `a`: `p = matrix_to_rotvec(aᵀ)`.
pub fn matrix_to_pose(a: &Mat3) -> [f64; 3] {
    matrix_to_rotvec(&transpose(a))
}

/// RELION's matrix of pose `p`: `A = rotvec_to_matrix(p)ᵀ`.
pub fn pose_to_matrix(p: [f64; 3]) -> Mat3 {
    transpose(&rotvec_to_matrix(p))
}

/// Pose (radians) of RELION Euler angles (degrees).
pub fn euler_deg_to_pose(rot_deg: f64, tilt_deg: f64, psi_deg: f64) -> [f64; 3] {
    matrix_to_pose(&euler_deg_to_matrix(rot_deg, tilt_deg, psi_deg))
}

/// RELION Euler angles (degrees, as [`matrix_to_euler_deg`] normalises them) of a pose.
pub fn pose_to_euler_deg(p: [f64; 3]) -> [f64; 3] {
    matrix_to_euler_deg(&pose_to_matrix(p))
}

/// The in-plane matrix of RELION's psi (radians): the upper-left block of
/// `euler_deg_to_matrix(0, 0, psi)`, `[[c, s], [−s, c]]`.
pub fn psi_matrix2d(psi_rad: f64) -> Mat2 {
    let (s, c) = psi_rad.sin_cos();
    [[c, s], [-s, c]]
}

/// RELION's `rotation2DMatrix(ang)` (ang in radians here): `[[c, −s], [s, c]]`, the
/// counter-clockwise rotation of a point by `ang`; the transpose of [`psi_matrix2d`].
pub fn rotation2d(ang_rad: f64) -> Mat2 {
    let (s, c) = ang_rad.sin_cos();
    [[c, -s], [s, c]]
}

/// The angle (radians, in (−π, π]) of a 2D rotation matrix built by [`rotation2d`].
pub fn rotation2d_angle(m: &Mat2) -> f64 {
    m[1][0].atan2(m[0][0])
}

/// `m · (x, y)`.
pub fn apply2d(m: &Mat2, x: f64, y: f64) -> (f64, f64) {
    (m[0][0] * x + m[0][1] * y, m[1][0] * x + m[1][1] * y)
}

/// `angle` wrapped into (−π, π].
pub fn wrap_angle_rad(angle: f64) -> f64 {
    let tau = std::f64::consts::TAU;
    let mut a = angle.rem_euclid(tau);
    if a > std::f64::consts::PI {
        a -= tau;
    }
    a
}

/// `angle` wrapped into (−180, 180].
pub fn wrap_angle_deg(angle: f64) -> f64 {
    let mut a = angle.rem_euclid(360.0);
    if a > 180.0 {
        a -= 360.0;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn max_diff(a: &Mat3, b: &Mat3) -> f64 {
        let mut d: f64 = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                d = d.max((a[i][j] - b[i][j]).abs());
            }
        }
        d
    }

    fn random_euler(rng: &mut ChaCha8Rng) -> [f64; 3] {
        [
            rng.gen_range(-180.0..180.0),
            rng.gen_range(0.0..180.0),
            rng.gen_range(-180.0..180.0),
        ]
    }

    fn is_rotation(m: &Mat3) -> bool {
        let i = matmul(m, &transpose(m));
        let id = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        max_diff(&i, &id) < 1e-12 && (det - 1.0).abs() < 1e-12
    }

    #[test]
    fn euler_matrix_round_trip_random() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..2000 {
            let [rot, tilt, psi] = random_euler(&mut rng);
            let a = euler_deg_to_matrix(rot, tilt, psi);
            assert!(is_rotation(&a));
            let [r2, t2, p2] = matrix_to_euler_deg(&a);
            // tilt in (0, 180) away from gimbal lock: the angles themselves come back.
            assert!(wrap_angle_deg(r2 - rot).abs() < 1e-4, "{rot} {r2}");
            assert!((t2 - tilt).abs() < 1e-4, "{tilt} {t2}");
            assert!(wrap_angle_deg(p2 - psi).abs() < 1e-4, "{psi} {p2}");
            assert!(max_diff(&euler_deg_to_matrix(r2, t2, p2), &a) < 1e-6);
        }
    }

    #[test]
    fn negative_tilt_comes_back_as_equivalent_angles() {
        // (rot, −tilt, psi) is the same rotation as (rot + 180, tilt, psi − 180).
        let a = euler_deg_to_matrix(30.0, -40.0, 50.0);
        let [r, t, p] = matrix_to_euler_deg(&a);
        assert!((r - -150.0).abs() < 1e-9, "{r}");
        assert!((t - 40.0).abs() < 1e-9, "{t}");
        assert!((p - -130.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn known_values_90_about_z() {
        // rot = 90: A = Rz_passive(90) = [[0, 1, 0], [−1, 0, 0], [0, 0, 1]].
        let a = euler_deg_to_matrix(90.0, 0.0, 0.0);
        let want = [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
        assert!(max_diff(&a, &want) < 1e-15);
        // Same matrix from psi = 90 (rot and psi are both about z when tilt = 0).
        assert!(max_diff(&euler_deg_to_matrix(0.0, 0.0, 90.0), &want) < 1e-15);
        // Its rotation vector is −90° about z (it is the transpose of the active rotation).
        let v = matrix_to_rotvec(&a);
        let h = std::f64::consts::FRAC_PI_2;
        assert!((v[0]).abs() < 1e-15 && (v[1]).abs() < 1e-15 && (v[2] + h).abs() < 1e-15);
        // And the pose is +90° about z, the same angle as a 2D pose psi = 90°.
        let p = euler_deg_to_pose(0.0, 0.0, 90.0);
        assert!(p[0].abs() < 1e-15 && p[1].abs() < 1e-15 && (p[2] - h).abs() < 1e-15);
        // tilt = 90 about y: A = [[0, 0, −1], [0, 1, 0], [1, 0, 0]].
        let b = euler_deg_to_matrix(0.0, 90.0, 0.0);
        let want_b = [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];
        assert!(max_diff(&b, &want_b) < 1e-15);
        let [r, t, p] = matrix_to_euler_deg(&b);
        assert!(r.abs() < 1e-12 && (t - 90.0).abs() < 1e-12 && p.abs() < 1e-12);
    }

    #[test]
    fn gimbal_lock_puts_everything_into_psi() {
        // tilt = 0: only rot + psi is defined; RELION returns rot = 0, psi = rot + psi.
        let a = euler_deg_to_matrix(30.0, 0.0, 40.0);
        let [r, t, p] = matrix_to_euler_deg(&a);
        assert_eq!(r, 0.0);
        assert_eq!(t, 0.0);
        assert!((p - 70.0).abs() < 1e-9, "{p}");
        // tilt = 180: only psi − rot is defined.
        let b = euler_deg_to_matrix(30.0, 180.0, 40.0);
        let [r, t, p] = matrix_to_euler_deg(&b);
        assert_eq!(r, 0.0);
        assert_eq!(t, 180.0);
        assert!(max_diff(&euler_deg_to_matrix(r, t, p), &b) < 1e-12);
        assert!((p - 10.0).abs() < 1e-9, "{p}");
        // A tilt just below RELION's threshold is treated as 0.
        let c = euler_deg_to_matrix(10.0, 1e-5, 20.0);
        let [r, t, p] = matrix_to_euler_deg(&c);
        assert_eq!((r, t), (0.0, 0.0));
        assert!((p - 30.0).abs() < 1e-6);
    }

    #[test]
    fn rotvec_round_trip_random_and_edge_angles() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut cases: Vec<[f64; 3]> = (0..2000)
            .map(|_| {
                let axis: [f64; 3] = [
                    rng.gen_range(-1.0..1.0),
                    rng.gen_range(-1.0..1.0),
                    rng.gen_range(-1.0..1.0),
                ];
                let n = (axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2]).sqrt();
                let th = rng.gen_range(0.0..std::f64::consts::PI);
                [axis[0] / n * th, axis[1] / n * th, axis[2] / n * th]
            })
            .collect();
        cases.push([0.0, 0.0, 0.0]);
        cases.push([1e-9, -2e-9, 3e-9]);
        cases.push([0.0, 0.0, std::f64::consts::PI - 1e-9]);
        cases.push([0.3, -0.4, 0.5]);
        for v in cases {
            let m = rotvec_to_matrix(v);
            assert!(is_rotation(&m));
            let w = matrix_to_rotvec(&m);
            for k in 0..3 {
                assert!((w[k] - v[k]).abs() < 1e-9, "{v:?} {w:?}");
            }
        }
        // θ = π exactly: v and −v are the same rotation; either is fine, the matrix must match.
        let v = [0.0, std::f64::consts::PI, 0.0];
        let m = rotvec_to_matrix(v);
        assert!(max_diff(&rotvec_to_matrix(matrix_to_rotvec(&m)), &m) < 1e-12);
    }

    #[test]
    fn pose_euler_round_trip_random() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..1000 {
            let [rot, tilt, psi] = random_euler(&mut rng);
            let p = euler_deg_to_pose(rot, tilt, psi);
            assert!(max_diff(&pose_to_matrix(p), &euler_deg_to_matrix(rot, tilt, psi)) < 1e-12);
            let [r2, t2, p2] = pose_to_euler_deg(p);
            assert!(wrap_angle_deg(r2 - rot).abs() < 1e-4);
            assert!((t2 - tilt).abs() < 1e-4);
            assert!(wrap_angle_deg(p2 - psi).abs() < 1e-4);
        }
    }

    #[test]
    fn rotvec_matches_rodrigues_known_value() {
        // 90° about x (active): y → z.
        let m = rotvec_to_matrix([std::f64::consts::FRAC_PI_2, 0.0, 0.0]);
        let want = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];
        assert!(max_diff(&m, &want) < 1e-15);
    }

    #[test]
    fn in_plane_helpers() {
        let h = std::f64::consts::FRAC_PI_2;
        let r = rotation2d(h);
        let (x, y) = apply2d(&r, 1.0, 0.0);
        assert!(x.abs() < 1e-15 && (y - 1.0).abs() < 1e-15);
        assert!((rotation2d_angle(&rotation2d(2.0)) - 2.0).abs() < 1e-15);
        let a = euler_deg_to_matrix(0.0, 0.0, 33.0);
        let p = psi_matrix2d(33f64.to_radians());
        for i in 0..2 {
            for j in 0..2 {
                assert!((a[i][j] - p[i][j]).abs() < 1e-15);
                assert!((p[i][j] - rotation2d(33f64.to_radians())[j][i]).abs() < 1e-15);
            }
        }
        assert!((wrap_angle_rad(3.0 * std::f64::consts::PI) - std::f64::consts::PI).abs() < 1e-12);
        assert!((wrap_angle_rad(-3.5) - (-3.5 + std::f64::consts::TAU)).abs() < 1e-12);
        assert_eq!(wrap_angle_deg(-180.0), 180.0);
        assert_eq!(wrap_angle_deg(190.0), -170.0);
    }
}
