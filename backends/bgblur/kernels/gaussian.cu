// Gaussian blur of uint8 NHWC frames, as cv::GaussianBlur(src, dst, (k, k), sigma) on CV_8U with
// BORDER_REFLECT_101: OpenCV's bit-exact fixed-point path (imgproc/src/smooth.dispatch.cpp,
// GaussianBlurFixedPoint):
//   taps: getGaussianKernelBitExact (doubles, normalised) quantised to ufixedpoint16 (8 fractional
//         bits) by error diffusion (getGaussianKernelFixedPoint_ED); they sum to exactly 256;
//   horizontal: H = sum_k tap[k] * src[reflect101(x + k - r)]   (exact, <= 65280: uint16);
//   vertical:   out = (sum_k tap[k] * H[reflect101(y + k - r)] + 2^15) >> 16.
// All integer after the taps, so the result is bit-exact with OpenCV.
//
// Three launches per call, all on the caller's stream:
//   1. gaussian_taps: one block computes the taps into a small device buffer;
//   2. gaussian_h_*:  src (strided u8)  -> tmp (contiguous [B, H, W, C] u16);
//   3. gaussian_v_*:  tmp               -> dst (strided u8).
// The *_tiled variants stage their input window in shared memory; the *_direct variants read
// global memory directly (coalesced) and are used only when the window does not fit.
#include "common.cuh"

