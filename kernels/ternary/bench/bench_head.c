/*
 * bench_head.c - micro-benchmark of one ISA variant (not a test): the fp16/bf16 output head with 1..N
 * activation columns (batched decode of several llama-server clients), threads splitting rows (pthreads,
 * a spinning fork/join pool as ggml's threadpool).
 *
 *   bench_head_<variant> [--threads 1,2] [--cols 1,2,4] [--rows 32064] [--k 2560] [--reps 7] [--bf16]
 *
 * For each column count: "gemm" is one bitnet_gemm_f16 over all columns (bitnet_gemv_f16 for one
 * column), "gemvs" is one bitnet_gemv_f16 per column (each column streams the weights again), both the
 * median ms of --reps runs and GB/s of weight bytes read once. The weights (rows x k fp16, 164 MB by
 * default) exceed the last-level cache, so each run streams them from DRAM as in decode. Before timing,
 * every column of the GEMM is checked bitwise against the GEMV of that column.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitnet_kernels.h"

#include "bench_common.h"

typedef struct {
    const uint16_t *w;
    const float *x;
    float *y;
    int64_t k, rows, ncols;
    int bf16, per_column;
} job;

static void task_head(void *p, int ith, int nth) {
    const job *j = p;
    const int64_t groups = (j->rows + 15) / 16;
    const int64_t r0 = groups * ith / nth * 16, r1e = groups * (ith + 1) / nth * 16;
    const int64_t r1 = r1e < j->rows ? r1e : j->rows;
    if (j->per_column || j->ncols == 1) {
        for (int64_t c = 0; c < j->ncols; c++)
            (j->bf16 ? bitnet_gemv_bf16 : bitnet_gemv_f16)(j->w, j->k, j->k, j->x + c * j->k, j->y + c * j->rows, r0,
                                                            r1);
    } else {
        (j->bf16 ? bitnet_gemm_bf16 : bitnet_gemm_f16)(j->w, j->k, j->k, j->x, j->k, j->ncols, j->y, j->rows, r0,
                                                       r1);
    }
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        const long v = strtol(s, &end, 10);
        if (end == s || v < 1) {
            fprintf(stderr, "bad list: %s\n", s);
            exit(2);
        }
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv) {
    int threads[8] = {1, 2}, nthreads = 2, cols[16] = {1, 2, 4}, ncolss = 3, reps = 7, bf16 = 0;
    int64_t rows = 32064, k = 2560;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--bf16")) bf16 = 1;
        else if (v && !strcmp(a, "--threads")) nthreads = parse_list(v, threads, 8), i++;
        else if (v && !strcmp(a, "--cols")) ncolss = parse_list(v, cols, 16), i++;
        else if (v && !strcmp(a, "--rows")) rows = atoll(v), i++;
        else if (v && !strcmp(a, "--k")) k = atoll(v), i++;
        else if (v && !strcmp(a, "--reps")) reps = atoi(v), i++;
        else {
            fprintf(stderr, "usage: %s [--threads 1,2] [--cols 1,2,4] [--rows N] [--k K] [--reps N] [--bf16]\n", argv[0]);
            return 2;
        }
    }
    if (rows < 1 || k < 64 || k % 64 || reps < 1 || reps > 100) {
        fprintf(stderr, "rows >= 1, k a multiple of 64, 1 <= reps <= 100\n");
        return 2;
    }
    int maxc = 1;
    for (int i = 0; i < ncolss; i++) maxc = cols[i] > maxc ? cols[i] : maxc;
    read_cpu_name();
    uint16_t *w = xalloc(sizeof(uint16_t) * (size_t)(rows * k));
    float *x = xalloc(sizeof(float) * (size_t)(maxc * k));
    float *y = xalloc(sizeof(float) * (size_t)(maxc * rows)), *y1 = xalloc(sizeof(float) * (size_t)(maxc * rows));
    for (int64_t i = 0; i < rows * k; i++) /* |w| < 1: fp16 sign + exponent 1..14 + mantissa; bf16 likewise */
        w[i] = bf16 ? (uint16_t)((rnd() & 0x807f) | ((100 + rnd() % 26) << 7))
                    : (uint16_t)((rnd() & 0x83ff) | ((1 + rnd() % 14) << 10));
    for (int64_t i = 0; i < maxc * k; i++) x[i] = (float)((double)(rnd() % 2000001) / 1e6 - 1.0);
    double t[100];
    printf("# %s, isa %s, %s head %lld x %lld (%.0f MB), median of %d\n", cpu_name, bitnet_isa(), bf16 ? "bf16" : "fp16",
           (long long)rows, (long long)k, 2.0 * (double)(rows * k) / 1e6, reps);
    printf("%-8s %-5s %12s %10s %12s %10s\n", "threads", "cols", "gemm ms", "GB/s", "gemvs ms", "GB/s");
    for (int ti = 0; ti < nthreads; ti++)
        for (int ci = 0; ci < ncolss; ci++) {
            job j = {w, x, y, k, rows, cols[ci], bf16, 0};
            job jv = j;
            jv.y = y1;
            jv.per_column = 1;
            pool_start(1);
            pool_run(task_head, &j);
            pool_run(task_head, &jv);
            pool_stop();
            if (memcmp(y, y1, sizeof(float) * (size_t)(cols[ci] * rows))) {
                fprintf(stderr, "FAIL: a column of the GEMM differs from its GEMV (%d columns)\n", cols[ci]);
                return 1;
            }
            const double tg = time_task(threads[ti], task_head, &j, reps, t);
            const double tv = time_task(threads[ti], task_head, &jv, reps, t);
            const double gb = 2.0 * (double)(rows * k) / 1e9;
            printf("%-8d %-5d %12.2f %10.1f %12.2f %10.1f\n", threads[ti], cols[ci], tg * 1e3, gb / tg, tv * 1e3,
                   gb / tv);
        }
    free(w);
    free(x);
    free(y);
    free(y1);
    return 0;
}
