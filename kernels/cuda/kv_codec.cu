// The int8 / int4 KV block codecs on device, bit-for-bit the layout and arithmetic of the
// kvstore's `block::lossy` + `block::quant` (asymmetric min-max groups, f16 parameters with `min`
// rounded down and `step` rounded up, codes rounded half-to-even, algorithms.md §5.1-5.2).
//
// A side (keys or values of one layer) is `kv_heads` matrices [block_size][dim], row-major.
// Groups, in the order their parameters are stored (all minimums, then all steps, f16 bits):
//   keys   (`keys` = 1): group (head, token group of `group` rows, channel);
//   values (`keys` = 0): group (head, token, channel group of `group` channels).
// A last partial group is shorter. Codes keep the element order: int8 one byte per element,
// int4 element 2i in the low nibble of byte i and 2i + 1 in the high nibble (an odd count leaves
// the last high nibble 0).
//
// Arithmetic uses the _rn intrinsics so that no multiply-add is contracted into an FMA: the
// codes and reconstructions then equal the CPU's exactly.

#define LC_F16_INF 0x7c00u
#define LC_F16_MAX 65504.0f
#define LC_F16_MIN_NORMAL_BITS 0x38800000u
#define LC_REBIAS 0x38000000u
#define LC_SUBNORMAL_SCALE 16777216.0f
#define LC_STEP_FLOOR (1.0f / 524288.0f)
#define LC_ROUND_MAGIC 8388608.0f

// f16 bits of a in [0, 65504] rounded toward zero; *inexact says whether that lost anything.
__device__ unsigned int lc_f16_truncate(float a, bool* inexact) {
    const unsigned int bits = __float_as_uint(a);
    if (bits >= LC_F16_MIN_NORMAL_BITS) {
        *inexact = (bits & 0x1fffu) != 0;
        return (bits - LC_REBIAS) >> 13;
    }
    const float scaled = __fmul_rn(a, LC_SUBNORMAL_SCALE);
    const unsigned int h = (unsigned int)scaled;
    *inexact = (float)h != scaled;
    return h;
}

__device__ float lc_f16_bits_to_f32(unsigned int h) {
    const unsigned int magnitude = h & 0x7fffu;
    const float value = magnitude >= 0x0400u ? __uint_as_float((magnitude << 13) + LC_REBIAS)
                                             : __fdiv_rn((float)magnitude, LC_SUBNORMAL_SCALE);
    return (h & 0x8000u) ? -value : value;
}

// GroupParams::fit: false when the group is not finite or its parameters overflow f16.
__device__ bool lc_fit(float lo, float hi, float max_code, unsigned short* min_bits, unsigned short* step_bits) {
    if (!(isfinite(lo) && isfinite(hi) && lo <= hi) || lo < -LC_F16_MAX) return false;
    const float floor = __fmul_rn(fmaxf(fabsf(lo), fabsf(hi)), LC_STEP_FLOOR);
    bool inexact;
    unsigned int m;
    if (lo > LC_F16_MAX) {
        m = 0x7bffu;
    } else {
        const unsigned int h = lc_f16_truncate(fabsf(lo), &inexact);
        m = signbit(lo) ? (0x8000u | (h + (inexact ? 1u : 0u))) : h;
    }
    float step = __fdiv_rn(__fsub_rn(hi, lc_f16_bits_to_f32(m)), max_code);
    step = step > floor ? step : floor;
    if (step > LC_F16_MAX) return false;
    const unsigned int s = lc_f16_truncate(step, &inexact) + (inexact ? 1u : 0u);
    *min_bits = (unsigned short)m;
    *step_bits = (unsigned short)s;
    return true;
}

__device__ __forceinline__ unsigned int lc_code(float x, float min, float inv, float max_code) {
    float v = __fmul_rn(__fsub_rn(x, min), inv);
    v = v > 0.0f ? v : 0.0f;
    v = v < max_code ? v : max_code;
    return __float_as_uint(__fadd_rn(v, LC_ROUND_MAGIC)) & 0xffu;
}

struct LcSide {
    int kv_heads, block_size, dim, group;
    bool keys;

