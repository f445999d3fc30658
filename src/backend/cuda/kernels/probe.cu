// The start-up probe: y[i] += a·x[i]. Run once per device before a job starts, with its
// result compared on the host, so a driver or device that loads and then fails is found
// before the first iteration (and `auto` falls back to the CPU).
extern "C" __global__ void probe_axpy(float* y, const float* x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] += a * x[i];
    }
}
