/*
 * bench_gemv.c - micro-benchmark of one ISA variant (not a test): GEMV (decode) and GEMM (prefill) on
 * the BitNet b1.58 2B4T matmul shapes, 1..N threads splitting rows (pthreads, a spinning pool with a
 * fork/join per matmul, as ggml's threadpool does per op).
 *
 *   bench_gemv_<variant> [--threads 1,2] [--reps 7] [--cols 128] [--pool-mb 128] [--layouts tk2,tk1]
 *                        [--ggml path/libggml-cpu-<v>.so] [--shapes RxK,...] [--jsonl] [--no-gemm] [--no-gemv]
 *
 * GEMV: GB/s = weight bytes of our layout read per second. The weights are a pool of copies larger than
 * the last-level cache (--pool-mb), each GEMV on the next copy, so every byte comes from DRAM as in
 * decode. The roofline printed first is a plain read of the same pool with the same threads.
 * GEMM: GOPS = 2 * rows * K * cols / s (one multiply-add = 2 ops); activations already quantized.
 * With the avx512vnni kernels, the GEMM lines also show the share of the measured vpdpbusd ceiling:
 * 16 independent chains of zmm vpdpbusd per thread (64 int8 multiply-adds each), timed like a GEMM.
 * Each number is the median of --reps runs. Every kernel is checked against the scalar reference
 * before it is timed (bit-exact), as the tests do.
 * --ggml: also time stock ggml's ggml_vec_dot_tq2_0_q8_K / _tq1_0_ (dlopen of a built ggml-cpu
 * library; call ggml_cpu_init first) on the original TQ2_0/TQ1_0 rows, blocked 16x16 like ggml's mul_mat.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bitnet_kernels.h"

#include "bench_common.h"

/* Random ternary rows in ggml's TQ2_0 / TQ1_0 byte layout (d = 1/64). */
static void random_src(bitnet_src_type src, int64_t rows, int64_t k, uint8_t *out) {
    const int64_t nb = k / 256;
    const uint16_t d = 0x2400;
    for (int64_t i = 0; i < rows * nb; i++) {
        if (src == BITNET_SRC_TQ2_0) {
            bitnet_block_tq2_0 *b = (bitnet_block_tq2_0 *)out + i;
            for (int j = 0; j < 64; j++) {
                uint8_t q = 0;
                for (int l = 0; l < 4; l++) q |= (uint8_t)((rnd() % 3) << (2 * l));
                b->qs[j] = q;
            }
            b->d = d;
        } else {
            bitnet_block_tq1_0 *b = (bitnet_block_tq1_0 *)out + i;
            for (int j = 0; j < 52; j++) {
                unsigned v = 0;
                for (int n = 0; n < (j < 48 ? 5 : 4); n++) v = v * 3 + (unsigned)(rnd() % 3);
                if (j >= 48) v *= 3;
                const uint8_t q = (uint8_t)((v * 256 + 242) / 243);
                if (j < 48) b->qs[j] = q;
                else b->qh[j - 48] = q;
            }
            b->d = d;
        }
    }
}

/* ---- stock ggml, optional ---- */
typedef void (*vec_dot_fn)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc);
typedef void (*quant_fn)(const float *x, void *y, int64_t k);
static struct {
    vec_dot_fn dot_tq2, dot_tq1;
    quant_fn q8k;
} ggml;
#define Q8K_BYTES 292 /* block_q8_K: float d; int8 qs[256]; int16 bsums[16] */

static int load_ggml(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "--ggml: %s\n", dlerror());
        return 0;
    }
    void (*init)(void) = (void (*)(void))dlsym(h, "ggml_cpu_init");
    ggml.dot_tq2 = (vec_dot_fn)dlsym(h, "ggml_vec_dot_tq2_0_q8_K");
    ggml.dot_tq1 = (vec_dot_fn)dlsym(h, "ggml_vec_dot_tq1_0_q8_K");
    ggml.q8k = (quant_fn)dlsym(h, "quantize_row_q8_K");
    if (!init || !ggml.dot_tq2 || !ggml.dot_tq1 || !ggml.q8k) {
        fprintf(stderr, "--ggml: %s lacks ggml_cpu_init / vec_dot_tq*_q8_K / quantize_row_q8_K\n", path);
        return 0;
    }
    init();
    return 1;
}

