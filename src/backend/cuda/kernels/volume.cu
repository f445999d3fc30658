// 3D classification on the device (host side: src/backend/cuda/volume.rs; the CPU
// reference: src/classify3d/estep.rs, src/classify3d/model.rs, src/numerics/project3d.rs).
//
// Layouts and conventions, those of the CPU code:
// - A class volume is the padded half-space spectrum of side m = pad·n (complex float):
//   voxel (z, y, x), origin at 0, z and y in FFT order, 0 ≤ x ≤ m/2, at flat index
//   (z·m + y)·(m/2+1) + x; volume k starts at k·V, V = m·m·(m/2+1).
// - A particle spectrum is the working half plane n × (n/2+1), row-major; row i holds
//   ky = fftfreq(i, n), column j holds kx = j.
// - Poses are 3×3 row-major doubles A; the 2D frequency (fx, fy) of a slice lies at
//   Aᵀ(fx, fy, 0) in 3D (padded units: fx = pad·kx).
// - Trilinear interpolation, the Hermitian flip of points with x < 0 and the centring sign
//   (−1)^(kx+ky) are those of project3d.rs (`corners`, `project_many`, `contributions`).

#define VOL_MIN_WEIGHT 1e-3

// Aᵀ (fx, fy, 0).
__device__ __forceinline__ void vol_slice_point(const double* a, double fx, double fy, double* p) {
    p[0] = a[0] * fx + a[3] * fy;
    p[1] = a[1] * fx + a[4] * fy;
    p[2] = a[2] * fx + a[5] * fy;
}

// The 8 trilinear neighbours of p (x ≥ 0) in the half-space grid of side m: flat indices
// and weights, weight 0 (index 0) for neighbours outside the grid (project3d.rs `corners`).
__device__ __forceinline__ void vol_corners(const double* p, int m, i64* idx, double* w) {
    i64 mi = m, h = m / 2 + 1;
    i64 x0 = (i64)floor(p[0]), y0 = (i64)floor(p[1]), z0 = (i64)floor(p[2]);
    double fx = p[0] - (double)x0, fy = p[1] - (double)y0, fz = p[2] - (double)z0;
    double wx[2] = {1.0 - fx, fx}, wy[2] = {1.0 - fy, fy}, wz[2] = {1.0 - fz, fz};
    for (int c = 0; c < 8; ++c) {
        int dx = c & 1, dy = (c >> 1) & 1, dz = (c >> 2) & 1;
        i64 x = x0 + dx, y = y0 + dy, z = z0 + dz;
        idx[c] = 0;
        w[c] = 0.0;
        if (x < h && (y < 0 ? -y : y) < mi / 2 && (z < 0 ? -z : z) < mi / 2) {
            i64 zw = z < 0 ? z + mi : z, yw = y < 0 ? y + mi : y;
            idx[c] = (zw * mi + yw) * h + x;
            w[c] = wx[dx] * wy[dy] * wz[dz];
        }
    }
}

// The central-slice value of volume `vol` at working frequency (kx, ky) for pose a, zero
// beyond shell k_max (kx² + ky² > k_max²), as `Projector::project_many` computes it.
__device__ __forceinline__ float2 vol_slice_value(const float2* vol, const double* a, int kx,
                                                  int ky, int pad, int m, int k_max) {
    if (kx * kx + ky * ky > k_max * k_max) {
        return make_float2(0.0f, 0.0f);
    }
    double p[3];
    vol_slice_point(a, (double)kx * pad, (double)ky * pad, p);
    bool conj = p[0] < 0.0;
    if (conj) {
        p[0] = -p[0];
        p[1] = -p[1];
        p[2] = -p[2];
    }
    i64 idx[8];
    double w[8];
    vol_corners(p, m, idx, w);
    float2 acc = make_float2(0.0f, 0.0f);
    for (int c = 0; c < 8; ++c) {
        float2 v = vol[idx[c]];
        float t = (float)w[c];
        acc.x += v.x * t;
        acc.y += v.y * t;
    }
    if (conj) {
        acc.y = -acc.y;
    }
    float sign = ((kx + ky) & 1) ? -1.0f : 1.0f;
    return c_scale(acc, sign);
}

