// Resizes with OpenCV's conventions (imgproc/src/resize.cpp), for uint8 images addressed
// through element strides. The scales are passed as doubles computed on the host exactly as
// OpenCV computes them: scale = 1. / ((double)dst_size / src_size).
//
// INTER_LINEAR on CV_8U (hal::resize + resizeGeneric_, HResizeLinear / VResizeLinear):
//   fx = (float)((dx + 0.5) * scale - 0.5); sx = floor(fx); fx -= sx;
//   columns: sx < 0 -> (sx, fx) = (0, 0); sx >= W - 1 -> (sx, fx) = (W - 1, 0);
//   rows: sy is NOT clamped with fy; the two rows read are clip(sy) and clip(sy + 1);
//   weights are 11-bit fixed point: w0 = round((1 - f) * 2048), w1 = round(f * 2048) (half even);
//   horizontal: S = src[sx] * a0 + src[sx + 1] * a1 (int, 11 fractional bits);
//   vertical: OpenCV's SIMD VResizeLinearVec_32s8u, which covers every pixel of a row:
//     out = ((((S0 >> 4) * b0) >> 16) + (((S1 >> 4) * b1) >> 16) + 2) >> 2, saturated to u8
//   (not the exact (S0*b0 + S1*b1 + 2^21) >> 22 of the scalar path: the two differ by 1 LSB on
//   ~10% of pixels and cv2.resize returns the SIMD one; verified bit-exact against cv2 4.11).
// INTER_NEAREST (resizeNN): sx = min(floor(dx * scale), W - 1), computed in double.
// INTER_AREA on CV_8U when both axes shrink (scale >= 1), used by resize_area_normalize_nchw*:
//   integer scales on BOTH axes (|scale - cvRound(scale)| < DBL_EPSILON; resizeAreaFast_): the
//   int sum S of the ix * iy box, then (S + 2) >> 2 for 2x2 (the SIMD path) and otherwise
//   cvRound((float)S * (1.f / (ix * iy))) (round half to even);
//   other scales (computeResizeAreaTab + ResizeArea_Invoker<uchar, float>): per axis, weights
//   overlap / cellWidth (double, then float; see area_span in resize.cuh); per source row
//   buf = sum_x S * alpha_x in float in increasing x, then acc = sum_y beta_y * buf_y in float in
//   increasing y (each product and sum rounded: no FMA), then cvRound(acc) saturated to u8.
//   The NumPy twin of this arithmetic is tests/ops/resize_area_reference.py.
#include "common.cuh"
#include "resize.cuh"

// One output pixel (all channels) per thread; grid (ceil(w / bx), ceil(h / by), B).
extern "C" __global__ void resize_linear_u8(
    const u8* __restrict__ src, u8* __restrict__ dst,
    int H, int W, int C, int h, int w, double scale_x, double scale_y,
    i64 s_b, i64 s_y, i64 s_x, i64 s_c,
    i64 d_b, i64 d_y, i64 d_x, i64 d_c)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 b = blockIdx.z;
    const LinearTap tx = linear_tap(x, scale_x, W, true);
    const LinearTap ty = linear_tap(y, scale_y, H, false);
    const u8* r0 = src + b * s_b + ty.i0 * s_y;
    const u8* r1 = src + b * s_b + ty.i1 * s_y;
    const i64 o0 = tx.i0 * s_x, o1 = tx.i1 * s_x;
    u8* o = dst + b * d_b + y * d_y + x * d_x;
    for (int c = 0; c < C; ++c) {
        const i64 oc = c * s_c;
        const int s0 = __ldg(r0 + o0 + oc) * tx.w0 + __ldg(r0 + o1 + oc) * tx.w1;
        const int s1 = __ldg(r1 + o0 + oc) * tx.w0 + __ldg(r1 + o1 + oc) * tx.w1;
        o[c * d_c] = (u8)linear_vertical(s0, s1, ty);
    }
}

