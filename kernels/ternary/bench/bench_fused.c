/*
 * bench_fused.c - micro-benchmark of one ISA variant (not a test) of the float ops the engine fuses around
 * a ternary matmul (src/norm.c; kernels/ternary/ggml/ternary-fuse.cpp), each next to a ceiling measured
 * in the same run with the same threads:
 *
 *   norm       bitnet_rms_norm (rows side by side in SIMD lanes) vs ggml's loop (bitnet_ref_rms_norm).
 *              Ceiling: a streaming pass over the same bytes (y = x * c); for ONE row (decode), the chain
 *              of K dependent double adds ggml's summation order requires, timed alone.
 *   norm+quant the fused op's phase 1 in prefill: norm, then per-token quantization of each column, vs
 *              the norm alone (what the fusion adds on top of it; the unfused graph also re-reads y).
 *   epilogue   scale_add (MUL by the weight scale, + residual) and relu2_mul (scales, RELU, SQR, MUL) on
 *              rows x cols of matmul output. Ceiling: a streaming pass reading two arrays, writing one.
 *   chain      a matmul with its epilogue applied on each 16..256-row chunk right after it, vs the
 *              matmul alone: what the epilogue costs inside the fused op (GEMV from a pool of weight
 *              copies larger than the cache, as in decode; GEMM with --cols columns, as in prefill).
 *
 *   bench_fused_<variant> [--threads 1,2] [--reps 7] [--cols 512] [--jsonl]
 *
 * Each number is the median of --reps runs; every op is checked bit for bit against its reference first.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "bitnet_kernels.h"

static int opt_threads[MAXT] = {1, 2}, n_threads = 2, opt_reps = 7, opt_cols = 512, opt_jsonl = 0;

static void report(const char *op, const char *impl, int64_t rows, int64_t k, int nth, double med, double bytes,
                   double ceil_s, const char *ceil_name) {
    if (opt_jsonl) {
        printf("{\"cpu\": \"%s\", \"variant\": \"%s\", \"isa\": \"%s\", \"op\": \"%s\", \"impl\": \"%s\", \"rows\": %lld, "
               "\"k\": %lld, \"n_threads\": %d, \"median_s\": %.6g, \"gbps\": %.4g, \"ceiling\": \"%s\", "
               "\"ceiling_s\": %.6g, \"reps\": %d}\n",
               cpu_name, BITNET_BENCH_VARIANT, bitnet_isa(), op, impl, (long long)rows, (long long)k, nth, med,
               bytes / med / 1e9, ceil_name, ceil_s, opt_reps);
    } else {
        printf("  %-10s %-9s %5lld x %-5lld t=%d %10.2f us %7.2f GB/s   %-14s %9.2f us  %5.1f%% of ceiling\n", op, impl,
               (long long)rows, (long long)k, nth, med * 1e6, bytes / med / 1e9, ceil_name, ceil_s * 1e6,
               100.0 * ceil_s / med);
    }
    fflush(stdout);
}

static double median_of(int nth, task_fn fn, void *ctx) {
    double *t = xalloc(sizeof(double) * (size_t)opt_reps);
    const double m = time_task(nth, fn, ctx, opt_reps, t);
    free(t);
    return m;
}

/* ---- the jobs: each thread takes rows [rows*ith/nth, rows*(ith+1)/nth), 16-aligned where it matters ---- */
typedef struct {
    int64_t rows, k, ncols; /* norm: rows of k; epilogue: ncols columns of `rows` outputs */
    const float *x, *w, *b;
    float *y, *out;
    float s, s2;
    bitnet_act_block *xq;
    const bitnet_weights *wt;
    int ref, which;
    volatile double sink[MAXT * 8];
} job;

static void split16(int64_t rows, int ith, int nth, int64_t *r0, int64_t *r1) {
    bitnet_split_rows(rows, ith, nth, r0, r1);
}

