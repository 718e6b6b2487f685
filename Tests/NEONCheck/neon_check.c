// The NEON bodies of CKernels against its scalar reference bodies, for a host without an arm64 CPU: Tools/neon-check.sh
// cross-compiles this file with kernels.c and resample.c for aarch64 and runs it under qemu-user (the Swift
// KernelTests do the same comparisons natively on arm64 hosts, and at every x86 level here). Each entry point runs
// twice on the same inputs, once with the NEON bodies and once with vk_force_scalar(1), over shapes that are not
// multiples of any block (GEMM tiles, K blocks, panels, int8 groups, the few-token limits); results must agree within
// f32 summation error, integer paths and conversions exactly. Exit status 1 and one line per failure otherwise.
#include "ckernels.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int failures = 0, checks = 0;
// The case running now, for the fault handler's report.
static char current[160] = "start";
static void on_fault(int sig) {
    char line[220];
    int n = snprintf(line, sizeof line, "FAIL: signal %d (an access past a buffer's end?) in: %s\n", sig, current);
    if (write(1, line, (size_t)n) < 0) _exit(3);
    _exit(1);
}

static uint64_t rng_state = 42;
static float randf(void) {  // uniform in [-1, 1)
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}
static void fill(float *p, size_t n) { for (size_t i = 0; i < n; i++) p[i] = randf(); }
// Every buffer (inputs, outputs, the scratch the kernels ask for) ends at an inaccessible page, so a body that reads or
// writes past what it was given faults (qemu-user honours mprotect; there is no arm64 AddressSanitizer runtime here).
static void *xmalloc(size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (bytes + 16 + page - 1) / page * page + page;
    uint8_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base + len - page, page, PROT_NONE) != 0) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    uint8_t *p = base + len - page - bytes;
    memcpy(p - 16, &base, sizeof base);  // what xfree unmaps
    memcpy(p - 8, &len, sizeof len);
    return p;
}
static void xfree(void *p) {
    if (!p) return;
    uint8_t *base;
    size_t len;
    memcpy(&base, (uint8_t *)p - 16, sizeof base);
    memcpy(&len, (uint8_t *)p - 8, sizeof len);
    munmap(base, len);
}

// Fails unless |fast - ref| <= atol + rtol |ref| everywhere and both agree on NaN-ness; `what` names the case.
static void expect_close_rel(const float *fast, const float *ref, size_t n, float atol, float rtol, const char *what) {
    checks++;
    for (size_t i = 0; i < n; i++) {
        float tol = atol + rtol * fabsf(ref[i]);
        int bad = isnan(fast[i]) != isnan(ref[i]) || (!isnan(ref[i]) && !(fabsf(fast[i] - ref[i]) <= tol));
        if (bad) {
            if (failures++ < 40) printf("FAIL %s: [%zu] neon %.9g vs scalar %.9g (tol %.3g)\n", what, i, fast[i], ref[i], tol);
            return;
        }
    }
}

// An absolute tolerance.
static void expect_close(const float *fast, const float *ref, size_t n, float tol, const char *what) {
    expect_close_rel(fast, ref, n, tol, 0.0f, what);
}

static void expect_same_bytes(const void *fast, const void *ref, size_t bytes, const char *what) {
    checks++;
    if (memcmp(fast, ref, bytes) != 0 && failures++ < 40) printf("FAIL %s: bytes differ\n", what);
}

