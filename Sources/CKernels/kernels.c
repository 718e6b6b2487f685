// CKernels implementation. Structure: scalar reference bodies first (they define the semantics and are what the
// tests compare against), then the AVX2/FMA/F16C bodies (x86-64) and NEON bodies (arm64), then the dispatching
// entry points. ISA bodies carry per-function target attributes, so the package needs no compiler flags.
#include "ckernels.h"
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(_M_X64)
#define VK_X86 1
#include <immintrin.h>
#define VK_AVX2 __attribute__((target("avx2,fma,f16c")))
// AVX-512 bodies (Skylake-SP and later, Zen 4): 512-bit FMA for the compute-bound GEMM; VNNI (vpdpbusd) for the
// integer dot products of quantized decode. Both are chosen at run time on top of the AVX2 level.
#define VK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define VK_VNNI __attribute__((target("avx512vnni,avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#elif defined(__aarch64__)
#define VK_ARM 1
#include <arm_neon.h>
// SDOT bodies: compiled for FEAT_DotProd where the build does not already target it (Apple's arm64 default does),
// and run only where use_dotprod() finds it.
#if defined(__ARM_FEATURE_DOTPROD)
#define VK_DOTPROD
#else
#define VK_DOTPROD __attribute__((target("dotprod")))
#endif
#if defined(__linux__)
#include <sys/auxv.h>
#define VK_HWCAP_ASIMDDP (1UL << 20)  // HWCAP_ASIMDDP of <asm/hwcap.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

// ---------------------------------------------------------------------------------------------------------------
// Feature detection
// ---------------------------------------------------------------------------------------------------------------
#define VK_LOG2E 1.44269504088896341f  // log2(e): exp(x) = 2^(x log2(e))
// 2^r for r in [-0.5, 0.5], coefficients highest first (relative error 1.4e-7): the attention softmax's exponential
// in every SIMD body (exp2_sum_avx2, exp2_512_nonpos, exp2_neon_nonpos).
static const float vk_exp2_poly[6] = {1.3266970e-3f, 9.6754597e-3f, 5.5507426e-2f, 2.4022122e-1f, 6.9314695e-1f,
                                      1.0000001f};
// r^2 P(r), P's coefficients highest first. One table for the AVX2, AVX-512 and NEON bodies, which evaluate it in the same
// order, so their floats agree lane for lane.
static const float vk_exp_poly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                     4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
// erfc(z) ~ t exp(-z^2 + Q(t)), t = 1 / (1 + z / 2) (Numerical Recipes' erfcc), Q's coefficients highest first.
static const float vk_erfc_poly[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                       -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f,  -1.26551223f};

static int g_force_scalar = 0;
static int g_level = -1;

static int g_max_level = 3;  // vk_limit_level

static int detect_level(void) {
#if VK_X86
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))) return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return 3;
    return 1;
#elif VK_ARM
    return 2;  // NEON is mandatory on arm64
#else
    return 0;
#endif
}

// VLM_SIMD=avx2 (or scalar) in the environment caps the level for the whole process: A/B runs of the same binary.
static int env_cap(int level) {
    const char *e = getenv("VLM_SIMD");
    if (!e) return level;
    if (strcmp(e, "scalar") == 0) return 0;
    if (strcmp(e, "avx2") == 0 && level == 3) return 1;
    return level;
}

int vk_simd_level(void) {
    if (g_force_scalar) return 0;
    if (g_level < 0) g_level = env_cap(detect_level());
    return g_level == 3 && g_max_level < 3 ? 1 : g_level;
}

void vk_force_scalar(int on) { g_force_scalar = on; }

void vk_limit_level(int max_level) { g_max_level = max_level; }

#if VK_ARM
// FEAT_DotProd (SDOT: 16 int8 products into 4 int32 lanes per instruction), for the quantized decode.
static int g_dotprod = -1;
static inline int use_dotprod(void) {
    if (g_dotprod < 0) {
#if defined(__ARM_FEATURE_DOTPROD)
        g_dotprod = 1;
#elif defined(__linux__)
        g_dotprod = (getauxval(AT_HWCAP) & VK_HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
        int v = 0;
        size_t len = sizeof v;
        g_dotprod = sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) == 0 && v;
#else
        g_dotprod = 0;
#endif
    }
    return vk_simd_level() == 2 && g_dotprod;
}
#endif

#if VK_X86
// The AVX2/FMA/F16C bodies run at level 1 and under the AVX-512 ones (level 3) wherever those have no body of their own.
static inline int use_avx2(void) { return vk_simd_level() & 1; }
static inline int use_avx512(void) { return vk_simd_level() == 3; }
static int g_vnni = -1;
static inline int use_vnni(void) {
    if (g_vnni < 0) {
        __builtin_cpu_init();
        g_vnni = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
    }
    return use_avx512() && g_vnni;
}
#endif

const char *vk_simd_name(void) {
    switch (vk_simd_level()) {
    case 1: return "avx2";
#if VK_ARM
    case 2: return use_dotprod() ? "neon-dotprod" : "neon";
#endif
#if VK_X86
    case 3: return use_vnni() ? "avx512-vnni" : "avx512";
#endif
    default: return "scalar";
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Per-thread scratch for kernels whose callers pass none (or too little): grown on demand, 64-byte aligned, freed
// when the thread exits.
// ---------------------------------------------------------------------------------------------------------------
typedef struct { float *p; size_t cap; } tls_buffer;
static pthread_key_t g_tls_key;
static pthread_once_t g_tls_once = PTHREAD_ONCE_INIT;

static void tls_free(void *v) {
    tls_buffer *b = (tls_buffer *)v;
    free(b->p);
    free(b);
}
static void tls_init(void) { pthread_key_create(&g_tls_key, tls_free); }

static float *tls_scratch(size_t floats) {
    pthread_once(&g_tls_once, tls_init);
    tls_buffer *b = (tls_buffer *)pthread_getspecific(g_tls_key);
    if (!b) {
        b = (tls_buffer *)calloc(1, sizeof *b);
        if (!b) abort();
        pthread_setspecific(g_tls_key, b);
    }
    if (b->cap < floats) {
        free(b->p);
        b->p = NULL;
        size_t cap = floats + floats / 4 + 64;
        void *p = NULL;
        if (posix_memalign(&p, 64, cap * sizeof(float)) != 0) abort();
        b->p = (float *)p;
        b->cap = cap;
    }
    return b->p;
}

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

// f32 -> f16 bits, round to nearest even. Normal results round the mantissa in the integer domain; results below
// 2^-14 are multiples of 2^-24, so the scaled value is rounded to an integer (nearbyintf rounds half to even).
static inline uint16_t f32_to_f16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;                 // NaN stays NaN
    if (a >= 0x477ff000u) return sign | 0x7c00u;                // >= 65520 rounds to inf
    if (a >= 0x38800000u) {                                     // >= 2^-14: normal f16
        a += 0xfffu + ((a >> 13) & 1u);
        return sign | (uint16_t)((a - 0x38000000u) >> 13);      // rebias the exponent 127 -> 15
    }
    float mag;
    memcpy(&mag, &a, 4);
    return sign | (uint16_t)nearbyintf(mag * 16777216.0f);      // subnormal (1024 becomes the smallest normal)
}

void vk_f32_to_f16(const float *src, size_t count, uint16_t *dst) {
    for (size_t i = 0; i < count; i++) dst[i] = f32_to_f16_bits(src[i]);
}

// ---------------------------------------------------------------------------------------------------------------
// Quantized weights (vk_qmatrix): layout helpers, quantizer and the scalar reference
// ---------------------------------------------------------------------------------------------------------------
size_t vk_qrow_bytes(int bits, size_t K) { return bits == 4 ? (K + 1) / 2 : K; }

static inline size_t qgroups(size_t K, size_t g) { return (K + g - 1) / g; }
static inline size_t div_up(size_t a, size_t b) { return (a + b - 1) / b; }
static inline size_t round_up(size_t a, size_t b) { return div_up(a, b) * b; }

static inline int qmatrix_valid(const vk_qmatrix *w) {
    return w && (w->bits == 4 || w->bits == 8) && w->group_size > 0 && w->group_size % VK_QGROUP_MULTIPLE == 0;
}

// The integer level q of column k in row n (before scaling).
static inline int qlevel(const vk_qmatrix *w, size_t K, size_t n, size_t k) {
    if (w->bits == 8) return ((const int8_t *)w->data)[n * K + k];
    uint8_t b = ((const uint8_t *)w->data)[n * vk_qrow_bytes(4, K) + k / 2];
    return (int)((k & 1) ? b >> 4 : b & 15) - 8;
}

static inline float qscale(const vk_qmatrix *w, size_t K, size_t n, size_t k) {
    return f16_to_f32(w->scales[n * qgroups(K, w->group_size) + k / w->group_size]);
}

static inline float qload(const vk_qmatrix *w, size_t K, size_t n, size_t k) {
    return (float)qlevel(w, K, n, k) * qscale(w, K, n, k);
}

void vk_dequantize_row(const vk_qmatrix *w, size_t K, size_t n, float *dst) {
    if (!qmatrix_valid(w)) { for (size_t k = 0; k < K; k++) dst[k] = NAN; return; }
    for (size_t k = 0; k < K; k++) dst[k] = qload(w, K, n, k);
}

// round(v) clamped to [lo, hi]; fmaxf/fminf return the other operand for NaN, so NaN maps to lo.
static inline int qround(float v, float lo, float hi) { return (int)fminf(fmaxf(roundf(v), lo), hi); }

// The group's scale as stored (f16 bits) from its largest magnitude `amax` and the signed value `m` that has it.
static inline uint16_t quant_scale(int bits, float amax, float m) {
    float d = bits == 8 ? amax / 127.0f : m / -8.0f;
    if (fabsf(d) > 65504.0f) d = copysignf(65504.0f, d);  // keep the scale finite in f16
    return f32_to_f16_bits(d);
}

static void quantize_rows_scalar(const void *w, vk_dtype dt, size_t K, int bits, size_t group_size, size_t n0,
                                 size_t n1, void *data, uint16_t *scales) {
    size_t ng = qgroups(K, group_size), rb = vk_qrow_bytes(bits, K);
    for (size_t n = n0; n < n1; n++) {
        if (bits == 4) memset((uint8_t *)data + n * rb, 0x88, rb);  // unused odd-K nibble holds q = 0
        for (size_t g = 0; g < ng; g++) {
            size_t k0 = g * group_size, k1 = k0 + group_size < K ? k0 + group_size : K;
            float amax = 0.0f, m = 0.0f;  // largest magnitude, and the signed value that has it
            for (size_t k = k0; k < k1; k++) {
                float v = load_w(w, dt, n * K + k);
                if (fabsf(v) > amax) { amax = fabsf(v); m = v; }
            }
            uint16_t dh = quant_scale(bits, amax, m);
            scales[n * ng + g] = dh;
            float dr = f16_to_f32(dh);  // quantize against the scale as stored, so dequantization matches
            float id = dr != 0.0f ? 1.0f / dr : 0.0f;
            for (size_t k = k0; k < k1; k++) {
                float v = load_w(w, dt, n * K + k) * id;
                if (bits == 8) {
                    ((int8_t *)data)[n * K + k] = (int8_t)qround(v, -127.0f, 127.0f);
                } else {
                    uint8_t *b = (uint8_t *)data + n * rb + k / 2;
                    uint8_t u = (uint8_t)(qround(v, -8.0f, 7.0f) + 8);
                    *b = (k & 1) ? (uint8_t)((*b & 0x0f) | (u << 4)) : (uint8_t)((*b & 0xf0) | u);
                }
            }
        }
    }
}

#if VK_X86
VK_AVX2 static void quantize_rows_avx2(const void *w, vk_dtype dt, size_t K, int bits, size_t group_size, size_t n0,
                                       size_t n1, void *data, uint16_t *scales);
#endif

int vk_quantize_rows(const void *w, vk_dtype dt, size_t K, int bits, size_t group_size, size_t n0, size_t n1,
                     void *data, uint16_t *scales) {
    if ((bits != 4 && bits != 8) || group_size == 0 || group_size % VK_QGROUP_MULTIPLE != 0) return -1;
#if VK_X86
    if (use_avx2()) {
        quantize_rows_avx2(w, dt, K, bits, group_size, n0, n1, data, scales);
        return 0;
    }
#endif
    quantize_rows_scalar(w, dt, K, bits, group_size, n0, n1, data, scales);
    return 0;
}

// y[t, n] = sum_k x[t, k] * (q[n, k] * scale): the definition the SIMD bodies are tested against.
static void matmul_q_scalar(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *w, size_t n0, size_t n1,
                            const float *bias, float *y, size_t ldy) {
    for (size_t n = n0; n < n1; n++)
        for (size_t t = 0; t < T; t++) {
            const float *xr = x + t * ldx;
            float acc = 0.0f;
            for (size_t k = 0; k < K; k++) acc += xr[k] * qload(w, K, n, k);
            y[t * ldy + n] = bias ? acc + bias[n] : acc;
        }
}

// ---- One token against quantized weights: integer dot products --------------------------------------------------
// Decode (T == 1) with groups made of whole 32-column blocks (group_size % 32 == 0 and K % 32 == 0, true of every
// real model and of `vlm quantize`'s default) quantizes x once per call to int8, one f32 scale per weight group
// (d = max|x| / 127, q = x / d rounded to nearest even), as llama.cpp does for its Q8_0/Q4_0 dot products; each group
// is then an exact int32 dot product of levels, scaled by scale_w * d. The SIMD bodies read the same weight bytes with
// about half the instructions of converting every weight to f32 (decode is compute-bound at int8/int4 on AVX2
// otherwise); the price is the activation rounding, which QuantizationTests' accuracy figures include. Prefill
// (T >= 2) does the same on VNNI hosts (qgemm_vnni) and for int4 on AVX2 (qgemm_avx2), f32 activations elsewhere.
static inline int qdot_applies(size_t T, size_t K, const vk_qmatrix *w) {
    return T == 1 && K % 32 == 0 && w->group_size % 32 == 0;
}

// x quantized per weight group: qx (K levels in [-127, 127]) and dx (one scale per group). Shared by every body, so
// the SIMD and scalar paths see identical levels. NaN maps to -127 (fmaxf returns the other operand), never to
// undefined behaviour.
static void qdot_quantize_x(const float *x, size_t K, size_t G, int8_t *qx, float *dx) {
    for (size_t g = 0; g * G < K; g++) {
        size_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
        float amax = 0.0f;
        for (size_t k = k0; k < k1; k++) amax = fmaxf(amax, fabsf(x[k]));
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        dx[g] = amax / 127.0f;
        for (size_t k = k0; k < k1; k++) qx[k] = (int8_t)nearbyintf(fminf(fmaxf(x[k] * id, -127.0f), 127.0f));
    }
}

// For int4 weights the SIMD bodies take a 32-column block's 16 bytes as low nibbles (even columns) then high nibbles
// (odd columns): qx rearranged to that order once per call (K a multiple of 32).
static void qdot_permute_int4(const int8_t *qx, size_t K, int8_t *qp) {
    for (size_t k = 0; k < K; k += 32)
        for (size_t i = 0; i < 16; i++) { qp[k + i] = qx[k + 2 * i]; qp[k + 16 + i] = qx[k + 2 * i + 1]; }
}

// The definition the SIMD bodies are tested against. `buf`: at least K / 4 + groups + 1 floats.
static void gemv_qdot_scalar(const float *x, size_t K, const vk_qmatrix *w, size_t n0, size_t n1, const float *bias,
                             float *y, float *buf) {
    size_t G = w->group_size, ng = qgroups(K, G);
    float *dx = buf;
    int8_t *qx = (int8_t *)(buf + ng);
    qdot_quantize_x(x, K, G, qx, dx);
    for (size_t n = n0; n < n1; n++) {
        float acc = 0.0f;
        for (size_t g = 0; g < ng; g++) {
            size_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
            int32_t s = 0;
            for (size_t k = k0; k < k1; k++) s += qlevel(w, K, n, k) * qx[k];
            acc += f16_to_f32(w->scales[n * ng + g]) * dx[g] * (float)s;
        }
        y[n] = bias ? acc + bias[n] : acc;
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

VK_AVX2 static inline int32_t hsum256_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
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

// ---- Decode path (one token): a streaming matrix-vector product ------------------------------------------------
// One weight row at a time, 16 columns per step (two accumulators), weights converted on the fly so each weight byte
// is read once from memory, and each thread reads its rows as one sequential stream, which the hardware prefetcher
// follows. Four rows interleaved (four streams a row apart, software-prefetched one block ahead: gemv_lead, which
// the quantized bodies still use within their row) were slower everywhere we measured: on Zen 4 a SmolVLM-500M decode
// step's bf16 matrices took 41.7 ms with four rows against 26.9 ms with one at this AVX2 level (25.9 ms for vk_sum
// over the same bytes), int8 27.4 -> 21.7 ms, int4 16.7 -> 13.2 ms (Benchmarks/README.md, session 13).
#define VK_GEMV_PF 512

// Software prefetch distance of the one-row decode bodies and of vk_sum (the bandwidth probe): every 64-byte line of
// a thread's weight stream is requested into L2 this many bytes ahead (prefetches never fault, so the last lines of a
// slice may reach past it). On an Intel Xeon (Emerald Rapids, 2 cores) the hardware prefetchers alone kept one
// sequential stream per core at 60-70% of what it reaches with this: a SmolVLM-500M decode step's bf16 matrices
// 38-39 -> 25-28 ms, int8 16-19 -> 13-14 ms, int4 12 -> 7-8 ms (4-16 KB all about as good, 0.5-2 KB or into L1
// less so); on Zen 4 a lead of 0.5-8 KB made no difference to int4 (Benchmarks/README.md, sessions 14 and 15).
#define VK_STREAM_LEAD 8192
#define VK_LEAD_PREFETCH(p, lead) _mm_prefetch((const char *)(p) + (lead), _MM_HINT_T1)  // into L2
#define VK_STREAM_PREFETCH(p) VK_LEAD_PREFETCH(p, VK_STREAM_LEAD)

// Whether the f32 decode bodies (and the bandwidth probe, which streams f32 as they do) prefetch their stream in
// software: on Intel, yes; on AMD, no. The bf16 / f16 and quantized bodies prefetch on every vendor. On a Zen 4 host
// (family 25 model 17; shapes timed alone, 8 alternated rounds, medians) the prefetch made a SmolVLM-500M decode
// step's f32 matrices slower, 23.8 -> 31.0 ms (vk_sum over the same bytes 22.7 -> 29.0), and its bf16 ones faster,
// 18.5 -> 13.5 ms; on the Intel Xeon both gained (Benchmarks/README.md, sessions 15 and 16). VLM_STREAM_PREFETCH=0|1
// overrides it, for A/B runs of one binary.
static int g_f32_pf = -1;
static int f32_stream_prefetch(void) {
    if (g_f32_pf < 0) {
        const char *e = getenv("VLM_STREAM_PREFETCH");
        __builtin_cpu_init();
        g_f32_pf = e && (e[0] == '0' || e[0] == '1') ? e[0] == '1' : __builtin_cpu_is("intel") ? 1 : 0;
    }
    return g_f32_pf;
}

// Prefetch lead of the decode kernels that stream several rows at once, in bytes, for blocks of `block_bytes` (the
// rows streamed together): at least VK_STREAM_LEAD, and at least one block ahead (the same offset in the next rows,
// which follow these in memory) up to 16 KB. A fixed 512-byte lead left every block's start cold: measured from DRAM
// (single thread, 38 MB of bf16 / int8 / int4 rows of 0.5-9 KB) one block ahead streams 1.3-2x faster.
static inline size_t gemv_lead(size_t block_bytes) {
    size_t lead = block_bytes < 16384 ? block_bytes : 16384;
    return lead < VK_STREAM_LEAD ? VK_STREAM_LEAD : lead;
}

VK_AVX2 static inline void prefetch_row(const void *w, vk_dtype dt, size_t i) {
    size_t es = dt == VK_F32 ? 4 : 2;
    _mm_prefetch((const char *)w + i * es + VK_GEMV_PF, _MM_HINT_T0);
}

// `pf`, a constant at each call of the inlined body: whether to prefetch the stream (see f32_stream_prefetch).
VK_AVX2 static inline __attribute__((always_inline)) void gemv_avx2_body(const float *x, size_t K, const void *w,
                                                                          vk_dtype dt, size_t n0, size_t n1,
                                                                          const float *bias, float *y, const int pf) {
    size_t n = n0;
    size_t K16 = K & ~(size_t)15, K8 = K & ~(size_t)7, es = dt == VK_F32 ? 4 : 2;
    for (; n < n1; n++) {
        __m256 a0 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps();
        size_t r0 = n * K, k = 0;
        for (; k < K16; k += 16) {
            if (pf) VK_STREAM_PREFETCH((const char *)w + (r0 + k) * es);  // f32: the line of these 16 columns, else half
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(w, dt, r0 + k), a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), load8(w, dt, r0 + k + 8), b0);
        }
        for (; k < K8; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(w, dt, r0 + k), a0);
        float s0 = hsum256(_mm256_add_ps(a0, b0));
        for (; k < K; k++) s0 += x[k] * load_w(w, dt, r0 + k);
        y[n] = bias ? s0 + bias[n] : s0;
    }
}

VK_AVX2 static void gemv_avx2(const float *x, size_t K, const void *w, vk_dtype dt, size_t n0, size_t n1,
                              const float *bias, float *y) {
    if (dt != VK_F32 || f32_stream_prefetch()) gemv_avx2_body(x, K, w, dt, n0, n1, bias, y, 1);
    else gemv_avx2_body(x, K, w, dt, n0, n1, bias, y, 0);
}

// ---- Prefill path: cache-blocked GEMM ------------------------------------------------------------------------
// The classic BLIS/GotoBLAS structure. y[t, n] = sum_k x[t, k] w[n, k]: M = tokens, N = output rows of W.
//   for each K block of kc <= VK_KC:                     (packed B block: kc x N(slice), L3; micro-panel L1)
//     for each token block of mc <= VK_MC:               (packed A block: mc x kc, L2)
//       pack A: 6-token panels, [k][6]
//       for each 16-column panel of the slice:           pack it on the first token block (bf16/f16 -> f32, W
//                                                          transposed to [k][16]), reuse it for the others
//         for each 6-token panel: 6x16 micro-kernel      (12 ymm accumulators, 2 vector B loads and 6 A
//                                                          broadcasts per k: 12 FMAs per 8 loads)
// The first K block stores (adding the bias), later ones accumulate into y. Each weight element is converted
// exactly once per call; a thread only touches columns [n0, n1) of y and rows [n0, n1) of W.
#define VK_MR 6
#define VK_NR 16
#ifndef VK_KC
#define VK_KC 256
#endif
#ifndef VK_MC
#define VK_MC 240
#endif


// K block: split K into equal blocks of at most `most` (multiple of 8 where possible).
static inline size_t gemm_kc_most(size_t K, size_t most) {
    size_t nb = div_up(K, most);
    return round_up(div_up(K, nb), 8);
}
static inline size_t gemm_kc(size_t K) { return gemm_kc_most(K, VK_KC); }
// The AVX-512 tile (12 x 32) takes K blocks of up to VK_KC_WIDE: each K block after the first reads and writes the
// whole C slice again (a vision fc1 slice of 1024 x 1536 floats is 6 MB, from memory), and the 12 x 32 tile's B
// pair streams from L2 well at 2 x 64 bytes per 24 FMAs. Zen 5, 2 threads, bf16 weights, alternated: vision fc1
// (K 768: one block instead of three) 80-82% -> 86-92% of the FMA peak, 128-token gate/up 85 -> 87%; K blocks of
// 384 and 512 lay between (Benchmarks/README.md, session 23).
#ifndef VK_KC_WIDE
#define VK_KC_WIDE 768
#endif
static inline size_t gemm_kc_avx2(size_t K, int wide) { return gemm_kc_most(K, wide ? VK_KC_WIDE : VK_KC); }
// Token block: equal blocks of at most VK_MC tokens, a multiple of VK_MR.
static inline size_t gemm_mc(size_t T) {
    size_t nb = div_up(T, VK_MC);
    return round_up(div_up(T, nb), VK_MR);
}

VK_AVX2 static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// ---- Quantized weights: eight columns k .. k + 7 (k a multiple of 8, inside one group) as f32 levels ----------
VK_AVX2 static inline __m256 q8_levels8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

// int4 bytes (the low 8 of v) as 16 int8 levels in column order: byte i holds columns 2i (low nibble) and 2i + 1,
// stored + 8.
VK_AVX2 static inline __m128i q4_unpack16(__m128i v) {
    const __m128i m = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    return _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), _mm_set1_epi8(8));
}

// p: the 4 bytes holding the eight columns; nibbles interleaved back into column order, minus the +8 offset.
VK_AVX2 static inline __m256 q4_levels8(const uint8_t *p) {
    uint32_t b;
    memcpy(&b, p, 4);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q4_unpack16(_mm_cvtsi32_si128((int)b))));
}

// Packs rows [n, n + nr) (nr <= 16) of W, columns [k0, k0 + kc), transposed: bp[k * 16 + j] = W[n + j, k0 + k] as
// f32, zero for j >= nr. W is `w` of `dt` with rows ldw elements apart, or, when `q` is not NULL, the quantized
// matrix q (K columns, k0 a multiple of 8), dequantized.
VK_AVX2 static void pack_b_panel(const void *w, vk_dtype dt, size_t ldw, const vk_qmatrix *q, size_t K, size_t n,
                                 size_t nr, size_t k0, size_t kc, float *bp) {
    size_t ng = q ? qgroups(K, q->group_size) : 0, rb = q ? vk_qrow_bytes(q->bits, K) : 0;
    for (size_t j0 = 0; j0 < VK_NR; j0 += 8) {
        size_t rows = nr > j0 ? (nr - j0 < 8 ? nr - j0 : 8) : 0;
        size_t k = 0;
        if (rows == 0) {
            for (; k < kc; k++) _mm256_store_ps(bp + k * VK_NR + j0, _mm256_setzero_ps());
            continue;
        }
        for (; k + 8 <= kc; k += 8) {
            size_t col = k0 + k, g = q ? col / q->group_size : 0;  // one group: col is a multiple of 8
            __m256 r[8];
            for (size_t i = 0; i < 8; i++) {
                size_t row = n + j0 + i;
                if (i >= rows) {
                    r[i] = _mm256_setzero_ps();
                } else if (!q) {
                    r[i] = load8(w, dt, row * ldw + col);
                } else {
                    const uint8_t *base = (const uint8_t *)q->data + row * rb;
                    __m256 lv = q->bits == 8 ? q8_levels8((const int8_t *)base + col) : q4_levels8(base + col / 2);
                    r[i] = _mm256_mul_ps(lv, _mm256_set1_ps(_cvtsh_ss(q->scales[row * ng + g])));
                }
            }
            transpose8(r);
            for (size_t i = 0; i < 8; i++) _mm256_store_ps(bp + (k + i) * VK_NR + j0, r[i]);
        }
        for (; k < kc; k++)
            for (size_t i = 0; i < 8; i++) {
                size_t row = n + j0 + i, col = k0 + k;
                bp[k * VK_NR + j0 + i] = i >= rows ? 0.0f : q ? qload(q, K, row, col) : load_w(w, dt, row * ldw + col);
            }
    }
}

// Packs rows [0, mc) of x (row stride ldx), columns [0, kc), into 6-row panels: ap[p * 6 * kc + k * 6 + i] =
// x[6p + i, k]. Rows past mc in the last panel are filled with copies (the micro-kernel never reads them).
// Writes up to 2 floats past the end of the packed block.
VK_AVX2 static void pack_a(const float *x, size_t ldx, size_t mc, size_t kc, float *ap) {
    for (size_t i0 = 0; i0 < mc; i0 += VK_MR) {
        size_t mr = mc - i0 < VK_MR ? mc - i0 : VK_MR;
        const float *rows[VK_MR];
        for (size_t i = 0; i < VK_MR; i++) rows[i] = x + (i0 + (i < mr ? i : mr - 1)) * ldx;
        float *dst = ap + i0 * kc;
        // the next panel's rows, fetched a line per row while this one is packed: each row is one short run (a K
        // block, ~3 KB), over before the hardware prefetcher has caught on, and the loads waited on L3 (perf,
        // 1024 x 3072 x 768 on Zen 5: pack_a 6.9-7.1 -> 5.9-6.0% of the samples, 1024 x 768 x 3072 1.8 -> 1.55%)
        const float *next = i0 + VK_MR < mc ? x + (i0 + VK_MR) * ldx : NULL;
        size_t next_rows = next ? (mc - i0 - VK_MR < VK_MR ? mc - i0 - VK_MR : VK_MR) : 0;
        size_t k = 0;
        for (; k + 8 <= kc; k += 8) {
            if ((k & 15) == 0)
                for (size_t i = 0; i < next_rows; i++) _mm_prefetch((const char *)(next + i * ldx + k), _MM_HINT_T0);
            __m256 r[8];
            for (size_t i = 0; i < VK_MR; i++) r[i] = _mm256_loadu_ps(rows[i] + k);
            r[6] = r[7] = _mm256_setzero_ps();
            transpose8(r);
            // Overlapping stores in increasing order: lanes 6 and 7 of each are overwritten by the next.
            for (size_t i = 0; i < 8; i++) _mm256_storeu_ps(dst + (k + i) * VK_MR, r[i]);
        }
        for (; k < kc; k++)
            for (size_t i = 0; i < VK_MR; i++) dst[k * VK_MR + i] = rows[i][k];
    }
}

// c[i, j] (+)= sum_k a[k * 6 + i] * b[k * ldb + j] for i < MR_, j < nr (<= 16). mode 0 stores (adding bias[j] when
// bias is given), mode 1 accumulates into c.
VK_AVX2 static inline __attribute__((always_inline)) void ukr_tile(const int MR_, size_t kc, const float *a,
                                                                   const float *b, size_t ldb, float *c, size_t ldc,
                                                                   size_t nr, int accumulate, const float *bias) {
    __m256 acc[VK_MR][2];
    for (int i = 0; i < MR_; i++) { acc[i][0] = _mm256_setzero_ps(); acc[i][1] = _mm256_setzero_ps(); }
    for (int i = 0; i < MR_; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 15), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (size_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        for (int i = 0; i < MR_; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += VK_MR;
        b += ldb;
    }
    if (nr == VK_NR) {
        __m256 bias0 = _mm256_setzero_ps(), bias1 = _mm256_setzero_ps();
        if (!accumulate && bias) { bias0 = _mm256_loadu_ps(bias); bias1 = _mm256_loadu_ps(bias + 8); }
        for (int i = 0; i < MR_; i++) {
            float *ci = c + i * ldc;
            __m256 r0 = acc[i][0], r1 = acc[i][1];
            if (accumulate) {
                r0 = _mm256_add_ps(_mm256_loadu_ps(ci), r0);
                r1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), r1);
            } else if (bias) {
                r0 = _mm256_add_ps(r0, bias0);
                r1 = _mm256_add_ps(r1, bias1);
            }
            _mm256_storeu_ps(ci, r0);
            _mm256_storeu_ps(ci + 8, r1);
        }
    } else {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), lane);
        __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), lane);
        __m256 bias0 = _mm256_setzero_ps(), bias1 = _mm256_setzero_ps();
        if (!accumulate && bias) { bias0 = _mm256_maskload_ps(bias, m0); bias1 = _mm256_maskload_ps(bias + 8, m1); }
        for (int i = 0; i < MR_; i++) {
            float *ci = c + i * ldc;
            __m256 r0 = acc[i][0], r1 = acc[i][1];
            if (accumulate) {
                r0 = _mm256_add_ps(_mm256_maskload_ps(ci, m0), r0);
                r1 = _mm256_add_ps(_mm256_maskload_ps(ci + 8, m1), r1);
            } else if (bias) {
                r0 = _mm256_add_ps(r0, bias0);
                r1 = _mm256_add_ps(r1, bias1);
            }
            _mm256_maskstore_ps(ci, m0, r0);
            _mm256_maskstore_ps(ci + 8, m1, r1);
        }
    }
}

VK_AVX2 static void ukr(size_t mr, size_t kc, const float *a, const float *b, size_t ldb, float *c, size_t ldc,
                        size_t nr, int accumulate, const float *bias) {
    switch (mr) {
    case 6: ukr_tile(6, kc, a, b, ldb, c, ldc, nr, accumulate, bias); break;
    case 5: ukr_tile(5, kc, a, b, ldb, c, ldc, nr, accumulate, bias); break;
    case 4: ukr_tile(4, kc, a, b, ldb, c, ldc, nr, accumulate, bias); break;
    case 3: ukr_tile(3, kc, a, b, ldb, c, ldc, nr, accumulate, bias); break;
    case 2: ukr_tile(2, kc, a, b, ldb, c, ldc, nr, accumulate, bias); break;
    default: ukr_tile(1, kc, a, b, ldb, c, ldc, nr, accumulate, bias); break;
    }
}

// Floats of packing space gemm_avx2 uses (B block, A block, slack for pack_a's overrun and 64-byte alignment).
static size_t gemm_scratch_floats(size_t T, size_t K, size_t N) {
    size_t kc = gemm_kc_avx2(K, use_avx512()), mc = gemm_mc(T);  // as gemm_avx2 blocks at this level
    return kc * round_up(N, VK_NR) + mc * kc + 8 + 16;
}

static inline float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

// Issues prefetches (to L2) for the source rows of the next weight panel, spread over `parts` calls: rows
// [n, n + nr) of `row_bytes` each, the `span` bytes from byte `offset` of each row.
VK_AVX2 static inline void prefetch_panel_part(const void *w, size_t row_bytes, size_t offset, size_t span, size_t n,
                                               size_t nr, size_t part, size_t parts) {
    size_t lines = div_up(span, 64), total = lines * nr;
    size_t lo = total * part / parts, hi = total * (part + 1) / parts;
    if (lo >= hi) return;
    // One division for the first line, then a walk: a divide per line was 4% of a 128-token GEMM (perf, Zen 5).
    size_t row = lo / lines, line = lo % lines;
    const char *p = (const char *)w + (n + row) * row_bytes + offset;
    for (size_t q = lo; q < hi; q++) {
        _mm_prefetch(p + line * 64, _MM_HINT_T1);
        if (++line == lines) { line = 0; p += row_bytes; }
    }
}

VK_AVX512 static void ukr512(size_t mr, int nb, size_t kc, const float *a, const float *b, size_t bstride, float *c,
                             size_t ldc, size_t nr, int accumulate, const float *bias);
VK_AVX512 static void pack_b_panel512(const void *w, vk_dtype dt, size_t ldw, const vk_qmatrix *q, size_t K,
                                      size_t n, size_t k0, size_t kc, float *bp);

