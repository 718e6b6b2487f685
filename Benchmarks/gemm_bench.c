// Micro-benchmark of the CKernels matmul (prefill GEMM and decode GEMV) and attention, outside Swift.
//
//   bash Benchmarks/kernels.sh                  # builds this against Sources/CKernels/kernels.c and runs it
//   cc -O2 -I Sources/CKernels/include Benchmarks/gemm_bench.c Sources/CKernels/kernels.c -lpthread -lm -o /tmp/gb
//   /tmp/gb [--threads N] [--runs R] [--min] [--only gemm|gemv|attn|peak] [--shape SUBSTRING] [--products f32|bf16]
//   (--shape: gemm shapes whose name holds SUBSTRING; decode formats likewise, e.g. --only gemv --shape q4)
//
// Threads work as Linear.apply splits them: output rows [0, N) cut into one contiguous range per thread (multiples
// of the GEMM panel width), every thread calling vk_matmul on its range. The threads here are persistent and meet at
// a spin barrier, so what is timed is the kernels, not thread start-up. Figures: median of `runs` timed runs
// (each run repeats the call until it lasts >= 0.2 s), GFLOP/s and % of the FMA peak measured here with the same
// threads (vk_fma_loop). Decode: one pass over the weight matrices of a SmolVLM-500M decode step (32 layers of
// q/k/v/o/gate/up/down plus the tied lm_head; bf16 723.8 MB, f32, int8 and int4 with 32-column groups) per token,
// against the read bandwidth measured with vk_sum over a 512 MB buffer and against vk_sum over the same bytes.
//
// Builds against an older kernels.c too (no vk_matmul_ws there): compile with -DVK_OLD_API.
#define _GNU_SOURCE
#include "ckernels.h"
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <time.h>

#ifndef VK_MATMUL_GRANULARITY
#define VK_MATMUL_GRANULARITY 12
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---- a tiny fork-join team with a spin barrier ------------------------------------------------------------------
typedef void (*job_fn)(void *ctx, int tid, int nthreads);
static struct {
    int n;
    _Atomic long gen;
    _Atomic int done;
    job_fn fn;
    void *ctx;
} team;

static void *team_worker(void *arg) {
    int tid = (int)(intptr_t)arg;
    long seen = 0;
    for (;;) {
        long g;
        while ((g = atomic_load_explicit(&team.gen, memory_order_acquire)) == seen) __builtin_ia32_pause();
        seen = g;
        if (g < 0) return NULL;
        team.fn(team.ctx, tid, team.n);
        atomic_fetch_add_explicit(&team.done, 1, memory_order_acq_rel);
    }
}

static void team_start(int n) {
    team.n = n;
    for (int i = 1; i < n; i++) {
        pthread_t th;
        pthread_create(&th, NULL, team_worker, (void *)(intptr_t)i);
        pthread_detach(th);
    }
}

static _Atomic long team_runs;  // calls of team_run so far (mm_run's cold-weights rotation)

static void team_run(job_fn fn, void *ctx) {
    atomic_fetch_add(&team_runs, 1);
    if (team.n == 1) { fn(ctx, 0, 1); return; }
    team.fn = fn;
    team.ctx = ctx;
    atomic_store(&team.done, 0);
    atomic_fetch_add_explicit(&team.gen, 1, memory_order_release);
    fn(ctx, 0, team.n);
    while (atomic_load_explicit(&team.done, memory_order_acquire) < team.n - 1) __builtin_ia32_pause();
}

// Range of thread tid as ThreadPool.parallelRanges cuts it.
static void slice_range(size_t count, size_t g, int tid, int n, size_t *lo, size_t *hi) {
    size_t units = (count + g - 1) / g;
    size_t slices = units < (size_t)n ? units : (size_t)n;
    *lo = *hi = 0;
    if ((size_t)tid >= slices) return;
    size_t u0 = units * (size_t)tid / slices, u1 = units * ((size_t)tid + 1) / slices;
    *lo = u0 * g < count ? u0 * g : count;
    *hi = u1 * g < count ? u1 * g : count;
}

