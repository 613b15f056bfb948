// Gated exponential smoothing of a stream's probability over time (bgblur.ops.temporal):
//   gate = clip((|p - s| - jitter) * inv_range, 0, 1); alpha = keep + strength * gate;
//   s = alpha * p + (1 - alpha) * s
// in float32 with every operation rounded on its own (--fmad=false), as NumPy does: the CPU twin
// gives the same bits. The motion-aware variant (frames given) is below.
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

// Motion-aware gate (bgblur.ops.temporal, frames given): the box-filtered luma (grey levels) of
// the network input decides where a change of the probability is flicker:
//   y = ((a_r x_r + a_g x_g) + a_b x_b) + b at each pixel of the (2r+1)^2 window (edge pixels
//   replicated), summed row by row, left to right, times inv_area;
//   c = |y_t - y_(t-1)|; stillness = clip((moving - c) * inv_image_range, 0, 1);
//   alpha = alpha_p - (alpha_p - keep_still) * stillness
// Each thread reads the frames (read-only) around its pixel and only its own pixel of the two
// states: no thread waits for another.
template <typename F>
__device__ __forceinline__ float temporal_luma(
    const F* __restrict__ frames, i64 f_c, i64 f_y, i64 f_x, i64 base, int y, int x, int H, int W,
    int radius, float a_r, float a_g, float a_b, float b, float inv_area)
{
    float total = 0.0f;
    bool first = true;
    for (int dy = -radius; dy <= radius; ++dy) {
        const int yy = min(max(y + dy, 0), H - 1);
        for (int dx = -radius; dx <= radius; ++dx) {
            const int xx = min(max(x + dx, 0), W - 1);
            const i64 i = base + yy * f_y + xx * f_x;
            const float r = temporal_load(frames, i);
            const float g = temporal_load(frames, i + f_c);
            const float bl = temporal_load(frames, i + 2 * f_c);
            const float luma = __fadd_rn(
                __fadd_rn(__fadd_rn(__fmul_rn(a_r, r), __fmul_rn(a_g, g)), __fmul_rn(a_b, bl)), b);
            total = first ? luma : __fadd_rn(total, luma);
            first = false;
        }
    }
    return __fmul_rn(total, inv_area);
}

template <typename T, typename F>
__device__ __forceinline__ void temporal_smooth_motion(
    const T* __restrict__ prob, i64 p_t, i64 p_y, i64 p_x,
    float* __restrict__ state, i64 s_y, i64 s_x,
    const F* __restrict__ frames, i64 f_t, i64 f_c, i64 f_y, i64 f_x,
    float* __restrict__ luma_state, i64 l_y, i64 l_x,
    float* __restrict__ out, i64 o_t, i64 o_y, i64 o_x,
    int frames_count, int H, int W, int start, int luma_start, float keep, float strength,
    float jitter, float inv_range, float a_r, float a_g, float a_b, float b, int radius,
    float inv_area, float keep_still, float moving, float inv_image_range)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    float s = state[y * s_y + x * s_x];
    float previous = luma_state[y * l_y + x * l_x];
    for (int t = 0; t < frames_count; ++t) {
        const float p = temporal_load(prob, t * p_t + y * p_y + x * p_x);
        const float luma = temporal_luma(
            frames, f_c, f_y, f_x, t * f_t, y, x, H, W, radius, a_r, a_g, a_b, b, inv_area);
        if (t == 0 && start) {
            s = p;
        } else {
            float gate = __fmul_rn(fabsf(__fsub_rn(p, s)) - jitter, inv_range);
            gate = fminf(fmaxf(gate, 0.0f), 1.0f);
            float alpha = __fadd_rn(keep, __fmul_rn(strength, gate));
            if (!(t == 0 && luma_start)) {
                const float change = fabsf(__fsub_rn(luma, previous));
                float stillness = __fmul_rn(__fsub_rn(moving, change), inv_image_range);
                stillness = fminf(fmaxf(stillness, 0.0f), 1.0f);
                alpha = __fsub_rn(alpha, __fmul_rn(__fsub_rn(alpha, keep_still), stillness));
            }
            s = __fadd_rn(__fmul_rn(alpha, p), __fmul_rn(__fsub_rn(1.0f, alpha), s));
        }
        previous = luma;
        out[t * o_t + y * o_y + x * o_x] = s;
    }
    state[y * s_y + x * s_x] = s;
    luma_state[y * l_y + x * l_x] = previous;
}

#define TEMPORAL_MOTION_ARGS(T, F)                                                             \
    const T* __restrict__ prob, i64 p_t, i64 p_y, i64 p_x, float* __restrict__ state, i64 s_y, \
        i64 s_x, const F* __restrict__ frames, i64 f_t, i64 f_c, i64 f_y, i64 f_x,            \
        float* __restrict__ luma_state, i64 l_y, i64 l_x, float* __restrict__ out, i64 o_t,    \
        i64 o_y, i64 o_x, int frames_count, int H, int W, int start, int luma_start,           \
        float keep, float strength, float jitter, float inv_range, float a_r, float a_g,       \
        float a_b, float b, int radius, float inv_area, float keep_still, float moving,        \
        float inv_image_range
#define TEMPORAL_MOTION_CALL                                                                   \
    temporal_smooth_motion(prob, p_t, p_y, p_x, state, s_y, s_x, frames, f_t, f_c, f_y, f_x,  \
                           luma_state, l_y, l_x, out, o_t, o_y, o_x, frames_count, H, W,       \
                           start, luma_start, keep, strength, jitter, inv_range, a_r, a_g,     \
                           a_b, b, radius, inv_area, keep_still, moving, inv_image_range)

// grid (ceil(W / bx), ceil(H / by), 1); one thread per pixel, frames in order. Names:
// temporal_smooth_motion_<probability type>_<frames type>.
extern "C" __global__ void temporal_smooth_motion_f32_f32(TEMPORAL_MOTION_ARGS(float, float)) {
    TEMPORAL_MOTION_CALL;
}
extern "C" __global__ void temporal_smooth_motion_f32_f16(TEMPORAL_MOTION_ARGS(float, u16)) {
    TEMPORAL_MOTION_CALL;
}
extern "C" __global__ void temporal_smooth_motion_f16_f32(TEMPORAL_MOTION_ARGS(u16, float)) {
    TEMPORAL_MOTION_CALL;
}
extern "C" __global__ void temporal_smooth_motion_f16_f16(TEMPORAL_MOTION_ARGS(u16, u16)) {
    TEMPORAL_MOTION_CALL;
}