// `q`, when not NULL, replaces w/dt/ldw: panels are dequantized from it instead of converted. With AVX-512 (`wide`)
// the same packed panels are taken two at a time and the tokens twelve at a time, for ukr512's 12 x 32 tile.
VK_AVX2 static void gemm_avx2(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt, size_t ldw,
                              const vk_qmatrix *q, size_t n0, size_t n1, const float *bias, float *y, size_t ldy,
                              float *buf) {
    const int wide = use_avx512();
    const size_t np = wide ? 2 : 1, tm = np * VK_MR;  // B panels per step, tokens per tile
    size_t N = n1 - n0, npan = div_up(N, VK_NR);
    size_t kcb = gemm_kc_avx2(K, wide), mcb = gemm_mc(T);
    float *bp = align64(buf);
    float *ap = bp + kcb * npan * VK_NR;
    size_t es = dt == VK_F32 ? 4 : 2;
    for (size_t k0 = 0; k0 < K; k0 += kcb) {
        size_t kc = K - k0 < kcb ? K - k0 : kcb;
        for (size_t t0 = 0; t0 < T; t0 += mcb) {
            size_t mc = T - t0 < mcb ? T - t0 : mcb;
            pack_a(x + t0 * ldx + k0, ldx, mc, kc, ap);
            size_t ntile = div_up(mc, tm);
            for (size_t j = 0; j < npan; j += np) {
                size_t n = n0 + j * VK_NR, nr = n1 - n < np * VK_NR ? n1 - n : np * VK_NR;
                // One token block (T <= VK_MC): each panel is used once, so every panel pair reuses the first slot,
                // which stays in L2; distinct slots (kept for later token blocks) are a fresh 4 MB per K block, whose
                // stores miss to memory (perf, 128 x 960 x 2560 bf16 on Zen 5: pack 8.0 -> 6.4% of the samples).
                float *bj = bp + (T <= mcb ? 0 : j * kc * VK_NR);
                int first_pass = t0 == 0;
                if (first_pass)
                    for (size_t h = 0; h * VK_NR < nr; h++) {
                        size_t left = nr - h * VK_NR;
                        // quantized: 16-column steps must stay inside one group
                        if (wide && left >= VK_NR && (!q || (q->group_size % 16 == 0 && k0 % 16 == 0)))
                            pack_b_panel512(w, dt, ldw, q, K, n + h * VK_NR, k0, kc, bj + h * kc * VK_NR);
                        else
                            pack_b_panel(w, dt, ldw, q, K, n + h * VK_NR, left < VK_NR ? left : VK_NR, k0, kc,
                                         bj + h * kc * VK_NR);
                    }
                size_t nn = n + np * VK_NR, nnr = nn < n1 ? (n1 - nn < np * VK_NR ? n1 - nn : np * VK_NR) : 0;
                for (size_t i = 0, p = 0; i < mc; i += tm, p++) {
                    if (first_pass && nnr) {
                        if (q) prefetch_panel_part(q->data, vk_qrow_bytes(q->bits, K), k0 * (size_t)q->bits / 8,
                                                   div_up(kc * (size_t)q->bits, 8), nn, nnr, p, ntile);
                        else prefetch_panel_part(w, ldw * es, k0 * es, kc * es, nn, nnr, p, ntile);
                    }
                    size_t mr = mc - i < tm ? mc - i : tm;
                    float *c = y + (t0 + i) * ldy + n;
                    const float *bn = bias ? bias + n : NULL;
                    if (wide) ukr512(mr, nr > VK_NR ? 2 : 1, kc, ap + i * kc, bj, kc * VK_NR, c, ldy, nr, k0 != 0, bn);
                    else ukr(mr, kc, ap + i * kc, bj, VK_NR, c, ldy, nr, k0 != 0, bn);
                }
            }
        }
    }
}

// ---- Few tokens (2..VK_SMALL_T with AVX2): dot-product kernel, weights converted on the fly ---------------------
// With a few tokens the product is bound by reading the weights, and packing them would cost more than it saves:
// groups of up to 4 tokens x 3 rows of ymm accumulators (12 of the 16 registers; per 8 columns 3 weight and 4 x loads
// for 12 FMAs), each weight vector loaded and converted once per group, rows in blocks of VK_SMALL_ROWS that stay in
// L2 while every group passes over them (the first group streams them from memory). dt and pf are constants of each
// instantiation, as in the AVX-512 body (small_tile512). Session 24, Zen 5 with VLM_SIMD=avx2 (ymm FMA peak 287
// GFLOP/s, 2 threads), weights from memory, 960 x 2560, against the packed 6 x 16 GEMM: bf16 4 / 8 / 16 / 32 tokens
// 32 -> 43, 41 -> 60, 61 -> 70, 70 -> 78% of the peak, 64 even; f16 alike; f32 at 8 / 32 29 -> 38, 63 -> 68%, 48
// even. (It was 2 x 4, 3 x 4 and 4 x 3 tiles for 2-4 tokens without row blocks.)
#define VK_SMALL_T 32        // AVX2 hosts
#define VK_SMALL_T_WITH512 4 // AVX-512 hosts, for what small512_applies leaves (f32 rows past 1024 columns)
// AVX2 hosts, quantized weights: the levels' conversion (3-4 operations per 8 columns of a row) binds the ymm body
// past a few tokens. VLM_SIMD=avx2 on Zen 5, 960 x 2560 from memory, against the packed GEMM: q8 4 / 8 / 16 tokens
// 30 -> 51, 42 -> 43, 61 -> 40% of the ymm peak; q4 28 -> 38, 40 -> 39, 59 -> 40%.
#define VK_SMALL_T_Q8 4
#define VK_SMALL_T_Q4 4
#define VK_SMALL_ROWS 32
// y[t, n + r] = sums[t * RR + r] plus the columns from KTAIL on (past the last whole vector), plus bias: the end of
// a few-token tile (small_tile, small_tile512).
#define VK_TILE_STORE(KTAIL)                                                                                          \
    for (int t = 0; t < TT; t++)                                                                                      \
        for (int r = 0; r < RR; r++) {                                                                                \
            float s_ = sums[t * RR + r];                                                                              \
            for (size_t k = KTAIL; k < K; k++)                                                                        \
                s_ += x[t * ldx + k] * (QB ? qload(q, K, n + r, k) : load_w(w, dt, (n + r) * K + k));                 \
            y[t * ldy + n + r] = bias ? s_ + bias[n + r] : s_;                                                        \
        }

// The few-token bodies' loops: rows in blocks of VK_SMALL_ROWS (in L2 while every token group passes over them),
// tokens in groups of G, each group's rows in tiles of RROWS (TILE: small_tile, small_tile512) with one-row tiles for
// the rest; the first group (t0 == 0) streams the rows from memory (PF 1). The switch's cases are the group sizes.
#define VK_SMALL_TILES_OF(TILE, RROWS, TT, PF)                                                                        \
    for (n = nb; n + RROWS <= ne; n += RROWS) TILE(TT, RROWS, dt, QB, PF, xt, ldx, K, w, q, n, bias, yt, ldy);        \
    for (; n < ne; n++) TILE(TT, 1, dt, QB, PF, xt, ldx, K, w, q, n, bias, yt, ldy);
#define VK_SMALL_CASE(TILE, RROWS, TT)                                                                                \
    case TT:                                                                                                          \
        if (t0 == 0) { VK_SMALL_TILES_OF(TILE, RROWS, TT, 1) } else { VK_SMALL_TILES_OF(TILE, RROWS, TT, 0) }         \
        break;
#define VK_SMALL_GROUPS(G, ...)                                                                                       \
    for (size_t nb = n0; nb < n1; nb += VK_SMALL_ROWS) {                                                              \
        size_t ne = nb + VK_SMALL_ROWS < n1 ? nb + VK_SMALL_ROWS : n1, n;                                             \
        for (size_t t0 = 0; t0 < T; t0 += G) {                                                                        \
            const float *xt = x + t0 * ldx;                                                                           \
            float *yt = y + t0 * ldy;                                                                                 \
            switch (T - t0 < G ? T - t0 : G) { __VA_ARGS__ }                                                          \
        }                                                                                                             \
    }

// BODY(dtype constant, ...) for the dtype dt: each dense weight type gets its own instantiation of an inlined body.
#define VK_BY_DTYPE(dt, BODY, ...)                                                                                    \
    switch (dt) {                                                                                                     \
    case VK_BF16: BODY(VK_BF16, __VA_ARGS__); break;                                                                  \
    case VK_F16: BODY(VK_F16, __VA_ARGS__); break;                                                                    \
    default: BODY(VK_F32, __VA_ARGS__); break;                                                                        \
    }
// sums[t * RR + r] = the horizontal sum of acc[t][r] for a TT x RR tile of accumulators of type VEC, four at a time
// through REDUCE4 (a third of the shuffles and adds of one reduction each); ZERO pads the last four.
#define VK_TILE_SUMS(VEC, ZERO, REDUCE4)                                                                              \
    for (int j = 0; j < TT * RR; j += 4) {                                                                            \
        VEC z_ = ZERO;                                                                                                \
        VEC a_ = acc[j / RR][j % RR];                                                                                 \
        VEC b_ = j + 1 < TT * RR ? acc[(j + 1) / RR][(j + 1) % RR] : z_;                                              \
        VEC c_ = j + 2 < TT * RR ? acc[(j + 2) / RR][(j + 2) % RR] : z_;                                              \
        VEC d_ = j + 3 < TT * RR ? acc[(j + 3) / RR][(j + 3) % RR] : z_;                                              \
        _mm_storeu_ps(sums + j, REDUCE4(a_, b_, c_, d_));                                                             \
    }

// The horizontal sums of a, b, c and d, in that order.
VK_AVX2 static inline __m128 reduce4_256(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));  // per 128-bit half: [a, b, c, d]
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

// QB 0: w holds rows of dt; QB 8: q's rows of int8 levels (any group size: groups are whole 8-column steps), each
// step's levels times its group's scale, refreshed as a group ends.
VK_AVX2 static inline __attribute__((always_inline)) void small_tile(const int TT, const int RR, const vk_dtype dt,
                                                                     const int QB, const int pf, const float *x,
                                                                     size_t ldx, size_t K, const void *w,
                                                                     const vk_qmatrix *q, size_t n, const float *bias,
                                                                     float *y, size_t ldy) {
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++)
#pragma GCC unroll 3
        for (int r = 0; r < RR; r++) acc[t][r] = _mm256_setzero_ps();
    size_t K8 = K & ~(size_t)7;
    const size_t ng = QB ? qgroups(K, q->group_size) : 0, group_steps = QB ? q->group_size / 8 : 0;
    const int8_t *qb = QB ? (const int8_t *)q->data + n * K : NULL;
    float scale[3];
    size_t g = 0, steps_left = group_steps;
    if (QB)
        for (int r = 0; r < RR; r++) scale[r] = _cvtsh_ss(q->scales[(n + (size_t)r) * ng]);
    for (size_t k = 0; k < K8; k += 8) {
        if (QB && steps_left-- == 0) {
            steps_left = group_steps - 1;
            g++;
            for (int r = 0; r < RR; r++) scale[r] = _cvtsh_ss(q->scales[(n + (size_t)r) * ng + g]);
        }
        if (pf && (k & (QB ? 63 : 31)) == 0)
            for (int r = 0; r < RR; r++) {
                if (QB) _mm_prefetch((const char *)(qb + (size_t)r * K + k) + VK_GEMV_PF, _MM_HINT_T0);
                else prefetch_row(w, dt, (n + r) * K + k);
            }
        __m256 wv[3];
#pragma GCC unroll 3
        for (int r = 0; r < RR; r++)
            wv[r] = QB ? _mm256_mul_ps(q8_levels8(qb + (size_t)r * K + k), _mm256_set1_ps(scale[r]))
                       : load8(w, dt, (n + r) * K + k);
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
#pragma GCC unroll 3
            for (int r = 0; r < RR; r++) acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
    float sums[4 * 3 + 4];
    VK_TILE_SUMS(__m256, _mm256_setzero_ps(), reduce4_256)
    VK_TILE_STORE(K8)
}

VK_AVX2 static inline __attribute__((always_inline)) void gemm_small_avx2_body(const vk_dtype dt, const int QB,
                                                                                const float *x, size_t T, size_t K,
                                                                                size_t ldx, const void *w,
                                                                                const vk_qmatrix *q, size_t n0,
                                                                                size_t n1, const float *bias,
                                                                                float *y, size_t ldy) {
    VK_SMALL_GROUPS(4, VK_SMALL_CASE(small_tile, 3, 1) VK_SMALL_CASE(small_tile, 3, 2) VK_SMALL_CASE(small_tile, 3, 3)
                           default: VK_SMALL_CASE(small_tile, 3, 4))
}

VK_AVX2 static void gemm_small_avx2(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt,
                                    size_t n0, size_t n1, const float *bias, float *y, size_t ldy) {
    VK_BY_DTYPE(dt, gemm_small_avx2_body, 0, x, T, K, ldx, w, NULL, n0, n1, bias, y, ldy)
}

// Quantized weights, few tokens (small_q_applies): q8 directly; q4 a block of VK_SMALL_ROWS rows at a time, unpacked
// once into int8 levels in buf (VK_SMALL_ROWS x K bytes, in L2) and multiplied by the q8 body, so the nibbles are
// unpacked once per weight rather than once per token group. `wide`: with AVX-512 (the zmm body), else AVX2.
VK_AVX512 static void gemm_small512_q8(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *q, size_t n0,
                                       size_t n1, const float *bias, float *y, size_t ldy);
VK_AVX2 static void gemm_small_q(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *q, size_t n0,
                                 size_t n1, const float *bias, float *y, size_t ldy, int8_t *buf, int wide) {
    if (q->bits == 8) {
        if (wide) gemm_small512_q8(x, T, K, ldx, q, n0, n1, bias, y, ldy);
        else gemm_small_avx2_body(VK_F32, 8, x, T, K, ldx, NULL, q, n0, n1, bias, y, ldy);
        return;
    }
    size_t rb = vk_qrow_bytes(4, K), ng = qgroups(K, q->group_size), K16 = K & ~(size_t)15;
    for (size_t nb = n0; nb < n1; nb += VK_SMALL_ROWS) {
        size_t rows = n1 - nb < VK_SMALL_ROWS ? n1 - nb : VK_SMALL_ROWS;
        for (size_t r = 0; r < rows; r++) {
            const uint8_t *src = (const uint8_t *)q->data + (nb + r) * rb;
            int8_t *dst = buf + r * K;
            for (size_t k = 0; k < K16; k += 16) {
                if (k % 128 == 0) VK_STREAM_PREFETCH(src + k / 2);  // a line of the stream ahead per 64 bytes
                _mm_storeu_si128((__m128i *)(dst + k), q4_unpack16(_mm_loadl_epi64((const __m128i *)(src + k / 2))));
            }
            for (size_t k = K16; k < K; k++) dst[k] = (int8_t)qlevel(q, K, nb + r, k);
        }
        vk_qmatrix block = {buf, q->scales + nb * ng, q->group_size, 8};
        const float *bb = bias ? bias + nb : NULL;
        if (wide) gemm_small512_q8(x, T, K, ldx, &block, 0, rows, bb, y + nb, ldy);
        else gemm_small_avx2_body(VK_F32, 8, x, T, K, ldx, NULL, &block, 0, rows, bb, y + nb, ldy);
    }
}

// ---- AVX-512 GEMM: the same blocking and packed panels, a 12 x 32 register tile -----------------------------------
// Two 6-token A panels (12 rows) against two 16-column B panels (two zmm per row): 24 zmm accumulators, per k two
// aligned B loads and 12 broadcasts for 24 FMAs, so the two 512-bit FMA pipes, not the loads, set the pace. Panels
// are packed exactly as for the AVX2 kernel (pack_a, pack_b_panel): panel p + 1 follows panel p, so a pair is one
// pointer and an offset. Edges: fewer rows (MR_ < 12, a tile may end inside the second A panel), one B panel
// (NB = 1), and columns masked (nr < 32).
// A's element (token i, k) is a[k * lda + i] for i < 6 and a1[k * lda + i - 6] for the rest: packed panels (lda = 6, a1
// the next panel) or, for attention's transposed scores, one row-major matrix (a1 = a + 6).
VK_AVX512 static inline __attribute__((always_inline)) void ukr512_tile(const int MR_, const int NB, size_t kc,
                                                                        const float *a, const float *a1, size_t lda,
                                                                        const float *b, size_t bstride, float *c,
                                                                        size_t ldc, size_t nr, int accumulate,
                                                                        const float *bias) {
    const float *b1 = b + bstride;
    // The C tile is read (later K blocks) or written (the first) only after the k loop. For large outputs (a
    // 1024-token vision fc1 slice is 6 MB) its lines have left the caches; fetching them now, behind ~kc x 12 FMA
    // cycles of work, takes the misses off the epilogue.
    for (int i = 0; i < MR_; i++) {
        __builtin_prefetch(c + i * ldc, 1, 3);
        if (NB == 2) __builtin_prefetch(c + i * ldc + 16, 1, 3);
    }
    // Every loop over the tile's rows is unrolled so acc stays in registers: a rolled one indexes acc at run time,
    // which puts it on the stack (zeroed by memset, loaded before and stored after the k loop, ~2% of a GEMM).
    __m512 acc[12][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR_; i++) { acc[i][0] = _mm512_setzero_ps(); acc[i][1] = _mm512_setzero_ps(); }
#pragma GCC unroll 2
    for (size_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b + k * VK_NR);
        __m512 bb = NB == 2 ? _mm512_load_ps(b1 + k * VK_NR) : b0;
        for (int i = 0; i < MR_; i++) {
            __m512 ai = _mm512_set1_ps(i < VK_MR ? a[k * lda + i] : a1[k * lda + i - VK_MR]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            if (NB == 2) acc[i][1] = _mm512_fmadd_ps(ai, bb, acc[i][1]);
        }
    }
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = NB == 1 || nr <= 16 ? 0 : nr >= 32 ? (__mmask16)0xffff : (__mmask16)((1u << (nr - 16)) - 1);
    __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
    if (!accumulate && bias) { bias0 = _mm512_maskz_loadu_ps(m0, bias); bias1 = _mm512_maskz_loadu_ps(m1, bias + 16); }
#pragma GCC unroll 12
    for (int i = 0; i < MR_; i++) {
        float *ci = c + i * ldc;
        __m512 r0 = acc[i][0], r1 = acc[i][1];
        if (accumulate) {
            r0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), r0);
            if (NB == 2) r1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), r1);
        } else {
            r0 = _mm512_add_ps(r0, bias0);
            r1 = _mm512_add_ps(r1, bias1);
        }
        _mm512_mask_storeu_ps(ci, m0, r0);
        if (NB == 2) _mm512_mask_storeu_ps(ci + 16, m1, r1);
    }
}

// c rows: mr (1..12) tokens; b: nb (1, 2) panels, the second `bstride` floats after the first; nr: valid columns
// of the pair (<= 16 * nb). ukr512 takes A as packed panels (pack_a), ukr512_strided as rows of a matrix whose k-th
// row holds the tile's tokens at a + k * lda. Called from gemm_avx2 and the attention bodies when AVX-512 is in use.
#define VK_UKR512_CASES(A1, LDA)                                                                                      \
    switch (mr) {                                                                                                     \
    VK_UKR512_CASE(12, A1, LDA) VK_UKR512_CASE(11, A1, LDA) VK_UKR512_CASE(10, A1, LDA) VK_UKR512_CASE(9, A1, LDA)   \
    VK_UKR512_CASE(8, A1, LDA) VK_UKR512_CASE(7, A1, LDA) VK_UKR512_CASE(6, A1, LDA) VK_UKR512_CASE(5, A1, LDA)      \
    VK_UKR512_CASE(4, A1, LDA) VK_UKR512_CASE(3, A1, LDA) VK_UKR512_CASE(2, A1, LDA)                                 \
    default: VK_UKR512_CASE(1, A1, LDA)                                                                               \
    }
#define VK_UKR512_CASE(M, A1, LDA)                                                                                    \
    case M:                                                                                                           \
        if (nb == 2) ukr512_tile(M, 2, kc, a, A1, LDA, b, bstride, c, ldc, nr, accumulate, bias);                     \
        else ukr512_tile(M, 1, kc, a, A1, LDA, b, bstride, c, ldc, nr, accumulate, bias);                             \
        break;
VK_AVX512 static void ukr512(size_t mr, int nb, size_t kc, const float *a, const float *b, size_t bstride, float *c,
                             size_t ldc, size_t nr, int accumulate, const float *bias) {
    VK_UKR512_CASES(a + VK_MR * kc, VK_MR)
}

VK_AVX512 static void ukr512_strided(size_t mr, int nb, size_t kc, const float *a, size_t lda, const float *b,
                                     size_t bstride, float *c, size_t ldc, size_t nr, int accumulate) {
    const float *bias = NULL;
    VK_UKR512_CASES(a + VK_MR, lda)
}
#undef VK_UKR512_CASE
#undef VK_UKR512_CASES

// 16 weights of `dt` from element i as f32 (bf16: the top halves of f32; f16: vcvtph2ps).
VK_AVX512 static inline __m512 load16(const void *w, vk_dtype dt, size_t i) {
    switch (dt) {
    case VK_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
    case VK_BF16:
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i))), 16));
    default: return _mm512_loadu_ps((const float *)w + i);
    }
}

// Columns col .. col + 15 of row `row` of a quantized matrix as f32: levels times the group's scale. The 16 columns
// lie in one group (the caller checks: group_size and col multiples of 16).
VK_AVX512 static inline __m512 qload16(const vk_qmatrix *q, size_t rb, size_t ng, size_t row, size_t col) {
    const uint8_t *base = (const uint8_t *)q->data + row * rb;
    __m128i lv = q->bits == 8 ? _mm_loadu_si128((const __m128i *)(base + col))
                              : q4_unpack16(_mm_loadl_epi64((const __m128i *)(base + col / 2)));
    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lv));
    return _mm512_mul_ps(f, _mm512_set1_ps(_cvtsh_ss(q->scales[row * ng + col / q->group_size])));
}

// pack_b_panel for a full panel with AVX-512: 16 columns at a time, the 16 rows converted to f32 (or dequantized)
// as they are loaded and transposed in zmm registers (unpack, shuffle within 128-bit lanes, then two rounds of
// 128-bit lane shuffles); the last kc % 16 columns go through pack_b_panel. perf put pack_b_panel's 8 x 8 ymm blocks
// (a dtype and row test per row) at 9.5% of a 128-token bf16 GEMM on Zen 5. q NULL: w of dtype dt (constant per
// caller); else the quantized matrix q (K columns).
VK_AVX512 static inline __attribute__((always_inline)) size_t pack_b_panel512_body(const void *w, const vk_dtype dt,
                                                                                    size_t ldw, const vk_qmatrix *q,
                                                                                    size_t K, size_t n, size_t k0,
                                                                                    size_t kc, float *bp) {
    size_t ng = q ? qgroups(K, q->group_size) : 0, rb = q ? vk_qrow_bytes(q->bits, K) : 0;
    size_t k = 0;
    for (; k + 16 <= kc; k += 16) {
        __m512 r[16], t[16];  // every loop unrolled, so they stay in registers
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            r[i] = q ? qload16(q, rb, ng, n + (size_t)i, k0 + k) : load16(w, dt, (n + (size_t)i) * ldw + k0 + k);
#pragma GCC unroll 8
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
#pragma GCC unroll 4
        for (int g = 0; g < 16; g += 4) {
            r[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
            r[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
            r[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
            r[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
        }
        // now lane L of r[4g + c] holds rows 4g .. 4g + 3 at column 4L + c
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512 x0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), x1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
            __m512 y0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
            __m512 y1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
            _mm512_store_ps(bp + (k + (size_t)c) * VK_NR, _mm512_shuffle_f32x4(x0, y0, 0x88));
            _mm512_store_ps(bp + (k + 4 + (size_t)c) * VK_NR, _mm512_shuffle_f32x4(x1, y1, 0x88));
            _mm512_store_ps(bp + (k + 8 + (size_t)c) * VK_NR, _mm512_shuffle_f32x4(x0, y0, 0xDD));
            _mm512_store_ps(bp + (k + 12 + (size_t)c) * VK_NR, _mm512_shuffle_f32x4(x1, y1, 0xDD));
        }
    }
    return k;
}

VK_AVX512 static void pack_b_panel512(const void *w, vk_dtype dt, size_t ldw, const vk_qmatrix *q, size_t K,
                                      size_t n, size_t k0, size_t kc, float *bp) {
    size_t k = q ? pack_b_panel512_body(NULL, VK_F32, 0, q, K, n, k0, kc, bp)
               : dt == VK_BF16 ? pack_b_panel512_body(w, VK_BF16, ldw, NULL, K, n, k0, kc, bp)
               : dt == VK_F16 ? pack_b_panel512_body(w, VK_F16, ldw, NULL, K, n, k0, kc, bp)
                              : pack_b_panel512_body(w, VK_F32, ldw, NULL, K, n, k0, kc, bp);
    if (k < kc) pack_b_panel(w, dt, ldw, q, K, n, VK_NR, k0 + k, kc - k, bp + k * VK_NR);
}

// ---- Up to a few dozen tokens with AVX-512: dot products against unpacked weights -------------------------------
// A follow-up turn's prompt (tens of tokens) uses each weight a handful of times, and the packed GEMM spends much of
// its time converting and packing weights. Here each weight vector is loaded and converted once per group of up to 6
// tokens and multiplied into 6 x 4 zmm accumulators (four rows: per 16 columns 4 weight and 6 x loads for 24 FMAs),
// x's group staying in L1 (K <= VK_SMALL_K512) or L2; rows go in blocks of VK_SMALL_ROWS, which stay in L2 while every
// token group passes over them, so the weights are read from memory once (the first group prefetches them, as the
// decode bodies do). Which tokens counts take it: small512_applies.
// Session 15 (Xeon): 8 x 2 tiles, up to 24 tokens and K 1024. Session 24 (Zen 5, 2 threads, bf16, weights from
// memory, gemm_bench GB_COLD_MB): the 8 x 2 tile's dtype and prefetch tests per step (a dozen compares and branches
// per 16 FMAs) made constants, 6 x 4 tiles and four horizontal sums at a time took 16 x 960 x 2560 from 48 to 62% and
// in cache from 50 to 83% of the FMA peak; against the packed GEMM, 64 x 960 x 2560 78-80 vs 69%, 96 81 vs 77%, 128
// even; 64 x 2560 x 960 even, 96 below. f32 weights (twice the bytes per step) only gain up to about 24 tokens.
#define VK_SMALL_T512 24  // f32 weights (and the bf16 products' lower bound)
#define VK_SMALL_K512 1024
#define VK_SMALL_T512_HALF 96      // bf16 / f16 weights, K <= VK_SMALL_K512
#define VK_SMALL_T512_HALF_WIDE 64 // bf16 / f16 weights, longer rows
#define VK_SMALL_T512_Q8 16        // q8 weights
#define VK_SMALL_T512_Q4 8         // q4 weights
#define VK_SMALL_TG 6  // tokens per group (x's rows in L1)
#define VK_SMALL_RR 4  // weight rows per tile: 6 x 4 zmm accumulators, per step 4 weight and 6 x loads for 24 FMAs
// The horizontal sums of a, b, c and d, in that order.
VK_AVX512 static inline __m128 reduce4_512(__m512 a, __m512 b, __m512 c, __m512 d) {
    // per 128-bit lane: [a0 + a2, a1 + a3, b0 + b2, b1 + b3], likewise c and d
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // per lane: [a, b, c, d] partial sums
    __m512 u = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// 16 int8 levels of a row from column k as f32.
VK_AVX512 static inline __m512 q8_levels16(const uint8_t *row, size_t k) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k))));
}

// dt, QB and pf are constants of each instantiation (tested per step, dt and pf were a dozen compares and branches
// per 16 FMAs). QB 0: w holds rows of dt; QB 8: q's rows of int8 levels, one f16 scale per group (a multiple of 16
// columns), so each step's 16 columns share a scale, refreshed as a group ends (int4: see gemm_small512_q8).
// pf: the first token group streams the rows from memory (later ones find them in L2).
VK_AVX512 static inline __attribute__((always_inline)) void small_tile512(const int TT, const int RR, const vk_dtype dt,
                                                                          const int QB, const int pf, const float *x,
                                                                          size_t ldx, size_t K, const void *w,
                                                                          const vk_qmatrix *q, size_t n,
                                                                          const float *bias, float *y, size_t ldy) {
    __m512 acc[VK_SMALL_TG][VK_SMALL_RR];
#pragma GCC unroll 8
    for (int t = 0; t < TT; t++)
#pragma GCC unroll 4
        for (int r = 0; r < RR; r++) acc[t][r] = _mm512_setzero_ps();
    size_t K16 = K & ~(size_t)15;
    const size_t es = dt == VK_F32 ? 4 : 2;
    const size_t rb = QB ? vk_qrow_bytes(QB, K) : K * es;  // bytes per row
    const size_t ng = QB ? qgroups(K, q->group_size) : 0, group_steps = QB ? q->group_size / 16 : 0;
    const uint8_t *wb = QB ? (const uint8_t *)q->data + n * rb : (const uint8_t *)w + n * rb;
    float scale[VK_SMALL_RR];  // the rows' scales for the current group (broadcast from memory: no registers left)
    size_t g = 0, steps_left = group_steps;
    if (QB)
        for (int r = 0; r < RR; r++) scale[r] = _cvtsh_ss(q->scales[(n + (size_t)r) * ng]);
    for (size_t k = 0; k < K16; k += 16) {
        if (QB && steps_left-- == 0) {
            steps_left = group_steps - 1;
            g++;
            for (int r = 0; r < RR; r++) scale[r] = _cvtsh_ss(q->scales[(n + (size_t)r) * ng + g]);
        }
        __m512 wv[VK_SMALL_RR];
#pragma GCC unroll 4
        for (int r = 0; r < RR; r++) {
            if (pf) VK_STREAM_PREFETCH(wb + (size_t)r * rb + (QB ? k * QB / 8 : k * es));
            wv[r] = QB ? _mm512_mul_ps(q8_levels16(wb + (size_t)r * rb, k), _mm512_set1_ps(scale[r]))
                       : load16(w, dt, (n + (size_t)r) * K + k);
        }
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)t * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < RR; r++) acc[t][r] = _mm512_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
    float sums[VK_SMALL_TG * VK_SMALL_RR + 4];
    VK_TILE_SUMS(__m512, _mm512_setzero_ps(), reduce4_512)
    VK_TILE_STORE(K16)
}

VK_AVX512 static inline __attribute__((always_inline)) void gemm_small512_body(const vk_dtype dt, const int QB,
                                                                                const float *x, size_t T, size_t K,
                                                                                size_t ldx, const void *w,
                                                                                const vk_qmatrix *q, size_t n0,
                                                                                size_t n1, const float *bias,
                                                                                float *y, size_t ldy) {
#define VK_CASE512(TT) VK_SMALL_CASE(small_tile512, VK_SMALL_RR, TT)
    VK_SMALL_GROUPS(VK_SMALL_TG, VK_CASE512(1) VK_CASE512(2) VK_CASE512(3) VK_CASE512(4) VK_CASE512(5)
                                 default: VK_CASE512(6))
#undef VK_CASE512
}

static inline int small512_applies(size_t T, size_t K, vk_dtype dt) {
    if (dt == VK_F32) return T <= VK_SMALL_T512 && K <= VK_SMALL_K512;
    return T <= (K <= VK_SMALL_K512 ? VK_SMALL_T512_HALF : VK_SMALL_T512_HALF_WIDE);
}

VK_AVX512 static void gemm_small512(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt,
                                    size_t n0, size_t n1, const float *bias, float *y, size_t ldy) {
    VK_BY_DTYPE(dt, gemm_small512_body, 0, x, T, K, ldx, w, NULL, n0, n1, bias, y, ldy)
}

// q8 weights with groups a multiple of 16 columns (small_q_applies), dequantized as loaded.
// gemm_bench, Zen 5, 2 threads, weights from memory, against the packed GEMM: q8 8 / 16 tokens 960 x 2560 41 -> 56 /
// 55 -> 65% of the FMA peak, 2560 x 960 at 16 55 -> 65%; 32 tokens 70 -> 63%. int4 levels unpacked per step cost more (5
// ops per 16 columns of a row, before the two conversions) than the 24 FMAs they feed and lost at every token count
// (8: 40 -> 27%), f32 rows dequantized once into L2 only drew even; gemm_small_q unpacks to int8 once instead.
VK_AVX512 static void gemm_small512_q8(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *q, size_t n0,
                                       size_t n1, const float *bias, float *y, size_t ldy) {
    gemm_small512_body(VK_F32, 8, x, T, K, ldx, NULL, q, n0, n1, bias, y, ldy);
}

// vlm bench --quantize q4 (SmolVLM-500M dims, Zen 5, warm) against the packed GEMM: 4-token prefill 166 -> 266-274
// tok/s, 8 277-280 -> 285-291, 16 412-415 -> 387-394 (gemm_bench had 16 ahead too: 58 -> 62%), hence up to 8 for
// int4. Without a prefetch per line of the q4 stream (one per row) the 8-token prefill was 13% slower than packed.
static inline int small_q_applies(size_t T, const vk_qmatrix *q, int wide) {
    if (!wide) return T <= (q->bits == 8 ? VK_SMALL_T_Q8 : VK_SMALL_T_Q4);
    return q->group_size % 16 == 0 && T <= (q->bits == 8 ? VK_SMALL_T512_Q8 : VK_SMALL_T512_Q4);
}

// The decode GEMV with 512-bit vectors, one row at a time (two accumulators, 32 columns per step): each thread reads
// one sequential stream, prefetched VK_STREAM_LEAD bytes ahead (f32 on Intel only: f32_stream_prefetch). On a Zen 4
// host the former four-row interleave (four streams a row apart, prefetched one block ahead) read a SmolVLM-500M decode
// step's bf16 weights at 17 GB/s, one row at a time at 25 GB/s, against 28 GB/s for vk_sum over the same bytes
// (Benchmarks/README.md, session 13). Columns past the last multiple of 16 take scalar steps.
VK_AVX512 static inline __attribute__((always_inline)) void gemv_avx512_body(const float *x, size_t K, const void *w,
                                                                              vk_dtype dt, size_t n0, size_t n1,
                                                                              const float *bias, float *y,
                                                                              const int pf) {
    size_t K32 = K & ~(size_t)31, K16 = K & ~(size_t)15, es = dt == VK_F32 ? 4 : 2;
    size_t n = n0;
    for (; n < n1; n++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        size_t base = n * K, k = 0;
        for (; k < K32; k += 32) {
            if (pf) VK_STREAM_PREFETCH((const char *)w + (base + k) * es);  // 32 columns: one line, two for f32
            if (pf && es == 4) VK_STREAM_PREFETCH((const char *)w + (base + k) * es + 64);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), load16(w, dt, base + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), load16(w, dt, base + k + 16), a1);
        }
        for (; k < K16; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), load16(w, dt, base + k), a0);
        float s0 = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        for (; k < K; k++) s0 += x[k] * load_w(w, dt, base + k);
        y[n] = bias ? s0 + bias[n] : s0;
    }
}