// ---- matmul job -----------------------------------------------------------------------------------------------
typedef struct {
    const float *x;
    size_t T, K, N;
    const void *w;
    vk_dtype dt;
    vk_qmatrix q;  // q.data set: the weights quantized (q8 / q4 rows), multiplied by vk_matmul_q_ws
    const void *copies[64];  // GB_COLD_MB: copies of w, one per call in turn, so the weights come from memory
    int ncopies;
    float *y;
    float *scratch[64];
    size_t scratch_floats[64];
} mm_job;

static int g_bf16_products = 0;  // --products bf16: vk_matmul_bf16_ws (VLM_AMX=0 keeps it off the AMX tiles)

static void mm_run(void *c, int tid, int n) {
    mm_job *j = (mm_job *)c;
    size_t lo, hi;
    slice_range(j->N, VK_MATMUL_GRANULARITY, tid, n, &lo, &hi);
    if (lo >= hi) return;
#ifdef VK_OLD_API
    vk_matmul(j->x, j->T, j->K, j->K, j->w, j->dt, lo, hi, NULL, j->y, j->N, j->scratch[tid]);
#else
    const void *w = j->ncopies ? j->copies[atomic_load(&team_runs) % j->ncopies] : j->w;
    if (j->q.data)
        vk_matmul_q_ws(j->x, j->T, j->K, j->K, &j->q, lo, hi, NULL, j->y, j->N, j->scratch[tid], j->scratch_floats[tid]);
    else if (g_bf16_products)
        vk_matmul_bf16_ws(j->x, j->T, j->K, j->K, w, j->dt, lo, hi, NULL, j->y, j->N, j->scratch[tid], j->scratch_floats[tid]);
    else
        vk_matmul_ws(j->x, j->T, j->K, j->K, w, j->dt, lo, hi, NULL, j->y, j->N, j->scratch[tid], j->scratch_floats[tid]);
#endif
}

static size_t scratch_need(size_t T, size_t K, size_t N, int nthreads, int quantized) {
#ifdef VK_OLD_API
    (void)T; (void)N; (void)nthreads; (void)quantized;
    return 4 * K;
#else
    size_t best = 4 * K;
    for (int t = 0; t < nthreads; t++) {
        size_t lo, hi;
        slice_range(N, VK_MATMUL_GRANULARITY, t, nthreads, &lo, &hi);
        size_t s = quantized ? vk_matmul_q_scratch_floats(T, K, 32, lo, hi) : vk_matmul_scratch_floats(T, K, lo, hi);
        if (s > best) best = s;
    }
    return best;
#endif
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((int32_t)(rng >> 32)) / 2147483648.0f;
}

