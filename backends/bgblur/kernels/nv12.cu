// NV12 -> RGB (bgblur.ops.nv12): OpenCV's 20-bit fixed point (imgproc/src/color_yuv.simd.hpp,
// YUV420sp2RGB8Invoker). With OpenCV's BT.601 limited-range constants it is bit-exact with
// cv::cvtColor(COLOR_YUV2RGB_NV12); the caller passes other constants for BT.709 / full range.
//   y = max(0, Y - y_offset) * cy
//   R = sat((y + 2^19 + cvr * (V - 128)) >> 20), G = ... cvg * (V - 128) + cug * (U - 128),
//   B = ... cub * (U - 128)
#include "common.cuh"

__device__ __forceinline__ u8 sat_shift20(int v) {
    v >>= 20;
    return (u8)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// src: [B, H * 3 / 2, W] (luma rows, then interleaved UV rows); dst: [B, H, W, 3].
// grid (ceil(W / 2 / bx), ceil(H / 2 / by), B): one thread per 2x2 block (one U/V pair).
extern "C" __global__ void nv12_to_rgb_u8(
    const u8* __restrict__ src, u8* __restrict__ dst, int H, int W,
    i64 s_b, i64 s_y, i64 s_x,
    i64 d_b, i64 d_y, i64 d_x, i64 d_c,
    int y_offset, int cy, int cvr, int cvg, int cug, int cub)
{
    const int cx = blockIdx.x * blockDim.x + threadIdx.x;  // chroma column
    const int cr = blockIdx.y * blockDim.y + threadIdx.y;  // chroma row
    if (2 * cx >= W || 2 * cr >= H) return;
    const i64 b = blockIdx.z;
    const u8* frame = src + b * s_b;
    const u8* uv = frame + (i64)(H + cr) * s_y + (i64)(2 * cx) * s_x;
    const int u = (int)uv[0] - 128;
    const int v = (int)uv[s_x] - 128;
    const int half = 1 << 19;
    const int ruv = half + cvr * v;
    const int guv = half + cvg * v + cug * u;
    const int buv = half + cub * u;
#pragma unroll
    for (int dy = 0; dy < 2; ++dy) {
        const int y = 2 * cr + dy;
#pragma unroll
        for (int dx = 0; dx < 2; ++dx) {
            const int x = 2 * cx + dx;
            int luma = (int)frame[(i64)y * s_y + (i64)x * s_x] - y_offset;
            luma = (luma < 0 ? 0 : luma) * cy;
            u8* p = dst + b * d_b + (i64)y * d_y + (i64)x * d_x;
            p[0] = sat_shift20(luma + ruv);
            p[d_c] = sat_shift20(luma + guv);
            p[2 * d_c] = sat_shift20(luma + buv);
        }
    }
}
