// Causal attention of many queries on tensor cores (sm_80+), for prefill with bf16 weights:
// the twin of `attention::attention` with its inputs rounded as the products round them. Logits
// are bf16 queries · bf16 keys accumulated in f32; the online softmax runs in f32; probabilities
// (in [0, 1]) and values are f16, multiplied with f32 accumulation. Values beyond f16's range
// are clamped to ±65504.
//
// Grid: x = tiles of LC_FA_ROWS rows (query, head of the GQA group, numbered as in
// paged_attention.cu, so the group's heads share every key tile), y = KV head. Block:
// LC_FA_WARPS warps of 16 rows each. Keys come in tiles of LC_FA_KEYS, staged in shared memory
// (keys [key][dim] bf16, values transposed [dim][key] f16, so that every fragment load is one
// 32-bit word); everything else stays in registers: `mma.sync.m16n8k16` with the PTX ISA's
// fragment layouts (lane = 4·group + t: a thread holds rows `group` and `group + 8`, columns
// 2t and 2t + 1 of each 8-wide tile), which let the logits' accumulators be reused as the
// probabilities' A operand (FlashAttention-2) and the output be rescaled by row in place.

#define LC_FA_WARPS 4
#define LC_FA_ROWS (16 * LC_FA_WARPS)
#define LC_FA_KEYS 64
#define LC_FA_HALF_MAX 65504.0f

__device__ __forceinline__ unsigned int lc_pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // lo in the low half
    return *reinterpret_cast<unsigned int*>(&v);
}

__device__ __forceinline__ unsigned int lc_pack_f16(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned int*>(&v);
}

// lc_mma_<TYPE>(c, a, b0, b1): c += a · b for a 16×16 A (row-major fragments) and a 16×8 B
// (column-major) of TYPE (bf16 or f16), f32 C.
#define LC_MMA(TYPE)                                                                                      \
    __device__ __forceinline__ void lc_mma_##TYPE(float* c, const unsigned int* a, unsigned int b0,      \
                                                  unsigned int b1) {                                     \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." #TYPE "." #TYPE                            \
                     ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                       \
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                     \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                     \
    }
LC_MMA(bf16)
LC_MMA(f16)

__device__ __forceinline__ unsigned int lc_word(const void* p) { return *reinterpret_cast<const unsigned int*>(p); }

// Stages keys [t0, t0 + LC_FA_KEYS) of KV head `kvh` (zeros past `end`), four dimensions per
// thread and step.
template <int HD>
__device__ void lc_fa_load_tile(const LcPagedKv<float>& kv, int kvh, int t0, int end, __nv_bfloat16* ks,
                                __half* vt) {
    for (int i = threadIdx.x; i < LC_FA_KEYS * HD / 4; i += blockDim.x) {
        const int t = i / (HD / 4), d = (i % (HD / 4)) * 4, key = t0 + t;
        float4 k4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v4 = k4;
        if (key < end) {
            const size_t at = kv.offset(kvh, key) + d;
            k4 = *reinterpret_cast<const float4*>(kv.k + at);
            v4 = *reinterpret_cast<const float4*>(kv.v + at);
        }
        __nv_bfloat16* kr = ks + t * (HD + 8) + d;
        *reinterpret_cast<__nv_bfloat162*>(kr) = __floats2bfloat162_rn(k4.x, k4.y);
        *reinterpret_cast<__nv_bfloat162*>(kr + 2) = __floats2bfloat162_rn(k4.z, k4.w);
        const float vs[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            vt[(d + j) * (LC_FA_KEYS + 8) + t] = __float2half_rn(fminf(fmaxf(vs[j], -LC_FA_HALF_MAX), LC_FA_HALF_MAX));
        }
    }
}

template <int HD>
__device__ void flash_attention(const float* q, const float* k_pool, const float* v_pool,
                                const unsigned int* block_table, int nq, int len, int n_heads, int kv_heads,
                                int block_size, float scale, float* out, float* lse) {
    __shared__ __align__(16) __nv_bfloat16 ks[LC_FA_KEYS * (HD + 8)];
    __shared__ __align__(16) __half vt[HD * (LC_FA_KEYS + 8)];
    const LcPagedKv<float> kv{k_pool, v_pool, block_table, block_size, kv_heads, HD};
    const int group = n_heads / kv_heads, kvh = blockIdx.y, rows = nq * group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * LC_FA_ROWS, warp_row0 = row0 + warp * 16;
    // The thread's two rows (a: g, b: g + 8 of the warp's 16): their q/out row and position.
    const int row_a = warp_row0 + g, row_b = row_a + 8;
    const size_t at_a = (size_t)(row_a / group) * n_heads + kvh * group + row_a % group;
    const size_t at_b = (size_t)(row_b / group) * n_heads + kvh * group + row_b % group;
    const int pos_a = row_a < rows ? len - nq + row_a / group : -1;  // -1 sees no key
    const int pos_b = row_b < rows ? len - nq + row_b / group : -1;
    const int block_end = len - nq + (min(rows, row0 + LC_FA_ROWS) - 1) / group + 1;
    const int warp_end = warp_row0 < rows ? len - nq + (min(rows, warp_row0 + 16) - 1) / group + 1 : 0;

    unsigned int qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        const int c = kk * 16 + 2 * t;
        const float* qa = q + at_a * HD + c;
        const float* qb = q + at_b * HD + c;
        const bool a = row_a < rows, b = row_b < rows;
        qf[kk][0] = lc_pack_bf16(a ? qa[0] : 0.0f, a ? qa[1] : 0.0f);
        qf[kk][1] = lc_pack_bf16(b ? qb[0] : 0.0f, b ? qb[1] : 0.0f);
        qf[kk][2] = lc_pack_bf16(a ? qa[8] : 0.0f, a ? qa[9] : 0.0f);
        qf[kk][3] = lc_pack_bf16(b ? qb[8] : 0.0f, b ? qb[9] : 0.0f);
    }
    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    // Running maxima and this thread's share of the denominators (summed over the row's four
    // threads at the end).
    float m_a = LC_NEG_INF, m_b = LC_NEG_INF, l_a = 0.0f, l_b = 0.0f;

    for (int t0 = 0; t0 < block_end; t0 += LC_FA_KEYS) {
        __syncthreads();  // every warp is done with the previous tile
        lc_fa_load_tile<HD>(kv, kvh, t0, block_end, ks, vt);
        __syncthreads();
        if (t0 >= warp_end) continue;  // warp-uniform: every key of the tile is masked

        float s[LC_FA_KEYS / 8][4];
#pragma unroll
        for (int j = 0; j < LC_FA_KEYS / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const __nv_bfloat16* kr = ks + (8 * j + g) * (HD + 8) + 2 * t;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) lc_mma_bf16(s[j], qf[kk], lc_word(kr + 16 * kk), lc_word(kr + 16 * kk + 8));
        }
        float max_a = LC_NEG_INF, max_b = LC_NEG_INF;
#pragma unroll
        for (int j = 0; j < LC_FA_KEYS / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = t0 + 8 * j + 2 * t + (e & 1);
                const bool visible = key <= (e < 2 ? pos_a : pos_b);
                s[j][e] = visible ? s[j][e] * scale : LC_NEG_INF;
            }
            max_a = fmaxf(max_a, fmaxf(s[j][0], s[j][1]));
            max_b = fmaxf(max_b, fmaxf(s[j][2], s[j][3]));
        }
        for (int offset = 1; offset < 4; offset <<= 1) {
            max_a = fmaxf(max_a, __shfl_xor_sync(LC_FULL_MASK, max_a, offset));
            max_b = fmaxf(max_b, __shfl_xor_sync(LC_FULL_MASK, max_b, offset));
        }
        const float new_a = fmaxf(m_a, max_a), new_b = fmaxf(m_b, max_b);
        // A row with no visible key yet keeps m = -inf: nothing to rescale, every p is 0.
        const float corr_a = new_a == LC_NEG_INF ? 1.0f : expf(m_a - new_a);
        const float corr_b = new_b == LC_NEG_INF ? 1.0f : expf(m_b - new_b);
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int j = 0; j < LC_FA_KEYS / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float m = e < 2 ? new_a : new_b;
                s[j][e] = s[j][e] == LC_NEG_INF ? 0.0f : expf(s[j][e] - m);
            }
            sum_a += s[j][0] + s[j][1];
            sum_b += s[j][2] + s[j][3];
        }
        l_a = l_a * corr_a + sum_a;
        l_b = l_b * corr_b + sum_b;
        m_a = new_a;
        m_b = new_b;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= corr_a;
            o[n][1] *= corr_a;
            o[n][2] *= corr_b;
            o[n][3] *= corr_b;
        }
        // out += p · v: the logits' accumulators of key tiles 2kk and 2kk + 1 are the A operand.
