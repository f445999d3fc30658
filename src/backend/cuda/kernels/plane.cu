// The 2D E-step and M-step sums on the device (host side: src/backend/cuda/plane.rs; the
// math: src/classify2d/estep.rs and src/classify2d/accumulate.rs).
//
// Layouts (row-major, b = particle of the block, t = shift, r = rotation, k = class,
// f = band coefficient, c = coefficient of the working half plane, T shifts, R rotations,
// K classes, D band coefficients, L half-plane coefficients):
//   spectra   [b][c]            float2, L per particle
//   ctf       [b][CTF_COEFFS]   double, Ctf::coefficients() (only read when has_ctf)
//   P         [(b·T + t)][2D]   float: [Re u | −Im u], u = conj(X ρ_t) C / σ²
//   Q         [b][D]            float: C² / σ²
//   G         [(b·T + t)][K·R]  float: P·M (column k·R + r); overwritten by the pose weights
//   H         [b][K·R]          float: Q·W
//   Y         [(b·T + t)][2L]   float: C X ρ_t, interleaved (re, im) per coefficient
//   E         [(b·R + r)][L]    float: C(R_ψr f)² (0 beyond k_max; 1 without CTF)
//   Cw        [(b·R + r)][2K]   float: columns 0..K the weight c_bkr, K..2K its square

#define MIN_WEIGHT 1e-3

// The CTF in double precision, as numerics::ctf::Ctf::eval (used for the denominators).
__device__ __forceinline__ double ctf_eval_d(const double* c, double kx, double ky) {
    double k2 = kx * kx + ky * ky;
    double df_k2 = c[4] * k2 + c[5] * ((kx * kx - ky * ky) * c[6] + 2.0 * kx * ky * c[7]);
    double chi = c[0] * df_k2 - c[1] * k2 * k2 + c[2];
    double env = c[3] != 0.0 ? exp(c[3] * k2) : 1.0;
    return c[8] * sin(chi) * env;
}

// One thread per (b, f): the rows of P for every shift and the entry of Q.
extern "C" __global__ void plane_operands(float* P, float* Q, const float2* spectra,
                                          const double* ctf, int has_ctf, const int* band_idx,
                                          const double* band_freq, const float* inv_sigma2,
                                          const float2* conj_ramps, int nb, int nt, int d,
                                          int len) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= nb * d) return;
    int b = id / d, f = id % d;
    float2 x = spectra[(size_t)b * len + band_idx[f]];
    float c = has_ctf ? ctf_eval(ctf + (size_t)b * CTF_COEFFS, band_freq[2 * f], band_freq[2 * f + 1])
                      : 1.0f;
    float cs = c * inv_sigma2[f];
    float2 w = c_scale(c_conj(x), cs);
    Q[(size_t)b * d + f] = c * cs;
    for (int t = 0; t < nt; t++) {
        float2 u = c_mul(w, conj_ramps[(size_t)t * d + f]);
        size_t row = ((size_t)b * nt + t) * 2 * d;
        P[row + f] = u.x;
        P[row + d + f] = -u.y;
    }
}

// One thread block per (b, k) (blockIdx.x = b·K + k), blockDim.x a power of two ≤ 256.
// LL_j = 2·G − H for pose j = r·T + t, in double. Writes the log-marginal
// max + ln Σ_j exp(LL_j − max) − ln(R·T), the best pose (ties → lowest j), and replaces the
// (b, k) entries of G with the pose weights exp(LL_j − max) / Σ. The sums are reduced in a
// fixed order, so a block gives the same bits every time.
extern "C" __global__ void plane_reduce(float* G, const float* H, double* log_marg, int* best,
                                        int nt, int nr, int nk) {
    __shared__ double s_val[256];
    __shared__ int s_idx[256];
    int bk = blockIdx.x, b = bk / nk, k = bk % nk;
    int np = nr * nt, kr = nk * nr, tid = threadIdx.x, nth = blockDim.x;
    double m = 0.0;  // replaced by the first pose (arg == np marks "none yet")
    int arg = np;
    for (int j = tid; j < np; j += nth) {
        int r = j / nt, t = j % nt;
        double ll = 2.0 * (double)G[((size_t)b * nt + t) * kr + k * nr + r] -
                    (double)H[(size_t)b * kr + k * nr + r];
        if (ll > m || arg == np) { m = ll; arg = j; }
    }
    s_val[tid] = m;
    s_idx[tid] = arg;
    __syncthreads();
    for (int s = nth / 2; s > 0; s >>= 1) {
        if (tid < s) {
            double v = s_val[tid + s];
            int i = s_idx[tid + s];
            if (i < np && (s_idx[tid] >= np || v > s_val[tid] || (v == s_val[tid] && i < s_idx[tid]))) {
                s_val[tid] = v;
                s_idx[tid] = i;
            }
        }
        __syncthreads();
    }
    double mx = s_val[0];
    int bj = s_idx[0];
    __syncthreads();
    double sum = 0.0;
    for (int j = tid; j < np; j += nth) {
        int r = j / nt, t = j % nt;
        double ll = 2.0 * (double)G[((size_t)b * nt + t) * kr + k * nr + r] -
                    (double)H[(size_t)b * kr + k * nr + r];
        sum += exp(ll - mx);
    }
    s_val[tid] = sum;
    __syncthreads();
    for (int s = nth / 2; s > 0; s >>= 1) {
        if (tid < s) s_val[tid] += s_val[tid + s];
        __syncthreads();
    }
    double total = s_val[0];
    if (tid == 0) {
        log_marg[bk] = mx + log(total) - log((double)np);
        best[bk] = bj;
    }
    // Each thread rewrites exactly the entries it read: no other thread touches them.
    for (int j = tid; j < np; j += nth) {
        int r = j / nt, t = j % nt;
        size_t at = ((size_t)b * nt + t) * kr + k * nr + r;
        double ll = 2.0 * (double)G[at] - (double)H[(size_t)b * kr + k * nr + r];
        G[at] = (float)(exp(ll - mx) / total);
    }
}

