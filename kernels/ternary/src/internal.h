/*
 * internal.h - shared by the per-ISA files: which ISA this translation unit is built for, the tuning
 * parameters of that ISA (from the generated bitnet_tuning.h, made from tuning.json at configure
 * time), argument checks and layout addressing.
 */
#ifndef BITNET_INTERNAL_H
#define BITNET_INTERNAL_H

#include <stdlib.h>
#include <string.h>

#include "bitnet_kernels.h"
#include "bitnet_tuning.h" /* generated into the build tree from kernels/ternary/tuning.json */

/* ---- ISA of this build: decided by the compiler's target flags only (no run-time dispatch). ---- */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__F16C__)
#define BITNET_ISA_AVX512VNNI 1
#define BITNET_ISA_NAME "avx512vnni"
#define BITNET_TUNE(p) BITNET_TUNE_AVX512VNNI_##p
#elif defined(__AVX2__) && defined(__F16C__) && \
    (defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__)))
#define BITNET_ISA_AVX2 1 /* the AVX2 code (avx2.c) with vpdpbusd on ymm */
#define BITNET_AVX2_DPBUSD 1
#define BITNET_ISA_NAME "avxvnni"
#define BITNET_TUNE(p) BITNET_TUNE_AVXVNNI_##p
#elif defined(__AVX2__) && defined(__F16C__)
#define BITNET_ISA_AVX2 1
#define BITNET_ISA_NAME "avx2"
#define BITNET_TUNE(p) BITNET_TUNE_AVX2_##p
#elif defined(__x86_64__) && defined(__SSSE3__)
#define BITNET_ISA_SSSE3 1 /* pmaddubsw on xmm (ssse3.c): the engine's sse42 variant */
#define BITNET_ISA_NAME "ssse3"
#define BITNET_TUNE(p) BITNET_TUNE_SSSE3_##p
#elif defined(__aarch64__) && defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#define BITNET_ISA_NEON 1
#define BITNET_ISA_NAME "neon-dotprod"
#define BITNET_TUNE(p) BITNET_TUNE_NEON_DOTPROD_##p
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define BITNET_ISA_NEON 1
#define BITNET_ISA_NAME "neon"
#define BITNET_TUNE(p) BITNET_TUNE_NEON_##p
#else
#define BITNET_ISA_SCALAR 1
#define BITNET_ISA_NAME "scalar"
#define BITNET_TUNE(p) BITNET_TUNE_SCALAR_##p
#endif

#define BITNET_GEMM_RG BITNET_TUNE(GEMM_ROW_GROUPS)
#define BITNET_GEMM_COLS BITNET_TUNE(GEMM_COLS)
#define BITNET_PREFETCH BITNET_TUNE(PREFETCH_BYTES) /* software prefetch distance, 0 = none */
#define BITNET_TQ1_BASE3 BITNET_TUNE(TQ1_BASE3)     /* 1: TQ1_0 -> TK1 (base 3 kept), 0: -> TK2 */
#define BITNET_TQ2_BASE3 BITNET_TUNE(TQ2_BASE3)     /* 1: TQ2_0 -> TK1 (re-encoded in base 3), 0: -> TK2 */

#if defined(__GNUC__)
#define BITNET_INLINE static inline __attribute__((always_inline))
#else
#define BITNET_INLINE static inline
#endif

/* ---- Layout addressing (see bitnet_kernels.h for the definition). ---- */
BITNET_INLINE size_t bitnet__tile_bytes(bitnet_layout layout) {
    return layout == BITNET_LAYOUT_TK2 ? sizeof(bitnet_tk2_tile) : sizeof(bitnet_tk1_tile);
}
BITNET_INLINE int64_t bitnet__groups(int64_t rows) { return (rows + BITNET_GROUP_ROWS - 1) / BITNET_GROUP_ROWS; }

/* Code bytes of tile (g, 0); tile (g, b) follows at + b * tile_bytes. */
BITNET_INLINE const uint8_t *bitnet__codes(const bitnet_weights *w, int64_t g) {
    return (const uint8_t *)w->data + (size_t)g * (size_t)(w->k / BITNET_QK) * bitnet__tile_bytes(w->layout);
}
/* fp16 scales of group g, block 0; block b follows at + 16*b. */
BITNET_INLINE const uint16_t *bitnet__scales(const bitnet_weights *w, int64_t g) {
    const int64_t nb = w->k / BITNET_QK;
    const uint8_t *base = (const uint8_t *)w->data + (size_t)bitnet__groups(w->rows) * (size_t)nb *
                                                         bitnet__tile_bytes(w->layout);
    return (const uint16_t *)base + (size_t)g * (size_t)nb * BITNET_GROUP_ROWS;
}

