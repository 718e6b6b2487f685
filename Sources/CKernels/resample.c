// The two integer passes of the anti-aliased uint8 resampler (VLMMedia/Preprocess/Resample.swift computes the
// fixed-point weights; the semantics are torch's / Pillow-SIMD's, see there). The arithmetic is exact: u8 pixels
// times int16 weights summed in int32 from the rounding bias, so every body gives the same bytes as the scalar one
// in any summation order. SmolVLM's default path (512 px up to 2048, then down to 512 with Lanczos) is about
// 190 M multiply-adds, 90 ms in scalar code; these bodies are several times faster.
#include "ckernels.h"
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define RS_X86 1
#include <immintrin.h>
#define RS_AVX2 __attribute__((target("avx2")))
#elif defined(__aarch64__)
#define RS_ARM 1
#include <arm_neon.h>
#endif

static inline uint8_t clamp8(int32_t v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

// ---------------------------------------------------------------------------------------------------------------
// Scalar reference bodies
// ---------------------------------------------------------------------------------------------------------------
static void vertical_scalar(const uint8_t *rows, size_t row_stride, size_t taps, const int16_t *w, int precision,
                            uint8_t *out, size_t x0, size_t n) {
    const int32_t bias = 1 << (precision - 1);
    for (size_t x = x0; x < n; x++) {
        int32_t acc = bias;
        for (size_t j = 0; j < taps; j++) acc += (int32_t)rows[j * row_stride + x] * w[j];
        out[x] = clamp8(acc >> precision);
    }
}

static void horizontal_pixel_scalar(const uint8_t *row, const int32_t *starts, const int32_t *counts,
                                    const int16_t *w, size_t wstride, int precision, uint8_t *out, size_t x) {
    const int32_t bias = 1 << (precision - 1);
    const uint8_t *p = row + 3 * (size_t)starts[x];
    const int16_t *k = w + x * wstride;
    int32_t r = bias, g = bias, b = bias;
    for (int32_t j = 0; j < counts[x]; j++, p += 3) {
        r += (int32_t)p[0] * k[j];
        g += (int32_t)p[1] * k[j];
        b += (int32_t)p[2] * k[j];
    }
    out[3 * x] = clamp8(r >> precision);
    out[3 * x + 1] = clamp8(g >> precision);
    out[3 * x + 2] = clamp8(b >> precision);
}

// ---------------------------------------------------------------------------------------------------------------
// AVX2 bodies
// ---------------------------------------------------------------------------------------------------------------
#if RS_X86
// 32 bytes of the output row per step, all taps accumulated in registers. Rows are taken in pairs so one vpmaddwd
// multiplies two rows' pixels by their two weights: interleave the zero-extended bytes of rows j and j+1 as int16
// pairs, then madd with (w_j, w_j+1). The unpack order is undone by packs/packus at the end (both work per 128-bit
// lane in the same order the unpacks split it).
RS_AVX2 static size_t vertical_avx2(const uint8_t *rows, size_t row_stride, size_t taps, const int16_t *w,
                                    int precision, uint8_t *out, size_t n) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i bias = _mm256_set1_epi32(1 << (precision - 1));
    const __m128i shift = _mm_cvtsi32_si128(precision);
    size_t x = 0;
    for (; x + 32 <= n; x += 32) {
        __m256i a0 = bias, a1 = bias, a2 = bias, a3 = bias;
        for (size_t j = 0; j < taps; j += 2) {
            const __m256i ra = _mm256_loadu_si256((const __m256i *)(rows + j * row_stride + x));
            __m256i rb = zero;
            int32_t pair = (uint16_t)w[j];
            if (j + 1 < taps) {
                rb = _mm256_loadu_si256((const __m256i *)(rows + (j + 1) * row_stride + x));
                pair |= (int32_t)((uint32_t)(uint16_t)w[j + 1] << 16);
            }
            const __m256i wp = _mm256_set1_epi32(pair);
            const __m256i alo = _mm256_unpacklo_epi8(ra, zero), ahi = _mm256_unpackhi_epi8(ra, zero);
            const __m256i blo = _mm256_unpacklo_epi8(rb, zero), bhi = _mm256_unpackhi_epi8(rb, zero);
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_unpacklo_epi16(alo, blo), wp));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_unpackhi_epi16(alo, blo), wp));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_unpacklo_epi16(ahi, bhi), wp));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_unpackhi_epi16(ahi, bhi), wp));
        }
        a0 = _mm256_sra_epi32(a0, shift);
        a1 = _mm256_sra_epi32(a1, shift);
        a2 = _mm256_sra_epi32(a2, shift);
        a3 = _mm256_sra_epi32(a3, shift);
        // Saturating packs clamp to [0, 255] exactly as clamp8 does.
        const __m256i lo = _mm256_packs_epi32(a0, a1), hi = _mm256_packs_epi32(a2, a3);
        _mm256_storeu_si256((__m256i *)(out + x), _mm256_packus_epi16(lo, hi));
    }
    return x;
}