VK_AVX512 static void gemv_avx512(const float *x, size_t K, const void *w, vk_dtype dt, size_t n0, size_t n1,
                                  const float *bias, float *y) {
    if (dt != VK_F32 || f32_stream_prefetch()) gemv_avx512_body(x, K, w, dt, n0, n1, bias, y, 1);
    else gemv_avx512_body(x, K, w, dt, n0, n1, bias, y, 0);
}

// ---- bf16 products (AVX-512 BF16: vdpbf16ps), opt-in: vk_matmul_bf16_ws ------------------------------------------
// Both operands are rounded to bf16 (round to nearest even) and multiplied with vdpbf16ps, which adds two bf16
// products into each f32 lane: twice the multiply-adds per instruction of the f32 FMA path, at the numerics of a
// model run in bf16 (transformers with torch_dtype=bfloat16, llama.cpp's BF16 on the same CPUs), not of the f32
// reference. Blocking as gemm_avx2 with AVX-512; the packed panels hold bf16 pairs (k, k + 1) as 32-bit words:
//   B panel (16 weight rows): bp[p * 16 + j] = (w[n + j, k0 + 2p], w[n + j, k0 + 2p + 1])
//   A tile (12 tokens):       ap[p * 12 + i] = (x[t + i, k0 + 2p], x[t + i, k0 + 2p + 1])
// Bf16 weights are pairs already, so B packing is a transpose of 32-bit words; missing k (odd K) and rows are 0.
#define VK_BF16_T 12  // tokens per register tile

static int g_bf16dot = -1;

int vk_bf16_products_available(void) {
    if (g_bf16dot < 0) {
        __builtin_cpu_init();
        g_bf16dot = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    }
    return use_avx512() && g_bf16dot;
}

#define VK_BF16DOT __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

// Eight bf16 pairs (16 values from element i of a row) as 32-bit words, rounded from f32 / f16 when needed.
VK_BF16DOT static inline __m256 load8_pairs(const void *w, vk_dtype dt, size_t i) {
    switch (dt) {
    case VK_BF16: return _mm256_loadu_ps((const float *)((const uint16_t *)w + i));
    case VK_F16: return (__m256)_mm512_cvtneps_pbh(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i))));
    default: return (__m256)_mm512_cvtneps_pbh(_mm512_loadu_ps((const float *)w + i));
    }
}

static inline uint32_t bf16_bits(float f) {
    uint16_t h;
    vk_f32_to_bf16(&f, 1, &h);
    return h;
}

// One pair as a word, for the edges: element k of the row and k + 1 when k + 1 < kend (else 0).
static inline uint32_t pair_scalar(const void *w, vk_dtype dt, size_t row_base, size_t k, size_t kend) {
    uint32_t lo = dt == VK_BF16 ? ((const uint16_t *)w)[row_base + k] : bf16_bits(load_w(w, dt, row_base + k));
    uint32_t hi = 0;
    if (k + 1 < kend) hi = dt == VK_BF16 ? ((const uint16_t *)w)[row_base + k + 1] : bf16_bits(load_w(w, dt, row_base + k + 1));
    return lo | hi << 16;
}

// Panel of rows [n, n + nr) (nr <= 16), columns [k0, k0 + kc), as kp = ceil(kc / 2) rows of 16 words.
VK_BF16DOT static void pack_b_bf16(const void *w, vk_dtype dt, size_t ldw, size_t n, size_t nr, size_t k0, size_t kc,
                                   uint32_t *bp) {
    size_t kp = div_up(kc, 2);
    for (size_t j0 = 0; j0 < 16; j0 += 8) {
        size_t rows = nr > j0 ? (nr - j0 < 8 ? nr - j0 : 8) : 0;
        size_t p = 0;
        if (rows == 8)
            for (; 2 * p + 16 <= kc; p += 8) {
                __m256 r[8];
                for (size_t i = 0; i < 8; i++) r[i] = load8_pairs(w, dt, (n + j0 + i) * ldw + k0 + 2 * p);
                transpose8(r);
                for (size_t i = 0; i < 8; i++) _mm256_store_ps((float *)bp + (p + i) * 16 + j0, r[i]);
            }
        for (; p < kp; p++)
            for (size_t i = 0; i < 8; i++)
                bp[p * 16 + j0 + i] = i < rows ? pair_scalar(w, dt, (n + j0 + i) * ldw, k0 + 2 * p, k0 + kc) : 0;
    }
}

// Tokens [0, mc) of x (row stride ldx), columns [k0, k0 + kc), into tiles of 12 (rows past mc are 0).
VK_BF16DOT static void pack_a_bf16(const float *x, size_t ldx, size_t mc, size_t kc, uint32_t *ap) {
    size_t kp = div_up(kc, 2);
    uint32_t pairs[8];
    for (size_t i0 = 0; i0 < mc; i0 += VK_BF16_T) {
        uint32_t *dst = ap + i0 * kp;
        for (size_t i = 0; i < VK_BF16_T; i++) {
            if (i0 + i >= mc) {
                for (size_t p = 0; p < kp; p++) dst[p * VK_BF16_T + i] = 0;
                continue;
            }
            const float *row = x + (i0 + i) * ldx;
            size_t p = 0;
            for (; 2 * p + 16 <= kc; p += 8) {
                _mm256_storeu_ps((float *)pairs, (__m256)_mm512_cvtneps_pbh(_mm512_loadu_ps(row + 2 * p)));
                for (size_t q = 0; q < 8; q++) dst[(p + q) * VK_BF16_T + i] = pairs[q];
            }
            for (; p < kp; p++) dst[p * VK_BF16_T + i] = pair_scalar(row, VK_F32, 0, 2 * p, kc);
        }
    }
}

// C[MR_ x 16 NB] (+)= A tile x B panels over kp pairs; edges as ukr512_tile.
VK_BF16DOT static inline __attribute__((always_inline)) void ukr_bf16_tile(const int MR_, const int NB, size_t kp,
                                                                          const uint32_t *a, const uint32_t *b,
                                                                          size_t bstride, float *c, size_t ldc,
                                                                          size_t nr, int accumulate, const float *bias) {
    const uint32_t *b1 = b + bstride;
#pragma GCC unroll 12
    for (int i = 0; i < MR_; i++) {
        __builtin_prefetch(c + i * ldc, 1, 3);
        if (NB == 2) __builtin_prefetch(c + i * ldc + 16, 1, 3);
    }
    __m512 acc[12][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR_; i++) { acc[i][0] = _mm512_setzero_ps(); acc[i][1] = _mm512_setzero_ps(); }
#pragma GCC unroll 2
    for (size_t p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)(b + p * 16));
        __m512bh bb = NB == 2 ? (__m512bh)_mm512_load_si512((const void *)(b1 + p * 16)) : b0;
#pragma GCC unroll 12
        for (int i = 0; i < MR_; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[p * VK_BF16_T + i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            if (NB == 2) acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, bb);
        }
    }
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = NB == 1 || nr <= 16 ? 0 : nr >= 32 ? (__mmask16)0xffff : (__mmask16)((1u << (nr - 16)) - 1);
    __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
    if (!accumulate && bias) { bias0 = _mm512_maskz_loadu_ps(m0, bias); bias1 = _mm512_maskz_loadu_ps(m1, bias + 16); }
#pragma GCC unroll 12
    for (int i = 0; i < MR_; i++) {
        float *ci = c + i * ldc;
        __m512 r0 = acc[i][0], r1 = acc[i][1];
        if (accumulate) {
            r0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), r0);
            if (NB == 2) r1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), r1);
        } else {
            r0 = _mm512_add_ps(r0, bias0);
            r1 = _mm512_add_ps(r1, bias1);
        }
        _mm512_mask_storeu_ps(ci, m0, r0);
        if (NB == 2) _mm512_mask_storeu_ps(ci + 16, m1, r1);
    }
}

#define VK_UKRBF16_CASE(M)                                                                                            \
    case M:                                                                                                           \
        if (nb == 2) ukr_bf16_tile(M, 2, kp, a, b, bstride, c, ldc, nr, accumulate, bias);                            \
        else ukr_bf16_tile(M, 1, kp, a, b, bstride, c, ldc, nr, accumulate, bias);                                    \
        break;
VK_BF16DOT static void ukr_bf16(size_t mr, int nb, size_t kp, const uint32_t *a, const uint32_t *b, size_t bstride,
                                float *c, size_t ldc, size_t nr, int accumulate, const float *bias) {
    switch (mr) {
    VK_UKRBF16_CASE(12) VK_UKRBF16_CASE(11) VK_UKRBF16_CASE(10) VK_UKRBF16_CASE(9) VK_UKRBF16_CASE(8)
    VK_UKRBF16_CASE(7) VK_UKRBF16_CASE(6) VK_UKRBF16_CASE(5) VK_UKRBF16_CASE(4) VK_UKRBF16_CASE(3)
    VK_UKRBF16_CASE(2)
    default: VK_UKRBF16_CASE(1)
    }
}
#undef VK_UKRBF16_CASE

// Words of scratch gemm_bf16 uses: B panels of one K block, one token block of A tiles, alignment. Never more than
// gemm_scratch_floats (bf16 halves both), so callers size scratch with vk_matmul_scratch_floats.
static size_t gemm_bf16_scratch_words(size_t T, size_t K, size_t N) {
    size_t kp = div_up(gemm_kc(K), 2), mc = gemm_mc(T);
    return kp * round_up(N, VK_NR) + round_up(mc, VK_BF16_T) * kp + 16 + 16;
}

VK_BF16DOT static void gemm_bf16(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt,
                                 size_t n0, size_t n1, const float *bias, float *y, size_t ldy, float *buf) {
    size_t N = n1 - n0, npan = div_up(N, VK_NR);
    size_t kcb = gemm_kc(K), mcb = gemm_mc(T);
    uint32_t *bp = (uint32_t *)align64(buf);
    uint32_t *ap = bp + div_up(kcb, 2) * npan * VK_NR;
    size_t es = dt == VK_F32 ? 4 : 2;
    for (size_t k0 = 0; k0 < K; k0 += kcb) {
        size_t kc = K - k0 < kcb ? K - k0 : kcb, kp = div_up(kc, 2);
        for (size_t t0 = 0; t0 < T; t0 += mcb) {
            size_t mc = T - t0 < mcb ? T - t0 : mcb;
            pack_a_bf16(x + t0 * ldx + k0, ldx, mc, kc, ap);
            size_t ntile = div_up(mc, VK_BF16_T);
            for (size_t j = 0; j < npan; j += 2) {
                size_t n = n0 + j * VK_NR, nr = n1 - n < 2 * VK_NR ? n1 - n : 2 * VK_NR;
                uint32_t *bj = bp + j * kp * VK_NR;
                int first_pass = t0 == 0;
                if (first_pass)
                    for (size_t h = 0; h * VK_NR < nr; h++) {
                        size_t left = nr - h * VK_NR;
                        pack_b_bf16(w, dt, K, n + h * VK_NR, left < VK_NR ? left : VK_NR, k0, kc, bj + h * kp * VK_NR);
                    }
                size_t nn = n + 2 * VK_NR, nnr = nn < n1 ? (n1 - nn < 2 * VK_NR ? n1 - nn : 2 * VK_NR) : 0;
                for (size_t i = 0, p = 0; i < mc; i += VK_BF16_T, p++) {
                    if (first_pass && nnr) prefetch_panel_part(w, K * es, k0 * es, kc * es, nn, nnr, p, ntile);
                    size_t mr = mc - i < VK_BF16_T ? mc - i : VK_BF16_T;
                    ukr_bf16(mr, nr > VK_NR ? 2 : 1, kp, ap + i * kp, bj, kp * VK_NR, y + (t0 + i) * ldy + n, ldy, nr,
                             k0 != 0, bias ? bias + n : NULL);
                }
            }
        }
    }
}

// ---- bf16 products on AMX (TDPBF16PS): Sapphire Rapids and later Xeons ------------------------------------------
// The same products as gemm_bf16 (both operands rounded to bf16, f32 sums), on the tile unit: one TDPBF16PS
// multiplies a 16 x 32 bf16 tile of tokens by a 32 x 16 tile of weights into 16 x 16 f32 sums, 8192 multiply-adds,
// about 16 times what one vdpbf16ps issue does. The B panels of gemm_bf16 are already AMX's B layout (row p of a
// panel = the pairs (k0 + 2p, k0 + 2p + 1) of 16 weight rows, 64 bytes), so they are packed by pack_b_bf16 and
// padded with zero pairs to whole 16-pair steps; the tokens are plain bf16 rows (A tiles load with a row stride).
// Blocking: K in blocks of up to VK_AMX_KC, tokens in blocks of up to VK_AMX_MC (A block <= 512 KB, in L2); per
// block, each pair of weight panels (32 outputs, <= 64 KB) is packed once and swept over all the block's tokens
// with a 32 x 32 register block of four C tiles (tmm0-3; A in tmm4-5, B in tmm6-7). The C tiles go through a
// 4 KB buffer into y (bias on the first K block, accumulation after), so edges need no other tile shapes: rows past
// the tokens and outputs past the panel are zeros in A and B.
// Linux hands out the tile state per process on request (arch_prctl ARCH_REQ_XCOMP_PERM); without the grant, or
// with VLM_AMX=0 in the environment, the vdpbf16ps body runs.
#define VK_AMX_KC 512
#define VK_AMX_MC 1024

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static int g_amx = -1;         // hardware + OS grant (once)
static int g_amx_enabled = 1;  // vk_bf16_products_use_amx

static int amx_granted(void) {
    if (g_amx < 0) {
        int ok = 0;
#if defined(__linux__)
        __builtin_cpu_init();
        const char *e = getenv("VLM_AMX");
        if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && !(e && strcmp(e, "0") == 0))
            ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#endif
        g_amx = ok;
    }
    return g_amx;
}

int vk_bf16_products_engine(void) {
    if (!vk_bf16_products_available()) return 0;
    return g_amx_enabled && amx_granted() ? 2 : 1;
}

void vk_bf16_products_use_amx(int enabled) { g_amx_enabled = enabled != 0; }

#define VK_AMX __attribute__((target("amx-tile,amx-bf16,avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) vk_tilecfg;

static size_t amx_kc(size_t K) {
    size_t nb = div_up(K, VK_AMX_KC);
    return round_up(div_up(K, nb), 32);
}
static size_t amx_mc(size_t T) {
    size_t nb = div_up(T, VK_AMX_MC);
    return round_up(div_up(T, nb), 32);
}

static size_t gemm_amx_scratch_words(size_t T, size_t K) {
    size_t kp = amx_kc(K) / 2;
    return amx_mc(T) * kp + 2 * kp * 16 + 32 * 32 + 16;
}

// Tokens [0, mc) of x, columns [k0, k0 + kc), as bf16 rows of kp16 pairs (row stride 4 * kp16 bytes); rows up to
// mpad and columns past kc are zeros.
VK_AMX static void pack_a_amx(const float *x, size_t ldx, size_t mc, size_t mpad, size_t kc, size_t kp16, uint32_t *ap) {
    for (size_t i = 0; i < mpad; i++) {
        uint16_t *dst = (uint16_t *)(ap + i * kp16);
        if (i >= mc) {
            memset(dst, 0, kp16 * 4);
            continue;
        }
        const float *row = x + i * ldx;
        size_t k = 0;
        for (; k + 16 <= kc; k += 16) _mm256_storeu_si256((__m256i *)(dst + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row + k)));
        if (k < kc) {
            __mmask16 m = (__mmask16)((1u << (kc - k)) - 1);
            _mm256_storeu_si256((__m256i *)(dst + k), (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, row + k)));
            k += 16;
        }
        for (; k < 2 * kp16; k += 16) _mm256_storeu_si256((__m256i *)(dst + k), _mm256_setzero_si256());
    }
}

// C tiles (in cb, 32 x 32 f32) into y rows [0, mr), outputs [0, nr): plus bias (first K block) or plus y.
VK_AMX static inline void amx_merge(const float *cb, size_t mr, size_t nr, float *y, size_t ldy, int accumulate,
                                    const float *bias) {
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr <= 16 ? 0 : nr >= 32 ? (__mmask16)0xffff : (__mmask16)((1u << (nr - 16)) - 1);
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (!accumulate && bias) { b0 = _mm512_maskz_loadu_ps(m0, bias); b1 = _mm512_maskz_loadu_ps(m1, bias + 16); }
    for (size_t i = 0; i < mr; i++) {
        float *yi = y + i * ldy;
        __m512 r0 = _mm512_load_ps(cb + i * 32), r1 = _mm512_load_ps(cb + i * 32 + 16);
        r0 = _mm512_add_ps(r0, accumulate ? _mm512_maskz_loadu_ps(m0, yi) : b0);
        _mm512_mask_storeu_ps(yi, m0, r0);
        if (m1) {
            r1 = _mm512_add_ps(r1, accumulate ? _mm512_maskz_loadu_ps(m1, yi + 16) : b1);
            _mm512_mask_storeu_ps(yi + 16, m1, r1);
        }
    }
}

VK_AMX static void gemm_amx(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt, size_t n0,
                            size_t n1, const float *bias, float *y, size_t ldy, float *buf) {
    vk_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);
    size_t kcb = amx_kc(K), mcb = amx_mc(T), kpb = kcb / 2;
    uint32_t *ap = (uint32_t *)align64(buf);
    uint32_t *bp = ap + mcb * kpb;  // two panels of kpb x 16 words (64-byte multiples: kpb is a multiple of 16)
    float *cb = (float *)(bp + 2 * kpb * 16);
    for (size_t k0 = 0; k0 < K; k0 += kcb) {
        size_t kc = K - k0 < kcb ? K - k0 : kcb, kp = div_up(kc, 2), kp16 = round_up(kp, 16);
        size_t astride = kp16 * 4;
        for (size_t t0 = 0; t0 < T; t0 += mcb) {
            size_t mc = T - t0 < mcb ? T - t0 : mcb, mpad = round_up(mc, 32);
            pack_a_amx(x + t0 * ldx + k0, ldx, mc, mpad, kc, kp16, ap);
            for (size_t n = n0; n < n1; n += 32) {
                size_t nr = n1 - n < 32 ? n1 - n : 32;
                for (size_t h = 0; h < 2; h++) {
                    uint32_t *bh = bp + h * kp16 * 16;
                    size_t left = nr > 16 * h ? nr - 16 * h : 0;
                    if (left) pack_b_bf16(w, dt, K, n + 16 * h, left < 16 ? left : 16, k0, kc, bh);
                    else memset(bh, 0, kp * 64);
                    memset(bh + kp * 16, 0, (kp16 - kp) * 64);
                }
                const uint32_t *b1 = bp + kp16 * 16;
                for (size_t i = 0; i < mc; i += 32) {
                    const uint32_t *a0 = ap + i * kp16, *a1 = a0 + 16 * kp16;
                    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                    for (size_t p = 0; p < kp16; p += 16) {
                        _tile_loadd(4, a0 + p, astride);
                        _tile_loadd(6, bp + p * 16, 64);
                        _tile_loadd(7, b1 + p * 16, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_loadd(5, a1 + p, astride);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                    _tile_stored(0, cb, 128);
                    _tile_stored(1, cb + 16, 128);
                    _tile_stored(2, cb + 512, 128);
                    _tile_stored(3, cb + 528, 128);
                    size_t mr = mc - i < 32 ? mc - i : 32;
                    amx_merge(cb, mr, nr, y + (t0 + i) * ldy + n, ldy, k0 != 0, bias ? bias + n : NULL);
                }
            }
        }
    }
    _tile_release();
}

// ---- Quantizing (vk_quantize_rows), bit for bit the scalar body --------------------------------------------------
// Each row is converted to f32 once; per group the largest magnitude is a vector max (max(|v|, acc) keeps acc when
// v is NaN, as the scalar `>` test skips NaN), int4's signed extreme is the first value of that magnitude (what the
// scalar loop keeps), and the levels are roundf (half away from zero: truncate, then step away from zero when the
// remainder, which is exact, is at least one half) clamped as qround does (max(NaN, lo) = lo). Eight columns at a
// time; the columns after the last multiple of 8 (only at the end of a row) take the scalar steps.
VK_AVX2 static void quantize_rows_avx2(const void *w, vk_dtype dt, size_t K, int bits, size_t group_size, size_t n0,
                                       size_t n1, void *data, uint16_t *scales) {
    size_t ng = qgroups(K, group_size), rb = vk_qrow_bytes(bits, K);
    float *row = tls_scratch(K + 8);
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 lo = _mm256_set1_ps(bits == 8 ? -127.0f : -8.0f), hi = _mm256_set1_ps(bits == 8 ? 127.0f : 7.0f);
    const __m128i nib = _mm_set1_epi16(0x1001);  // byte pairs (even, odd) -> even + 16 * odd
    for (size_t n = n0; n < n1; n++) {
        to_f32_avx2((const char *)w + n * K * (dt == VK_F32 ? 4 : 2), dt, K, row);
        uint8_t *out = (uint8_t *)data + n * rb;
        if (bits == 4) memset(out, 0x88, rb);  // unused odd-K nibble holds q = 0
        for (size_t g = 0; g < ng; g++) {
            size_t k0 = g * group_size, k1 = k0 + group_size < K ? k0 + group_size : K, k8 = k0 + ((k1 - k0) & ~(size_t)7);
            __m256 am = _mm256_setzero_ps();
            for (size_t k = k0; k < k8; k += 8) am = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(row + k)), am);
            __m128 a4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
            a4 = _mm_max_ps(a4, _mm_movehl_ps(a4, a4));
            a4 = _mm_max_ss(a4, _mm_shuffle_ps(a4, a4, 1));
            float amax = _mm_cvtss_f32(a4), m = 0.0f;
            for (size_t k = k8; k < k1; k++)
                if (fabsf(row[k]) > amax) amax = fabsf(row[k]);
            if (bits == 4 && amax > 0.0f)
                for (size_t k = k0; k < k1; k++)
                    if (fabsf(row[k]) == amax) { m = row[k]; break; }
            uint16_t dh = quant_scale(bits, amax, m);
            scales[n * ng + g] = dh;
            float dr = f16_to_f32(dh);  // quantize against the scale as stored, so dequantization matches
            float id = dr != 0.0f ? 1.0f / dr : 0.0f;
            const __m256 idv = _mm256_set1_ps(id);
            for (size_t k = k0; k < k8; k += 8) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(row + k), idv);
                __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                __m256 away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half, _CMP_GE_OQ);
                __m256 step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(v, sign), one));
                __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(t, step), lo), hi);
                __m256i qi = _mm256_cvttps_epi32(q);
                __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
                if (bits == 8) {
                    _mm_storel_epi64((__m128i *)(out + k), _mm_packs_epi16(q16, q16));
                } else {
                    __m128i u = _mm_add_epi8(_mm_packs_epi16(q16, q16), _mm_set1_epi8(8));
                    __m128i b = _mm_maddubs_epi16(u, nib);
                    uint32_t four = (uint32_t)_mm_cvtsi128_si32(_mm_packus_epi16(b, b));
                    memcpy(out + k / 2, &four, 4);
                }
            }
            for (size_t k = k8; k < k1; k++) {
                float v = row[k] * id;
                if (bits == 8) {
                    ((int8_t *)out)[k] = (int8_t)qround(v, -127.0f, 127.0f);
                } else {
                    uint8_t *b = out + k / 2;
                    uint8_t u = (uint8_t)(qround(v, -8.0f, 7.0f) + 8);
                    *b = (k & 1) ? (uint8_t)((*b & 0x0f) | (u << 4)) : (uint8_t)((*b & 0xf0) | u);
                }
            }
        }
    }
}

// ---- Quantized decode path (one token): streaming GEMV over vk_qmatrix rows --------------------------------------
// RR rows at a time (4, then 1 for the rest). Within a group, two f32 accumulators per row sum x * q (eight
// independent FMA chains for four rows); at the group's end one FMA per row applies the scale: acc += scale * (a + b).
// Each weight byte is loaded once and prefetched gemv_lead bytes ahead once per 64 bytes of each row stream. `sc`
// holds the RR rows' scales converted to f32 ([RR][groups]). Columns past the last multiple of 8 use the scalar
// loader.
//   int8: 16 columns per step, vpmovsxbd straight from memory, vcvtdq2ps, FMA (3 instructions per 8 weights).
//   int4: 32 columns (16 bytes) per step without restoring column order: the bytes are widened to 16-bit lanes,
//   split into low and high nibbles, and each nibble u becomes the float 2^23 + u by pairing it with the 16-bit
//   pattern 0x4B00 (vpunpck*wd), so one exact vsubps of 2^23 + 8 yields q. The order this leaves the 32 levels in is
//   applied to x instead, once per call (`xp`, see permute_x_q4), so the weights pay no shuffles.
#define VK_Q4_BLOCK 32

// Column order of the four level vectors of one int4 block (see above): vector v, lane i holds column q4_col[v][i].
static const uint8_t q4_col[4][8] = {
    {0, 2, 4, 6, 16, 18, 20, 22}, {8, 10, 12, 14, 24, 26, 28, 30},
    {1, 3, 5, 7, 17, 19, 21, 23}, {9, 11, 13, 15, 25, 27, 29, 31},
};

// x rearranged for the int4 blocks the GEMV visits: within each group, every whole 32-column block in q4_col order;
// the columns after the group's last whole block stay in place.
static void permute_x_q4(const float *x, size_t K, size_t G, float *xp) {
    memcpy(xp, x, K * sizeof(float));
    for (size_t g0 = 0; g0 < K; g0 += G) {
        size_t ge = g0 + G < K ? g0 + G : K;
        for (size_t k = g0; k + VK_Q4_BLOCK <= ge; k += VK_Q4_BLOCK)
            for (size_t v = 0; v < 4; v++)
                for (size_t i = 0; i < 8; i++) xp[k + v * 8 + i] = x[k + q4_col[v][i]];
    }
}

VK_AVX2 static inline __attribute__((always_inline)) void gemv_q_rows(const int BITS, const int RR, const float *x,
                                                                      const float *xp, size_t K, const vk_qmatrix *w,
                                                                      size_t n, const float *bias, float *y,
                                                                      float *sc) {
    size_t G = w->group_size, ng = qgroups(K, G), rb = vk_qrow_bytes(BITS, K), K8 = K & ~(size_t)7;
    const uint8_t *row[4];
    for (int r = 0; r < RR; r++) {
        row[r] = (const uint8_t *)w->data + (n + r) * rb;
        to_f32_avx2(w->scales + (n + r) * ng, VK_F16, ng, sc + r * ng);
    }
    const size_t step = BITS == 8 ? 16 : VK_Q4_BLOCK, step_bytes = step * BITS / 8, lead = gemv_lead((size_t)RR * rb);
    const __m256i low4 = _mm256_set1_epi16(0x0f), magic = _mm256_set1_epi16(0x4b00);
    const __m256 bias8 = _mm256_set1_ps(8388616.0f);  // 2^23 + 8
    __m256 acc[4];
    for (int r = 0; r < RR; r++) acc[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < ng; g++) {
        size_t ke = g * G + G < K8 ? g * G + G : K8;
        __m256 a[4], b[4];
        for (int r = 0; r < RR; r++) { a[r] = _mm256_setzero_ps(); b[r] = _mm256_setzero_ps(); }
        size_t k = g * G;
        for (; k + step <= ke; k += step) {
            size_t off = k * BITS / 8;
            if ((off & 63) < step_bytes)  // once per 64-byte line of each row
                for (int r = 0; r < RR; r++) VK_LEAD_PREFETCH(row[r] + off, lead);
            if (BITS == 8) {
                __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
                for (int r = 0; r < RR; r++) {
                    a[r] = _mm256_fmadd_ps(x0, q8_levels8((const int8_t *)row[r] + k), a[r]);
                    b[r] = _mm256_fmadd_ps(x1, q8_levels8((const int8_t *)row[r] + k + 8), b[r]);
                }
            } else {
                __m256 x0 = _mm256_loadu_ps(xp + k), x1 = _mm256_loadu_ps(xp + k + 8);
                __m256 x2 = _mm256_loadu_ps(xp + k + 16), x3 = _mm256_loadu_ps(xp + k + 24);
                for (int r = 0; r < RR; r++) {
                    __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row[r] + off)));
                    __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_srli_epi16(v, 4);
                    __m256 l0 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(lo, magic)), bias8);
                    __m256 l1 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(lo, magic)), bias8);
                    __m256 l2 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(hi, magic)), bias8);
                    __m256 l3 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(hi, magic)), bias8);
                    a[r] = _mm256_fmadd_ps(x0, l0, a[r]);
                    b[r] = _mm256_fmadd_ps(x1, l1, b[r]);
                    a[r] = _mm256_fmadd_ps(x2, l2, a[r]);
                    b[r] = _mm256_fmadd_ps(x3, l3, b[r]);
                }
            }
        }
        for (; k + 8 <= ke; k += 8) {  // the group's columns after its last whole step, in natural order
            __m256 x0 = _mm256_loadu_ps(x + k);
            for (int r = 0; r < RR; r++) {
                __m256 l0 = BITS == 8 ? q8_levels8((const int8_t *)row[r] + k) : q4_levels8(row[r] + k / 2);
                a[r] = _mm256_fmadd_ps(x0, l0, a[r]);
            }
        }
        for (int r = 0; r < RR; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + r * ng + g), _mm256_add_ps(a[r], b[r]), acc[r]);
    }
    for (int r = 0; r < RR; r++) {
        float s = hsum256(acc[r]);
        for (size_t k = K8; k < K; k++) s += x[k] * qload(w, K, n + r, k);
        y[n + r] = bias ? s + bias[n + r] : s;
    }
}

// buf: 4 * groups floats for the scales, then K floats for the permuted x (int4).
VK_AVX2 static void gemv_q_avx2(const float *x, size_t K, const vk_qmatrix *w, size_t n0, size_t n1,
                                const float *bias, float *y, float *buf) {
    size_t n = n0;
    float *sc = buf, *xp = buf + 4 * qgroups(K, w->group_size);
    if (w->bits == 8) {
        for (; n + 4 <= n1; n += 4) gemv_q_rows(8, 4, x, x, K, w, n, bias, y, sc);
        for (; n < n1; n++) gemv_q_rows(8, 1, x, x, K, w, n, bias, y, sc);
    } else {
        permute_x_q4(x, K, w->group_size, xp);
        for (; n + 4 <= n1; n += 4) gemv_q_rows(4, 4, x, xp, K, w, n, bias, y, sc);
        for (; n < n1; n++) gemv_q_rows(4, 1, x, xp, K, w, n, bias, y, sc);
    }
}

// The f16 scales of rows n + 4 .. n + 11 (inside the slice), called before each row block starting at n: the next two
// 4-row blocks, or for the 2-row bodies the blocks after the next one (those rows were covered by the calls before).
// A block's scales are one to a few cache lines of another array than the weights, which the weights' prefetch never
// reaches; without this every row block of int4 decode began with a DRAM miss on its scales (perf: the hottest stores).
static inline void prefetch_scales(const vk_qmatrix *w, size_t ng, size_t n, size_t n1) {
    size_t a = n + 4, b = n + 12 < n1 ? n + 12 : n1;
    if (a >= b) return;
    const char *p = (const char *)(w->scales + a * ng), *e = (const char *)(w->scales + b * ng);
    for (; p < e; p += 64) __builtin_prefetch(p, 0, 3);
}

// Integer-dot decode (see qdot_applies): per 32 columns and row, |w| x sign(x, w) by vpmaddubsw (u8 x s8 pairs to
// s16, at most 2 x 128 x 127 so never saturating), pairs to s32 by vpmaddwd, summed over the group in s32 lanes; one
// convert and FMA with scale_w * d_x per group. int4: the 16 bytes of a block split into low nibbles (even columns)
// and high nibbles (odd columns) in the two 128-bit halves, minus 8; `qx` was permuted to that order once per call.
VK_AVX2 static inline __attribute__((always_inline)) void gemv_qdot_rows(const int BITS, const int RR,
                                                                         const int8_t *qx, const float *dx, size_t K,
                                                                         const vk_qmatrix *w, size_t n,
                                                                         const float *bias, float *y, float *sc) {
    size_t G = w->group_size, ng = qgroups(K, G), rb = vk_qrow_bytes(BITS, K);
    const uint8_t *row[4];
    for (int r = 0; r < RR; r++) {
        row[r] = (const uint8_t *)w->data + (n + r) * rb;
        to_f32_avx2(w->scales + (n + r) * ng, VK_F16, ng, sc + r * ng);
    }
    size_t lead = gemv_lead((size_t)RR * rb);
    const __m256i ones = _mm256_set1_epi16(1), eight = _mm256_set1_epi8(8);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256 acc[4];
    for (int r = 0; r < RR; r++) acc[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < ng; g++) {
        size_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
        __m256i s[4];
        for (int r = 0; r < RR; r++) s[r] = _mm256_setzero_si256();
        for (size_t k = k0; k < k1; k += 32) {
            size_t off = k * BITS / 8;
            if ((off & 63) < (size_t)(32 * BITS / 8))  // once per 64-byte line of each row
                for (int r = 0; r < RR; r++) VK_LEAD_PREFETCH(row[r] + off, lead);
            __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + k));
            for (int r = 0; r < RR; r++) {
                __m256i wv;
                if (BITS == 8) {
                    wv = _mm256_loadu_si256((const __m256i *)(row[r] + k));
                } else {
                    __m128i b = _mm_loadu_si128((const __m128i *)(row[r] + off));
                    __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
                    wv = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);
                }
                __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
                s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(p, ones));
            }
        }
        for (int r = 0; r < RR; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(sc[r * ng + g] * dx[g]), _mm256_cvtepi32_ps(s[r]), acc[r]);
    }
    for (int r = 0; r < RR; r++) {
        float v = hsum256(acc[r]);
        y[n + r] = bias ? v + bias[n + r] : v;
    }
}

// Floats between the row scales of consecutive rows in the decode bodies' `sc` (qdot_rows_setup, qdot_rows_setup512):
// the groups rounded up to whole 16-float vectors, so every store there is a whole vector. A load that reads part of a
// masked store (or of several narrower ones) cannot take its data from the store queue and waits until the store
// retires: on Zen 4 that stall at the start of every row was most of int4 decode's per-row cost (one 960-column int4
// row 25.6 -> 20.1 ns with the data in L2; Benchmarks/README.md, session 27).
static inline size_t qdot_sc_stride(size_t ng) { return (ng + 15) & ~(size_t)15; }