static void *make_weights(size_t count, vk_dtype dt) {
    if (dt == VK_F32) {
        float *w = malloc(count * 4);
        for (size_t i = 0; i < count; i++) w[i] = 0.02f * frand();
        return w;
    }
    uint16_t *w = malloc(count * 2);
    for (size_t i = 0; i < count; i++) {
        float f = 0.02f * frand();
        if (dt == VK_BF16) {
            vk_f32_to_bf16(&f, 1, &w[i]);
        } else {
            _Float16 h = (_Float16)f;
            memcpy(&w[i], &h, 2);
        }
    }
    return w;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int use_min = 0;  // --min: report the fastest run instead of the median (for tuning on a busy machine)

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    if (use_min) return v[0];
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Seconds per call: each run repeats until >= min_s, median over runs.
static double time_job(job_fn fn, void *ctx, int runs, double min_s) {
    team_run(fn, ctx);  // warm-up
    double v[64];
    for (int r = 0; r < runs; r++) {
        int reps = 0;
        double t0 = now(), t;
        do { team_run(fn, ctx); reps++; t = now() - t0; } while (t < min_s);
        v[r] = t / reps;
    }
    return median(v, runs);
}

// ---- peak and bandwidth probes --------------------------------------------------------------------------------
static _Atomic long long fma_flops;
static void fma_run(void *c, int tid, int n) {
    (void)c; (void)tid; (void)n;
    double f = vk_fma_loop(20000000);
    atomic_fetch_add(&fma_flops, (long long)f);
}

static double measure_peak(int runs) {
    double v[64];
    for (int r = 0; r < runs; r++) {
        atomic_store(&fma_flops, 0);
        double t0 = now();
        team_run(fma_run, NULL);
        v[r] = (double)atomic_load(&fma_flops) / (now() - t0);
    }
    // Best run, as HardwareProbe does: the peak is what the machine can do when nobody else runs.
    qsort(v, (size_t)runs, sizeof(double), cmp_double);
    return v[runs - 1];
}

typedef struct { const float *buf; size_t count; } sum_job;
static void sum_run(void *c, int tid, int n) {
    sum_job *j = (sum_job *)c;
    size_t lo, hi;
    slice_range(j->count, 4096, tid, n, &lo, &hi);
    volatile float s = vk_sum(j->buf + lo, hi - lo);
    (void)s;
}

static double measure_bandwidth(int runs) {
    size_t count = (size_t)512 * 1024 * 1024 / 4;
    float *buf = malloc(count * 4);
    for (size_t i = 0; i < count; i++) buf[i] = 1.0f;
    sum_job j = {buf, count};
    double best = 0;
    for (int r = 0; r < runs + 2; r++) {
        double t0 = now();
        team_run(sum_run, &j);
        double bw = (double)count * 4 / (now() - t0);
        if (bw > best) best = bw;
    }
    free(buf);
    return best;
}

// ---- decode: one SmolVLM-500M token's worth of GEMVs ------------------------------------------------------
// bits 8 / 4: the weights quantized (vk_quantize_rows, 32-column groups) and multiplied by vk_matmul_q_ws;
// stream: each thread runs vk_sum over the bytes its slice of every matrix holds instead (the floor a kernel that
// only reads its weights would reach with the same slicing and joins).
typedef struct {
    int nmats, bits, stream;
    size_t K[8 * 32 + 1], N[8 * 32 + 1];
    void *w[8 * 32 + 1];
    vk_qmatrix q[8 * 32 + 1];
    float *x, *y;
    float *scratch[64];
    vk_dtype dt;
} decode_model;

typedef struct { decode_model *m; int i; } gemv_job;

static void gemv_run(void *c, int tid, int n) {
    gemv_job *j = (gemv_job *)c;
    decode_model *m = j->m;
    size_t K = m->K[j->i], N = m->N[j->i], lo, hi;
    slice_range(N, VK_MATMUL_GRANULARITY, tid, n, &lo, &hi);
    if (lo >= hi) return;
    size_t row_bytes = m->bits ? vk_qrow_bytes(m->bits, K) : K * (m->dt == VK_F32 ? 4 : 2);
    const void *data = m->bits ? m->q[j->i].data : m->w[j->i];
    if (m->stream) {
        volatile float s = vk_sum((const float *)((const char *)data + lo * row_bytes), (hi - lo) * row_bytes / 4);
        (void)s;
    } else if (m->bits) {
        vk_matmul_q_ws(m->x, 1, K, K, &m->q[j->i], lo, hi, NULL, m->y, N, m->scratch[tid], 1 << 18);
    } else {
#ifdef VK_OLD_API
        vk_matmul(m->x, 1, K, K, m->w[j->i], m->dt, lo, hi, NULL, m->y, N, m->scratch[tid]);
#else
        vk_matmul_ws(m->x, 1, K, K, m->w[j->i], m->dt, lo, hi, NULL, m->y, N, m->scratch[tid], 1 << 18);
#endif
    }
}

static void gemv_one(decode_model *m, int i) {
    gemv_job j = {m, i};
    team_run(gemv_run, &j);
}

static void print_mode(const char *what) { printf("\n== %s ==\n", what); }

int main(int argc, char **argv) {
    int threads = 2, runs = 5;
    const char *only = NULL, *shape_filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--products") && i + 1 < argc) g_bf16_products = !strcmp(argv[++i], "bf16");
        else if (!strcmp(argv[i], "--min")) use_min = 1;
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) shape_filter = argv[++i];
        else { fprintf(stderr, "usage: %s [--threads N] [--runs R] [--min] [--only gemm|gemv|attn|peak] [--shape SUBSTRING] [--products f32|bf16]\n", argv[0]); return 2; }
    }
    if (runs > 64) runs = 64;
    team_start(threads);
