// CKernels implementation. Structure: scalar reference bodies first (they define the semantics and are what the
// tests compare against), then the AVX2/FMA/F16C bodies (x86-64) and NEON bodies (arm64), then the dispatching
// entry points. ISA bodies carry per-function target attributes, so the package needs no compiler flags.
#include "ckernels.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define VK_X86 1
#include <immintrin.h>
#define VK_AVX2 __attribute__((target("avx2,fma,f16c")))
#elif defined(__aarch64__)
#define VK_ARM 1
#include <arm_neon.h>
#endif

// ---------------------------------------------------------------------------------------------------------------
// Feature detection
// ---------------------------------------------------------------------------------------------------------------
static int g_force_scalar = 0;
static int g_level = -1;

static int detect_level(void) {
#if VK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
    return 0;
#elif VK_ARM
    return 2;  // NEON is mandatory on arm64
#else
    return 0;
#endif
}

int vk_simd_level(void) {
    if (g_force_scalar) return 0;
    if (g_level < 0) g_level = detect_level();
    return g_level;
}

void vk_force_scalar(int on) { g_force_scalar = on; }

// ---------------------------------------------------------------------------------------------------------------
// Scalar conversions (bit exact with torch: bf16 is the top half of f32; f16 is IEEE binary16)
// ---------------------------------------------------------------------------------------------------------------
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: normalise
            int e = -1;
            do { man <<= 1; e++; } while ((man & 0x400) == 0);
            man &= 0x3ff;
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float load_w(const void *w, vk_dtype dt, size_t i) {
    switch (dt) {
    case VK_F16: return f16_to_f32(((const uint16_t *)w)[i]);
    case VK_BF16: return bf16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

static void to_f32_scalar(const void *src, vk_dtype dt, size_t count, float *dst) {
    for (size_t i = 0; i < count; i++) dst[i] = load_w(src, dt, i);
}

void vk_f32_to_bf16(const float *src, size_t count, uint16_t *dst) {
    for (size_t i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) { dst[i] = (uint16_t)((u >> 16) | 0x40); continue; }  // NaN stays NaN
        u += 0x7fffu + ((u >> 16) & 1u);
        dst[i] = (uint16_t)(u >> 16);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Scalar reference bodies
// ---------------------------------------------------------------------------------------------------------------
static void matmul_scalar(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt,
                          size_t n0, size_t n1, const float *bias, float *y, size_t ldy) {
    for (size_t n = n0; n < n1; n++) {
        size_t base = n * K;
        for (size_t t = 0; t < T; t++) {
            const float *xr = x + t * ldx;
            float acc = 0.0f;
            for (size_t k = 0; k < K; k++) acc += xr[k] * load_w(w, dt, base + k);
            y[t * ldy + n] = bias ? acc + bias[n] : acc;
        }
    }
}

static float dot_scalar(const float *a, const float *b, size_t n) {
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void axpy_scalar(float a, const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

// ---------------------------------------------------------------------------------------------------------------
// AVX2 / FMA / F16C bodies
// ---------------------------------------------------------------------------------------------------------------
#if VK_X86
VK_AVX2 static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

// Eight weights of any dtype as f32 lanes.
VK_AVX2 static inline __m256 load8(const void *w, vk_dtype dt, size_t i) {
    if (dt == VK_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (dt == VK_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_loadu_ps((const float *)w + i);
}

VK_AVX2 static void to_f32_avx2(const void *src, vk_dtype dt, size_t count, float *dst) {
    size_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, load8(src, dt, i));
    for (; i < count; i++) dst[i] = load_w(src, dt, i);
}

VK_AVX2 static float dot_avx2(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float acc = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

VK_AVX2 static void axpy_avx2(float a, const float *x, float *y, size_t n) {
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

// Decode path (one token): four weight rows at a time, converted on the fly, each weight byte read once.
VK_AVX2 static void gemv_avx2(const float *x, size_t K, const void *w, vk_dtype dt, size_t n0, size_t n1,
                              const float *bias, float *y) {
    size_t n = n0;
    size_t K8 = K & ~(size_t)7;
    for (; n + 4 <= n1; n += 4) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        size_t r0 = n * K, r1 = r0 + K, r2 = r1 + K, r3 = r2 + K;
        for (size_t k = 0; k < K8; k += 8) {
            __m256 xv = _mm256_loadu_ps(x + k);
            a0 = _mm256_fmadd_ps(xv, load8(w, dt, r0 + k), a0);
            a1 = _mm256_fmadd_ps(xv, load8(w, dt, r1 + k), a1);
            a2 = _mm256_fmadd_ps(xv, load8(w, dt, r2 + k), a2);
            a3 = _mm256_fmadd_ps(xv, load8(w, dt, r3 + k), a3);
        }
        float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
        for (size_t k = K8; k < K; k++) {
            s0 += x[k] * load_w(w, dt, r0 + k);
            s1 += x[k] * load_w(w, dt, r1 + k);
            s2 += x[k] * load_w(w, dt, r2 + k);
            s3 += x[k] * load_w(w, dt, r3 + k);
        }
        if (bias) { s0 += bias[n]; s1 += bias[n + 1]; s2 += bias[n + 2]; s3 += bias[n + 3]; }
        y[n] = s0; y[n + 1] = s1; y[n + 2] = s2; y[n + 3] = s3;
    }
    for (; n < n1; n++) {
        __m256 a0 = _mm256_setzero_ps();
        size_t r0 = n * K;
        for (size_t k = 0; k < K8; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(w, dt, r0 + k), a0);
        float s0 = hsum256(a0);
        for (size_t k = K8; k < K; k++) s0 += x[k] * load_w(w, dt, r0 + k);
        y[n] = bias ? s0 + bias[n] : s0;
    }
}

// Prefill path: micro-kernel of 4 tokens x 3 weight rows (12 accumulators, 3 weight + 1 activation registers).
// Tokens are processed in blocks that keep their activations in L2; weight rows are converted to f32 once per
// block into `scratch`, so bf16/f16 weights cost no more arithmetic than f32 ones.
#define MR 4
#define NR 3
VK_AVX2 static void micro_4x3(const float *x, size_t ldx, size_t K, const float *w0, const float *w1,
                              const float *w2, size_t mr, size_t nr, float out[MR][NR]) {
    __m256 c[MR][NR];
    for (size_t i = 0; i < MR; i++)
        for (size_t j = 0; j < NR; j++) c[i][j] = _mm256_setzero_ps();
    const float *xr[MR];
    for (size_t i = 0; i < MR; i++) xr[i] = x + (i < mr ? i : 0) * ldx;
    const float *wr[NR] = {w0, nr > 1 ? w1 : w0, nr > 2 ? w2 : w0};
    size_t K8 = K & ~(size_t)7;
    for (size_t k = 0; k < K8; k += 8) {
        __m256 b0 = _mm256_loadu_ps(wr[0] + k), b1 = _mm256_loadu_ps(wr[1] + k), b2 = _mm256_loadu_ps(wr[2] + k);
        __m256 a;
        a = _mm256_loadu_ps(xr[0] + k);
        c[0][0] = _mm256_fmadd_ps(a, b0, c[0][0]); c[0][1] = _mm256_fmadd_ps(a, b1, c[0][1]); c[0][2] = _mm256_fmadd_ps(a, b2, c[0][2]);
        a = _mm256_loadu_ps(xr[1] + k);
        c[1][0] = _mm256_fmadd_ps(a, b0, c[1][0]); c[1][1] = _mm256_fmadd_ps(a, b1, c[1][1]); c[1][2] = _mm256_fmadd_ps(a, b2, c[1][2]);
        a = _mm256_loadu_ps(xr[2] + k);
        c[2][0] = _mm256_fmadd_ps(a, b0, c[2][0]); c[2][1] = _mm256_fmadd_ps(a, b1, c[2][1]); c[2][2] = _mm256_fmadd_ps(a, b2, c[2][2]);
        a = _mm256_loadu_ps(xr[3] + k);
        c[3][0] = _mm256_fmadd_ps(a, b0, c[3][0]); c[3][1] = _mm256_fmadd_ps(a, b1, c[3][1]); c[3][2] = _mm256_fmadd_ps(a, b2, c[3][2]);
    }
    for (size_t i = 0; i < MR; i++)
        for (size_t j = 0; j < NR; j++) {
            float s = hsum256(c[i][j]);
            for (size_t k = K8; k < K; k++) s += xr[i][k] * wr[j][k];
            out[i][j] = s;
        }
}

VK_AVX2 static void gemm_avx2(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt,
                              size_t n0, size_t n1, const float *bias, float *y, size_t ldy, float *scratch) {
    // Token block: about 192 KiB of activations.
    size_t tb = (192 * 1024 / sizeof(float)) / (K ? K : 1);
    if (tb < MR) tb = MR;
    tb -= tb % MR;
    for (size_t t0 = 0; t0 < T; t0 += tb) {
        size_t t1 = t0 + tb < T ? t0 + tb : T;
        for (size_t n = n0; n < n1; n += NR) {
            size_t nr = n1 - n < NR ? n1 - n : NR;
            const float *wp[NR];
            for (size_t j = 0; j < NR; j++) {
                size_t row = n + (j < nr ? j : 0);
                if (dt == VK_F32) {
                    wp[j] = (const float *)w + row * K;
                } else {
                    if (j < nr) to_f32_avx2((const uint16_t *)w + row * K, dt, K, scratch + j * K);
                    wp[j] = scratch + (j < nr ? j : 0) * K;
                }
            }
            for (size_t t = t0; t < t1; t += MR) {
                size_t mr = t1 - t < MR ? t1 - t : MR;
                float out[MR][NR];
                micro_4x3(x + t * ldx, ldx, K, wp[0], wp[1], wp[2], mr, nr, out);
                for (size_t i = 0; i < mr; i++)
                    for (size_t j = 0; j < nr; j++) y[(t + i) * ldy + n + j] = bias ? out[i][j] + bias[n + j] : out[i][j];
            }
        }
    }
}
#undef MR
#undef NR
#endif  // VK_X86

// ---------------------------------------------------------------------------------------------------------------
// NEON bodies (arm64): dot and axpy; matmul goes through them row by row.
// ---------------------------------------------------------------------------------------------------------------
#if VK_ARM
static float dot_neon(const float *a, const float *b, size_t n) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float acc = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void axpy_neon(float a, const float *x, float *y, size_t n) {
    size_t i = 0;
    float32x4_t va = vdupq_n_f32(a);
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static void matmul_neon(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt,
                        size_t n0, size_t n1, const float *bias, float *y, size_t ldy, float *scratch) {
    for (size_t n = n0; n < n1; n++) {
        const float *row;
        if (dt == VK_F32) row = (const float *)w + n * K;
        else { to_f32_scalar((const uint16_t *)w + n * K, dt, K, scratch); row = scratch; }
        for (size_t t = 0; t < T; t++) {
            float s = dot_neon(x + t * ldx, row, K);
            y[t * ldy + n] = bias ? s + bias[n] : s;
        }
    }
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------------------
void vk_matmul(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dtype, size_t n0, size_t n1,
               const float *bias, float *y, size_t ldy, float *scratch) {
    if (n1 <= n0 || T == 0) return;
#if VK_X86
    if (vk_simd_level() == 1) {
        if (T == 1) gemv_avx2(x, K, w, dtype, n0, n1, bias, y);
        else gemm_avx2(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy, scratch);
        return;
    }
#elif VK_ARM
    if (vk_simd_level() == 2) { matmul_neon(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy, scratch); return; }
#endif
    (void)scratch;
    matmul_scalar(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy);
}

void vk_to_f32(const void *src, vk_dtype dtype, size_t count, float *dst) {
#if VK_X86
    if (vk_simd_level() == 1) { to_f32_avx2(src, dtype, count, dst); return; }
#endif
    to_f32_scalar(src, dtype, count, dst);
}

float vk_dot(const float *a, const float *b, size_t n) {
#if VK_X86
    if (vk_simd_level() == 1) return dot_avx2(a, b, n);
#elif VK_ARM
    if (vk_simd_level() == 2) return dot_neon(a, b, n);
#endif
    return dot_scalar(a, b, n);
}

void vk_axpy(float a, const float *x, float *y, size_t n) {
#if VK_X86
    if (vk_simd_level() == 1) { axpy_avx2(a, x, y, n); return; }
#elif VK_ARM
    if (vk_simd_level() == 2) { axpy_neon(a, x, y, n); return; }
#endif
    axpy_scalar(a, x, y, n);
}

void vk_rmsnorm(const float *x, const float *w, size_t n, float eps, float *out) {
    // torch: hidden * rsqrt(mean(hidden^2) + eps), then weight * (that); accumulate in f32 like torch on CPU.
    float ss = vk_dot(x, x, n);
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (size_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

void vk_layernorm(const float *x, const float *w, const float *b, size_t n, float eps, float *out) {
    // Two passes in double: mean, then variance of the centred values (torch's CPU kernel is as stable).
    double mean = 0, var = 0;
    for (size_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) { double d = x[i] - mean; var += d * d; }
    var /= (double)n;
    float r = (float)(1.0 / sqrt(var + eps));
    float m = (float)mean;
    for (size_t i = 0; i < n; i++) out[i] = (x[i] - m) * r * w[i] + (b ? b[i] : 0.0f);
}

void vk_gelu_tanh(float *x, size_t n) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

void vk_gelu_erf(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
}

void vk_silu_mul(const float *gate, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        x[i] = (g / (1.0f + expf(-g))) * x[i];
    }
}

void vk_softmax(float *x, size_t n) {
    if (n == 0) return;
    float m = x[0];
    for (size_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    float inv = 1.0f / s;
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

void vk_attention_head(const float *q, size_t nq, size_t q_stride, const float *k, const float *v, size_t kv_stride,
                       size_t head_dim, size_t q_pos0, int causal, size_t n_keys, float scale, float *out,
                       size_t out_stride, float *scores) {
    for (size_t i = 0; i < nq; i++) {
        const float *qi = q + i * q_stride;
        size_t nk = causal ? q_pos0 + i + 1 : n_keys;
        if (nk > n_keys) nk = n_keys;
        for (size_t j = 0; j < nk; j++) scores[j] = vk_dot(qi, k + j * kv_stride, head_dim) * scale;
        vk_softmax(scores, nk);
        float *oi = out + i * out_stride;
        memset(oi, 0, head_dim * sizeof(float));
        for (size_t j = 0; j < nk; j++) vk_axpy(scores[j], v + j * kv_stride, oi, head_dim);
    }
}

#if VK_X86
VK_AVX2 static float sum_avx2(const float *x, size_t count) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= count; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + i + 24));
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < count; i++) s += x[i];
    return s;
}

VK_AVX2 static double fma_loop_avx2(size_t iterations) {
    __m256 a[10];
    for (int i = 0; i < 10; i++) a[i] = _mm256_set1_ps(0.001f * (float)i);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (size_t it = 0; it < iterations; it++)
        for (int i = 0; i < 10; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    __m256 s = a[0];
    for (int i = 1; i < 10; i++) s = _mm256_add_ps(s, a[i]);
    volatile float sink = hsum256(s);
    (void)sink;
    return (double)iterations * 10 * 8 * 2;
}
#endif

float vk_sum(const float *x, size_t count) {
#if VK_X86
    if (vk_simd_level() == 1) return sum_avx2(x, count);
#endif
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= count; i += 4) { s0 += x[i]; s1 += x[i + 1]; s2 += x[i + 2]; s3 += x[i + 3]; }
    for (; i < count; i++) s0 += x[i];
    return s0 + s1 + s2 + s3;
}

double vk_fma_loop(size_t iterations) {
#if VK_X86
    if (vk_simd_level() == 1) return fma_loop_avx2(iterations);
#endif
    float a[8] = {0};
    for (size_t it = 0; it < iterations; it++)
        for (int i = 0; i < 8; i++) a[i] = a[i] * 0.999999f + 1e-7f;
    volatile float sink = a[0] + a[7];
    (void)sink;
    return (double)iterations * 8 * 2;
}