static void task_norm(void *p, int ith, int nth) {
    job *j = p;
    const int64_t r0 = j->rows * ith / nth, r1 = j->rows * (ith + 1) / nth;
    (j->ref ? bitnet_ref_rms_norm : bitnet_rms_norm)(j->x + r0 * j->k, j->k, j->k, r1 - r0, j->w, 1e-5f,
                                                      j->y + r0 * j->k, j->k);
}

static void task_norm_quant(void *p, int ith, int nth) {
    job *j = p;
    const int64_t nb = j->k / 256;
    for (int64_t b = ith; b * 16 < j->rows; b += nth) { /* 16-column batches, round robin: the fused op's split */
        const int64_t c0 = 16 * b, n = j->rows - c0 < 16 ? j->rows - c0 : 16;
        bitnet_rms_norm(j->x + c0 * j->k, j->k, j->k, n, j->w, 1e-5f, j->y + c0 * j->k, j->k);
        for (int64_t c = c0; c < c0 + n; c++) bitnet_quantize_act_per_token(j->y + c * j->k, j->k, j->xq + c * nb);
    }
}

static void task_stream(void *p, int ith, int nth) { /* y = x * c over this thread's rows: the norm's bytes */
    job *j = p;
    const int64_t a = j->rows * ith / nth * j->k, e = j->rows * (ith + 1) / nth * j->k;
    for (int64_t i = a; i < e; i++) j->y[i] = j->x[i] * j->s;
}

static void task_chain(void *p, int ith, int nth) { /* K dependent double adds, ggml's order: no SIMD can help */
    job *j = p;
    (void)nth;
    double sum = 0.0;
    for (int64_t i = 0; i < j->k; i++) sum += (double)j->x[i];
    j->sink[ith * 8] = sum;
}

static void task_epilogue(void *p, int ith, int nth) {
    job *j = p;
    int64_t r0, r1;
    split16(j->rows, ith, nth, &r0, &r1);
    if (j->which == 0) bitnet_scale_add_rows(j->out, j->rows, j->y, j->rows, &j->s, j->b, j->rows, j->ncols, r0, r1);
    else bitnet_relu2_mul_rows(j->out, j->rows, j->y, j->rows, &j->s, j->b, j->rows, &j->s2, j->ncols, r0, r1);
}

static void task_stream3(void *p, int ith, int nth) { /* out = y + b: two streams in, one out */
    job *j = p;
    int64_t r0, r1;
    split16(j->rows, ith, nth, &r0, &r1);
    for (int64_t c = 0; c < j->ncols; c++)
        for (int64_t r = r0; r < r1; r++) j->out[c * j->rows + r] = j->y[c * j->rows + r] + j->b[c * j->rows + r];
}

/* matmul over this thread's rows in 64-row chunks (GEMV) / 32-row (GEMM), the epilogue after each or not */
static void task_mm(void *p, int ith, int nth) {
    job *j = p;
    int64_t r0, r1;
    split16(j->wt->rows, ith, nth, &r0, &r1);
    const int64_t step = j->ncols == 1 ? 256 : 32, n = j->wt->rows;
    for (int64_t a = r0; a < r1; a += step) {
        const int64_t e = a + step < r1 ? a + step : r1;
        bitnet_matmul(j->wt, j->xq, j->ncols, j->k / 256, j->y, n, a, e);
        if (j->which) bitnet_scale_add_rows(j->out, n, j->y, n, &j->s, j->b, n, j->ncols, a, e);
    }
}

static float *random_floats(int64_t n, float lo, float hi) {
    float *v = xalloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = lo + (hi - lo) * (float)(rnd() % 1000001) / 1e6f;
    return v;
}