#ifdef VK_OLD_API
    printf("simd level %d, threads %d, runs %d (median)\n", vk_simd_level(), threads, runs);
#else
    printf("simd %s, threads %d, runs %d (median)\n", vk_simd_name(), threads, runs);
#endif
    double peak = measure_peak(3);
    printf("FMA peak %.1f GFLOP/s (%d threads, best of 3)\n", peak / 1e9, threads);
    if (only && !strcmp(only, "peak")) return 0;

    if (!only || !strcmp(only, "gemm")) {
        print_mode("prefill GEMM: y[T, N] = x[T, K] W[N, K]^T");
#ifndef VK_OLD_API
        if (g_bf16_products)
            printf("products in bf16 (vk_matmul_bf16_ws), engine %d (2 AMX tiles, 1 vdpbf16ps, 0 none: f32 FMA)\n",
                   vk_bf16_products_engine());
#endif
        struct { size_t T, K, N; const char *what; } shapes[] = {
            {128, 960, 2560, "SmolLM2-360M gate/up"},
            {128, 2560, 960, "SmolLM2-360M down"},
            {128, 960, 960, "SmolLM2-360M q/o"},
            {128, 960, 320, "SmolLM2-360M k/v"},
            {512, 960, 2560, "gate/up, 512 tokens"},
            {1024, 960, 2560, "gate/up, 1024 tokens"},
            {1024, 768, 3072, "vision fc1 (768 -> 3072)"},
            {1024, 3072, 768, "vision fc2 (3072 -> 768)"},
            {1024, 768, 768, "vision q/k/v/o"},
            {5, 960, 2560, "5 tokens"},
            {8, 960, 2560, "8 tokens"},
            {16, 960, 2560, "16 tokens"},
            {24, 960, 2560, "24 tokens"},
            {32, 960, 2560, "32 tokens"},
            {48, 960, 2560, "48 tokens"},
            {64, 960, 2560, "64 tokens"},
            {16, 2560, 960, "down, 16 tokens"},
            {48, 2560, 960, "down, 48 tokens"},
            {48, 960, 320, "k/v, 48 tokens"},
        };
        // GB_SHAPE=T,K,N (environment): time that one shape instead of the table (blocking experiments).
        const char *custom = getenv("GB_SHAPE");
        size_t nshapes = sizeof shapes / sizeof shapes[0];
        if (custom && sscanf(custom, "%zu,%zu,%zu", &shapes[0].T, &shapes[0].K, &shapes[0].N) == 3) {
            shapes[0].what = "GB_SHAPE";
            nshapes = 1;
        }
        // f32 / bf16 / f16 weights as stored, q8 / q4 quantized from bf16 (vk_quantize_rows, 32-column groups)
        struct { vk_dtype dt; int bits; const char *name; } dts[] = {
            {VK_F32, 0, "f32"}, {VK_BF16, 0, "bf16"}, {VK_F16, 0, "f16"}, {VK_BF16, 8, "q8"}, {VK_BF16, 4, "q4"}};
        printf("%-28s %5s %5s %5s %5s %9s %9s %7s\n", "shape", "T", "K", "N", "dtype", "ms", "GFLOP/s", "%peak");
        for (size_t s = 0; s < nshapes; s++) {
            if (shape_filter && !strstr(shapes[s].what, shape_filter)) continue;
            for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
                // GB_DTYPE=f32|bf16|f16|q8|q4: that weight type only (profiling one case)
                const char *only_dt = getenv("GB_DTYPE");
                if (only_dt && strcmp(only_dt, dts[d].name)) continue;
                size_t T = shapes[s].T, K = shapes[s].K, N = shapes[s].N;
#ifdef VK_OLD_API
                if (dts[d].bits) continue;
#endif
                mm_job j;
                memset(&j, 0, sizeof j);
                float *x = malloc(T * K * 4);
                for (size_t i = 0; i < T * K; i++) x[i] = frand();
                j.x = x; j.T = T; j.K = K; j.N = N; j.dt = dts[d].dt;
                j.w = make_weights(N * K, dts[d].dt);
#ifndef VK_OLD_API
                if (dts[d].bits) {
                    void *data = malloc(vk_qrow_bytes(dts[d].bits, K) * N);
                    uint16_t *scales = malloc(N * ((K + 31) / 32) * 2);
                    vk_quantize_rows(j.w, j.dt, K, dts[d].bits, 32, 0, N, data, scales);
                    j.q = (vk_qmatrix){data, scales, 32, dts[d].bits};
                }
#endif
                // GB_COLD_MB=M: rotate over copies of the weights (M MB in all, at most 64) so that each call reads
                // them from memory as a model's forward pass does, instead of from the L3 the last call filled
                const char *cold = getenv("GB_COLD_MB");
                size_t wbytes = N * K * (dts[d].dt == VK_F32 ? 4 : 2);
                void *mapped = NULL;
                size_t mapped_bytes = 0;
                if (cold && !dts[d].bits) {
                    size_t want = (size_t)atol(cold) * 1000000 / wbytes + 1;
                    j.ncopies = want > 64 ? 64 : (int)want;
                }
                if (j.ncopies && getenv("GB_MAPPED")) {
                    // GB_MAPPED=1 (with GB_COLD_MB): the copies read from a memory-mapped file in the page cache,
                    // as the model's checkpoint is (4 KB pages)
                    const char *path = "/tmp/gemm_bench_weights.bin";
                    size_t stride = (wbytes + 4095) & ~(size_t)4095;
                    mapped_bytes = stride * (size_t)j.ncopies;
                    FILE *f = fopen(path, "wb");
                    for (int c = 0; f && c < j.ncopies; c++) {
                        fwrite(j.w, 1, wbytes, f);
                        for (size_t z = wbytes; z < stride; z++) fputc(0, f);
                    }
                    if (f) fclose(f);
                    int fd = open(path, O_RDONLY);
                    mapped = fd >= 0 ? mmap(NULL, mapped_bytes, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
                    if (fd >= 0) close(fd);
                    unlink(path);  // the map keeps the pages
                    if (mapped == MAP_FAILED) { fprintf(stderr, "GB_MAPPED: mmap failed\n"); return 1; }
                    for (int c = 0; c < j.ncopies; c++) j.copies[c] = (const char *)mapped + stride * (size_t)c;
                } else {
                    for (int c = 0; c < j.ncopies; c++) {
                        void *cp = malloc(wbytes);
                        // GB_SMALL_PAGES=1: 4 KB pages, as a memory-mapped checkpoint has (malloc's may be huge)
                        if (getenv("GB_SMALL_PAGES")) madvise((void *)(((uintptr_t)cp + 4095) & ~(uintptr_t)4095), wbytes - 4096, MADV_NOHUGEPAGE);
                        memcpy(cp, j.w, wbytes);
                        j.copies[c] = cp;
                    }
                }
                j.y = malloc(T * N * 4);
                size_t need = scratch_need(T, K, N, threads, dts[d].bits != 0);
                for (int t = 0; t < threads; t++) { j.scratch[t] = malloc(need * 4); j.scratch_floats[t] = need; }
                double sec = time_job(mm_run, &j, runs, 0.2);
                double gf = 2.0 * T * K * N / sec;
                printf("%-28s %5zu %5zu %5zu %5s %9.3f %9.1f %6.1f%%\n", shapes[s].what, T, K, N, dts[d].name,
                       sec * 1e3, gf / 1e9, 100 * gf / peak);
                fflush(stdout);
                for (int t = 0; t < threads; t++) free(j.scratch[t]);
                free(x); free((void *)j.w); free(j.y);
                free((void *)j.q.data); free((void *)j.q.scales);
                if (mapped) munmap(mapped, mapped_bytes);
                else for (int c = 0; c < j.ncopies; c++) free((void *)j.copies[c]);
            }
        }
    }

    if (!only || !strcmp(only, "gemv")) {
        print_mode("decode GEMV (T = 1): one SmolVLM-500M token = 32 x (q,k,v,o,gate,up,down) + lm_head");
        double bw = measure_bandwidth(3);
        printf("read bandwidth %.1f GB/s (vk_sum, %d threads, best of %d)\n", bw / 1e9, threads, runs + 2);
        // SmolVLM-500M's decoder (960 wide, 2560 MLP, 5 KV heads of 64, 32 layers, tied 49280-row lm_head): bf16 and
        // f32 as stored, int8 / int4 quantized from the bf16 weights; each format also as a same-bytes stream.
        struct { vk_dtype dt; int bits; const char *name; } fmts[] = {
            {VK_BF16, 0, "bf16"}, {VK_F32, 0, "f32"}, {VK_BF16, 8, "q8"}, {VK_BF16, 4, "q4"}};
        for (size_t d = 0; d < sizeof fmts / sizeof fmts[0]; d++) {
            if (shape_filter && !strstr(fmts[d].name, shape_filter)) continue;
            decode_model m;
            memset(&m, 0, sizeof m);
            m.dt = fmts[d].dt; m.bits = fmts[d].bits;
            size_t D = 960, I = 2560, KV = 320, V = 49280;
            size_t shapes[7][2] = {{D, D}, {D, KV}, {D, KV}, {D, D}, {D, I}, {D, I}, {I, D}};
            size_t bytes = 0, es = m.dt == VK_F32 ? 4 : 2;
            for (int l = 0; l <= 32; l++)
                for (int s = 0; s < (l < 32 ? 7 : 1); s++) {
                    size_t K = l < 32 ? shapes[s][0] : D, N = l < 32 ? shapes[s][1] : V;
                    m.K[m.nmats] = K; m.N[m.nmats] = N;
                    m.w[m.nmats] = make_weights(K * N, m.dt);
                    if (m.bits) {
                        size_t ng = K / 32;
                        void *data = malloc(vk_qrow_bytes(m.bits, K) * N);
                        uint16_t *scales = malloc(N * ng * 2);
                        vk_quantize_rows(m.w[m.nmats], m.dt, K, m.bits, 32, 0, N, data, scales);
                        free(m.w[m.nmats]);
                        m.w[m.nmats] = NULL;
                        m.q[m.nmats] = (vk_qmatrix){data, scales, 32, m.bits};
                        bytes += vk_qrow_bytes(m.bits, K) * N + N * ng * 2;
                    } else {
                        bytes += K * N * es;
                    }
                    m.nmats++;
                }
            m.x = malloc(I * 4);
            for (size_t i = 0; i < I; i++) m.x[i] = frand();
            m.y = malloc(V * 4);
            for (int t = 0; t < threads; t++) m.scratch[t] = malloc((size_t)4 << 18);
            double kernel = 0, stream = 0;
            for (m.stream = 0; m.stream < 2; m.stream++) {
                double v[64];
                for (int r = 0; r < runs + 1; r++) {
                    double t0 = now();
                    for (int i = 0; i < m.nmats; i++) gemv_one(&m, i);
                    v[r] = now() - t0;
                }
                *(m.stream ? &stream : &kernel) = median(v + 1, runs);
            }
            double bound = bw / (double)bytes;
            printf("%-5s %d calls/token, %.1f MB/token: %.2f ms/token = %.2f tok/s, %.1f GB/s, %.1f%% of bound (%.2f tok/s); "
                   "same bytes streamed %.2f ms (kernel at %.0f%% of it)\n",
                   fmts[d].name, m.nmats, bytes / 1e6, kernel * 1e3, 1 / kernel, bytes / kernel / 1e9,
                   100 / kernel / bound, bound, stream * 1e3, 100 * stream / kernel);
            fflush(stdout);
            for (int i = 0; i < m.nmats; i++) {
                free(m.w[i]);
                free((void *)m.q[i].data);
                free((void *)m.q[i].scales);
            }
            for (int t = 0; t < threads; t++) free(m.scratch[t]);
            free(m.x); free(m.y);
        }
    }

    if (!only || !strcmp(only, "attn")) {
        print_mode("attention: all heads of one layer, heads split across threads");
        struct { size_t rows, heads, hd; int causal; const char *what; } shapes[] = {
            {1024, 12, 64, 0, "vision tile 1024 x 12 heads"},
            {1024, 16, 64, 0, "vision tile 1024 x 16 heads"},
            {128, 15, 64, 1, "text prefill 128 x 15 heads"},
        };
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            size_t rows = shapes[s].rows, H = shapes[s].heads, hd = shapes[s].hd, width = H * hd;
            float *q = malloc(rows * width * 4), *k = malloc(rows * width * 4), *v = malloc(rows * width * 4);
            float *o = malloc(rows * width * 4);
            for (size_t i = 0; i < rows * width; i++) { q[i] = frand(); k[i] = frand(); v[i] = frand(); }
            struct attn_ctx { float *q, *k, *v, *o; size_t rows, H, hd, width; int causal; } c = {q, k, v, o, rows, H, hd, width, shapes[s].causal};
            void attn_run(void *cc, int tid, int n);
            double sec = time_job(attn_run, &c, runs, 0.2);
            // Causal: about half the score matrix is computed.
            double flops = 4.0 * rows * rows * hd * H * (shapes[s].causal ? 0.5 : 1.0);
            printf("%-32s %9.3f ms %9.1f GFLOP/s %6.1f%% of peak\n", shapes[s].what, sec * 1e3, flops / sec / 1e9,
                   100 * flops / sec / peak);
            free(q); free(k); free(v); free(o);
        }
        // Decode: one query per head against a cache of n keys, SmolVLM-500M's 15 query heads on 5 KV heads. Each call
        // takes the next of 32 layers' caches, so at 1124 keys and more they come from memory as in a real decode step.
        size_t decode_keys[] = {160, 1124, 4096};
        const size_t layers = 32;
        for (size_t s = 0; s < sizeof decode_keys / sizeof decode_keys[0]; s++) {
            size_t nk = decode_keys[s], H = 15, KVH = 5, hd = 64, per = nk * KVH * hd;
            float *q = malloc(H * hd * 4), *k = malloc(layers * per * 4), *v = malloc(layers * per * 4);
            float *o = malloc(16 * H * hd * 4), *ml = malloc(2 * 16 * H * 4);
            for (size_t i = 0; i < H * hd; i++) q[i] = frand();
            for (size_t i = 0; i < layers * per; i++) { k[i] = frand(); v[i] = frand(); }
            for (int mode = 0; mode < 3; mode++) {
#ifdef VK_OLD_API
                if (mode) break;
#endif
                struct dec_ctx { float *q, *k, *v, *o, *ml; size_t nk, H, KVH, hd, layers; int mode; } c = {q, k, v, o, ml, nk, H, KVH, hd, layers, mode};
                void attn_decode_run(void *cc, int tid, int n);
                double sec = time_job(attn_decode_run, &c, runs, 0.2);
                char what[64];
                snprintf(what, sizeof what, "decode 1 x 15 heads, %zu keys%s", nk,
                         mode == 1 ? ", grouped" : mode == 2 ? ", 16 chunks" : "");
                printf("%-36s %9.3f us %9.1f GB/s of K and V (x 32 layers: %.3f ms per token)\n", what, sec * 1e6,
                       2.0 * nk * KVH * hd * 4 / sec / 1e9, 32 * sec * 1e3);
            }
            free(q); free(k); free(v); free(o); free(ml);
        }
    }
    return 0;
}

