// Attention of `nq` queries over one layer of a paged KV cache: twins of `attention::attention`
// (causal, bottom-right aligned: query i sits at position len - nq + i and sees keys <= its
// position), `attention::tree_attention` (ancestor mask over a draft tree) and
// `token_select::selected_attention` (a sorted key list).
//
// Grid: x = tiles of LC_ATT_ROWS rows (query, head of the GQA group), y = KV head, z = key splits.
// Block: 32 · LC_ATT_ROWS threads. With one split the result goes to `out` ([nq][n_heads][hd])
// and `lse` ([nq][n_heads], may be null); with several (decode: too few rows to fill the GPU)
// each split writes its partial result to `part_out` ([split][nq][n_heads][hd], f32) and
// `part_lse`, and `merge_partials` folds them (merge.cu).

struct LcRows {
    int kvh, row, query, head;
    bool active;
};

// Which query row the calling warp owns (query heads h = kvh·group + i read KV head kvh).
__device__ LcRows lc_rows(int nq, int n_heads, int kv_heads) {
    const int group = n_heads / kv_heads;
    LcRows w;
    w.kvh = blockIdx.y;
    w.row = blockIdx.x * LC_ATT_ROWS + (threadIdx.x >> 5);
    w.active = w.row < nq * group;
    w.query = w.row / group;
    w.head = w.kvh * group + w.row % group;
    return w;
}

// The split's key interval [first, end) of `count` keys (key list positions).
__device__ void lc_split(int count, int split_len, int* first, int* end) {
    *first = min(count, (int)blockIdx.z * split_len);
    *end = min(count, *first + split_len);
}

template <typename T>
__device__ void lc_store_rows(const LcRow& r, const LcRows& w, int nq, int n_heads, int head_dim, T* out,
                              float* lse, float* part_out, float* part_lse) {
    if (!w.active) return;
    const size_t row = (size_t)w.query * n_heads + w.head;
    if (gridDim.z == 1) {
        lc_row_store<T>(r, head_dim, out + row * head_dim, lse ? lse + row : nullptr);
    } else {
        const size_t at = (size_t)blockIdx.z * nq * n_heads + row;
        lc_row_store<float>(r, head_dim, part_out + at * head_dim, part_lse + at);
    }
}

// Causal attention over keys `0..len` (`selected == nullptr`) or over the sorted `selected` list
// of `count` keys.
template <typename T>
__device__ void paged_attention(const T* q, const T* k_pool, const T* v_pool, const unsigned int* block_table,
                                const unsigned int* selected, int count, int nq, int len, int n_heads,
                                int kv_heads, int head_dim, int block_size, float scale, int split_len, T* out,
                                float* lse, float* part_out, float* part_lse) {
    const LcPagedKv<T> kv{k_pool, v_pool, block_table, block_size, kv_heads, head_dim};
    const LcTile tile = lc_att_tile(head_dim);
    const LcRows w = lc_rows(nq, n_heads, kv_heads);
    lc_load_query(tile, q + ((size_t)w.query * n_heads + w.head) * head_dim, w.active, scale, head_dim);
    const int pos = len - nq + w.query;
    const auto sees = [pos](int key) { return key <= pos; };
    LcRow r;
    lc_row_init(r);
    int first, end;
    if (selected) {
        lc_split(count, split_len, &first, &end);
        lc_attend_keys(r, tile, kv, w.kvh, first, end, w.active, LcKeyList{selected}, sees);
    } else {
        // Keys after the block's last row are masked for every row: stop there.
        const int group = n_heads / kv_heads;
        const int last_row = min(nq * group, (int)(blockIdx.x + 1) * LC_ATT_ROWS) - 1;
        lc_split(min(len, len - nq + last_row / group + 1), split_len, &first, &end);
        lc_attend_keys(r, tile, kv, w.kvh, first, end, w.active, LcKeyRange{}, sees);
    }
    lc_store_rows(r, w, nq, n_heads, head_dim, out, lse, part_out, part_lse);
}

// Tree verification: the `nq` nodes sit at slots len - nq + i; node i sees every committed key
// (below len - nq) and the tree keys of its ancestors and itself (`parents[i] < i`, -1 for a
// child of the root).
template <typename T>
__device__ void tree_attention(const T* q, const T* k_pool, const T* v_pool, const unsigned int* block_table,
                               const int* parents, int nq, int len, int n_heads, int kv_heads, int head_dim,
                               int block_size, float scale, int split_len, T* out, float* lse, float* part_out,
                               float* part_lse) {
    const LcPagedKv<T> kv{k_pool, v_pool, block_table, block_size, kv_heads, head_dim};
    const LcTile tile = lc_att_tile(head_dim);
    const LcRows w = lc_rows(nq, n_heads, kv_heads);
    lc_load_query(tile, q + ((size_t)w.query * n_heads + w.head) * head_dim, w.active, scale, head_dim);
    const int prefix = len - nq, node = w.query;
    const auto sees = [prefix, node, parents](int key) {
        if (key < prefix) return true;
        int a = node;
        while (a > key - prefix) a = parents[a];
        return a == key - prefix;
    };
    LcRow r;
    lc_row_init(r);
    int first, end;
    lc_split(len, split_len, &first, &end);
    lc_attend_keys(r, tile, kv, w.kvh, first, end, w.active, LcKeyRange{}, sees);
    lc_store_rows(r, w, nq, n_heads, head_dim, out, lse, part_out, part_lse);
}

#define LC_PAGED_ATTENTION(SUFFIX, T)                                                                       \
    extern "C" __global__ void paged_attention_##SUFFIX(                                                    \
        const T* q, const T* k_pool, const T* v_pool, const unsigned int* block_table,                      \
        const unsigned int* selected, int count, int nq, int len, int n_heads, int kv_heads, int head_dim,  \
        int block_size, float scale, int split_len, T* out, float* lse, float* part_out, float* part_lse) { \
        paged_attention<T>(q, k_pool, v_pool, block_table, selected, count, nq, len, n_heads, kv_heads,     \
                           head_dim, block_size, scale, split_len, out, lse, part_out, part_lse);           \
    }                                                                                                       \
    extern "C" __global__ void tree_attention_##SUFFIX(                                                     \
        const T* q, const T* k_pool, const T* v_pool, const unsigned int* block_table, const int* parents,  \
        int nq, int len, int n_heads, int kv_heads, int head_dim, int block_size, float scale,              \
        int split_len, T* out, float* lse, float* part_out, float* part_lse) {                              \
        tree_attention<T>(q, k_pool, v_pool, block_table, parents, nq, len, n_heads, kv_heads, head_dim,    \
                          block_size, scale, split_len, out, lse, part_out, part_lse);                      \
    }
LC_PAGED_ATTENTION(f32, float)
LC_PAGED_ATTENTION(f16, __half)
LC_PAGED_ATTENTION(bf16, __nv_bfloat16)
