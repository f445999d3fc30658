//! Unit conversions between STAR and the table, and the shortest decimal forms written on
//! export: an f32 as its shortest decimal, a converted value (radians → degrees, px → Å)
//! with the fewest digits that convert back to the same f32, and Euler angles of a pose.

use std::fmt::Write as _;

use crate::numerics::rotation::{euler_deg_to_pose, pose_to_euler_deg};

/// f64 values as f32.
pub(super) fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Degrees → f32 radians.
pub(super) fn rad32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x.to_radians() as f32).collect()
}

/// The f64 with the shortest decimal form that `ok` accepts (falls back to `x`).
pub(super) fn short_decimal(x: f64, ok: impl Fn(f64) -> bool) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let mut s = String::new();
    let mut cand = |digits: usize| {
        s.clear();
        let _ = write!(s, "{:.*e}", digits - 1, x);
        s.parse::<f64>().unwrap_or(x)
    };
    if !ok(cand(17)) {
        return x;
    }
    // Binary search for the fewest significant digits that `ok` accepts (more digits are
    // closer to x, so acceptance is monotone in practice; the result is accepted either way).
    let (mut lo, mut hi) = (1, 17);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if ok(cand(mid)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    cand(lo)
}

/// An f32 as the f64 of its shortest decimal form (writes as `1.06`, not `1.059999942779541`).
pub(super) fn f32_decimal(x: f32) -> f64 {
    if !x.is_finite() {
        return x as f64;
    }
    let mut s = String::new();
    let _ = write!(s, "{x}");
    s.parse().unwrap_or(x as f64)
}

/// f32 radians as the shortest degrees that read back (deg → rad → f32) as the same value.
pub(super) fn deg_decimal(rad: f32) -> f64 {
    short_decimal((rad as f64).to_degrees(), |d| d.to_radians() as f32 == rad)
}

/// RELION angles (degrees) of an f32 pose, with the fewest decimals (0 to 9) whose pose is
/// the same f32 pose to within one f32 ulp of its largest component (30, not
/// 29.99999912453807); full precision when no rounding is that close.
pub(super) fn pose_euler_deg(p: [f32; 3]) -> [f64; 3] {
    let pd = p.map(|x| x as f64);
    let e = pose_to_euler_deg(pd);
    let big = pd.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let tol = f32::EPSILON as f64 * big.max(f32::MIN_POSITIVE as f64);
    let mut s = String::new();
    for decimals in 0..=9 {
        let r = e.map(|a| {
            s.clear();
            let _ = write!(s, "{a:.decimals$}");
            s.parse::<f64>().unwrap_or(a)
        });
        let q = euler_deg_to_pose(r[0], r[1], r[2]);
        if (0..3).all(|k| ((q[k] as f32) as f64 - pd[k]).abs() <= tol) {
            return r;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_the_shortest_that_read_back() {
        assert_eq!(f32_decimal(1.06), 1.06);
        assert_eq!(f32_decimal(f32::INFINITY), f64::INFINITY);
        assert_eq!(deg_decimal(30f64.to_radians() as f32), 30.0);
        assert_eq!(rad32(&[30.0]), [30f64.to_radians() as f32]);
        let x = 1.3f32 as f64 * 0.1;
        assert_eq!(short_decimal(x, |y| y as f32 == x as f32), 0.13);
        let p = euler_deg_to_pose(30.0, 60.0, -90.0).map(|x| x as f32);
        assert_eq!(pose_euler_deg(p), [30.0, 60.0, -90.0]);
    }
}