// Launch with one block (any size) and n / 2 doubles of dynamic shared memory.
extern "C" __global__ void gaussian_taps(int* __restrict__ taps, int n, double scale2x)
{
    extern __shared__ double values[];
    const int n2 = (n - 1) / 2;  // n is odd
    for (int i = threadIdx.x; i < n2; i += blockDim.x) {
        const double x = (double)(1 - n + 2 * i);
        values[i] = exp(__dmul_rn(__dmul_rn(x, x), scale2x));
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    // getGaussianKernelBitExact (sigma > 0 branch), in the same order of IEEE operations.
    double sum = 0.0;
    for (int i = 0; i < n2; ++i) sum = __dadd_rn(sum, values[i]);
    sum = __dadd_rn(__dmul_rn(sum, 2.0), 1.0);
    const double mul1 = __ddiv_rn(1.0, sum);
    // getGaussianKernelFixedPoint_ED with 8 fractional bits; cvRound(softdouble) is half-even.
    double err = 0.0;
    int isum = 0;
    for (int i = 0; i < n2; ++i) {
        const double t = __dmul_rn(values[i], mul1);
        const double adj = __dadd_rn(__dmul_rn(t, 256.0), err);
        const double v = rint(adj);
        err = __dsub_rn(adj, v);
        taps[i] = taps[n - 1 - i] = (int)v;
        isum += (int)v;
    }
    taps[n2] = 256 - 2 * isum;
}

// Both passes give each thread GAUSS_OUT = 8 consecutive outputs along the filter direction and
// walk the taps in chunks of 8 (taps zero-padded to kpad, a multiple of 8): per chunk 8 input
// loads, two float4 tap loads and 64 FMAs from registers (fully unrolled, no register shifting).
// Inputs are staged as float so the inner loop has no conversions. The arithmetic is float:
// every product and partial sum is an integer below 2^24 (taps are >= 0 and sum to 256, inputs
// <= 255 resp. <= 65280), so the float sums are exact and their order does not matter.
#define GAUSS_OUT 8

// acc[o] = sum_{k < kpad} taps[k] * in(k + o), o < 8; in(m) is read for m < kpad + 8.
template <class In>
__device__ __forceinline__ void fir8(float (&acc)[GAUSS_OUT], const float* taps, int kpad, In in)
{
    float win[GAUSS_OUT], nxt[GAUSS_OUT];
#pragma unroll
    for (int i = 0; i < GAUSS_OUT; ++i) { acc[i] = 0.f; win[i] = in(i); }
    for (int k = 0; k < kpad; k += GAUSS_OUT) {
#pragma unroll
        for (int i = 0; i < GAUSS_OUT; ++i) nxt[i] = in(k + GAUSS_OUT + i);
        const float4 ta = *reinterpret_cast<const float4*>(taps + k);
        const float4 tb = *reinterpret_cast<const float4*>(taps + k + 4);
        const float t[GAUSS_OUT] = {ta.x, ta.y, ta.z, ta.w, tb.x, tb.y, tb.z, tb.w};
#pragma unroll
        for (int j = 0; j < GAUSS_OUT; ++j) {
#pragma unroll
            for (int o = 0; o < GAUSS_OUT; ++o)
                acc[o] = __fmaf_rn(t[j], o + j < GAUSS_OUT ? win[o + j] : nxt[o + j - GAUSS_OUT],
                                   acc[o]);
        }
#pragma unroll
        for (int i = 0; i < GAUSS_OUT; ++i) win[i] = nxt[i];
    }
}

// Copies the taps into shared memory as floats, zero-padded to kpad.
__device__ __forceinline__ void load_taps(
    float* taps, const int* __restrict__ taps_g, int ksize, int kpad, int tid, int nthreads)
{
    for (int i = tid; i < kpad; i += nthreads) taps[i] = i < ksize ? (float)taps_g[i] : 0.f;
}

// ---- horizontal pass: one block = GAUSS_H_PIXELS pixels of one row (blockIdx.y = y) ----------
#define GAUSS_H_PIXELS 1024

template <bool TILED>
__device__ __forceinline__ void gaussian_h(
    const u8* __restrict__ src, u16* __restrict__ tmp, const int* __restrict__ taps_g,
    int H, int W, int C, int ksize, int kpad, i64 s_b, i64 s_y, i64 s_x, i64 s_c)
{
    // shared: taps[kpad] f32 | result[npix * C] u16 | (TILED) tile[(ngroups*8 + kpad + 8) * C] f32
    extern __shared__ float4 smem4[];
    float* taps = reinterpret_cast<float*>(smem4);
    const int r = ksize / 2;
    const int y = blockIdx.y;
    const i64 b = blockIdx.z;
    const int x0 = blockIdx.x * GAUSS_H_PIXELS;
    const int npix = min(GAUSS_H_PIXELS, W - x0);
    const int ngroups = (npix + GAUSS_OUT - 1) / GAUSS_OUT;
    u16* result = reinterpret_cast<u16*>(taps + kpad);
    float* tile = reinterpret_cast<float*>(result + ((npix * C + 1) & ~1));
    const u8* row = src + b * s_b + y * s_y;

    load_taps(taps, taps_g, ksize, kpad, threadIdx.x, blockDim.x);
    if (TILED) {
        const int n = ngroups * GAUSS_OUT + kpad + GAUSS_OUT;  // pixels
        for (int p = threadIdx.x; p < n; p += blockDim.x) {
            const u8* px = row + reflect101(x0 - r + p, W) * s_x;
            for (int c = 0; c < C; ++c) tile[p * C + c] = (float)__ldg(px + c * s_c);
        }
    }
    __syncthreads();

    // Work item u: pixels [p0, p0 + 8) of channel c; consecutive threads take the channels of a
    // pixel group, then the next group.
    for (int u = threadIdx.x; u < ngroups * C; u += blockDim.x) {
        const int g = u / C, c = u - g * C;
        const int p0 = g * GAUSS_OUT;
        float acc[GAUSS_OUT];
        if (TILED) {
            const float* t = tile + p0 * C + c;  // input of output p0 + o at tap k: t[(k + o) * C]
            fir8(acc, taps, kpad, [&](int m) { return t[m * C]; });
        } else {
            const u8* rc = row + c * s_c;
            const int xs = x0 + p0 - r;  // input of output p0 + o at tap k: pixel xs + k + o
            fir8(acc, taps, kpad,
                 [&](int m) { return (float)__ldg(rc + reflect101(xs + m, W) * s_x); });
        }
#pragma unroll
        for (int o = 0; o < GAUSS_OUT; ++o)
            if (p0 + o < npix) result[(p0 + o) * C + c] = (u16)acc[o];
    }
    __syncthreads();
    // Coalesced store of the row segment (tmp is contiguous [B, H, W, C]).
    u16* trow = tmp + ((b * H + y) * (i64)W + x0) * C;
    for (int i = threadIdx.x; i < npix * C; i += blockDim.x) trow[i] = result[i];
}

#define GAUSS_H_ARGS                                                                  \
    const u8* __restrict__ src, u16* __restrict__ tmp, const int* __restrict__ taps,  \
    int H, int W, int C, int ksize, int kpad, i64 s_b, i64 s_y, i64 s_x, i64 s_c
#define GAUSS_H_PASS src, tmp, taps, H, W, C, ksize, kpad, s_b, s_y, s_x, s_c

// grid (ceil(W / 1024), H, B), block 128; shared (bytes): 4 kpad + 2 round_up(npix C, 2)
// (+ 4 (round_up(npix, 8) + kpad + 8) C if tiled), npix = min(1024, W).
extern "C" __global__ void gaussian_h_tiled(GAUSS_H_ARGS) { gaussian_h<true>(GAUSS_H_PASS); }
extern "C" __global__ void gaussian_h_direct(GAUSS_H_ARGS) { gaussian_h<false>(GAUSS_H_PASS); }

// ---- vertical pass: block (32, 8) = 32 consecutive elements of a row (x * C + c) times
// ---- GAUSS_V_ROWS = 8 * GAUSS_OUT rows, each thread GAUSS_OUT consecutive rows ---------------
#define GAUSS_V_ROWS (8 * GAUSS_OUT)

template <bool TILED>
__device__ __forceinline__ void gaussian_v(
    const u16* __restrict__ tmp, u8* __restrict__ dst, const int* __restrict__ taps_g,
    int H, int W, int C, int ksize, int kpad, i64 d_b, i64 d_y, i64 d_x, i64 d_c)
{
    // shared: taps[kpad] f32 | (TILED) tile[(GAUSS_V_ROWS + kpad + 8) * 32] f32
    extern __shared__ float4 smem4[];
    float* taps = reinterpret_cast<float*>(smem4);
    float* tile = taps + kpad;
    const int r = ksize / 2;
    const i64 b = blockIdx.z;
    const int wc = W * C;
    const int e0 = blockIdx.x * 32;
    const int y0 = blockIdx.y * GAUSS_V_ROWS;
    const int tid = threadIdx.y * 32 + threadIdx.x;
    const int nthreads = 32 * 8;
    const u16* plane = tmp + b * H * (i64)wc;

    load_taps(taps, taps_g, ksize, kpad, tid, nthreads);
    if (TILED && e0 + threadIdx.x < wc) {
        const int n = GAUSS_V_ROWS + kpad + GAUSS_OUT;  // rows
        const u16* col = plane + e0 + threadIdx.x;
        for (int ry = threadIdx.y; ry < n; ry += 8)
            tile[ry * 32 + threadIdx.x] = (float)col[reflect101(y0 - r + ry, H) * (i64)wc];
    }
    __syncthreads();

    const int e = e0 + threadIdx.x;
    const int ya = y0 + threadIdx.y * GAUSS_OUT;  // this thread's first output row
    if (e >= wc || ya >= H) return;
    float acc[GAUSS_OUT];
    if (TILED) {
        const float* t = tile + (threadIdx.y * GAUSS_OUT) * 32 + threadIdx.x;  // row ya - r + m
        fir8(acc, taps, kpad, [&](int m) { return t[m * 32]; });
    } else {
        const u16* col = plane + e;
        const int ys = ya - r;
        fir8(acc, taps, kpad,
             [&](int m) { return (float)__ldg(col + reflect101(ys + m, H) * (i64)wc); });
    }
    const int p = e / C, c = e - p * C;
    u8* out = dst + b * d_b + p * d_x + c * d_c;
#pragma unroll
    for (int o = 0; o < GAUSS_OUT; ++o) {
        if (ya + o < H)
            out[(ya + o) * d_y] = (u8)clamp_int(((int)acc[o] + (1 << 15)) >> 16, 0, 255);
    }
}

#define GAUSS_V_ARGS                                                                   \
    const u16* __restrict__ tmp, u8* __restrict__ dst, const int* __restrict__ taps,   \
    int H, int W, int C, int ksize, int kpad, i64 d_b, i64 d_y, i64 d_x, i64 d_c
#define GAUSS_V_PASS tmp, dst, taps, H, W, C, ksize, kpad, d_b, d_y, d_x, d_c

// grid (ceil(W * C / 32), ceil(H / 64), B), block (32, 8);
// shared (bytes): 4 kpad (+ 4 (64 + kpad + 8) 32 if tiled).
extern "C" __global__ void gaussian_v_tiled(GAUSS_V_ARGS) { gaussian_v<true>(GAUSS_V_PASS); }
extern "C" __global__ void gaussian_v_direct(GAUSS_V_ARGS) { gaussian_v<false>(GAUSS_V_PASS); }