// ---- dense matmul: every dtype, odd T / K / N, bias, sub-ranges, rows outside [n0, n1) untouched ----------------
static const size_t oddT[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 24, 25, 33, 64, 97, 130};
static const size_t oddK[] = {1, 7, 16, 63, 257, 960, 1031};
static const size_t oddN[] = {1, 5, 12, 17, 100};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void check_matmul(void) {
    const vk_dtype dtypes[] = {VK_F32, VK_F16, VK_BF16};
    const char *names[] = {"f32", "f16", "bf16"};
    for (size_t di = 0; di < 3; di++)
        for (size_t ti = 0; ti < COUNT(oddT); ti++)
            for (size_t ki = 0; ki < COUNT(oddK); ki++)
                for (size_t ni = 0; ni < COUNT(oddN); ni++) {
                    size_t T = oddT[ti], K = oddK[ki], N = oddN[ni];
                    if (T * K * N > 4000000) continue;  // qemu time; the larger shapes are covered by the others
                    snprintf(current, sizeof current, "matmul %s T%zu K%zu N%zu", names[di], T, K, N);
                    float *x = xmalloc(T * K * 4), *wf = xmalloc(N * K * 4), *bias = xmalloc(N * 4);
                    fill(x, T * K); fill(wf, N * K); fill(bias, N);
                    void *w = wf;
                    uint16_t *wh = NULL;
                    if (dtypes[di] == VK_F16) { wh = xmalloc(N * K * 2); vk_f32_to_f16(wf, N * K, wh); w = wh; }
                    if (dtypes[di] == VK_BF16) { wh = xmalloc(N * K * 2); vk_f32_to_bf16(wf, N * K, wh); w = wh; }
                    float *yf = xmalloc(T * N * 4), *yr = xmalloc(T * N * 4);
                    // a range that starts and ends inside 16-row panels when N allows it
                    size_t n0 = N > 20 ? 3 : 0, n1 = N > 20 ? N - 2 : N;
                    for (int b = 0; b < 2; b++) {
                        for (size_t i = 0; i < T * N; i++) yf[i] = yr[i] = -777.0f;
                        size_t sf = vk_matmul_scratch_floats(T, K, n0, n1);
                        float *scratch = xmalloc(sf * 4 + 64);
                        vk_force_scalar(0);
                        vk_matmul_ws(x, T, K, K, w, dtypes[di], n0, n1, b ? bias : NULL, yf, N, scratch, sf);
                        vk_force_scalar(1);
                        vk_matmul_ws(x, T, K, K, w, dtypes[di], n0, n1, b ? bias : NULL, yr, N, NULL, 0);
                        vk_force_scalar(0);
                        xfree(scratch);
                        char what[96];
                        snprintf(what, sizeof what, "matmul %s T%zu K%zu N%zu [%zu,%zu) bias %d", names[di], T, K, N, n0, n1, b);
                        expect_close(yf, yr, T * N, 1e-5f * sqrtf((float)K) + 1e-6f, what);
                    }
                    // no scratch at all (the kernel's own buffer) gives the same result
                    for (size_t i = 0; i < T * N; i++) yf[i] = -777.0f;
                    vk_matmul_ws(x, T, K, K, w, dtypes[di], n0, n1, bias, yf, N, NULL, 0);
                    char what[96];
                    snprintf(what, sizeof what, "matmul %s T%zu K%zu N%zu without scratch", names[di], T, K, N);
                    expect_close(yf, yr, T * N, 1e-5f * sqrtf((float)K) + 1e-6f, what);
                    xfree(x); xfree(wf); xfree(bias); xfree(wh); xfree(yf); xfree(yr);
                }
}

