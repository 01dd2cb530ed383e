// Elementwise kernels of the forward pass: the residual add (twin of `ops::add_inplace`), a bias
// added to every row, and the f32 -> bf16 rounding of activations that feed a bf16 product.
// One thread per element.

// x[i] += y[i] for i < n.
extern "C" __global__ void add_f32(float* x, const float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x[r][c] += bias[c] for rows of `width` values, `n` values in all.
extern "C" __global__ void add_rows_f32(float* x, const float* bias, int n, int width) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[i % width];
}

// out[i] = bf16(x[i]), rounded to nearest even as `half::bf16::from_f32` does on the host.
extern "C" __global__ void f32_to_bf16(const float* x, __nv_bfloat16* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}