/* ---- tasks ---- */
typedef struct {
    const bitnet_weights *w;
    const bitnet_act_block *x;
    int64_t ncols;
    float *y;
    int ref;        /* use bitnet_ref_gemm */
    const void *pk; /* the GEMM's packed activations (bitnet_gemm_pack), or NULL */
    /* stock ggml */
    const uint8_t *src;
    size_t src_row;
    const uint8_t *q8;
    vec_dot_fn dot;
    /* roofline */
    const uint64_t *buf;
    size_t words;
    uint64_t sink[MAXT * 8];
} job;

static void task_ours(void *p, int ith, int nth) {
    job *j = p;
    int64_t r0, r1;
    bitnet_split_rows(j->w->rows, ith, nth, &r0, &r1);
    const int64_t nb = j->w->k / 256;
    if (j->ref) bitnet_ref_gemm(j->w, j->x, j->ncols, nb, j->y, j->w->rows, r0, r1);
    else bitnet_matmul_packed(j->w, j->x, j->pk, j->ncols, nb, j->y, j->w->rows, r0, r1);
}

static void task_ggml(void *p, int ith, int nth) { /* ggml_compute_forward_mul_mat_one_chunk's 16x16 blocking */
    job *j = p;
    int64_t r0, r1;
    bitnet_split_rows(j->w->rows, ith, nth, &r0, &r1);
    const int k = (int)j->w->k;
    const size_t q8_row = (size_t)(k / 256) * Q8K_BYTES;
    for (int64_t c0 = 0; c0 < j->ncols; c0 += 16)
        for (int64_t b0 = r0; b0 < r1; b0 += 16)
            for (int64_t c = c0; c < c0 + 16 && c < j->ncols; c++)
                for (int64_t r = b0; r < b0 + 16 && r < r1; r++)
                    j->dot(k, &j->y[c * j->w->rows + r], 0, j->src + (size_t)r * j->src_row, 0,
                           j->q8 + (size_t)c * q8_row, 0, 1);
}

static void task_read(void *p, int ith, int nth) {
    job *j = p;
    const size_t a = j->words * (size_t)ith / (size_t)nth, b = j->words * (size_t)(ith + 1) / (size_t)nth;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = a; i + 4 <= b; i += 4) {
        s0 += j->buf[i];
        s1 += j->buf[i + 1];
        s2 += j->buf[i + 2];
        s3 += j->buf[i + 3];
    }
    j->sink[ith * 8] = s0 + s1 + s2 + s3;
}

/* The VNNI ceiling: nothing but independent vpdpbusd zmm (throughput, not latency, bound). Compiled for
 * AVX-512 VNNI whatever this file's flags; called only when the kernels' ISA is avx512vnni. */
#define PEAK_ITERS 4000000L
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void task_peak(void *p, int ith, int nth) {
    (void)nth;
    job *j = p;
    __m512i a[16];
    const __m512i u = _mm512_set1_epi8(1), v = _mm512_set1_epi8((char)(ith + 1));
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_epi32(i);
    for (long n = 0; n < PEAK_ITERS; n++)
        for (int i = 0; i < 16; i++) a[i] = _mm512_dpbusd_epi32(a[i], u, v);
    __m512i s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_epi32(s, a[i]);
    j->sink[ith * 8] = (uint64_t)_mm512_reduce_add_epi32(s);
}
/* The ceiling of a lookup-table GEMM in the spirit of T-MAC / bitnet.cpp's TL kernels on this ISA: a
 * ternary triple (27 patterns) indexes a 32-entry int16 table of partial activation sums with vpermw
 * (32 rows per zmm, 3 multiply-adds per lane), accumulated with vpaddw. 8 independent table/index
 * pairs per step, 16 per iteration as for vpdpbusd; GOPS counted as 2 * 3 * 32 per pair, comparable with
 * the vpdpbusd line (2 * 64 each). */
