// Statistics of the dynamic sparse-prefill index builders (algorithms.md §1.2), twins of
// `sparse::vertical_slash_sums`, `sparse::pool_queries` and `sparse::pool_keys`. The host turns
// them into indices with the CPU's own converters (`select_lines` + `vertical_slash_index`,
// `block_sparse_index_from_pooled`): what reads q and k runs here, the rest is small.
//
// Vertical-slash, for query head h and the chunk's last `last` queries i (at positions pos_i),
// with p_i the exact causal softmax of the scaled logits over keys 0..=pos_i:
//   vert[h][j]          = Σ_i p_i(j)
//   diag[h][pos_i − j] += p_i(j)
// 1. vs_row_stats: each row's max and Σ exp of its logits.
// 2. vs_accumulate: the sums; the diagonals by atomicAdd, so their summation order varies.
// Block-sparse: the mean key of every 64-key block of each KV head, and the mean query of every
// 64-position query block of each query head (blocks aligned to absolute positions).

#define LC_SPARSE_BLOCK 64

// q_row · key j of KV head kvh, reduced over the warp (every lane gets it).
__device__ __forceinline__ float lc_key_dot(const float* q_row, const float* k_pool, const unsigned int* block_table,
                                            int kvh, int kv_heads, int block_size, int head_dim, int j) {
    const size_t block = block_table[j / block_size];
    const float* k = k_pool + ((block * kv_heads + kvh) * block_size + j % block_size) * head_dim;
    float s = 0.0f;
    for (int d = threadIdx.x & 31; d < head_dim; d += 32) s += q_row[d] * k[d];
    return lc_warp_sum(s);
}

// Grid: x = last (row r is chunk query nq − last + r), y = query head. Block: 256 threads, one
// key per warp at a time.
extern "C" __global__ void vs_row_stats_f32(const float* q, const float* k_pool, const unsigned int* block_table,
                                            int nq, int n_heads, int kv_heads, int head_dim, int block_size,
                                            int len, int last, float scale, float* row_max, float* row_sum) {
    const int r = blockIdx.x, h = blockIdx.y, kvh = h / (n_heads / kv_heads);
    const int i = nq - last + r, pos = len - nq + i;
    const float* q_row = q + ((size_t)i * n_heads + h) * head_dim;
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float m = LC_NEG_INF;
    for (int j = warp; j <= pos; j += warps) {
        m = fmaxf(m, scale * lc_key_dot(q_row, k_pool, block_table, kvh, kv_heads, block_size, head_dim, j));
    }
    m = lc_block_max(m);
    float sum = 0.0f;
    for (int j = warp; j <= pos; j += warps) {
        const float s = scale * lc_key_dot(q_row, k_pool, block_table, kvh, kv_heads, block_size, head_dim, j);
        if ((threadIdx.x & 31) == 0) sum += expf(s - m);
    }
    sum = lc_block_sum(sum);
    if (threadIdx.x == 0) {
        row_max[(size_t)h * last + r] = m;
        row_sum[(size_t)h * last + r] = sum;
    }
}

// Grid: x = ceil(len / 8) (one warp per key), y = query head. Block: 256 threads. `vert` and
// `diag` ([n_heads][len]) start zeroed.
extern "C" __global__ void vs_accumulate_f32(const float* q, const float* k_pool, const unsigned int* block_table,
                                             int nq, int n_heads, int kv_heads, int head_dim, int block_size,
                                             int len, int last, float scale, const float* row_max,
                                             const float* row_sum, float* vert, float* diag) {
    const int h = blockIdx.y, kvh = h / (n_heads / kv_heads);
    const int j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (j >= len) return;
    const bool lead = (threadIdx.x & 31) == 0;
    float column = 0.0f;
    for (int r = 0; r < last; ++r) {
        const int i = nq - last + r, pos = len - nq + i;
        if (j > pos) continue;
        const float* q_row = q + ((size_t)i * n_heads + h) * head_dim;
        const float s = scale * lc_key_dot(q_row, k_pool, block_table, kvh, kv_heads, block_size, head_dim, j);
        const float p = expf(s - row_max[(size_t)h * last + r]) * (1.0f / row_sum[(size_t)h * last + r]);
        if (lead) {
            column += p;
            atomicAdd(&diag[(size_t)h * len + (pos - j)], p);
        }
    }
    if (lead) vert[(size_t)h * len + j] = column;
}

// Grid: x = ceil(len / 64) key blocks, y = KV head. Block: head_dim threads (≤ 1024).
// pooled[kvh][c][d] = mean over the present keys of block c.
extern "C" __global__ void pool_keys_f32(const float* k_pool, const unsigned int* block_table, int kv_heads,
                                         int head_dim, int block_size, int len, float* pooled) {
    const int c = blockIdx.x, kvh = blockIdx.y, d = threadIdx.x;
    if (d >= head_dim) return;
    const int first = c * LC_SPARSE_BLOCK, end = min(len, first + LC_SPARSE_BLOCK);
    const float inv = 1.0f / (float)(end - first);
    float sum = 0.0f;
    for (int j = first; j < end; ++j) {
        const size_t block = block_table[j / block_size];
        sum += k_pool[((block * kv_heads + kvh) * block_size + j % block_size) * head_dim + d] * inv;
    }
    pooled[((size_t)kvh * gridDim.x + c) * head_dim + d] = sum;
}

// Grid: x = query blocks of the chunk, y = query head. Block: head_dim threads (≤ 1024).
// pooled[h][t][d] = mean over the chunk's positions in block t (the chunk's queries sit at
// first_pos .. first_pos + nq; block t covers absolute positions of block first_pos / 64 + t).
extern "C" __global__ void pool_queries_f32(const float* q, int nq, int n_heads, int head_dim, int first_pos,
                                            float* pooled) {
    const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    if (d >= head_dim) return;
    const int b = first_pos / LC_SPARSE_BLOCK + t;
    const int start = max(b * LC_SPARSE_BLOCK, first_pos), end = min((b + 1) * LC_SPARSE_BLOCK, first_pos + nq);
    const float inv = 1.0f / (float)(end - start);
    float sum = 0.0f;
    for (int pos = start; pos < end; ++pos) sum += q[((size_t)(pos - first_pos) * n_heads + h) * head_dim + d] * inv;
    pooled[((size_t)h * gridDim.x + t) * head_dim + d] = sum;
}