// ---- quantized matmul: int8 / int4, group sizes, odd K (a short last group), decode and prefill token counts -----
static void check_quantized(void) {
    const size_t Ts[] = {1, 2, 3, 6, 7, 8, 13, 17, 33, 130};
    const size_t Ks[] = {8, 32, 96, 200, 257, 960};
    const size_t Gs[] = {8, 32, 64};
    const size_t Ns[] = {1, 17, 70};
    for (int bits = 8; bits >= 4; bits -= 4)
        for (size_t gi = 0; gi < COUNT(Gs); gi++)
            for (size_t ki = 0; ki < COUNT(Ks); ki++)
                for (size_t ni = 0; ni < COUNT(Ns); ni++) {
                    size_t K = Ks[ki], N = Ns[ni], G = Gs[gi], ng = (K + G - 1) / G;
                    float *wf = xmalloc(N * K * 4), *bias = xmalloc(N * 4);
                    fill(wf, N * K); fill(bias, N);
                    uint8_t *data = xmalloc(N * vk_qrow_bytes(bits, K));
                    uint16_t *scales = xmalloc(N * ng * 2);
                    if (vk_quantize_rows(wf, VK_F32, K, bits, G, 0, N, data, scales) != 0) {
                        printf("FAIL quantize bits %d G %zu\n", bits, G);
                        failures++;
                        continue;
                    }
                    vk_qmatrix q = {data, scales, G, bits};
                    for (size_t ti = 0; ti < COUNT(Ts); ti++) {
                        size_t T = Ts[ti];
                        snprintf(current, sizeof current, "matmul q%d G%zu T%zu K%zu N%zu", bits, G, T, K, N);
                        float *x = xmalloc(T * K * 4), *yf = xmalloc(T * N * 4), *yr = xmalloc(T * N * 4);
                        fill(x, T * K);
                        if (ti == 0) x[K / 2] = 0.0f;  // a zero activation in a group
                        size_t n0 = N > 20 ? 5 : 0, n1 = N > 20 ? N - 3 : N;
                        for (size_t i = 0; i < T * N; i++) yf[i] = yr[i] = -777.0f;
                        size_t sf = vk_matmul_q_scratch_floats(T, K, G, n0, n1);
                        float *scratch = xmalloc(sf * 4 + 64);
                        vk_force_scalar(0);
                        vk_matmul_q_ws(x, T, K, K, &q, n0, n1, bias, yf, N, scratch, sf);
                        int integer = vk_quantized_prefill_is_integer(T, K, G, bits);
                        if (integer) {
                            // x quantized as decode does: each token's row equals the NEON decode on it bit for bit
                            // and the scalar decode within f32 rounding
                            float *yd = xmalloc(T * N * 4);
                            for (size_t i = 0; i < T * N; i++) yd[i] = -777.0f;
                            for (size_t t = 0; t < T; t++)
                                vk_matmul_q_ws(x + t * K, 1, K, K, &q, n0, n1, bias, yd + t * N, N, NULL, 0);
                            char what[96];
                            snprintf(what, sizeof what, "integer prefill q%d G%zu T%zu K%zu N%zu vs decode", bits, G, T, K, N);
                            expect_same_bytes(yf, yd, T * N * 4, what);
                            xfree(yd);
                        }
                        vk_force_scalar(1);
                        for (size_t t = 0; t < (integer ? T : 1); t++)  // the scalar decode per token, or one call
                            vk_matmul_q_ws(x + t * K, integer ? 1 : T, K, K, &q, n0, n1, bias, yr + t * N, N, NULL, 0);
                        vk_force_scalar(0);
                        // The same quantization of x on both sides (integer decode) or f32 sums: f32 rounding only.
                        char what[96];
                        snprintf(what, sizeof what, "matmul q%d G%zu T%zu K%zu N%zu", bits, G, T, K, N);
                        expect_close(yf, yr, T * N, 2e-5f * sqrtf((float)K) + 1e-5f, what);
                        xfree(scratch); xfree(x); xfree(yf); xfree(yr);
                    }
                    xfree(wf); xfree(bias); xfree(data); xfree(scales);
                }
}

