// Gated exponential smoothing of a stream's probability over time (bgblur.ops.temporal):
//   gate = clip((|p - s| - jitter) * inv_range, 0, 1); alpha = keep + strength * gate;
//   s = alpha * p + (1 - alpha) * s
// in float32 with every operation rounded on its own (--fmad=false), as NumPy does: the CPU twin
// gives the same bits.
#include "common.cuh"

__device__ __forceinline__ float temporal_load(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float temporal_load(const u16* p, i64 i) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i]));
    return f;
}

template <typename T>
__device__ __forceinline__ void temporal_smooth(
    const T* __restrict__ prob, i64 p_t, i64 p_y, i64 p_x,
    float* __restrict__ state, i64 s_y, i64 s_x,
    float* __restrict__ out, i64 o_t, i64 o_y, i64 o_x,
    int frames, int H, int W, int start, float keep, float strength, float jitter,
    float inv_range)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    float s = state[y * s_y + x * s_x];
    for (int t = 0; t < frames; ++t) {
        const float p = temporal_load(prob, t * p_t + y * p_y + x * p_x);
        if (t == 0 && start) {
            s = p;
        } else {
            float gate = __fmul_rn(fabsf(__fsub_rn(p, s)) - jitter, inv_range);
            gate = fminf(fmaxf(gate, 0.0f), 1.0f);
            const float alpha = __fadd_rn(keep, __fmul_rn(strength, gate));
            s = __fadd_rn(__fmul_rn(alpha, p), __fmul_rn(__fsub_rn(1.0f, alpha), s));
        }
        out[t * o_t + y * o_y + x * o_x] = s;
    }
    state[y * s_y + x * s_x] = s;
}

#define TEMPORAL_ARGS(T)                                                                       \
    const T* __restrict__ prob, i64 p_t, i64 p_y, i64 p_x, float* __restrict__ state, i64 s_y, \
        i64 s_x, float* __restrict__ out, i64 o_t, i64 o_y, i64 o_x, int frames, int H, int W, \
        int start, float keep, float strength, float jitter, float inv_range
#define TEMPORAL_CALL                                                                          \
    temporal_smooth(prob, p_t, p_y, p_x, state, s_y, s_x, out, o_t, o_y, o_x, frames, H, W,   \
                    start, keep, strength, jitter, inv_range)

// grid (ceil(W / bx), ceil(H / by), 1); one thread per pixel, frames in order.
extern "C" __global__ void temporal_smooth_f32(TEMPORAL_ARGS(float)) { TEMPORAL_CALL; }
extern "C" __global__ void temporal_smooth_f16(TEMPORAL_ARGS(u16)) { TEMPORAL_CALL; }