// Residual power per particle, class and shell:
//   resid[(j·K + k)·ns + s] = Σ_{c in shell s} w_c·|X_jc − α_j·C_jc·P_k(A_j)_c|²
// (w_c = ½ on the kx = 0 column, 1 elsewhere; shell 0 is 0), summed in increasing c, the
// CPU's order. Coefficients of shell s: shell_coef[shell_start[s] .. shell_start[s+1]].
// One thread per (j, s, k), k fastest (threads of a warp share the particle's geometry).
// The CTF is computed here (`ctf_eval`, as Ctf::eval_f32) at (kx, ky)·freq_step Å⁻¹.
extern "C" __global__ void volume_score(double* resid, const float2* vols, const float2* spectra,
                                        const double* poses, const double* ctfs,
                                        const float* alpha, const int* shell_start,
                                        const int* shell_coef, int has_ctf, double freq_step,
                                        int nb, int nk, int ns, int n, int pad, int k_max) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (i64)nb * ns * nk) {
        return;
    }
    int k = (int)(t % nk);
    i64 js = t / nk;
    int s = (int)(js % ns);
    int j = (int)(js / ns);
    int h = n / 2 + 1, m = n * pad;
    i64 nv = (i64)m * m * (m / 2 + 1);
    double acc = 0.0;
    if (s > 0) {
        const double* a = poses + 9 * (i64)j;
        const float2* x = spectra + (i64)j * n * h;
        const float2* vol = vols + (i64)k * nv;
        float al = alpha[j];
        for (int q = shell_start[s]; q < shell_start[s + 1]; ++q) {
            int c = shell_coef[q];
            int i = c / h, kx = c % h;
            int ky = i < (n + 1) / 2 ? i : i - n;
            float2 pv = vol_slice_value(vol, a, kx, ky, pad, m, k_max);
            float ctf = has_ctf ? ctf_eval(ctfs + CTF_COEFFS * (i64)j, kx * freq_step,
                                           ky * freq_step)
                                : 1.0f;
            float g = al * ctf;
            float2 d = make_float2(x[c].x - pv.x * g, x[c].y - pv.y * g);
            double wc = kx == 0 ? 0.5 : 1.0;
            acc += wc * (double)c_norm2(d);
        }
    }
    resid[((i64)j * nk + k) * ns + s] = acc;
}

// The sums of the per-particle scale fit against one volume, per particle and shell:
//   out[2·(j·ns + s)]     = Σ_{c in s} w_c·Re(conj(M_c)·X_jc)
//   out[2·(j·ns + s) + 1] = Σ_{c in s} w_c·|M_c|²,      M = C_j·P(A_j)
// (the host divides by σ²_s, sums the shells and clamps, as estep::fit_scales). One thread
// per (j, s).
extern "C" __global__ void volume_fit_scale(double* out, const float2* vol, const float2* spectra,
                                            const double* poses, const double* ctfs,
                                            const int* shell_start, const int* shell_coef,
                                            int has_ctf, double freq_step, int nb, int ns, int n,
                                            int pad, int k_max) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (i64)nb * ns) {
        return;
    }
    int s = (int)(t % ns);
    int j = (int)(t / ns);
    int h = n / 2 + 1, m = n * pad;
    double num = 0.0, den = 0.0;
    if (s > 0) {
        const double* a = poses + 9 * (i64)j;
        const float2* x = spectra + (i64)j * n * h;
        for (int q = shell_start[s]; q < shell_start[s + 1]; ++q) {
            int c = shell_coef[q];
            int i = c / h, kx = c % h;
            int ky = i < (n + 1) / 2 ? i : i - n;
            float2 pv = vol_slice_value(vol, a, kx, ky, pad, m, k_max);
            float ctf = has_ctf ? ctf_eval(ctfs + CTF_COEFFS * (i64)j, kx * freq_step,
                                           ky * freq_step)
                                : 1.0f;
            float2 mc = c_scale(pv, ctf);
            double wc = kx == 0 ? 0.5 : 1.0;
            num += wc * (double)(mc.x * x[c].x + mc.y * x[c].y);
            den += wc * (double)c_norm2(mc);
        }
    }
    out[2 * t] = num;
    out[2 * t + 1] = den;
}

// The CTF in double precision, as numerics::ctf::Ctf::eval (the back-projection's C²
// weights use it): scale·sin χ·envelope.
__device__ __forceinline__ double ctf_eval_f64(const double* c, double kx, double ky) {
    double k2 = kx * kx + ky * ky;
    double df_k2 = c[4] * k2 + c[5] * ((kx * kx - ky * ky) * c[6] + 2.0 * kx * ky * c[7]);
    double chi = c[0] * df_k2 - c[1] * k2 * k2 + c[2];
    double env = c[3] != 0.0 ? exp(c[3] * k2) : 1.0;
    return c[8] * sin(chi) * env;
}