// The row pointers of rows n .. n + RR - 1 and their scales times x's group scales (sc + r * qdot_sc_stride(ng):
// scale_w * d_x per group), for the bodies that fold d_x into the row scales once per block (pair4, zmm). The last
// vector reads up to 7 floats past dx's groups (the scratch's next bytes; their products land past ng, never read).
VK_AVX2 static inline __attribute__((always_inline)) void qdot_rows_setup(const int RR, const vk_qmatrix *w, size_t rb,
                                                                          size_t ng, size_t n, const float *dx,
                                                                          const uint8_t **row, float *sc) {
    size_t ns = qdot_sc_stride(ng);
    for (int r = 0; r < RR; r++) {
        row[r] = (const uint8_t *)w->data + (n + r) * rb;
        const uint16_t *s16 = w->scales + (n + r) * ng;
        float *scr = sc + r * ns;
        size_t g = 0;
        for (; g + 8 <= ng; g += 8)
            _mm256_storeu_ps(scr + g, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s16 + g))),
                                                    _mm256_loadu_ps(dx + g)));
        if (g < ng) {  // the last scales through a zeroed copy (a row's scales may end at the end of the array)
            uint16_t t[8] = {0};
            memcpy(t, s16 + g, (ng - g) * sizeof(uint16_t));
            _mm256_storeu_ps(scr + g, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t)),
                                                    _mm256_loadu_ps(dx + g)));
        }
    }
}

// -8 sum(x) per group of the quantized x: the correction of the int4 bodies that multiply the unsigned nibbles
// u = q + 8 (sum(q x) = sum(u x) - 8 sum(x)).
static void qdot_minus8_sums(const int8_t *qx, size_t K, size_t G, int32_t *xs) {
    for (size_t g = 0; g * G < K; g++) {
        int32_t t = 0;
        for (size_t k = g * G; k < (g + 1) * G && k < K; k++) t += qx[k];
        xs[g] = -8 * t;
    }
}

// int4 with 32-column groups and K a multiple of 64: two groups per 32-byte load. The nibbles stay unsigned (u = q + 8,
// 0..15), so vpmaddubsw takes them as they are against x (no sign trick), and sum(q x) = sum(u x) - 8 sum(x): the
// two groups' -8 sum(x) (`xi`, lanes 0 and 4 of each pair's 8) start the s32 accumulator. The low nibbles' and high
// nibbles' s16 pair sums are added before vpmaddwd (each at most 2 x 2 x 15 x 127 = 7620); lanes 0-3 hold the first
// group, 4-7 the second, so one convert and one FMA with both groups' scale_w * d_x cover 64 columns. `qx`: x in
// pair order (gemv_qdot_avx2). The integers are gemv_qdot_scalar's; only the f32 accumulation order differs.
VK_AVX2 static inline __attribute__((always_inline)) void gemv_qdot_rows_pair4(const int RR, const int8_t *qx,
                                                                               const float *dx, const int32_t *xi,
                                                                               size_t K, const vk_qmatrix *w,
                                                                               size_t n, const float *bias, float *y,
                                                                               float *sc) {
    size_t ng = K / 32, rb = vk_qrow_bytes(4, K);
    const uint8_t *row[4];
    qdot_rows_setup(RR, w, rb, ng, n, dx, row, sc);
    const size_t ns = qdot_sc_stride(ng);
    size_t lead = gemv_lead((size_t)RR * rb);
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const __m256i pair = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    __m256 acc[4];
    for (int r = 0; r < RR; r++) acc[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < ng; g += 2) {
        size_t k = g * 32, off = k / 2;
        if ((off & 63) == 0)  // once per 64-byte line of each row
            for (int r = 0; r < RR; r++) VK_LEAD_PREFETCH(row[r] + off, lead);
        __m256i xlo = _mm256_loadu_si256((const __m256i *)(qx + k));
        __m256i xhi = _mm256_loadu_si256((const __m256i *)(qx + k + 32));
        __m256i s0 = _mm256_loadu_si256((const __m256i *)(xi + g * 4));
        for (int r = 0; r < RR; r++) {
            __m256i b = _mm256_loadu_si256((const __m256i *)(row[r] + off));
            __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
            __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
            __m256i si = _mm256_add_epi32(s0, _mm256_madd_epi16(p, ones));
            __m256 d = _mm256_permutevar8x32_ps(
                _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd((const double *)(sc + r * ns + g)))), pair);
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(si), acc[r]);
        }
    }
    for (int r = 0; r < RR; r++) {
        float v = hsum256(acc[r]);
        y[n + r] = bias ? v + bias[n + r] : v;
    }
}

// qdot_quantize_x with 256-bit vectors, the same levels and scales bit for bit (qdot_quantize_x512's argument). K and
// G multiples of 32 (qdot_applies, qgemm_avx2_applies).
VK_AVX2 static void qdot_quantize_x256(const float *x, size_t K, size_t G, int8_t *qx, float *dx) {
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t g = 0; g * G < K; g++) {
        size_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
        __m256 am = _mm256_setzero_ps();
        for (size_t k = k0; k < k1; k += 8) am = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)), am);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float amax = _mm_cvtss_f32(m4);
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        dx[g] = amax / 127.0f;
        const __m256 idv = _mm256_set1_ps(id);
        for (size_t k = k0; k < k1; k += 32) {
            __m256i v[4];
            for (int j = 0; j < 4; j++)
                v[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), idv), lo), hi));
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
            _mm256_storeu_si256((__m256i *)(qx + k), _mm256_permutevar8x32_epi32(b, order));
        }
    }
}

// buf: 4 * groups floats (row scales), groups floats (dx), then K + K bytes (qx, and int4's permuted copy), then (int4
// pair path) groups int32 (xs) and 4 int32 per group (xi), within vk_matmul_q_scratch_floats' gemv_qdot_vnni layout.
VK_AVX2 static void gemv_qdot_avx2(const float *x, size_t K, const vk_qmatrix *w, size_t n0, size_t n1,
                                   const float *bias, float *y, float *buf) {
    size_t ng = qgroups(K, w->group_size), n = n0;
    float *sc = buf, *dx = buf + 4 * qdot_sc_stride(ng);
    int8_t *qx = (int8_t *)(dx + ng), *qp = qx + K;
    qdot_quantize_x256(x, K, w->group_size, qx, dx);
    if (w->bits == 8) {
        // One row at a time (see the decode-path note above gemv_avx2; on a Zen 3 host 2 rows per block had already
        // beaten 4 by 9-10%, Benchmarks/README.md session 8)
        for (; n < n1; n++) {
            if ((n - n0) % 4 == 0) prefetch_scales(w, ng, n, n1);
            gemv_qdot_rows(8, 1, qx, dx, K, w, n, bias, y, sc);
        }
    } else {
        if (w->group_size == 32 && K % 64 == 0) {  // gemv_qdot_rows_pair4
            // qp: each 64 columns as [even columns of group 0, of group 1, odd columns of group 0, of group 1]
            int32_t *xs = (int32_t *)(qp + K), *xi = xs + ng;
            for (size_t k = 0; k < K; k += 64)
                for (int j = 0; j < 2; j++)
                    for (size_t i = 0; i < 16; i++) {
                        qp[k + 16 * j + i] = qx[k + 32 * j + 2 * i];
                        qp[k + 32 + 16 * j + i] = qx[k + 32 * j + 2 * i + 1];
                    }
            qdot_minus8_sums(qx, K, 32, xs);
            memset(xi, 0, 4 * ng * sizeof(int32_t));
            for (size_t g = 0; g < ng; g++) xi[g / 2 * 8 + g % 2 * 4] = xs[g];
            for (; n < n1; n++) {  // one row at a time, as int8
                if ((n - n0) % 4 == 0) prefetch_scales(w, ng, n, n1);
                gemv_qdot_rows_pair4(1, qp, dx, xi, K, w, n, bias, y, sc);
            }
            return;
        }
        qdot_permute_int4(qx, K, qp);
        for (; n + 4 <= n1; n += 4) {  // four rows per block, as gemv_qdot_vnni's int4 with other group sizes
            prefetch_scales(w, ng, n, n1);
            gemv_qdot_rows(4, 4, qp, dx, K, w, n, bias, y, sc);
        }
        for (; n < n1; n++) gemv_qdot_rows(4, 1, qp, dx, K, w, n, bias, y, sc);
    }
}

// The integer-dot decode with VNNI: vpdpbusd multiplies u8 by s8 lanes and adds each four products into s32 in one
// instruction (AVX2 needs vpmaddubsw, vpmaddwd and vpaddd). int8: |w| x sign(x, w) as before. int4: the nibbles are
// already unsigned (u = q + 8), so u x x needs no sign trick and sum(q x) = sum(u x) - 8 sum(x): the group's
// -8 sum(x) (`xs`, once per call) starts lane 0 of the group's s32 accumulator. The sums are the same integers as
// gemv_qdot_scalar's; only the f32 accumulation order differs.
VK_VNNI static inline __attribute__((always_inline)) void gemv_qdot_rows_vnni(const int BITS, const int RR,
                                                                              const int8_t *qx, const float *dx,
                                                                              const int32_t *xs, size_t K,
                                                                              const vk_qmatrix *w, size_t n,
                                                                              const float *bias, float *y, float *sc) {
    size_t G = w->group_size, ng = qgroups(K, G), rb = vk_qrow_bytes(BITS, K);
    const uint8_t *row[4];
    for (int r = 0; r < RR; r++) {
        row[r] = (const uint8_t *)w->data + (n + r) * rb;
        to_f32_avx2(w->scales + (n + r) * ng, VK_F16, ng, sc + r * ng);
    }
    size_t lead = gemv_lead((size_t)RR * rb);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256 acc[4];
    for (int r = 0; r < RR; r++) acc[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < ng; g++) {
        size_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
        __m256i s[4];
        __m256i s0 = BITS == 4 ? _mm256_zextsi128_si256(_mm_cvtsi32_si128(xs[g])) : _mm256_setzero_si256();
        for (int r = 0; r < RR; r++) s[r] = s0;
        for (size_t k = k0; k < k1; k += 32) {
            size_t off = k * BITS / 8;
            if ((off & 63) < (size_t)(32 * BITS / 8))  // once per 64-byte line of each row
                for (int r = 0; r < RR; r++) VK_LEAD_PREFETCH(row[r] + off, lead);
            __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + k));
            for (int r = 0; r < RR; r++) {
                if (BITS == 8) {
                    __m256i wv = _mm256_loadu_si256((const __m256i *)(row[r] + k));
                    s[r] = _mm256_dpbusd_epi32(s[r], _mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
                } else {
                    __m128i b = _mm_loadu_si128((const __m128i *)(row[r] + off));
                    __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
                    s[r] = _mm256_dpbusd_epi32(s[r], _mm256_set_m128i(hi, lo), xv);
                }
            }
        }
        for (int r = 0; r < RR; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(sc[r * ng + g] * dx[g]), _mm256_cvtepi32_ps(s[r]), acc[r]);
    }
    for (int r = 0; r < RR; r++) {
        float v = hsum256(acc[r]);
        y[n + r] = bias ? v + bias[n + r] : v;
    }
}

// scale_w * d_x of groups g .. g + 15 of a row (its f16 scales s16), zeros past the row's ng groups.
VK_VNNI static inline __m512 qdot_scales16_512(const uint16_t *s16, const float *dx, size_t ng, size_t g) {
    __mmask16 m = ng - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (ng - g)) - 1);
    return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s16 + g)), _mm512_maskz_loadu_ps(m, dx + g));
}

// qdot_rows_setup with 512-bit vectors: 16 scales per step, the group tail under a mask (the scalar tail of
// to_f32_avx2 converts f16 in software, and per row of a 960-column matrix that setup cost more than the row's dot
// product). The same products scale_w * d_x, bit for bit.
VK_VNNI static inline __attribute__((always_inline)) void qdot_rows_setup512(const int RR, const vk_qmatrix *w,
                                                                               size_t rb, size_t ng, size_t n,
                                                                               const float *dx, const uint8_t **row,
                                                                               float *sc) {
    size_t ns = qdot_sc_stride(ng);
    for (int r = 0; r < RR; r++) {
        row[r] = (const uint8_t *)w->data + (n + r) * rb;
        const uint16_t *s16 = w->scales + (n + r) * ng;
        for (size_t g = 0; g < ng; g += 16)  // whole-vector stores (see qdot_sc_stride)
            _mm512_storeu_ps(sc + r * ns + g, qdot_scales16_512(s16, dx, ng, g));
    }
}

// int4 sums of four groups (64 weight bytes b, as stored) against x's levels in qq order (xlo: the even columns'
// part, xhi: the odd), started from s0 (-8 sum(x) of group j at lane 4j): s32 lane 4j .. 4j + 3 belong to group j.
VK_VNNI static inline __m512i q4_sums4_512(__m512i b, __m512i s0, __m512i xlo, __m512i xhi) {
    const __m512i m4z = _mm512_set1_epi8(0x0f);
    __m512i s = _mm512_dpbusd_epi32(s0, _mm512_and_si512(b, m4z), xlo);
    return _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(b, 4), m4z), xhi);
}

// The nibbles of two groups (32 weight bytes at p) as u8 levels in qp order: each group's low nibbles, then its high.
VK_VNNI static inline __m512i q4_levels2_512(const uint8_t *p) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m512i halves = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    __m256i b = _mm256_loadu_si256((const __m256i *)p);
    __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
    return _mm512_permutex2var_epi64(_mm512_castsi256_si512(lo), halves, _mm512_castsi256_si512(hi));
}

// Groups of exactly 32 columns (the default scheme, llama.cpp's block) with K a multiple of 64: two groups per zmm.
// int8: the 64 bytes of two groups, |w| x sign(x, w) (AVX-512 has no vpsignb: x negated under the mask of w < 0);
// int4: the 32 bytes of two groups as low nibbles then high nibbles of each group (the order `qp` has), the two
// 128-bit halves interleaved by one vpermt2q. s32 lanes 0-7 then belong to the first group, 8-15 to the second, so
// one convert and one FMA with [scale_g x 8, scale_g+1 x 8] (sc already holds scale_w * d_x) finish both groups.
// int4's -8 sum(x) of each group starts its s32 lanes (`xi`: per group pair, lane 0 and lane 8, made once per call),
// so the sums stay exact integers and a row has no epilogue but the horizontal add.
// int4 takes four groups (64 bytes) per load while four remain: one vpand / vpsrlw+vpand gives the low and the high
// nibbles of all four, each 128-bit lane one group, against x in the matching order (qq: per 128 columns the even
// columns of the four groups, then their odd columns), so two vpdpbusd, one convert and one FMA serve 128 weights
// (half the instructions of the pair step; int4 decode is bound by instructions, not bytes, on two cores).
VK_VNNI static inline __attribute__((always_inline)) void gemv_qdot_rows_zmm(const int BITS, const int RR,
                                                                             const int8_t *qx, const float *dx,
                                                                             const int32_t *x4,
                                                                             const int32_t *xi, size_t K,
                                                                             const vk_qmatrix *w, size_t n,
                                                                             const float *bias, float *y, float *sc) {
    size_t ng = K / 32, rb = vk_qrow_bytes(BITS, K);
    const uint8_t *row[4];
    qdot_rows_setup512(RR, w, rb, ng, n, dx, row, sc);
    const size_t ns = qdot_sc_stride(ng);
    const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc[4];
    for (int r = 0; r < RR; r++) acc[r] = _mm512_setzero_ps();
    size_t g = 0;
    if (BITS == 4) {  // four groups per 64-byte load (qx: gemv_qdot_vnni's qq order), while four remain
        const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        for (; g + 4 <= ng; g += 4) {
            size_t k = g * 32, off = k / 2;
            for (int r = 0; r < RR; r++) VK_STREAM_PREFETCH(row[r] + off);
            __m512i xlo = _mm512_loadu_si512((const void *)(qx + k));
            __m512i xhi = _mm512_loadu_si512((const void *)(qx + k + 64));
            __m512i s0 = _mm512_loadu_si512((const void *)(x4 + g * 4));  // -8 sum(x) of group g + j at lane 4j
            for (int r = 0; r < RR; r++) {
                __m512i s = q4_sums4_512(_mm512_loadu_si512((const void *)(row[r] + off)), s0, xlo, xhi);
                __m512 d = _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(_mm_loadu_ps(sc + r * ns + g)));
                acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[r]);
            }
        }
    }
    for (; g < ng; g += 2) {
        size_t k = g * 32, off = k * BITS / 8;
        if ((off & 63) == 0)  // once per 64-byte line of each row
            for (int r = 0; r < RR; r++) VK_STREAM_PREFETCH(row[r] + off);
        __m512i xv = _mm512_loadu_si512((const void *)(qx + k));
        __m512i s0 = BITS == 4 ? _mm512_loadu_si512((const void *)(xi + g * 8)) : _mm512_setzero_si512();
        for (int r = 0; r < RR; r++) {
            __m512i s;
            if (BITS == 8) {
                __m512i wv = _mm512_loadu_si512((const void *)(row[r] + k));
                __mmask64 neg = _mm512_movepi8_mask(wv);
                __m512i xs = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv);
                s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), xs);
            } else {
                s = _mm512_dpbusd_epi32(s0, q4_levels2_512(row[r] + off), xv);
            }
            __m512 d = _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(_mm_castpd_ps(
                _mm_load_sd((const double *)(sc + r * ns + g)))));
            acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[r]);
        }
    }
    for (int r = 0; r < RR; r++) {
        float v = _mm512_reduce_add_ps(acc[r]);
        y[n + r] = bias ? v + bias[n + r] : v;
    }
}

// qdot_quantize_x with 512-bit vectors, the same levels and scales bit for bit: max(|x|, acc) keeps acc when x is
// NaN (fmaxf's rule), max(v, -127) gives -127 for NaN, and vcvtps2dq rounds to nearest even as nearbyintf does in the
// default rounding mode. K and G multiples of 32 (qdot_applies). Every decode product quantizes its x once per
// thread; the scalar loop took about a tenth of an int4 decode step on Zen 4.
VK_VNNI static void qdot_quantize_x512(const float *x, size_t K, size_t G, int8_t *qx, float *dx) {
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (size_t g = 0; g * G < K; g++) {
        size_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
        __m512 am = _mm512_setzero_ps();
        for (size_t k = k0; k < k1; k += 16) am = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + k)), am);
        float amax = _mm512_reduce_max_ps(am);
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        dx[g] = amax / 127.0f;
        const __m512 idv = _mm512_set1_ps(id);
        for (size_t k = k0; k < k1; k += 16) {
            __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + k), idv), lo), hi);
            _mm_storeu_si128((__m128i *)(qx + k), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
        }
    }
}

// int4 decode of rows up to 1024 columns (32-column groups, K a multiple of 64: SmolVLM's and InternVL3's hidden
// sizes, the q / k / v / o / gate / up products) with x in registers: its levels (in gemv_qdot_vnni's qq order) take
// 2 zmm per 128 columns, at most 17, loaded once per call, and the row's scale_w * d_x stay in registers too (at most
// two vectors of 16 groups, each 4-group step's four picked by one vpermps), so a row's loop loads only its 64-byte
// weight vectors, the sums' starts and its scales. The products, sums and their order are gemv_qdot_rows_zmm's with
// RR = 1, so the result is the same bit for bit. Zen 4, one 960 x 960 int4 matrix, one thread: 20.1 -> 14.1 ns per
// row with the data in L2; 200000 rows from memory 21.7 -> 17.2 ns (Benchmarks/README.md, session 27).
#define VK_Q4_XREG_BLOCKS 8  // whole 128-column blocks held; K <= 8 * 128 + 64
VK_VNNI static inline __attribute__((always_inline)) void gemv_q4_xreg_body(const int NQ, const int PAIR,
                                                                            const int8_t *qq, const float *dx,
                                                                            const int32_t *x4, const int32_t *xi,
                                                                            size_t K, const vk_qmatrix *w, size_t n0,
                                                                            size_t n1, const float *bias, float *y) {
    const size_t ng = 4 * (size_t)NQ + 2 * (size_t)PAIR, rb = vk_qrow_bytes(4, K);
    const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512i xr[2 * VK_Q4_XREG_BLOCKS + 1];
    for (int j = 0; j < NQ; j++) {
        xr[2 * j] = _mm512_loadu_si512((const void *)(qq + 128 * j));
        xr[2 * j + 1] = _mm512_loadu_si512((const void *)(qq + 128 * j + 64));
    }
    if (PAIR) xr[2 * NQ] = _mm512_loadu_si512((const void *)(qq + 128 * NQ));
    for (size_t n = n0; n < n1; n++) {
        if ((n - n0) % 4 == 0) prefetch_scales(w, ng, n, n1);
        const uint8_t *row = (const uint8_t *)w->data + n * rb;
        const uint16_t *s16 = w->scales + n * ng;
        __m512 sv[(4 * VK_Q4_XREG_BLOCKS + 2 + 15) / 16];
        for (int c = 0; c * 16 < (int)ng; c++) sv[c] = qdot_scales16_512(s16, dx, ng, 16 * (size_t)c);
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < NQ; j++) {  // four groups per step
            VK_STREAM_PREFETCH(row + 64 * j);
            __m512i s = q4_sums4_512(_mm512_loadu_si512((const void *)(row + 64 * j)),
                                     _mm512_loadu_si512((const void *)(x4 + 16 * j)), xr[2 * j], xr[2 * j + 1]);
            __m512 d = _mm512_permutexvar_ps(_mm512_add_epi32(quad, _mm512_set1_epi32(4 * (j % 4))), sv[j / 4]);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc);
        }
        if (PAIR) {  // the last two groups, as gemv_qdot_rows_zmm's pair step
            const size_t g = 4 * (size_t)NQ, off = g * 16;
            VK_STREAM_PREFETCH(row + off);
            __m512i s = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void *)(xi + g * 8)), q4_levels2_512(row + off),
                                            xr[2 * NQ]);
            __m512 d = _mm512_permutexvar_ps(_mm512_add_epi32(pair, _mm512_set1_epi32((int)(g % 16))), sv[g / 16]);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc);
        }
        float v = _mm512_reduce_add_ps(acc);
        y[n] = bias ? v + bias[n] : v;
    }
}

// gemv_q4_xreg_body for K's block count; 0 when K is past what it holds (then gemv_qdot_rows_zmm).
VK_VNNI static int gemv_q4_xreg(const int8_t *qq, const float *dx, const int32_t *x4, const int32_t *xi, size_t K,
                                const vk_qmatrix *w, size_t n0, size_t n1, const float *bias, float *y) {
    const int pr = K % 128 != 0;
#define VK_Q4_XREG_CASE(Q)                                                                                             \
    case Q:                                                                                                           \
        if (pr) gemv_q4_xreg_body(Q, 1, qq, dx, x4, xi, K, w, n0, n1, bias, y);                                       \
        else gemv_q4_xreg_body(Q, 0, qq, dx, x4, xi, K, w, n0, n1, bias, y);                                          \
        return 1;
    switch (K / 128) {
        VK_Q4_XREG_CASE(1) VK_Q4_XREG_CASE(2) VK_Q4_XREG_CASE(3) VK_Q4_XREG_CASE(4)
        VK_Q4_XREG_CASE(5) VK_Q4_XREG_CASE(6) VK_Q4_XREG_CASE(7) VK_Q4_XREG_CASE(8)
        default: return 0;
    }
#undef VK_Q4_XREG_CASE
}

// buf as gemv_qdot_avx2's, then groups int32 (xs), then 8 int32 per group (xi, gemv_qdot_rows_zmm's int4 starts),
// then K bytes (qq, int4's x in the four-group order), then 4 int32 per group (x4, the four-group step's starts).
VK_VNNI static void gemv_qdot_vnni(const float *x, size_t K, const vk_qmatrix *w, size_t n0, size_t n1,
                                   const float *bias, float *y, float *buf) {
    size_t G = w->group_size, ng = qgroups(K, G), n = n0;
    float *sc = buf, *dx = buf + 4 * qdot_sc_stride(ng);
    int8_t *qx = (int8_t *)(dx + ng), *qp = qx + K;
    int32_t *xs = (int32_t *)(qp + K), *xi = xs + ng;
    qdot_quantize_x512(x, K, G, qx, dx);
    const int zmm = G == 32 && K % 64 == 0;  // two whole groups per 512-bit step (gemv_qdot_rows_zmm)
    if (w->bits == 8 && zmm) {
        // One row at a time, as gemv_avx512 (a sequential stream per thread: on Zen 4 a decode step's int8 weights
        // streamed at 21 GB/s, against 13.5 GB/s with four rows interleaved); the scales' prefetch every four rows.
        for (; n < n1; n++) {
            if ((n - n0) % 4 == 0) prefetch_scales(w, ng, n, n1);
            gemv_qdot_rows_zmm(8, 1, qx, dx, NULL, xi, K, w, n, bias, y, sc);
        }
    } else if (w->bits == 8) {
        for (; n < n1; n++) {
            if ((n - n0) % 4 == 0) prefetch_scales(w, ng, n, n1);
            gemv_qdot_rows_vnni(8, 1, qx, dx, xs, K, w, n, bias, y, sc);
        }
    } else {
        qdot_minus8_sums(qx, K, G, xs);
        qdot_permute_int4(qx, K, qp);
        if (zmm) {
            memset(xi, 0, 8 * ng * sizeof(int32_t));
            for (size_t g = 0; g < ng; g += 2) { xi[g * 8] = xs[g]; xi[g * 8 + 8] = xs[g + 1]; }
            // qq: qp with each whole 128-column block (four groups) as [even columns of groups 0-3, odd columns of
            // groups 0-3] (16 each); the columns after the last whole block keep qp's order for the pair step.
            int8_t *qq = (int8_t *)(xi + 8 * ng);
            size_t kq = K / 128 * 128;
            for (size_t b = 0; b < kq; b += 128)
                for (int j = 0; j < 4; j++) {
                    memcpy(qq + b + 16 * j, qp + b + 32 * j, 16);
                    memcpy(qq + b + 64 + 16 * j, qp + b + 32 * j + 16, 16);
                }
            memcpy(qq + kq, qp + kq, K - kq);
            // x4: per whole four-group block, the 16 s32 lanes that start its sums (-8 sum(x) of group g + j at lane
            // 4j), made once per call rather than expanded from xs in every row
            int32_t *x4 = (int32_t *)(qq + K);
            memset(x4, 0, 4 * ng * sizeof(int32_t));
            for (size_t g = 0; g + 4 <= ng; g += 4)
                for (int j = 0; j < 4; j++) x4[g * 4 + 4 * j] = xs[g + j];
            if (gemv_q4_xreg(qq, dx, x4, xi, K, w, n, n1, bias, y)) return;
            for (; n < n1; n++) {
                if ((n - n0) % 4 == 0) prefetch_scales(w, ng, n, n1);
                gemv_qdot_rows_zmm(4, 1, qq, dx, x4, xi, K, w, n, bias, y, sc);
            }
        }
        // int4 with other group sizes stays at four rows per block: compute-bound, it gains more from sharing x's
        // loads across rows than from one stream per thread (one row: 16.6 -> 21.9 ms per SmolVLM-500M step with
        // 64-column groups on Zen 4, int8 25.6 -> 17.8 ms)
        for (; n + 4 <= n1; n += 4) {
            prefetch_scales(w, ng, n, n1);
            gemv_qdot_rows_vnni(4, 4, qp, dx, xs, K, w, n, bias, y, sc);
        }
        for (; n < n1; n++) gemv_qdot_rows_vnni(4, 1, qp, dx, xs, K, w, n, bias, y, sc);
    }
}


// ---- Several tokens against quantized weights on VNNI hosts: an int8 GEMM -----------------------------------------
// Prefill (T >= 2) with whole 32-column groups quantizes each token's x as decode does (qdot_quantize_x: the same
// levels and scales, so a prompt's tokens see the numbers a decode step would) and multiplies levels with vpdpbusd:
// 64 u8 x s8 products per instruction where an f32 FMA does 16. The weights are re-laid per call, 32 rows at a time,
// into panels of [K / 4][32 rows][4 bytes] (one zmm per 4 columns of 16 rows) with the levels biased to unsigned
// (q8: w + 128, q4: the stored nibble, w + 8) and int4 columns in qdot_permute_int4's order; the bias comes back as
// the group sums of x, which start the int32 accumulators (-128 sum(x) or -8 sum(x)). A tile is 6 tokens x 32 rows:
// per 4 columns 2 panel loads and 6 broadcast x words for 12 vpdpbusd, per group a convert, a multiply by the
// token's scale and an FMA by the rows' scales.
#define VK_QG_MR 6
#define VK_QG_NR 32

// From 2 tokens for int4, 7 for int8: below that the few-token f32 kernel (which streams the rows once, unpacked in
// registers) is faster than re-laying them. Zen 5, 2 threads, 960 x 2560 and 2560 x 960 from memory, against the
// paths before: q8 2 / 4 / 6 / 8 / 16 / 128 tokens 0.050 / 0.062 / 0.081 / 0.129 / 0.225 / 1.34 ms -> 0.075 / 0.078
// / 0.084 / 0.093 / 0.119 / 0.487; q4 0.078 / 0.091 / 0.113 / 0.159 / 0.251 / 1.31 -> 0.061 / 0.065 / 0.071 /
// 0.077 / 0.102 / 0.457 (2.6-2.9x from 128 tokens: 245% of the f32 FMA peak).
#define VK_QG_MIN_T8 7
#define VK_QG_MIN_T4 2
static inline int qgemm_applies(size_t T, size_t K, size_t G, int bits) {
    return T >= (bits == 8 ? VK_QG_MIN_T8 : VK_QG_MIN_T4) && K % 32 == 0 && G % 32 == 0 && use_vnni();
}

// Bytes of the per-call layout: qx (T x K), dx and xc (T x groups each), one panel (32 x K bytes, 32 scales per
// group), alignment slack.
static size_t qgemm_scratch_bytes(size_t T, size_t K, size_t G) {
    size_t ng = qgroups(K, G);
    return T * K + 8 * T * ng + VK_QG_NR * K + 4 * VK_QG_NR * ng + 4 * 64;
}

static inline uint8_t *align64b(uint8_t *p) { return (uint8_t *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

// qgemm_scratch_bytes' regions: one panel of `panel_rows` rows (levels bp, then f32 scales sp per group), then x's
// levels qx, group scales dx and accumulator starts xc.
typedef struct {
    uint8_t *bp;
    float *sp;
    int8_t *qx;
    float *dx;
    int32_t *xc;
} qgemm_scratch;

static inline qgemm_scratch qgemm_carve(float *buf, size_t T, size_t K, size_t ng, size_t panel_rows) {
    qgemm_scratch b;
    b.bp = align64b((uint8_t *)buf);
    b.sp = (float *)(b.bp + panel_rows * K);  // 16 K or 32 K bytes: a multiple of 64 (K % 32 == 0)
    b.qx = (int8_t *)align64b((uint8_t *)(b.sp + panel_rows * ng));
    b.dx = (float *)align64b((uint8_t *)(b.qx + T * K));
    b.xc = (int32_t *)(b.dx + T * ng);
    return b;
}

// x's int4 column order within one 32-column block (qdot_permute_int4): [evens of columns 0-15, odds 0-15, evens
// 16-31, odds 16-31] after the in-lane shuffle, then the even halves before the odd ones.
VK_AVX2 static inline __m256i int4_block_order(__m256i v) {
    const __m256i eo = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                        0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, eo), 0xD8);
}

// The panel loop of both int8 GEMMs (qgemm_vnni, qgemm_avx2), over rows [n0, n1) with `b` carved and x quantized:
// each NR-row panel re-laid once by PACK_PANEL, then used by every MR-token tile through TILES (a switch over mr),
// while the next panel's weight rows are prefetched a part per tile.
#define VK_QGEMM_PANELS(NR, MR, PACK_PANEL, TILES)                                                                    \
    do {                                                                                                              \
        size_t ntile_ = div_up(T, MR);                                                                                \
        for (size_t n = n0; n < n1; n += NR) {                                                                        \
            size_t nr = n1 - n < NR ? n1 - n : NR;                                                                    \
            PACK_PANEL(w, K, n, nr, b.bp, b.sp);                                                                      \
            size_t nn = n + NR, nnr = nn < n1 ? (n1 - nn < NR ? n1 - nn : NR) : 0;                                    \
            const float *bn = bias ? bias + n : NULL;                                                                 \
            for (size_t t = 0, p = 0; t < T; t += MR, p++) {                                                          \
                if (nnr) prefetch_panel_part(w->data, rb, 0, rb, nn, nnr, p, ntile_);                                 \
                TILES(T - t < MR ? T - t : MR, K, G, b.qx + t * K, b.dx + t * ng, b.xc + t * ng, b.bp, b.sp,         \
                      y + t * ldy + n, ldy, nr, bn);                                                                  \
            }                                                                                                         \
        }                                                                                                             \
    } while (0)

// The 16 x 16 transpose of 32-bit words: r[i] word j -> r[j] word i.
VK_VNNI static inline void transpose16_epi32(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // u[i + m]: rows i .. i + 3 of word 4L + m in each 128-bit lane L
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int m = 0; m < 4; m++) {
        __m512i v0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xDD);
        __m512i w0 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x88), w1 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xDD);
        r[m] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        r[8 + m] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
        r[4 + m] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        r[12 + m] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
    }
}

// Rows [n, n + nr) (nr <= 32) of q as a panel: bp[(k / 4) * 128 + r * 4 + k % 4] = the unsigned level of row n + r at
// column position k (q4: qdot_permute_int4's order), sp[g * 32 + r] its scale; rows past nr are zero with scale 0.
// BITS is a constant of each instantiation (a per-row test of q->bits and f16_to_f32's branches were a third of a
// 4-token call's samples).
VK_VNNI static inline __attribute__((always_inline)) void qgemm_pack_panel_bits(const int BITS, const vk_qmatrix *q,
                                                                                size_t K, size_t n, size_t nr,
                                                                                uint8_t *bp, float *sp) {
    size_t ng = qgroups(K, q->group_size), rb = vk_qrow_bytes(BITS, K);
    const uint8_t *base = (const uint8_t *)q->data + n * rb;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m256i nib = _mm256_set1_epi8(0x0f);
    for (size_t h = 0; h < 2; h++) {  // rows h * 16 .. h * 16 + 15
        size_t rows = nr > h * 16 ? (nr - h * 16 < 16 ? nr - h * 16 : 16) : 0;
        for (size_t k = 0; k < K; k += 64) {
            size_t cols = K - k < 64 ? K - k : 64;  // 64 or 32 (K % 32 == 0)
            __m512i r[16];
            for (size_t i = 0; i < 16; i++) r[i] = _mm512_setzero_si512();
            for (size_t i = 0; i < rows; i++) {
                const uint8_t *row = base + (h * 16 + i) * rb;
                if (BITS == 8) {
                    __m512i v = cols == 64 ? _mm512_loadu_si512(row + k)
                                           : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(row + k)));
                    r[i] = _mm512_xor_si512(v, flip);
                } else {
                    __m256i v = cols == 64 ? _mm256_loadu_si256((const __m256i *)(row + k / 2))
                                           : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(row + k / 2)));
                    __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                    // [even columns of block 0, of block 1, odd of 0, odd of 1] -> [even 0, odd 0, even 1, odd 1]
                    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                    r[i] = _mm512_shuffle_i64x2(z, z, 0xD8);
                }
            }
            transpose16_epi32(r);
            uint8_t *dst = bp + (k / 4) * 128 + h * 64;
            for (size_t j = 0; j < cols / 4; j++) _mm512_store_si512(dst + j * 128, r[j]);
        }
    }
    // the scales, 16 rows x 16 groups at a time, transposed the same way (one scalar conversion per scale was
    // 10-15% of an 8-16 token call)
    for (size_t h = 0; h < 2; h++) {
        size_t rows = nr > h * 16 ? (nr - h * 16 < 16 ? nr - h * 16 : 16) : 0;
        for (size_t g0 = 0; g0 < ng; g0 += 16) {
            size_t gs = ng - g0 < 16 ? ng - g0 : 16;
            __mmask16 m = (__mmask16)(gs == 16 ? 0xFFFF : (1u << gs) - 1);
            __m512i r[16];
            for (size_t i = 0; i < 16; i++) r[i] = _mm512_setzero_si512();
            for (size_t i = 0; i < rows; i++) {
                __m256i hv = _mm256_maskz_loadu_epi16(m, q->scales + (n + h * 16 + i) * ng + g0);
                r[i] = _mm512_castps_si512(_mm512_cvtph_ps(hv));
            }
            transpose16_epi32(r);
            for (size_t j = 0; j < gs; j++) _mm512_store_si512(sp + (g0 + j) * VK_QG_NR + h * 16, r[j]);
        }
    }
}