__attribute__((target("avx512f,avx512bw"))) static void task_peak_lut(void *p, int ith, int nth) {
    (void)nth;
    job *j = p;
    __m512i a0, a1, a2, a3, a4, a5, a6, a7;
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _mm512_setzero_si512();
    const __m512i t0 = _mm512_set1_epi16((short)ith), t1 = _mm512_set1_epi16(1), i0 = _mm512_set1_epi16(0),
                  i1 = _mm512_set1_epi16(3), i2 = _mm512_set1_epi16(9), i3 = _mm512_set1_epi16(26);
    /* in asm: the compiler must neither hoist the loop-invariant lookups nor add register copies */
#define LUT_STEP(T, I, A, TMP) "vpermw %" #T ", %" #I ", %%" #TMP "\n\tvpaddw %%" #TMP ", %" #A ", %" #A "\n\t"
    for (long n = 0; n < 2 * PEAK_ITERS; n++)
        __asm__ volatile(LUT_STEP([t0], [i0], [a0], zmm24) LUT_STEP([t1], [i0], [a1], zmm25)
                         LUT_STEP([t0], [i1], [a2], zmm26) LUT_STEP([t1], [i1], [a3], zmm27)
                         LUT_STEP([t0], [i2], [a4], zmm28) LUT_STEP([t1], [i2], [a5], zmm29)
                         LUT_STEP([t0], [i3], [a6], zmm30) LUT_STEP([t1], [i3], [a7], zmm31)
                         : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5),
                           [a6] "+v"(a6), [a7] "+v"(a7)
                         : [t0] "v"(t0), [t1] "v"(t1), [i0] "v"(i0), [i1] "v"(i1), [i2] "v"(i2), [i3] "v"(i3)
                         : "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
#undef LUT_STEP
    const __m512i s = _mm512_add_epi16(_mm512_add_epi16(_mm512_add_epi16(a0, a1), _mm512_add_epi16(a2, a3)),
                                       _mm512_add_epi16(_mm512_add_epi16(a4, a5), _mm512_add_epi16(a6, a7)));
    j->sink[ith * 8] = (uint64_t)_mm512_reduce_add_epi32(s);
}
#define HAVE_PEAK 1
#endif

/* ---- options ---- */
static int opt_threads[MAXT] = {1, 2}, n_threads = 2, opt_reps = 7, opt_cols = 128, opt_jsonl = 0;
static int opt_gemv = 1, opt_gemm = 1, opt_layout_tk2 = 1, opt_layout_tk1 = 1;
static size_t opt_pool = (size_t)128 << 20;
static const char *opt_ggml = NULL;
#define MAXSHAPES 16
/* rows x k of each matrix; default: the BitNet b1.58 2B4T shapes (--shapes 2560x2560,640x2560,...) */
static int64_t shapes[MAXSHAPES][2] = {{2560, 2560}, {640, 2560}, {6912, 2560}, {2560, 6912}};
static int n_shapes = 4;

static int parse_shapes(const char *s) {
    int n = 0;
    while (*s && n < MAXSHAPES) {
        char *end;
        const long long r = strtoll(s, &end, 10);
        if (*end != 'x') return 0;
        const long long k = strtoll(end + 1, &end, 10);
        if (r < 1 || k < 256 || k % 256) return 0;
        shapes[n][0] = r;
        shapes[n][1] = k;
        n++;
        if (*end == ',') s = end + 1;
        else if (*end == 0) break;
        else return 0;
    }
    return n;
}