// One fixed-point contribution (re, im, C²)·(w1, w1, w2) of voxel `idx` to every class the
// particle has weight ≥ VOL_MIN_WEIGHT in, target (class, half) = 2·class + half.
__device__ __forceinline__ void vol_scatter(u64* acc, i64 nv, i64 idx, float re, float im,
                                            float c2, const double* probs, int nk, int half,
                                            double alpha, double scale) {
    for (int k = 0; k < nk; ++k) {
        double p = probs[k];
        if (p < VOL_MIN_WEIGHT) {
            continue;
        }
        double w1 = p * alpha, w2 = p * alpha * alpha;
        u64* a = acc + 3 * ((i64)(2 * k + half) * nv + idx);
        fx_add(a, w1 * (double)re, scale);
        fx_add(a + 1, w1 * (double)im, scale);
        fx_add(a + 2, w2 * (double)c2, scale);
    }
}

// Back-projection of a block of particles' padded slices (model::backproject with
// PaddedSlice::contributions): point q of particle j at padded frequency pts[2q], pts[2q+1]
// with value vals[j·L + q] (C·X, zero-padded transform, centring sign applied) and weight
// C² (ctf_eval_f64 at (fx, fy)/pad·freq_step_in Å⁻¹, 1 without CTF), placed at
// mats[j·G + g] (= A_j·R_gᵀ, computed on the host) and spread trilinearly; corners on the
// kx = 0 plane also feed their mirror −k with the conjugate. acc holds 2K accumulators of
// V voxels × (re, im, den) as 64-bit fixed point with quantum 1/scale. One thread per
// (j, g, q), q fastest.
extern "C" __global__ void volume_backproject(u64* acc, const float2* vals, const float* pts,
                                              const double* mats, const double* ctfs,
                                              int has_ctf, double freq_step_in,
                                              const double* probs, const double* alpha,
                                              const int* half, double scale, int nb, int np,
                                              int ng, int nk, int m, int pad) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (i64)nb * ng * np) {
        return;
    }
    int q = (int)(t % np);
    i64 jg = t / np;
    int j = (int)(jg / ng);
    const double* pr = probs + (i64)j * nk;
    bool any = false;
    for (int k = 0; k < nk; ++k) {
        any = any || pr[k] >= VOL_MIN_WEIGHT;
    }
    if (!any) {
        return;
    }
    float fx = pts[2 * q], fy = pts[2 * q + 1];
    float c2 = 1.0f;
    if (has_ctf) {
        double c = ctf_eval_f64(ctfs + CTF_COEFFS * (i64)j, (double)fx / pad * freq_step_in,
                                (double)fy / pad * freq_step_in);
        c2 = (float)(c * c);
    }
    float2 v = vals[(i64)j * np + q];
    double p[3];
    vol_slice_point(mats + 9 * jg, (double)fx, (double)fy, p);
    if (p[0] < 0.0) {
        p[0] = -p[0];
        p[1] = -p[1];
        p[2] = -p[2];
        v.y = -v.y;
    }
    i64 idx[8];
    double w[8];
    vol_corners(p, m, idx, w);
    i64 h = m / 2 + 1, mi = m, nv = mi * mi * h;
    for (int c = 0; c < 8; ++c) {
        float tw = (float)w[c];
        if (tw == 0.0f) {
            continue;
        }
        float re = v.x * tw, im = v.y * tw, c2t = c2 * tw;
        vol_scatter(acc, nv, idx[c], re, im, c2t, pr, nk, half[j], alpha[j], scale);
        if (c % 2 == 0 && p[0] < 1.0) {
            // A corner on the kx = 0 plane: its mirror −k gets the conjugate.
            i64 i = idx[c];
            i64 z = i / (mi * h), y = (i / h) % mi;
            i64 zm = (mi - z) % mi, ym = (mi - y) % mi;
            i64 mir = (zm * mi + ym) * h;
            if (mir != i) {
                vol_scatter(acc, nv, mir, re, -im, c2t, pr, nk, half[j], alpha[j], scale);
            }
        }
    }
}

// Adds one block's fixed-point sums into the iteration's resident f64 sums and clears them
// for the next block: sums[t] += (double)(i64)fixed[t] / scale, fixed[t] = 0. One thread
// per element, so each element receives the blocks in block order whatever the threads do
// (the f64 sums are reproducible). `n` = 2K·V·3 elements.
extern "C" __global__ void volume_add_fixed(double* sums, u64* fixed, double scale, i64 n) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) {
        return;
    }
    sums[t] += (double)(i64)fixed[t] / scale;
    fixed[t] = 0;
}