VK_VNNI static void qgemm_pack_panel(const vk_qmatrix *q, size_t K, size_t n, size_t nr, uint8_t *bp, float *sp) {
    if (q->bits == 8) qgemm_pack_panel_bits(8, q, K, n, nr, bp, sp);
    else qgemm_pack_panel_bits(4, q, K, n, nr, bp, sp);
}

// Each token's x as qdot_quantize_x512 makes it (qx row t at qx + t * K; int4: each 32-column block as [even
// columns, odd columns]), its group scales dx[t * ng + g] and the accumulators' starts xc[t * ng + g] = -bias x
// sum of the group's levels (bias 128 for q8, 8 for q4).
VK_VNNI static void qgemm_quantize_x(const float *x, size_t T, size_t K, size_t ldx, size_t G, int bits, int8_t *qx,
                                     float *dx, int32_t *xc) {
    size_t ng = qgroups(K, G);
    const int32_t bias = bits == 8 ? 128 : 8;
    const __m256i ones = _mm256_set1_epi8(1);
    for (size_t t = 0; t < T; t++) {
        int8_t *q = qx + t * K;
        qdot_quantize_x512(x + t * ldx, K, G, q, dx + t * ng);
        for (size_t g = 0; g < ng; g++) {
            __m256i s = _mm256_setzero_si256();
            for (size_t k = g * G; k < (g + 1) * G && k < K; k += 32) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(q + k));
                s = _mm256_dpbusd_epi32(s, ones, v);
                if (bits == 4) _mm256_storeu_si256((__m256i *)(q + k), int4_block_order(v));
            }
            xc[t * ng + g] = -bias * hsum256_epi32(s);
        }
    }
}

// c[i, r] = bias[r] + sum over groups of sp[g, r] dx[i, g] (xc[i, g] + sum of the group's level products), for
// tokens i < MR_ and rows r < nr (<= 32).
VK_VNNI static inline __attribute__((always_inline)) void qgemm_tile(const int MR_, size_t K, size_t G,
                                                                     const int8_t *qx, const float *dx,
                                                                     const int32_t *xc, const uint8_t *bp,
                                                                     const float *sp, float *c, size_t ldc, size_t nr,
                                                                     const float *bias) {
    size_t ng = qgroups(K, G);
    __m512 acc[VK_QG_MR][2];
    for (int i = 0; i < MR_; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (size_t g = 0; g < ng; g++) {
        __m512i ia[VK_QG_MR][2];
        for (int i = 0; i < MR_; i++) ia[i][0] = ia[i][1] = _mm512_set1_epi32(xc[i * ng + g]);
        const uint8_t *b = bp + g * (G / 4) * 128;
        const int8_t *xg = qx + g * G;
        size_t steps = (K - g * G < G ? K - g * G : G) / 4;  // the last group may be shorter (a multiple of 32)
#pragma GCC unroll 8
        for (size_t s = 0; s < steps; s++) {
            __m512i b0 = _mm512_load_si512(b + s * 128), b1 = _mm512_load_si512(b + s * 128 + 64);
            for (int i = 0; i < MR_; i++) {
                int32_t word;
                memcpy(&word, xg + i * K + 4 * s, 4);
                __m512i xb = _mm512_set1_epi32(word);
                ia[i][0] = _mm512_dpbusd_epi32(ia[i][0], b0, xb);
                ia[i][1] = _mm512_dpbusd_epi32(ia[i][1], b1, xb);
            }
        }
        __m512 s0 = _mm512_load_ps(sp + g * VK_QG_NR), s1 = _mm512_load_ps(sp + g * VK_QG_NR + 16);
        for (int i = 0; i < MR_; i++) {
            __m512 d = _mm512_set1_ps(dx[i * ng + g]);
            acc[i][0] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ia[i][0]), d), s0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ia[i][1]), d), s1, acc[i][1]);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int i = 0; i < MR_; i++) {
        _mm512_mask_storeu_ps(c + i * ldc, m0, _mm512_add_ps(acc[i][0], bias0));
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, _mm512_add_ps(acc[i][1], bias1));
    }
}

VK_VNNI static inline __attribute__((always_inline)) void qgemm_tiles_vnni(size_t mr, size_t K, size_t G,
                                                                           const int8_t *qt, const float *dt,
                                                                           const int32_t *ct, const uint8_t *bp,
                                                                           const float *sp, float *c, size_t ldc,
                                                                           size_t nr, const float *bn) {
    switch (mr) {
    case 6: qgemm_tile(6, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    case 5: qgemm_tile(5, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    case 4: qgemm_tile(4, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    case 3: qgemm_tile(3, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    case 2: qgemm_tile(2, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    default: qgemm_tile(1, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    }
}

VK_VNNI static void qgemm_vnni(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *w, size_t n0,
                               size_t n1, const float *bias, float *y, size_t ldy, float *buf) {
    size_t G = w->group_size, ng = qgroups(K, G), rb = vk_qrow_bytes(w->bits, K);
    qgemm_scratch b = qgemm_carve(buf, T, K, ng, VK_QG_NR);
    qgemm_quantize_x(x, T, K, ldx, G, w->bits, b.qx, b.dx, b.xc);
    VK_QGEMM_PANELS(VK_QG_NR, VK_QG_MR, qgemm_pack_panel, qgemm_tiles_vnni);
}

// ---- The int8 GEMM on AVX2 hosts, int4 weights ----------------------------------------------------------------------
// Without vpdpbusd the product is vpmaddubsw (u8 x s8 pairs into s16, saturating) then vpmaddwd into s32. int4 levels
// (stored + 8, so unsigned 0..15) against int8 x give pair sums of at most 2 x 15 x 127 = 3810, so eight steps (a
// 32-column block) add up in s16 without saturating (30480) before one vpmaddwd widens them: per 4 columns of 8 rows
// and a token one vpmaddubsw and one vpaddw for 32 products, where the f32 path spends 4 FMAs. (int8 weights would
// saturate the pairs, and the sign trick decode uses costs as much as the f32 path, so they keep it.) Panels of 16
// rows, [K / 4][16 rows][4 bytes]; tiles of 3 tokens x 16 rows (15 of the 16 ymm registers). VLM_SIMD=avx2 on Zen 5
// (2 threads, q4 960 x 2560 from memory), against the f32 path: 2 / 8 / 16 / 128 tokens 0.112 / 0.378 / 0.505 / 2.77
// ms -> 0.050 / 0.104 / 0.175 / 1.10 (Zen 5 runs more integer ymm operations per cycle than AVX2-only CPUs, whose
// gain will be smaller).
#define VK_QG2_MR 3
#define VK_QG2_NR 16
#define VK_QG2_MIN_T 2

static inline int qgemm_avx2_applies(size_t T, size_t K, size_t G, int bits) {
    return bits == 4 && T >= VK_QG2_MIN_T && K % 32 == 0 && G % 32 == 0 && use_avx2() && !use_vnni();
}


// qgemm_quantize_x for the AVX2 body (int4 only): qx in qdot_permute_int4's order, dx, xc = -8 x the group sums.
VK_AVX2 static void qgemm_quantize_x_avx2(const float *x, size_t T, size_t K, size_t ldx, size_t G, int8_t *qx,
                                          float *dx, int32_t *xc) {
    size_t ng = qgroups(K, G);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (size_t t = 0; t < T; t++) {
        int8_t *q = qx + t * K;
        qdot_quantize_x256(x + t * ldx, K, G, q, dx + t * ng);
        for (size_t g = 0; g < ng; g++) {
            __m256i s = _mm256_setzero_si256();
            for (size_t k = g * G; k < (g + 1) * G && k < K; k += 32) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(q + k));
                s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
                _mm256_storeu_si256((__m256i *)(q + k), int4_block_order(v));
            }
            xc[t * ng + g] = -8 * hsum256_epi32(s);
        }
    }
}

// Rows [n, n + nr) (nr <= 16) of the int4 matrix q as a panel: bp[(k / 4) * 64 + r * 4 + k % 4] = the stored nibble
// (level + 8) of row n + r at column position k in qdot_permute_int4's order, sp[g * 16 + r] its scale; rows past nr
// zero with scale 0.
VK_AVX2 static void qgemm_pack_panel_avx2(const vk_qmatrix *q, size_t K, size_t n, size_t nr, uint8_t *bp, float *sp) {
    size_t ng = qgroups(K, q->group_size), rb = vk_qrow_bytes(4, K);
    const uint8_t *base = (const uint8_t *)q->data + n * rb;
    const __m128i nib = _mm_set1_epi8(0x0f);
    for (size_t h = 0; h < 2; h++) {  // rows h * 8 .. h * 8 + 7
        size_t rows = nr > h * 8 ? (nr - h * 8 < 8 ? nr - h * 8 : 8) : 0;
        for (size_t k = 0; k < K; k += 32) {
            __m256 r[8];
            for (size_t i = 0; i < 8; i++) r[i] = _mm256_setzero_ps();
            for (size_t i = 0; i < rows; i++) {
                __m128i v = _mm_loadu_si128((const __m128i *)(base + (h * 8 + i) * rb + k / 2));
                __m128i lo = _mm_and_si128(v, nib), hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
                r[i] = _mm256_castsi256_ps(_mm256_setr_m128i(lo, hi));  // [even columns, odd columns]
            }
            transpose8(r);
            uint8_t *dst = bp + (k / 4) * 64 + h * 32;
            for (size_t j = 0; j < 8; j++) _mm256_store_si256((__m256i *)(dst + j * 64), _mm256_castps_si256(r[j]));
        }
    }
    for (size_t i = 0; i < nr; i++) {
        const uint16_t *s = q->scales + (n + i) * ng;
        for (size_t g = 0; g < ng; g++) sp[g * VK_QG2_NR + i] = _cvtsh_ss(s[g]);
    }
    for (size_t i = nr; i < VK_QG2_NR; i++)
        for (size_t g = 0; g < ng; g++) sp[g * VK_QG2_NR + i] = 0.0f;
}

// qgemm_tile's sums for MR_ tokens x 16 rows with vpmaddubsw: s16 sums per 32-column block, widened to s32 per block.
VK_AVX2 static inline __attribute__((always_inline)) void qgemm_tile_avx2(const int MR_, size_t K, size_t G,
                                                                          const int8_t *qx, const float *dx,
                                                                          const int32_t *xc, const uint8_t *bp,
                                                                          const float *sp, float *c, size_t ldc,
                                                                          size_t nr, const float *bias) {
    size_t ng = qgroups(K, G);
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256 acc[VK_QG2_MR][2];
    for (int i = 0; i < MR_; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (size_t g = 0; g < ng; g++) {
        __m256i ia[VK_QG2_MR][2];
        for (int i = 0; i < MR_; i++) ia[i][0] = ia[i][1] = _mm256_set1_epi32(xc[i * ng + g]);
        size_t kend = (g + 1) * G < K ? (g + 1) * G : K;
        for (size_t k = g * G; k < kend; k += 32) {
            const uint8_t *b = bp + (k / 4) * 64;
            const int8_t *xk = qx + k;
            __m256i s[VK_QG2_MR][2];
            for (int i = 0; i < MR_; i++) s[i][0] = s[i][1] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int st = 0; st < 8; st++) {
                __m256i b0 = _mm256_load_si256((const __m256i *)(b + st * 64));
                __m256i b1 = _mm256_load_si256((const __m256i *)(b + st * 64 + 32));
                for (int i = 0; i < MR_; i++) {
                    int32_t word;
                    memcpy(&word, xk + i * K + 4 * st, 4);
                    __m256i xb = _mm256_set1_epi32(word);
                    s[i][0] = _mm256_add_epi16(s[i][0], _mm256_maddubs_epi16(b0, xb));
                    s[i][1] = _mm256_add_epi16(s[i][1], _mm256_maddubs_epi16(b1, xb));
                }
            }
            for (int i = 0; i < MR_; i++) {
                ia[i][0] = _mm256_add_epi32(ia[i][0], _mm256_madd_epi16(s[i][0], ones16));
                ia[i][1] = _mm256_add_epi32(ia[i][1], _mm256_madd_epi16(s[i][1], ones16));
            }
        }
        __m256 s0 = _mm256_load_ps(sp + g * VK_QG2_NR), s1 = _mm256_load_ps(sp + g * VK_QG2_NR + 8);
        for (int i = 0; i < MR_; i++) {
            __m256 d = _mm256_set1_ps(dx[i * ng + g]);
            acc[i][0] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ia[i][0]), d), s0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ia[i][1]), d), s1, acc[i][1]);
        }
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), lane);
    __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), lane);
    __m256 bias0 = bias ? _mm256_maskload_ps(bias, m0) : _mm256_setzero_ps();
    __m256 bias1 = bias ? _mm256_maskload_ps(bias + 8, m1) : _mm256_setzero_ps();
    for (int i = 0; i < MR_; i++) {
        _mm256_maskstore_ps(c + i * ldc, m0, _mm256_add_ps(acc[i][0], bias0));
        _mm256_maskstore_ps(c + i * ldc + 8, m1, _mm256_add_ps(acc[i][1], bias1));
    }
}

VK_AVX2 static inline __attribute__((always_inline)) void qgemm_tiles_avx2(size_t mr, size_t K, size_t G,
                                                                           const int8_t *qt, const float *dt,
                                                                           const int32_t *ct, const uint8_t *bp,
                                                                           const float *sp, float *c, size_t ldc,
                                                                           size_t nr, const float *bn) {
    switch (mr) {
    case 3: qgemm_tile_avx2(3, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    case 2: qgemm_tile_avx2(2, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    default: qgemm_tile_avx2(1, K, G, qt, dt, ct, bp, sp, c, ldc, nr, bn); break;
    }
}

VK_AVX2 static void qgemm_avx2(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *w, size_t n0,
                               size_t n1, const float *bias, float *y, size_t ldy, float *buf) {
    size_t G = w->group_size, ng = qgroups(K, G), rb = vk_qrow_bytes(4, K);
    qgemm_scratch b = qgemm_carve(buf, T, K, ng, VK_QG2_NR);
    qgemm_quantize_x_avx2(x, T, K, ldx, G, b.qx, b.dx, b.xc);
    VK_QGEMM_PANELS(VK_QG2_NR, VK_QG2_MR, qgemm_pack_panel_avx2, qgemm_tiles_avx2);
}
// ---- Element-wise math ----------------------------------------------------------------------------------------
// exp: Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial), about 1 ulp. 2^n is applied as
// two factors 2^(n/2) so results overflow to +inf and underflow gradually through the subnormals like expf;
// NaN stays NaN.
// Cephes expf: exp(x) = 2^fx e^r with fx = floor(x log2e + 0.5), r = x - fx ln2 (ln2 in two parts), e^r = 1 + r +

VK_AVX2 static inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(89.0f), lo = _mm256_set1_ps(-104.0f);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(VK_LOG2E), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(vk_exp_poly[0]);
#pragma GCC unroll 5
    for (int j = 1; j < 6; j++) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(vk_exp_poly[j]));
    y = _mm256_fmadd_ps(y, z, x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i n = _mm256_cvttps_epi32(fx);                   // in [-150, 128]
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23)));
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23)));
    return _mm256_or_ps(y, nan);
}

// silu(g) * x = g / (1 + exp(-g)) * x.
VK_AVX2 static void silu_mul_avx2(const float *gate, float *x, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, exp256(_mm256_xor_ps(g, neg))));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(s, _mm256_loadu_ps(x + i)));
    }
    for (; i < n; i++) {
        float g = gate[i];
        x[i] = (g / (1.0f + expf(-g))) * x[i];
    }
}

// 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3).
VK_AVX2 static void gelu_tanh_avx2(float *x, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), c = _mm256_set1_ps(0.044715f);
    const __m256 m2k = _mm256_set1_ps(-2.0f * 0.7978845608028654f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 u = _mm256_fmadd_ps(_mm256_mul_ps(c, v), _mm256_mul_ps(v, v), v);
        _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, exp256(_mm256_mul_ps(m2k, u)))));
    }
    for (; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

// 0.5 v (1 + erf(v / sqrt 2)) = 0.5 v erfc(-v / sqrt 2), with erfc from Numerical Recipes' erfcc (Chebyshev fit,
// relative error below 1.2e-7 everywhere), so the result keeps its relative accuracy in the negative tail too.
VK_AVX2 static void gelu_erf_avx2(float *x, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f), two = _mm256_set1_ps(2.0f);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 zs = _mm256_mul_ps(v, _mm256_set1_ps(-0.7071067811865476f));  // erfc argument
        __m256 z = _mm256_and_ps(zs, abs_mask);
        __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(half, z, one));
        __m256 p = _mm256_set1_ps(vk_erfc_poly[0]);
#pragma GCC unroll 9
        for (int j = 1; j < 10; j++) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(vk_erfc_poly[j]));
        __m256 r = _mm256_mul_ps(t, exp256(_mm256_fnmadd_ps(z, z, p)));  // erfc(|zs|)
        // erfc(zs) = r for zs >= 0, 2 - r for zs < 0.
        __m256 negz = _mm256_cmp_ps(zs, _mm256_setzero_ps(), _CMP_LT_OQ);
        r = _mm256_blendv_ps(r, _mm256_sub_ps(two, r), negz);
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), r));
    }
    for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
}

VK_AVX2 static float max_avx2(const float *x, size_t n) {
    float m = x[0];
    size_t i = 0;
    if (n >= 8) {
        __m256 mv = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        m = _mm_cvtss_f32(h);
    }
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

// x[i] = exp(x[i] * scale - m) in place; returns the sum.
VK_AVX2 static float exp_sum_avx2(float *x, size_t n, float scale, float m) {
    __m256 sv = _mm256_set1_ps(scale), mv = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), mv));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float s = hsum256(acc);
    for (; i < n; i++) { x[i] = expf(x[i] * scale - m); s += x[i]; }
    return s;
}


// The attention softmax's exponentials on AVX2: x[i] = 2^(x[i] c - m2), returning their sum, with c = scale log2(e)
// and m2 = max log2(e) (the scaled scores' max), so one fmsub takes the place of a multiply and a subtraction.
// 2^t (t <= 0, or NaN): t = n + r, n = round(t), 2^r by vk_exp2_poly (relative error 1.4e-7) and 2^n built in the
// exponent field; t below -126 is taken as -126 (2^-126 against a row sum of at least 1), and max keeps a NaN.
// About half the operations of exp256, which guards the whole float range: vision attention (1024 x 12 heads) on
// Zen 5 with VLM_SIMD=avx2, gemm_bench alternated 3 rounds: 70-72 -> 80.5-81.5% of the ymm FMA peak.
VK_AVX2 static float exp2_sum_avx2(float *x, size_t n, float c, float m2) {
    const __m256 cv = _mm256_set1_ps(c), mv = _mm256_set1_ps(m2), lo = _mm256_set1_ps(-126.0f);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 t = _mm256_max_ps(lo, _mm256_fmsub_ps(_mm256_loadu_ps(x + i), cv, mv));
        __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_sub_ps(t, k), y = _mm256_set1_ps(vk_exp2_poly[0]);
#pragma GCC unroll 5
        for (int j = 1; j < 6; j++) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(vk_exp2_poly[j]));
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
        y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
        _mm256_storeu_ps(x + i, y);
        acc = _mm256_add_ps(acc, y);
    }
    float s = hsum256(acc);
    for (; i < n; i++) { x[i] = exp2f(fmaf(x[i], c, -m2)); s += x[i]; }
    return s;
}

// The 512-bit forms of exp256 / max_avx2 / exp_sum_avx2 for the attention softmax on AVX-512 machines: the same
// polynomial and range reduction, 16 lanes (vision tiles spend a tenth of their attention time in these exps).
// exp's common part: the range reduction and e^r of vk_exp_poly; fx (the power of two) through fx_out.
VK_AVX512 static inline __m512 exp512_mantissa(__m512 x, __m512 *fx_out) {
    __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(VK_LOG2E), _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 z = _mm512_mul_ps(x, x);
    __m512 y = _mm512_set1_ps(vk_exp_poly[0]);
#pragma GCC unroll 5
    for (int j = 1; j < 6; j++) y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(vk_exp_poly[j]));
    y = _mm512_fmadd_ps(y, z, x);
    *fx_out = fx;
    return _mm512_add_ps(y, _mm512_set1_ps(1.0f));
}

VK_AVX512 static inline __m512 exp512(__m512 x) {
    const __m512 hi = _mm512_set1_ps(89.0f), lo = _mm512_set1_ps(-104.0f);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512 xin = x;
    x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
    __m512 fx, y = exp512_mantissa(x, &fx);
    __m512i n = _mm512_cvttps_epi32(fx);                   // in [-150, 128]
    __m512i n1 = _mm512_srai_epi32(n, 1), n2 = _mm512_sub_epi32(n, n1);
    const __m512i bias = _mm512_set1_epi32(127);
    y = _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23)));
    y = _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23)));
    return _mm512_mask_mov_ps(y, nan, xin);  // NaN in, NaN out
}

// 2^t for softmax arguments (t <= 0, or NaN): t = n + r with n = round(t), r in [-0.5, 0.5], 2^r by a degree-5 fit
// (vk_exp2_poly, relative error 1.4e-7: about two f32 ulps) and 2^n by vscalefps. Taking the scale and log2(e) into
// one multiplier saves exp512's range reduction: 11 operations per vector instead of 17 with the scaling. Used by the
// f32 attention (attention_blocked512) and the AMX one. max(-150, t) keeps a NaN (its second operand) and keeps -inf
// out of t - round(t).
VK_AVX512 static inline __m512 exp2_512_nonpos(__m512 t) {
    t = _mm512_max_ps(_mm512_set1_ps(-150.0f), t);
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(t, n), y = _mm512_set1_ps(vk_exp2_poly[0]);
#pragma GCC unroll 5
    for (int j = 1; j < 6; j++) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(vk_exp2_poly[j]));
    return _mm512_scalef_ps(y, n);
}

// gelu_tanh_avx2 with 16 lanes: the same operations lane for lane (exp512 is exp256's polynomial), so the values are
// the AVX2 body's bit for bit; the last n % 16 elements go through the AVX2 body.
VK_AVX512 static void gelu_tanh_avx512(float *x, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f), c = _mm512_set1_ps(0.044715f);
    const __m512 m2k = _mm512_set1_ps(-2.0f * 0.7978845608028654f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512 u = _mm512_fmadd_ps(_mm512_mul_ps(c, v), _mm512_mul_ps(v, v), v);
        _mm512_storeu_ps(x + i, _mm512_div_ps(v, _mm512_add_ps(one, exp512(_mm512_mul_ps(m2k, u)))));
    }
    gelu_tanh_avx2(x + i, n - i);
}

// gelu_erf_avx2 with 16 lanes, the same operations lane for lane; the last n % 16 elements through the AVX2 body.
VK_AVX512 static void gelu_erf_avx512(float *x, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f), two = _mm512_set1_ps(2.0f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512 zs = _mm512_mul_ps(v, _mm512_set1_ps(-0.7071067811865476f));
        __m512 z = _mm512_abs_ps(zs);
        __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(half, z, one));
        __m512 p = _mm512_set1_ps(vk_erfc_poly[0]);
#pragma GCC unroll 9
        for (int j = 1; j < 10; j++) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(vk_erfc_poly[j]));
        __m512 r = _mm512_mul_ps(t, exp512(_mm512_fnmadd_ps(z, z, p)));
        __mmask16 negz = _mm512_cmp_ps_mask(zs, _mm512_setzero_ps(), _CMP_LT_OQ);
        r = _mm512_mask_blend_ps(negz, r, _mm512_sub_ps(two, r));
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), r));
    }
    gelu_erf_avx2(x + i, n - i);
}

VK_AVX2 static inline double hsum256d(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// vk_layernorm's two passes in double with 4-lane accumulators: the scalar body's serial chain of double adds (about
// 4 cycles per element) made the vision encoder's norms cost about a tenth of its matrix products' time.
VK_AVX2 static void layernorm_avx2(const float *x, const float *w, const float *b, size_t n, float eps, float *out) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double mean = hsum256d(_mm256_add_pd(s0, s1));
    for (; i < n; i++) mean += x[i];
    mean /= (double)n;
    __m256d mv = _mm256_set1_pd(mean);
    s0 = _mm256_setzero_pd(); s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), mv);
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), mv);
        s0 = _mm256_fmadd_pd(d0, d0, s0);
        s1 = _mm256_fmadd_pd(d1, d1, s1);
    }
    double var = hsum256d(_mm256_add_pd(s0, s1));
    for (; i < n; i++) { double d = x[i] - mean; var += d * d; }
    var /= (double)n;
    float r = (float)(1.0 / sqrt(var + eps));
    float m = (float)mean;
    // ((x - m) * r) * w + b with a rounding after each step, as the scalar body (no FMA contraction): the same floats
    __m256 rv = _mm256_set1_ps(r), mf = _mm256_set1_ps(m);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mf), rv), _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(out + i, b ? _mm256_add_ps(y, _mm256_loadu_ps(b + i)) : y);
    }
    for (; i < n; i++) {
        float y = (x[i] - m) * r;
        y = y * w[i];
        out[i] = b ? y + b[i] : y;
    }
}

VK_AVX2 static void scale_avx2(float *x, size_t n, float a) {
    __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), av));
    for (; i < n; i++) x[i] *= a;
}

VK_AVX2 static void softmax_avx2(float *x, size_t n) {
    float m = max_avx2(x, n);
    float s = exp_sum_avx2(x, n, 1.0f, m);
    scale_avx2(x, n, 1.0f / s);
}

// ---- Attention over a block of queries ------------------------------------------------------------------------
// For 1024-token vision tiles the per-query loop (a 64-long dot product per key, then an axpy per key) runs far
// below peak; here blocks of queries go through the GEMM micro-kernel instead.

// V as [head_dim / 16 panels][keys][16 dims] (the B operand of O = P V), dims past head_dim zero.
VK_AVX2 static void pack_v_panels(const float *v, size_t kv_stride, size_t nk, size_t hd, float *vp) {
    for (size_t p = 0; p < div_up(hd, VK_NR); p++) {
        size_t d0 = p * VK_NR, dn = hd - d0 < VK_NR ? hd - d0 : VK_NR;
        float *dst = vp + p * nk * VK_NR;
        if (dn == VK_NR) {
            for (size_t j = 0; j < nk; j++) {
                _mm256_store_ps(dst + j * VK_NR, _mm256_loadu_ps(v + j * kv_stride + d0));
                _mm256_store_ps(dst + j * VK_NR + 8, _mm256_loadu_ps(v + j * kv_stride + d0 + 8));
            }
        } else {
            for (size_t j = 0; j < nk; j++)
                for (size_t d = 0; d < VK_NR; d++) dst[j * VK_NR + d] = d < dn ? v[j * kv_stride + d0 + d] : 0.0f;
        }
    }
}

// AVX-512: the scores transposed. For a block of up to VK_ATT512_MQ queries, Sᵀ = K Qᵀ with the keys as the
// micro-kernel's rows (K packed once per call as 6-key panels, pack_a) and the block's queries as its columns (16-query
// B panels, pack_b_panel), so each key's scores for the block are one contiguous row. The softmax over keys then runs
// down the columns in whole vectors (a running max and sum per query lane, no horizontal reductions), and O = P V
// reads the weights straight from Sᵀ as the micro-kernel's A operand (ukr512_strided), with no transposing pack of a
// row-major S: its shuffles share a port with the FMAs on Intel cores. Causal: key j is visible to the block's query
// r when j <= q_pos0 + i0 + r; invisible weights are zeroed before the product with V.
#define VK_ATT512_MQ 64   // queries per block: Sᵀ of 1024 keys is 256 KB (L2)
#define VK_ATT512_KC 256  // keys per step of O = P V (the V pair: 32 KB); 128 measured 5% slower, 1024 alike
VK_AVX512 static void attention_blocked512(const float *q, size_t nq, size_t q_stride, const float *k, const float *v,
                                           size_t kv_stride, size_t hd, size_t q_pos0, int causal, size_t n_keys,
                                           size_t nk_all, float scale, float *out, size_t out_stride) {
    size_t hd_pan = div_up(hd, VK_NR);
    size_t mq = round_up(nq, VK_NR) < VK_ATT512_MQ ? round_up(nq, VK_NR) : VK_ATT512_MQ, nv = mq / VK_NR;
    size_t n_kp = round_up(nk_all, VK_MR) * hd + 8, n_vp = hd_pan * VK_NR * nk_all, n_qp = hd * mq, n_s = nk_all * mq;
    float *buf = align64(tls_scratch(n_kp + n_vp + n_qp + n_s + mq + 4 * 16));
    float *kp = buf;
    float *vp = align64(kp + n_kp);
    float *qp = align64(vp + n_vp);
    float *st = align64(qp + n_qp);
    float *inv = align64(st + n_s);
    pack_a(k, kv_stride, nk_all, hd, kp);
    pack_v_panels(v, kv_stride, nk_all, hd, vp);
    // exp(scale s - max) as 2^(s c - max') with c = scale log2(e) (exp2_512_nonpos): one fmsub instead of a multiply
    // and a subtraction, and exp512's range reduction saved. With scale > 0 the max is taken over the raw
    // scores (max' = max c); otherwise over the scaled ones (max' = max log2(e)).
    const int positive = scale > 0;
    const __m512 sv = _mm512_set1_ps(scale), cv = _mm512_set1_ps(scale * VK_LOG2E);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

    for (size_t i0 = 0; i0 < nq; i0 += mq) {
        size_t m = nq - i0 < mq ? nq - i0 : mq;
        size_t nkb = causal ? (q_pos0 + i0 + m < n_keys ? q_pos0 + i0 + m : n_keys) : n_keys;
        for (size_t p = 0; p < nv; p++) {  // queries past m: zero columns
            size_t r0 = p * VK_NR, rows = m > r0 ? (m - r0 < VK_NR ? m - r0 : VK_NR) : 0;
            pack_b_panel(q + i0 * q_stride, VK_F32, q_stride, NULL, 0, r0, rows, 0, hd, qp + p * hd * VK_NR);
        }
        for (size_t j = 0; j < nkb; j += 2 * VK_MR) {
            size_t mr = nkb - j < 2 * VK_MR ? nkb - j : 2 * VK_MR;
            for (size_t p = 0; p < nv; p += 2) {
                int nb = p + 1 < nv ? 2 : 1;
                ukr512(mr, nb, hd, kp + j * hd, qp + p * hd * VK_NR, hd * VK_NR, st + j * mq + p * VK_NR, mq,
                       (size_t)nb * VK_NR, 0, NULL);
            }
        }
        // Softmax down the columns. Lane r of vector c is query i0 + 16c + r; with causal masking it sees key j when
        // j - q_pos0 - i0 - 16c <= r.
        __m512 mx[VK_ATT512_MQ / VK_NR], sum[VK_ATT512_MQ / VK_NR];
        for (size_t c = 0; c < nv; c++) { mx[c] = _mm512_set1_ps(-INFINITY); sum[c] = _mm512_setzero_ps(); }
#define VK_VISIBLE(j, c)                                                                                             \
    (causal ? _mm512_cmp_epi32_mask(lane, _mm512_set1_epi32((int)((long long)(j) - (long long)(q_pos0 + i0 + 16 * (c)))), \
                                    _MM_CMPINT_NLT)                                                                   \
            : (__mmask16)0xffff)
        for (size_t j = 0; j < nkb; j++)
            for (size_t c = 0; c < nv; c++) {
                __m512 x = _mm512_load_ps(st + j * mq + c * VK_NR);
                if (!positive) x = _mm512_mul_ps(x, sv);
                mx[c] = _mm512_mask_max_ps(mx[c], VK_VISIBLE(j, c), x, mx[c]);
            }
        for (size_t c = 0; c < nv; c++)
            mx[c] = _mm512_mul_ps(mx[c], positive ? cv : _mm512_set1_ps(VK_LOG2E));
        for (size_t j = 0; j < nkb; j++)
            for (size_t c = 0; c < nv; c++) {
                float *sj = st + j * mq + c * VK_NR;
                __m512 e = exp2_512_nonpos(_mm512_fmsub_ps(_mm512_load_ps(sj), cv, mx[c]));
                e = _mm512_maskz_mov_ps(VK_VISIBLE(j, c), e);
                _mm512_store_ps(sj, e);
                sum[c] = _mm512_add_ps(sum[c], e);
            }
#undef VK_VISIBLE
        for (size_t c = 0; c < nv; c++) _mm512_store_ps(inv + c * VK_NR, _mm512_div_ps(_mm512_set1_ps(1.0f), sum[c]));
        for (size_t kk0 = 0; kk0 < nkb; kk0 += VK_ATT512_KC) {
            size_t kc = nkb - kk0 < VK_ATT512_KC ? nkb - kk0 : VK_ATT512_KC;
            for (size_t p = 0; p < hd_pan; p += 2) {
                size_t nr = hd - p * VK_NR < 2 * VK_NR ? hd - p * VK_NR : 2 * VK_NR;
                for (size_t ii = 0; ii < m; ii += 2 * VK_MR)
                    ukr512_strided(m - ii < 2 * VK_MR ? m - ii : 2 * VK_MR, nr > VK_NR ? 2 : 1, kc, st + kk0 * mq + ii,
                                   mq, vp + p * nk_all * VK_NR + kk0 * VK_NR, nk_all * VK_NR,
                                   out + (i0 + ii) * out_stride + p * VK_NR, out_stride, nr, kk0 != 0);
            }
        }
        for (size_t r = 0; r < m; r++) scale_avx2(out + (i0 + r) * out_stride, hd, inv[r]);
    }
}

