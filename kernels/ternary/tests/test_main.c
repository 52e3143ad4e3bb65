/*
 * test_main.c - C tests of one ISA variant of the kernel library against the scalar reference
 * (bitnet_ref_*) and against independent references (test_ref.c, written from ggml's layouts).
 *
 *   test_kernels_<variant> <group> [--quick]
 *   groups: layout quant kernels edges ggml tq1 errors f16 f16gemm pertoken chunks fused
 *
 * Exit: 0 pass, 1 fail, 77 skipped (this host cannot run the variant's ISA). --quick shrinks the shape
 * list (used under qemu). Kernel outputs must equal the reference BIT FOR BIT (same int32 sums, same
 * float combination order); comparisons with ggml's float semantics use a stated tolerance.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include "bitnet_kernels.h"
#include "test_ref.h"

static int g_quick;
static long g_checks, g_fail;

#define CHECK(cond, ...)                                                \
    do {                                                                \
        g_checks++;                                                     \
        if (!(cond)) {                                                  \
            if (++g_fail <= 25) {                                       \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
                fprintf(stderr, __VA_ARGS__);                           \
                fputc('\n', stderr);                                    \
            }                                                           \
        }                                                               \
    } while (0)

/* ---------------------------------------------------------------------------------------------- */
/* Can this host run the variant? Checked before any library call (the library has the ISA flags).  */
static int host_can_run(const char *v) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (!strcmp(v, "sse42")) return __builtin_cpu_supports("sse4.2");
    if (!strcmp(v, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               __builtin_cpu_supports("bmi2");
    if (!strcmp(v, "avxvnni"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("avxvnni");
    if (!strcmp(v, "avxvnni_evex"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (!strcmp(v, "avx512"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd") &&
               __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
#elif defined(__aarch64__) && defined(__linux__)
    if (!strcmp(v, "dotprod")) return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    return 1; /* scalar, neon */
}

static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* Fixtures: a ternary matrix (values + scales + its ggml bytes) and activation columns.            */
enum { W_RANDOM, W_ALL_NEG, W_ALL_ZERO, W_ALL_POS, W_BLOCKS }; /* W_BLOCKS: blocks cycle -1 / 0 / +1 / random */
enum { D_RANDOM, D_UNIT };

typedef struct {
    int64_t rows, k;
    bitnet_src_type src;
    int8_t *w;    /* rows*k in {-1, 0, 1} */
    uint16_t *d;  /* rows*(k/256) fp16 */
    uint8_t *raw; /* ggml blocks */
} t_matrix;

static void make_matrix(t_matrix *m, int64_t rows, int64_t k, bitnet_src_type src, int wmode, int dmode, t_rng *r) {
    const int64_t nb = k / T_QK;
    m->rows = rows;
    m->k = k;
    m->src = src;
    m->w = xalloc((size_t)(rows * k));
    m->d = xalloc((size_t)(rows * nb) * 2);
    m->raw = xalloc((size_t)(rows * nb) * (src == BITNET_SRC_TQ2_0 ? 66 : 54));
    static const int cycle[4] = {W_ALL_NEG, W_ALL_ZERO, W_ALL_POS, W_RANDOM};
    for (int64_t i = 0; i < rows * k; i++) {
        const int mode = wmode == W_BLOCKS ? cycle[(i / T_QK) % 4] : wmode;
        m->w[i] = mode == W_ALL_NEG    ? -1
                  : mode == W_ALL_ZERO ? 0
                  : mode == W_ALL_POS  ? 1
                                       : (int8_t)(t_uniform(r, 3) - 1);
    }
    for (int64_t i = 0; i < rows * nb; i++) m->d[i] = dmode == D_UNIT ? 0x3C00 : t_random_fp16_scale(r);
    if (src == BITNET_SRC_TQ2_0) t_encode_tq2_0(m->w, m->d, rows, k, m->raw);
    else t_encode_tq1_0(m->w, m->d, rows, k, m->raw);
}

static void free_matrix(t_matrix *m) {
    free(m->w);
    free(m->d);
    free(m->raw);
}

static void *repack(const t_matrix *m, bitnet_layout layout, bitnet_weights *w) {
    const size_t size = bitnet_weights_size(layout, m->rows, m->k);
    void *data = xalloc(size);
    memset(data, 0xA5, size); /* garbage: bitnet_repack must write every byte, padding included */
    const int rc = bitnet_repack(layout, m->src, m->raw, m->rows, m->k, data);
    CHECK(rc == BITNET_OK, "bitnet_repack -> %d", rc);
    /* bitnet_repack_groups over two ranges (threads at load) gives the same bytes */
    const int64_t groups = (m->rows + 15) / 16, mid = groups / 2;
    uint8_t *split = xalloc(size);
    memset(split, 0x5A, size);
    CHECK(bitnet_repack_groups(layout, m->src, m->raw, m->rows, m->k, split, mid, groups) == BITNET_OK &&
              bitnet_repack_groups(layout, m->src, m->raw, m->rows, m->k, split, 0, mid) == BITNET_OK,
          "bitnet_repack_groups");
    CHECK(memcmp(split, data, size) == 0, "repack in two group ranges differs from one repack (rows %lld)",
          (long long)m->rows);
    CHECK(bitnet_repack_groups(layout, m->src, m->raw, m->rows, m->k, split, 0, groups + 1) == BITNET_EINVAL &&
              bitnet_repack_groups(layout, m->src, m->raw, m->rows, m->k, split, 1, 0) == BITNET_EINVAL,
          "group range outside the matrix accepted");
    free(split);
    w->data = data;
    w->rows = m->rows;
    w->k = m->k;
    w->layout = layout;
    return data;
}

enum { A_QUANT, A_POS127, A_NEG127, A_NEG128, A_RANDOM_INT8, A_RANDOM_INT8_SCALED, A_ALTERNATE, A_PER_TOKEN };

/* ncols columns of k/256 blocks, column c at x + c*x_stride. Unit d except A_QUANT/_SCALED. */
static bitnet_act_block *make_acts(int64_t k, int64_t ncols, int64_t x_stride, int amode, t_rng *r) {
    const int64_t nb = k / T_QK;
    bitnet_act_block *x = xalloc(sizeof *x * (size_t)(x_stride * ncols));
    memset(x, 0x5a, sizeof *x * (size_t)(x_stride * ncols)); /* gaps hold junk: must not be read */
    float *f = xalloc(sizeof(float) * (size_t)k);
    for (int64_t c = 0; c < ncols; c++) {
        bitnet_act_block *col = x + c * x_stride;
        if (amode == A_QUANT || amode == A_PER_TOKEN) {
            const float scale = t_uniform_f(r, 0.01f, 10.0f);
            for (int64_t i = 0; i < k; i++) f[i] = scale * t_uniform_f(r, -1.0f, 1.0f);
            if (amode == A_QUANT) bitnet_quantize_act(f, k, col);
            else bitnet_quantize_act_per_token(f, k, col);
            continue;
        }
        for (int64_t b = 0; b < nb; b++) {
            int32_t s = 0;
            for (int i = 0; i < T_QK; i++) {
                int v;
                switch (amode) {
                case A_POS127: v = 127; break;
                case A_NEG127: v = -127; break;
                case A_NEG128: v = -128; break;
                case A_ALTERNATE: v = (i & 1) ? 127 : -128; break;
                default: v = t_uniform(r, 256) - 128;
                }
                col[b].qs[i] = (int8_t)v;
                s += v;
            }
            col[b].sum = s;
            col[b].d = amode == A_RANDOM_INT8_SCALED ? t_uniform_f(r, -0.1f, 0.1f) : 1.0f;
        }
    }
    free(f);
    return x;
}

/* ---------------------------------------------------------------------------------------------- */
/* Kernel vs reference, bit for bit, over row splits; canaries around every written range.        */
static const uint32_t CANARY = 0x7fc0bad1u;

static int is_canary(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u == CANARY;
}

static void fill_canary(float *y, size_t n) {
    for (size_t i = 0; i < n; i++) memcpy(&y[i], &CANARY, 4);
}

static void check_vs_ref(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride,
                         const char *what) {
    const int64_t rows = w->rows, y_stride = rows + 3; /* gap between columns: must stay untouched */
    const size_t ny = (size_t)(y_stride * ncols);
    float *yref = xalloc(sizeof(float) * ny), *y = xalloc(sizeof(float) * ny);
    fill_canary(yref, ny);
    CHECK(bitnet_ref_gemm(w, x, ncols, x_stride, yref, y_stride, 0, rows) == BITNET_OK, "%s: ref", what);

    for (int nth = 1; nth <= 3; nth++) {
        for (int api = 0; api < (ncols == 1 ? 3 : 2); api++) { /* matmul, gemm, (gemv) */
            fill_canary(y, ny);
            for (int ith = 0; ith < nth; ith++) {
                int64_t r0, r1;
                bitnet_split_rows(rows, ith, nth, &r0, &r1);
                int rc = api == 0   ? bitnet_matmul(w, x, ncols, x_stride, y, y_stride, r0, r1)
                         : api == 1 ? bitnet_gemm(w, x, ncols, x_stride, y, y_stride, r0, r1)
                                    : bitnet_gemv(w, x, y, r0, r1);
                CHECK(rc == BITNET_OK, "%s: api %d rc %d", what, api, rc);
            }
            long bad = 0;
            for (size_t i = 0; i < ny; i++)
                if (memcmp(&y[i], &yref[i], 4)) {
                    if (!bad)
                        CHECK(0, "%s: %s api %d nth %d: col %lld row %lld: got %.9g want %.9g", what, bitnet_isa(),
                              api, nth, (long long)(i / (size_t)y_stride), (long long)(i % (size_t)y_stride),
                              (double)y[i], (double)yref[i]);
                    bad++;
                }
            CHECK(bad == 0, "%s: %ld mismatches", what, bad);
        }
    }
    /* a sub-range: rows outside it untouched */
    if (rows > 16) {
        fill_canary(y, ny);
        CHECK(bitnet_matmul(w, x, ncols, x_stride, y, y_stride, 16, rows) == BITNET_OK, "%s: subrange", what);
        long bad = 0;
        for (int64_t c = 0; c < ncols; c++)
            for (int64_t r = 0; r < y_stride; r++) {
                const size_t i = (size_t)(c * y_stride + r);
                const int inside = r >= 16 && r < rows;
                if (inside ? memcmp(&y[i], &yref[i], 4) != 0 : !is_canary(y[i])) bad++;
            }
        CHECK(bad == 0, "%s: subrange [16,%lld): %ld wrong or clobbered", what, (long long)rows, bad);
    }
    free(y);
    free(yref);
}

/* ---------------------------------------------------------------------------------------------- */
/* group: layout - repack output equals the header's definition, bit for bit.                      */
static int decoded_weight(const bitnet_weights *w, int64_t r, int64_t k) {
    const int64_t nb = w->k / BITNET_QK, g = r / 16, b = k / BITNET_QK;
    const int rr = (int)(r % 16), kk = (int)(k % BITNET_QK);
    if (w->layout == BITNET_LAYOUT_TK2) {
        const bitnet_tk2_tile *t = (const bitnet_tk2_tile *)w->data + g * nb + b;
        for (int c = 0; c < BITNET_TK2_CHUNKS; c++)
            for (int l = 0; l < 4; l++)
                for (int i = 0; i < 4; i++)
                    if (bitnet_tk2_k(c, l, i) == kk) return ((t->q[c][rr][i] >> (2 * l)) & 3) - 1;
    } else {
        const bitnet_tk1_tile *t = (const bitnet_tk1_tile *)w->data + g * nb + b;
        for (int c = 0; c < BITNET_TK1_CHUNKS; c++)
            for (int n = 0; n < (c < 12 ? 5 : 4); n++)
                for (int i = 0; i < 4; i++)
                    if (bitnet_tk1_k(c, n, i) == kk) return bitnet_trit(t->q[c][rr][i], n) - 1;
    }
    return 99; /* k not covered: a layout bug */
}

static void group_layout(t_rng *r) {
    const int64_t rows_list[] = {1, 16, 17, 35}, k_list[] = {256, 768};
    for (int si = 0; si < 2; si++)
        for (size_t ri = 0; ri < 4; ri++)
            for (size_t ki = 0; ki < 2; ki++) {
                t_matrix m;
                const bitnet_src_type src = si ? BITNET_SRC_TQ1_0 : BITNET_SRC_TQ2_0;
                make_matrix(&m, rows_list[ri], k_list[ki], src, W_RANDOM, D_RANDOM, r);
                const int64_t nb = m.k / 256, groups = (m.rows + 15) / 16;
                /* the test's own encoder/decoder agree (else the rest proves nothing) */
                float *f = xalloc(sizeof(float) * (size_t)m.k);
                for (int64_t row = 0; row < m.rows; row++) {
                    const uint8_t *raw = m.raw + (size_t)(row * nb) * (si ? 54 : 66);
                    if (si) t_dequant_tq1_0(raw, m.k, f);
                    else t_dequant_tq2_0(raw, m.k, f);
                    long bad = 0;
                    for (int64_t k = 0; k < m.k; k++)
                        if (f[k] != (float)m.w[row * m.k + k] * t_fp16_to_float(m.d[row * nb + k / 256])) bad++;
                    CHECK(bad == 0, "test encoder/decoder disagree (src %d row %lld)", si, (long long)row);
                }
                free(f);
                for (int li = si ? 0 : 1; li < 2; li++) { /* TQ2 -> TK2; TQ1 -> TK2, TK1 */
                    const bitnet_layout layout = li ? BITNET_LAYOUT_TK2 : BITNET_LAYOUT_TK1;
                    bitnet_weights w;
                    void *data = repack(&m, layout, &w);
                    const size_t tile = layout == BITNET_LAYOUT_TK2 ? sizeof(bitnet_tk2_tile) : sizeof(bitnet_tk1_tile);
                    const size_t size = bitnet_weights_size(layout, m.rows, m.k);
                    CHECK(size == (size_t)(groups * nb) * (tile + 32), "size formula");
                    if (m.rows % 16 == 0 && (layout == BITNET_LAYOUT_TK2) == (si == 0))
                        CHECK(size == (size_t)(m.rows * nb) * (si ? 54 : 66), "size == ggml size");
                    long bad = 0;
                    for (int64_t row = 0; row < groups * 16; row++)
                        for (int64_t k = 0; k < m.k; k++) {
                            const int want = row < m.rows ? m.w[row * m.k + k] : -1; /* padding: zero bytes */
                            if (decoded_weight(&w, row, k) != want) bad++;
                        }
                    CHECK(bad == 0, "layout %d src %d rows %lld k %lld: %ld weights differ", layout, si,
                          (long long)m.rows, (long long)m.k, bad);
                    const uint16_t *sc = (const uint16_t *)((const uint8_t *)data + (size_t)(groups * nb) * tile);
                    bad = 0;
                    for (int64_t row = 0; row < groups * 16; row++)
                        for (int64_t b = 0; b < nb; b++) {
                            const uint16_t want = row < m.rows ? m.d[row * nb + b] : 0;
                            if (sc[((row / 16) * nb + b) * 16 + row % 16] != want) bad++;
                        }
                    CHECK(bad == 0, "scales misplaced: %ld", bad);
                    free(data);
                }
                free_matrix(&m);
            }
}

/* ---------------------------------------------------------------------------------------------- */
/* group: quant - bitnet_quantize_act gives ggml's q8_K values; its error bound holds.             */
static void group_quant(t_rng *r) {
    const int64_t k = 2560, nb = k / 256;
    float *x = xalloc(sizeof(float) * (size_t)k);
    bitnet_act_block *ours = xalloc(sizeof *ours * (size_t)nb);
    t_block_q8_K *ref = xalloc(sizeof *ref * (size_t)nb);
    for (int trial = 0; trial < 40; trial++) {
        const float scale = powf(10.0f, t_uniform_f(r, -6.0f, 6.0f));
        for (int64_t i = 0; i < k; i++) x[i] = scale * t_uniform_f(r, -1.0f, 1.0f);
        if (trial % 4 == 1) memset(x + 256, 0, 256 * sizeof(float));     /* an all-zero block */
        if (trial % 4 == 2) x[700] = -3.0f * scale;                       /* a negative outlier: d < 0 */
        if (trial % 4 == 3) for (int64_t i = 0; i < k; i++) x[i] = (float)(t_uniform(r, 7) - 3) * scale; /* ties */
        bitnet_quantize_act(x, k, ours);
        t_quantize_q8_K(x, k, ref);
        for (int64_t b = 0; b < nb; b++) {
            int32_t bsum = 0;
            for (int j = 0; j < 16; j++) bsum += ref[b].bsums[j];
            CHECK(!memcmp(&ours[b].d, &ref[b].d, 4), "d differs from q8_K: %g vs %g", (double)ours[b].d,
                  (double)ref[b].d);
            CHECK(!memcmp(ours[b].qs, ref[b].qs, 256), "qs differ from q8_K (trial %d block %lld)", trial,
                  (long long)b);
            CHECK(ours[b].sum == bsum, "sum %d != sum of q8_K bsums %d", ours[b].sum, bsum);
            float worst = 0;
            for (int j = 0; j < 256; j++) {
                const float e = fabsf(x[b * 256 + j] - ours[b].d * ours[b].qs[j]);
                if (e > worst) worst = e;
            }
            /* stated bound: |x - d q| <= |d|/2, plus float rounding of x*iscale and d*q (~2^-23 of |x|) */
            CHECK(worst <= fabsf(ours[b].d) * 0.5f * (1.0f + 1e-5f) + 1e-6f * scale, "error %g > |d|/2 = %g",
                  (double)worst, (double)(fabsf(ours[b].d) * 0.5f));
        }
    }
    free(x);
    free(ours);
    free(ref);
}

/* ---------------------------------------------------------------------------------------------- */
/* group: kernels - every shape and column count, TK2 and TK1, vs the reference.                  */
static void run_case(t_rng *r, int64_t rows, int64_t k, int64_t ncols, bitnet_src_type src, bitnet_layout layout,
                     int wmode, int dmode, int amode) {
    char what[160];
    snprintf(what, sizeof what, "rows %lld k %lld cols %lld src %d layout %d w %d d %d a %d", (long long)rows,
             (long long)k, (long long)ncols, src, layout, wmode, dmode, amode);
    t_matrix m;
    make_matrix(&m, rows, k, src, wmode, dmode, r);
    bitnet_weights w;
    void *data = repack(&m, layout, &w);
    const int64_t x_stride = k / 256 + 1; /* a junk block between columns */
    bitnet_act_block *x = make_acts(k, ncols, x_stride, amode, r);
    check_vs_ref(&w, x, ncols, x_stride, what);

    if (dmode == D_UNIT && amode != A_QUANT && amode != A_PER_TOKEN && amode != A_RANDOM_INT8_SCALED) {
        /* unit scales: y = sum of exact int32 block sums, computed here without the library */
        float *y = xalloc(sizeof(float) * (size_t)(rows * ncols));
        CHECK(bitnet_matmul(&w, x, ncols, x_stride, y, rows, 0, rows) == BITNET_OK, "%s", what);
        long bad = 0;
        for (int64_t c = 0; c < ncols; c++)
            for (int64_t row = 0; row < rows; row++) {
                int64_t s = 0;
                for (int64_t kk = 0; kk < k; kk++) s += m.w[row * k + kk] * x[c * x_stride + kk / 256].qs[kk % 256];
                if (y[c * rows + row] != (float)s) bad++;
            }
        CHECK(bad == 0, "%s: %ld int sums differ from the independent sum", what, bad);
        free(y);
    }
    free(x);
    free(data);
    free_matrix(&m);
}

static void group_kernels(t_rng *r) {
    const int64_t k_full[] = {256, 512, 2560, 6912}, k_quick[] = {256, 2560};
    const int64_t rows_list[] = {1, 3, 7, 17, 31}, cols_full[] = {1, 2, 3, 8, 17, 128}, cols_quick[] = {1, 2, 3, 8, 17};
    const int nk = g_quick ? 2 : 4, ncl = g_quick ? 5 : 6;
    for (int ki = 0; ki < nk; ki++)
        for (int ri = 0; ri < 5; ri++)
            for (int ci = 0; ci < ncl; ci++) {
                const int64_t k = g_quick ? k_quick[ki] : k_full[ki], c = g_quick ? cols_quick[ci] : cols_full[ci];
                run_case(r, rows_list[ri], k, c, BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM, A_QUANT);
                run_case(r, rows_list[ri], k, c, BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM, D_RANDOM, A_QUANT);
                run_case(r, rows_list[ri], k, c, BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM,
                         A_RANDOM_INT8_SCALED);
            }
    /* the 2B4T shapes: q/o 2560x2560, k/v 640x2560, gate/up 6912x2560, down 2560x6912 */
    const int64_t shapes[4][2] = {{2560, 2560}, {640, 2560}, {6912, 2560}, {2560, 6912}};
    const int64_t cols_big[] = {1, 3, 17};
    for (int s = 0; s < 4; s++)
        for (int ci = 0; ci < (g_quick ? 1 : 3); ci++) {
            if (g_quick && s != 1 && s != 3) continue;
            run_case(r, shapes[s][0], shapes[s][1], cols_big[ci], BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM,
                     D_RANDOM, A_QUANT);
            run_case(r, shapes[s][0], shapes[s][1], cols_big[ci], BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM,
                     D_RANDOM, A_QUANT);
        }
    if (!g_quick) run_case(r, 2560, 2560, 128, BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM, A_QUANT);
    /* more columns than the GEMMs keep running sums for at once (BITNET_YS_COLS 512): a second chunk with a
     * one-column tile at its end, and a third, narrow one */
    const int64_t wide[] = {545, 1037};
    for (int i = 0; i < 2; i++) {
        run_case(r, 33, 512, wide[i], BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM, A_QUANT);
        run_case(r, 17, 256, wide[i], BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM, D_RANDOM, A_PER_TOKEN);
    }
    /* 6912 deep: a pass over the row groups takes at most 512 KiB of activations (internal.h, bitnet__l2_cols:
     * <= 72 columns), so 100 columns take two passes or more, the last a partial one */
    run_case(r, 48, 6912, 100, BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM, A_QUANT);
    run_case(r, 33, 6912, 100, BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM, D_RANDOM, A_PER_TOKEN);
}

/* ---------------------------------------------------------------------------------------------- */
/* group: pertoken - bitnet_quantize_act_per_token is BitNet b1.58's ActQuant (one scale per column), */
/* bit for bit in every ISA; the split halves give the same blocks; the kernels run it exactly.      */
static void group_pertoken(t_rng *r) {
    const int64_t ks[] = {256, 1280, 2560, 6912};
    for (int ki = 0; ki < 4; ki++) {
        const int64_t k = ks[ki], nb = k / 256;
        float *x = xalloc(sizeof(float) * (size_t)k);
        bitnet_act_block *ours = xalloc(sizeof *ours * (size_t)nb), *ref = xalloc(sizeof *ref * (size_t)nb),
                         *split = xalloc(sizeof *split * (size_t)nb);
        for (int trial = 0; trial < 24; trial++) {
            const float scale = trial % 8 == 7 ? 1e-7f : powf(10.0f, t_uniform_f(r, -6.0f, 6.0f));
            for (int64_t i = 0; i < k; i++) x[i] = scale * t_uniform_f(r, -1.0f, 1.0f);
            if (trial % 8 == 1) memset(x + (k > 256 ? 256 : 0), 0, 256 * sizeof(float)); /* an all-zero block */
            if (trial % 8 == 2) x[k - 3] = -40.0f * scale;                                /* a big outlier */
            if (trial % 8 == 3) for (int64_t i = 0; i < k; i++) x[i] = (float)(t_uniform(r, 7) - 3) * scale;
            if (trial % 8 == 4) for (int64_t i = 0; i < k; i++) x[i] = (float)(t_uniform(r, 255) - 127) + 0.5f; /* ties */
            if (trial % 8 == 5) memset(x, 0, sizeof(float) * (size_t)k);                 /* all zero */
            if (trial % 8 == 6) x[5] = NAN;                                                /* NaN: ignored by amax */
            bitnet_quantize_act_per_token(x, k, ours);
            bitnet_ref_quantize_act_per_token(x, k, ref);
            CHECK(!memcmp(ours, ref, sizeof *ours * (size_t)nb), "k %lld trial %d: ISA blocks differ from the C "
                  "definition", (long long)k, trial);
            /* the split halves, as the engine calls them for one decode column over threads */
            const float amax = bitnet_act_amax(x, k);
            for (int64_t b = 0; b < nb; b++) bitnet_quantize_act_scaled(x + b * 256, 256, amax, split + b);
            CHECK(!memcmp(split, ref, sizeof *ours * (size_t)nb), "k %lld trial %d: split blocks differ",
                  (long long)k, trial);
            /* the definition, computed here independently: transformers' activation_quant in float32 */
            float m = 0.0f;
            for (int64_t i = 0; i < k; i++)
                if (fabsf(x[i]) > m) m = fabsf(x[i]);
            CHECK(amax == m, "amax %g != %g", (double)amax, (double)m);
            const float s = 127.0f / (m > 1e-5f ? m : 1e-5f);
            long bad = 0;
            for (int64_t b = 0; b < nb; b++) {
                int32_t sum = 0;
                for (int j = 0; j < 256; j++) {
                    const float v = x[b * 256 + j];
                    if (v != v) continue; /* NaN input: no defined value */
                    float q = nearbyintf(s * v); /* default rounding: half to even, like torch.round */
                    q = q < -128.0f ? -128.0f : q > 127.0f ? 127.0f : q;
                    bad += ref[b].qs[j] != (int8_t)q;
                    sum += ref[b].qs[j];
                    /* stated bound: |x - d q| <= max(amax, 1e-5)/254, plus float rounding */
                    const float mm = m > 1e-5f ? m : 1e-5f;
                    if (fabsf(v - ref[b].d * ref[b].qs[j]) > mm / 254.0f * (1.0f + 1e-5f) + 1e-6f * mm) bad++;
                }
                if (trial % 8 != 6) bad += ref[b].sum != sum;
                bad += memcmp(&ref[b].d, &ref[0].d, 4) != 0; /* one scale for the whole column */
                const float d = 1.0f / s;
                bad += memcmp(&ref[b].d, &d, 4) != 0;
            }
            CHECK(bad == 0, "k %lld trial %d: %ld values differ from activation_quant", (long long)k, trial, bad);
        }
        free(x);
        free(ours);
        free(ref);
        free(split);
    }
    /* the kernels take per-token columns like any others: bit for bit vs the reference */
    const int64_t cols[] = {1, 2, 5, 17};
    for (int ci = 0; ci < 4; ci++) {
        run_case(r, 33, 1280, cols[ci], BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM, A_PER_TOKEN);
        run_case(r, 33, 1280, cols[ci], BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM, D_RANDOM, A_PER_TOKEN);
        run_case(r, 17, 2560, cols[ci], BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM, A_PER_TOKEN);
    }
    static const float ones[256] = {1.0f};
    CHECK(bitnet_act_amax(NULL, 256) == 0.0f && bitnet_act_amax(ones, 100) == 0.0f, "amax checks its arguments");
}

/* ---------------------------------------------------------------------------------------------- */
/* group: edges - extreme weights and activations, unit scales (exact int sums), big odd rows.     */
static void group_edges(t_rng *r) {
    const int wmodes[] = {W_ALL_NEG, W_ALL_ZERO, W_ALL_POS, W_BLOCKS, W_RANDOM};
    const int amodes[] = {A_POS127, A_NEG127, A_NEG128, A_ALTERNATE, A_RANDOM_INT8};
    const int64_t rows_list[] = {1, 3, 7, 17, 2560, 6912};
    for (int wi = 0; wi < 5; wi++)
        for (int ai = 0; ai < 5; ai++)
            for (int li = 0; li < 2; li++) {
                const bitnet_src_type src = li ? BITNET_SRC_TQ1_0 : BITNET_SRC_TQ2_0;
                const bitnet_layout layout = li ? BITNET_LAYOUT_TK1 : BITNET_LAYOUT_TK2;
                run_case(r, 17, g_quick ? 512 : 6912, 3, src, layout, wmodes[wi], D_UNIT, amodes[ai]);
                run_case(r, 7, 256, 17, src, layout, wmodes[wi], D_UNIT, amodes[ai]);
            }
    for (int ri = 0; ri < 6; ri++) {
        const int64_t rows = rows_list[ri];
        if (g_quick && rows > 2560) continue;
        for (int li = 0; li < 2; li++) {
            const bitnet_src_type src = li ? BITNET_SRC_TQ1_0 : BITNET_SRC_TQ2_0;
            const bitnet_layout layout = li ? BITNET_LAYOUT_TK1 : BITNET_LAYOUT_TK2;
            run_case(r, rows, 2560, 1, src, layout, W_BLOCKS, D_UNIT, A_ALTERNATE);
            run_case(r, rows, 2560, 2, src, layout, W_ALL_POS, D_UNIT, A_NEG128);
            if (!g_quick) run_case(r, rows, 6912, 3, src, layout, W_RANDOM, D_RANDOM, A_RANDOM_INT8_SCALED);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* groups: ggml, tq1 - our result vs ggml's semantics in floats: sum over k of dequantized weight  */
/* times dequantized q8_K activation (computed here in double).                                    */
static double g_worst_rel, g_worst_qerr;

static void check_ggml_semantics(t_rng *r, int64_t rows, int64_t k, int64_t ncols, bitnet_src_type src,
                                 bitnet_layout layout) {
    const int64_t nb = k / 256;
    t_matrix m;
    make_matrix(&m, rows, k, src, W_RANDOM, D_RANDOM, r);
    bitnet_weights w;
    void *data = repack(&m, layout, &w);
    float *xf = xalloc(sizeof(float) * (size_t)(k * ncols)), *wf = xalloc(sizeof(float) * (size_t)k);
    for (int64_t i = 0; i < k * ncols; i++) {
        const float u = t_uniform_f(r, -1.0f, 1.0f);
        xf[i] = t_uniform(r, 50) == 0 ? 20.0f * u : u; /* a few outliers, as in real activations */
    }
    bitnet_act_block *xq = xalloc(sizeof *xq * (size_t)(nb * ncols));
    t_block_q8_K *q8 = xalloc(sizeof *q8 * (size_t)(nb * ncols));
    for (int64_t c = 0; c < ncols; c++) {
        bitnet_quantize_act(xf + c * k, k, xq + c * nb);
        t_quantize_q8_K(xf + c * k, k, q8 + c * nb);
    }
    float *y = xalloc(sizeof(float) * (size_t)(rows * ncols));
    CHECK(bitnet_matmul(&w, xq, ncols, nb, y, rows, 0, rows) == BITNET_OK, "matmul");
    for (int64_t row = 0; row < rows; row++) {
        const uint8_t *raw = m.raw + (size_t)(row * nb) * (src == BITNET_SRC_TQ2_0 ? 66 : 54);
        if (src == BITNET_SRC_TQ2_0) t_dequant_tq2_0(raw, k, wf);
        else t_dequant_tq1_0(raw, k, wf);
        for (int64_t c = 0; c < ncols; c++) {
            double ggml = 0, mag = 0, exact = 0, bound = 0;
            for (int64_t kk = 0; kk < k; kk++) {
                const t_block_q8_K *qb = &q8[c * nb + kk / 256];
                const double t = (double)wf[kk] * ((double)qb->d * qb->qs[kk % 256]);
                ggml += t;
                mag += fabs(t);
                exact += (double)wf[kk] * xf[c * k + kk];
                bound += fabs((double)wf[kk]) * fabs((double)qb->d) * 0.5; /* |w| * |x - dq| <= |w| |d|/2 */
            }
            const double got = y[c * rows + row], err = fabs(got - ggml);
            /* float combination of exact block sums: a few ulps of the magnitude per block */
            CHECK(err <= 1e-6 * mag * (double)nb + 1e-30, "row %lld col %lld: %.9g vs ggml %.9g (|terms| %g)",
                  (long long)row, (long long)c, got, ggml, mag);
            if (mag > 0 && err / mag > g_worst_rel) g_worst_rel = err / mag;
            CHECK(fabs(got - exact) <= bound * (1 + 1e-5) + 1e-6 * mag, "quantization error %g above bound %g",
                  fabs(got - exact), bound);
            if (mag > 0 && fabs(got - exact) / mag > g_worst_qerr) g_worst_qerr = fabs(got - exact) / mag;
        }
    }
    free(y);
    free(q8);
    free(xq);
    free(wf);
    free(xf);
    free(data);
    free_matrix(&m);
}

static void group_ggml(t_rng *r, bitnet_src_type src) {
    const int64_t rows_list[] = {1, 17, 640}, k_list[] = {256, 2560, 6912}, cols[] = {1, 3, 8};
    for (int ri = 0; ri < 3; ri++)
        for (int ki = 0; ki < 3; ki++)
            for (int ci = 0; ci < 3; ci++) {
                if (g_quick && (rows_list[ri] > 17 || k_list[ki] > 2560)) continue;
                if (src == BITNET_SRC_TQ2_0) {
                    check_ggml_semantics(r, rows_list[ri], k_list[ki], cols[ci], src, BITNET_LAYOUT_TK2);
                } else {
                    check_ggml_semantics(r, rows_list[ri], k_list[ki], cols[ci], src, BITNET_LAYOUT_TK1);
                    check_ggml_semantics(r, rows_list[ri], k_list[ki], cols[ci], src, BITNET_LAYOUT_TK2);
                }
            }
    printf("vs ggml float semantics: worst |ours - ggml| / sum|terms| = %.3g; "
           "worst |ours - unquantized| / sum|terms| = %.3g\n", g_worst_rel, g_worst_qerr);
    if (src == BITNET_SRC_TQ1_0) {
        /* the same ternary values through TQ1_0->TK1, TQ1_0->TK2 and TQ2_0->TK2 give identical floats */
        for (int trial = 0; trial < (g_quick ? 2 : 6); trial++) {
            const int64_t rows = 33, k = 2560, nb = k / 256, ncols = 1 + trial;
            t_rng r1 = *r, r2 = *r;
            t_matrix m1, m2;
            make_matrix(&m1, rows, k, BITNET_SRC_TQ1_0, W_RANDOM, D_RANDOM, &r1);
            make_matrix(&m2, rows, k, BITNET_SRC_TQ2_0, W_RANDOM, D_RANDOM, &r2);
            *r = r1;
            bitnet_weights wa, wb, wc, wd;
            void *da = repack(&m1, BITNET_LAYOUT_TK1, &wa), *db = repack(&m1, BITNET_LAYOUT_TK2, &wb),
                 *dc = repack(&m2, BITNET_LAYOUT_TK2, &wc), *dd = repack(&m2, BITNET_LAYOUT_TK1, &wd);
            CHECK(!memcmp(db, dc, bitnet_weights_size(BITNET_LAYOUT_TK2, rows, k)), "TQ1->TK2 != TQ2->TK2 bytes");
            CHECK(!memcmp(da, dd, bitnet_weights_size(BITNET_LAYOUT_TK1, rows, k)), "TQ1->TK1 != TQ2->TK1 bytes");
            bitnet_act_block *x = make_acts(k, ncols, nb, A_QUANT, r);
            const size_t ny = sizeof(float) * (size_t)(rows * ncols);
            float *ya = xalloc(ny), *yb = xalloc(ny);
            CHECK(bitnet_matmul(&wa, x, ncols, nb, ya, rows, 0, rows) == BITNET_OK, "tk1");
            CHECK(bitnet_matmul(&wb, x, ncols, nb, yb, rows, 0, rows) == BITNET_OK, "tk2");
            CHECK(!memcmp(ya, yb, ny), "TK1 and TK2 results differ");
            free(ya);
            free(yb);
            free(x);
            free(da);
            free(db);
            free(dc);
            free(dd);
            free_matrix(&m1);
            free_matrix(&m2);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* group: errors - invalid input is refused with the documented code.                             */
static void group_errors(t_rng *r) {
    t_matrix m;
    make_matrix(&m, 20, 512, BITNET_SRC_TQ2_0, W_RANDOM, D_RANDOM, r);
    const size_t size = bitnet_weights_size(BITNET_LAYOUT_TK2, 20, 512);
    void *dst = xalloc(size);
    CHECK(bitnet_repack(BITNET_LAYOUT_TK2, BITNET_SRC_TQ2_0, m.raw, 20, 512, dst) == BITNET_OK, "valid repack");
    m.raw[66 * 7 + 13] |= 0x30; /* a code 3 in row 3, block 1 */
    CHECK(bitnet_repack(BITNET_LAYOUT_TK2, BITNET_SRC_TQ2_0, m.raw, 20, 512, dst) == BITNET_EBADCODE, "code 3");
    CHECK(bitnet_repack(BITNET_LAYOUT_TK1, BITNET_SRC_TQ2_0, m.raw, 20, 512, dst) == BITNET_EBADCODE, "code 3 -> TK1");
    CHECK(bitnet_repack(BITNET_LAYOUT_TK2, BITNET_SRC_TQ2_0, m.raw, 20, 500, dst) == BITNET_EINVAL, "k %% 256");
    CHECK(bitnet_repack(BITNET_LAYOUT_TK2, BITNET_SRC_TQ2_0, NULL, 20, 512, dst) == BITNET_EINVAL, "NULL src");
    CHECK(bitnet_weights_size(BITNET_LAYOUT_TK2, 20, 300) == 0, "size of bad k");
    CHECK(bitnet_weights_size((bitnet_layout)7, 20, 512) == 0, "size of bad layout");
    m.raw[66 * 7 + 13] &= (uint8_t)~0x10; /* back to a valid code (2) */
    CHECK(bitnet_repack(BITNET_LAYOUT_TK2, BITNET_SRC_TQ2_0, m.raw, 20, 512, dst) == BITNET_OK, "valid again");

    const bitnet_weights w = {dst, 20, 512, BITNET_LAYOUT_TK2};
    bitnet_act_block *x = make_acts(512, 2, 2, A_RANDOM_INT8, r);
    float y[64];
    CHECK(bitnet_gemv(&w, x, y, 0, 20) == BITNET_OK, "full range");
    CHECK(bitnet_gemv(&w, x, y, 8, 20) == BITNET_EINVAL, "r0 not a multiple of 16");
    CHECK(bitnet_gemv(&w, x, y, 0, 19) == BITNET_EINVAL, "r1 neither aligned nor rows");
    CHECK(bitnet_gemv(&w, x, y, 16, 21) == BITNET_EINVAL, "r1 > rows");
    CHECK(bitnet_gemv(&w, x, y, 16, 16) == BITNET_OK, "empty range");
    CHECK(bitnet_gemm(&w, x, 2, 1, y, 20, 0, 20) == BITNET_EINVAL, "x_stride < blocks per column");
    CHECK(bitnet_gemm(&w, x, 2, 2, y, 19, 0, 20) == BITNET_EINVAL, "y_stride < rows");
    CHECK(bitnet_matmul(NULL, x, 1, 2, y, 20, 0, 20) == BITNET_EINVAL, "NULL weights");
    CHECK(bitnet_ref_gemv(&w, x, y, 8, 20) == BITNET_EINVAL, "ref checks too");
    CHECK(bitnet_act_size(512, 3) == 6 * sizeof(bitnet_act_block) && bitnet_act_size(500, 3) == 0, "act size");
    const bitnet_kernel_info info = bitnet_get_kernel_info();
    CHECK(bitnet_preferred_layout(BITNET_SRC_TQ2_0) == BITNET_LAYOUT_TK2 ||
              bitnet_preferred_layout(BITNET_SRC_TQ2_0) == BITNET_LAYOUT_TK1, "TQ2_0 -> TK2 or TK1 (tuning.json tq2_base3)");
    CHECK(bitnet_preferred_layout(BITNET_SRC_TQ1_0) == info.tq1_layout, "info.tq1_layout");
    CHECK(!strcmp(info.isa, bitnet_isa()) && info.gemm_row_groups >= 1 && info.gemm_cols >= 1, "kernel info");
    int64_t r0, r1, covered = 0;
    for (int nth = 1; nth <= 5; nth++) {
        covered = 0;
        for (int ith = 0; ith < nth; ith++) {
            bitnet_split_rows(6913, ith, nth, &r0, &r1);
            CHECK(r0 % 16 == 0 && (r1 % 16 == 0 || r1 == 6913) && r0 == covered, "split %d/%d", ith, nth);
            covered = r1;
        }
        CHECK(covered == 6913, "split covers all rows");
    }
    free(x);
    free(dst);
    free_matrix(&m);
}

/* ---------------------------------------------------------------------------------------------- */
/* group: f16 - the fp16 head GEMV equals its reference bit for bit (any rows, row ranges, leading   */
/* dimension); the reference is within float rounding of the exact dot product; bad arguments.       */
static uint16_t random_finite_fp16(t_rng *r) {
    for (;;) {
        const uint16_t h = (uint16_t)t_next(r);
        if (((h >> 10) & 0x1f) != 0x1f) return h; /* not inf / nan: normals, subnormals, +-0 */
    }
}

/* bf16 has float32's range: keep |w| in 2^-30 .. 2^31 (plus zeros and subnormals) so that dot products of
 * up to 6912 terms stay finite, like fp16's whole range does. */
static uint16_t random_finite_bf16(t_rng *r) {
    const uint16_t h = (uint16_t)t_next(r);
    const uint16_t e = (uint16_t)(t_uniform(r, 16) == 0 ? 0 : 97 + t_uniform(r, 61)); /* 0: zero/subnormal */
    return (uint16_t)((h & 0x807f) | (e << 7));
}

static float bf16_bits_to_float(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef int (*gemv16_fn)(const uint16_t *, int64_t, int64_t, const float *, float *, int64_t, int64_t);

static void group_f16(t_rng *r) {
  for (int bf = 0; bf <= 1; bf++) { /* fp16, then bf16: the same code and checks */
    const gemv16_fn gemv = bf ? bitnet_gemv_bf16 : bitnet_gemv_f16, ref = bf ? bitnet_ref_gemv_bf16 : bitnet_ref_gemv_f16;
    const char *tname = bf ? "bf16" : "f16";
    static const int64_t ks[] = {64, 192, 256, 2560, 6912};
    static const int64_t rowss[] = {1, 3, 4, 5, 17, 100};
    const int nk = g_quick ? 4 : 5;
    for (int ki = 0; ki < nk; ki++)
        for (int ri = 0; ri < 6; ri++)
            for (int pad = 0; pad <= 7; pad += 7) {
                const int64_t k = ks[ki], rows = rowss[ri], ldw = k + pad;
                uint16_t *w = xalloc(sizeof(uint16_t) * (size_t)(rows * ldw + 1));
                float *x = xalloc(sizeof(float) * (size_t)k);
                float *y = xalloc(sizeof(float) * (size_t)(rows + 2));
                float *yref = xalloc(sizeof(float) * (size_t)(rows + 2));
                const uint16_t *wu = w + (pad ? 1 : 0); /* unaligned rows too */
                for (int64_t i = 0; i < rows * ldw + 1; i++) w[i] = bf ? random_finite_bf16(r) : random_finite_fp16(r);
                for (int64_t i = 0; i < k; i++) x[i] = t_uniform_f(r, -4.0f, 4.0f);
                CHECK(ref(wu, k, ldw, x, yref, 0, rows) == BITNET_OK, "ref rc");
                for (int64_t row = 0; row < rows; row++) { /* the reference vs the exact dot product */
                    double exact = 0, mag = 0;
                    for (int64_t i = 0; i < k; i++) {
                        const double p = (double)(bf ? bf16_bits_to_float(wu[row * ldw + i]) : t_fp16_to_float(wu[row * ldw + i])) * x[i];
                        exact += p;
                        mag += fabs(p);
                    }
                    CHECK(fabs(yref[row] - exact) <= 1e-6 * ((double)k / 64.0 + 6.0) * mag + 1e-30, "ref %g vs exact %g",
                          (double)yref[row], exact);
                }
                /* whole range, then split ranges as threads would take them (sentinels stay put) */
                for (int parts = 1; parts <= 3; parts++) {
                    for (int64_t i = 0; i < rows + 2; i++) y[i] = -12345.0f;
                    for (int p = 0; p < parts; p++) {
                        const int64_t a = rows * p / parts, b = rows * (p + 1) / parts;
                        CHECK(gemv(wu, k, ldw, x, y + 1, a, b) == BITNET_OK, "rc");
                    }
                    CHECK(!memcmp(y + 1, yref, sizeof(float) * (size_t)rows), "%s %s gemv != reference: k %lld "
                          "rows %lld ldw %lld parts %d", bitnet_isa(), tname, (long long)k, (long long)rows, (long long)ldw,
                          parts);
                    CHECK(y[0] == -12345.0f && y[rows + 1] == -12345.0f, "wrote outside [r0, r1)");
                }
                free(w);
                free(x);
                free(y);
                free(yref);
            }
  }
    uint16_t w[128] = {0};
    float x[128] = {0}, y[2];
    CHECK(bitnet_gemv_f16(w, 32, 32, x, y, 0, 1) == BITNET_EINVAL, "k not a multiple of 64");
    CHECK(bitnet_gemv_f16(w, 64, 32, x, y, 0, 1) == BITNET_EINVAL, "ldw < k");
    CHECK(bitnet_gemv_f16(NULL, 64, 64, x, y, 0, 1) == BITNET_EINVAL, "NULL w");
    CHECK(bitnet_gemv_f16(w, 64, 64, x, y, 1, 0) == BITNET_EINVAL, "r1 < r0");
    CHECK(bitnet_ref_gemv_f16(w, 0, 64, x, y, 0, 1) == BITNET_EINVAL, "ref checks too");
    CHECK(bitnet_gemv_bf16(w, 32, 32, x, y, 0, 1) == BITNET_EINVAL && bitnet_ref_gemv_bf16(w, 64, 32, x, y, 0, 1) ==
          BITNET_EINVAL, "bf16 checks its arguments");
    /* the engine hands the head to these kernels only where they are vectorized */
    const int simd = strcmp(bitnet_isa(), "scalar") != 0 && strcmp(bitnet_isa(), "ssse3") != 0;
    CHECK(bitnet_gemv_f16_native() == simd, "bitnet_gemv_f16_native() = %d on isa %s", bitnet_gemv_f16_native(),
          bitnet_isa());
}

/* ---------------------------------------------------------------------------------------------- */
/* group: f16gemm - the multi-column head kernel: every column equals the one-column GEMV of that    */
/* column BIT FOR BIT (batch invariance of the logits), for any column count (tiles of 4 and their    */
/* remainders), rows not a multiple of the row block, row ranges as threads take them, padded ldw /  */
/* ldx / ldy; the reference GEMM equals the reference GEMV too; bad arguments.                       */
typedef int (*gemm16_fn)(const uint16_t *, int64_t, int64_t, const float *, int64_t, int64_t, float *, int64_t,
                         int64_t, int64_t);

static void group_f16gemm(t_rng *r) {
  for (int bf = 0; bf <= 1; bf++) {
    const gemv16_fn gemv = bf ? bitnet_gemv_bf16 : bitnet_gemv_f16;
    const gemm16_fn gemm = bf ? bitnet_gemm_bf16 : bitnet_gemm_f16, ref = bf ? bitnet_ref_gemm_bf16 : bitnet_ref_gemm_f16;
    const char *tname = bf ? "bf16" : "f16";
    /* k: one 64-chunk, less than a 512 k-block, not a multiple of it, the 2B's 2560; rows: sub-blocks of 8
     * and row blocks of 16 with remainders */
    static const int64_t ks[] = {64, 192, 704, 2560};
    static const int64_t rowss[] = {1, 5, 17, 37};
    static const int64_t ncolss[] = {1, 2, 3, 4, 5, 8, 17};
    for (int ki = 0; ki < 4; ki++)
        for (int ri = 0; ri < 4; ri++)
            for (int ci = 0; ci < 7; ci++) {
                const int64_t k = ks[ki], rows = rowss[ri], ncols = ncolss[ci];
                if (g_quick && k == 2560 && rows > 17) continue;
                const int pad = (int)((ki + ri + ci) % 2) * 5; /* odd paddings: unaligned rows and columns */
                const int64_t ldw = k + pad, ldx = k + pad, ldy = rows + 3;
                uint16_t *w = xalloc(sizeof(uint16_t) * (size_t)(rows * ldw + 1));
                float *x = xalloc(sizeof(float) * (size_t)(ncols * ldx + 1));
                float *y = xalloc(sizeof(float) * (size_t)(ncols * ldy + 2));
                float *yv = xalloc(sizeof(float) * (size_t)(ncols * rows));
                const uint16_t *wu = w + (pad ? 1 : 0);
                const float *xu = x + (pad ? 1 : 0);
                for (int64_t i = 0; i < rows * ldw + 1; i++) w[i] = bf ? random_finite_bf16(r) : random_finite_fp16(r);
                for (int64_t i = 0; i < ncols * ldx + 1; i++) x[i] = t_uniform_f(r, -4.0f, 4.0f);
                /* expected: the GEMV of each column alone */
                for (int64_t c = 0; c < ncols; c++)
                    CHECK(gemv(wu, k, ldw, xu + c * ldx, yv + c * rows, 0, rows) == BITNET_OK, "gemv rc");
                for (int which = 0; which < 2; which++) /* the kernel, then the reference GEMM */
                    for (int parts = 1; parts <= (which ? 1 : 3); parts++) {
                        for (int64_t i = 0; i < ncols * ldy + 2; i++) y[i] = -12345.0f;
                        for (int p = 0; p < parts; p++) {
                            const int64_t a = rows * p / parts, b = rows * (p + 1) / parts;
                            CHECK((which ? ref : gemm)(wu, k, ldw, xu, ldx, ncols, y + 1, ldy, a, b) == BITNET_OK, "rc");
                        }
                        int same = 1, outside = 1;
                        for (int64_t c = 0; c < ncols; c++) {
                            same &= !memcmp(y + 1 + c * ldy, yv + c * rows, sizeof(float) * (size_t)rows);
                            for (int64_t i = rows; i < ldy; i++) outside &= y[1 + c * ldy + i] == -12345.0f;
                        }
                        CHECK(same, "%s %s %s column != its gemv: k %lld rows %lld ncols %lld pad %d parts %d",
                              bitnet_isa(), tname, which ? "ref gemm" : "gemm", (long long)k, (long long)rows,
                              (long long)ncols, pad, parts);
                        CHECK(outside && y[0] == -12345.0f, "wrote outside the rows [r0, r1) of a column");
                    }
                free(w);
                free(x);
                free(y);
                free(yv);
            }
  }
    uint16_t w[128] = {0};
    float x[256] = {0}, y[8];
    CHECK(bitnet_gemm_f16(w, 64, 64, x, 64, 2, y, 4, 0, 4) == BITNET_OK, "valid");
    CHECK(bitnet_gemm_f16(w, 64, 64, x, 64, 0, y, 4, 0, 4) == BITNET_EINVAL, "ncols 0");
    CHECK(bitnet_gemm_f16(w, 64, 64, x, 63, 2, y, 4, 0, 4) == BITNET_EINVAL, "ldx < k");
    CHECK(bitnet_gemm_f16(w, 64, 64, x, 64, 2, y, 3, 0, 4) == BITNET_EINVAL, "ldy < r1");
    CHECK(bitnet_gemm_f16(w, 32, 32, x, 64, 1, y, 4, 0, 1) == BITNET_EINVAL, "k not a multiple of 64");
    CHECK(bitnet_gemm_f16(w, 64, 32, x, 64, 1, y, 4, 0, 1) == BITNET_EINVAL, "ldw < k");
    CHECK(bitnet_gemm_f16(NULL, 64, 64, x, 64, 1, y, 4, 0, 1) == BITNET_EINVAL, "NULL w");
    CHECK(bitnet_gemm_f16(w, 64, 64, NULL, 64, 1, y, 4, 0, 1) == BITNET_EINVAL, "NULL x");
    CHECK(bitnet_gemm_f16(w, 64, 64, x, 64, 1, NULL, 4, 0, 1) == BITNET_EINVAL, "NULL y");
    CHECK(bitnet_gemm_f16(w, 64, 64, x, 64, 1, y, 4, 1, 0) == BITNET_EINVAL, "r1 < r0");
    CHECK(bitnet_gemm_bf16(w, 64, 64, x, 63, 2, y, 4, 0, 4) == BITNET_EINVAL &&
          bitnet_ref_gemm_f16(w, 64, 64, x, 64, 0, y, 4, 0, 4) == BITNET_EINVAL &&
          bitnet_ref_gemm_bf16(w, 64, 64, x, 64, 2, y, 3, 0, 4) == BITNET_EINVAL, "bf16 and ref check too");
}

/* ---------------------------------------------------------------------------------------------- */
/* ---------------------------------------------------------------------------------------------- */
/* group: chunks - the dynamic split's plan covers the rows once, in order, 16-aligned, with sizes in  */
/* the plan's bounds; any order of taking chunks gives the same ranges; the static plan is            */
/* bitnet_split_rows; matmul and the f16 GEMV over chunks taken by "threads" in a random order equal   */
/* the reference bit for bit (what the engine relies on to keep its output unchanged).              */
static int64_t check_plan(int64_t rows, int64_t unit, int64_t min_rows, int64_t max_rows, int nth, int div) {
    bitnet_chunks c, back;
    CHECK(bitnet_chunks_init(&c, rows, unit, min_rows, max_rows, nth, div) == BITNET_OK, "init");
    back = c;
    int64_t i = 0, covered = 0, r0, r1;
    const int64_t minu = min_rows > unit ? (min_rows + unit - 1) / unit : 1;
    int64_t maxu = max_rows > 0 ? (max_rows + unit - 1) / unit : INT64_MAX;
    if (maxu < minu) maxu = minu;
    for (; bitnet_chunks_get(&c, i, &r0, &r1); i++) {
        CHECK(r0 == covered && r1 <= rows && r0 % 16 == 0 && r0 % unit == 0, "rows %lld unit %lld div %d chunk %lld: "
              "[%lld, %lld) after %lld", (long long)rows, (long long)unit, div, (long long)i, (long long)r0,
              (long long)r1, (long long)covered);
        if (div) {
            const int64_t n = (r1 - r0 + unit - 1) / unit;
            CHECK(r1 > r0 && n <= maxu && (n >= minu || r1 == rows), "chunk %lld: %lld units not in [%lld, %lld]",
                  (long long)i, (long long)n, (long long)minu, (long long)maxu);
        } else {
            int64_t s0, s1;
            bitnet_split_rows(rows, (int)i, nth, &s0, &s1);
            if (unit == 16) CHECK(s0 == r0 && s1 == r1, "static chunk %lld of %d == bitnet_split_rows", (long long)i, nth);
        }
        covered = r1;
        CHECK(i < rows + nth + 1, "too many chunks");
        if (i > rows + nth) break;
    }
    CHECK(covered == rows, "rows %lld unit %lld div %d nth %d: chunks cover %lld", (long long)rows, (long long)unit,
          div, nth, (long long)covered);
    CHECK(div ? i >= (rows > 0) : i == nth, "chunk count %lld", (long long)i);
    CHECK(!bitnet_chunks_get(&c, i + 5, &r0, &r1) && !bitnet_chunks_get(&c, -1, &r0, &r1), "past the end");
    /* backwards (the cursor restarts) gives the same ranges */
    for (int64_t j = i - 1; j >= 0; j--) {
        int64_t a0, a1, b0, b1;
        bitnet_chunks fresh;
        bitnet_chunks_init(&fresh, rows, unit, min_rows, max_rows, nth, div);
        for (int64_t t = 0; t <= j; t++) bitnet_chunks_get(&fresh, t, &a0, &a1);
        CHECK(bitnet_chunks_get(&back, j, &b0, &b1) && a0 == b0 && a1 == b1, "chunk %lld backwards", (long long)j);
    }
    return i;
}

/* Chunks of a plan handed to nth simulated threads in a random interleaving: each takes chunk ith first,
 * then the next index of a shared counter, on its own bitnet_chunks cursor (as the engine does). */
typedef struct {
    bitnet_chunks c[4];
    int64_t next[4];
    int done[4];
    int64_t counter;
} t_sched;

static int sched_next(t_sched *s, int nth, t_rng *r, int64_t *r0, int64_t *r1) {
    for (;;) {
        int live = 0;
        for (int t = 0; t < nth; t++) live += !s->done[t];
        if (!live) return 0;
        const int t = (int)t_uniform(r, (uint32_t)nth);
        if (s->done[t]) continue;
        if (!bitnet_chunks_get(&s->c[t], s->next[t], r0, r1)) {
            s->done[t] = 1;
            continue;
        }
        if (s->c[t].divisor == 0) s->done[t] = 1; /* static: a thread's one chunk */
        else s->next[t] = s->counter++;
        if (*r0 < *r1) return 1;
    }
}

static void group_chunks(t_rng *r) {
    static const int64_t rows_list[] = {0, 1, 15, 16, 17, 100, 640, 2560, 6912, 6913, 128256};
    for (int ri = 0; ri < 11; ri++)
        for (int nth = 1; nth <= 5; nth++)
            for (int div = 0; div <= 4; div++) {
                const int64_t rows = rows_list[ri];
                if (rows > 7000 && div > 2) continue;
                check_plan(rows, 16, 0, 0, nth, div);
                check_plan(rows, 32, 100, 1000, nth, div);
                check_plan(rows, 16, 16 * 7, 16 * 102, nth, div);
                check_plan(rows, 48, 0, 16, nth, div); /* max below a unit: one unit */
            }
    /* the guided sizes shrink: big chunks first, and the first nth are not all tiny */
    {
        bitnet_chunks c;
        int64_t r0, r1, prev = INT64_MAX;
        bitnet_chunks_init(&c, 2560, 16, 0, 0, 2, 2);
        for (int64_t i = 0; bitnet_chunks_get(&c, i, &r0, &r1); i++) {
            CHECK(r1 - r0 <= prev, "guided chunk %lld grows", (long long)i);
            prev = r1 - r0;
            if (i == 0) CHECK(r1 - r0 == 640, "first guided chunk of 2560 rows / (2*2) = 640, got %lld", (long long)(r1 - r0));
        }
    }
    bitnet_chunks c;
    CHECK(bitnet_chunks_init(&c, 100, 8, 0, 0, 2, 1) == BITNET_EINVAL, "unit not a multiple of 16");
    CHECK(bitnet_chunks_init(&c, 100, 0, 0, 0, 2, 1) == BITNET_EINVAL, "unit 0");
    CHECK(bitnet_chunks_init(&c, -1, 16, 0, 0, 2, 1) == BITNET_EINVAL, "rows < 0");
    CHECK(bitnet_chunks_init(&c, 100, 16, 0, 0, 0, 1) == BITNET_EINVAL, "nth 0");
    CHECK(bitnet_chunks_init(&c, 100, 16, 0, 0, 2, -1) == BITNET_EINVAL, "divisor < 0");
    CHECK(bitnet_chunks_init(NULL, 100, 16, 0, 0, 2, 1) == BITNET_EINVAL, "NULL");

    /* kernels over chunks in a random thread interleaving == the reference, bit for bit */
    const bitnet_kernel_info info = bitnet_get_kernel_info();
    static const int64_t shapes[][3] = {{640, 2560, 1}, {2560, 6912, 1}, {1000, 512, 1}, {2560, 2560, 7}, {333, 256, 17}};
    for (int si = 0; si < 5; si++) {
        if (g_quick && si == 1) continue;
        const int64_t rows = shapes[si][0], k = shapes[si][1], ncols = shapes[si][2], xs = k / 256;
        t_matrix m;
        make_matrix(&m, rows, k, BITNET_SRC_TQ2_0, W_RANDOM, D_RANDOM, r);
        bitnet_weights w;
        void *data = repack(&m, BITNET_LAYOUT_TK2, &w);
        bitnet_act_block *x = make_acts(k, ncols, xs, A_PER_TOKEN, r);
        float *yref = xalloc(sizeof(float) * (size_t)(rows * ncols)), *y = xalloc(sizeof(float) * (size_t)(rows * ncols));
        CHECK(bitnet_ref_gemm(&w, x, ncols, xs, yref, rows, 0, rows) == BITNET_OK, "ref");
        for (int nth = 1; nth <= 3; nth++)
            for (int div = 0; div <= 2; div++) {
                const int64_t unit = ncols == 1 ? 16 : 16 * info.gemm_row_groups;
                t_sched s;
                memset(&s, 0, sizeof s);
                for (int t = 0; t < nth; t++) {
                    bitnet_chunks_init(&s.c[t], rows, unit, 0, 4096, nth, div);
                    s.next[t] = t;
                }
                s.counter = nth;
                fill_canary(y, (size_t)(rows * ncols));
                int64_t r0, r1, taken = 0;
                while (sched_next(&s, nth, r, &r0, &r1)) {
                    CHECK(bitnet_matmul(&w, x, ncols, xs, y, rows, r0, r1) == BITNET_OK, "matmul chunk");
                    taken += r1 - r0;
                }
                CHECK(taken == rows, "rows %lld nth %d div %d: chunks took %lld rows", (long long)rows, nth, div,
                      (long long)taken);
                CHECK(!memcmp(y, yref, sizeof(float) * (size_t)(rows * ncols)), "rows %lld k %lld cols %lld nth %d div %d: "
                      "chunked matmul differs from the reference", (long long)rows, (long long)k, (long long)ncols, nth, div);
            }
        free(y);
        free(yref);
        free(x);
        free(data);
        free_matrix(&m);
    }
    /* the f16 head GEMV over chunks */
    {
        const int64_t rows = 1000, k = 2560;
        uint16_t *w = xalloc(sizeof(uint16_t) * (size_t)(rows * k));
        float *x = xalloc(sizeof(float) * (size_t)k), *y = xalloc(sizeof(float) * (size_t)rows),
              *yref = xalloc(sizeof(float) * (size_t)rows);
        for (int64_t i = 0; i < rows * k; i++) w[i] = random_finite_fp16(r) & 0xbfff; /* |w| < 2 */
        for (int64_t i = 0; i < k; i++) x[i] = t_uniform_f(r, -4.0f, 4.0f);
        CHECK(bitnet_gemv_f16(w, k, k, x, yref, 0, rows) == BITNET_OK, "f16 whole");
        for (int nth = 1; nth <= 3; nth++) {
            t_sched s;
            memset(&s, 0, sizeof s);
            for (int t = 0; t < nth; t++) {
                bitnet_chunks_init(&s.c[t], rows, 16, 0, 64, nth, 2);
                s.next[t] = t;
            }
            s.counter = nth;
            fill_canary(y, (size_t)rows);
            int64_t r0, r1;
            while (sched_next(&s, nth, r, &r0, &r1))
                CHECK(bitnet_gemv_f16(w, k, k, x, y, r0, r1) == BITNET_OK, "f16 chunk");
            CHECK(!memcmp(y, yref, sizeof(float) * (size_t)rows), "f16 over chunks, nth %d, differs", nth);
        }
        free(w);
        free(x);
        free(y);
        free(yref);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* group: fused - the float ops the engine fuses around a matmul (src/norm.c) equal ggml's ops bit for */
/* bit: RMS_NORM(+MUL) with its sequential double sum per row (rows side by side in SIMD lanes), the   */
/* weight-scale MUL, the residual ADD and the relu^2 gate, against loops written here from ggml's code. */
static double t_sumsq(const float *x, int64_t k, int reverse) { /* ggml's order, or reversed */
    double sum = 0.0;
    for (int64_t i = 0; i < k; i++) {
        const float v = x[reverse ? k - 1 - i : i];
        sum += (double)(v * v);
    }
    return sum;
}

static void t_rms_norm_row(const float *x, int64_t k, const float *w, float eps, float *y) {
    const float mean = (float)(t_sumsq(x, k, 0) / (double)k); /* ggml: const float mean = sum/ne00; */
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < k; i++) y[i] = w ? x[i] * scale * w[i] : x[i] * scale;
}

static void group_fused(t_rng *r) {
    static const int64_t ks[] = {8, 24, 100, 256, 2560, 6912};
    static const int64_t rows_list[] = {1, 2, 7, 8, 9, 15, 16, 17, 24, 33, 100};
    long order_sensitive = 0; /* rows whose sum changes when added in reverse: the order is really tested */
    for (int ki = 0; ki < 6; ki++)
        for (int ri = 0; ri < 11; ri++) {
            const int64_t k = ks[ki], rows = rows_list[ri];
            if (g_quick && k == 6912 && rows > 17) continue;
            const int64_t ldx = k + (ri % 3) * 8, ldy = k + (ri % 2) * 16; /* padded row strides too */
            float *x = xalloc(sizeof(float) * (size_t)(rows * ldx)), *w = xalloc(sizeof(float) * (size_t)k);
            float *y = xalloc(sizeof(float) * (size_t)(rows * ldy)), *yref = xalloc(sizeof(float) * (size_t)(rows * ldy));
            float *yt = xalloc(sizeof(float) * (size_t)k), *xin = xalloc(sizeof(float) * (size_t)(rows * ldx));
            for (int64_t i = 0; i < k; i++) w[i] = t_uniform_f(r, -3.0f, 3.0f);
            for (int64_t row = 0; row < rows; row++) {
                /* activations spanning many binades (what makes the double sum round), some zeros, -0 */
                const float scale = powf(10.0f, t_uniform_f(r, -3.0f, 3.0f));
                for (int64_t i = 0; i < ldx; i++) {
                    const int kind = t_uniform(r, 16);
                    x[row * ldx + i] = kind == 0   ? 0.0f
                                       : kind == 1 ? -0.0f
                                                   : scale * powf(10.0f, t_uniform_f(r, -4.0f, 0.0f)) *
                                                         t_uniform_f(r, -1.0f, 1.0f);
                }
                order_sensitive += t_sumsq(x + row * ldx, k, 0) != t_sumsq(x + row * ldx, k, 1);
            }
            double *sums = xalloc(sizeof(double) * (size_t)rows);
            bitnet_sumsq_rows(x, ldx, k, rows, sums);
            for (int64_t row = 0; row < rows; row++) {
                const double want = t_sumsq(x + row * ldx, k, 0);
                CHECK(!memcmp(&sums[row], &want, sizeof want), "sum of squares k %lld row %lld of %lld: %.17g, "
                      "ggml's order gives %.17g", (long long)k, (long long)row, (long long)rows, sums[row], want);
            }
            free(sums);
            for (int wi = 0; wi < 2; wi++) {
                const float *wp = wi ? w : NULL, eps = wi ? 1e-5f : 1e-6f;
                fill_canary(y, (size_t)(rows * ldy));
                fill_canary(yref, (size_t)(rows * ldy));
                bitnet_rms_norm(x, ldx, k, rows, wp, eps, y, ldy);
                bitnet_ref_rms_norm(x, ldx, k, rows, wp, eps, yref, ldy);
                CHECK(!memcmp(y, yref, sizeof(float) * (size_t)(rows * ldy)),
                      "rms_norm k %lld rows %lld w %d: differs from the reference (or wrote between rows)",
                      (long long)k, (long long)rows, wi);
                for (int64_t row = 0; row < rows; row++) {
                    t_rms_norm_row(x + row * ldx, k, wp, eps, yt);
                    CHECK(!memcmp(yt, yref + row * ldy, sizeof(float) * (size_t)k),
                          "rms_norm reference k %lld row %lld differs from ggml's loop", (long long)k, (long long)row);
                }
                /* in place (y == x), as when the allocator reuses the input */
                memcpy(xin, x, sizeof(float) * (size_t)(rows * ldx));
                bitnet_rms_norm(xin, ldx, k, rows, wp, eps, xin, ldx);
                int same = 1;
                for (int64_t row = 0; row < rows; row++)
                    same &= !memcmp(xin + row * ldx, yref + row * ldy, sizeof(float) * (size_t)k);
                CHECK(same, "rms_norm in place k %lld rows %lld differs", (long long)k, (long long)rows);
            }
            free(x), free(w), free(y), free(yref), free(yt), free(xin);
        }
    CHECK(order_sensitive > 100, "only %ld test rows' double sums depend on the summation order: the data cannot "
          "catch a reordering", order_sensitive);

    /* epilogues: rows [r0, r1) of ncols columns with padded strides, special values included */
    static const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 1e-38f, -1e-38f, 3e38f, -3e38f, INFINITY, -INFINITY, NAN};
    for (int trial = 0; trial < 40; trial++) {
        const int64_t ncols = 1 + t_uniform(r, 5), rows = 16 + t_uniform(r, 200), ld = rows + t_uniform(r, 9);
        const int64_t r0 = t_uniform(r, (int)rows / 2), r1 = r0 + t_uniform(r, (int)(rows - r0) + 1);
        const size_t n = (size_t)(ncols * ld);
        float *a = xalloc(sizeof(float) * n), *b = xalloc(sizeof(float) * n), *o = xalloc(sizeof(float) * n),
              *oref = xalloc(sizeof(float) * n);
        for (size_t i = 0; i < n; i++) {
            a[i] = t_uniform(r, 8) ? t_uniform_f(r, -5.0f, 5.0f) : specials[t_uniform(r, 11)];
            b[i] = t_uniform(r, 8) ? t_uniform_f(r, -5.0f, 5.0f) : specials[t_uniform(r, 11)];
        }
        const float s = t_uniform_f(r, 0.1f, 4.0f), s2 = t_uniform_f(r, 0.1f, 4.0f);
        for (int op = 0; op < 7; op++) { /* scale; scale_add with/without s; relu2 with each pair of scales */
            const int with_s = op == 1 || op == 3 || op == 4, with_s2 = op == 3 || op == 5;
            memcpy(o, a, sizeof(float) * n);
            memcpy(oref, a, sizeof(float) * n);
            for (int64_t c = 0; c < ncols; c++)
                for (int64_t i = r0; i < r1; i++) {
                    float g = a[c * ld + i], u = b[c * ld + i];
                    if (op == 0) {
                        oref[c * ld + i] = g * s; /* ggml's op_mul */
                    } else if (op <= 2) {
                        if (with_s) g = g * s;
                        oref[c * ld + i] = g + u; /* op_add */
                    } else {
                        if (with_s) g = g * s;
                        if (with_s2) u = u * s2;
                        const float relu = (g > 0.f) ? g : 0.f; /* op_relu, op_sqr, op_mul */
                        const float sq = relu * relu;
                        oref[c * ld + i] = sq * u;
                    }
                }
            if (op == 0) bitnet_scale_rows(o, ld, ncols, r0, r1, s);
            else if (op <= 2) bitnet_scale_add_rows(o, ld, o, ld, with_s ? &s : NULL, b, ld, ncols, r0, r1); /* out == y */
            else bitnet_relu2_mul_rows(o, ld, o, ld, with_s ? &s : NULL, b, ld, with_s2 ? &s2 : NULL, ncols, r0, r1);
            CHECK(!memcmp(o, oref, sizeof(float) * n), "epilogue %d rows [%lld, %lld) of %lld cols differs", op,
                  (long long)r0, (long long)r1, (long long)ncols);
        }
        free(a), free(b), free(o), free(oref);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* group: amx - the AMX-INT8 GEMM (avx512vnni build, CPU with AMX-TILE/INT8, tile state granted) equals */
/* the reference bit for bit, and the vpdpbusd path of the same build; column counts around the 16- and */
/* 32-column tiles, odd row groups, both layouts, extreme codes and activations, 2B4T shapes.          */
static void amx_vs_vnni(t_rng *r, int64_t rows, int64_t k, int64_t ncols, bitnet_src_type src, bitnet_layout layout,
                        int wmode, int amode) {
    t_matrix m;
    make_matrix(&m, rows, k, src, wmode, D_RANDOM, r);
    bitnet_weights w;
    void *data = repack(&m, layout, &w);
    const int64_t x_stride = k / 256 + 1;
    bitnet_act_block *x = make_acts(k, ncols, x_stride, amode, r);
    float *ya = xalloc(sizeof(float) * (size_t)(rows * ncols)), *yv = xalloc(sizeof(float) * (size_t)(rows * ncols));
    CHECK(bitnet_set_gemm_amx(0) == 0, "AMX did not switch off");
    CHECK(bitnet_gemm(&w, x, ncols, x_stride, yv, rows, 0, rows) == BITNET_OK, "vpdpbusd gemm");
    CHECK(bitnet_set_gemm_amx(1) == 1, "AMX did not switch back on");
    CHECK(bitnet_gemm(&w, x, ncols, x_stride, ya, rows, 0, rows) == BITNET_OK, "AMX gemm");
    CHECK(!memcmp(ya, yv, sizeof(float) * (size_t)(rows * ncols)),
          "AMX and vpdpbusd GEMM differ: rows %lld k %lld cols %lld layout %d w %d a %d", (long long)rows,
          (long long)k, (long long)ncols, layout, wmode, amode);
    free(ya), free(yv), free(x), free(data);
    free_matrix(&m);
}

/* Packed activations (bitnet_gemm_pack): packed in column pieces as threads would, then row chunks of the
 * packed GEMM equal the vpdpbusd path bit for bit; column counts off the 16-column grid, widths past one column
 * chunk (the packed GEMM takes 1 MiB of columns at a time), and a stale copy must show (a test that can fail). */
static void amx_packed_case(t_rng *r, int64_t rows, int64_t k, int64_t ncols, bitnet_layout layout) {
    t_matrix m;
    make_matrix(&m, rows, k, layout == BITNET_LAYOUT_TK1 ? BITNET_SRC_TQ1_0 : BITNET_SRC_TQ2_0, W_RANDOM, D_RANDOM, r);
    bitnet_weights w;
    void *data = repack(&m, layout, &w);
    const int64_t x_stride = k / 256 + 1;
    bitnet_act_block *x = make_acts(k, ncols, x_stride, A_PER_TOKEN, r);
    const size_t psz = bitnet_gemm_pack_size(k, ncols);
    CHECK(psz > 0, "no pack size with AMX on: k %lld cols %lld", (long long)k, (long long)ncols);
    void *pk = aligned_alloc(64, psz);
    for (int64_t c0 = 0; c0 < ncols; c0 += 7) /* uneven pieces */
        CHECK(bitnet_gemm_pack(x, k, ncols, x_stride, c0, c0 + 7 < ncols ? c0 + 7 : ncols, pk) == BITNET_OK, "pack");
    float *ya = xalloc(sizeof(float) * (size_t)(rows * ncols)), *yv = xalloc(sizeof(float) * (size_t)(rows * ncols));
    CHECK(bitnet_set_gemm_amx(0) == 0, "AMX did not switch off");
    CHECK(bitnet_gemm(&w, x, ncols, x_stride, yv, rows, 0, rows) == BITNET_OK, "vpdpbusd gemm");
    CHECK(bitnet_set_gemm_amx(1) == 1, "AMX did not switch back on");
    for (int64_t r0 = 0; r0 < rows; r0 += 64)
        CHECK(bitnet_matmul_packed(&w, x, pk, ncols, x_stride, ya, rows, r0, r0 + 64 < rows ? r0 + 64 : rows) ==
                  BITNET_OK,
              "packed gemm");
    CHECK(!memcmp(ya, yv, sizeof(float) * (size_t)(rows * ncols)), "packed AMX GEMM differs: rows %lld k %lld cols %lld",
          (long long)rows, (long long)k, (long long)ncols);
    /* the GEMM reads the copy: change a packed column's activations without repacking and its output moves */
    x[0].qs[0] = (int8_t)(x[0].qs[0] == 100 ? -100 : 100);
    x[0].qs[1] = (int8_t)(x[0].qs[1] == 90 ? -90 : 90);
    float *yb = xalloc(sizeof(float) * (size_t)(rows * ncols));
    CHECK(bitnet_gemm(&w, x, ncols, x_stride, yb, rows, 0, rows) == BITNET_OK, "unpacked gemm");
    CHECK(memcmp(yb, ya, sizeof(float) * (size_t)rows) != 0, "changed activations did not change column 0");
    CHECK(bitnet_matmul_packed(&w, x, pk, ncols, x_stride, yb, rows, 0, rows) == BITNET_OK, "stale packed gemm");
    CHECK(!memcmp(yb, ya, sizeof(float) * (size_t)rows), "the packed GEMM did not read the packed copy");
    free(yb), free(ya), free(yv), free(pk), free(x), free(data);
    free_matrix(&m);
}

static void group_amx(t_rng *r) {
    const int64_t packed[][3] = {{96, 1280, 80}, {48, 2560, 300}, {64, 6912, 37}, {33, 512, 16}, {40, 768, 600}};
    for (int i = 0; i < 5; i++) {
        if (g_quick && i == 1) continue;
        amx_packed_case(r, packed[i][0], packed[i][1], packed[i][2], i % 2 ? BITNET_LAYOUT_TK1 : BITNET_LAYOUT_TK2);
    }
    const int64_t rows_list[] = {16, 17, 32, 48, 100};
    const int64_t cols_list[] = {16, 17, 31, 32, 33, 47, 48, 64, 100};
    const int64_t ks[] = {256, 512, 2560};
    for (int ki = 0; ki < 3; ki++)
        for (int ri = 0; ri < 5; ri++)
            for (int ci = 0; ci < 9; ci++) {
                if (g_quick && (ci % 2 || ki == 2)) continue;
                run_case(r, rows_list[ri], ks[ki], cols_list[ci], BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM,
                         D_RANDOM, A_QUANT);
                run_case(r, rows_list[ri], ks[ki], cols_list[ci], BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM,
                         D_RANDOM, A_PER_TOKEN);
            }
    /* extremes: int sums checked without the library too (run_case, unit scales) */
    const int wmodes[] = {W_ALL_POS, W_ALL_NEG, W_BLOCKS}, amodes[] = {A_NEG128, A_POS127, A_ALTERNATE, A_RANDOM_INT8};
    for (int wi = 0; wi < 3; wi++)
        for (int ai = 0; ai < 4; ai++) {
            run_case(r, 48, 512, 33, BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, wmodes[wi], D_UNIT, amodes[ai]);
            amx_vs_vnni(r, 40, 768, 35, BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, wmodes[wi], amodes[ai]);
        }
    /* the 2B4T shapes at prefill widths */
    const int64_t shapes[4][2] = {{2560, 2560}, {640, 2560}, {6912, 2560}, {2560, 6912}};
    for (int s = 0; s < 4; s++) {
        if (g_quick && s != 1) continue;
        amx_vs_vnni(r, shapes[s][0], shapes[s][1], 80, BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, A_QUANT);
        amx_vs_vnni(r, shapes[s][0], shapes[s][1], 37, BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM, A_PER_TOKEN);
    }
    if (!g_quick) run_case(r, 640, 2560, 512, BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, D_RANDOM, A_QUANT);
    /* past one 512-column chunk of running sums: a second chunk with a 1-column tail, and a last chunk too
     * narrow for a tile (only vpdpbusd columns) */
    const int64_t wide[] = {545, 1037};
    for (int i = 0; i < 2; i++) {
        amx_vs_vnni(r, 48, 1280, wide[i], BITNET_SRC_TQ2_0, BITNET_LAYOUT_TK2, W_RANDOM, A_QUANT);
        if (!g_quick) run_case(r, 33, 1280, wide[i], BITNET_SRC_TQ1_0, BITNET_LAYOUT_TK1, W_RANDOM, D_RANDOM, A_PER_TOKEN);
    }
}

int main(int argc, char **argv) {
    const char *group = argc > 1 ? argv[1] : "";
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--quick")) g_quick = 1;
    if (!host_can_run(BITNET_TEST_VARIANT)) {
        printf("SKIP: this CPU cannot run variant %s\n", BITNET_TEST_VARIANT);
        return 77;
    }
    /* the variant really compiled its ISA (else we would compare scalar with scalar) */
    if (strcmp(bitnet_isa(), BITNET_TEST_ISA)) {
        fprintf(stderr, "FAIL: variant %s built ISA %s, expected %s\n", BITNET_TEST_VARIANT, bitnet_isa(),
                BITNET_TEST_ISA);
        return 1;
    }
    if (!strcmp(group, "amx") && !bitnet_gemm_amx()) {
        printf("SKIP: amx: %s\n", strcmp(bitnet_isa(), "avx512vnni")
                                       ? "the AMX GEMM is part of the avx512vnni build only"
                                       : "this CPU has no AMX-TILE/AMX-INT8, the OS did not grant the tile state, "
                                         "or BITNET_AMX=0");
        return 77;
    }
    t_rng rng = {0x5eed0000u + (uint64_t)strlen(group)};
    if (!strcmp(group, "layout")) group_layout(&rng);
    else if (!strcmp(group, "quant")) group_quant(&rng);
    else if (!strcmp(group, "kernels")) group_kernels(&rng);
    else if (!strcmp(group, "edges")) group_edges(&rng);
    else if (!strcmp(group, "ggml")) group_ggml(&rng, BITNET_SRC_TQ2_0);
    else if (!strcmp(group, "tq1")) group_ggml(&rng, BITNET_SRC_TQ1_0);
    else if (!strcmp(group, "errors")) group_errors(&rng);
    else if (!strcmp(group, "f16")) group_f16(&rng);
    else if (!strcmp(group, "f16gemm")) group_f16gemm(&rng);
    else if (!strcmp(group, "pertoken")) group_pertoken(&rng);
    else if (!strcmp(group, "chunks")) group_chunks(&rng);
    else if (!strcmp(group, "fused")) group_fused(&rng);
    else if (!strcmp(group, "amx")) group_amx(&rng);
    else {
        fprintf(stderr, "usage: %s layout|quant|kernels|edges|ggml|tq1|errors|f16|f16gemm|pertoken|chunks|fused|amx [--quick]\n", argv[0]);
        return 2;
    }
    const bitnet_kernel_info info = bitnet_get_kernel_info();
    printf("%s [%s, isa %s%s, tiles %dx16 rows x %d cols]: %ld checks, %ld failed\n", group, BITNET_TEST_VARIANT,
           info.isa, bitnet_gemm_amx() ? " + AMX GEMM" : "", info.gemm_row_groups, info.gemm_cols, g_checks, g_fail);
    return g_fail ? 1 : (g_checks ? 0 : 1);
}