// ---- attention: causal and bidirectional, odd head sizes and key counts; decode groups --------------------------
static void check_attention(void) {
    const size_t hds[] = {8, 37, 64};
    const size_t nqs[] = {1, 3, 4, 17, 70, 130};
    const size_t pos0s[] = {0, 5, 130};
    for (size_t hi = 0; hi < COUNT(hds); hi++)
        for (size_t qi = 0; qi < COUNT(nqs); qi++)
            for (size_t pi = 0; pi < COUNT(pos0s); pi++)
                for (int causal = 0; causal < 4; causal++) {
                    // causal & 2: sharp scores (q x 40), so most weights underflow towards 0 (the exponential's
                    // lower clamp) and the row's largest dominate
                    size_t hd = hds[hi], nq = nqs[qi], p0 = pos0s[pi], nk = p0 + nq, stride = hd + 3;
                    snprintf(current, sizeof current, "attention hd%zu nq%zu p0 %zu mode %d", hd, nq, p0, causal);
                    float *q = xmalloc(nq * stride * 4), *k = xmalloc(nk * stride * 4), *v = xmalloc(nk * stride * 4);
                    float *of = xmalloc(nq * stride * 4), *orf = xmalloc(nq * stride * 4), *s = xmalloc((nk + 64) * 4 * 4);
                    fill(q, nq * stride); fill(k, nk * stride); fill(v, nk * stride);
                    if (causal & 2)
                        for (size_t i = 0; i < nq * stride; i++) q[i] *= 40.0f;
                    for (size_t i = 0; i < nq * stride; i++) of[i] = orf[i] = -777.0f;
                    float scale = 1.0f / sqrtf((float)hd);
                    vk_force_scalar(0);
                    vk_attention_head(q, nq, stride, k, v, stride, hd, p0, causal & 1, nk, scale, of, stride, s);
                    vk_force_scalar(1);
                    vk_attention_head(q, nq, stride, k, v, stride, hd, p0, causal & 1, nk, scale, orf, stride, s);
                    vk_force_scalar(0);
                    char what[96];
                    snprintf(what, sizeof what, "attention hd%zu nq%zu p0 %zu causal %d sharp %d", hd, nq, p0, causal & 1, causal >> 1);
                    expect_close(of, orf, nq * stride, 2e-5f, what);
                    xfree(q); xfree(k); xfree(v); xfree(of); xfree(orf); xfree(s);
                }
    // decode: 3 query heads on one KV head, against one vk_attention_head call per head (bit for bit by contract)
    const size_t nks[] = {1, 9, 200};
    for (size_t i = 0; i < COUNT(nks); i++) {
        size_t hd = 64, heads = 3, nk = nks[i];
        snprintf(current, sizeof current, "decode group n_keys %zu", nk);
        float *q = xmalloc(heads * hd * 4), *k = xmalloc(nk * hd * 4), *v = xmalloc(nk * hd * 4);
        float *og = xmalloc(heads * hd * 4), *oh = xmalloc(heads * hd * 4), *s = xmalloc(heads * nk * 4 + 256);
        fill(q, heads * hd); fill(k, nk * hd); fill(v, nk * hd);
        vk_attention_decode_group(q, heads, hd, k, v, hd, hd, nk, 0.125f, og, hd, s);
        for (size_t h = 0; h < heads; h++)
            vk_attention_head(q + h * hd, 1, hd, k, v, hd, hd, nk - 1, 1, nk, 0.125f, oh + h * hd, hd, s);
        char what[64];
        snprintf(what, sizeof what, "decode group n_keys %zu", nk);
        expect_same_bytes(og, oh, heads * hd * 4, what);
        vk_force_scalar(1);
        vk_attention_decode_group(q, heads, hd, k, v, hd, hd, nk, 0.125f, oh, hd, s);
        vk_force_scalar(0);
        snprintf(what, sizeof what, "decode group n_keys %zu vs scalar", nk);
        expect_close(og, oh, heads * hd, 2e-5f, what);
        xfree(q); xfree(k); xfree(v); xfree(og); xfree(oh); xfree(s);
    }
}

