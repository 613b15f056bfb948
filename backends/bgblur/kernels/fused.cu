// Fused full-resolution postprocess: one kernel per call writes both outputs (BLURRED and MASK)
// of bgblur.stages.postprocess, with the same arithmetic as the chain of per-op kernels
// (probability_to_mask -> upscale_mask -> rgb_to_grey + joint_bilateral_filter -> (small
// background, blurred elsewhere) resize_linear back to full size -> composite), so its results
// are bit-identical to that chain (and so to OpenCV):
//
//   per block (32 x 16 output pixels, 256 threads, two rows per thread):
//    1. stage in shared memory: the RGB tile of the frame with a halo of r pixels (BORDER_
//       REFLECT_101), loaded with aligned 32-bit words where the frame is packed RGB and the
//       tile needs no reflection in x, byte by byte otherwise; the colour/spatial weight tables;
//       the per-column / per-row source indices and 11-bit weights of the two upscales (mask:
//       nearest or linear from the low-resolution probability; background: linear from the small
//       blurred image);
//    2. (refinement on) the grey tile (cvtColor RGB2GRAY's 15-bit fixed point) and the mask tile:
//       each mask sample is the upscaled low-resolution mask, whose samples are computed on the fly
//       from the probability: soft rint(clip(p, 0, 1) * 255) or hard (p >= t ? 255 : 0), float32;
//    3. per pixel: the joint bilateral sum over the circular window in ximgproc's order (or, with
//       refinement off, the upscaled mask sample itself), the bilinear background sample, and the
//       composite (fg * m + bg * (255 - m) + 127) / 255; results go to shared output tiles;
//    4. the output tiles are written with aligned 32-bit words where possible (packed rows,
//       whole tile width), byte by byte otherwise.
//
// grid (ceil(W / 32), ceil(H / 16), B), block (32, 8); dynamic shared memory: see
// fused_shared_bytes() below (mirrored in bgblur/stages/postprocess_fused.py).
#include "common.cuh"
#include "resize.cuh"
#include "bilateral.cuh"

#define FU_BX 32
#define FU_BY 8
#define FU_ROWS 2
#define FU_TX FU_BX                  // output columns of a block
#define FU_TY (FU_BY * FU_ROWS)      // output rows of a block
#define FU_THREADS (FU_BX * FU_BY)
#define FU_COLOUR 511                // colour weights of guide differences -255..255

// float16 bits -> float (exact), without cuda_fp16.h under NVRTC.
__device__ __forceinline__ float f16_bits_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

template <bool HALF>
__device__ __forceinline__ float load_probability(const void* p, i64 offset) {
    if (HALF) return f16_bits_to_f32(__ldg(static_cast<const u16*>(p) + offset));
    return __ldg(static_cast<const float*>(p) + offset);
}

// probability_to_mask of one low-resolution sample: soft rint(clip(p, 0, 1) * 255) (float32,
// round half to even; NaN -> 0) or hard 255 where p >= threshold (float32 compare).
__device__ __forceinline__ int probability_to_u8(float p, bool soft, float threshold) {
    if (soft) return __float2int_rn(__fmul_rn(fminf(fmaxf(p, 0.f), 1.f), 255.f));
    return p >= threshold ? 255 : 0;
}

struct ProbSource {
    const void* p;
    i64 s_b, s_y, s_x;
    float threshold;
    int soft;
};

template <bool HALF>
__device__ __forceinline__ int low_mask(const ProbSource& src, i64 b, int y, int x) {
    return probability_to_u8(
        load_probability<HALF>(src.p, b * src.s_b + y * src.s_y + x * src.s_x), src.soft != 0,
        src.threshold);
}

