// Shared by every emclass kernel file (prepended to each by src/backend/cuda/nvrtc.rs).
// NVRTC compiles without the CUDA headers: only built-ins (float2, atomicAdd, math
// functions) are used here.

typedef unsigned long long u64;
typedef long long i64;

// ---- complex numbers as float2 (x = real, y = imaginary) ----
__device__ __forceinline__ float2 c_mul(float2 a, float2 b) {
    return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float2 c_conj(float2 a) { return make_float2(a.x, -a.y); }
__device__ __forceinline__ float2 c_scale(float2 a, float s) { return make_float2(a.x * s, a.y * s); }
__device__ __forceinline__ float2 c_add(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float2 c_sub(float2 a, float2 b) { return make_float2(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ float c_norm2(float2 a) { return a.x * a.x + a.y * a.y; }

// ---- reproducible accumulation: fixed-point integers ----
// A sum of doubles accumulated by atomics depends on the order the threads arrive in; a sum
// of integers does not. Each value is rounded to a multiple of 1/scale and added as a 64-bit
// two's-complement integer (wrap-around addition is associative), so a run's sums are the
// same bit for bit whatever the scheduling. The host picks `scale` so that the largest
// possible |sum| stays below 2^62 / scale and converts back with `(double)(i64)acc / scale`.
__device__ __forceinline__ void fx_add(u64* acc, double v, double scale) {
    atomicAdd(acc, (u64)(i64)llrint(v * scale));
}

// ---- the CTF, as numerics::ctf::Ctf::eval_f32 computes it ----
// `c` holds Ctf::coefficients(): k1 = πλ, k2 = (π/2)·Cs·λ³, phase, k4 = −B/4, mean and
// half-difference of the defocus, cos 2α, sin 2α, scale. Frequencies in 1/Å.
__device__ __forceinline__ float ctf_eval(const double* c, double kx, double ky) {
    double k2 = kx * kx + ky * ky;
    double df_k2 = c[4] * k2 + c[5] * ((kx * kx - ky * ky) * c[6] + 2.0 * kx * ky * c[7]);
    double chi = c[0] * df_k2 - c[1] * k2 * k2 + c[2];
    double env = c[3] != 0.0 ? exp(c[3] * k2) : 1.0;
    return sinf((float)chi) * (float)(c[8] * env);
}
#define CTF_COEFFS 9