    __device__ int token_groups() const { return (block_size + group - 1) / group; }
    __device__ int channel_groups() const { return (dim + group - 1) / group; }
    __device__ int groups() const {
        return keys ? kv_heads * token_groups() * dim : kv_heads * block_size * channel_groups();
    }
    __device__ size_t elements() const { return (size_t)kv_heads * block_size * dim; }
    // The group of element e (flattened side index).
    __device__ int group_of(size_t e) const {
        const int row = (int)(e / dim), channel = (int)(e % dim);
        if (!keys) return row * channel_groups() + channel / group;
        const int head = row / block_size, token = row % block_size;
        return (head * token_groups() + token / group) * dim + channel;
    }
};

// One thread per group: fits its parameters. `*bad` (INT_MAX on entry) gets the smallest group
// that holds a non-finite value or overflows f16.
extern "C" __global__ void kv_fit_groups_f32(const float* x, int kv_heads, int block_size, int dim, int group,
                                             int keys, int max_code, unsigned short* mins, unsigned short* steps,
                                             int* bad) {
    const LcSide side{kv_heads, block_size, dim, group, keys != 0};
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= side.groups()) return;
    float lo = __int_as_float(0x7f800000), hi = LC_NEG_INF;
    bool finite = true;
    if (side.keys) {
        const int channel = g % dim, tg = (g / dim) % side.token_groups(), head = g / dim / side.token_groups();
        const int t1 = min(block_size, (tg + 1) * group);
        for (int t = tg * group; t < t1; ++t) {
            const float v = x[((size_t)head * block_size + t) * dim + channel];
            finite = finite && isfinite(v);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    } else {
        const int row = g / side.channel_groups(), c0 = (g % side.channel_groups()) * group;
        const int c1 = min(dim, c0 + group);
        for (int c = c0; c < c1; ++c) {
            const float v = x[(size_t)row * dim + c];
            finite = finite && isfinite(v);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    }
    if (!finite || !lc_fit(lo, hi, (float)max_code, &mins[g], &steps[g])) atomicMin(bad, g);
}

__device__ unsigned int lc_encode_element(const float* x, const LcSide& side, size_t e, float max_code,
                                          const unsigned short* mins, const unsigned short* steps) {
    const int g = side.group_of(e);
    const float step = lc_f16_bits_to_f32(steps[g]);
    const float inv = step > 0.0f ? __fdiv_rn(1.0f, step) : 0.0f;
    return lc_code(x[e], lc_f16_bits_to_f32(mins[g]), inv, max_code);
}

// One thread per code byte; run after kv_fit_groups_f32 reported no bad group.
extern "C" __global__ void kv_encode_f32(const float* x, int kv_heads, int block_size, int dim, int group, int keys,
                                         int four_bit, const unsigned short* mins, const unsigned short* steps,
                                         unsigned char* codes) {
    const LcSide side{kv_heads, block_size, dim, group, keys != 0};
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t n = side.elements();
    if (!four_bit) {
        if (i < n) codes[i] = (unsigned char)lc_encode_element(x, side, i, 255.0f, mins, steps);
        return;
    }
    if (2 * i >= n) return;
    const unsigned int lo = lc_encode_element(x, side, 2 * i, 15.0f, mins, steps);
    const unsigned int hi = 2 * i + 1 < n ? lc_encode_element(x, side, 2 * i + 1, 15.0f, mins, steps) : 0u;
    codes[i] = (unsigned char)(lo | (hi << 4));
}

// One thread per element: out = min + code·step. `*bad` (INT_MAX on entry) gets the smallest
// group with parameters the encoder never writes (non-finite min, negative or non-finite step),
// or `groups` for a non-zero int4 padding nibble.
extern "C" __global__ void kv_decode_f32(const unsigned char* codes, int kv_heads, int block_size, int dim,
                                         int group, int keys, int four_bit, const unsigned short* mins,
                                         const unsigned short* steps, float* out, int* bad) {
    const LcSide side{kv_heads, block_size, dim, group, keys != 0};
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t n = side.elements();
    if (e >= n) return;
    const int g = side.group_of(e);
    const unsigned int min_bits = mins[g], step_bits = steps[g];
    if ((min_bits & 0x7fffu) >= LC_F16_INF || step_bits >= LC_F16_INF) atomicMin(bad, g);
    unsigned int code = codes[four_bit ? e / 2 : e];
    if (four_bit) {
        code = (e & 1) ? code >> 4 : code & 0x0fu;
        if (e + 1 == n && (n & 1) && (codes[e / 2] >> 4) != 0) atomicMin(bad, side.groups());
    }
    out[e] = __fadd_rn(lc_f16_bits_to_f32(min_bits), __fmul_rn((float)code, lc_f16_bits_to_f32(step_bits)));
}