// The upscaled mask at the tile column / row whose source taps are given: nearest (one index per
// column / row, kept in i0) or linear (resize_linear_u8's arithmetic on the u8 samples).
template <bool HALF, bool LINEAR>
__device__ __forceinline__ int upscaled_mask(
    const ProbSource& src, i64 b, const LinearTap& ty, const LinearTap& tx)
{
    if (!LINEAR) return low_mask<HALF>(src, b, ty.i0, tx.i0);
    const int s0 = low_mask<HALF>(src, b, ty.i0, tx.i0) * tx.w0 +
                   low_mask<HALF>(src, b, ty.i0, tx.i1) * tx.w1;
    const int s1 = low_mask<HALF>(src, b, ty.i1, tx.i0) * tx.w0 +
                   low_mask<HALF>(src, b, ty.i1, tx.i1) * tx.w1;
    return linear_vertical(s0, s1, ty);
}

template <bool LINEAR>
__device__ __forceinline__ LinearTap mask_tap(int d, double scale, int n, bool is_column) {
    if (LINEAR) return linear_tap(d, scale, n, is_column);
    LinearTap t;
    t.i0 = t.i1 = nearest_index(d, scale, n);
    t.w0 = 2048;
    t.w1 = 0;
    return t;
}

// Shared-memory layout (bytes), for halo radius R (0 without refinement):
//   floats: tables[ntab] | mask tile[th * tw]                    (both only with refinement)
//   taps:   mask taps x[tw] | y[th] | background taps x[TX] | y[TY] (LinearTap, 16 bytes each)
//   ints:   row offsets of the RGB tile[th]
//   bytes:  RGB tile[th * rgb_pitch] | out tile[TY * TX * 3] | mask out tile[TY * TX] |
//           grey tile[th * tw] (refinement only)
__device__ __host__ __forceinline__ int fused_rgb_pitch(int tw) { return (tw * 3 + 6 + 3) & ~3; }

struct FusedArgs {
    // probability [B, 1, ph, pw] (float16 or float32), element strides of b, y, x
    ProbSource prob;
    int ph, pw;
    double mscale_x, mscale_y;  // OpenCV's scales of the mask upscale pw -> W, ph -> H
    // frames [B, H, W, 3] uint8
    const u8* frames;
    i64 f_b, f_y, f_x, f_c;
    // small blurred background [B, sh, sw, 3] uint8
    const u8* small;
    int sh, sw;
    i64 s_b, s_y, s_x, s_c;
    double bscale_x, bscale_y;  // scales of the background upscale sw -> W, sh -> H
    const float* tables;  // [colour(511) | spatial((2r+1)^2)] (bilateral_tables), refinement only
    u8* out;  // BLURRED [B, H, W, 3]
    i64 o_b, o_y, o_x, o_c;
    u8* mask;  // MASK [B, H, W]
    i64 k_b, k_y, k_x;
    int H, W, r;
};

