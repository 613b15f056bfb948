// RGB -> grey, as cv::cvtColor(COLOR_RGB2GRAY) on CV_8U (imgproc/src/color_rgb.simd.hpp,
// RGB2Gray<uchar>): 15-bit fixed-point BT.601 weights R 9798, G 19235, B 3735 (sum 32768) and
// rounding, y = (R*9798 + G*19235 + B*3735 + 2^14) >> 15. Bit-exact with OpenCV.
#include "common.cuh"

// grid (ceil(W / bx), ceil(H / by), B); one thread per pixel.
extern "C" __global__ void rgb_to_grey_u8(
    const u8* __restrict__ src, u8* __restrict__ dst, int H, int W,
    i64 s_b, i64 s_y, i64 s_x, i64 s_c,
    i64 d_b, i64 d_y, i64 d_x)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    const i64 b = blockIdx.z;
    const u8* p = src + b * s_b + y * s_y + x * s_x;
    const int r = p[0], g = p[s_c], bl = p[2 * s_c];
    dst[b * d_b + y * d_y + x * d_x] = (u8)((r * 9798 + g * 19235 + bl * 3735 + (1 << 14)) >> 15);
}