// ---- elementwise kernels, norms, conversions, the resampler ---------------------------------------------------
static void check_elementwise(void) {
    const size_t ns[] = {1, 3, 4, 15, 16, 17, 63, 960, 1031};
    for (size_t i = 0; i < COUNT(ns); i++) {
        size_t n = ns[i];
        snprintf(current, sizeof current, "elementwise n%zu", n);
        float *a = xmalloc(n * 4), *b = xmalloc(n * 4), *f = xmalloc(n * 4), *r = xmalloc(n * 4), *w = xmalloc(n * 4);
        fill(a, n); fill(b, n); fill(w, n);
        for (size_t j = 0; j < n; j++) a[j] *= 6.0f;  // past the activations' interesting range
        if (n >= 4) { a[0] = -100.0f; a[1] = 100.0f; a[2] = NAN; }  // the exponentials' clamps, NaN propagation
        char what[64];
#define BOTH(EXPR_F, EXPR_R, TOL, NAME)                                                                                \
    vk_force_scalar(0); EXPR_F; vk_force_scalar(1); EXPR_R; vk_force_scalar(0);                                       \
    snprintf(what, sizeof what, "%s n%zu", NAME, n); expect_close(f, r, n, TOL, what);
        BOTH((memcpy(f, a, n * 4), vk_gelu_tanh(f, n)), (memcpy(r, a, n * 4), vk_gelu_tanh(r, n)), 1e-5f, "gelu_tanh")
        BOTH((memcpy(f, a, n * 4), vk_gelu_erf(f, n)), (memcpy(r, a, n * 4), vk_gelu_erf(r, n)), 1e-5f, "gelu_erf")
#define BOTH_REL(EXPR_F, EXPR_R, ATOL, RTOL, NAME)                                                                     \
    vk_force_scalar(0); EXPR_F; vk_force_scalar(1); EXPR_R; vk_force_scalar(0);                                       \
    snprintf(what, sizeof what, "%s n%zu", NAME, n); expect_close_rel(f, r, n, ATOL, RTOL, what);
        BOTH_REL((memcpy(f, b, n * 4), vk_silu_mul(a, f, n)), (memcpy(r, b, n * 4), vk_silu_mul(a, r, n)), 1e-7f, 2e-6f,
                 "silu_mul")
        BOTH_REL((memcpy(f, a, n * 4), vk_softmax(f, n)), (memcpy(r, a, n * 4), vk_softmax(r, n)), 1e-12f, 2e-6f, "softmax")
#undef BOTH_REL
        BOTH(vk_rmsnorm(a, w, n, 1e-5f, f), vk_rmsnorm(a, w, n, 1e-5f, r), 1e-5f, "rmsnorm")
        BOTH(vk_layernorm(a, w, b, n, 1e-6f, f), vk_layernorm(a, w, b, n, 1e-6f, r), 2e-5f, "layernorm")
        BOTH((memcpy(f, b, n * 4), vk_axpy(0.37f, a, f, n)), (memcpy(r, b, n * 4), vk_axpy(0.37f, a, r, n)), 1e-6f, "axpy")
#undef BOTH
        vk_force_scalar(0); float df = vk_dot(a, b, n); vk_force_scalar(1); float dr = vk_dot(a, b, n); vk_force_scalar(0);
        snprintf(what, sizeof what, "dot n%zu", n); expect_close(&df, &dr, 1, 1e-5f * sqrtf((float)n) * 6, what);
        // conversions: exact bits
        uint16_t *hf = xmalloc(n * 2), *hr = xmalloc(n * 2);
        vk_force_scalar(0); vk_f32_to_bf16(a, n, hf); vk_force_scalar(1); vk_f32_to_bf16(a, n, hr); vk_force_scalar(0);
        snprintf(what, sizeof what, "f32_to_bf16 n%zu", n); expect_same_bytes(hf, hr, n * 2, what);
        vk_force_scalar(0); vk_f32_to_f16(a, n, hf); vk_force_scalar(1); vk_f32_to_f16(a, n, hr); vk_force_scalar(0);
        snprintf(what, sizeof what, "f32_to_f16 n%zu", n); expect_same_bytes(hf, hr, n * 2, what);
        for (int dt = 1; dt <= 2; dt++) {
            vk_force_scalar(0); vk_to_f32(hf, (vk_dtype)dt, n, f); vk_force_scalar(1); vk_to_f32(hf, (vk_dtype)dt, n, r);
            vk_force_scalar(0);
            snprintf(what, sizeof what, "to_f32 dtype %d n%zu", dt, n); expect_same_bytes(f, r, n * 4, what);
        }
        xfree(a); xfree(b); xfree(f); xfree(r); xfree(w); xfree(hf); xfree(hr);
    }
}

