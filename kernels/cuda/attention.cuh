// Flash-style attention machinery shared by the paged, tree, sparse and selected-key kernels
// (prepended after prelude.cuh). The CPU twin is `attention::online`.
//
// A block of LC_ATT_ROWS warps owns LC_ATT_ROWS query rows that read the same KV head; each warp
// keeps one row's online-softmax state (running max `m`, denominator `l`, unnormalized output
// spread over the lanes: dimension `lane + 32·c` in `acc[c]`). Keys are visited in tiles of
// LC_ATT_TILE, loaded once into shared memory (converted to f32) and absorbed by every warp, so
// memory stays O(rows · head_dim), never O(N²). Queries are pre-multiplied by the logit scale,
// as the CPU kernels do; log-sum-exp values are natural logs of the scaled logits.
//
// Paged layout (the CPU pool's, `attention::PagedKv`): the pool holds blocks of
// [kv_heads][block_size][head_dim]; logical block `j / block_size` of a sequence is pool block
// `block_table[j / block_size]`, slot `j % block_size`.
//
// Dynamic shared memory: lc_att_smem_floats(head_dim) floats.

#define LC_ATT_ROWS 8
#define LC_ATT_TILE 16
#define LC_ATT_CHUNKS 8  // head_dim <= 32 * LC_ATT_CHUNKS = 256

template <typename T>
struct LcPagedKv {
    const T* k;
    const T* v;
    const unsigned int* block_table;
    int block_size;
    int kv_heads;
    int head_dim;

    __device__ __forceinline__ size_t offset(int kvh, int j) const {
        const size_t block = block_table[j / block_size];
        return ((block * kv_heads + kvh) * block_size + j % block_size) * head_dim;
    }
};

// One query row's online-softmax state, held by one warp.
struct LcRow {
    float m;
    float l;
    float acc[LC_ATT_CHUNKS];
};

// Shared-memory views of one block: scaled queries, the key tile (rows padded by one float
// against bank conflicts), the value tile and the tile's key indices.
struct LcTile {
    float* q;   // [LC_ATT_ROWS][head_dim]
    float* k;   // [LC_ATT_TILE][head_dim + 1]
    float* v;   // [LC_ATT_TILE][head_dim]
    int* keys;  // [LC_ATT_TILE]
};

__device__ LcTile lc_att_tile(int head_dim) {
    extern __shared__ float lc_att_smem[];
    __shared__ int keys[LC_ATT_TILE];
    LcTile t;
    t.q = lc_att_smem;
    t.k = t.q + LC_ATT_ROWS * head_dim;
    t.v = t.k + LC_ATT_TILE * (head_dim + 1);
    t.keys = keys;
    return t;
}

__device__ void lc_row_init(LcRow& r) {
    r.m = LC_NEG_INF;
    r.l = 0.0f;
    for (int c = 0; c < LC_ATT_CHUNKS; ++c) r.acc[c] = 0.0f;
}

// The calling warp stores `scale · q_row` in its shared query row (zeros for an inactive row).
template <typename T>
__device__ void lc_load_query(const LcTile& tile, const T* q_row, bool active, float scale, int head_dim) {
    float* dst = tile.q + (threadIdx.x >> 5) * head_dim;
    for (int d = threadIdx.x & 31; d < head_dim; d += 32) dst[d] = active ? lc_to_f32(q_row[d]) * scale : 0.0f;
}

// The whole block loads keys/values of `tile.keys[0..n)` of KV head `kvh`: a warp per key, a
// lane per dimension, so each key's place in the pool is found once per warp, not per element.
template <typename T>
__device__ void lc_load_tile(const LcTile& tile, const LcPagedKv<T>& kv, int kvh, int n) {
    const int hd = kv.head_dim;
    for (int t = threadIdx.x >> 5; t < n; t += blockDim.x >> 5) {
        const size_t at = kv.offset(kvh, tile.keys[t]);
        for (int d = threadIdx.x & 31; d < hd; d += 32) {
            tile.k[t * (hd + 1) + d] = lc_to_f32(kv.k[at + d]);
            tile.v[t * hd + d] = lc_to_f32(kv.v[at + d]);
        }
    }
}

