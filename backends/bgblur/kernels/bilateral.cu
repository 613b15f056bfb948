// Joint (cross) bilateral filter of a uint8 mask guided by a uint8 grey frame, as
// cv::ximgproc::jointBilateralFilter(joint=guide, src=mask, d, sigmaColor, sigmaSpace) with
// BORDER_DEFAULT (= BORDER_REFLECT_101) on CV_8UC1 (opencv_contrib modules/ximgproc/src/
// joint_bilateral_filter.cpp, JointBilateralFilter_8u):
//   r = max(d / 2, 1); window: offsets (i, j) with i*i + j*j <= r*r, visited row by row;
//   colour weight lut[|g(q) - g(p)|] = (float)exp(a * a * (-0.5 / sigmaColor^2));
//   spatial weight (float)exp((i*i + j*j) * (-0.5 / sigmaSpace^2));
//   w = spatial * colour; sum += w * m(q); wsum += w  (float, in window order, no FMA);
//   out = saturate_cast<uchar>(sum * (1.f / wsum))   (cv::Vec / scalar multiplies by the
//   reciprocal; cvRound is half-even).
// Verified bit-exact against cv2.ximgproc 4.11 with a numpy model of exactly this arithmetic.
// OpenCV sizes its colour table 255 entries and reads entry 255 (a difference of 255) out of
// bounds; here entry 255 is exp(255^2 * coeff), so results can differ where the guide jumps
// 0 <-> 255 inside a window.
//
// Two launches per call, on the caller's stream:
//   1. bilateral_tables: fills [colour(511) | spatial((2r+1)^2)] floats in a small device buffer
//      (the colour table indexed by the signed guide difference, so no abs in the inner loop);
//   2. bilateral_tiled (mask (as float) and guide windows + tables in shared memory; each thread
//      filters two pixels, rows y and y + 8, sharing the spatial weights and the loop) or, for
//      windows too large for shared memory, bilateral_direct (global memory, colour table in
//      shared memory).
#include "common.cuh"
#include "bilateral.cuh"

#define BIL_BX 32
#define BIL_BY 8
#define BIL_ROWS 2                   // output rows per thread: y and y + BIL_BY
#define BIL_TY (BIL_BY * BIL_ROWS)   // rows of a block

// grid (ceil((511 + (2r+1)^2) / 256)), block 256.
// tables = [colour weight of the difference g(q) - g(p) + 255, 0..510 | spatial (2r+1)^2].
extern "C" __global__ void bilateral_tables(
    float* __restrict__ tables, int r, double color_coeff, double space_coeff)
{
    const int d = 2 * r + 1;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < 511) {
        const int a = i - 255;  // |a| indexes OpenCV's expLUT
        tables[i] = __double2float_rn(exp(__dmul_rn((double)(a * a), color_coeff)));
    } else if (i < 511 + d * d) {
        const int k = i - 511;
        const int dy = k / d - r, dx = k % d - r;
        const int r2 = dy * dy + dx * dx;
        tables[i] = r2 <= r * r ? __double2float_rn(exp(__dmul_rn((double)r2, space_coeff))) : 0.f;
    }
}