// Query heads split across threads as LlamaModel splits them; grouped: each run of heads on one KV head in one call;
// 16 chunks: the chunks split across threads (their merge, about 3 us, is not timed here).
void attn_decode_run(void *cc, int tid, int n) {
    struct dec_ctx { float *q, *k, *v, *o, *ml; size_t nk, H, KVH, hd, layers; int mode; } *c = cc;
    size_t lo, hi, groups = c->H / c->KVH, kvw = c->KVH * c->hd;
    static _Thread_local unsigned call;  // every thread runs every job once, so the counters agree
    size_t layer = call++ % c->layers;
    const float *k = c->k + layer * c->nk * kvw, *v = c->v + layer * c->nk * kvw;
    static _Thread_local float scores[16 * 4096];
    float scale = 1.0f / sqrtf((float)c->hd);
#ifndef VK_OLD_API
    if (c->mode == 2) {
        slice_range(16, 1, tid, n, &lo, &hi);
        for (size_t ch = lo; ch < hi; ch++) {
            size_t k0 = c->nk * ch / 16 / 16 * 16, k1 = ch == 15 ? c->nk : c->nk * (ch + 1) / 16 / 16 * 16;
            vk_attention_decode_chunk(c->q, c->H, c->hd, c->KVH, k, v, kvw, c->hd, k0, k1, scale,
                                      c->o + ch * c->H * c->hd, c->ml + ch * c->H, c->ml + (16 + ch) * c->H, scores);
        }
        return;
    }
    slice_range(c->H, 1, tid, n, &lo, &hi);
    if (c->mode == 1) {
        for (size_t h = lo; h < hi;) {
            size_t g = h / groups, end = (g + 1) * groups < hi ? (g + 1) * groups : hi;
            vk_attention_decode_group(c->q + h * c->hd, end - h, c->hd, k + g * c->hd, v + g * c->hd, kvw, c->hd,
                                      c->nk, scale, c->o + h * c->hd, c->hd, scores);
            h = end;
        }
        return;
    }
#else
    slice_range(c->H, 1, tid, n, &lo, &hi);
#endif
    for (size_t h = lo; h < hi; h++)
        vk_attention_head(c->q + h * c->hd, 1, c->H * c->hd, k + h / groups * c->hd, v + h / groups * c->hd, kvw,
                          c->hd, c->nk - 1, 1, c->nk, scale, c->o + h * c->hd, c->H * c->hd, scores);
}

void attn_run(void *cc, int tid, int n) {
    struct attn_ctx { float *q, *k, *v, *o; size_t rows, H, hd, width; int causal; } *c = cc;
    size_t lo, hi;
    slice_range(c->H, 1, tid, n, &lo, &hi);
    float *scores = malloc(c->rows * 4);
    for (size_t h = lo; h < hi; h++)
#ifndef VK_OLD_API
        (g_bf16_products ? vk_attention_head_bf16 : vk_attention_head)(c->q + h * c->hd, c->rows, c->width, c->k + h * c->hd, c->v + h * c->hd, c->width, c->hd,
                          0, c->causal, c->rows, 1.0f / sqrtf((float)c->hd), c->o + h * c->hd, c->width, scores);
#else
        vk_attention_head(c->q + h * c->hd, c->rows, c->width, c->k + h * c->hd, c->v + h * c->hd, c->width, c->hd,
                          0, c->causal, c->rows, 1.0f / sqrtf((float)c->hd), c->o + h * c->hd, c->width, scores);
#endif
    free(scores);
}
