// Shared by every kernel of lcserve (prepended by `cuda::catalogue`): element types, their
// conversions to and from f32, and warp / block reductions. NVRTC compiles each kernel as one
// translation unit, so helpers live here instead of in separately compiled objects.
//
// Sizes are `int`: the host wrappers check every dimension fits before launching.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define LC_FULL_MASK 0xffffffffu
#define LC_NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float lc_to_f32(float x) { return x; }
__device__ __forceinline__ float lc_to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float lc_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T lc_from_f32(float x);
template <> __device__ __forceinline__ float lc_from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half lc_from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 lc_from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float lc_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LC_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float lc_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(LC_FULL_MASK, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float lc_block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = lc_warp_sum(v);
    __syncthreads();  // `partial` may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.0f;
    return lc_warp_sum(v);
}

// Same for the maximum.
__device__ float lc_block_max(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = lc_warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : LC_NEG_INF;
    return lc_warp_max(v);
}

// Exclusive prefix sum of `v` over the block, in thread order; `*total` gets the block's sum.
__device__ unsigned int lc_block_exclusive_scan(unsigned int v, unsigned int* total) {
    __shared__ unsigned int warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    unsigned int inclusive = v;
    for (int o = 1; o < 32; o <<= 1) {
        unsigned int n = __shfl_up_sync(LC_FULL_MASK, inclusive, o);
        if (lane >= o) inclusive += n;
    }
    __syncthreads();
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    unsigned int before = 0, sum = 0;
    for (int w = 0; w < warps; ++w) {
        if (w < warp) before += warp_sums[w];
        sum += warp_sums[w];
    }
    *total = sum;
    return before + inclusive - v;
}