// AVX2: blocks of VK_ATT_MQ queries through the 6 x 16 micro-kernel:
//   K packed once per call as Kᵀ panels ([head_dim][16 keys]) and V as [keys][16 dims] panels,
//   S = Q Kᵀ for the block (6x16 tiles), row softmax (vector exp) leaving unnormalised weights in S,
//   O = S V (6x16 tiles, keys blocked by VK_KC), then each output row scaled by 1 / (row sum).
// Causal rows see keys up to their position: S is computed up to the block's last visible key and each row's
// invisible tail is zeroed before the product with V.
#define VK_ATT_MQ 48
VK_AVX2 static void attention_blocked(const float *q, size_t nq, size_t q_stride, const float *k, const float *v,
                                      size_t kv_stride, size_t hd, size_t q_pos0, int causal, size_t n_keys,
                                      float scale, float *out, size_t out_stride) {
    size_t nk_all = causal ? (q_pos0 + nq < n_keys ? q_pos0 + nq : n_keys) : n_keys;
    if (nk_all == 0) {  // nothing to attend to: zero rows, as the per-query loop leaves them
        for (size_t i = 0; i < nq; i++) memset(out + i * out_stride, 0, hd * sizeof(float));
        return;
    }
    if (use_avx512()) {
        attention_blocked512(q, nq, q_stride, k, v, kv_stride, hd, q_pos0, causal, n_keys, nk_all, scale, out,
                             out_stride);
        return;
    }
    size_t hd_pan = div_up(hd, VK_NR), nk_pad = round_up(nk_all, VK_NR);
    size_t mq = round_up(nq, VK_MR) < VK_ATT_MQ ? round_up(nq, VK_MR) : VK_ATT_MQ;
    size_t kcb = VK_KC;
    size_t n_kp = hd * nk_pad, n_vp = hd_pan * VK_NR * nk_all, n_qp = mq * hd + 8, n_s = mq * nk_pad;
    size_t n_pp = mq * kcb + 8;
    float *buf = align64(tls_scratch(n_kp + n_vp + n_qp + n_s + n_pp + mq + 6 * 16));
    float *kp = buf;
    float *vp = align64(kp + n_kp);
    float *qp = align64(vp + n_vp);
    float *s = align64(qp + n_qp);
    float *pp = align64(s + n_s);
    float *inv = pp + n_pp;

    for (size_t j = 0; j < nk_all; j += VK_NR)
        pack_b_panel(k, VK_F32, kv_stride, NULL, 0, j, nk_all - j < VK_NR ? nk_all - j : VK_NR, 0, hd, kp + j * hd);
    pack_v_panels(v, kv_stride, nk_all, hd, vp);

    for (size_t i0 = 0; i0 < nq; i0 += mq) {
        size_t m = nq - i0 < mq ? nq - i0 : mq;
        size_t nkb = causal ? (q_pos0 + i0 + m < n_keys ? q_pos0 + i0 + m : n_keys) : n_keys;
        pack_a(q + i0 * q_stride, q_stride, m, hd, qp);
        for (size_t j = 0; j < nkb; j += VK_NR) {
            size_t nr = nkb - j < VK_NR ? nkb - j : VK_NR;
            for (size_t ii = 0; ii < m; ii += VK_MR)
                ukr(m - ii < VK_MR ? m - ii : VK_MR, hd, qp + ii * hd, kp + j * hd, VK_NR, s + ii * nk_pad + j,
                    nk_pad, nr, 0, NULL);
        }
        for (size_t r = 0; r < m; r++) {
            float *row = s + r * nk_pad;
            size_t nki = causal ? (q_pos0 + i0 + r + 1 < n_keys ? q_pos0 + i0 + r + 1 : n_keys) : n_keys;
            // scale > 0: max(x * scale) = max(x) * scale, bit for bit
            float mx = max_avx2(row, nki) * scale;
            if (scale < 0) {
                mx = row[0] * scale;
                for (size_t j = 1; j < nki; j++) mx = row[j] * scale > mx ? row[j] * scale : mx;
            }
            inv[r] = 1.0f / exp2_sum_avx2(row, nki, scale * VK_LOG2E, mx * VK_LOG2E);
            for (size_t j = nki; j < nkb; j++) row[j] = 0.0f;
        }
        for (size_t kk0 = 0; kk0 < nkb; kk0 += kcb) {
            size_t kc = nkb - kk0 < kcb ? nkb - kk0 : kcb;
            pack_a(s + kk0, nk_pad, m, kc, pp);
            for (size_t p = 0; p < hd_pan; p++) {
                size_t nr = hd - p * VK_NR < VK_NR ? hd - p * VK_NR : VK_NR;
                for (size_t ii = 0; ii < m; ii += VK_MR)
                    ukr(m - ii < VK_MR ? m - ii : VK_MR, kc, pp + ii * kc, vp + p * nk_all * VK_NR + kk0 * VK_NR,
                        VK_NR, out + (i0 + ii) * out_stride + p * VK_NR, out_stride, nr, kk0 != 0, NULL);
            }
        }
        for (size_t r = 0; r < m; r++) scale_avx2(out + (i0 + r) * out_stride, hd, inv[r]);
    }
}

#endif  // VK_X86

#if !VK_X86
// bf16 products are an x86 option (AVX-512 BF16, AMX); elsewhere vk_matmul_bf16_ws is vk_matmul_ws.
int vk_bf16_products_available(void) { return 0; }
int vk_bf16_products_engine(void) { return 0; }
void vk_bf16_products_use_amx(int enabled) { (void)enabled; }
#endif

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

// Eight weights of `dt` from element i as two f32 vectors (bf16: the top halves of f32; f16: vcvt).
static inline __attribute__((always_inline)) void load8_neon(const void *w, const vk_dtype dt, size_t i,
                                                             float32x4_t *lo, float32x4_t *hi) {
    if (dt == VK_BF16) {
        uint16x8_t h = vld1q_u16((const uint16_t *)w + i);
        *lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        *hi = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
    } else if (dt == VK_F16) {
        float16x8_t h = vld1q_f16((const float16_t *)w + i);
        *lo = vcvt_f32_f16(vget_low_f16(h));
        *hi = vcvt_high_f32_f16(h);
    } else {
        *lo = vld1q_f32((const float *)w + i);
        *hi = vld1q_f32((const float *)w + i + 4);
    }
}

// ---- One to a few tokens: dot products against the unpacked weights --------------------------------------------
// Decode (T == 1) and short prompts are bound by reading the weights: each row is converted in registers as it
// streams past (the former body converted every row to f32 with the scalar loop first, then dotted it: a scalar
// pass over every weight of a decode step). Tiles of TT tokens x RR rows (4 rows for 1 token, 3 for 2, else 2), 8 columns
// per step with 2 accumulators per (token, row): 8-16 independent chains, at most 24 of the 32 vector registers
// (4 x 3 and 2 x 4 tiles spilled to the stack inside the loop: clang -mcpu=apple-m1).
#define VK_NEON_SMALL_T 4  // up to this many tokens; the packed GEMM above
#define VK_NEON_SMALL_RR(TT) ((TT) == 1 ? 4 : (TT) == 2 ? 3 : 2)
static inline __attribute__((always_inline)) void small_tile_neon(const int TT, const int RR, const vk_dtype dt,
                                                                  const float *x, size_t ldx, size_t K,
                                                                  const void *w, size_t n, const float *bias,
                                                                  float *y, size_t ldy) {
    float32x4_t acc[4][4][2];
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < RR; r++) acc[t][r][0] = acc[t][r][1] = vdupq_n_f32(0);
    size_t K8 = K & ~(size_t)7;
    for (size_t k = 0; k < K8; k += 8) {
        float32x4_t wl[4], wh[4];
        for (int r = 0; r < RR; r++) load8_neon(w, dt, (n + (size_t)r) * K + k, &wl[r], &wh[r]);
        for (int t = 0; t < TT; t++) {
            float32x4_t xl = vld1q_f32(x + (size_t)t * ldx + k), xh = vld1q_f32(x + (size_t)t * ldx + k + 4);
            for (int r = 0; r < RR; r++) {
                acc[t][r][0] = vfmaq_f32(acc[t][r][0], xl, wl[r]);
                acc[t][r][1] = vfmaq_f32(acc[t][r][1], xh, wh[r]);
            }
        }
    }
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < RR; r++) {
            float s = vaddvq_f32(vaddq_f32(acc[t][r][0], acc[t][r][1]));
            for (size_t k = K8; k < K; k++) s += x[(size_t)t * ldx + k] * load_w(w, dt, (n + (size_t)r) * K + k);
            y[(size_t)t * ldy + n + (size_t)r] = bias ? s + bias[n + (size_t)r] : s;
        }
}

static inline __attribute__((always_inline)) void gemm_small_neon_body(const vk_dtype dt, const float *x, size_t T,
                                                                       size_t K, size_t ldx, const void *w,
                                                                       size_t n0, size_t n1, const float *bias,
                                                                       float *y, size_t ldy) {
#define VK_NEON_SMALL_ROWS(TT)                                                                                         \
    for (n = n0; n + VK_NEON_SMALL_RR(TT) <= n1; n += VK_NEON_SMALL_RR(TT))                                            \
        small_tile_neon(TT, VK_NEON_SMALL_RR(TT), dt, xt, ldx, K, w, n, bias, yt, ldy);                                \
    for (; n < n1; n++) small_tile_neon(TT, 1, dt, xt, ldx, K, w, n, bias, yt, ldy);
    for (size_t t0 = 0; t0 < T; t0 += 4) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        size_t n;
        switch (T - t0 < 4 ? T - t0 : 4) {
        case 1: VK_NEON_SMALL_ROWS(1) break;
        case 2: VK_NEON_SMALL_ROWS(2) break;
        case 3: VK_NEON_SMALL_ROWS(3) break;
        default: VK_NEON_SMALL_ROWS(4) break;
        }
    }
#undef VK_NEON_SMALL_ROWS
}

static void gemm_small_neon(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dt, size_t n0,
                            size_t n1, const float *bias, float *y, size_t ldy) {
    switch (dt) {
    case VK_BF16: gemm_small_neon_body(VK_BF16, x, T, K, ldx, w, n0, n1, bias, y, ldy); break;
    case VK_F16: gemm_small_neon_body(VK_F16, x, T, K, ldx, w, n0, n1, bias, y, ldy); break;
    default: gemm_small_neon_body(VK_F32, x, T, K, ldx, w, n0, n1, bias, y, ldy); break;
    }
}

// ---- Packed GEMM: 8 tokens x 12 columns in registers ----------------------------------------------------------
// The AVX2 GEMM's blocking with a NEON tile: K in blocks of VK_NEON_KC, tokens in blocks of VK_NEON_MC (packed A,
// 8 tokens per k), weight rows in panels of 12 converted to f32 once per call (packed B, 12 per k). Per k the tile
// loads 2 vectors of A and 3 of B and issues 24 multiply-adds by lane (vfmaq_laneq_f32: no broadcasts), into 24
// accumulators; 29 of the 32 vector registers. A's and B's blocks (8 x 384 and 12 x 384 floats, 12 + 18 KB) sit in
// the 64-128 KB L1 of current arm64 cores, the A block (up to 120 x 384 floats, 180 KB) in L2.
#define VK_NEON_MR 8
#define VK_NEON_NR 12
#define VK_NEON_KC 384
#define VK_NEON_MC 120

static inline size_t gemm_neon_kc(size_t K) { return K < VK_NEON_KC ? K : VK_NEON_KC; }

// Floats of scratch gemm_neon uses: the B panels (one slot with a single token block, else the whole kc x N block),
// the A block, one panel's rows converted (kc x 12) and alignment slack.
static size_t gemm_neon_scratch_floats(size_t T, size_t K, size_t N) {
    size_t kc = gemm_neon_kc(K), mc = T < VK_NEON_MC ? T : VK_NEON_MC;
    size_t b = T <= VK_NEON_MC ? kc * VK_NEON_NR : kc * round_up(N, VK_NEON_NR);
    return b + round_up(mc, VK_NEON_MR) * kc + kc * VK_NEON_NR + 16;
}

// The 4 x 4 block with rows r0..r3 stored transposed: column c at d + c * stride (vtrn in 32- then 64-bit lanes).
static inline void store_transposed4(float32x4_t r0, float32x4_t r1, float32x4_t r2, float32x4_t r3, float *d,
                                     size_t stride) {
    float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1)), t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
    float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3)), t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
    vst1q_f32(d, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    vst1q_f32(d + stride, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    vst1q_f32(d + 2 * stride, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    vst1q_f32(d + 3 * stride, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
}

// A block: tokens [0, mc) of x (row stride ldx, columns [0, kc)) into tiles of 8 tokens, ap[p * kc * 8 + k * 8 + i]
// = token 8p + i at column k, missing tokens 0. Whole groups of 4 tokens x 4 columns go through a 4 x 4 transpose.
static void pack_a_neon(const float *x, size_t ldx, size_t mc, size_t kc, float *ap) {
    for (size_t t = 0; t < mc; t += VK_NEON_MR) {
        float *dst = ap + (t / VK_NEON_MR) * kc * VK_NEON_MR;
        size_t rows = mc - t < VK_NEON_MR ? mc - t : VK_NEON_MR;
        for (size_t h = 0; h < VK_NEON_MR; h += 4) {
            size_t k = 0;
            if (h + 4 <= rows)
                for (; k + 4 <= kc; k += 4) {
                    const float *s = x + (t + h) * ldx + k;
                    float32x4_t r0 = vld1q_f32(s), r1 = vld1q_f32(s + ldx);
                    float32x4_t r2 = vld1q_f32(s + 2 * ldx), r3 = vld1q_f32(s + 3 * ldx);
                    store_transposed4(r0, r1, r2, r3, dst + k * VK_NEON_MR + h, VK_NEON_MR);
                }
            for (; k < kc; k++)
                for (size_t i = h; i < h + 4; i++) dst[k * VK_NEON_MR + i] = i < rows ? x[(t + i) * ldx + k] : 0.0f;
        }
    }
}

// Whole 8-column steps of a dense row from element `base` as f32 into dst; returns the columns done.
static inline __attribute__((always_inline)) size_t row_dense8_neon(const void *w, const vk_dtype dt, size_t base,
                                                                    size_t kc, float *dst) {
    size_t k = 0;
    float32x4_t lo, hi;
    for (; k + 8 <= kc; k += 8) {
        load8_neon(w, dt, base + k, &lo, &hi);
        vst1q_f32(dst + k, lo);
        vst1q_f32(dst + k + 4, hi);
    }
    return k;
}

// The int8 levels of columns col .. col + 7 (col a multiple of 8) of a quantized row: int8 as stored, int4 nibbles
// (bytes col / 2 .. col / 2 + 3, low nibble the even column) minus 8.
static inline int8x8_t q_levels8_neon(const uint8_t *row, int bits, size_t col) {
    if (bits == 8) return vld1_s8((const int8_t *)row + col);
    uint32_t four;
    memcpy(&four, row + col / 2, 4);
    uint8x8_t b = vreinterpret_u8_u32(vdup_n_u32(four));
    uint8x8_t nib = vzip1_u8(vand_u8(b, vdup_n_u8(0x0f)), vshr_n_u8(b, 4));
    return vsub_s8(vreinterpret_s8_u8(nib), vdup_n_s8(8));
}

// Columns [k0, k0 + kc) of weight row n as f32 into dst: dense rows of dt (row stride ldw), or q's levels times their
// group's scale (K columns; 8 per step: groups are multiples of 8 columns and k0 is a multiple of 8, so a step never
// straddles two).
static void row_f32_neon(const void *w, vk_dtype dt, size_t ldw, const vk_qmatrix *q, size_t K, size_t n, size_t k0,
                         size_t kc, float *dst) {
    size_t k = 0;
    if (!q) {
        const size_t base = n * ldw + k0;
        switch (dt) {  // dt a constant of each loop
        case VK_BF16: k = row_dense8_neon(w, VK_BF16, base, kc, dst); break;
        case VK_F16: k = row_dense8_neon(w, VK_F16, base, kc, dst); break;
        default: k = row_dense8_neon(w, VK_F32, base, kc, dst); break;
        }
        for (; k < kc; k++) dst[k] = load_w(w, dt, base + k);
        return;
    }
    const size_t ng = qgroups(K, q->group_size), rb = vk_qrow_bytes(q->bits, K);
    const uint8_t *row = (const uint8_t *)q->data + n * rb;
    for (; k + 8 <= kc; k += 8) {
        size_t col = k0 + k;
        int16x8_t l16 = vmovl_s8(q_levels8_neon(row, q->bits, col));
        float32x4_t s = vdupq_n_f32(f16_to_f32(q->scales[n * ng + col / q->group_size]));
        vst1q_f32(dst + k, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(l16))), s));
        vst1q_f32(dst + k + 4, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(l16)), s));
    }
    for (; k < kc; k++) dst[k] = qload(q, K, n, k0 + k);
}

// The B operand of gemm_neon, W [N, K]: W[n, k] = w[n * ldw + k] of dtype dt (a weight matrix: ldw = K), or
// w[k * ldw + n] (f32) when `transposed` (attention's V, keys x dims), or q's levels times their scales when q is set.
typedef struct {
    const void *w;
    vk_dtype dt;
    size_t ldw;
    int transposed;
    const vk_qmatrix *q;
} neon_b;

// B panel: rows [n, n + nr) (nr <= 12) of W at columns [k0, k0 + kc) into bp[k * 12 + r], rows past nr 0. Each row
// is converted once into tmp (kc x 12 floats), then 4 rows x 4 columns at a time transposed into the panel; a
// transposed W is already k-major and is copied 12 floats per k.
static void pack_b_neon(const neon_b *b, size_t K, size_t n, size_t nr, size_t k0, size_t kc, float *bp, float *tmp) {
    if (b->transposed) {
        const float *src = (const float *)b->w + k0 * b->ldw + n;
        for (size_t k = 0; k < kc; k++, src += b->ldw) {
            float *d = bp + k * VK_NEON_NR;
            if (nr == VK_NEON_NR) {
                vst1q_f32(d, vld1q_f32(src));
                vst1q_f32(d + 4, vld1q_f32(src + 4));
                vst1q_f32(d + 8, vld1q_f32(src + 8));
            } else {
                for (size_t r = 0; r < VK_NEON_NR; r++) d[r] = r < nr ? src[r] : 0.0f;
            }
        }
        return;
    }
    for (size_t r = 0; r < VK_NEON_NR; r++) {
        if (r < nr) row_f32_neon(b->w, b->dt, b->ldw, b->q, K, n + r, k0, kc, tmp + r * kc);
        else memset(tmp + r * kc, 0, kc * sizeof(float));
    }
    size_t k = 0;
    for (; k + 4 <= kc; k += 4)
        for (size_t r = 0; r < VK_NEON_NR; r += 4) {
            const float *s = tmp + r * kc + k;
            float32x4_t r0 = vld1q_f32(s), r1 = vld1q_f32(s + kc), r2 = vld1q_f32(s + 2 * kc), r3 = vld1q_f32(s + 3 * kc);
            store_transposed4(r0, r1, r2, r3, bp + k * VK_NEON_NR + r, VK_NEON_NR);
        }
    for (; k < kc; k++)
        for (size_t r = 0; r < VK_NEON_NR; r++) bp[k * VK_NEON_NR + r] = tmp[r * kc + k];
}

// c[i, j] (+)= sum_k a[k * 8 + i] * b[k * 12 + j] for i < MR_, j < nr; bias added with the first K block.
static inline __attribute__((always_inline)) void ukr_neon_tile(const int MR_, size_t kc, const float *a,
                                                                const float *b, float *c, size_t ldc, size_t nr,
                                                                int accumulate, const float *bias) {
    float32x4_t acc[VK_NEON_MR][3];
    for (int i = 0; i < MR_; i++) acc[i][0] = acc[i][1] = acc[i][2] = vdupq_n_f32(0);
    for (size_t k = 0; k < kc; k++) {
        const float *bk = b + k * VK_NEON_NR, *ak = a + k * VK_NEON_MR;
        float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4), b2 = vld1q_f32(bk + 8);
        float32x4_t a0 = vld1q_f32(ak), a1 = vld1q_f32(ak + 4);
        // the lane is an immediate, so each row is spelled out
#define VK_NEON_ROW(I, A, L)                                                                                           \
    if (MR_ > I) {                                                                                                    \
        acc[I][0] = vfmaq_laneq_f32(acc[I][0], b0, A, L);                                                             \
        acc[I][1] = vfmaq_laneq_f32(acc[I][1], b1, A, L);                                                             \
        acc[I][2] = vfmaq_laneq_f32(acc[I][2], b2, A, L);                                                             \
    }
        VK_NEON_ROW(0, a0, 0) VK_NEON_ROW(1, a0, 1) VK_NEON_ROW(2, a0, 2) VK_NEON_ROW(3, a0, 3)
        VK_NEON_ROW(4, a1, 0) VK_NEON_ROW(5, a1, 1) VK_NEON_ROW(6, a1, 2) VK_NEON_ROW(7, a1, 3)
#undef VK_NEON_ROW
    }
    for (int i = 0; i < MR_; i++) {
        float *ci = c + (size_t)i * ldc;
        if (nr == VK_NEON_NR) {
            for (int j = 0; j < 3; j++) {
                float32x4_t r = acc[i][j];
                if (accumulate) r = vaddq_f32(vld1q_f32(ci + 4 * j), r);
                else if (bias) r = vaddq_f32(vld1q_f32(bias + 4 * j), r);
                vst1q_f32(ci + 4 * j, r);
            }
        } else {
            float row[VK_NEON_NR];
            for (int j = 0; j < 3; j++) vst1q_f32(row + 4 * j, acc[i][j]);
            for (size_t j = 0; j < nr; j++) ci[j] = accumulate ? ci[j] + row[j] : bias ? row[j] + bias[j] : row[j];
        }
    }
}

static void ukr_neon(size_t mr, size_t kc, const float *a, const float *b, float *c, size_t ldc, size_t nr,
                     int accumulate, const float *bias) {
    switch (mr) {
    case 8: ukr_neon_tile(8, kc, a, b, c, ldc, nr, accumulate, bias); break;
    case 7: ukr_neon_tile(7, kc, a, b, c, ldc, nr, accumulate, bias); break;
    case 6: ukr_neon_tile(6, kc, a, b, c, ldc, nr, accumulate, bias); break;
    case 5: ukr_neon_tile(5, kc, a, b, c, ldc, nr, accumulate, bias); break;
    case 4: ukr_neon_tile(4, kc, a, b, c, ldc, nr, accumulate, bias); break;
    case 3: ukr_neon_tile(3, kc, a, b, c, ldc, nr, accumulate, bias); break;
    case 2: ukr_neon_tile(2, kc, a, b, c, ldc, nr, accumulate, bias); break;
    default: ukr_neon_tile(1, kc, a, b, c, ldc, nr, accumulate, bias); break;
    }
}

// y[t, n] = sum_k x[t, k] W[n, k] (+ bias[n]) for n in [n0, n1), W as `b` says (dense, quantized: dequantized into
// the panels, or transposed). buf: gemm_neon_scratch_floats(T, K, n1 - n0) floats.
static void gemm_neon(const float *x, size_t T, size_t K, size_t ldx, const neon_b *b, size_t n0, size_t n1,
                      const float *bias, float *y, size_t ldy, float *buf) {
    size_t npan = div_up(n1 - n0, VK_NEON_NR), kcb = gemm_neon_kc(K), mcb = VK_NEON_MC;
    int one_block = T <= mcb;  // each panel is used once: every panel reuses one slot, which stays in cache
    float *bp = buf, *ap = bp + (one_block ? kcb * VK_NEON_NR : kcb * npan * VK_NEON_NR);
    float *tmp = ap + round_up(T < mcb ? T : mcb, VK_NEON_MR) * kcb;
    for (size_t k0 = 0; k0 < K; k0 += kcb) {
        size_t kc = K - k0 < kcb ? K - k0 : kcb;
        for (size_t t0 = 0; t0 < T; t0 += mcb) {
            size_t mc = T - t0 < mcb ? T - t0 : mcb;
            pack_a_neon(x + t0 * ldx + k0, ldx, mc, kc, ap);
            for (size_t j = 0; j < npan; j++) {
                size_t n = n0 + j * VK_NEON_NR, nr = n1 - n < VK_NEON_NR ? n1 - n : VK_NEON_NR;
                float *bj = bp + (one_block ? 0 : j * kc * VK_NEON_NR);
                if (t0 == 0) pack_b_neon(b, K, n, nr, k0, kc, bj, tmp);
                for (size_t i = 0; i < mc; i += VK_NEON_MR)
                    ukr_neon(mc - i < VK_NEON_MR ? mc - i : VK_NEON_MR, kc, ap + (i / VK_NEON_MR) * kc * VK_NEON_MR, bj,
                             y + (t0 + i) * ldy + n, ldy, nr, k0 != 0, bias ? bias + n : NULL);
            }
        }
    }
}

// Integer-dot decode (see qdot_applies): x quantized to int8 per group as for every body, then per 32 columns of a
// group the int8 products summed into int32 lanes, four rows at a time (8 independent accumulators: the former body
// took one row with a single chain of 4 dependent vpadalq per 32 columns, about 3 products per cycle), each group's
// four row sums scaled in one vector: y[n] += (float)sum * scale[n, g] * dx[g]. int4 blocks split into low nibbles
// (even columns) and high nibbles (odd columns), with `qx` permuted to that order once per call. DOT adds the
// products of 16 int8 pairs into an int32x4: SDOT (vdotq_s32, FEAT_DotProd: Apple M1 and later, Cortex-A55/A76 and
// later, Graviton 2+) or, without it, vmull_s8 and vpadalq_s16. buf: groups floats (dx), then K + K bytes.
#define VK_DOT_SDOT(acc, w, x) vdotq_s32(acc, w, x)
#define VK_DOT_MULL(acc, w, x)                                                                                        \
    vpadalq_s16(vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(x))), vmull_high_s8(w, x))
#define VK_QDOT_NEON(NAME, ATTR, DOT)                                                                                  \
    ATTR static inline __attribute__((always_inline)) void NAME##_rows(const int RR, const int BITS, size_t K,        \
                                                                       const vk_qmatrix *w, const int8_t *qx,          \
                                                                       const float *dx, size_t n, const float *bias,   \
                                                                       float *y) {                                     \
        size_t G = w->group_size, ng = qgroups(K, G), rb = vk_qrow_bytes(BITS, K);                                   \
        const uint8x16_t m4 = vdupq_n_u8(0x0f);                                                                      \
        const int8x16_t eight = vdupq_n_s8(8);                                                                       \
        float32x4_t acc = vdupq_n_f32(0);                                                                             \
        for (size_t g = 0; g < ng; g++) {                                                                             \
            size_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;                                                          \
            int32x4_t s[4][2];                                                                                        \
            for (int r = 0; r < RR; r++) s[r][0] = s[r][1] = vdupq_n_s32(0);                                          \
            for (size_t k = k0; k < k1; k += 32) {                                                                    \
                int8x16_t x0 = vld1q_s8(qx + k), x1 = vld1q_s8(qx + k + 16);                                          \
                for (int r = 0; r < RR; r++) {                                                                        \
                    const uint8_t *row = (const uint8_t *)w->data + (n + (size_t)r) * rb;                             \
                    int8x16_t w0, w1;                                                                                 \
                    if (BITS == 8) {                                                                                  \
                        w0 = vld1q_s8((const int8_t *)row + k);                                                       \
                        w1 = vld1q_s8((const int8_t *)row + k + 16);                                                  \
                    } else {                                                                                          \
                        uint8x16_t b = vld1q_u8(row + k / 2);                                                         \
                        w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, m4)), eight);                                   \
                        w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight);                                  \
                    }                                                                                                 \
                    s[r][0] = DOT(s[r][0], w0, x0);                                                                   \
                    s[r][1] = DOT(s[r][1], w1, x1);                                                                   \
                }                                                                                                     \
            }                                                                                                         \
            float sc[4] = {0, 0, 0, 0};                                                                               \
            int32_t tot[4] = {0, 0, 0, 0};                                                                            \
            for (int r = 0; r < RR; r++) {                                                                            \
                sc[r] = f16_to_f32(w->scales[(n + (size_t)r) * ng + g]);                                              \
                tot[r] = vaddvq_s32(vaddq_s32(s[r][0], s[r][1]));                                                     \
            }                                                                                                         \
            acc = vfmaq_f32(acc, vmulq_n_f32(vld1q_f32(sc), dx[g]), vcvtq_f32_s32(vld1q_s32(tot)));                   \
        }                                                                                                             \
        float out[4];                                                                                                 \
        vst1q_f32(out, acc);                                                                                          \
        for (int r = 0; r < RR; r++) y[n + (size_t)r] = bias ? out[r] + bias[n + (size_t)r] : out[r];                \
    }                                                                                                                 \
    ATTR static void NAME(const float *x, size_t K, const vk_qmatrix *w, size_t n0, size_t n1, const float *bias,     \
                          float *y, float *buf) {                                                                     \
        size_t G = w->group_size, ng = qgroups(K, G);                                                                 \
        float *dx = buf;                                                                                              \
        int8_t *qx = (int8_t *)(dx + ng), *qp = qx + K;                                                               \
        qdot_quantize_x(x, K, G, qx, dx);                                                                             \
        size_t n = n0;                                                                                                \
        if (w->bits == 4) {                                                                                           \
            qdot_permute_int4(qx, K, qp);                                                                             \
            for (; n + 4 <= n1; n += 4) NAME##_rows(4, 4, K, w, qp, dx, n, bias, y);                                  \
            for (; n < n1; n++) NAME##_rows(1, 4, K, w, qp, dx, n, bias, y);                                          \
        } else {                                                                                                      \
            for (; n + 4 <= n1; n += 4) NAME##_rows(4, 8, K, w, qx, dx, n, bias, y);                                  \
            for (; n < n1; n++) NAME##_rows(1, 8, K, w, qx, dx, n, bias, y);                                          \
        }                                                                                                             \
    }
VK_QDOT_NEON(gemv_qdot_neon, , VK_DOT_MULL)
VK_QDOT_NEON(gemv_qdot_sdot, VK_DOTPROD, VK_DOT_SDOT)
#undef VK_QDOT_NEON
#undef VK_DOT_SDOT
#undef VK_DOT_MULL

// ---- Attention over a block of queries ------------------------------------------------------------------------
// As on x86 (attention_blocked), a block of queries goes through the GEMM instead of a 64-long dot product and an
// axpy per key and query: S = Q Kᵀ (gemm_neon with K's rows as W), a row softmax in vectors, then O = P V (gemm_neon
// with V as a transposed W). Causal: the block computes the scores of the keys its last query sees; each row's
// invisible ones get weight 0.
#define VK_NEON_ATT_MIN_Q 4  // fewer queries take the per-query loop
#define VK_NEON_ATT_MQ 64    // queries per block: S of 1024 keys is 256 KB

// 2^t for t <= 0 (or NaN): t = n + r, n = round(t), 2^r by vk_exp2_poly and 2^n built in the exponent field; t below
// -126 is taken as -126 (2^-126 against a row sum of at least 1). NaN stays NaN.
static inline float32x4_t exp2_neon_nonpos(float32x4_t t) {
    t = vmaxq_f32(t, vdupq_n_f32(-126.0f));
    float32x4_t n = vrndnq_f32(t), r = vsubq_f32(t, n), y = vdupq_n_f32(vk_exp2_poly[0]);
    for (int j = 1; j < 6; j++) y = vfmaq_f32(vdupq_n_f32(vk_exp2_poly[j]), y, r);
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(y, vreinterpretq_f32_s32(e));
}

// x[0, n) = softmax(x scale), x[n, n_all) = 0.
static void softmax_scaled_neon(float *x, size_t n, size_t n_all, float scale) {
    float32x4_t mv = vdupq_n_f32(-INFINITY), sv = vdupq_n_f32(scale);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) mv = vmaxq_f32(mv, vmulq_f32(vld1q_f32(x + i), sv));
    float m = vmaxvq_f32(mv);
    for (; i < n; i++) m = fmaxf(m, x[i] * scale);
    // exp(s scale - m) = 2^(s c - m2), c = scale log2(e), m2 = m log2(e)
    const float c = scale * VK_LOG2E, m2 = m * VK_LOG2E;
    float32x4_t cv = vdupq_n_f32(c), m2v = vdupq_n_f32(m2), acc = vdupq_n_f32(0);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t e = exp2_neon_nonpos(vfmaq_f32(vnegq_f32(m2v), vld1q_f32(x + i), cv));
        vst1q_f32(x + i, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    for (; i < n; i++) { x[i] = exp2f(fmaf(x[i], c, -m2)); sum += x[i]; }
    float32x4_t inv = vdupq_n_f32(1.0f / sum);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), inv));
    for (; i < n; i++) x[i] *= 1.0f / sum;
    for (; i < n_all; i++) x[i] = 0.0f;
}

// vk_attention_head for nq >= VK_NEON_ATT_MIN_Q and n_keys >= 1.
static void attention_neon(const float *q, size_t nq, size_t q_stride, const float *k, const float *v,
                           size_t kv_stride, size_t hd, size_t q_pos0, int causal, size_t n_keys, float scale,
                           float *out, size_t out_stride) {
    size_t mq = nq < VK_NEON_ATT_MQ ? nq : VK_NEON_ATT_MQ;
    size_t nk_max = causal && q_pos0 + nq < n_keys ? q_pos0 + nq : n_keys;
    size_t g1 = gemm_neon_scratch_floats(mq, hd, nk_max), g2 = gemm_neon_scratch_floats(mq, nk_max, hd);
    float *st = tls_scratch(mq * nk_max + (g1 > g2 ? g1 : g2));
    float *buf = st + mq * nk_max;
    const neon_b keys = {k, VK_F32, kv_stride, 0, NULL}, values = {v, VK_F32, kv_stride, 1, NULL};
    for (size_t i0 = 0; i0 < nq; i0 += mq) {
        size_t m = nq - i0 < mq ? nq - i0 : mq;
        size_t nk = causal && q_pos0 + i0 + m < n_keys ? q_pos0 + i0 + m : n_keys;
        gemm_neon(q + i0 * q_stride, m, hd, q_stride, &keys, 0, nk, NULL, st, nk, buf);
        for (size_t r = 0; r < m; r++) {
            size_t visible = causal && q_pos0 + i0 + r + 1 < nk ? q_pos0 + i0 + r + 1 : nk;
            softmax_scaled_neon(st + r * nk, visible, nk, scale);
        }
        gemm_neon(st, m, nk, nk, &values, 0, hd, NULL, out + i0 * out_stride, out_stride, buf);
    }
}

