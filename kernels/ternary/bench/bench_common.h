/*
 * bench_common.h - shared by the micro-benchmarks (bench_gemv.c, bench_fused.c): a spinning fork/join
 * thread pool (one fork/join per op, as ggml's threadpool), timing, medians, a PRNG, the CPU's name.
 * Header-only (static functions): each benchmark is one translation unit.
 */
#ifndef BITNET_BENCH_COMMON_H
#define BITNET_BENCH_COMMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXT 16

/* ---- a spinning fork/join pool ---- */
typedef void (*task_fn)(void *ctx, int ith, int nth);
static struct {
    int nth;
    pthread_t th[MAXT];
    atomic_int gen, done, quit;
    task_fn fn;
    void *ctx;
} pool;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *worker(void *arg) {
    const int ith = (int)(intptr_t)arg;
    int seen = 0;
    for (;;) {
        while (atomic_load_explicit(&pool.gen, memory_order_acquire) == seen) cpu_relax();
        seen++;
        if (atomic_load(&pool.quit)) return NULL;
        pool.fn(pool.ctx, ith, pool.nth);
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
}

static void pool_start(int nth) {
    pool.nth = nth;
    atomic_store(&pool.gen, 0);
    atomic_store(&pool.quit, 0);
    for (int i = 1; i < nth; i++) pthread_create(&pool.th[i], NULL, worker, (void *)(intptr_t)i);
}

static void pool_run(task_fn fn, void *ctx) {
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store(&pool.done, 0);
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    fn(ctx, 0, pool.nth);
    while (atomic_load_explicit(&pool.done, memory_order_acquire) < pool.nth - 1) cpu_relax();
}

static void pool_stop(void) {
    atomic_store(&pool.quit, 1);
    atomic_fetch_add(&pool.gen, 1);
    for (int i = 1; i < pool.nth; i++) pthread_join(pool.th[i], NULL);
}

/* ---- helpers ---- */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng_state = 0x243f6a8885a308d3ull;
/* Median seconds of `reps` runs of fn on a fresh pool of nth threads (one warm-up run first). */
static double time_task(int nth, task_fn fn, void *ctx, int reps, double *t) {
    pool_start(nth);
    pool_run(fn, ctx);
    for (int r = 0; r < reps; r++) {
        const double t0 = now_s();
        pool_run(fn, ctx);
        t[r] = now_s() - t0;
    }
    pool_stop();
    return median(t, reps);
}

static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* CPU model (Linux /proc/cpuinfo), an identity column of the rows */
static char cpu_name[128] = "unknown";
static void read_cpu_name(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        const char *c = strchr(line, ':');
        if (c && (!strncmp(line, "model name", 10) || !strncmp(line, "CPU part", 8))) {
            snprintf(cpu_name, sizeof cpu_name, "%s", c + 2);
            cpu_name[strcspn(cpu_name, "\n\"")] = 0;
            break;
        }
    }
    if (f) fclose(f);
}

#endif /* BITNET_BENCH_COMMON_H */
