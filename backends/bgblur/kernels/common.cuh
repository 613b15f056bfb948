// Shared helpers of the bgblur CUDA kernels (compiled by NVRTC through cupy.RawModule; the
// loader in bgblur/kernels/__init__.py inlines this header into each .cu file).
//
// Conventions of every kernel here:
//  * extern "C" entry points (no name mangling, no name_expressions needed);
//  * images are addressed through element strides (int64) passed from Python, so that
//    non-contiguous CuPy views work without a copy; the base pointer is the view's first element;
//  * the batch index is blockIdx.z, so one launch covers the whole batch;
//  * no standard headers (NVRTC has none): fixed-width types are spelled out below;
//  * arithmetic that must reproduce OpenCV bit for bit uses the explicit IEEE round-to-nearest
//    intrinsics (__fmul_rn, __dadd_rn, ...) so that no multiply-add gets contracted into an FMA.
#ifndef BGBLUR_KERNELS_COMMON_CUH
#define BGBLUR_KERNELS_COMMON_CUH

typedef unsigned char u8;
typedef unsigned short u16;
typedef long long i64;

// cv::borderInterpolate(p, n, BORDER_REFLECT_101) (BORDER_DEFAULT): gfedcb|abcdefgh|gfedcba,
// folding as often as needed when the window is larger than the image; n == 1 maps to 0.
__device__ __forceinline__ int reflect101(int p, int n) {
    if ((unsigned)p < (unsigned)n) return p;
    if (n == 1) return 0;
    do {
        p = p < 0 ? -p : 2 * (n - 1) - p;
    } while ((unsigned)p >= (unsigned)n);
    return p;
}

__device__ __forceinline__ int clamp_int(int v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// float -> IEEE binary16 bits, round to nearest even (what numpy's float32 -> float16 cast and
// __float2half_rn do), without needing cuda_fp16.h under NVRTC.
__device__ __forceinline__ u16 f32_to_f16_bits(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#endif  // BGBLUR_KERNELS_COMMON_CUH