// The calling warp absorbs the `n` keys of the loaded tile into its row. Lanes `s` and `s + 16`
// share tile slot `s`; `visible` is this lane's slot's mask bit (false past `n`).
__device__ void lc_absorb(LcRow& r, const LcTile& tile, int n, int head_dim, bool visible) {
    const int lane = threadIdx.x & 31, slot = lane & 15, half = lane >> 4;
    const float* q = tile.q + (threadIdx.x >> 5) * head_dim;
    float s = 0.0f;
    if (slot < n) {
        const float* k = tile.k + slot * (head_dim + 1);
        for (int d = half; d < head_dim; d += 2) s += q[d] * k[d];
    }
    s += __shfl_xor_sync(LC_FULL_MASK, s, 16);
    s = visible ? s : LC_NEG_INF;
    const float tile_max = lc_warp_max(s);
    if (tile_max == LC_NEG_INF) return;  // nothing visible: warp-uniform
    const float m = fmaxf(r.m, tile_max);
    const float corr = expf(r.m - m);  // 0 while the row was empty
    const float p = visible ? expf(s - m) : 0.0f;
    r.l = r.l * corr + lc_warp_sum(half == 0 ? p : 0.0f);
    for (int c = 0; c < LC_ATT_CHUNKS; ++c) r.acc[c] *= corr;
    for (int t = 0; t < n; ++t) {
        const float pt = __shfl_sync(LC_FULL_MASK, p, t);
        const float* v = tile.v + t * head_dim;
#pragma unroll
        for (int c = 0; c < LC_ATT_CHUNKS; ++c) {
            if (32 * c >= head_dim) break;  // warp-uniform
            const int d = (threadIdx.x & 31) + 32 * c;
            if (d < head_dim) r.acc[c] += pt * v[d];
        }
    }
    r.m = m;
}

// Key sources of lc_attend_keys: positions of a contiguous range, or entries of a key list.
struct LcKeyRange {
    __device__ int operator()(int i) const { return i; }
};

struct LcKeyList {
    const unsigned int* keys;
    __device__ int operator()(int i) const { return (int)keys[i]; }
};

// Visits keys `key_at(i)` for i in [first, end) tile by tile; every warp absorbs the keys its
// row sees (`sees(row, key)`). Block-uniform: every thread of the block must call it.
template <typename T, typename KeyAt, typename Sees>
__device__ void lc_attend_keys(LcRow& r, const LcTile& tile, const LcPagedKv<T>& kv, int kvh, int first, int end,
                               bool active, KeyAt key_at, Sees sees) {
    for (int t0 = first; t0 < end; t0 += LC_ATT_TILE) {
        const int n = min(LC_ATT_TILE, end - t0);
        __syncthreads();  // the previous tile is consumed
        if (threadIdx.x < n) tile.keys[threadIdx.x] = key_at(t0 + threadIdx.x);
        __syncthreads();
        lc_load_tile(tile, kv, kvh, n);
        __syncthreads();
        const int slot = threadIdx.x & 15;
        const bool visible = active && slot < n && sees(tile.keys[slot]);
        if (active) lc_absorb(r, tile, n, kv.head_dim, visible);
    }
}

// Writes the row's normalized output and log-sum-exp (-inf and zeros for an empty row).
template <typename O>
__device__ void lc_row_store(const LcRow& r, int head_dim, O* out, float* lse) {
    const int lane = threadIdx.x & 31;
    const float inv = r.l > 0.0f ? 1.0f / r.l : 0.0f;
    for (int c = 0; c < LC_ATT_CHUNKS; ++c) {
        const int d = lane + 32 * c;
        if (d < head_dim) out[d] = lc_from_f32<O>(r.acc[c] * inv);
    }
    if (lane == 0 && lse) *lse = r.l > 0.0f ? r.m + logf(r.l) : LC_NEG_INF;
}

// Log-sum-exp merge of a part (o_part, lse_part) into an accumulator, one value `o` of a row;
// the twin of `attention::merge::merge_row`. Returns the new accumulator value; `lse` is updated
// by the caller with lc_merge_lse once all values of the row are merged.
__device__ __forceinline__ float lc_merge_value(float o, float lse, float o_part, float lse_part) {
    if (lse_part == LC_NEG_INF) return o;
    if (lse == LC_NEG_INF) return o_part;
    const float m = fmaxf(lse, lse_part);
    const float wa = expf(lse - m), wb = expf(lse_part - m), s = wa + wb;
    return (wa / s) * o + (wb / s) * o_part;
}

__device__ __forceinline__ float lc_merge_lse(float lse, float lse_part) {
    if (lse_part == LC_NEG_INF) return lse;
    if (lse == LC_NEG_INF) return lse_part;
    const float m = fmaxf(lse, lse_part);
    return m + logf(expf(lse - m) + expf(lse_part - m));
}
