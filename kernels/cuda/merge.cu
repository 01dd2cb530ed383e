// Log-sum-exp merging (algorithms.md §0.2), twin of `attention::merge_lse`, and the fold of the
// per-split partial results of a split-key attention launch (paged_attention.cu).
// One warp per row; blocks of 8 warps.

// acc (rows of d values, lse per row) <- merge(acc, part), in place.
extern "C" __global__ void merge_lse_f32(float* acc_o, float* acc_lse, const float* part_o, const float* part_lse,
                                         int rows, int d) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const float lse = acc_lse[row], pl = part_lse[row];
    float* o = acc_o + (size_t)row * d;
    const float* po = part_o + (size_t)row * d;
    for (int i = threadIdx.x & 31; i < d; i += 32) o[i] = lc_merge_value(o[i], lse, po[i], pl);
    __syncwarp();
    if ((threadIdx.x & 31) == 0) acc_lse[row] = lc_merge_lse(lse, pl);
}

// out/lse of each row <- merge over `splits` partials [split][rows][d] (f32), in split order.
template <typename T>
__device__ void merge_partials(const float* part_o, const float* part_lse, int splits, int rows, int d, T* out,
                               float* lse) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    for (int i = threadIdx.x & 31; i < d; i += 32) {
        float o = 0.0f, l = LC_NEG_INF;
        for (int s = 0; s < splits; ++s) {
            const size_t at = (size_t)s * rows + row;
            o = lc_merge_value(o, l, part_o[at * d + i], part_lse[at]);
            l = lc_merge_lse(l, part_lse[at]);
        }
        out[(size_t)row * d + i] = lc_from_f32<T>(o);
        if (i == 0 && lse) lse[row] = l;
    }
}

#define LC_MERGE_PARTIALS(SUFFIX, T)                                                                         \
    extern "C" __global__ void merge_partials_##SUFFIX(const float* part_o, const float* part_lse, int splits, \
                                                       int rows, int d, T* out, float* lse) {                 \
        merge_partials<T>(part_o, part_lse, splits, rows, d, out, lse);                                        \
    }
LC_MERGE_PARTIALS(f32, float)
LC_MERGE_PARTIALS(f16, __half)
LC_MERGE_PARTIALS(bf16, __nv_bfloat16)
