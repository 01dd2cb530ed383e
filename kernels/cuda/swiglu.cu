// SwiGLU, twin of `ops::silu_mul`: out = silu(gate) * up, silu(g) = g / (1 + e^-g).

template <typename T>
__device__ void silu_mul(const T* gate, const T* up, T* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = lc_to_f32(gate[i]);
    out[i] = lc_from_f32<T>(g / (1.0f + expf(-g)) * lc_to_f32(up[i]));
}

#define LC_SILU_MUL(SUFFIX, T)                                                                \
    extern "C" __global__ void silu_mul_##SUFFIX(const T* gate, const T* up, T* out, int n) { \
        silu_mul<T>(gate, up, out, n);                                                         \
    }
LC_SILU_MUL(f32, float)
LC_SILU_MUL(f16, __half)
LC_SILU_MUL(bf16, __nv_bfloat16)
