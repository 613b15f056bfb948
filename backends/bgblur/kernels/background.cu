// Halo-free background blur (bgblur/ops/background_gpu.py; the arithmetic is described in
// bgblur/ops/background.py): the background weight with the premultiplied colours, before the
// u8 Gaussian (gaussian.cu), and the normalisation after it.
#include "common.cuh"
#include "resize.cuh"

// float16 bits -> float (exact), without cuda_fp16.h under NVRTC.
__device__ __forceinline__ float halo_f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// probability_to_mask (soft) of one sample: rint(clip(p, 0, 1) * 255) in float32.
template <bool HALF>
__device__ __forceinline__ int halo_low_mask(const void* p, i64 offset) {
    const float v = HALF ? halo_f16_to_f32(__ldg(static_cast<const u16*>(p) + offset))
                         : __ldg(static_cast<const float*>(p) + offset);
    return __float2int_rn(__fmul_rn(fminf(fmaxf(v, 0.f), 1.f), 255.f));
}

// One pixel of the u8 mask resized bilinearly (resize_linear_u8's arithmetic) to (h, w).
template <bool HALF>
__device__ __forceinline__ int halo_mask_at(
    const void* p, i64 base, i64 p_y, i64 p_x, int ph, int pw, double sx, double sy, int x,
    int y)
{
    const LinearTap tx = linear_tap(x, sx, pw, true);
    const LinearTap ty = linear_tap(y, sy, ph, false);
    const i64 r0 = base + ty.i0 * p_y, r1 = base + ty.i1 * p_y;
    const int s0 = halo_low_mask<HALF>(p, r0 + tx.i0 * p_x) * tx.w0 +
                   halo_low_mask<HALF>(p, r0 + tx.i1 * p_x) * tx.w1;
    const int s1 = halo_low_mask<HALF>(p, r1 + tx.i0 * p_x) * tx.w0 +
                   halo_low_mask<HALF>(p, r1 + tx.i1 * p_x) * tx.w1;
    return linear_vertical(s0, s1, ty);
}

// One thread per working-resolution pixel; grid (ceil(w / 32), ceil(h / 8), B).
// image [B, H, W, 3] u8, resized on the fly to (h, w) as resize_linear_u8 does (the identity at
// the working size itself) -> work [B, h, w, 7] u8: P_r, P_g, P_b, weight, frame_r, frame_g,
// frame_b (the resized frame).
template <bool HALF>
__device__ __forceinline__ void halo_weights(
    const void* __restrict__ prob, i64 p_b, i64 p_y, i64 p_x, int ph, int pw, double sx,
    double sy, const u8* __restrict__ image, int H, int W, double ix, double iy, i64 s_b,
    i64 s_y, i64 s_x, i64 s_c, u8* __restrict__ work, i64 w_b, i64 w_y, i64 w_x, i64 w_c, int h,
    int w, int grow, int lo, int hi)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 b = blockIdx.z;
    const i64 base = b * p_b;
    int m = 0;
    for (int yy = max(y - grow, 0); yy <= min(y + grow, h - 1); ++yy)
        for (int xx = max(x - grow, 0); xx <= min(x + grow, w - 1); ++xx)
            m = max(m, halo_mask_at<HALF>(prob, base, p_y, p_x, ph, pw, sx, sy, xx, yy));
    const int span = hi - lo;
    const unsigned wt = (unsigned)clamp_int(((hi - m) * 255 + span / 2) / span, 0, 255);
    const LinearTap tx = linear_tap(x, ix, W, true);
    const LinearTap ty = linear_tap(y, iy, H, false);
    const u8* r0 = image + b * s_b + ty.i0 * s_y;
    const u8* r1 = image + b * s_b + ty.i1 * s_y;
    const i64 o0 = tx.i0 * s_x, o1 = tx.i1 * s_x;
    u8* o = work + b * w_b + y * w_y + x * w_x;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const i64 oc = c * s_c;
        const int s0 = __ldg(r0 + o0 + oc) * tx.w0 + __ldg(r0 + o1 + oc) * tx.w1;
        const int s1 = __ldg(r1 + o0 + oc) * tx.w0 + __ldg(r1 + o1 + oc) * tx.w1;
        const unsigned f = (unsigned)linear_vertical(s0, s1, ty);
        o[c * w_c] = (u8)((f * wt + 127u) / 255u);
        o[(4 + c) * w_c] = (u8)f;
    }
    o[3 * w_c] = (u8)wt;
}

#define HALO_WEIGHTS_ARGS                                                                     \
    const void* __restrict__ prob, i64 p_b, i64 p_y, i64 p_x, int ph, int pw, double sx,      \
        double sy, const u8* __restrict__ image, int H, int W, double ix, double iy, i64 s_b, \
        i64 s_y, i64 s_x, i64 s_c, u8* __restrict__ work, i64 w_b, i64 w_y, i64 w_x, i64 w_c, \
        int h, int w, int grow, int lo, int hi
#define HALO_WEIGHTS_PASS                                                                     \
    prob, p_b, p_y, p_x, ph, pw, sx, sy, image, H, W, ix, iy, s_b, s_y, s_x, s_c, work, w_b,  \
        w_y, w_x, w_c, h, w, grow, lo, hi

extern "C" __global__ void halo_weights_f16(HALO_WEIGHTS_ARGS) {
    halo_weights<true>(HALO_WEIGHTS_PASS);
}
extern "C" __global__ void halo_weights_f32(HALO_WEIGHTS_ARGS) {
    halo_weights<false>(HALO_WEIGHTS_PASS);
}

// blurred work [B, h, w, 7] u8 -> background [B, h, w, 3] u8:
// (255 G(P_c) + G(frame_c) max(T - G(w), 0) + d / 2) / d with d = max(G(w), T), at most 255.
extern "C" __global__ void halo_normalise(
    const u8* __restrict__ blurred, i64 g_b, i64 g_y, i64 g_x, i64 g_c, u8* __restrict__ out,
    i64 o_b, i64 o_y, i64 o_x, i64 o_c, int h, int w, int min_weight)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 b = blockIdx.z;
    const u8* g = blurred + b * g_b + y * g_y + x * g_x;
    u8* o = out + b * o_b + y * o_y + x * o_x;
    const int weight = g[3 * g_c];
    const int den = max(weight, min_weight);
    const int plain = max(min_weight - weight, 0);
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int num = 255 * (int)g[c * g_c] + (int)g[(4 + c) * g_c] * plain;
        o[c * o_c] = (u8)min((num + den / 2) / den, 255);
    }
}