#pragma unroll
        for (int kk = 0; kk < LC_FA_KEYS / 16; ++kk) {
            const unsigned int p[4] = {lc_pack_f16(s[2 * kk][0], s[2 * kk][1]), lc_pack_f16(s[2 * kk][2], s[2 * kk][3]),
                                       lc_pack_f16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                       lc_pack_f16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < HD / 8; ++n) {
                const __half* vr = vt + (8 * n + g) * (LC_FA_KEYS + 8) + 16 * kk + 2 * t;
                lc_mma_f16(o[n], p, lc_word(vr), lc_word(vr + 8));
            }
        }
    }

    for (int offset = 1; offset < 4; offset <<= 1) {
        l_a += __shfl_xor_sync(LC_FULL_MASK, l_a, offset);
        l_b += __shfl_xor_sync(LC_FULL_MASK, l_b, offset);
    }
    const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        const int c = 8 * n + 2 * t;
        if (row_a < rows) {
            out[at_a * HD + c] = o[n][0] * inv_a;
            out[at_a * HD + c + 1] = o[n][1] * inv_a;
        }
        if (row_b < rows) {
            out[at_b * HD + c] = o[n][2] * inv_b;
            out[at_b * HD + c + 1] = o[n][3] * inv_b;
        }
    }
    if (t == 0 && lse) {
        if (row_a < rows) lse[at_a] = l_a > 0.0f ? m_a + logf(l_a) : LC_NEG_INF;
        if (row_b < rows) lse[at_b] = l_b > 0.0f ? m_b + logf(l_b) : LC_NEG_INF;
    }
}

#define LC_FLASH_ATTENTION(HD)                                                                              \
    extern "C" __global__ void __launch_bounds__(32 * LC_FA_WARPS) flash_attention_bf16_hd##HD(            \
        const float* q, const float* k_pool, const float* v_pool, const unsigned int* block_table, int nq,  \
        int len, int n_heads, int kv_heads, int block_size, float scale, float* out, float* lse) {          \
        flash_attention<HD>(q, k_pool, v_pool, block_table, nq, len, n_heads, kv_heads, block_size, scale, \
                            out, lse);                                                                      \
    }
LC_FLASH_ATTENTION(64)
LC_FLASH_ATTENTION(128)