// One output pixel per thread; grid (ceil(w / bx), ceil(h / by), B).
extern "C" __global__ void resize_nearest_u8(
    const u8* __restrict__ src, u8* __restrict__ dst,
    int H, int W, int C, int h, int w, double scale_x, double scale_y,
    i64 s_b, i64 s_y, i64 s_x, i64 s_c,
    i64 d_b, i64 d_y, i64 d_x, i64 d_c)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 b = blockIdx.z;
    const int sx = min((int)floor(__dmul_rn((double)x, scale_x)), W - 1);
    const int sy = min((int)floor(__dmul_rn((double)y, scale_y)), H - 1);
    const u8* p = src + b * s_b + sy * s_y + sx * s_x;
    u8* o = dst + b * d_b + y * d_y + x * d_x;
    for (int c = 0; c < C; ++c) o[c * d_c] = __ldg(p + c * s_c);
}

// Model-input preprocessing in one pass: NHWC uint8 RGB -> bilinear resize (as above, so the
// uint8 intermediate equals cv2.resize's) -> v * scale[c] + bias[c] in float32 (one rounding per
// operation, as numpy's `chw * scale + bias`) -> NCHW float32 or float16 (round to nearest even).
// One output pixel (3 channels, 3 planes) per thread; writes are coalesced along x in each plane.
template <bool HALF>
__device__ __forceinline__ void resize_normalize_nchw(
    const u8* __restrict__ src, void* __restrict__ dst_,
    int H, int W, int h, int w, double scale_x, double scale_y,
    float sc0, float sc1, float sc2, float bi0, float bi1, float bi2,
    i64 s_b, i64 s_y, i64 s_x, i64 s_c,
    i64 d_b, i64 d_c, i64 d_y, i64 d_x)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 b = blockIdx.z;
    const LinearTap tx = linear_tap(x, scale_x, W, true);
    const LinearTap ty = linear_tap(y, scale_y, H, false);
    const u8* r0 = src + b * s_b + ty.i0 * s_y;
    const u8* r1 = src + b * s_b + ty.i1 * s_y;
    const i64 o0 = tx.i0 * s_x, o1 = tx.i1 * s_x;
    const float sc[3] = {sc0, sc1, sc2};
    const float bi[3] = {bi0, bi1, bi2};
    const i64 base = b * d_b + y * d_y + x * d_x;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const i64 oc = c * s_c;
        const int s0 = __ldg(r0 + o0 + oc) * tx.w0 + __ldg(r0 + o1 + oc) * tx.w1;
        const int s1 = __ldg(r1 + o0 + oc) * tx.w0 + __ldg(r1 + o1 + oc) * tx.w1;
        const float v = (float)linear_vertical(s0, s1, ty);
        const float o = __fadd_rn(__fmul_rn(v, sc[c]), bi[c]);
        if (HALF) {
            static_cast<u16*>(dst_)[base + c * d_c] = f32_to_f16_bits(o);
        } else {
            static_cast<float*>(dst_)[base + c * d_c] = o;
        }
    }
}

#define RESIZE_NORMALIZE_ARGS                                                           \
    const u8* __restrict__ src, OUT_T* __restrict__ dst, int H, int W, int h, int w,    \
    double scale_x, double scale_y, float sc0, float sc1, float sc2, float bi0,         \
    float bi1, float bi2, i64 s_b, i64 s_y, i64 s_x, i64 s_c, i64 d_b, i64 d_c,         \
    i64 d_y, i64 d_x
#define RESIZE_NORMALIZE_PASS                                                           \
    src, dst, H, W, h, w, scale_x, scale_y, sc0, sc1, sc2, bi0, bi1, bi2, s_b, s_y,     \
    s_x, s_c, d_b, d_c, d_y, d_x

#define OUT_T float
extern "C" __global__ void resize_normalize_nchw_f32(RESIZE_NORMALIZE_ARGS) {
    resize_normalize_nchw<false>(RESIZE_NORMALIZE_PASS);
}
#undef OUT_T
#define OUT_T u16  // float16 bits
extern "C" __global__ void resize_normalize_nchw_f16(RESIZE_NORMALIZE_ARGS) {
    resize_normalize_nchw<true>(RESIZE_NORMALIZE_PASS);
}
#undef OUT_T