template <bool HALF, bool LINEAR, bool REFINE>
__device__ __forceinline__ void fused_postprocess(const FusedArgs& a)
{
    extern __shared__ float4 fused_smem4[];
    const int R = REFINE ? a.r : 0;
    const int d = 2 * R + 1;
    const int tw = FU_TX + 2 * R, th = FU_TY + 2 * R;
    const int ntab = REFINE ? FU_COLOUR + d * d : 0;
    const int rgb_pitch = fused_rgb_pitch(tw);

    float* tabs = reinterpret_cast<float*>(fused_smem4);
    float* mtile = tabs + ntab;
    LinearTap* mtap_x = reinterpret_cast<LinearTap*>(mtile + (REFINE ? th * tw : 0));
    LinearTap* mtap_y = mtap_x + tw;
    LinearTap* btap_x = mtap_y + th;
    LinearTap* btap_y = btap_x + FU_TX;
    int* rowoff = reinterpret_cast<int*>(btap_y + FU_TY);
    u8* rgb = reinterpret_cast<u8*>(rowoff + th);
    u8* obuf = rgb + th * rgb_pitch;
    u8* kbuf = obuf + FU_TY * FU_TX * 3;
    u8* gtile = kbuf + FU_TY * FU_TX;

    const int tid = threadIdx.y * FU_BX + threadIdx.x;
    const i64 b = blockIdx.z;
    const int x0 = blockIdx.x * FU_TX, y0 = blockIdx.y * FU_TY;
    const int H = a.H, W = a.W;

    // ---- 1. tables, taps, RGB tile -----------------------------------------------------------
    for (int i = tid; i < ntab; i += FU_THREADS) tabs[i] = a.tables[i];
    for (int i = tid; i < tw; i += FU_THREADS)
        mtap_x[i] = mask_tap<LINEAR>(reflect101(x0 - R + i, W), a.mscale_x, a.pw, true);
    for (int i = tid; i < th; i += FU_THREADS)
        mtap_y[i] = mask_tap<LINEAR>(reflect101(y0 - R + i, H), a.mscale_y, a.ph, false);
    for (int i = tid; i < FU_TX; i += FU_THREADS)
        btap_x[i] = linear_tap(min(x0 + i, W - 1), a.bscale_x, a.sw, true);
    for (int i = tid; i < FU_TY; i += FU_THREADS)
        btap_y[i] = linear_tap(min(y0 + i, H - 1), a.bscale_y, a.sh, false);

    const u8* fb = a.frames + b * a.f_b;
    const int row_bytes = tw * 3;
    const bool packed_in = a.f_c == 1 && a.f_x == 3 && x0 - R >= 0 && x0 + FU_TX + R <= W;
    if (packed_in) {
        // Row ty of the tile is the byte span [p, p + row_bytes) of frame row sy; it is read as
        // the aligned words covering it and stored as such: the span starts rowoff[ty] bytes in.
        const int words = rgb_pitch / 4;
        for (int i = tid; i < th * words; i += FU_THREADS) {
            const int ty = i / words, wi = i - ty * words;
            const u8* p = fb + reflect101(y0 - R + ty, H) * a.f_y + (i64)(x0 - R) * 3;
            const int off = (int)(reinterpret_cast<unsigned long long>(p) & 3ull);
            const unsigned* aligned = reinterpret_cast<const unsigned*>(p - off);
            if (wi == 0) rowoff[ty] = off;
            if (4 * wi < off + row_bytes)
                reinterpret_cast<unsigned*>(rgb + ty * rgb_pitch)[wi] = __ldg(aligned + wi);
        }
    } else {
        for (int i = tid; i < th * row_bytes; i += FU_THREADS) {
            const int ty = i / row_bytes, k = i - ty * row_bytes;
            const int px = k / 3, c = k - px * 3;
            if (k == 0) rowoff[ty] = 0;
            rgb[ty * rgb_pitch + k] = __ldg(fb + reflect101(y0 - R + ty, H) * a.f_y +
                                            reflect101(x0 - R + px, W) * a.f_x + c * a.f_c);
        }
    }
    __syncthreads();

    // ---- 2. grey and mask tiles (refinement) -------------------------------------------------
    if (REFINE) {
        for (int i = tid; i < th * tw; i += FU_THREADS) {
            const int ty = i / tw, tx = i - ty * tw;
            const u8* px = rgb + ty * rgb_pitch + rowoff[ty] + tx * 3;
            gtile[i] = (u8)((px[0] * 9798 + px[1] * 19235 + px[2] * 3735 + (1 << 14)) >> 15);
            mtile[i] = (float)upscaled_mask<HALF, LINEAR>(a.prob, b, mtap_y[ty], mtap_x[tx]);
        }
        __syncthreads();
    }

    // ---- 3. mask, background, composite of this thread's two pixels --------------------------
    const int lx = threadIdx.x;
    int m[FU_ROWS];
    if (REFINE) {
        const float* lut = tabs + 255;  // lut[g(q) - g(p)], -255..255
        const float* spatial = tabs + FU_COLOUR;
        const int ca = (threadIdx.y + R) * tw + lx + R;  // tile centre of the first pixel
        const int cb = ca + FU_BY * tw;                  // ... of the second (8 rows below)
        const int ga = gtile[ca], gbb = gtile[cb];
        float sa = 0.f, wa = 0.f, sb = 0.f, wb = 0.f;
        const int r2max = R * R;
        for (int i = -R; i <= R; ++i) {
            const float* sp = spatial + (i + R) * d + R;
            const int ra = ca + i * tw, rb = cb + i * tw;
            const int jm = circle_half_width(i, r2max);
            for (int j = -jm; j <= jm; ++j) {
                const float sw = sp[j];
                bilateral_tap(sa, wa, sw, lut[(int)gtile[ra + j] - ga], mtile[ra + j]);
                bilateral_tap(sb, wb, sw, lut[(int)gtile[rb + j] - gbb], mtile[rb + j]);
            }
        }
        m[0] = bilateral_result(sa, wa);
        m[1] = bilateral_result(sb, wb);
    } else {
#pragma unroll
        for (int k = 0; k < FU_ROWS; ++k)
            m[k] = upscaled_mask<HALF, LINEAR>(a.prob, b, mtap_y[threadIdx.y + k * FU_BY],
                                               mtap_x[lx]);
    }

    const LinearTap tx = btap_x[lx];
    const u8* sbase = a.small + b * a.s_b;
    const i64 o0 = tx.i0 * a.s_x, o1 = tx.i1 * a.s_x;
#pragma unroll
    for (int k = 0; k < FU_ROWS; ++k) {
        const int ly = threadIdx.y + k * FU_BY;
        const LinearTap ty = btap_y[ly];
        const u8* r0 = sbase + ty.i0 * a.s_y;
        const u8* r1 = sbase + ty.i1 * a.s_y;
        const int tyy = ly + R;
        const u8* fg = rgb + tyy * rgb_pitch + rowoff[tyy] + (lx + R) * 3;
        const unsigned mk = (unsigned)m[k], im = 255u - mk;
        u8* o = obuf + (ly * FU_TX + lx) * 3;
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            const i64 oc = c * a.s_c;
            const int s0 = __ldg(r0 + o0 + oc) * tx.w0 + __ldg(r0 + o1 + oc) * tx.w1;
            const int s1 = __ldg(r1 + o0 + oc) * tx.w0 + __ldg(r1 + o1 + oc) * tx.w1;
            const unsigned bg = (unsigned)linear_vertical(s0, s1, ty);
            o[c] = (u8)(((unsigned)fg[c] * mk + bg * im + 127u) / 255u);
        }
        kbuf[ly * FU_TX + lx] = (u8)mk;
    }
    __syncthreads();

    // ---- 4. stores ---------------------------------------------------------------------------
    const int nx = min(FU_TX, W - x0);
    const int ny = min(FU_TY, H - y0);
    u8* ob = a.out + b * a.o_b;
    u8* kb = a.mask + b * a.k_b;
    const int obytes = FU_TX * 3;  // 96 bytes, 24 words per output row
    if (a.o_c == 1 && a.o_x == 3 && nx == FU_TX) {
        for (int i = tid; i < ny * (obytes / 4); i += FU_THREADS) {
            const int ly = i / (obytes / 4), wi = i - ly * (obytes / 4);
            u8* dst = ob + (y0 + ly) * a.o_y + (i64)x0 * 3 + 4 * wi;
            const u8* s = obuf + ly * obytes + 4 * wi;
            if ((reinterpret_cast<unsigned long long>(dst) & 3ull) == 0) {
                *reinterpret_cast<unsigned*>(dst) = *reinterpret_cast<const unsigned*>(s);
            } else {
                dst[0] = s[0]; dst[1] = s[1]; dst[2] = s[2]; dst[3] = s[3];
            }
        }
    } else {
        for (int i = tid; i < ny * obytes; i += FU_THREADS) {
            const int ly = i / obytes, k = i - ly * obytes;
            const int px = k / 3, c = k - px * 3;
            if (px < nx)
                ob[(y0 + ly) * a.o_y + (x0 + px) * a.o_x + c * a.o_c] = obuf[ly * obytes + k];
        }
    }
    if (a.k_x == 1 && nx == FU_TX) {
        for (int i = tid; i < ny * (FU_TX / 4); i += FU_THREADS) {
            const int ly = i / (FU_TX / 4), wi = i - ly * (FU_TX / 4);
            u8* dst = kb + (y0 + ly) * a.k_y + x0 + 4 * wi;
            const u8* s = kbuf + ly * FU_TX + 4 * wi;
            if ((reinterpret_cast<unsigned long long>(dst) & 3ull) == 0) {
                *reinterpret_cast<unsigned*>(dst) = *reinterpret_cast<const unsigned*>(s);
            } else {
                dst[0] = s[0]; dst[1] = s[1]; dst[2] = s[2]; dst[3] = s[3];
            }
        }
    } else {
        for (int i = tid; i < ny * FU_TX; i += FU_THREADS) {
            const int ly = i / FU_TX, px = i - ly * FU_TX;
            if (px < nx) kb[(y0 + ly) * a.k_y + (x0 + px) * a.k_x] = kbuf[i];
        }
    }
}

