// RMSNorm, twin of `ops::rms_norm`: out = x / sqrt(mean(x²) + eps) * weight, rows of `d`.
// One block per row; the sum of squares is accumulated in f32 whatever the element type.

template <typename T>
__device__ void rms_norm(const T* x, const T* weight, T* out, int rows, int d, float eps) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const T* xr = x + (size_t)row * d;
    T* orow = out + (size_t)row * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = lc_to_f32(xr[i]);
        ss += v * v;
    }
    ss = lc_block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        orow[i] = lc_from_f32<T>(lc_to_f32(xr[i]) * inv * lc_to_f32(weight[i]));
    }
}

#define LC_RMS_NORM(SUFFIX, T)                                                                   \
    extern "C" __global__ void rms_norm_##SUFFIX(const T* x, const T* weight, T* out, int rows, \
                                                 int d, float eps) {                            \
        rms_norm<T>(x, weight, out, rows, d, eps);                                               \
    }
LC_RMS_NORM(f32, float)
LC_RMS_NORM(f16, __half)
LC_RMS_NORM(bf16, __nv_bfloat16)
