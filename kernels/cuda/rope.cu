// RoPE in place on x = [tokens][heads][head_dim], twins of `ops::rope_interleaved` and
// `ops::rope_neox`. `cos`/`sin` are the `ops::RopeTable` arrays ([position][pair]); `positions`
// gives each token's position (the host checks them against the table). The first `2·pairs`
// dimensions of each head rotate, the rest pass through. One thread per (token, head, pair).

template <typename T, bool NEOX>
__device__ void rope(T* x, const float* cos_table, const float* sin_table, const unsigned int* positions,
                     int tokens, int heads, int head_dim, int pairs) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t total = (size_t)tokens * heads * pairs;
    if (i >= total) return;
    const int pair = (int)(i % pairs);
    const size_t head = i / pairs;  // token * heads + h
    const size_t token = head / heads;
    const size_t at = (size_t)positions[token] * pairs + pair;
    const float c = cos_table[at], s = sin_table[at];
    T* hx = x + head * head_dim;
    const int ia = NEOX ? pair : 2 * pair;
    const int ib = NEOX ? pair + pairs : 2 * pair + 1;
    const float a = lc_to_f32(hx[ia]), b = lc_to_f32(hx[ib]);
    hx[ia] = lc_from_f32<T>(a * c - b * s);
    hx[ib] = lc_from_f32<T>(a * s + b * c);
}

#define LC_ROPE(SUFFIX, T)                                                                          \
    extern "C" __global__ void rope_interleaved_##SUFFIX(T* x, const float* cos_table,             \
                                                         const float* sin_table,                   \
                                                         const unsigned int* positions, int tokens, \
                                                         int heads, int head_dim, int pairs) {      \
        rope<T, false>(x, cos_table, sin_table, positions, tokens, heads, head_dim, pairs);         \
    }                                                                                               \
    extern "C" __global__ void rope_neox_##SUFFIX(T* x, const float* cos_table,                    \
                                                  const float* sin_table,                          \
                                                  const unsigned int* positions, int tokens,        \
                                                  int heads, int head_dim, int pairs) {             \
        rope<T, true>(x, cos_table, sin_table, positions, tokens, heads, head_dim, pairs);          \
    }
LC_ROPE(f32, float)
LC_ROPE(f16, __half)
LC_ROPE(bf16, __nv_bfloat16)