/* Argument check shared by every public kernel: BITNET_OK or BITNET_EINVAL. */
BITNET_INLINE int bitnet__check(const bitnet_weights *w, const void *x, int64_t ncols, int64_t x_stride,
                                const float *y, int64_t y_stride, int64_t r0, int64_t r1) {
    if (!w || !w->data || !x || !y || w->rows < 0 || w->k <= 0 || w->k % BITNET_QK) return BITNET_EINVAL;
    if (w->layout != BITNET_LAYOUT_TK2 && w->layout != BITNET_LAYOUT_TK1) return BITNET_EINVAL;
    if (r0 < 0 || r1 < r0 || r1 > w->rows || r0 % BITNET_GROUP_ROWS) return BITNET_EINVAL;
    if (r1 % BITNET_GROUP_ROWS && r1 != w->rows) return BITNET_EINVAL;
    if (ncols < 0 || (ncols > 1 && (x_stride < w->k / BITNET_QK || y_stride < w->rows))) return BITNET_EINVAL;
    return BITNET_OK;
}

/* Argument check of bitnet_gemm_pack (every build): BITNET_OK or BITNET_EINVAL. */
BITNET_INLINE int bitnet__pack_check(const void *x, int64_t k, int64_t ncols, int64_t x_stride, int64_t c0,
                                     int64_t c1, const void *pk) {
    if (!x || !pk || k <= 0 || k % BITNET_QK || ncols < 0 || x_stride < k / BITNET_QK) return BITNET_EINVAL;
    return c0 < 0 || c1 < c0 || c1 > ncols ? BITNET_EINVAL : BITNET_OK;
}

/* IEEE fp16 bits -> float, exact (normals, subnormals, inf, nan). The SIMD paths use the hardware
 * conversion (vcvtph2ps, fcvtl), which is exact too, so all paths see the same d_w. */
static inline float bitnet__fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        exp = 113;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}


/* ------------------------------------------------------------------------------------------------
 * GEMM output. A GEMM adds one 256-block after the other into each output float (the order that makes every
 * path's floats the same). Between blocks the running sums of the row groups being worked on live in a
 * scratch, column after column (ys: column c at (c - ys_c0) * ys_ld floats, group g at (g - ys_g0) * 16),
 * and only the last block stores y: in y a column is a whole row count of floats from the next (2560 or
 * 6912 for the 2B), which maps the columns' running sums onto a few cache sets, and reloading them after
 * every block stalled the GEMMs (AVX2 pp512: ~20% of the micro-kernel's time, AMX: 27% of its own). Columns
 * are taken BITNET_YS_COLS at a time; ys == NULL (under 64 columns, or no memory) keeps the sums in y itself. */
#define BITNET_YS_COLS 512 /* one llama.cpp ubatch */
typedef struct {
    const bitnet_weights *w;
    const bitnet_act_block *x;
    int64_t x_stride, y_stride;
    float *y;
    float *ys;
    int64_t ys_c0, ys_g0;
    int64_t ys_ld;
} gemm_args;

/* a scratch for BITNET_YS_COLS columns of `groups` row groups, or NULL: also for fewer than 64 columns, whose
 * sums cache fine in y (pp32 ran 3% slower with the scratch, pp64 5% faster) */
BITNET_INLINE float *bitnet__ys_alloc(int groups, int64_t ncols) {
    if (ncols < 64) return NULL;
    return (float *)aligned_alloc(64, (size_t)BITNET_YS_COLS * 16 * (size_t)groups * sizeof(float));
}
/* the 16 output floats of group g, column c */
BITNET_INLINE float *bitnet__yout(const gemm_args *a, int64_t g, int64_t c) {
    return a->y + c * a->y_stride + g * BITNET_GROUP_ROWS;
}
BITNET_INLINE float *bitnet__yrun(const gemm_args *a, int64_t g, int64_t c) {
    return a->ys ? a->ys + (c - a->ys_c0) * a->ys_ld + (g - a->ys_g0) * BITNET_GROUP_ROWS : bitnet__yout(a, g, c);
}
/* Where block b's step reads the running sums of columns c0.. of group g, and where it writes the new ones:
 * column c at prev + c * prev_ld (prev NULL: block 0 starts from +0), written to next + c * next_ld (y itself
 * after the last block); group g + j at + 16 j in both. Computed once per micro-kernel call: per column and
 * group, these address computations and their branches were ~25% of the AVX-512 micro-kernel's time (perf
 * annotate; avx512 GEMM 446 -> 500 GOPS, avx2 5-13% faster). */
typedef struct {
    const float *prev;
    float *next;
    int64_t prev_ld, next_ld;
} bitnet__ysums;
BITNET_INLINE bitnet__ysums bitnet__ysums_at(const gemm_args *a, int64_t g, int64_t c0, int64_t b) {
    const int64_t run_ld = a->ys ? a->ys_ld : a->y_stride;
    const int last = b == a->w->k / BITNET_QK - 1;
    bitnet__ysums s = {b == 0 ? NULL : bitnet__yrun(a, g, c0), last ? bitnet__yout(a, g, c0) : bitnet__yrun(a, g, c0),
                       run_ld, last ? a->y_stride : run_ld};
    return s;
}