#define FUSED_ARGS                                                                          \
    const void* __restrict__ prob, i64 p_b, i64 p_y, i64 p_x, int soft, float threshold,    \
    int ph, int pw, double mscale_x, double mscale_y,                                       \
    const u8* __restrict__ frames, i64 f_b, i64 f_y, i64 f_x, i64 f_c,                      \
    const u8* __restrict__ small, int sh, int sw, i64 s_b, i64 s_y, i64 s_x, i64 s_c,       \
    double bscale_x, double bscale_y, const float* __restrict__ tables,                     \
    u8* __restrict__ out, i64 o_b, i64 o_y, i64 o_x, i64 o_c,                               \
    u8* __restrict__ mask, i64 k_b, i64 k_y, i64 k_x, int H, int W, int r

__device__ __forceinline__ FusedArgs fused_args(FUSED_ARGS) {
    FusedArgs a;
    a.prob.p = prob;
    a.prob.s_b = p_b;
    a.prob.s_y = p_y;
    a.prob.s_x = p_x;
    a.prob.soft = soft;
    a.prob.threshold = threshold;
    a.ph = ph;
    a.pw = pw;
    a.mscale_x = mscale_x;
    a.mscale_y = mscale_y;
    a.frames = frames;
    a.f_b = f_b;
    a.f_y = f_y;
    a.f_x = f_x;
    a.f_c = f_c;
    a.small = small;
    a.sh = sh;
    a.sw = sw;
    a.s_b = s_b;
    a.s_y = s_y;
    a.s_x = s_x;
    a.s_c = s_c;
    a.bscale_x = bscale_x;
    a.bscale_y = bscale_y;
    a.tables = tables;
    a.out = out;
    a.o_b = o_b;
    a.o_y = o_y;
    a.o_x = o_x;
    a.o_c = o_c;
    a.mask = mask;
    a.k_b = k_b;
    a.k_y = k_y;
    a.k_x = k_x;
    a.H = H;
    a.W = W;
    a.r = r;
    return a;
}