static void report(const char *op, const char *impl, const char *layout, int64_t rows, int64_t k, int64_t cols,
                   int nth, double med, double gbps, double gops, double roof, double peak) {
    if (opt_jsonl) {
        printf("{\"cpu\": \"%s\", \"variant\": \"%s\", \"isa\": \"%s\", \"impl\": \"%s\", \"op\": \"%s\", "
               "\"layout\": \"%s\", "
               "\"rows\": %lld, \"k\": %lld, \"n_cols\": %lld, \"n_threads\": %d, \"median_s\": %.6g, "
               "\"gbps\": %.4g, \"gops\": %.4g, \"roofline_gbps\": %.4g, \"peak_gops\": %.4g, \"reps\": %d}\n",
               cpu_name, BITNET_BENCH_VARIANT, bitnet_isa(), impl, op, layout, (long long)rows, (long long)k,
               (long long)cols, nth, med, gbps, gops, roof, peak, opt_reps);
    } else if (!strcmp(op, "gemv")) {
        printf("  gemv %-6s %-4s %5lldx%-5lld t=%d  %8.1f us  %6.2f GB/s  %5.1f%% of read bw\n", impl, layout,
               (long long)rows, (long long)k, nth, med * 1e6, gbps, 100.0 * gbps / roof);
    } else if (peak > 0) {
        printf("  gemm %-6s %-4s %5lldx%-5lld cols=%-4lld t=%d  %8.2f ms  %7.1f GOPS  %5.1f%% of vpdpbusd peak\n", impl,
               layout, (long long)rows, (long long)k, (long long)cols, nth, med * 1e3, gops, 100.0 * gops / peak);
    } else {
        printf("  gemm %-6s %-4s %5lldx%-5lld cols=%-4lld t=%d  %8.2f ms  %7.1f GOPS\n", impl, layout, (long long)rows,
               (long long)k, (long long)cols, nth, med * 1e3, gops);
    }
    fflush(stdout);
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    while (*s && n < max) {
        out[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--threads")) n_threads = parse_list(v, opt_threads, MAXT), i++;
        else if (!strcmp(a, "--reps")) opt_reps = atoi(v), i++;
        else if (!strcmp(a, "--cols")) opt_cols = atoi(v), i++;
        else if (!strcmp(a, "--pool-mb")) opt_pool = (size_t)atoi(v) << 20, i++;
        else if (!strcmp(a, "--ggml")) opt_ggml = v, i++;
        else if (!strcmp(a, "--layouts")) {
            opt_layout_tk2 = strstr(v, "tk2") != NULL;
            opt_layout_tk1 = strstr(v, "tk1") != NULL;
            i++;
        }
        else if (!strcmp(a, "--shapes")) {
            n_shapes = parse_shapes(v);
            if (!n_shapes) {
                fprintf(stderr, "--shapes %s: want ROWSxK[,ROWSxK...], K a multiple of 256, at most %d\n", v,
                        MAXSHAPES);
                return 2;
            }
            i++;
        }
        else if (!strcmp(a, "--jsonl")) opt_jsonl = 1;
        else if (!strcmp(a, "--no-gemm")) opt_gemm = 0;
        else if (!strcmp(a, "--no-gemv")) opt_gemv = 0;
        else {
            fprintf(stderr, "usage: %s [--threads 1,2] [--reps N] [--cols N] [--pool-mb N] [--layouts tk2,tk1] "
                            "[--ggml libggml-cpu.so] [--shapes RxK,...] [--jsonl] [--no-gemm] [--no-gemv]\n", argv[0]);
            return 2;
        }
    }
    if (opt_reps < 1 || opt_cols < 1 || n_threads < 1) return 2;
    if (opt_ggml && !load_ggml(opt_ggml)) return 1;
    read_cpu_name();
    const bitnet_kernel_info info = bitnet_get_kernel_info();
    if (!opt_jsonl)
        printf("bench_gemv variant %s, isa %s, GEMM tile %d x 16 rows x %d cols; median of %d; pool %zu MiB\n",
               BITNET_BENCH_VARIANT, info.isa, info.gemm_row_groups, info.gemm_cols, opt_reps, opt_pool >> 20);

    double *t = xalloc(sizeof(double) * (size_t)opt_reps);
    double roof[MAXT] = {0};

    for (int ti = 0; ti < n_threads; ti++) { /* read bandwidth of the pool, per thread count */
        const int nth = opt_threads[ti];
        job j = {0};
        j.words = opt_pool / 8;
        uint64_t *buf = xalloc(opt_pool);
        for (size_t i = 0; i < j.words; i++) buf[i] = i;
        j.buf = buf;
        roof[ti] = (double)opt_pool / time_task(nth, task_read, &j, opt_reps, t) / 1e9;
        if (opt_jsonl)
            printf("{\"cpu\": \"%s\", \"variant\": \"%s\", \"op\": \"read\", \"n_threads\": %d, \"gbps\": %.4g}\n",
                   cpu_name, BITNET_BENCH_VARIANT, nth, roof[ti]);
        else printf("read bandwidth t=%d: %.2f GB/s\n", nth, roof[ti]);
        free(buf);
    }

    double peak[MAXT] = {0}; /* GOPS of the vpdpbusd ceiling per thread count; 0 = not measured */
#ifdef HAVE_PEAK
    for (int ti = 0; opt_gemm && !strcmp(info.isa, "avx512vnni") && ti < n_threads; ti++) {
        const int nth = opt_threads[ti];
        job j = {0};
        peak[ti] = 2.0 * 64 * 16 * (double)PEAK_ITERS * nth / time_task(nth, task_peak, &j, opt_reps, t) / 1e9;
        if (opt_jsonl)
            printf("{\"cpu\": \"%s\", \"variant\": \"%s\", \"op\": \"peak\", \"n_threads\": %d, \"gops\": %.4g}\n",
                   cpu_name, BITNET_BENCH_VARIANT, nth, peak[ti]);
        else printf("vpdpbusd zmm peak t=%d: %.1f GOPS\n", nth, peak[ti]);
        const double lut =
            2.0 * 3 * 32 * 16 * (double)PEAK_ITERS * nth / time_task(nth, task_peak_lut, &j, opt_reps, t) / 1e9;
        if (opt_jsonl)
            printf("{\"cpu\": \"%s\", \"variant\": \"%s\", \"op\": \"peak_lut3\", \"n_threads\": %d, \"gops\": %.4g}\n",
                   cpu_name, BITNET_BENCH_VARIANT, nth, lut);
        else printf("LUT (vpermw+vpaddw, 3 weights per lookup) peak t=%d: %.1f GOPS (%.2fx vpdpbusd)\n", nth, lut,
                    lut / peak[ti]);
    }
#endif

    for (int s = 0; s < n_shapes; s++) {
        const int64_t rows = shapes[s][0], k = shapes[s][1], nb = k / 256;
        for (int li = 0; li < 2; li++) {
            if ((li == 0 && !opt_layout_tk2) || (li == 1 && !opt_layout_tk1)) continue;
            const bitnet_layout layout = li ? BITNET_LAYOUT_TK1 : BITNET_LAYOUT_TK2;
            const bitnet_src_type srct = li ? BITNET_SRC_TQ1_0 : BITNET_SRC_TQ2_0;
            const char *lname = li ? "tk1" : "tk2";
            const size_t src_row = (size_t)nb * (li ? sizeof(bitnet_block_tq1_0) : sizeof(bitnet_block_tq2_0));
            const size_t wsize = bitnet_weights_size(layout, rows, k);
            const int ncopies = (int)(opt_pool / wsize) + 1;
            uint8_t *src = xalloc(src_row * (size_t)rows);
            random_src(srct, rows, k, src);
            uint8_t *wpool = xalloc(wsize * (size_t)ncopies);
            for (int c = 0; c < ncopies; c++)
                if (bitnet_repack(layout, srct, src, rows, k, wpool + wsize * (size_t)c) != BITNET_OK) return 1;
            bitnet_weights *ws = xalloc(sizeof *ws * (size_t)ncopies);
            for (int c = 0; c < ncopies; c++) ws[c] = (bitnet_weights){wpool + wsize * (size_t)c, rows, k, layout};

            const int64_t maxc = opt_cols > 1 ? opt_cols : 1;
            float *xf = xalloc(sizeof(float) * (size_t)(k * maxc));
            for (int64_t i = 0; i < k * maxc; i++) xf[i] = (float)((int)(rnd() % 2001) - 1000) / 1000.0f;
            bitnet_act_block *x = xalloc(sizeof *x * (size_t)(nb * maxc));
            for (int64_t c = 0; c < maxc; c++) bitnet_quantize_act(xf + c * k, k, x + c * nb);
            uint8_t *q8 = NULL;
            if (opt_ggml) {
                q8 = xalloc((size_t)(nb * maxc) * Q8K_BYTES);
                for (int64_t c = 0; c < maxc; c++) ggml.q8k(xf + c * k, q8 + (size_t)(c * nb) * Q8K_BYTES, k);
            }
            float *y = xalloc(sizeof(float) * (size_t)(rows * maxc));
            float *yref = xalloc(sizeof(float) * (size_t)(rows * maxc));
            /* the engine's AMX GEMM reads activations packed by its quantize step: a third GEMM row, "ours-packed"
             * (packing not timed: the engine does it while quantizing) */
            const size_t pk_size = opt_cols > 1 ? bitnet_gemm_pack_size(k, opt_cols) : 0;
            void *pk = pk_size ? xalloc(pk_size) : NULL;
            if (pk && bitnet_gemm_pack(x, k, opt_cols, nb, 0, opt_cols, pk) != BITNET_OK) return 1;

            /* verify before timing */
            for (int64_t nc = 1; nc <= maxc; nc += maxc > 1 ? maxc - 1 : 1) {
                bitnet_ref_gemm(&ws[0], x, nc, nb, yref, rows, 0, rows);
                bitnet_matmul(&ws[0], x, nc, nb, y, rows, 0, rows);
                int bad = memcmp(y, yref, sizeof(float) * (size_t)(rows * nc)) != 0;
                if (pk && nc == opt_cols) {
                    bitnet_matmul_packed(&ws[0], x, pk, nc, nb, y, rows, 0, rows);
                    bad |= memcmp(y, yref, sizeof(float) * (size_t)(rows * nc)) != 0;
                }
                if (bad) {
                    fprintf(stderr, "MISMATCH vs reference: %s %lldx%lld cols %lld - not timing\n", lname,
                            (long long)rows, (long long)k, (long long)nc);
                    return 1;
                }
            }

            for (int ti = 0; ti < n_threads; ti++) {
                const int nth = opt_threads[ti];
                pool_start(nth);
                job j = {0};
                j.x = x;
                j.y = y;
                if (opt_gemv) { /* GEMV over the pool of copies: DRAM-bound like decode */
                    for (int impl = 0; impl < (opt_ggml ? 2 : 1); impl++) {
                        j.ncols = 1;
                        j.src = src;
                        j.src_row = src_row;
                        j.q8 = q8;
                        j.dot = li ? ggml.dot_tq1 : ggml.dot_tq2;
                        /* stock reads the original rows: a pool of copies of those */
                        const size_t ssize = src_row * (size_t)rows;
                        const int ncs = impl ? (int)(opt_pool / ssize) + 1 : ncopies;
                        uint8_t *spool = impl ? xalloc(ssize * (size_t)ncs) : NULL;
                        for (int c = 0; impl && c < ncs; c++) memcpy(spool + ssize * (size_t)c, src, ssize);
                        for (int r = -1; r < opt_reps; r++) {
                            const double t0 = now_s();
                            for (int c = 0; c < ncs; c++) {
                                j.w = &ws[c % ncopies];
                                if (impl) j.src = spool + ssize * (size_t)c;
                                pool_run(impl ? task_ggml : task_ours, &j);
                            }
                            if (r >= 0) t[r] = (now_s() - t0) / ncs;
                        }
                        free(spool);
                        const double med = median(t, opt_reps);
                        const double bytes = impl ? (double)ssize : (double)wsize;
                        report("gemv", impl ? "ggml" : "ours", lname, rows, k, 1, nth, med, bytes / med / 1e9,
                               2.0 * rows * k / med / 1e9, roof[ti], 0.0);
                    }
                }
                if (opt_gemm && opt_cols > 1) { /* GEMM: compute-bound, one copy */
                    for (int impl = pk ? -1 : 0; impl < (opt_ggml ? 2 : 1); impl++) {
                        j.w = &ws[0];
                        j.ncols = opt_cols;
                        j.pk = impl < 0 ? pk : NULL;
                        j.src = src;
                        j.src_row = src_row;
                        j.q8 = q8;
                        j.dot = li ? ggml.dot_tq1 : ggml.dot_tq2;
                        const int reps = impl > 0 ? (opt_reps + 1) / 2 : opt_reps; /* stock is slow */
                        for (int r = -1; r < reps; r++) {
                            const double t0 = now_s();
                            pool_run(impl > 0 ? task_ggml : task_ours, &j);
                            if (r >= 0) t[r] = now_s() - t0;
                        }
                        const double med = median(t, reps);
                        const char *iname = impl > 0 ? "ggml" : impl < 0 ? "ours-packed" : "ours";
                        report("gemm", iname, lname, rows, k, opt_cols, nth, med,
                               (double)wsize / med / 1e9, 2.0 * rows * k * opt_cols / med / 1e9, roof[ti], peak[ti]);
                    }
                }
                pool_stop();
            }
            free(pk);
            free(y);
            free(yref);
            free(q8);
            free(x);
            free(xf);
            free(ws);
            free(wpool);
            free(src);
        }
    }
    free(t);
    return 0;
}