template <bool TILED>
__device__ __forceinline__ void bilateral(
    const u8* __restrict__ mask, const u8* __restrict__ guide, u8* __restrict__ out,
    const float* __restrict__ tables, int H, int W, int r,
    i64 m_b, i64 m_y, i64 m_x, i64 g_b, i64 g_y, i64 g_x, i64 o_b, i64 o_y, i64 o_x)
{
    // shared: lut[511] | spatial[(2r+1)^2] | mask tile (f32) | guide tile (u8)   (TILED)
    //         lut[511]                                                          (direct)
    extern __shared__ float sm[];
    const int d = 2 * r + 1;
    const int tw = BIL_BX + 2 * r, th = BIL_TY + 2 * r;
    float* lut = sm + 255;  // lut[g(q) - g(p)], -255..255
    float* spatial = sm + 511;
    float* mtile = spatial + d * d;
    u8* gtile = reinterpret_cast<u8*>(mtile + tw * th);

    const int tid = threadIdx.y * BIL_BX + threadIdx.x;
    const int nthreads = BIL_BX * BIL_BY;
    const i64 b = blockIdx.z;
    const int x0 = blockIdx.x * BIL_BX, y0 = blockIdx.y * BIL_TY;
    const u8* gb = guide + b * g_b;
    const u8* mb = mask + b * m_b;

    const int ntab = TILED ? 511 + d * d : 511;
    for (int i = tid; i < ntab; i += nthreads) sm[i] = tables[i];
    if (TILED) {
        for (int ty = threadIdx.y; ty < th; ty += BIL_BY) {
            const int sy = reflect101(y0 - r + ty, H);
            const u8* grow = gb + sy * g_y;
            const u8* mrow = mb + sy * m_y;
            for (int tx = threadIdx.x; tx < tw; tx += BIL_BX) {
                const int sx = reflect101(x0 - r + tx, W);
                gtile[ty * tw + tx] = __ldg(grow + sx * g_x);
                mtile[ty * tw + tx] = (float)__ldg(mrow + sx * m_x);
            }
        }
    }
    __syncthreads();

    const int x = x0 + threadIdx.x;
    const int ya = y0 + threadIdx.y, yb = ya + BIL_BY;
    if (x >= W || ya >= H) return;
    const bool has_b = yb < H;
    float sa = 0.f, wa = 0.f, sb = 0.f, wb = 0.f;
    const int r2max = r * r;
    if (TILED) {
        const int ca = (threadIdx.y + r) * tw + threadIdx.x + r;  // centre of pixel a
        const int cb = ca + BIL_BY * tw;                          // centre of pixel b
        const int ga = gtile[ca], gbb = gtile[cb];
        for (int i = -r; i <= r; ++i) {
            const float* sp = spatial + (i + r) * d + r;
            const int ra = ca + i * tw, rb = cb + i * tw;
            const int jm = circle_half_width(i, r2max);
            for (int j = -jm; j <= jm; ++j) {
                const float sw = sp[j];
                bilateral_tap(sa, wa, sw, lut[(int)gtile[ra + j] - ga], mtile[ra + j]);
                bilateral_tap(sb, wb, sw, lut[(int)gtile[rb + j] - gbb], mtile[rb + j]);
            }
        }
    } else {
        const int ga = __ldg(gb + ya * g_y + x * g_x);
        const int gbb = has_b ? __ldg(gb + yb * g_y + x * g_x) : 0;
        for (int i = -r; i <= r; ++i) {
            const float* sp = tables + 511 + (i + r) * d + r;
            const int sya = reflect101(ya + i, H), syb = reflect101(yb + i, H);
            const u8 *gra = gb + sya * g_y, *mra = mb + sya * m_y;
            const u8 *grb = gb + syb * g_y, *mrb = mb + syb * m_y;
            const int jm = circle_half_width(i, r2max);
            for (int j = -jm; j <= jm; ++j) {
                const float sw = __ldg(sp + j);
                const i64 sx = reflect101(x + j, W);
                bilateral_tap(sa, wa, sw, lut[(int)__ldg(gra + sx * g_x) - ga],
                              (float)__ldg(mra + sx * m_x));
                if (has_b)
                    bilateral_tap(sb, wb, sw, lut[(int)__ldg(grb + sx * g_x) - gbb],
                                  (float)__ldg(mrb + sx * m_x));
            }
        }
    }
    out[b * o_b + ya * o_y + x * o_x] = bilateral_result(sa, wa);
    if (has_b) out[b * o_b + yb * o_y + x * o_x] = bilateral_result(sb, wb);
}

#define BIL_ARGS                                                                           \
    const u8* __restrict__ mask, const u8* __restrict__ guide, u8* __restrict__ out,       \
    const float* __restrict__ tables, int H, int W, int r, i64 m_b, i64 m_y, i64 m_x,      \
    i64 g_b, i64 g_y, i64 g_x, i64 o_b, i64 o_y, i64 o_x
#define BIL_PASS mask, guide, out, tables, H, W, r, m_b, m_y, m_x, g_b, g_y, g_x, o_b, o_y, o_x

// grid (ceil(W / 32), ceil(H / 16), B), block (32, 8), 2 pixels per thread (rows y, y + 8);
// shared (bytes): tiled 4 (511 + (2r+1)^2) + 5 (32 + 2r) (16 + 2r); direct 4 * 511.
extern "C" __global__ void bilateral_tiled(BIL_ARGS) { bilateral<true>(BIL_PASS); }
extern "C" __global__ void bilateral_direct(BIL_ARGS) { bilateral<false>(BIL_PASS); }