static int check_equal(const void *a, const void *b, size_t n, const char *what) {
    if (memcmp(a, b, n)) {
        fprintf(stderr, "MISMATCH vs reference: %s - not timing\n", what);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--threads")) {
            n_threads = 0;
            for (const char *s = v; *s && n_threads < MAXT; s = strchr(s, ',') ? strchr(s, ',') + 1 : "")
                opt_threads[n_threads++] = atoi(s);
            i++;
        } else if (!strcmp(a, "--reps")) opt_reps = atoi(v), i++;
        else if (!strcmp(a, "--cols")) opt_cols = atoi(v), i++;
        else if (!strcmp(a, "--jsonl")) opt_jsonl = 1;
        else {
            fprintf(stderr, "usage: %s [--threads 1,2] [--reps N] [--cols N] [--jsonl]\n", argv[0]);
            return 2;
        }
    }
    if (opt_reps < 1 || opt_cols < 2 || n_threads < 1) return 2;
    read_cpu_name();
    if (!opt_jsonl) printf("bench_fused variant %s, isa %s; median of %d\n", BITNET_BENCH_VARIANT, bitnet_isa(), opt_reps);

    /* ---- norm and norm+quant: decode (1 row) and prefill (--cols rows) of the 2B4T widths ---- */
    static const int64_t ks[] = {2560, 6912};
    for (int ki = 0; ki < 2; ki++) {
        const int64_t k = ks[ki], maxr = opt_cols;
        float *x = random_floats(k * maxr, -3.0f, 3.0f), *w = random_floats(k, 0.5f, 2.0f);
        float *y = xalloc(sizeof(float) * (size_t)(k * maxr)), *yr = xalloc(sizeof(float) * (size_t)(k * maxr));
        bitnet_act_block *xq = xalloc(bitnet_act_size(k, maxr));
        bitnet_rms_norm(x, k, k, maxr, w, 1e-5f, y, k);
        bitnet_ref_rms_norm(x, k, k, maxr, w, 1e-5f, yr, k);
        if (!check_equal(y, yr, sizeof(float) * (size_t)(k * maxr), "rms_norm")) return 1;
        for (int64_t rows = 1; rows <= maxr; rows = rows == 1 ? maxr : maxr + 1) {
            for (int ti = 0; ti < n_threads; ti++) {
                const int nth = rows == 1 ? 1 : opt_threads[ti];
                if (rows == 1 && ti > 0) break;
                job j = {.rows = rows, .k = k, .x = x, .w = w, .y = y, .s = 1.5f, .xq = xq};
                const double bytes = 2.0 * sizeof(float) * (double)(rows * k);
                j.ref = 1;
                const double t_ref = median_of(nth, task_norm, &j);
                j.ref = 0;
                const double t_ours = median_of(nth, task_norm, &j);
                double ceil;
                const char *cname;
                if (rows == 1) {
                    ceil = median_of(1, task_chain, &j);
                    cname = "add chain";
                } else {
                    ceil = median_of(nth, task_stream, &j);
                    cname = "stream";
                }
                report("norm", "ggml-loop", rows, k, nth, t_ref, bytes, ceil, cname);
                report("norm", "ours", rows, k, nth, t_ours, bytes, ceil, cname);
                if (rows > 1) {
                    const double t_nq = median_of(nth, task_norm_quant, &j);
                    report("norm+quant", "ours", rows, k, nth, t_nq, bytes, t_ours, "norm alone");
                }
            }
        }
        free(x), free(w), free(y), free(yr), free(xq);
    }

    /* ---- epilogues on [rows x cols] of matmul output ---- */
    static const int64_t erows[] = {2560, 6912};
    for (int ri = 0; ri < 2; ri++) {
        const int64_t rows = erows[ri], ncols = opt_cols, n = rows * ncols;
        float *y = random_floats(n, -2.0f, 2.0f), *b = random_floats(n, -2.0f, 2.0f), *out = xalloc(sizeof(float) * (size_t)n);
        for (int which = 0; which < 2; which++)
            for (int ti = 0; ti < n_threads; ti++) {
                const int nth = opt_threads[ti];
                job j = {.rows = rows, .ncols = ncols, .y = y, .b = b, .out = out, .s = 0.7f, .s2 = 1.3f, .which = which};
                const double t = median_of(nth, task_epilogue, &j), c = median_of(nth, task_stream3, &j);
                report(which ? "relu2_mul" : "scale_add", "ours", rows, ncols, nth, t, 3.0 * sizeof(float) * (double)n, c,
                       "stream 2in+1out");
            }
        free(y), free(b), free(out);
    }

    /* ---- chain: the matmul with the epilogue on each chunk vs the matmul alone ---- */
    static const int64_t mshape[][2] = {{2560, 6912}, {2560, 2560}};
    for (int si = 0; si < 2; si++) {
        const int64_t rows = mshape[si][0], k = mshape[si][1], nb = k / 256;
        const size_t wsize = bitnet_weights_size(BITNET_LAYOUT_TK2, rows, k);
        const int ncopies = (int)(((size_t)128 << 20) / wsize) + 1; /* > L3: from DRAM, as in decode */
        uint8_t *src = xalloc((size_t)(rows * nb) * sizeof(bitnet_block_tq2_0));
        for (int64_t i = 0; i < rows * nb; i++) {
            bitnet_block_tq2_0 *blk = (bitnet_block_tq2_0 *)src + i;
            for (int q = 0; q < 64; q++) blk->qs[q] = (uint8_t)((rnd() % 3) | (rnd() % 3) << 2 | (rnd() % 3) << 4 | (rnd() % 3) << 6);
            blk->d = 0x2400;
        }
        uint8_t *wpool = xalloc(wsize * (size_t)ncopies);
        bitnet_weights *ws = xalloc(sizeof *ws * (size_t)ncopies);
        for (int c = 0; c < ncopies; c++) {
            bitnet_repack(BITNET_LAYOUT_TK2, BITNET_SRC_TQ2_0, src, rows, k, wpool + wsize * (size_t)c);
            ws[c] = (bitnet_weights){wpool + wsize * (size_t)c, rows, k, BITNET_LAYOUT_TK2};
        }
        float *xf = random_floats(k * opt_cols, -1.0f, 1.0f);
        bitnet_act_block *xq = xalloc(bitnet_act_size(k, opt_cols));
        for (int64_t c = 0; c < opt_cols; c++) bitnet_quantize_act_per_token(xf + c * k, k, xq + c * nb);
        float *y = xalloc(sizeof(float) * (size_t)(rows * opt_cols)), *out = xalloc(sizeof(float) * (size_t)(rows * opt_cols));
        float *b = random_floats(rows * opt_cols, -1.0f, 1.0f);
        for (int gemm = 0; gemm < 2; gemm++)
            for (int ti = 0; ti < n_threads; ti++) {
                const int nth = opt_threads[ti];
                double t[2];
                for (int which = 0; which < 2; which++) {
                    job j = {.k = k, .ncols = gemm ? opt_cols : 1, .xq = xq, .y = y, .out = out, .b = b, .s = 0.9f, .which = which};
                    double *tt = xalloc(sizeof(double) * (size_t)opt_reps);
                    pool_start(nth);
                    for (int r = -1; r < opt_reps; r++) {
                        const int copies = gemm ? 1 : ncopies;
                        const double t0 = now_s();
                        for (int c = 0; c < copies; c++) {
                            j.wt = &ws[c];
                            pool_run(task_mm, &j);
                        }
                        if (r >= 0) tt[r] = (now_s() - t0) / copies;
                    }
                    pool_stop();
                    t[which] = median(tt, opt_reps);
                    free(tt);
                }
                const double bytes = gemm ? 4.0 * (double)(rows * opt_cols) * 3 : (double)wsize;
                report(gemm ? "gemm+add" : "gemv+add", "ours", rows, k, nth, t[1], bytes, t[0], "matmul alone");
            }
        free(src), free(wpool), free(ws), free(xf), free(xq), free(y), free(out), free(b);
    }
    return 0;
}
