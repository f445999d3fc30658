//! The M-step sums of [`super::PlaneDevice`]: numerator spectra and CTF² denominators per
//! class, half set and rotation, added into resident f64 sums (layouts in `plane.cu`).

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{gpu_err, int, launch_for, sgemm, BlockScores, PlaneDevice, PlaneSums, Sums};
use crate::error::{Error, Result};

impl PlaneDevice {
    /// Adds a scored block's M-step sums at responsibilities `probs` (`nb × K`, device
    /// order) to the resident sums; returns Σ_r c per particle and class (`nb × K`): the
    /// weight each (particle, class) adds. `best_only`: at the best pose of each class only.
    pub fn accumulate_block(
        &self,
        sc: &BlockScores,
        probs: &[f64],
        best_only: bool,
    ) -> Result<Vec<f64>> {
        let (k, r, t, l, nb) = (self.k, self.r, self.t, self.len, sc.nb);
        if probs.len() != nb * k {
            return Err(Error::Internal("plane accumulate: probabilities".into()));
        }
        if nb == 0 {
            return Ok(Vec::new());
        }
        let kr = k * r;
        let st = &self.stream;
        let probs_d = st
            .clone_htod(probs)
            .map_err(|e| gpu_err("copy to device", e))?;
        let (nbi, nti, ri, ki, li) = (
            int(nb, "block")?,
            int(t, "shifts")?,
            int(r, "rotations")?,
            int(k, "classes")?,
            int(l, "plane")?,
        );
        let bo = best_only as i32;
        let mut a = self.alloc::<f32>(nb * t * kr)?;
        let mut cw = self.alloc::<f32>(nb * r * 2 * k)?;
        let mut lb = st.launch_builder(&self.f[2]);
        lb.arg(&mut a)
            .arg(&mut cw)
            .arg(&sc.weights)
            .arg(&probs_d)
            .arg(&sc.best)
            .arg(&bo)
            .arg(&nbi)
            .arg(&nti)
            .arg(&ri)
            .arg(&ki);
        // SAFETY: plane_weights' signature; A and G hold nb·T·K·R, Cw nb·R·2K, probs and best nb·K.
        unsafe { lb.launch(launch_for(nb * k * r)?) }.map_err(|e| gpu_err("plane_weights", e))?;
        let mut kept = self.alloc::<f64>(nb * k)?;
        let mut lb = st.launch_builder(&self.f[3]);
        lb.arg(&mut kept).arg(&cw).arg(&nbi).arg(&ri).arg(&ki);
        // SAFETY: plane_kept's signature; kept holds nb·K, Cw nb·R·2K.
        unsafe { lb.launch(launch_for(nb * k)?) }.map_err(|e| gpu_err("plane_kept", e))?;
        let mut y = self.alloc::<f32>(nb * t * 2 * l)?;
        let mut lb = st.launch_builder(&self.f[4]);
        lb.arg(&mut y)
            .arg(&sc.spectra)
            .arg(&sc.ctf)
            .arg(&sc.has_ctf)
            .arg(&self.freq)
            .arg(&self.ramps)
            .arg(&nbi)
            .arg(&nti)
            .arg(&li);
        // SAFETY: plane_shifted's signature; Y holds nb·T·2L, spectra nb·L float2, freq 2L,
        // ramps T·L float2.
        unsafe { lb.launch(launch_for(nb * l)?) }.map_err(|e| gpu_err("plane_shifted", e))?;
        let mut e = self.alloc::<f32>(nb * r * l)?;
        let mut lb = st.launch_builder(&self.f[5]);
        lb.arg(&mut e)
            .arg(&sc.ctf)
            .arg(&sc.has_ctf)
            .arg(&self.freq)
            .arg(&self.inside)
            .arg(&self.psi)
            .arg(&nbi)
            .arg(&ri)
            .arg(&li);
        // SAFETY: plane_ctf2's signature; E holds nb·R·L, the grid arrays L entries, psi R.
        unsafe { lb.launch(launch_for(nb * r * l)?) }.map_err(|e| gpu_err("plane_ctf2", e))?;
        let mut guard = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(Sums {
                num: self.alloc::<f64>(2 * kr * 2 * l)?,
                den: self.alloc::<f64>(2 * 2 * k * l)?,
                scratch: self.alloc::<f32>((kr * 2 * l).max(2 * k * l))?,
            });
        }
        let sums = guard.as_mut().expect("just set");
        for (hs, lo, hi) in [(0, 0, sc.n_half0), (1, sc.n_half0, nb)] {
            if lo == hi {
                continue;
            }
            let nh = hi - lo;
            let a_h = a.slice(lo * t * kr..hi * t * kr);
            let y_h = y.slice(lo * t * 2 * l..hi * t * 2 * l);
            {
                let mut s = sums.scratch.slice_mut(0..kr * 2 * l);
                sgemm(&self.blas, true, (kr, 2 * l, nh * t), &a_h, &y_h, &mut s)?;
            }
            self.add_into(&mut sums.num, hs * kr * 2 * l, &sums.scratch, kr * 2 * l)?;
            let c_h = cw.slice(lo * r * 2 * k..hi * r * 2 * k);
            let e_h = e.slice(lo * r * l..hi * r * l);
            {
                let mut s = sums.scratch.slice_mut(0..2 * k * l);
                sgemm(&self.blas, true, (2 * k, l, nh * r), &c_h, &e_h, &mut s)?;
            }
            self.add_into(&mut sums.den, hs * 2 * k * l, &sums.scratch, 2 * k * l)?;
        }
        drop(guard);
        st.clone_dtoh(&kept)
            .map_err(|e| gpu_err("copy from device", e))
    }

    /// `acc[at..at + n] += part[..n]`.
    fn add_into(
        &self,
        acc: &mut CudaSlice<f64>,
        at: usize,
        part: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let ni = int(n, "sums")?;
        let mut dst = acc.slice_mut(at..at + n);
        let mut lb = self.stream.launch_builder(&self.f[6]);
        lb.arg(&mut dst).arg(part).arg(&ni);
        // SAFETY: plane_add's signature; dst and part hold at least n values.
        unsafe { lb.launch(launch_for(n)?) }.map_err(|e| gpu_err("plane_add", e))?;
        Ok(())
    }

    /// The sums accumulated since the last call (none if no block was accumulated), reset.
    pub fn take_sums(&self) -> Result<Option<PlaneSums>> {
        let taken = self.sums.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(s) = taken else { return Ok(None) };
        let num = self
            .stream
            .clone_dtoh(&s.num)
            .map_err(|e| gpu_err("copy from device", e))?;
        let den = self
            .stream
            .clone_dtoh(&s.den)
            .map_err(|e| gpu_err("copy from device", e))?;
        Ok(Some(PlaneSums { num, den }))
    }
}