static void check_resample(void) {
    // vertical: taps rows of width n, weights summing to 2^precision (plus overshoot, which must clamp)
    const size_t widths[] = {1, 7, 16, 33, 100};
    for (size_t wi = 0; wi < COUNT(widths); wi++)
        for (size_t taps = 1; taps <= 9; taps += 4) {
            size_t n = widths[wi] * 3;
            snprintf(current, sizeof current, "resample vertical n%zu taps %zu", n, taps);
            uint8_t *rows = xmalloc(taps * n), *of = xmalloc(n), *orr = xmalloc(n);
            int16_t wt[16];
            for (size_t i = 0; i < taps * n; i++) rows[i] = (uint8_t)(randf() * 127 + 128);
            for (size_t j = 0; j < taps; j++) wt[j] = (int16_t)(randf() * 20000);
            vk_force_scalar(0); vk_resample_vertical_u8(rows, n, taps, wt, 14, of, n);
            vk_force_scalar(1); vk_resample_vertical_u8(rows, n, taps, wt, 14, orr, n);
            vk_force_scalar(0);
            char what[64];
            snprintf(what, sizeof what, "resample vertical n%zu taps %zu", n, taps);
            expect_same_bytes(of, orr, n, what);
            xfree(rows); xfree(of); xfree(orr);
        }
    snprintf(current, sizeof current, "resample horizontal");
    // horizontal: a 13-pixel-wide, 3-row image to 5 output pixels of up to 6 taps (stride 8, zero-padded)
    size_t in_w = 13, out_w = 5, ws = 8, rowsN = 3;
    uint8_t *in = xmalloc(in_w * rowsN * 3), *of = xmalloc(out_w * rowsN * 3), *orr = xmalloc(out_w * rowsN * 3);
    for (size_t i = 0; i < in_w * rowsN * 3; i++) in[i] = (uint8_t)(randf() * 127 + 128);
    int32_t starts[5], counts[5];
    int16_t wt[5 * 8];
    memset(wt, 0, sizeof wt);
    for (size_t x = 0; x < out_w; x++) {
        starts[x] = (int32_t)(x * 2);
        counts[x] = (int32_t)(x + 2 <= 6 ? x + 2 : 6);
        if (starts[x] + counts[x] > (int32_t)in_w) counts[x] = (int32_t)in_w - starts[x];
        for (int j = 0; j < counts[x]; j++) wt[x * ws + (size_t)j] = (int16_t)(randf() * 12000 + 4000);
    }
    vk_force_scalar(0);
    vk_resample_horizontal_rgb8(in, in_w, 0, rowsN, of, out_w, starts, counts, wt, ws, 14, rowsN);
    vk_force_scalar(1);
    vk_resample_horizontal_rgb8(in, in_w, 0, rowsN, orr, out_w, starts, counts, wt, ws, 14, rowsN);
    vk_force_scalar(0);
    expect_same_bytes(of, orr, out_w * rowsN * 3, "resample horizontal");
    xfree(in); xfree(of); xfree(orr);
}

// argv[1]: the bodies the CPU should select ("neon-dotprod" or "neon", as vk_simd_name reports them; default: either).
int main(int argc, char **argv) {
    const char *expected = argc > 1 ? argv[1] : NULL;
    if (vk_simd_level() != 2 || (expected && strcmp(vk_simd_name(), expected) != 0)) {
        printf("FAIL: expected the %s bodies, found level %d (%s)\n", expected ? expected : "NEON", vk_simd_level(),
               vk_simd_name());
        return 1;
    }
    signal(SIGSEGV, on_fault);
    signal(SIGBUS, on_fault);
    clock_t start = clock();
    check_elementwise();
    check_resample();
    check_attention();
    check_quantized();
    check_matmul();
    printf("neon_check: %d comparisons, %d failures, %.1f s (bodies: %s)\n", checks, failures,
           (double)(clock() - start) / CLOCKS_PER_SEC, vk_simd_name());
    return failures ? 1 : 0;
}