#define FUSED_PASS                                                                           \
    prob, p_b, p_y, p_x, soft, threshold, ph, pw, mscale_x, mscale_y, frames, f_b, f_y, f_x,  \
    f_c, small, sh, sw, s_b, s_y, s_x, s_c, bscale_x, bscale_y, tables, out, o_b, o_y, o_x,   \
    o_c, mask, k_b, k_y, k_x, H, W, r

// Kernel names: fused_post_<probability dtype f16|f32>_<mask upscale nearest|linear>_
// <refine (joint bilateral, radius r) | plain (no refinement, r ignored)>.
#define FUSED_KERNEL(NAME, HALF, LINEAR, REFINE)                                             \
    extern "C" __global__ void __launch_bounds__(FU_THREADS) NAME(FUSED_ARGS) {              \
        fused_postprocess<HALF, LINEAR, REFINE>(fused_args(FUSED_PASS));                     \
    }

FUSED_KERNEL(fused_post_f16_nearest_refine, true, false, true)
FUSED_KERNEL(fused_post_f16_nearest_plain, true, false, false)
FUSED_KERNEL(fused_post_f16_linear_refine, true, true, true)
FUSED_KERNEL(fused_post_f16_linear_plain, true, true, false)
FUSED_KERNEL(fused_post_f32_nearest_refine, false, false, true)
FUSED_KERNEL(fused_post_f32_nearest_plain, false, false, false)
FUSED_KERNEL(fused_post_f32_linear_refine, false, true, true)
FUSED_KERNEL(fused_post_f32_linear_plain, false, true, false)
