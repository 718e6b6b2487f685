// CKernels: the few loops where SwiftVLM spends its time, in C so each can carry its own ISA attributes.
// Every entry point picks an AVX2/FMA(/F16C) or NEON body at run time and falls back to portable scalar C.
// Matrices are row-major. Weights keep their checkpoint dtype (f32, f16, bf16) and are read in place.
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Weight element types understood by the kernels (values match VLMCore's DType raw values).
typedef enum {
    VK_F32 = 0,
    VK_F16 = 1,
    VK_BF16 = 2,
} vk_dtype;

/// 1 when the AVX2+FMA+F16C bodies are in use (x86-64), 3 when the AVX-512 ones are too (AVX-512 F/BW/VL/DQ: the
/// GEMM; with VNNI also the quantized decode), 2 for NEON (arm64), 0 for the scalar fallback.
int vk_simd_level(void);
/// Force the scalar fallback (1) or restore automatic choice (0); used by the kernel tests.
void vk_force_scalar(int on);
/// The bodies in use, for reports: "avx512-vnni", "avx512", "avx2", "neon-dotprod" (NEON with SDOT), "neon" or
/// "scalar". The environment variable VLM_SIMD=avx2 (or scalar), read once, keeps a process below AVX-512 (or on
/// the scalar bodies).
const char *vk_simd_name(void);
/// Use no body above `max_level` (3: all, 1: AVX2 even where AVX-512 is present); for tests and A/B benchmarks.
void vk_limit_level(int max_level);

/// y[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]) for t in [0, T) and n in [n0, n1).
/// x: [T, K] f32 with row stride ldx; w: [N, K] of `dtype` with row stride K; y: [T, N] with row stride ldy.
/// `scratch` must hold at least 4*K floats (one panel of converted weight rows) when dtype is not f32.
void vk_matmul(const float *x, size_t T, size_t K, size_t ldx,
               const void *w, vk_dtype dtype,
               size_t n0, size_t n1,
               const float *bias,
               float *y, size_t ldy,
               float *scratch);

/// Floats of scratch that vk_matmul_ws wants for one call over output rows [n0, n1) (0 when it needs none).
/// Covers the packed weight and activation panels of the blocked GEMM plus 64-byte alignment slack.
size_t vk_matmul_scratch_floats(size_t T, size_t K, size_t n0, size_t n1);

/// vk_matmul with the size of `scratch` given: when `scratch_floats` is below vk_matmul_scratch_floats(...),
/// the kernel falls back to a buffer of its own (one per thread, kept for the thread's lifetime).
/// T == 1: a streaming matrix-vector product (weights read once, converted on the fly).
/// T >= 2: a cache-blocked GEMM (weights converted to f32 once per call into packed panels, 6x16 register tile);
/// a few tokens (2..4, with AVX-512 2..24 when K <= 1024) take dot products against the unpacked weights instead.
void vk_matmul_ws(const float *x, size_t T, size_t K, size_t ldx,
                  const void *w, vk_dtype dtype,
                  size_t n0, size_t n1,
                  const float *bias,
                  float *y, size_t ldy,
                  float *scratch, size_t scratch_floats);

/// 1 when vk_matmul_bf16_ws multiplies in bf16: AVX-512 BF16 (vdpbf16ps; Zen 4 and later, Intel Cooper Lake,
/// Sapphire Rapids and later) and the AVX-512 bodies in use.
int vk_bf16_products_available(void);
/// Which body vk_matmul_bf16_ws uses for T > 24: 0 none (vk_matmul_ws), 1 AVX-512 BF16 (vdpbf16ps), 2 AMX tiles
/// (TDPBF16PS; Sapphire Rapids and later, where Linux grants the tile state; VLM_AMX=0 turns it off).
int vk_bf16_products_engine(void);
/// Tests and A/B runs: 0 keeps vk_matmul_bf16_ws on the vdpbf16ps body even where AMX is there, 1 allows AMX again.
void vk_bf16_products_use_amx(int enabled);
/// vk_matmul_ws with both operands rounded to bf16 (round to nearest even) and their products summed in f32, where
/// vk_bf16_products_available() and T > 24 (the compute-bound products: prefill chunks, vision tiles); otherwise
/// exactly vk_matmul_ws. Twice the FMA path's multiply-adds per instruction, at the numerics of a bf16 model run.
/// Scratch as for vk_matmul_ws (vk_matmul_scratch_floats is enough).
void vk_matmul_bf16_ws(const float *x, size_t T, size_t K, size_t ldx,
                       const void *w, vk_dtype dtype,
                       size_t n0, size_t n1,
                       const float *bias,
                       float *y, size_t ldy,
                       float *scratch, size_t scratch_floats);

/// Output-row granularity that keeps the GEMM's 16-wide panels whole when a caller splits [0, N) across threads.
#define VK_MATMUL_GRANULARITY 16

/// A quantized weight matrix [N, K]: symmetric, one f16 scale per `group_size` consecutive columns of a row
/// (the last group of a row may be shorter), w[n, k] = q[n, k] * scale[n, k / group_size].
///   bits 8: `data` is [N, K] int8 with q in [-127, 127].
///   bits 4: `data` is [N, (K + 1) / 2] bytes; column k of a row is byte k / 2, low nibble for even k, high for odd;
///           a nibble holds q + 8 (q in [-8, 7]), as llama.cpp's Q4_0. An odd K leaves the last high nibble unused.
/// `scales`: [N, ceil(K / group_size)] IEEE binary16 (as llama.cpp's Q8_0/Q4_0 blocks); int4 scales may be negative.
/// `group_size` must be a positive multiple of VK_QGROUP_MULTIPLE, so a group never starts inside a byte and eight
/// consecutive columns from a multiple of 8 never straddle two groups (one scale per SIMD load).
typedef struct {
    const void *data;
    const uint16_t *scales;
    size_t group_size;
    int bits;
} vk_qmatrix;

#define VK_QGROUP_MULTIPLE 8

/// Bytes of one row of a quantized matrix's `data` (K for int8, (K + 1) / 2 for int4).
size_t vk_qrow_bytes(int bits, size_t K);

/// Quantizes rows [n0, n1) of w ([N, K] of `dtype`, row stride K) into `data` and `scales` laid out as vk_qmatrix
/// (the whole matrix's buffers; only those rows are written). int8: scale = max|w| / 127 of the group, rounded to
/// f16; int4: scale = m / -8 with m the group's value of largest magnitude (llama.cpp's Q4_0 rule, so all 16 levels
/// are used); q = round(w / scale) clamped. A scale that overflows f16 is clamped to ±65504; NaN weights give q = 0
/// or the clamp bound, never undefined behaviour. Returns 0, or -1 when bits/group_size are invalid.
int vk_quantize_rows(const void *w, vk_dtype dtype, size_t K, int bits, size_t group_size, size_t n0, size_t n1,
                     void *data, uint16_t *scales);

/// Row n of a quantized matrix as f32 (K floats): the reference dequantization.
void vk_dequantize_row(const vk_qmatrix *w, size_t K, size_t n, float *dst);

/// 1 when vk_matmul_q_ws with T >= 2 tokens quantizes x to int8 (K and group_size multiples of 32; AVX-512 VNNI hosts
/// from 2 tokens for int4 and 7 for int8, AVX2 hosts for int4 from 2, arm64 with SDOT for both from 2): then each
/// token's row equals a T == 1 call on it (decode always quantizes x given whole 32-column groups).
int vk_quantized_prefill_is_integer(size_t T, size_t K, size_t group_size, int bits);

/// Floats of scratch vk_matmul_q_ws wants for one call over output rows [n0, n1).
size_t vk_matmul_q_scratch_floats(size_t T, size_t K, size_t group_size, size_t n0, size_t n1);

/// vk_matmul_ws over quantized weights: y[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]), x f32.
/// T == 1: streaming GEMV; each weight byte and scale is read once, converted in registers.
/// T >= 2 where vk_quantized_prefill_is_integer (AVX-512 VNNI, int4 on AVX2, arm64 SDOT; whole 32-column groups):
/// each token's x is quantized to int8 as for decode and the product is an int8 GEMM, so every token equals a T == 1 call on its row.
/// Otherwise the blocked f32 GEMM (or a few-token dot-product kernel), weights dequantized to f32 once per call.
/// Invalid bits/group_size (the loader rejects them first) write NaN to the output rather than read out of bounds.
void vk_matmul_q_ws(const float *x, size_t T, size_t K, size_t ldx, const vk_qmatrix *w,
                    size_t n0, size_t n1, const float *bias, float *y, size_t ldy,
                    float *scratch, size_t scratch_floats);

/// Rounds f32 to IEEE binary16 (round to nearest even; overflow to inf, NaN stays NaN), as torch's .half().
void vk_f32_to_f16(const float *src, size_t count, uint16_t *dst);

/// Converts `count` elements of `dtype` at src into f32 at dst.
void vk_to_f32(const void *src, vk_dtype dtype, size_t count, float *dst);

/// Rounds f32 to bf16 (round to nearest even), as torch does.
void vk_f32_to_bf16(const float *src, size_t count, uint16_t *dst);

/// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], for one row of n.
void vk_rmsnorm(const float *x, const float *w, size_t n, float eps, float *out);

/// out[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i] (biased variance, as torch.nn.LayerNorm); b may be NULL.
void vk_layernorm(const float *x, const float *w, const float *b, size_t n, float eps, float *out);

/// In place GELU, tanh approximation (transformers' "gelu_pytorch_tanh" / "gelu_new").
void vk_gelu_tanh(float *x, size_t n);

/// In place GELU, exact erf form (transformers' "gelu").
void vk_gelu_erf(float *x, size_t n);

/// Dot product of two f32 vectors.
float vk_dot(const float *a, const float *b, size_t n);

/// y += a * x.
void vk_axpy(float a, const float *x, float *y, size_t n);

/// In place: x[i] = silu(gate[i]) * x[i]  (SwiGLU with x the "up" projection).
void vk_silu_mul(const float *gate, float *x, size_t n);

/// Numerically stable in-place softmax over n values.
void vk_softmax(float *x, size_t n);

/// One attention head for `nq` consecutive queries. Query i sits at position q_pos0 + i and (causal) sees
/// keys 0 ... q_pos0 + i; keys/values j live at k + j*kv_stride, v + j*kv_stride (head_dim floats each).
/// q: [nq, q_stride], out: [nq, out_stride]. scores: scratch of at least (q_pos0 + nq) floats.
void vk_attention_head(const float *q, size_t nq, size_t q_stride,
                       const float *k, const float *v, size_t kv_stride, size_t head_dim,
                       size_t q_pos0, int causal, size_t n_keys, float scale,
                       float *out, size_t out_stride, float *scores);

/// Decode attention over a long cache, split by positions rather than heads (flash-decoding): one call covers cache
/// positions [key0, key1) for all `heads` query heads (head h reads KV head h / (heads / kv_heads), at k + j *
/// kv_stride + (h / groups) * head_dim, likewise v), reading those rows whole and in order. It leaves each head's
/// softmax unnormalised: m[h] the chunk's largest scaled score, l[h] the sum of exp(s - m[h]), o[h * head_dim ...] the
/// sum of exp(s - m[h]) v. An empty range gives m = -inf, l = 0, o = 0. scores: at least heads * (key1 - key0) floats.
void vk_attention_decode_chunk(const float *q, size_t heads, size_t q_head_stride, size_t kv_heads,
                               const float *k, const float *v, size_t kv_stride, size_t head_dim,
                               size_t key0, size_t key1, float scale, float *o, float *m, float *l, float *scores);
/// The attention output of `chunks` vk_attention_decode_chunk results (chunk c's o at o + c * heads * head_dim, its m
/// and l at m + c * heads, l + c * heads), combined in chunk order: out[h] = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c.
void vk_attention_decode_merge(size_t chunks, size_t heads, size_t head_dim, const float *o, const float *m,
                               const float *l, float *out, size_t out_head_stride);
/// 1 where vk_attention_decode_chunk has a vector body for head_dim (AVX-512 or AVX2 hosts); elsewhere the head-split
/// vk_attention_decode_group is the faster choice.
int vk_attention_decode_chunks_preferred(size_t head_dim);

/// Decode attention of `heads` query heads that share one key/value head (grouped-query attention), one query row
/// each, seeing all n_keys keys (the newest is the query's own): head h's query at q + h * q_head_stride, its output
/// at out + h * out_head_stride. Equals one vk_attention_head call per head (nq 1, q_pos0 n_keys - 1, causal) bit
/// for bit, but reads each block of keys and values once for the group. scores: at least heads * n_keys floats.
void vk_attention_decode_group(const float *q, size_t heads, size_t q_head_stride,
                               const float *k, const float *v, size_t kv_stride, size_t head_dim,
                               size_t n_keys, float scale, float *out, size_t out_head_stride, float *scores);

/// vk_attention_head with its two products in bf16 on AMX tiles, where vk_bf16_products_engine() == 2 and nq >= 16
/// (else exactly vk_attention_head): q, k, v rounded to bf16, scores summed in f32, softmax in f32 (row max, exp,
/// f32 row sums), the unnormalised weights rounded to bf16 for the product with v, each output row divided by its
/// f32 sum. The numerics of a bf16 model run; --bf16-compute uses it for vision and prefill attention.
void vk_attention_head_bf16(const float *q, size_t nq, size_t q_stride,
                            const float *k, const float *v, size_t kv_stride,
                            size_t head_dim, size_t q_pos0, int causal, size_t n_keys,
                            float scale, float *out, size_t out_stride, float *scores);

/// A persistent pool of worker threads for fork-join loops: `vk_pool_run` calls fn(ctx, s, p) for s in [0, slices),
/// p being the participant that runs it (0: the calling thread, 1...: the workers; for per-thread scratch), and
/// returns when all are done. Participants claim slices one at a time from a shared counter, so a participant that
/// gets less CPU time (a busy core, a descheduled vCPU) does fewer of them instead of holding everyone up. Workers spin
/// briefly between jobs (so back-to-back small jobs, as in decoding, pay no wake-up latency) and then sleep. A call
/// made while the pool is already running a job (from another thread, or nested) runs its slices serially on the
/// caller, as participant 0.
typedef struct vk_pool vk_pool;
typedef void (*vk_task_fn)(void *ctx, size_t slice, size_t participant);
/// `threads` counts the caller: threads - 1 workers are started. Returns NULL on failure.
vk_pool *vk_pool_create(size_t threads);
void vk_pool_destroy(vk_pool *pool);
/// slices may exceed the pool's threads (each participant keeps claiming the next unclaimed slice).
void vk_pool_run(vk_pool *pool, size_t slices, vk_task_fn fn, void *ctx);

/// Sums `count` floats with the widest loads available: the read loop of the bandwidth measurement.
float vk_sum(const float *x, size_t count);

/// Runs `iterations` rounds of independent fused multiply-adds in registers and returns the flop count,
/// for measuring the FMA peak of one core.
double vk_fma_loop(size_t iterations);

// Anti-aliased uint8 resampling (resample.c): the two integer passes behind VLMMedia's resizer, exact in any body.
/// Vertical pass, one output row: out[x] = clamp8((2^(precision-1) + sum_j rows[j * row_stride + x] * w[j])
/// >> precision) for x in [0, n), over `taps` input rows starting at `rows`.
void vk_resample_vertical_u8(const uint8_t *rows, size_t row_stride, size_t taps, const int16_t *w, int precision,
                             uint8_t *out, size_t n);
/// Horizontal pass over rows [y0, y1) of an interleaved RGB image `in` (`image_rows` rows of `in_width` pixels):
/// out pixel x of a row = clamp8((2^(precision-1) + sum_{j < counts[x]} in pixel (starts[x] + j) * w[x * wstride
/// + j]) >> precision) per channel. `wstride` must be a multiple of 4, at least every counts[x] rounded up to one,
/// with zero weights past counts[x] (the SIMD bodies read taps in groups of four).
void vk_resample_horizontal_rgb8(const uint8_t *in, size_t in_width, size_t y0, size_t y1, uint8_t *out,
                                 size_t out_width, const int32_t *starts, const int32_t *counts, const int16_t *w,
                                 size_t wstride, int precision, size_t image_rows);

#ifdef __cplusplus
}
#endif

#endif