// Model-input preprocessing with INTER_AREA: as resize_normalize_nchw, but the uint8
// intermediate is cv2.resize(INTER_AREA)'s (see the top of this file) when the image shrinks on
// both axes (H >= h and W >= w); otherwise (an axis enlarged) exactly resize_normalize_nchw's
// INTER_LINEAR. The branch depends only on the image, so it is uniform across a block. One output
// pixel (3 channels) per thread, reading its whole source box; same argument list and grid as
// resize_normalize_nchw.
template <bool HALF>
__device__ __forceinline__ void resize_area_normalize_nchw(
    const u8* __restrict__ src, void* __restrict__ dst_,
    int H, int W, int h, int w, double scale_x, double scale_y,
    float sc0, float sc1, float sc2, float bi0, float bi1, float bi2,
    i64 s_b, i64 s_y, i64 s_x, i64 s_c,
    i64 d_b, i64 d_c, i64 d_y, i64 d_x)
{
    if (H < h || W < w) {
        resize_normalize_nchw<HALF>(
            src, dst_, H, W, h, w, scale_x, scale_y, sc0, sc1, sc2, bi0, bi1, bi2,
            s_b, s_y, s_x, s_c, d_b, d_c, d_y, d_x);
        return;
    }
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 b = blockIdx.z;
    const u8* img = src + b * s_b;
    int v[3];
    const int ix = area_integer_scale(scale_x);
    const int iy = area_integer_scale(scale_y);
    if (ix > 0 && iy > 0) {
        // resizeAreaFast_: integer box sums.
        int sum[3] = {0, 0, 0};
        const int x0 = x * ix, y0 = y * iy;
        for (int sy = y0; sy < y0 + iy; ++sy) {
            const u8* row = img + sy * s_y;
            for (int sx = x0; sx < x0 + ix; ++sx) {
                const u8* p = row + sx * s_x;
#pragma unroll
                for (int c = 0; c < 3; ++c) sum[c] += (int)__ldg(p + c * s_c);
            }
        }
        if (ix == 2 && iy == 2) {
#pragma unroll
            for (int c = 0; c < 3; ++c) v[c] = (sum[c] + 2) >> 2;
        } else {
            const float inv_area = __fdiv_rn(1.f, (float)(ix * iy));
#pragma unroll
            for (int c = 0; c < 3; ++c) {
                v[c] = clamp_int(__float2int_rn(__fmul_rn((float)sum[c], inv_area)), 0, 255);
            }
        }
    } else {
        // ResizeArea_Invoker<uchar, float>: horizontal sums per source row, then vertical.
        const AreaSpan ax = area_span(x, scale_x, W);
        const AreaSpan ay = area_span(y, scale_y, H);
        float acc[3] = {0.f, 0.f, 0.f};
        for (int sy = ay.begin; sy < ay.end; ++sy) {
            const float beta = area_weight(ay, sy);
            const u8* row = img + sy * s_y;
            float buf[3] = {0.f, 0.f, 0.f};
            for (int sx = ax.begin; sx < ax.end; ++sx) {
                const float alpha = area_weight(ax, sx);
                const u8* p = row + sx * s_x;
#pragma unroll
                for (int c = 0; c < 3; ++c) {
                    buf[c] = __fadd_rn(buf[c], __fmul_rn((float)__ldg(p + c * s_c), alpha));
                }
            }
#pragma unroll
            for (int c = 0; c < 3; ++c) acc[c] = __fadd_rn(acc[c], __fmul_rn(beta, buf[c]));
        }
#pragma unroll
        for (int c = 0; c < 3; ++c) v[c] = clamp_int(__float2int_rn(acc[c]), 0, 255);
    }
    const float sc[3] = {sc0, sc1, sc2};
    const float bi[3] = {bi0, bi1, bi2};
    const i64 base = b * d_b + y * d_y + x * d_x;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const float o = __fadd_rn(__fmul_rn((float)v[c], sc[c]), bi[c]);
        if (HALF) {
            static_cast<u16*>(dst_)[base + c * d_c] = f32_to_f16_bits(o);
        } else {
            static_cast<float*>(dst_)[base + c * d_c] = o;
        }
    }
}

