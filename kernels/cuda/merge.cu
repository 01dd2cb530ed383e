// Log-sum-exp merging (algorithms.md §0.2), twin of `attention::merge_lse`, and the fold of the
// per-split partial results of a split-key attention launch (paged_attention.cu).

// acc (rows of d values, lse per row) <- merge(acc, part), in place. One warp per row; blocks of
// 8 warps.
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

#define LC_MERGE_WARPS 8

// out/lse of each row <- merge over `splits` partials [split][rows][d] (f32): the same weights
// as folding them pairwise in split order, exp(lse_s - lse) for the merged lse, computed all at
// once. One block of LC_MERGE_WARPS warps per row: the block finds the maximum and the sum over
// the splits, each warp sums its share of the splits for every dimension (lane + 32c), and the
// warps' sums are added in shared memory. Rows whose splits are all empty get zeros and -inf,
// as the pairwise fold leaves them.
template <typename T>
__device__ void merge_partials(const float* part_o, const float* part_lse, int splits, int rows, int d, T* out,
                               float* lse) {
    __shared__ float sums[LC_MERGE_WARPS][32 * LC_ATT_CHUNKS];
    const int row = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float m = LC_NEG_INF;
    for (int s = threadIdx.x; s < splits; s += blockDim.x) m = fmaxf(m, part_lse[(size_t)s * rows + row]);
    m = lc_block_max(m);
    float total = 0.0f;
    if (m != LC_NEG_INF) {
        for (int s = threadIdx.x; s < splits; s += blockDim.x) total += expf(part_lse[(size_t)s * rows + row] - m);
    }
    total = lc_block_sum(total);
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    float acc[LC_ATT_CHUNKS];
    for (int c = 0; c < LC_ATT_CHUNKS; ++c) acc[c] = 0.0f;
    for (int s = warp; s < splits && m != LC_NEG_INF; s += LC_MERGE_WARPS) {
        const size_t at = (size_t)s * rows + row;
        const float w = expf(part_lse[at] - m) * inv;  // 0 for an empty split
        const float* po = part_o + at * d;
        for (int c = 0; c < LC_ATT_CHUNKS; ++c) {
            const int i = lane + 32 * c;
            if (i < d) acc[c] += w * po[i];
        }
    }
    for (int c = 0; c < LC_ATT_CHUNKS; ++c) sums[warp][lane + 32 * c] = acc[c];
    __syncthreads();
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < LC_MERGE_WARPS; ++w) o += sums[w][i];
        out[(size_t)row * d + i] = lc_from_f32<T>(o);
    }
    if (threadIdx.x == 0 && lse) lse[row] = m == LC_NEG_INF ? LC_NEG_INF : m + logf(total);
}

#define LC_MERGE_PARTIALS(SUFFIX, T)                                                                         \
    extern "C" __global__ void merge_partials_##SUFFIX(const float* part_o, const float* part_lse, int splits, \
                                                       int rows, int d, T* out, float* lse) {                 \
        merge_partials<T>(part_o, part_lse, splits, rows, d, out, lse);                                        \
    }
LC_MERGE_PARTIALS(f32, float)
LC_MERGE_PARTIALS(f16, __half)
LC_MERGE_PARTIALS(bf16, __nv_bfloat16)
