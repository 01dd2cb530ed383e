// Block gather/scatter between the paged KV pool and a contiguous staging buffer (the device
// side of KV store transfers). Blocks are moved as 32-bit words, so any element type whose
// block is a whole number of words (f32; f16/bf16 with an even element count) works. The CPU
// twin is a per-block `copy_from_slice`.

// staging[i] <- pool[block_ids[i]] for i < n. One thread per word.
extern "C" __global__ void gather_blocks(const unsigned int* pool, const unsigned int* block_ids, int n,
                                         int block_words, unsigned int* staging) {
    const size_t w = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= (size_t)n * block_words) return;
    const size_t i = w / block_words, at = w % block_words;
    staging[w] = pool[(size_t)block_ids[i] * block_words + at];
}

// pool[block_ids[i]] <- staging[i] for i < n (block ids distinct). One thread per word.
extern "C" __global__ void scatter_blocks(const unsigned int* staging, const unsigned int* block_ids, int n,
                                          int block_words, unsigned int* pool) {
    const size_t w = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= (size_t)n * block_words) return;
    const size_t i = w / block_words, at = w % block_words;
    pool[(size_t)block_ids[i] * block_words + at] = staging[w];
}

// Writes the K (or V) rows of `n` new tokens at positions start .. start + n into one layer's
// pool, [blocks][kv_heads][block_size][head_dim]: row t = [kv_heads][head_dim] goes to block
// block_table[p / block_size], slot p % block_size, p = start + t. The CPU twin is the forward
// pass's `write_kv`. One thread per value.
extern "C" __global__ void write_positions(const float* rows, const unsigned int* block_table, int start, int n,
                                           int kv_heads, int head_dim, int block_size, float* pool) {
    const size_t w = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t row = (size_t)kv_heads * head_dim;
    if (w >= (size_t)n * row) return;
    const size_t t = w / row, head = (w % row) / head_dim, e = w % head_dim;
    const size_t p = (size_t)start + t;
    const size_t block = block_table[p / block_size], slot = p % block_size;
    pool[((block * kv_heads + head) * block_size + slot) * head_dim + e] = rows[w];
}

// Copies one position's K (or V) in every head of one layer's pool from (src_block, src_slot)
// to (dst_block, dst_slot): a speculative draft node moving to its place on the accepted path.
// The CPU twin is `KvArena::copy_position`. One thread per value (kv_heads * head_dim).
extern "C" __global__ void copy_slot(float* pool, int src_block, int src_slot, int dst_block, int dst_slot,
                                     int kv_heads, int head_dim, int block_size) {
    const int w = blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= kv_heads * head_dim) return;
    const size_t head = w / head_dim, e = w % head_dim;
    const size_t src = (((size_t)src_block * kv_heads + head) * block_size + src_slot) * head_dim + e;
    const size_t dst = (((size_t)dst_block * kv_heads + head) * block_size + dst_slot) * head_dim + e;
    pool[dst] = pool[src];
}