#define OUT_T float
extern "C" __global__ void resize_area_normalize_nchw_f32(RESIZE_NORMALIZE_ARGS) {
    resize_area_normalize_nchw<false>(RESIZE_NORMALIZE_PASS);
}
#undef OUT_T
#define OUT_T u16  // float16 bits
extern "C" __global__ void resize_area_normalize_nchw_f16(RESIZE_NORMALIZE_ARGS) {
    resize_area_normalize_nchw<true>(RESIZE_NORMALIZE_PASS);
}
#undef OUT_T

// Variable-shape batch: the same per-pixel work for frames of different sizes in ONE launch.
// ``table`` holds 8 int64 per output image b (blockIdx.z): [src pointer, H, W, stride_y,
// stride_x, stride_c (elements), scale_x, scale_y (the doubles' bits)]; the grid covers the
// common output size (h, w). Each image's source is read through its own pointer and strides.
// AREA: resize_area_normalize_nchw (its INTER_AREA / INTER_LINEAR choice made per image).
template <bool HALF, bool AREA>
__device__ __forceinline__ void resize_normalize_nchw_table(
    const i64* __restrict__ table, void* __restrict__ dst, int h, int w,
    float sc0, float sc1, float sc2, float bi0, float bi1, float bi2,
    i64 d_b, i64 d_c, i64 d_y, i64 d_x)
{
    const i64* e = table + 8 * (i64)blockIdx.z;
    const u8* src = reinterpret_cast<const u8*>(e[0]);
    const int H = (int)e[1], W = (int)e[2];
    const double scale_x = __longlong_as_double(e[6]), scale_y = __longlong_as_double(e[7]);
    if (AREA) {
        resize_area_normalize_nchw<HALF>(
            src, dst, H, W, h, w, scale_x, scale_y, sc0, sc1, sc2, bi0, bi1, bi2, 0, e[3], e[4],
            e[5], d_b, d_c, d_y, d_x);
    } else {
        resize_normalize_nchw<HALF>(
            src, dst, H, W, h, w, scale_x, scale_y, sc0, sc1, sc2, bi0, bi1, bi2, 0, e[3], e[4],
            e[5], d_b, d_c, d_y, d_x);
    }
}

#define RESIZE_NORMALIZE_TABLE_ARGS                                                     \
    const i64* __restrict__ table, OUT_T* __restrict__ dst, int h, int w, float sc0,    \
    float sc1, float sc2, float bi0, float bi1, float bi2, i64 d_b, i64 d_c, i64 d_y,   \
    i64 d_x
#define RESIZE_NORMALIZE_TABLE_PASS                                                     \
    table, dst, h, w, sc0, sc1, sc2, bi0, bi1, bi2, d_b, d_c, d_y, d_x

#define OUT_T float
extern "C" __global__ void resize_normalize_nchw_table_f32(RESIZE_NORMALIZE_TABLE_ARGS) {
    resize_normalize_nchw_table<false, false>(RESIZE_NORMALIZE_TABLE_PASS);
}
extern "C" __global__ void resize_area_normalize_nchw_table_f32(RESIZE_NORMALIZE_TABLE_ARGS) {
    resize_normalize_nchw_table<false, true>(RESIZE_NORMALIZE_TABLE_PASS);
}
#undef OUT_T
#define OUT_T u16  // float16 bits
extern "C" __global__ void resize_normalize_nchw_table_f16(RESIZE_NORMALIZE_TABLE_ARGS) {
    resize_normalize_nchw_table<true, false>(RESIZE_NORMALIZE_TABLE_PASS);
}
extern "C" __global__ void resize_area_normalize_nchw_table_f16(RESIZE_NORMALIZE_TABLE_ARGS) {
    resize_normalize_nchw_table<true, true>(RESIZE_NORMALIZE_TABLE_PASS);
}
#undef OUT_T