// One output pixel from groups of four taps: a 16-byte load at tap t holds pixels t..t+3 (12 bytes); one shuffle
// lays out (r_t, r_t+1), (g_t, g_t+1), (b_t, b_t+1) as int16 pairs in the low lane and the same for taps t+2, t+3 in
// the high lane, and vpmaddwd with (w_t, w_t+1 | w_t+2, w_t+3) adds two taps per int32 lane. Taps past counts[x]
// have zero weights (the caller pads each row of w to a multiple of four), so reading their pixels is harmless;
// the caller only sends pixels whose 16-byte loads stay inside the image.
RS_AVX2 static inline void horizontal_pixel_avx2(const uint8_t *row, int32_t start, int32_t count,
                                                 const int16_t *k, int precision, uint8_t *out) {
    const __m256i mask = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
                                          6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1);
    const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const uint8_t *p = row + 3 * (size_t)start;
    __m256i acc = _mm256_setzero_si256();
    for (int32_t t = 0; t < count; t += 4, p += 12, k += 4) {
        const __m256i px = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p)), mask);
        const __m256i wk = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)k)), spread);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(px, wk));
    }
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    sum = _mm_add_epi32(sum, _mm_set1_epi32(1 << (precision - 1)));
    sum = _mm_sra_epi32(sum, _mm_cvtsi32_si128(precision));
    const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(sum, sum), sum);
    const uint32_t rgb = (uint32_t)_mm_cvtsi128_si32(bytes);
    out[0] = (uint8_t)rgb;
    out[1] = (uint8_t)(rgb >> 8);
    out[2] = (uint8_t)(rgb >> 16);
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// NEON bodies
// ---------------------------------------------------------------------------------------------------------------
#if RS_ARM
static size_t vertical_neon(const uint8_t *rows, size_t row_stride, size_t taps, const int16_t *w, int precision,
                            uint8_t *out, size_t n) {
    const int32x4_t bias = vdupq_n_s32(1 << (precision - 1));
    const int32x4_t shift = vdupq_n_s32(-precision);
    size_t x = 0;
    for (; x + 16 <= n; x += 16) {
        int32x4_t a0 = bias, a1 = bias, a2 = bias, a3 = bias;
        for (size_t j = 0; j < taps; j++) {
            const uint8x16_t v = vld1q_u8(rows + j * row_stride + x);
            const int16x8_t lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(v)));
            const int16x8_t hi = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(v)));
            a0 = vmlal_n_s16(a0, vget_low_s16(lo), w[j]);
            a1 = vmlal_n_s16(a1, vget_high_s16(lo), w[j]);
            a2 = vmlal_n_s16(a2, vget_low_s16(hi), w[j]);
            a3 = vmlal_n_s16(a3, vget_high_s16(hi), w[j]);
        }
        const int16x8_t lo = vcombine_s16(vqmovn_s32(vshlq_s32(a0, shift)), vqmovn_s32(vshlq_s32(a1, shift)));
        const int16x8_t hi = vcombine_s16(vqmovn_s32(vshlq_s32(a2, shift)), vqmovn_s32(vshlq_s32(a3, shift)));
        vst1q_u8(out + x, vcombine_u8(vqmovun_s16(lo), vqmovun_s16(hi)));
    }
    return x;
}

// One tap per step: an 8-byte load at the tap's pixel, widened, multiplies (r, g, b, next r) by the weight; the
// fourth lane is ignored. The caller only sends pixels whose loads stay inside the image.
static inline void horizontal_pixel_neon(const uint8_t *row, int32_t start, int32_t count, const int16_t *k,
                                         int precision, uint8_t *out) {
    const uint8_t *p = row + 3 * (size_t)start;
    int32x4_t acc = vdupq_n_s32(1 << (precision - 1));
    for (int32_t t = 0; t < count; t++, p += 3)
        acc = vmlal_n_s16(acc, vget_low_s16(vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p)))), k[t]);
    acc = vshlq_s32(acc, vdupq_n_s32(-precision));
    out[0] = clamp8(vgetq_lane_s32(acc, 0));
    out[1] = clamp8(vgetq_lane_s32(acc, 1));
    out[2] = clamp8(vgetq_lane_s32(acc, 2));
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------------------
void vk_resample_vertical_u8(const uint8_t *rows, size_t row_stride, size_t taps, const int16_t *w, int precision,
                             uint8_t *out, size_t n) {
    size_t done = 0;
#if RS_X86
    if (vk_simd_level() & 1) done = vertical_avx2(rows, row_stride, taps, w, precision, out, n);
#elif RS_ARM
    if (vk_simd_level() == 2) done = vertical_neon(rows, row_stride, taps, w, precision, out, n);
#endif
    vertical_scalar(rows, row_stride, taps, w, precision, out, done, n);
}

void vk_resample_horizontal_rgb8(const uint8_t *in, size_t in_width, size_t y0, size_t y1, uint8_t *out,
                                 size_t out_width, const int32_t *starts, const int32_t *counts, const int16_t *w,
                                 size_t wstride, int precision, size_t image_rows) {
    const size_t in_row = 3 * in_width, end = in_row * image_rows;
    const int level = vk_simd_level();
    (void)level;
    (void)end;
    for (size_t y = y0; y < y1; y++) {
        const uint8_t *row = in + y * in_row;
        uint8_t *dst = out + y * 3 * out_width;
        for (size_t x = 0; x < out_width; x++) {
            const size_t first = y * in_row + 3 * (size_t)starts[x];
#if RS_X86
            // Groups of four taps, each read as 16 bytes from its first pixel.
            const size_t groups = ((size_t)counts[x] + 3) / 4;
            if ((level & 1) && groups > 0 && first + 12 * (groups - 1) + 16 <= end) {
                horizontal_pixel_avx2(row, starts[x], counts[x], w + x * wstride, precision, dst + 3 * x);
                continue;
            }
#elif RS_ARM
            if (level == 2 && counts[x] > 0 && first + 3 * ((size_t)counts[x] - 1) + 8 <= end) {
                horizontal_pixel_neon(row, starts[x], counts[x], w + x * wstride, precision, dst + 3 * x);
                continue;
            }
#endif
            horizontal_pixel_scalar(row, starts, counts, w, wstride, precision, dst, x);
        }
    }
}
