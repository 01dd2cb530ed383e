// TokenSelect decode selection (algorithms.md §3.2), twin of `token_select::select_tokens`:
//   1. token_scores: scores[h][t] = q̄_h · key(first + t), raw dot products (no logit scale), q̄ the
//      mean of the step's `nq` queries per head; query head h reads KV head h / group.
//   2. head_softmax_stats: per head, the max M_h and Σ_t exp(s − M_h) over the candidates.
//   3. soft_vote: vote[t] = Σ_h exp(s_h[t] − M_h) / L_h.
//   4. top_k_flags: flags[t] = 1 for the k largest votes, ties to the lower index (one block,
//      radix select on the order-preserving bit pattern of the votes).
//   5. compact_selection: the sorted key list: sink keys, flagged candidates, window keys.
// Attention over the list is `paged_attention` with `selected` (paged_attention.cu).

// Grid: x = ceil(count / 8) (one warp per candidate), y = KV head. Block: 256 threads.
// Dynamic shared memory: group · head_dim floats.
extern "C" __global__ void token_scores_f32(const float* q, const float* k_pool, const unsigned int* block_table,
                                            int nq, int n_heads, int kv_heads, int head_dim, int block_size,
                                            int first, int count, float* scores) {
    extern __shared__ float mean_q[];
    const int group = n_heads / kv_heads, kvh = blockIdx.y;
    for (int i = threadIdx.x; i < group * head_dim; i += blockDim.x) {
        const int h = kvh * group + i / head_dim, d = i % head_dim;
        float m = q[(size_t)h * head_dim + d];
        for (int j = 1; j < nq; ++j) m += q[((size_t)j * n_heads + h) * head_dim + d];
        mean_q[i] = nq > 1 ? m / (float)nq : m;
    }
    __syncthreads();
    const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= count) return;
    const int key = first + t;
    const size_t block = block_table[key / block_size];
    const float* k = k_pool + ((block * kv_heads + kvh) * block_size + key % block_size) * head_dim;
    for (int hh = 0; hh < group; ++hh) {
        float s = 0.0f;
        for (int d = threadIdx.x & 31; d < head_dim; d += 32) s += mean_q[hh * head_dim + d] * k[d];
        s = lc_warp_sum(s);
        if ((threadIdx.x & 31) == 0) scores[(size_t)(kvh * group + hh) * count + t] = s;
    }
}

// Grid: n_heads blocks of 1024 threads.
extern "C" __global__ void head_softmax_stats_f32(const float* scores, int count, float* head_max,
                                                  float* head_sum) {
    const float* s = scores + (size_t)blockIdx.x * count;
    float m = LC_NEG_INF;
    for (int t = threadIdx.x; t < count; t += blockDim.x) m = fmaxf(m, s[t]);
    m = lc_block_max(m);
    float sum = 0.0f;
    for (int t = threadIdx.x; t < count; t += blockDim.x) sum += expf(s[t] - m);
    sum = lc_block_sum(sum);
    if (threadIdx.x == 0) {
        head_max[blockIdx.x] = m;
        head_sum[blockIdx.x] = sum;
    }
}

// One thread per candidate.
extern "C" __global__ void soft_vote_f32(const float* scores, const float* head_max, const float* head_sum,
                                         int n_heads, int count, float* vote) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= count) return;
    float v = 0.0f;
    for (int h = 0; h < n_heads; ++h) v += expf(scores[(size_t)h * count + t] - head_max[h]) / head_sum[h];
    vote[t] = v;
}

// Unsigned key ordered like the float (finite values and ±inf).
__device__ __forceinline__ unsigned int lc_order_key(float v) {
    const unsigned int u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// One block of 1024 threads. flags[t] = 1 for the `k` largest votes (all when k >= count).
extern "C" __global__ void top_k_flags_f32(const float* vote, int count, int k, unsigned char* flags) {
    __shared__ unsigned int hist[256];
    __shared__ unsigned int prefix_s, wanted_s;
    if (threadIdx.x == 0) {
        prefix_s = 0;
        wanted_s = (unsigned int)min(k, count);
    }
    unsigned int mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        const unsigned int prefix = prefix_s;
        for (int t = threadIdx.x; t < count; t += blockDim.x) {
            const unsigned int key = lc_order_key(vote[t]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xff], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0 && wanted_s > 0) {
            // The digit of the wanted-th largest key among those matching the prefix so far.
            unsigned int above = 0;
            int digit = 255;
            while (digit > 0 && above + hist[digit] < wanted_s) above += hist[digit--];
            wanted_s -= above;
            prefix_s = prefix | ((unsigned int)digit << shift);
        }
        mask |= 0xffu << shift;
        __syncthreads();
    }
    // prefix_s is the k-th largest key; keep everything above it and the first `wanted_s` equal
    // to it, in index order.
    const unsigned int threshold = prefix_s, ties = wanted_s;
    const bool any = min(k, count) > 0;
    unsigned int taken = 0;
    for (int base = 0; base < count; base += blockDim.x) {
        const int t = base + threadIdx.x;
        const unsigned int key = t < count ? lc_order_key(vote[t]) : 0;
        const unsigned int tie = (t < count && any && key == threshold) ? 1u : 0u;
        unsigned int total;
        const unsigned int before = lc_block_exclusive_scan(tie, &total);
        if (t < count) flags[t] = (any && key > threshold) || (tie && taken + before < ties) ? 1 : 0;
        taken += total;
    }
}

// One block of 1024 threads. selected <- the keys i < len with i < sink, i >= len − window or
// flags[i − sink] (candidates are the keys sink .. len − window), in increasing order.
extern "C" __global__ void compact_selection(const unsigned char* flags, int sink, int window, int len,
                                             unsigned int* selected) {
    unsigned int written = 0;
    for (int base = 0; base < len; base += blockDim.x) {
        const int i = base + threadIdx.x;
        const bool keep = i < len && (i < sink || i >= len - window || flags[i - sink]);
        unsigned int total;
        const unsigned int before = lc_block_exclusive_scan(keep ? 1u : 0u, &total);
        if (keep) selected[written + before] = (unsigned int)i;
        written += total;
    }
}
