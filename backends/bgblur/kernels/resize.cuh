// Device helpers of OpenCV's resize conventions, shared by resize.cu and fused.cu (see the comment
// at the top of resize.cu for the arithmetic they reproduce).
#ifndef BGBLUR_KERNELS_RESIZE_CUH
#define BGBLUR_KERNELS_RESIZE_CUH

#include "common.cuh"

struct LinearTap {
    int i0, i1;  // source indices (already clamped into the image)
    int w0, w1;  // 11-bit fixed-point weights, w0 + w1 == 2048
};

__device__ __forceinline__ LinearTap linear_tap(int d, double scale, int n, bool clamp_weight) {
    float f = __double2float_rn(__dadd_rn(__dmul_rn((double)d + 0.5, scale), -0.5));
    int s = (int)floorf(f);
    f = __fsub_rn(f, (float)s);
    if (clamp_weight) {  // columns: HResizeLinear's xmin / xmax handling
        if (s < 0) { s = 0; f = 0.f; }
        if (s >= n - 1) { s = n - 1; f = 0.f; }
    }
    LinearTap t;
    t.i0 = clamp_int(s, 0, n - 1);
    t.i1 = clamp_int(s + 1, 0, n - 1);
    t.w0 = __float2int_rn(__fmul_rn(__fsub_rn(1.f, f), 2048.f));  // saturate_cast<short>
    t.w1 = __float2int_rn(__fmul_rn(f, 2048.f));
    return t;
}

__device__ __forceinline__ int linear_vertical(int s0, int s1, const LinearTap& ty) {
    const int v = (((s0 >> 4) * ty.w0) >> 16) + (((s1 >> 4) * ty.w1) >> 16);
    return clamp_int((v + 2) >> 2, 0, 255);
}

// INTER_NEAREST source index: min(floor(d * scale), n - 1), in double as OpenCV's resizeNN.
__device__ __forceinline__ int nearest_index(int d, double scale, int n) {
    return min((int)floor(__dmul_rn((double)d, scale)), n - 1);
}

// ---- INTER_AREA on a shrinking axis (OpenCV's resize with scale >= 1 on both axes) ----------

// DBL_EPSILON of <cfloat> (NVRTC has no host headers).
#define BGBLUR_DBL_EPSILON 2.220446049250313080847263336181640625e-16

// OpenCV's test for its integer-ratio INTER_AREA path, one axis: saturate_cast<int>(scale)
// (round half to even) when |scale - that| < DBL_EPSILON, else 0. The fast path is taken only
// when BOTH axes give a non-zero value.
__device__ __forceinline__ int area_integer_scale(double scale) {
    const int i = __double2int_rn(scale);
    const double d = __dsub_rn(scale, (double)i);
    return (d < BGBLUR_DBL_EPSILON && -d < BGBLUR_DBL_EPSILON) ? i : 0;  // |d| < DBL_EPSILON
}

// One axis of OpenCV's computeResizeAreaTab (general INTER_AREA) for destination index d of an
// axis of n source pixels: the cell [f1, f1 + scale), f1 = d * scale, touches source indices
// [begin, end). Index full0 - 1 (== begin when present) is the partial head, [full0, full1) are
// whole pixels and index full1 (== end - 1 when present) is the partial tail; a partial overlap
// of at most 1e-3 is dropped. Weights are overlap / cellWidth, computed in double and rounded to
// float, with cellWidth = min(scale, n - f1) (shorter at the right / bottom border).
struct AreaSpan {
    int begin, end;    // source indices read: [begin, end)
    int full0, full1;  // indices of weight w_full: [full0, full1)
    float w_head, w_full, w_tail;
};

__device__ __forceinline__ AreaSpan area_span(int d, double scale, int n) {
    const double f1 = __dmul_rn((double)d, scale);
    const double f2 = __dadd_rn(f1, scale);
    const double rest = __dsub_rn((double)n, f1);
    const double cell = rest < scale ? rest : scale;  // std::min(scale, n - f1)
    const int s2 = min((int)floor(f2), n - 1);
    const int s1 = min((int)ceil(f1), s2);
    const double head = __dsub_rn((double)s1, f1);
    const double tail = __dsub_rn(f2, (double)s2);
    double tail_len = tail < 1.0 ? tail : 1.0;     // std::min(f2 - s2, 1.)
    tail_len = cell < tail_len ? cell : tail_len;  // std::min(..., cellWidth)
    AreaSpan a;
    a.full0 = s1;
    a.full1 = s2;
    a.begin = head > 1e-3 ? s1 - 1 : s1;
    a.end = tail > 1e-3 ? s2 + 1 : s2;
    a.w_head = __double2float_rn(__ddiv_rn(head, cell));
    a.w_full = __double2float_rn(__ddiv_rn(1.0, cell));
    a.w_tail = __double2float_rn(__ddiv_rn(tail_len, cell));
    return a;
}

// Weight of source index i, begin <= i < end.
__device__ __forceinline__ float area_weight(const AreaSpan& a, int i) {
    return i < a.full0 ? a.w_head : (i < a.full1 ? a.w_full : a.w_tail);
}

#endif  // BGBLUR_KERNELS_RESIZE_CUH