// ---- Quantized prefill with SDOT: an int8 GEMM ------------------------------------------------------------------
// Where the CPU has FEAT_DotProd and K and the group size are multiples of 32 (qdot_applies' condition for decode):
// each token's x is quantized exactly as a decode step quantizes it (qdot_quantize_x), the weights' levels are laid
// out per 12-row panel as [K / 4][12 rows][4 columns] int8 (int4 nibbles unpacked to levels), and a 4-token x 12-row
// tile multiplies them with vdotq_laneq_s32 (16 int8 products per instruction against 4 for vfmaq_f32): 12 int32
// accumulators per group, then scaled into 12 f32 ones as the SDOT decode scales them (acc + (scale dx) sum, fused),
// so every token's row equals gemv_qdot_sdot's on it bit for bit. Scratch: qgemm_sdot_scratch_bytes.
#define VK_SDOT_MR 4
#define VK_SDOT_NR 12
static inline int qgemm_sdot_applies(size_t T, size_t K, const vk_qmatrix *w) {
    return T >= 2 && K % 32 == 0 && w->group_size % 32 == 0 && use_dotprod();
}

static size_t qgemm_sdot_scratch_bytes(size_t T, size_t K, size_t G) {
    size_t Tp = round_up(T, VK_SDOT_MR), ng = qgroups(K, G);
    // x levels (tiles of 4 tokens), their scales, one panel's levels and scales, one token's levels, alignment
    return Tp * K + Tp * ng * 4 + K * VK_SDOT_NR + ng * VK_SDOT_NR * 4 + K + ng * 4 + 64;
}

VK_DOTPROD static void qgemm_sdot(const float *x, size_t T, size_t K, size_t ldx,
                                                            const vk_qmatrix *w, size_t n0, size_t n1,
                                                            const float *bias, float *y, size_t ldy, void *buf) {
    const size_t G = w->group_size, ng = qgroups(K, G), Tp = round_up(T, VK_SDOT_MR), rb = vk_qrow_bytes(w->bits, K);
    float *dx = (float *)buf;                        // [Tp][ng], padding tokens 0
    float *sw = dx + Tp * ng;                        // [ng][12] the panel's row scales, missing rows 0
    int8_t *ap = (int8_t *)(sw + ng * VK_SDOT_NR);   // [Tp / 4][K / 4][4 tokens][4]
    int8_t *bp = ap + Tp * K;                        // [K / 4][12 rows][4]
    int8_t *qt = bp + K * VK_SDOT_NR;                // one token's levels
    memset(ap, 0, Tp * K);
    memset(dx, 0, Tp * ng * sizeof(float));
    for (size_t t = 0; t < T; t++) {
        qdot_quantize_x(x + t * ldx, K, G, qt, dx + t * ng);
        int8_t *tile = ap + (t / VK_SDOT_MR) * K * VK_SDOT_MR + (t % VK_SDOT_MR) * 4;
        for (size_t k = 0; k < K; k += 4) memcpy(tile + k * VK_SDOT_MR, qt + k, 4);
    }
    for (size_t n = n0; n < n1; n += VK_SDOT_NR) {
        size_t nr = n1 - n < VK_SDOT_NR ? n1 - n : VK_SDOT_NR;
        for (size_t r = 0; r < VK_SDOT_NR; r++) {
            const uint8_t *row = (const uint8_t *)w->data + (n + r) * rb;
            for (size_t g = 0; g < ng; g++) sw[g * VK_SDOT_NR + r] = r < nr ? f16_to_f32(w->scales[(n + r) * ng + g]) : 0.0f;
            for (size_t k = 0; k < K; k += 8) {
                int8x8_t lv = r < nr ? q_levels8_neon(row, w->bits, k) : vdup_n_s8(0);
                int32x2_t words = vreinterpret_s32_s8(lv);  // columns k .. k + 3, k + 4 .. k + 7
                vst1_lane_s32((int32_t *)(bp + (k / 4) * VK_SDOT_NR * 4 + r * 4), words, 0);
                vst1_lane_s32((int32_t *)(bp + (k / 4 + 1) * VK_SDOT_NR * 4 + r * 4), words, 1);
            }
        }
        for (size_t t0 = 0; t0 < T; t0 += VK_SDOT_MR) {
            const int8_t *a = ap + (t0 / VK_SDOT_MR) * K * VK_SDOT_MR;
            float32x4_t f[VK_SDOT_MR][3];
            for (int t = 0; t < VK_SDOT_MR; t++) f[t][0] = f[t][1] = f[t][2] = vdupq_n_f32(0);
            for (size_t g = 0; g < ng; g++) {
                int32x4_t s[VK_SDOT_MR][3];
                for (int t = 0; t < VK_SDOT_MR; t++) s[t][0] = s[t][1] = s[t][2] = vdupq_n_s32(0);
                for (size_t k = g * G; k < (g + 1) * G && k < K; k += 4) {
                    const int8_t *bk = bp + (k / 4) * VK_SDOT_NR * 4;
                    int8x16_t b0 = vld1q_s8(bk), b1 = vld1q_s8(bk + 16), b2 = vld1q_s8(bk + 32);
                    int8x16_t av = vld1q_s8(a + k * VK_SDOT_MR);
#define VK_SDOT_TOKEN(T_)                                                                                             \
    s[T_][0] = vdotq_laneq_s32(s[T_][0], b0, av, T_);                                                                 \
    s[T_][1] = vdotq_laneq_s32(s[T_][1], b1, av, T_);                                                                 \
    s[T_][2] = vdotq_laneq_s32(s[T_][2], b2, av, T_);
                    VK_SDOT_TOKEN(0) VK_SDOT_TOKEN(1) VK_SDOT_TOKEN(2) VK_SDOT_TOKEN(3)
#undef VK_SDOT_TOKEN
                }
                const float *sg = sw + g * VK_SDOT_NR;
                float32x4_t w0 = vld1q_f32(sg), w1 = vld1q_f32(sg + 4), w2 = vld1q_f32(sg + 8);
                for (int t = 0; t < VK_SDOT_MR; t++) {
                    float d = dx[(t0 + (size_t)t) * ng + g];
                    f[t][0] = vfmaq_f32(f[t][0], vmulq_n_f32(w0, d), vcvtq_f32_s32(s[t][0]));
                    f[t][1] = vfmaq_f32(f[t][1], vmulq_n_f32(w1, d), vcvtq_f32_s32(s[t][1]));
                    f[t][2] = vfmaq_f32(f[t][2], vmulq_n_f32(w2, d), vcvtq_f32_s32(s[t][2]));
                }
            }
            for (size_t t = 0; t < VK_SDOT_MR && t0 + t < T; t++) {
                float out[VK_SDOT_NR];
                vst1q_f32(out, f[t][0]);
                vst1q_f32(out + 4, f[t][1]);
                vst1q_f32(out + 8, f[t][2]);
                float *yt = y + (t0 + t) * ldy + n;
                for (size_t r = 0; r < nr; r++) yt[r] = bias ? out[r] + bias[n + r] : out[r];
            }
        }
    }
}

// ---- Activations and softmax ------------------------------------------------------------------------------------
// exp256's steps in four lanes (same polynomial, same clamps; the float operations in the same order).
static inline float32x4_t exp_neon(float32x4_t x) {
    uint32x4_t nan = vmvnq_u32(vceqq_f32(x, x));
    float32x4_t v = vmaxq_f32(vminq_f32(x, vdupq_n_f32(89.0f)), vdupq_n_f32(-104.0f));
    float32x4_t fx = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5f), v, vdupq_n_f32(VK_LOG2E)));
    v = vfmsq_f32(v, fx, vdupq_n_f32(0.693359375f));
    v = vfmsq_f32(v, fx, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t z = vmulq_f32(v, v), y = vdupq_n_f32(vk_exp_poly[0]);
    for (int j = 1; j < 6; j++) y = vfmaq_f32(vdupq_n_f32(vk_exp_poly[j]), y, v);
    y = vaddq_f32(vfmaq_f32(v, y, z), vdupq_n_f32(1.0f));
    int32x4_t n = vcvtq_s32_f32(fx), n1 = vshrq_n_s32(n, 1), n2 = vsubq_s32(n, n1);
    const int32x4_t bias = vdupq_n_s32(127);
    y = vmulq_f32(y, vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23)));
    y = vmulq_f32(y, vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23)));
    return vbslq_f32(nan, x, y);
}

// silu(g) * x = g / (1 + exp(-g)) * x.
static void silu_mul_neon(const float *gate, float *x, size_t n) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t g = vld1q_f32(gate + i);
        float32x4_t sg = vdivq_f32(g, vaddq_f32(one, exp_neon(vnegq_f32(g))));
        vst1q_f32(x + i, vmulq_f32(sg, vld1q_f32(x + i)));
    }
    for (; i < n; i++) x[i] = (gate[i] / (1.0f + expf(-gate[i]))) * x[i];
}

// 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3).
static void gelu_tanh_neon(float *x, size_t n) {
    const float32x4_t one = vdupq_n_f32(1.0f), c = vdupq_n_f32(0.044715f), m2k = vdupq_n_f32(-2.0f * 0.7978845608028654f);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        float32x4_t u = vfmaq_f32(v, vmulq_f32(c, v), vmulq_f32(v, v));
        vst1q_f32(x + i, vdivq_f32(v, vaddq_f32(one, exp_neon(vmulq_f32(m2k, u)))));
    }
    for (; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

// 0.5 v (1 + erf(v / sqrt 2)) = 0.5 v erfc(-v / sqrt 2), erfc as gelu_erf_avx2 computes it (Numerical Recipes'
// erfcc, relative error below 1.2e-7), in four lanes.
static void gelu_erf_neon(float *x, size_t n) {
    const float32x4_t one = vdupq_n_f32(1.0f), half = vdupq_n_f32(0.5f), two = vdupq_n_f32(2.0f);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        float32x4_t zs = vmulq_f32(v, vdupq_n_f32(-0.7071067811865476f)), z = vabsq_f32(zs);  // erfc argument
        float32x4_t t = vdivq_f32(one, vfmaq_f32(one, half, z));
        float32x4_t p = vdupq_n_f32(vk_erfc_poly[0]);
        for (int j = 1; j < 10; j++) p = vfmaq_f32(vdupq_n_f32(vk_erfc_poly[j]), p, t);
        float32x4_t r = vmulq_f32(t, exp_neon(vfmsq_f32(p, z, z)));  // erfc(|zs|)
        r = vbslq_f32(vcltq_f32(zs, vdupq_n_f32(0)), vsubq_f32(two, r), r);  // erfc(zs) = 2 - erfc(-zs)
        vst1q_f32(x + i, vmulq_f32(vmulq_f32(half, v), r));
    }
    for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
}

// Stable softmax: the max, exp(x - max) with exp_neon and their sum, then a scale by 1 / sum.
static void softmax_neon(float *x, size_t n) {
    float32x4_t mv = vdupq_n_f32(-INFINITY);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) mv = vmaxq_f32(mv, vld1q_f32(x + i));
    float m = vmaxvq_f32(mv);
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    float32x4_t m4 = vdupq_n_f32(m), acc = vdupq_n_f32(0);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), m4));
        vst1q_f32(x + i, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    for (; i < n; i++) { x[i] = expf(x[i] - m); sum += x[i]; }
    float inv = 1.0f / sum;
    float32x4_t iv = vdupq_n_f32(inv);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), iv));
    for (; i < n; i++) x[i] *= inv;
}

// Quantized weights, a few tokens (or a decode step whose groups are not whole 32-column blocks): each row
// dequantized once into scratch (K floats, vectorized), then dotted with every token.
static void matmul_q_neon(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *w, size_t n0, size_t n1,
                          const float *bias, float *y, size_t ldy, float *scratch) {
    for (size_t n = n0; n < n1; n++) {
        row_f32_neon(NULL, VK_F32, 0, w, K, n, 0, K, scratch);
        for (size_t t = 0; t < T; t++) {
            float s = dot_neon(x + t * ldx, scratch, K);
            y[t * ldy + n] = bias ? s + bias[n] : s;
        }
    }
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------------------
size_t vk_matmul_scratch_floats(size_t T, size_t K, size_t n0, size_t n1) {
    if (n1 <= n0 || T == 0 || K == 0) return 0;
#if VK_X86
    if (T > VK_SMALL_T_WITH512) return gemm_scratch_floats(T, K, n1 - n0);  // (more than the few-token kernels need)
    return 0;
#elif VK_ARM
    return T > VK_NEON_SMALL_T ? gemm_neon_scratch_floats(T, K, n1 - n0) : 0;
#else
    return 4 * K;
#endif
}

void vk_matmul_ws(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dtype, size_t n0,
                  size_t n1, const float *bias, float *y, size_t ldy, float *scratch, size_t scratch_floats) {
    if (n1 <= n0 || T == 0) return;
    if (K == 0) {  // empty sums
        for (size_t t = 0; t < T; t++)
            for (size_t n = n0; n < n1; n++) y[t * ldy + n] = bias ? bias[n] : 0.0f;
        return;
    }
#if VK_X86
    if (use_avx2()) {
        if (T == 1) {
            if (use_avx512()) gemv_avx512(x, K, w, dtype, n0, n1, bias, y);
            else gemv_avx2(x, K, w, dtype, n0, n1, bias, y);
        } else if (use_avx512() && small512_applies(T, K, dtype)) {
            gemm_small512(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy);
        } else if (T <= (use_avx512() ? VK_SMALL_T_WITH512 : VK_SMALL_T)) {
            gemm_small_avx2(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy);
        } else {
            size_t need = gemm_scratch_floats(T, K, n1 - n0);
            float *buf = scratch && scratch_floats >= need ? scratch : tls_scratch(need);
            gemm_avx2(x, T, K, ldx, w, dtype, K, NULL, n0, n1, bias, y, ldy, buf);
        }
        return;
    }
#elif VK_ARM
    if (vk_simd_level() == 2) {
        if (T <= VK_NEON_SMALL_T) {
            gemm_small_neon(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy);
        } else {
            size_t need = gemm_neon_scratch_floats(T, K, n1 - n0);
            float *buf = scratch && scratch_floats >= need ? scratch : tls_scratch(need);
            neon_b b = {w, dtype, K, 0, NULL};
            gemm_neon(x, T, K, ldx, &b, n0, n1, bias, y, ldy, buf);
        }
        return;
    }
#endif
    (void)scratch; (void)scratch_floats;
    matmul_scalar(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy);
}

void vk_matmul_bf16_ws(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dtype, size_t n0,
                       size_t n1, const float *bias, float *y, size_t ldy, float *scratch, size_t scratch_floats) {
#if VK_X86
    // Fewer tokens are bound by reading the weights (the few-token and GEMV paths), where bf16 products gain nothing.
    if (T > VK_SMALL_T512 && K > 0 && n1 > n0 && vk_bf16_products_available()) {
        if (g_amx_enabled && amx_granted()) {
            size_t need = gemm_amx_scratch_words(T, K);
            float *buf = scratch && scratch_floats >= need ? scratch : tls_scratch(need);
            gemm_amx(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy, buf);
            return;
        }
        size_t need = gemm_bf16_scratch_words(T, K, n1 - n0);
        float *buf = scratch && scratch_floats >= need ? scratch : tls_scratch(need);
        gemm_bf16(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy, buf);
        return;
    }
#endif
    vk_matmul_ws(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy, scratch, scratch_floats);
}

int vk_quantized_prefill_is_integer(size_t T, size_t K, size_t group_size, int bits) {
#if VK_X86
    return group_size > 0 && (bits == 8 || bits == 4) &&
           (qgemm_applies(T, K, group_size, bits) || qgemm_avx2_applies(T, K, group_size, bits));
#elif VK_ARM
    return (bits == 8 || bits == 4) && T >= 2 && K % 32 == 0 && group_size > 0 && group_size % 32 == 0 && use_dotprod();
#else
    (void)T; (void)K; (void)group_size; (void)bits;
    return 0;
#endif
}

size_t vk_matmul_q_scratch_floats(size_t T, size_t K, size_t group_size, size_t n0, size_t n1) {
    if (n1 <= n0 || T == 0 || K == 0 || group_size == 0) return 0;
#if VK_X86
    if (T == 1) return 18 * qgroups(K, group_size) + K + 16 + 64;  // scales (qdot_sc_stride), dx, qx, its int4 copies qp and qq, xs, xi, x4 (gemv_qdot_vnni)
    if (qgemm_applies(T, K, group_size, 4) || qgemm_avx2_applies(T, K, group_size, 4)) {  // int4's threshold is the lower
        size_t q = div_up(qgemm_scratch_bytes(T, K, group_size), 4), f = gemm_scratch_floats(T, K, n1 - n0);
        return q > f ? q : f;
    }
    size_t gemm = gemm_scratch_floats(T, K, n1 - n0), rows = VK_SMALL_ROWS * K / 4 + 1;  // gemm_small_q's q4 block
    return gemm > rows ? gemm : rows;
#elif VK_ARM
    size_t f = K + 64;
    if (T > VK_NEON_SMALL_T) {
        size_t g = gemm_neon_scratch_floats(T, K, n1 - n0);
        f = g > f ? g : f;
    }
    if (T >= 2 && K % 32 == 0 && group_size % 32 == 0) {  // qgemm_sdot, where the CPU has it
        size_t q = div_up(qgemm_sdot_scratch_bytes(T, K, group_size), 4);
        f = q > f ? q : f;
    }
    return f;
#else
    return K + 64;
#endif
}

void vk_matmul_q_ws(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *w, size_t n0, size_t n1,
                    const float *bias, float *y, size_t ldy, float *scratch, size_t scratch_floats) {
    if (n1 <= n0 || T == 0) return;
    if (!qmatrix_valid(w)) {
        for (size_t t = 0; t < T; t++)
            for (size_t n = n0; n < n1; n++) y[t * ldy + n] = NAN;
        return;
    }
    if (K == 0) {
        for (size_t t = 0; t < T; t++)
            for (size_t n = n0; n < n1; n++) y[t * ldy + n] = bias ? bias[n] : 0.0f;
        return;
    }
    size_t need = vk_matmul_q_scratch_floats(T, K, w->group_size, n0, n1);
    float *buf = scratch && scratch_floats >= need ? scratch : tls_scratch(need);
#if VK_X86
    if (use_avx2()) {
        if (qdot_applies(T, K, w) && use_vnni()) gemv_qdot_vnni(x, K, w, n0, n1, bias, y, buf);
        else if (qdot_applies(T, K, w)) gemv_qdot_avx2(x, K, w, n0, n1, bias, y, buf);
        else if (T == 1) gemv_q_avx2(x, K, w, n0, n1, bias, y, buf);
        else if (qgemm_applies(T, K, w->group_size, w->bits)) qgemm_vnni(x, T, K, ldx, w, n0, n1, bias, y, ldy, buf);
        else if (qgemm_avx2_applies(T, K, w->group_size, w->bits)) qgemm_avx2(x, T, K, ldx, w, n0, n1, bias, y, ldy, buf);
        else if (small_q_applies(T, w, use_avx512())) gemm_small_q(x, T, K, ldx, w, n0, n1, bias, y, ldy, (int8_t *)buf, use_avx512());
        else gemm_avx2(x, T, K, ldx, NULL, VK_F32, 0, w, n0, n1, bias, y, ldy, buf);
        return;
    }
#elif VK_ARM
    if (vk_simd_level() == 2) {
        if (qdot_applies(T, K, w) && use_dotprod()) gemv_qdot_sdot(x, K, w, n0, n1, bias, y, buf);
        else if (qdot_applies(T, K, w)) gemv_qdot_neon(x, K, w, n0, n1, bias, y, buf);
        else if (qgemm_sdot_applies(T, K, w)) qgemm_sdot(x, T, K, ldx, w, n0, n1, bias, y, ldy, buf);
        else if (T <= VK_NEON_SMALL_T) matmul_q_neon(x, T, K, ldx, w, n0, n1, bias, y, ldy, buf);
        else {
            neon_b b = {NULL, VK_F32, K, 0, w};
            gemm_neon(x, T, K, ldx, &b, n0, n1, bias, y, ldy, buf);
        }
        return;
    }
#endif
    if (qdot_applies(T, K, w)) gemv_qdot_scalar(x, K, w, n0, n1, bias, y, buf);
    else matmul_q_scalar(x, T, K, ldx, w, n0, n1, bias, y, ldy);
}

void vk_matmul(const float *x, size_t T, size_t K, size_t ldx, const void *w, vk_dtype dtype, size_t n0, size_t n1,
               const float *bias, float *y, size_t ldy, float *scratch) {
    // Callers of this entry point promise 4*K floats of scratch; the blocked GEMM wants more and then uses its own.
    vk_matmul_ws(x, T, K, ldx, w, dtype, n0, n1, bias, y, ldy, scratch, 4 * K);
}

void vk_to_f32(const void *src, vk_dtype dtype, size_t count, float *dst) {
#if VK_X86
    if (use_avx2()) { to_f32_avx2(src, dtype, count, dst); return; }
#endif
    to_f32_scalar(src, dtype, count, dst);
}

float vk_dot(const float *a, const float *b, size_t n) {
#if VK_X86
    if (use_avx2()) return dot_avx2(a, b, n);
#elif VK_ARM
    if (vk_simd_level() == 2) return dot_neon(a, b, n);
#endif
    return dot_scalar(a, b, n);
}

void vk_axpy(float a, const float *x, float *y, size_t n) {
#if VK_X86
    if (use_avx2()) { axpy_avx2(a, x, y, n); return; }
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
#if VK_X86
    if (use_avx2()) { layernorm_avx2(x, w, b, n, eps, out); return; }
#endif
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
#if VK_X86
    if (use_avx512()) { gelu_tanh_avx512(x, n); return; }
    if (use_avx2()) { gelu_tanh_avx2(x, n); return; }
#elif VK_ARM
    if (vk_simd_level() == 2) { gelu_tanh_neon(x, n); return; }
#endif
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

void vk_gelu_erf(float *x, size_t n) {
#if VK_X86
    if (use_avx512()) { gelu_erf_avx512(x, n); return; }
    if (use_avx2()) { gelu_erf_avx2(x, n); return; }
#elif VK_ARM
    if (vk_simd_level() == 2) { gelu_erf_neon(x, n); return; }
#endif
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
}

void vk_silu_mul(const float *gate, float *x, size_t n) {
#if VK_X86
    if (use_avx2()) { silu_mul_avx2(gate, x, n); return; }
#elif VK_ARM
    if (vk_simd_level() == 2) { silu_mul_neon(gate, x, n); return; }
#endif
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        x[i] = (g / (1.0f + expf(-g))) * x[i];
    }
}

void vk_softmax(float *x, size_t n) {
    if (n == 0) return;
#if VK_X86
    if (use_avx2()) { softmax_avx2(x, n); return; }
#elif VK_ARM
    if (vk_simd_level() == 2) { softmax_neon(x, n); return; }
#endif
    float m = x[0];
    for (size_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    float inv = 1.0f / s;
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

#if VK_X86
// ---- Attention with bf16 products on AMX (vk_attention_head_bf16) -------------------------------------------------
// For 32 queries at a time: S = Q Kᵀ on tiles (Q rows and K pairs in bf16, f32 sums), a row softmax in f32 (scaled
// scores, row max, exp, f32 row sums), the unnormalised weights P rounded to bf16, O = P V on tiles (V packed as
// pairs of consecutive keys) and each output row times 1 / (row sum). K and V are packed once per call:
//   K: panels of 16 keys, kp16 rows of 16 words, word (p, j) = (k[j, 2p], k[j, 2p + 1])   (pack_b_bf16's layout)
//   V: panels of 16 dims, one row per key pair, word (p, d) = (v[2p, d], v[2p + 1, d])
// Dims past head_dim, keys past the last visible one and query rows past nq are zeros, so every tile is 16 x 16.
// Tiles: C in tmm0-3 (2 query tiles x 2 key or dim panels), A in tmm4-5, B in tmm6-7.
#define VK_AMX_ATT_MAX_HD 256

// Two f32 rows of 16 as (a, b) bf16 pairs: word d = (bf16(a[d]), bf16(b[d])).
VK_AMX static inline __m512i bf16_pair_words(__m512 a, __m512 b) {
    __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(a));
    __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(b));
    return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

VK_AMX static void attention_amx(const float *q, size_t nq, size_t q_stride, const float *k, const float *v,
                                 size_t kv_stride, size_t hd, size_t q_pos0, int causal, size_t n_keys, size_t nk_all,
                                 float scale, float *out, size_t out_stride) {
    size_t kp16 = round_up(div_up(hd, 2), 16);            // pairs of dims per Q row / K panel, whole 16-pair steps
    size_t nk32 = round_up(nk_all, 32), npairs = nk32 / 2;  // keys, padded to whole 32-key steps
    size_t dpan = div_up(hd, 32) * 2;                       // 16-dim V panels, an even count
    size_t n_kp = nk32 * kp16, n_vp = dpan * npairs * 16, n_q = 32 * kp16, n_s = 32 * nk32, n_p = 32 * nk32 / 2;
    float *buf = align64(tls_scratch(n_kp + n_vp + n_q + n_s + n_p + 32 * 32 + 32 + 6 * 16));
    uint32_t *kp = (uint32_t *)buf;
    uint32_t *vp = (uint32_t *)align64((float *)(kp + n_kp));
    uint32_t *qb = (uint32_t *)align64((float *)(vp + n_vp));
    float *st = align64((float *)(qb + n_q));
    uint16_t *pb = (uint16_t *)align64(st + n_s);
    float *cb = align64((float *)(pb + 2 * n_p));
    float *inv = align64(cb + 32 * 32);

    for (size_t j = 0; j < nk32; j += 16) {
        uint32_t *panel = kp + j * kp16;
        size_t rows = nk_all > j ? (nk_all - j < 16 ? nk_all - j : 16) : 0;
        if (rows) pack_b_bf16(k, VK_F32, kv_stride, j, rows, 0, hd, panel);
        else memset(panel, 0, div_up(hd, 2) * 64);
        memset(panel + div_up(hd, 2) * 16, 0, (kp16 - div_up(hd, 2)) * 64);
    }
    for (size_t d0 = 0; d0 < dpan * 16; d0 += 16) {
        __mmask16 dm = d0 >= hd ? 0 : hd - d0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (hd - d0)) - 1);
        uint32_t *panel = vp + (d0 / 16) * npairs * 16;
        for (size_t p = 0; p < npairs; p++) {
            size_t j = 2 * p;
            __m512 a = j < nk_all ? _mm512_maskz_loadu_ps(dm, v + j * kv_stride + d0) : _mm512_setzero_ps();
            __m512 b = j + 1 < nk_all ? _mm512_maskz_loadu_ps(dm, v + (j + 1) * kv_stride + d0) : _mm512_setzero_ps();
            _mm512_store_si512((void *)(panel + p * 16), bf16_pair_words(a, b));
        }
    }

    vk_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);
    const float c2 = scale * VK_LOG2E;
    const __m512 cv = _mm512_set1_ps(c2);
    for (size_t i0 = 0; i0 < nq; i0 += 32) {
        size_t m = nq - i0 < 32 ? nq - i0 : 32;
        size_t nkb = causal ? (q_pos0 + i0 + m < n_keys ? q_pos0 + i0 + m : n_keys) : n_keys;  // keys any row sees
        size_t nkb32 = round_up(nkb, 32);
        for (size_t i = 0; i < 32; i++) {  // Q block as bf16 rows of kp16 pairs
            uint16_t *dst = (uint16_t *)(qb + i * kp16);
            memset(dst, 0, kp16 * 4);
            if (i >= m) continue;
            const float *row = q + (i0 + i) * q_stride;
            for (size_t d = 0; d < hd; d += 16) {
                __mmask16 dm = hd - d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (hd - d)) - 1);
                _mm256_storeu_si256((__m256i *)(dst + d), (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(dm, row + d)));
            }
        }
        // S[32, nkb32] = Q Kᵀ, stored row-major (row stride nk32).
        for (size_t j = 0; j < nkb32; j += 32) {
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            const uint32_t *k0 = kp + j * kp16, *k1 = k0 + 16 * kp16;
            for (size_t p = 0; p < kp16; p += 16) {
                _tile_loadd(4, qb + p, kp16 * 4);
                _tile_loadd(5, qb + 16 * kp16 + p, kp16 * 4);
                _tile_loadd(6, k0 + p * 16, 64);
                _tile_loadd(7, k1 + p * 16, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, st + j, nk32 * 4);
            _tile_stored(1, st + j + 16, nk32 * 4);
            _tile_stored(2, st + 16 * nk32 + j, nk32 * 4);
            _tile_stored(3, st + 16 * nk32 + j + 16, nk32 * 4);
        }
        // Row softmax: row i sees keys [0, vis); P = exp(scale * s - max) in bf16, zero past vis.
        for (size_t i = 0; i < 32; i++) {
            const float *si = st + i * nk32;
            uint16_t *pi = pb + i * nk32;
            size_t vis = i >= m ? 0 : causal ? (q_pos0 + i0 + i + 1 < n_keys ? q_pos0 + i0 + i + 1 : n_keys) : n_keys;
            // The max of the raw scores: scale > 0 (checked by the caller), so it is the scaled scores' max / scale.
            __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
            size_t j = 0;
            for (; j + 16 <= vis; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(si + j));
            if (j < vis) mx = _mm512_mask_max_ps(mx, (__mmask16)((1u << (vis - j)) - 1), _mm512_loadu_ps(si + j), mx);
            // exp(scale s - scale max) = 2^(s c - max c) with c = scale log2(e).
            __m512 mc = _mm512_set1_ps(vis ? _mm512_reduce_max_ps(mx) * c2 : 0.0f);
            for (j = 0; j < nkb32; j += 16) {
                __mmask16 km = j >= vis ? 0 : vis - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (vis - j)) - 1);
                __m512 e = exp2_512_nonpos(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(km, si + j), cv, mc));
                e = _mm512_maskz_mov_ps(km, e);
                sum = _mm512_add_ps(sum, e);
                _mm256_storeu_si256((__m256i *)(pi + j), (__m256i)_mm512_cvtneps_pbh(e));
            }
            float total = _mm512_reduce_add_ps(sum);
            inv[i] = total > 0 ? 1.0f / total : 0.0f;
        }
        // O[32, hd] = P V / row sums, 32 dims at a time.
        for (size_t d0 = 0; d0 < dpan * 16; d0 += 32) {
            const uint32_t *v0 = vp + (d0 / 16) * npairs * 16, *v1 = v0 + npairs * 16;
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (size_t j = 0; j < nkb32; j += 32) {
                _tile_loadd(4, pb + j, nk32 * 2);
                _tile_loadd(5, pb + 16 * nk32 + j, nk32 * 2);
                _tile_loadd(6, v0 + (j / 2) * 16, 64);
                _tile_loadd(7, v1 + (j / 2) * 16, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, cb, 128);
            _tile_stored(1, cb + 16, 128);
            _tile_stored(2, cb + 512, 128);
            _tile_stored(3, cb + 528, 128);
            size_t dn = hd - d0 < 32 ? hd - d0 : 32;
            __mmask16 m0 = dn >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << dn) - 1);
            __mmask16 m1 = dn <= 16 ? 0 : dn >= 32 ? (__mmask16)0xffff : (__mmask16)((1u << (dn - 16)) - 1);
            for (size_t i = 0; i < m; i++) {
                __m512 f = _mm512_set1_ps(inv[i]);
                float *oi = out + (i0 + i) * out_stride + d0;
                _mm512_mask_storeu_ps(oi, m0, _mm512_mul_ps(_mm512_load_ps(cb + i * 32), f));
                if (m1) _mm512_mask_storeu_ps(oi + 16, m1, _mm512_mul_ps(_mm512_load_ps(cb + i * 32 + 16), f));
            }
        }
    }
    _tile_release();
}

// ---- Attention of one query row (decode): scores, softmax and P V in registers -----------------------------------
// Decode attends with one query per head against the whole cache. One vk_dot and one vk_axpy per key (a call, a
// horizontal add, and the output row loaded and stored again for every key) took a tenth of a q4 decode step at
// 160 keys. Here the query stays in registers, 16 (AVX-512) or 8 (AVX2) keys' dot products are reduced together by
// one transpose-and-add tree, and the output accumulates in registers across all keys (two sets, even and odd keys,
// so consecutive FMAs do not wait on each other). Same math as the scalar loop of vk_attention_head; only the order
// of the f32 sums differs.
#define VK_ATT_ROW_MAX_HD 128

// Lane t of the result: the sum of the 16 lanes of p[t].
VK_AVX512 static inline __m512 reduce16_avx512(const __m512 p[16]) {
    __m512 r[4];
    for (int m = 0; m < 4; m++) {
        const __m512 *a = p + 4 * m;
        // per 128-bit block: [a0 b0 a1 b1] + [a2 b2 a3 b3], then the 64-bit halves of two such pairs
        __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
        __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
        r[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    }
    // r[m]'s 128-bit block L: keys 4m .. 4m + 3 summed over columns 4L .. 4L + 3 of each 16; add the four blocks
    __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(r[0], r[1], 0x44), _mm512_shuffle_f32x4(r[0], r[1], 0xee));
    __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(r[2], r[3], 0x44), _mm512_shuffle_f32x4(r[2], r[3], 0xee));
    return _mm512_add_ps(_mm512_shuffle_f32x4(t01, t23, 0x88), _mm512_shuffle_f32x4(t01, t23, 0xdd));
}

// The three steps of one decode query against cached rows, written once for the head-split group body and the
// position-split chunk body. NV = head_dim / 16 is a constant in each instantiation and every loop is unrolled, so
// the query, the 16 partial sums and the output stay in registers (rolled, p[16] spilled to the stack: the chunk
// body in cache took 70 us per layer at 1124 positions against 57 unrolled).
// The 16 scaled scores q . k_t, key t at kr + t * kv_stride.
VK_AVX512 static inline __attribute__((always_inline)) __m512 scores16_512(const size_t NV, const float *qh,
                                                                           const float *kr, size_t kv_stride,
                                                                           __m512 sv) {
    __m512 qv[VK_ATT_ROW_MAX_HD / 16];
#pragma GCC unroll 8
    for (size_t c = 0; c < NV; c++) qv[c] = _mm512_loadu_ps(qh + 16 * c);
    __m512 p[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) {
        const float *r = kr + (size_t)t * kv_stride;
        __m512 a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(r));
#pragma GCC unroll 8
        for (size_t c = 1; c < NV; c++) a = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(r + 16 * c), a);
        p[t] = a;
    }
    return _mm512_mul_ps(reduce16_avx512(p), sv);
}

// One scaled score (the keys after the last block of 16), in the order of one lane of scores16_512.
VK_AVX512 static inline __attribute__((always_inline)) float score1_512(const size_t NV, const float *qh,
                                                                        const float *kr, float scale) {
    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qh), _mm512_loadu_ps(kr));
#pragma GCC unroll 8
    for (size_t c = 1; c < NV; c++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c), _mm512_loadu_ps(kr + 16 * c), a);
    return _mm512_reduce_add_ps(a) * scale;
}

