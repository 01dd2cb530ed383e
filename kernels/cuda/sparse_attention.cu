// Block-sparse prefill attention (MInference, algorithms.md §1.3), twin of
// `sparse::sparse_attention`: each query head attends, per 64-position query block, to the key
// ranges and key columns of its `sparse::HeadIndex`, causal mask applied per row.
//
// The indices of all heads are flattened in (head, block) order: entry e = h·blocks + t owns the
// ranges range_offsets[e]..range_offsets[e + 1] of `ranges` ((start, end) pairs) and the columns
// column_offsets[e]..column_offsets[e + 1] of `columns`. Query blocks are aligned to absolute
// positions (`sparse::QueryBlocks`): block t covers positions
// [64·(first_pos/64 + t), 64·(first_pos/64 + t + 1)) clipped to [first_pos, len).
//
// Grid: x = blocks · (64 / LC_ATT_ROWS) row tiles, y = query head. Block: 32 · LC_ATT_ROWS threads.

#define LC_QUERY_BLOCK 64

template <typename T>
__device__ void sparse_attention(const T* q, const T* k_pool, const T* v_pool, const unsigned int* block_table,
                                 const unsigned int* range_offsets, const unsigned int* ranges,
                                 const unsigned int* column_offsets, const unsigned int* columns, int blocks,
                                 int nq, int len, int n_heads, int kv_heads, int head_dim, int block_size,
                                 float scale, T* out, float* lse) {
    const LcPagedKv<T> kv{k_pool, v_pool, block_table, block_size, kv_heads, head_dim};
    const LcTile tile = lc_att_tile(head_dim);
    const int tiles_per_block = LC_QUERY_BLOCK / LC_ATT_ROWS;
    const int t = blockIdx.x / tiles_per_block, head = blockIdx.y, kvh = head / (n_heads / kv_heads);
    const int first_pos = len - nq;
    const int block_start = max(first_pos, (first_pos / LC_QUERY_BLOCK + t) * LC_QUERY_BLOCK);
    const int block_end = min(len, (first_pos / LC_QUERY_BLOCK + t + 1) * LC_QUERY_BLOCK);
    const int tile_start = (first_pos / LC_QUERY_BLOCK + t) * LC_QUERY_BLOCK +
                           (blockIdx.x % tiles_per_block) * LC_ATT_ROWS;
    const int pos = tile_start + (threadIdx.x >> 5);
    const bool active = pos >= block_start && pos < block_end;
    const int query = pos - first_pos;
    lc_load_query(tile, q + ((size_t)query * n_heads + head) * head_dim, active, scale, head_dim);
    // Keys after the tile's last row are masked for every row.
    const int horizon = min(block_end, tile_start + LC_ATT_ROWS);
    const auto sees = [pos](int key) { return key <= pos; };
    LcRow r;
    lc_row_init(r);
    const int e = head * blocks + t;
    for (unsigned int i = range_offsets[e]; i < range_offsets[e + 1]; ++i) {
        const int start = (int)ranges[2 * i], end = min((int)ranges[2 * i + 1], horizon);
        lc_attend_keys(r, tile, kv, kvh, start, end, active, LcKeyRange{}, sees);
    }
    const int c0 = (int)column_offsets[e], c1 = (int)column_offsets[e + 1];
    lc_attend_keys(r, tile, kv, kvh, c0, c1, active, LcKeyList{columns}, sees);
    if (active) {
        const size_t row = (size_t)query * n_heads + head;
        lc_row_store<T>(r, head_dim, out + row * head_dim, lse ? lse + row : nullptr);
    }
}

#define LC_SPARSE_ATTENTION(SUFFIX, T)                                                                      \
    extern "C" __global__ void sparse_attention_##SUFFIX(                                                   \
        const T* q, const T* k_pool, const T* v_pool, const unsigned int* block_table,                      \
        const unsigned int* range_offsets, const unsigned int* ranges, const unsigned int* column_offsets,  \
        const unsigned int* columns, int blocks, int nq, int len, int n_heads, int kv_heads, int head_dim,  \
        int block_size, float scale, T* out, float* lse) {                                                  \
        sparse_attention<T>(q, k_pool, v_pool, block_table, range_offsets, ranges, column_offsets, columns, \
                            blocks, nq, len, n_heads, kv_heads, head_dim, block_size, scale, out, lse);     \
    }
LC_SPARSE_ATTENTION(f32, float)
LC_SPARSE_ATTENTION(f16, __half)
LC_SPARSE_ATTENTION(bf16, __nv_bfloat16)