// One thread per (b, k, r): from the pose weights in G, the numerator weights in A (G's layout)
// p·w_t (0 where the CPU skips: p < MIN_WEIGHT, p·w_r < MIN_WEIGHT·1e-2, w_t ≤ 1e-4·w_r;
// w_r = Σ_t w_t) and writes c = p·w_r (or 0) and c² into Cw. best_only: weight p at the
// best pose of (b, k) only.
extern "C" __global__ void plane_weights(float* A, float* Cw, const float* G, const double* probs,
                                         const int* best, int best_only, int nb, int nt, int nr,
                                         int nk) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= nb * nk * nr) return;
    int r = id % nr, k = (id / nr) % nk, b = id / (nr * nk);
    int kr = nk * nr;
    double p = probs[(size_t)b * nk + k];
    bool on = p >= MIN_WEIGHT;
    double wr = 0.0;
    int bj = best[(size_t)b * nk + k];
    if (best_only) {
        wr = (on && bj / nt == r) ? 1.0 : 0.0;
    } else {
        for (int t = 0; t < nt; t++) wr += (double)G[((size_t)b * nt + t) * kr + k * nr + r];
        on = on && wr * p >= MIN_WEIGHT * 1e-2;
    }
    for (int t = 0; t < nt; t++) {
        size_t at = ((size_t)b * nt + t) * kr + k * nr + r;
        double w;
        if (best_only) {
            w = (on && bj == r * nt + t) ? p : 0.0;
        } else {
            double wt = (double)G[at];
            w = (on && wt > 1e-4 * wr) ? p * wt : 0.0;
        }
        A[at] = (float)w;
    }
    double c = on ? p * wr : 0.0;
    size_t row = ((size_t)b * nr + r) * 2 * nk;
    Cw[row + k] = (float)c;
    Cw[row + nk + k] = (float)(c * c);
}

// One thread per (b, k): kept[b·K + k] = Σ_r c_bkr in rotation order (the weight sums).
extern "C" __global__ void plane_kept(double* kept, const float* Cw, int nb, int nr, int nk) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= nb * nk) return;
    int b = id / nk, k = id % nk;
    double s = 0.0;
    for (int r = 0; r < nr; r++) s += (double)Cw[((size_t)b * nr + r) * 2 * nk + k];
    kept[id] = s;
}

// One thread per (b, c): Y rows C·X·ρ_t for every shift (CTF as Ctf::eval_f32).
extern "C" __global__ void plane_shifted(float* Y, const float2* spectra, const double* ctf,
                                         int has_ctf, const double* freq, const float2* ramps,
                                         int nb, int nt, int len) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= nb * len) return;
    int b = id / len, c = id % len;
    float2 x = spectra[(size_t)b * len + c];
    float cv = has_ctf ? ctf_eval(ctf + (size_t)b * CTF_COEFFS, freq[2 * c], freq[2 * c + 1]) : 1.0f;
    for (int t = 0; t < nt; t++) {
        float2 v = c_scale(c_mul(x, ramps[(size_t)t * len + c]), cv);
        size_t row = ((size_t)b * nt + t) * 2 * len;
        Y[row + 2 * c] = v.x;
        Y[row + 2 * c + 1] = v.y;
    }
}

// One thread per (b, r, c): E = C_b(R_ψr f_c)² in double, stored as float; 0 where
// shell[c] > k_max (mask[c] = 0), 1 without CTF.
extern "C" __global__ void plane_ctf2(float* E, const double* ctf, int has_ctf,
                                      const double* freq, const int* mask, const double* psi,
                                      int nb, int nr, int len) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= nb * nr * len) return;
    int c = id % len, r = (id / len) % nr, b = id / (len * nr);
    float v = 0.0f;
    if (mask[c]) {
        if (has_ctf) {
            double sn, cs;
            sincos(psi[r], &sn, &cs);
            double fx = freq[2 * c], fy = freq[2 * c + 1];
            double e = ctf_eval_d(ctf + (size_t)b * CTF_COEFFS, cs * fx - sn * fy, sn * fx + cs * fy);
            v = (float)(e * e);
        } else {
            v = 1.0f;
        }
    }
    E[id] = v;
}

// acc[i] += part[i] (the f32 product of one block into the iteration's f64 sums).
extern "C" __global__ void plane_add(double* acc, const float* part, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += (double)part[i];
}
