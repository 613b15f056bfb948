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

#endif  // BGBLUR_KERNELS_RESIZE_CUH