// o0 += p_t v_t for the even t < n, o1 for the odd ones (two chains of FMAs), row t at vr + t * kv_stride.
VK_AVX512 static inline __attribute__((always_inline)) void pv_rows_512(const size_t NV, const float *p,
                                                                        const float *vr, size_t kv_stride, size_t n,
                                                                        __m512 *o0, __m512 *o1) {
    size_t t = 0;
    for (; t + 2 <= n; t += 2) {
        const float *v0 = vr + t * kv_stride, *v1 = v0 + kv_stride;
        __m512 p0 = _mm512_set1_ps(p[t]), p1 = _mm512_set1_ps(p[t + 1]);
#pragma GCC unroll 8
        for (size_t c = 0; c < NV; c++) {
            o0[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), o0[c]);
            o1[c] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1 + 16 * c), o1[c]);
        }
    }
    if (t < n) {
        __m512 p0 = _mm512_set1_ps(p[t]);
        const float *v0 = vr + t * kv_stride;
#pragma GCC unroll 8
        for (size_t c = 0; c < NV; c++) o0[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), o0[c]);
    }
}

// `nh` query heads (at most VK_ATT_GROUP_MAX) against the same keys and values (grouped-query attention: the heads of
// one KV head), one query row each; head h's query at q + h * qhs, its output at out + h * ohs, its scores at
// scores + h * nk. Each block of 16 keys is read from L2 / memory once and by the other heads from L1 (values: see P V).
// Head by head the operations are those of one head alone, in the same order, so a group's outputs equal nh calls
// with one head bit for bit. head_dim a multiple of 16, at most VK_ATT_ROW_MAX_HD.
#define VK_ATT_GROUP_MAX 8
// NV = head_dim / 16, a constant in each instantiation so the column loops unroll and the query and output stay in
// registers. Every 64-byte line of the keys (values) two blocks ahead is prefetched: rows kv_stride apart are not a
// stream the hardware prefetcher follows.
VK_AVX512 static inline __attribute__((always_inline)) void attention_group_body(
    const size_t NV, const float *q, size_t nh, size_t qhs, const float *k, const float *v, size_t kv_stride,
    size_t nk, float scale, float *out, size_t ohs, float *scores) {
    const __m512 sv = _mm512_set1_ps(scale);
    size_t j = 0;
    for (; j + 16 <= nk; j += 16) {
        if (j + 48 <= nk)
            for (int t = 0; t < 16; t++)
                for (size_t c = 0; c < NV; c++) _mm_prefetch((const char *)(k + (j + 32 + t) * kv_stride + 16 * c), _MM_HINT_T0);
        for (size_t h = 0; h < nh; h++)
            _mm512_storeu_ps(scores + h * nk + j, scores16_512(NV, q + h * qhs, k + j * kv_stride, kv_stride, sv));
    }
    for (; j < nk; j++)
        for (size_t h = 0; h < nh; h++) scores[h * nk + j] = score1_512(NV, q + h * qhs, k + j * kv_stride, scale);
    for (size_t h = 0; h < nh; h++) vk_softmax(scores + h * nk, nk);
    // P V head by head over all keys, the output in registers; the first head prefetches the values 32 rows ahead,
    // the group's values come from L2 for the heads after it
    for (size_t h = 0; h < nh; h++) {
        __m512 o0[VK_ATT_ROW_MAX_HD / 16], o1[VK_ATT_ROW_MAX_HD / 16];
#pragma GCC unroll 8
        for (size_t c = 0; c < NV; c++) o0[c] = o1[c] = _mm512_setzero_ps();
        for (j = 0; j < nk; j += 16) {
            size_t jn = nk - j < 16 ? nk - j : 16;
            if (h == 0)
                for (size_t r = j + 32; r < j + 48 && r < nk; r++)
                    for (size_t c = 0; c < NV; c++) _mm_prefetch((const char *)(v + r * kv_stride + 16 * c), _MM_HINT_T0);
            pv_rows_512(NV, scores + h * nk + j, v + j * kv_stride, kv_stride, jn, o0, o1);
        }
#pragma GCC unroll 8
        for (size_t c = 0; c < NV; c++) _mm512_storeu_ps(out + h * ohs + 16 * c, _mm512_add_ps(o0[c], o1[c]));
    }
}

VK_AVX512 static void attention_group_avx512(const float *q, size_t nh, size_t qhs, const float *k, const float *v,
                                             size_t kv_stride, size_t hd, size_t nk, float scale, float *out,
                                             size_t ohs, float *scores) {
    switch (hd / 16) {  // head sizes 64 (SmolLM2, SmolVLM, Qwen2-0.5B) and 128 unrolled; the rest by one body
    case 4: attention_group_body(4, q, nh, qhs, k, v, kv_stride, nk, scale, out, ohs, scores); break;
    case 8: attention_group_body(8, q, nh, qhs, k, v, kv_stride, nk, scale, out, ohs, scores); break;
    default: attention_group_body(hd / 16, q, nh, qhs, k, v, kv_stride, nk, scale, out, ohs, scores); break;
    }
}

// Lane t of the result: the sum of the 8 lanes of p[t].
VK_AVX2 static inline __m256 reduce8_avx2(const __m256 p[8]) {
    __m256 r[2];
    for (int m = 0; m < 2; m++) {
        const __m256 *a = p + 4 * m;
        __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a[0], a[1]), _mm256_unpackhi_ps(a[0], a[1]));
        __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(a[2], a[3]), _mm256_unpackhi_ps(a[2], a[3]));
        r[m] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))),
                             _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))));
    }
    // r[m]'s 128-bit half L: keys 4m .. 4m + 3 over columns 4L .. 4L + 3 of each 8
    return _mm256_add_ps(_mm256_permute2f128_ps(r[0], r[1], 0x20), _mm256_permute2f128_ps(r[0], r[1], 0x31));
}

// The 8 scaled scores q . k_t (key t at kr + t * kv_stride) and one score, nv = head_dim / 8; with 16 ymm registers
// the query is read from L1 (a second load per FMA) rather than kept in registers.
VK_AVX2 static inline __attribute__((always_inline)) __m256 scores8_avx2(const size_t nv, const float *qh,
                                                                         const float *kr, size_t kv_stride,
                                                                         __m256 sv) {
    __m256 p[8];
#pragma GCC unroll 8
    for (size_t t = 0; t < 8; t++) {
        const float *r = kr + t * kv_stride;
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(qh), _mm256_loadu_ps(r));
#pragma GCC unroll 16
        for (size_t c = 1; c < nv; c++) a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * c), _mm256_loadu_ps(r + 8 * c), a);
        p[t] = a;
    }
    return _mm256_mul_ps(reduce8_avx2(p), sv);
}

VK_AVX2 static inline __attribute__((always_inline)) float score1_avx2(const size_t nv, const float *qh,
                                                                       const float *kr, float scale) {
    __m256 a = _mm256_mul_ps(_mm256_loadu_ps(qh), _mm256_loadu_ps(kr));
    for (size_t c = 1; c < nv; c++) a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * c), _mm256_loadu_ps(kr + 8 * c), a);
    return hsum256(a) * scale;
}

// head_dim a multiple of 8, at most VK_ATT_ROW_MAX_HD.
VK_AVX2 static void attention_row_avx2(const float *qi, const float *k, const float *v, size_t kv_stride, size_t hd,
                                       size_t nk, float scale, float *oi, float *scores) {
    const size_t nv = hd / 8;
    const __m256 sv = _mm256_set1_ps(scale);
    size_t j = 0;
    for (; j + 8 <= nk; j += 8) _mm256_storeu_ps(scores + j, scores8_avx2(nv, qi, k + j * kv_stride, kv_stride, sv));
    for (; j < nk; j++) scores[j] = score1_avx2(nv, qi, k + j * kv_stride, scale);
    vk_softmax(scores, nk);
    // P V: the output in registers while it fits (64 columns: 8 ymm), else 64-column strips one after another
    for (size_t c0 = 0; c0 < nv; c0 += 8) {
        size_t w = nv - c0 < 8 ? nv - c0 : 8;
        __m256 o[8];
        for (size_t c = 0; c < w; c++) o[c] = _mm256_setzero_ps();
        for (j = 0; j < nk; j++) {
            const float *vr = v + j * kv_stride + 8 * c0;
            __m256 pj = _mm256_set1_ps(scores[j]);
            for (size_t c = 0; c < w; c++) o[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * c), o[c]);
        }
        for (size_t c = 0; c < w; c++) _mm256_storeu_ps(oi + 8 * (c0 + c), o[c]);
    }
}

#endif  // VK_X86

void vk_attention_head_bf16(const float *q, size_t nq, size_t q_stride, const float *k, const float *v,
                            size_t kv_stride, size_t head_dim, size_t q_pos0, int causal, size_t n_keys, float scale,
                            float *out, size_t out_stride, float *scores) {
#if VK_X86
    // Fewer than 16 queries leave most of a tile empty (decode and short chunks: the f32 kernels are as fast).
    if (nq >= 16 && head_dim > 0 && head_dim <= VK_AMX_ATT_MAX_HD && scale > 0 && vk_bf16_products_engine() == 2) {
        size_t nk_all = causal ? (q_pos0 + nq < n_keys ? q_pos0 + nq : n_keys) : n_keys;
        if (nk_all == 0) {
            for (size_t i = 0; i < nq; i++) memset(out + i * out_stride, 0, head_dim * sizeof(float));
            return;
        }
        attention_amx(q, nq, q_stride, k, v, kv_stride, head_dim, q_pos0, causal, n_keys, nk_all, scale, out,
                      out_stride);
        return;
    }
#endif
    vk_attention_head(q, nq, q_stride, k, v, kv_stride, head_dim, q_pos0, causal, n_keys, scale, out, out_stride,
                      scores);
}

// Queries from this many on go through the blocked kernel (below it, packing K and V costs more than it saves).
#define VK_ATT_BLOCKED_MIN_Q 4

void vk_attention_head(const float *q, size_t nq, size_t q_stride, const float *k, const float *v, size_t kv_stride,
                       size_t head_dim, size_t q_pos0, int causal, size_t n_keys, float scale, float *out,
                       size_t out_stride, float *scores) {
#if VK_X86
    if (use_avx2() && nq >= VK_ATT_BLOCKED_MIN_Q && head_dim > 0) {
        attention_blocked(q, nq, q_stride, k, v, kv_stride, head_dim, q_pos0, causal, n_keys, scale, out, out_stride);
        return;
    }
#elif VK_ARM
    if (vk_simd_level() == 2 && nq >= VK_NEON_ATT_MIN_Q && head_dim > 0 && n_keys > 0) {
        attention_neon(q, nq, q_stride, k, v, kv_stride, head_dim, q_pos0, causal, n_keys, scale, out, out_stride);
        return;
    }
#endif
    for (size_t i = 0; i < nq; i++) {
        const float *qi = q + i * q_stride;
        size_t nk = causal ? q_pos0 + i + 1 : n_keys;
        if (nk > n_keys) nk = n_keys;
#if VK_X86
        if (nk > 0 && head_dim <= VK_ATT_ROW_MAX_HD) {
            if (use_avx512() && head_dim % 16 == 0) {
                attention_group_avx512(qi, 1, 0, k, v, kv_stride, head_dim, nk, scale, out + i * out_stride, 0, scores);
                continue;
            }
            if (use_avx2() && head_dim % 8 == 0) {
                attention_row_avx2(qi, k, v, kv_stride, head_dim, nk, scale, out + i * out_stride, scores);
                continue;
            }
        }
#endif
        for (size_t j = 0; j < nk; j++) scores[j] = vk_dot(qi, k + j * kv_stride, head_dim) * scale;
        vk_softmax(scores, nk);
        float *oi = out + i * out_stride;
        memset(oi, 0, head_dim * sizeof(float));
        for (size_t j = 0; j < nk; j++) vk_axpy(scores[j], v + j * kv_stride, oi, head_dim);
    }
}

void vk_attention_decode_group(const float *q, size_t heads, size_t q_head_stride, const float *k, const float *v,
                               size_t kv_stride, size_t head_dim, size_t n_keys, float scale, float *out,
                               size_t out_head_stride, float *scores) {
    if (n_keys == 0) {  // nothing to attend to: zeros, as vk_attention_head
        for (size_t h = 0; h < heads; h++) memset(out + h * out_head_stride, 0, head_dim * sizeof(float));
        return;
    }
#if VK_X86
    if (use_avx512() && head_dim % 16 == 0 && head_dim <= VK_ATT_ROW_MAX_HD) {
        for (size_t h0 = 0; h0 < heads; h0 += VK_ATT_GROUP_MAX) {
            size_t nh = heads - h0 < VK_ATT_GROUP_MAX ? heads - h0 : VK_ATT_GROUP_MAX;
            attention_group_avx512(q + h0 * q_head_stride, nh, q_head_stride, k, v, kv_stride, head_dim, n_keys, scale,
                                   out + h0 * out_head_stride, out_head_stride, scores);
        }
        return;
    }
#endif
    for (size_t h = 0; h < heads; h++)
        vk_attention_head(q + h * q_head_stride, 1, 0, k, v, kv_stride, head_dim, n_keys - 1, 1, n_keys, scale,
                          out + h * out_head_stride, 0, scores);
}

// ---- Decode attention over a long cache: chunks of positions, all heads, merged afterwards --------------------
// With the heads split across threads (vk_attention_decode_group), each thread reads its KV heads' 256 bytes out of
// every cache row (1280 bytes for SmolVLM's 5 KV heads), a strided pattern the hardware prefetcher does not follow:
// at a 1124-token context (17 image tiles) one layer's 2.9 MB of keys and values took 220 us from memory on Zen 4
// (13 GB/s) against 64 us with them in cache, 7 ms of each decode token. Here a call covers a range of positions
// for every head: it reads those cache rows whole, in order (one stream for the keys, one for the values), and keeps
// the softmax unnormalised (flash-decoding): its max m, the sum l of exp(s - m) and o = sum exp(s - m) v per head.
// vk_attention_decode_merge combines the chunks in order. Head h reads KV head h / (heads / kv_heads).
#if VK_X86
// Head h's share of the `lines` 64-byte lines at `ahead` (the block of rows two ahead), requested into L2: spread
// over the heads' steps (see attention_chunk_body).
static inline __attribute__((always_inline)) void prefetch_share(const char *ahead, size_t lines, size_t h,
                                                                 size_t heads) {
    for (size_t b = lines * h / heads; b < lines * (h + 1) / heads; b++) _mm_prefetch(ahead + 64 * b, _MM_HINT_T1);
}

// The chunk's unnormalised softmax, head by head: m the largest score, the scores replaced by exp(s - m), l their
// sum; the head's output row zeroed for P V.
VK_AVX2 static void chunk_softmax_avx2(float *scores, size_t heads, size_t n, size_t hd, float *o, float *m, float *l) {
    for (size_t h = 0; h < heads; h++) {
        m[h] = max_avx2(scores + h * n, n);
        l[h] = exp_sum_avx2(scores + h * n, n, 1.0f, m[h]);
        memset(o + h * hd, 0, hd * sizeof(float));
    }
}

VK_AVX512 static inline __attribute__((always_inline)) void attention_chunk_body(
    const size_t NV, const float *q, size_t heads, size_t qhs, size_t kv_heads, const float *k, const float *v,
    size_t kv_stride, size_t key0, size_t key1, float scale, float *o, float *m, float *l, float *scores) {
    const size_t hd = 16 * NV, n = key1 - key0, groups = heads / kv_heads;
    const __m512 sv = _mm512_set1_ps(scale);
    // Each block of 16 rows is read head by head (a 256-byte piece of every row, then the next piece), an order the
    // hardware prefetcher does not follow, so the block two ahead is requested into L2 in software, its lines spread
    // over the heads' steps: one burst of all 320 lines per block, or a lead under a block (8 KB), left the loads
    // waiting (Zen 4, 1124 positions from memory: 150-160 us per layer with the burst, 107-113 spread; in cache 57).
    // Prefetches past the cache's end never fault.
    const size_t lines = 16 * kv_stride * sizeof(float) / 64;
    size_t j = key0;
    for (; j + 16 <= key1; j += 16) {
        const char *ahead = (const char *)(k + (j + 32) * kv_stride);
        for (size_t h = 0; h < heads; h++) {
            prefetch_share(ahead, lines, h, heads);
            const float *kh = k + (h / groups) * hd;
            _mm512_storeu_ps(scores + h * n + (j - key0), scores16_512(NV, q + h * qhs, kh + j * kv_stride, kv_stride, sv));
        }
    }
    for (; j < key1; j++)
        for (size_t h = 0; h < heads; h++)
            scores[h * n + (j - key0)] = score1_512(NV, q + h * qhs, k + j * kv_stride + (h / groups) * hd, scale);
    chunk_softmax_avx2(scores, heads, n, hd, o, m, l);
    // O += P V for 16 positions at a time, every head (its output row loaded and stored once per block)
    for (j = key0; j < key1; j += 16) {
        size_t jn = key1 - j < 16 ? key1 - j : 16;
        const char *ahead = (const char *)(v + (j + 32) * kv_stride);
        for (size_t h = 0; h < heads; h++) {
            prefetch_share(ahead, lines, h, heads);
            __m512 o0[VK_ATT_ROW_MAX_HD / 16], o1[VK_ATT_ROW_MAX_HD / 16];
#pragma GCC unroll 8
            for (size_t c = 0; c < NV; c++) { o0[c] = _mm512_loadu_ps(o + h * hd + 16 * c); o1[c] = _mm512_setzero_ps(); }
            pv_rows_512(NV, scores + h * n + (j - key0), v + (h / groups) * hd + j * kv_stride, kv_stride, jn, o0, o1);
#pragma GCC unroll 8
            for (size_t c = 0; c < NV; c++) _mm512_storeu_ps(o + h * hd + 16 * c, _mm512_add_ps(o0[c], o1[c]));
        }
    }
}

VK_AVX512 static void attention_chunk_avx512(const float *q, size_t heads, size_t qhs, size_t kv_heads, const float *k,
                                             const float *v, size_t kv_stride, size_t hd, size_t key0, size_t key1,
                                             float scale, float *o, float *m, float *l, float *scores) {
    switch (hd / 16) {
    case 4: attention_chunk_body(4, q, heads, qhs, kv_heads, k, v, kv_stride, key0, key1, scale, o, m, l, scores); break;
    case 8: attention_chunk_body(8, q, heads, qhs, kv_heads, k, v, kv_stride, key0, key1, scale, o, m, l, scores); break;
    default:
        attention_chunk_body(hd / 16, q, heads, qhs, kv_heads, k, v, kv_stride, key0, key1, scale, o, m, l, scores);
        break;
    }
}

// The same on AVX2 (16 ymm registers): scores 8 keys at a time with the query read from L1, P V in strips of 64
// columns (8 ymm) per block of 16 rows. head_dim a multiple of 8, at most VK_ATT_ROW_MAX_HD; NV8 = head_dim / 8.
VK_AVX2 static inline __attribute__((always_inline)) void attention_chunk_avx2_body(
    const size_t NV8, const float *q, size_t heads, size_t qhs, size_t kv_heads, const float *k, const float *v,
    size_t kv_stride, size_t key0, size_t key1, float scale, float *o, float *m, float *l, float *scores) {
    const size_t hd = 8 * NV8, n = key1 - key0, groups = heads / kv_heads;
    const __m256 sv = _mm256_set1_ps(scale);
    const size_t lines = 16 * kv_stride * sizeof(float) / 64;  // prefetched as in attention_chunk_body
    size_t j = key0;
    for (; j + 16 <= key1; j += 16) {
        const char *ahead = (const char *)(k + (j + 32) * kv_stride);
        for (size_t h = 0; h < heads; h++) {
            prefetch_share(ahead, lines, h, heads);
            const float *qh = q + h * qhs, *kh = k + (h / groups) * hd + j * kv_stride;
            for (size_t t0 = 0; t0 < 16; t0 += 8)
                _mm256_storeu_ps(scores + h * n + (j - key0) + t0, scores8_avx2(NV8, qh, kh + t0 * kv_stride, kv_stride, sv));
        }
    }
    for (; j < key1; j++)
        for (size_t h = 0; h < heads; h++)
            scores[h * n + (j - key0)] = score1_avx2(NV8, q + h * qhs, k + j * kv_stride + (h / groups) * hd, scale);
    chunk_softmax_avx2(scores, heads, n, hd, o, m, l);
    for (j = key0; j < key1; j += 16) {
        size_t jn = key1 - j < 16 ? key1 - j : 16;
        const char *ahead = (const char *)(v + (j + 32) * kv_stride);
        for (size_t h = 0; h < heads; h++) {
            prefetch_share(ahead, lines, h, heads);
            const float *sh = scores + h * n + (j - key0), *vh = v + (h / groups) * hd + j * kv_stride;
            for (size_t c0 = 0; c0 < NV8; c0 += 8) {
                const size_t w = NV8 - c0 < 8 ? NV8 - c0 : 8;
                float *oh = o + h * hd + 8 * c0;
                __m256 acc[8];
#pragma GCC unroll 8
                for (size_t c = 0; c < w; c++) acc[c] = _mm256_loadu_ps(oh + 8 * c);
                for (size_t t = 0; t < jn; t++) {
                    const __m256 pt = _mm256_set1_ps(sh[t]);
                    const float *vr = vh + t * kv_stride + 8 * c0;
#pragma GCC unroll 8
                    for (size_t c = 0; c < w; c++) acc[c] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vr + 8 * c), acc[c]);
                }
#pragma GCC unroll 8
                for (size_t c = 0; c < w; c++) _mm256_storeu_ps(oh + 8 * c, acc[c]);
            }
        }
    }
}

VK_AVX2 static void attention_chunk_avx2(const float *q, size_t heads, size_t qhs, size_t kv_heads, const float *k,
                                         const float *v, size_t kv_stride, size_t hd, size_t key0, size_t key1,
                                         float scale, float *o, float *m, float *l, float *scores) {
    switch (hd / 8) {
    case 8: attention_chunk_avx2_body(8, q, heads, qhs, kv_heads, k, v, kv_stride, key0, key1, scale, o, m, l, scores); break;
    case 16: attention_chunk_avx2_body(16, q, heads, qhs, kv_heads, k, v, kv_stride, key0, key1, scale, o, m, l, scores); break;
    default:
        attention_chunk_avx2_body(hd / 8, q, heads, qhs, kv_heads, k, v, kv_stride, key0, key1, scale, o, m, l, scores);
        break;
    }
}
#endif  // VK_X86

int vk_attention_decode_chunks_preferred(size_t head_dim) {
#if VK_X86
    // AVX2 too: the head split's strided reads cost the same there (Zen 4 capped at AVX2, 1124 positions from memory:
    // 314-357 us per layer by heads, 77-84 by chunks)
    return head_dim <= VK_ATT_ROW_MAX_HD &&
           ((use_avx512() && head_dim % 16 == 0) || (use_avx2() && head_dim % 8 == 0));
#else
    (void)head_dim;
    return 0;
#endif
}

void vk_attention_decode_chunk(const float *q, size_t heads, size_t q_head_stride, size_t kv_heads, const float *k,
                               const float *v, size_t kv_stride, size_t head_dim, size_t key0, size_t key1,
                               float scale, float *o, float *m, float *l, float *scores) {
    size_t n = key1 > key0 ? key1 - key0 : 0, groups = kv_heads ? heads / kv_heads : 0;
    if (n == 0 || groups == 0) {  // no positions: an empty chunk (m -inf, l 0), which the merge skips
        for (size_t h = 0; h < heads; h++) { m[h] = -INFINITY; l[h] = 0.0f; memset(o + h * head_dim, 0, head_dim * sizeof(float)); }
        return;
    }
#if VK_X86
    if (use_avx512() && head_dim % 16 == 0 && head_dim <= VK_ATT_ROW_MAX_HD) {
        attention_chunk_avx512(q, heads, q_head_stride, kv_heads, k, v, kv_stride, head_dim, key0, key1, scale, o, m,
                               l, scores);
        return;
    }
    if (use_avx2() && head_dim % 8 == 0 && head_dim <= VK_ATT_ROW_MAX_HD) {
        attention_chunk_avx2(q, heads, q_head_stride, kv_heads, k, v, kv_stride, head_dim, key0, key1, scale, o, m, l,
                             scores);
        return;
    }
#endif
    for (size_t h = 0; h < heads; h++) {
        const float *qh = q + h * q_head_stride, *kh = k + (h / groups) * head_dim, *vh = v + (h / groups) * head_dim;
        float *sh = scores + h * n, mh = -INFINITY, lh = 0.0f, *oh = o + h * head_dim;
        for (size_t j = 0; j < n; j++) {
            float d = 0.0f;
            for (size_t c = 0; c < head_dim; c++) d += qh[c] * kh[(key0 + j) * kv_stride + c];
            sh[j] = d * scale;
            mh = sh[j] > mh ? sh[j] : mh;
        }
        memset(oh, 0, head_dim * sizeof(float));
        for (size_t j = 0; j < n; j++) {
            float p = expf(sh[j] - mh);
            lh += p;
            for (size_t c = 0; c < head_dim; c++) oh[c] += p * vh[(key0 + j) * kv_stride + c];
        }
        m[h] = mh;
        l[h] = lh;
    }
}

#if VK_X86
// Head by head: the chunks' weights e^(m_c - M) once, then every 8 columns summed over the chunks in registers and
// scaled by 1 / sum_c w_c l_c on the way out (one pass over o; the axpy loop took 2.9 us per SmolVLM-500M layer on
// Zen 4, a few percent of a decode step's attention at 1124 positions).
#define VK_MERGE_MAX_CHUNKS 64
VK_AVX2 static void attention_merge_avx2(size_t chunks, size_t heads, size_t hd, const float *o, const float *m,
                                         const float *l, float *out, size_t ohs) {
    float w[VK_MERGE_MAX_CHUNKS];
    for (size_t h = 0; h < heads; h++) {
        float mx = -INFINITY, sum = 0.0f;
        for (size_t c = 0; c < chunks; c++) mx = m[c * heads + h] > mx ? m[c * heads + h] : mx;
        float *dst = out + h * ohs;
        if (mx == -INFINITY) {  // no positions at all: zeros, as vk_attention_head
            memset(dst, 0, hd * sizeof(float));
            continue;
        }
        size_t c = 0;
        for (; c < chunks; c++) w[c] = m[c * heads + h] - mx;
        for (c = 0; c + 8 <= chunks; c += 8) _mm256_storeu_ps(w + c, exp256(_mm256_loadu_ps(w + c)));  // 240 expf: 1 us
        for (; c < chunks; c++) w[c] = expf(w[c]);
        for (c = 0; c < chunks; c++) {
            if (l[c * heads + h] == 0.0f) w[c] = 0.0f;  // an empty chunk weighs nothing
            sum += w[c] * l[c * heads + h];
        }
        const __m256 inv = _mm256_set1_ps(1.0f / sum);
        for (size_t d0 = 0; d0 < hd; d0 += 64) {  // 8 independent sums at a time (one chain was latency-bound)
            const size_t ns = (hd - d0 < 64 ? hd - d0 : 64) / 8;
            __m256 a[8];
            for (size_t t = 0; t < ns; t++) a[t] = _mm256_setzero_ps();
            for (size_t c = 0; c < chunks; c++) {
                if (w[c] == 0.0f) continue;
                const __m256 wc = _mm256_set1_ps(w[c]);
                const float *oc = o + (c * heads + h) * hd + d0;
                for (size_t t = 0; t < ns; t++) a[t] = _mm256_fmadd_ps(wc, _mm256_loadu_ps(oc + 8 * t), a[t]);
            }
            for (size_t t = 0; t < ns; t++) _mm256_storeu_ps(dst + d0 + 8 * t, _mm256_mul_ps(a[t], inv));
        }
    }
}
#endif

void vk_attention_decode_merge(size_t chunks, size_t heads, size_t head_dim, const float *o, const float *m,
                               const float *l, float *out, size_t out_head_stride) {
#if VK_X86
    if (use_avx2() && head_dim % 8 == 0 && chunks <= VK_MERGE_MAX_CHUNKS) {
        attention_merge_avx2(chunks, heads, head_dim, o, m, l, out, out_head_stride);
        return;
    }
#endif
    for (size_t h = 0; h < heads; h++) {
        float mx = -INFINITY;
        for (size_t c = 0; c < chunks; c++) mx = m[c * heads + h] > mx ? m[c * heads + h] : mx;
        float *dst = out + h * out_head_stride, sum = 0.0f;
        memset(dst, 0, head_dim * sizeof(float));
        if (mx == -INFINITY) continue;  // no positions at all: zeros, as vk_attention_head
        for (size_t c = 0; c < chunks; c++) {
            if (l[c * heads + h] == 0.0f) continue;  // an empty chunk
            float w = expf(m[c * heads + h] - mx);
            sum += w * l[c * heads + h];
            vk_axpy(w, o + (c * heads + h) * head_dim, dst, head_dim);
        }
        float inv = 1.0f / sum;
        for (size_t d = 0; d < head_dim; d++) dst[d] *= inv;
    }
}

#if VK_X86
// The bandwidth probe's stream: read as the f32 decode body reads its weights (f32_stream_prefetch), so the bound it
// gives is what such a stream reaches.
VK_AVX2 static float sum_avx2(const float *x, size_t count) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    const int pf = f32_stream_prefetch();
    for (; i + 32 <= count; i += 32) {
        if (pf) {
            VK_STREAM_PREFETCH(x + i);
            VK_STREAM_PREFETCH(x + i + 16);
        }
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

// With AVX-512 the peak is that of 512-bit FMAs (what ukr512 issues): two pipes on most server cores.
VK_AVX512 static double fma_loop_avx512(size_t iterations) {
    __m512 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps(0.001f * (float)i);
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (size_t it = 0; it < iterations; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iterations * 12 * 16 * 2;
}
#endif

float vk_sum(const float *x, size_t count) {
#if VK_X86
    if (use_avx2()) return sum_avx2(x, count);
#endif
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= count; i += 4) { s0 += x[i]; s1 += x[i + 1]; s2 += x[i + 2]; s3 += x[i + 3]; }
    for (; i < count; i++) s0 += x[i];
    return s0 + s1 + s2 + s3;
}

double vk_fma_loop(size_t iterations) {
#if VK_X86
    if (use_avx512()) return fma_loop_avx512(iterations);
    if (use_avx2()) return fma_loop_avx2(iterations);
#endif
    float a[8] = {0};
    for (size_t it = 0; it < iterations; it++)
        for (int i = 0; i < 8; i++) a[i] = a[i] * 0.999999f + 1e-7f;
    volatile float sink = a[0] + a[7];
    (void)sink;
    return (double)iterations * 8 * 2;
}

// ---------------------------------------------------------------------------------------------------------------
// Thread pool: persistent workers, a generation counter to publish jobs, spin-then-sleep waiting.
// A decode step of a 360M model makes ~250 fork-joins of a few tens of microseconds each; waking sleeping threads
// (futex, or libdispatch's queue) for each costs several microseconds per call, spinning costs ~100 ns. Workers
// spin for VK_POOL_SPIN_NS after their last job and then sleep on a condition variable.
// ---------------------------------------------------------------------------------------------------------------
#define VK_POOL_SPIN_NS 2000000ull

struct vk_pool {
    size_t threads;  // participants, the caller included
    pthread_t *workers;
    struct vk_pool_arg { struct vk_pool *pool; size_t index; } *args;
    _Atomic size_t generation;
    _Atomic size_t pending;
    _Atomic size_t next;  // the next unclaimed slice of the current job
    _Atomic int busy;
    _Atomic int sleepers;
    _Atomic int stop;
    // The job: written by the caller before it bumps `generation` (seq_cst), read by workers after they see it.
    vk_task_fn fn;
    void *ctx;
    size_t slices;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

static inline void cpu_relax(void) {
#if VK_X86
    __builtin_ia32_pause();
#elif VK_ARM
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *pool_worker(void *arg) {
    struct vk_pool_arg *a = (struct vk_pool_arg *)arg;
    vk_pool *p = a->pool;
    size_t me = a->index, seen = 0;
    for (;;) {
        size_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g == seen) {
            uint64_t t0 = monotonic_ns();
            unsigned spins = 0;
            while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
                if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
                cpu_relax();
                if ((++spins & 127) == 0 && monotonic_ns() - t0 > VK_POOL_SPIN_NS) break;
            }
            if (g == seen) {
                pthread_mutex_lock(&p->mutex);
                atomic_fetch_add(&p->sleepers, 1);
                while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->wake, &p->mutex);
                atomic_fetch_sub(&p->sleepers, 1);
                pthread_mutex_unlock(&p->mutex);
                if (g == seen) return NULL;  // stopped
            }
        }
        seen = g;
        for (size_t s; (s = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed)) < p->slices;)
            p->fn(p->ctx, s, me);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
}

vk_pool *vk_pool_create(size_t threads) {
    if (threads < 1) threads = 1;
    vk_pool *p = (vk_pool *)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = threads;
    pthread_mutex_init(&p->mutex, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (threads > 1) {
        p->workers = (pthread_t *)calloc(threads - 1, sizeof(pthread_t));
        p->args = (struct vk_pool_arg *)calloc(threads - 1, sizeof *p->args);
        if (!p->workers || !p->args) { free(p->workers); free(p->args); free(p); return NULL; }
        for (size_t i = 1; i < threads; i++) {
            p->args[i - 1].pool = p;
            p->args[i - 1].index = i;
            if (pthread_create(&p->workers[i - 1], NULL, pool_worker, &p->args[i - 1]) != 0) {
                p->threads = i;  // run with the workers we got
                break;
            }
        }
    }
    return p;
}

void vk_pool_destroy(vk_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mutex);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mutex);
    for (size_t i = 1; i < p->threads; i++) pthread_join(p->workers[i - 1], NULL);
    pthread_mutex_destroy(&p->mutex);
    pthread_cond_destroy(&p->wake);
    free(p->workers);
    free(p->args);
    free(p);
}

void vk_pool_run(vk_pool *p, size_t slices, vk_task_fn fn, void *ctx) {
    if (slices == 0) return;
    int expected = 0;
    if (!p || p->threads == 1 || slices == 1 || !atomic_compare_exchange_strong(&p->busy, &expected, 1)) {
        for (size_t s = 0; s < slices; s++) fn(ctx, s, 0);  // serial: no pool, nothing to split, or pool in use
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->slices = slices;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);  // published with the job by the generation bump
    atomic_store_explicit(&p->pending, p->threads - 1, memory_order_relaxed);
    atomic_fetch_add(&p->generation, 1);  // seq_cst: publishes the job, ordered before the sleepers check
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mutex);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mutex);
    }
    for (size_t s; (s = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed)) < slices;) fn(ctx, s, 0);
    uint64_t t0 = 0;
    unsigned spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) {
        cpu_relax();
        // A worker may have been descheduled (more threads than free cores): after 50 us, yield the core to it.
        if ((++spins & 127) == 0) {
            uint64_t t = monotonic_ns();
            if (!t0) t0 = t;
            else if (t - t0 > 50000) sched_yield();
        }
    }
    atomic_store_explicit(&p->busy, 0, memory_order_release);
}