/* The GEMM driver shared by the ISAs that tile one 16-row group at a time (AVX2, SSSE3, NEON): per group, chunk
 * of columns and 256-block, the ISA's unpack_tile() expands the codes into int8 planes once, then its
 * micro-kernels (table entry C-1 handles C columns, C <= BITNET_GEMM_COLS) consume them for every column tile. */
/* A GEMM reads each weight tile once per 512 columns, tens of thousands of cycles apart, too sparse for the
 * hardware prefetchers: unpack_tile's first load of every 64-byte chunk waited for memory (perf annotate,
 * AVX-512 pp512 without AMX: 85% of unpack_tile's samples, 3% of the whole run; 1% with this). The drivers ask
 * for the tiles they unpack next (into L2) right after unpacking these, while the micro-kernels work: one or two
 * tiles (13-32 lines) at once, AMX's eight per pass spread over its column pairs (part i of n): 128 lines at
 * once filled the line-fill buffers and the prefetches themselves stalled about as long as the loads had.
 * Past the last tile of the weights the hints read nothing (a prefetch never faults). */
BITNET_INLINE void bitnet__prefetch_part(const uint8_t *p, size_t bytes, int64_t i, int64_t n) {
    const int64_t lines = (int64_t)(bytes / 64), per = (lines + n - 1) / n;
    for (int64_t l = i * per; l < (i + 1) * per && l < lines; l++) __builtin_prefetch(p + 64 * l, 0, 2);
}

/* Columns per pass over the row groups: each group's tiles meet every column of the pass, so the pass's
 * activations (nb blocks of 264 bytes a column) are read once per 16 rows from wherever they are. All 512
 * columns of a ubatch (1.3 MiB at K = 2560, 3.6 MiB at 6912) came from L3 for every group: AVX-VNNI pp512 ran
 * its 5-column micro-kernel no faster than the 4-column one, and bench_gemv's 6912-deep GEMM ran 30% below the
 * others (AVX-512 without AMX). A pass's activations take an eighth of L2 (64-512 KiB; 256 KiB on a 2 MiB L2:
 * 1/4 and 3/8 were no faster, the tiles are unpacked again for each pass), at least 8 micro-kernel widths,
 * a multiple of that width, at most `max` columns. BITNET_L2_ACT_BYTES fixes the budget (experiments). */
int64_t bitnet__act_budget(void); /* pack.c */
BITNET_INLINE int64_t bitnet__l2_cols(int64_t nb, int64_t max) {
    int64_t c = bitnet__act_budget() / (nb * (int64_t)sizeof(bitnet_act_block));
    c -= c % BITNET_GEMM_COLS;
    if (c < 8 * BITNET_GEMM_COLS) c = 8 * BITNET_GEMM_COLS;
    return c < max ? c : max;
}

typedef void (*bitnet__unpack_fn)(bitnet_layout layout, const uint8_t *tile, uint8_t *planes);
typedef void (*bitnet__micro_fn)(const gemm_args *, const uint8_t *, const uint16_t *, int64_t, int64_t, int64_t);

BITNET_INLINE int bitnet__gemm_1rg(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols,
                                   int64_t x_stride, float *y, int64_t y_stride, int64_t r0, int64_t r1,
                                   bitnet__unpack_fn unpack, const bitnet__micro_fn *micro_by_cols) {
    const int rc = bitnet__check(w, x, ncols, x_stride, y, y_stride, r0, r1);
    if (rc != BITNET_OK) return rc;
    gemm_args a = {w, x, x_stride, y_stride, y, bitnet__ys_alloc(1, ncols), 0, 0, BITNET_GROUP_ROWS};
    const int64_t nb = w->k / BITNET_QK, g1 = bitnet__groups(r1);
    const int64_t chunk = bitnet__l2_cols(nb, a.ys ? BITNET_YS_COLS : ncols);
    const size_t tb = bitnet__tile_bytes(w->layout);
    _Alignas(64) uint8_t planes[4096];
    for (int64_t cc0 = 0; cc0 < ncols; cc0 += chunk) {
        const int64_t cc1 = ncols - cc0 < chunk ? ncols : cc0 + chunk;
        a.ys_c0 = cc0;
        for (int64_t g = r0 / BITNET_GROUP_ROWS; g < g1; g++) {
            const uint16_t *scales = bitnet__scales(w, g);
            a.ys_g0 = g;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *tile = bitnet__codes(w, g) + (size_t)b * tb;
                unpack(w->layout, tile, planes);
                bitnet__prefetch_part(tile + tb, tb, 0, 1); /* block b + 1, or the next group's block 0 */
                for (int64_t c0 = cc0; c0 < cc1; c0 += BITNET_GEMM_COLS) {
                    const int64_t nc = cc1 - c0 < BITNET_GEMM_COLS ? cc1 - c0 : BITNET_GEMM_COLS;
                    micro_by_cols[nc - 1](&a, planes, scales, g, b, c0);
                }
            }
        }
    }
    free(a.ys);
    return BITNET_OK;
}

#endif /* BITNET_INTERNAL_H */
