// Device helpers of the joint bilateral filter (ximgproc's window order and float arithmetic),
// shared by bilateral.cu and fused.cu (see the comment at the top of bilateral.cu).
#ifndef BGBLUR_KERNELS_BILATERAL_CUH
#define BGBLUR_KERNELS_BILATERAL_CUH

#include "common.cuh"

// Largest j with i*i + j*j <= r2max: the window row i spans j in [-jm, jm] (OpenCV's order).
__device__ __forceinline__ int circle_half_width(int i, int r2max) {
    int jm = (int)sqrtf((float)(r2max - i * i));
    while (jm * jm + i * i > r2max) --jm;
    while ((jm + 1) * (jm + 1) + i * i <= r2max) ++jm;
    return jm;
}

// One tap of OpenCV's loop: w = spatial * colour; sum += w * m; wsum += w (no FMA).
__device__ __forceinline__ void bilateral_tap(float& sum, float& wsum, float sw, float cw, float m) {
    const float w = __fmul_rn(sw, cw);
    sum = __fadd_rn(sum, __fmul_rn(w, m));
    wsum = __fadd_rn(wsum, w);
}

__device__ __forceinline__ u8 bilateral_result(float sum, float wsum) {
    return (u8)clamp_int(__float2int_rn(__fmul_rn(sum, __fdiv_rn(1.f, wsum))), 0, 255);
}

#endif  // BGBLUR_KERNELS_BILATERAL_CUH
