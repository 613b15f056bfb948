// Alpha composite of a sharp foreground over a blurred background with a uint8 mask:
// out = (fg * m + bg * (255 - m) + 127) / 255 in exact integer arithmetic (max 65152, fits int).
#include "common.cuh"

// grid (ceil(W / bx), ceil(H / by), B); one thread per pixel, looping over its C channels
// (for contiguous NHWC a warp reads 32*C consecutive bytes of fg, bg and out: coalesced).
extern "C" __global__ void composite_u8(
    const u8* __restrict__ fg, const u8* __restrict__ bg, const u8* __restrict__ mask,
    u8* __restrict__ out, int H, int W, int C,
    i64 f_b, i64 f_y, i64 f_x, i64 f_c,
    i64 g_b, i64 g_y, i64 g_x, i64 g_c,
    i64 m_b, i64 m_y, i64 m_x,
    i64 o_b, i64 o_y, i64 o_x, i64 o_c)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    const i64 b = blockIdx.z;
    const unsigned m = mask[b * m_b + y * m_y + x * m_x];
    const unsigned im = 255u - m;
    const u8* f = fg + b * f_b + y * f_y + x * f_x;
    const u8* g = bg + b * g_b + y * g_y + x * g_x;
    u8* o = out + b * o_b + y * o_y + x * o_x;
    for (int c = 0; c < C; ++c) {
        const unsigned v = (unsigned)f[c * f_c] * m + (unsigned)g[c * g_c] * im + 127u;
        o[c * o_c] = (u8)(v / 255u);
    }
}
