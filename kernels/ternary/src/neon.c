/*
 * neon.c - AArch64 NEON bodies of bitnet_gemv / bitnet_gemm; with __ARM_FEATURE_DOTPROD (armv8.2-a+dotprod)
 * the 4-byte dot step is sdot, else smull + sadalp.
 *
 * A 64-byte chunk of a tile is four q-registers: rows 0-3, 4-7, 8-11, 12-15 (32-bit lane = 4 bytes of a
 * row). Codes c = w + 1 in {0,1,2} (trits for TK1) are fed as int8 and the block's activation sum is
 * subtracted after the dot, as on x86. The 4 activation bytes of a plane are replicated with ld1r.
 * GEMV decodes in registers; GEMM decodes each (group, block) tile once into a 4 KiB int8 scratch in K4
 * order (plane p = 64 bytes: lane r = row r, k = 4p .. 4p+3) that every column tile reuses.
 */
#include "internal.h"

#if defined(BITNET_ISA_NEON)
#include <arm_neon.h>

#if BITNET_GEMM_COLS < 1 || BITNET_GEMM_COLS > 6 || BITNET_GEMM_RG != 1
#error "tuning.json neon/neon_dotprod: need 1 <= gemm_cols <= 6, gemm_row_groups 1"
#endif

/* int32 dot accumulator of 4 rows x 4 bytes */
#if defined(__ARM_FEATURE_DOTPROD)
typedef int32x4_t acc4;
BITNET_INLINE acc4 acc_zero(void) { return vdupq_n_s32(0); }
BITNET_INLINE acc4 dot4(acc4 a, uint8x16_t w, int8x16_t x) { return vdotq_s32(a, vreinterpretq_s8_u8(w), x); }
BITNET_INLINE int32x4_t acc_finish(acc4 a) { return a; }
#else
typedef struct {
    int32x4_t lo, hi; /* lo: rows 0,1 as (k0+k1, k2+k3) pairs; hi: rows 2,3 */
} acc4;
BITNET_INLINE acc4 acc_zero(void) {
    acc4 a = {vdupq_n_s32(0), vdupq_n_s32(0)};
    return a;
}
BITNET_INLINE acc4 dot4(acc4 a, uint8x16_t w, int8x16_t x) {
    const int8x16_t ws = vreinterpretq_s8_u8(w);
    a.lo = vpadalq_s16(a.lo, vmull_s8(vget_low_s8(ws), vget_low_s8(x)));
    a.hi = vpadalq_s16(a.hi, vmull_s8(vget_high_s8(ws), vget_high_s8(x)));
    return a;
}
BITNET_INLINE int32x4_t acc_finish(acc4 a) { return vpaddq_s32(a.lo, a.hi); }
#endif

BITNET_INLINE int8x16_t bcast4(const int8_t *p) { /* ld1r: 4 activation bytes to every lane */
    return vreinterpretq_s8_u32(vld1q_dup_u32((const uint32_t *)(const void *)p));
}

BITNET_INLINE float32x4_t load_dw4(const uint16_t *s) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(s))); }

/* floor(3r/256) = (r >= 86) + (r >= 171) per byte; compares give 0xff, so trit = 0 - m1 - m2 (mod 256). */
BITNET_INLINE uint8x16_t trit_of(uint8x16_t r) {
    const uint8x16_t m1 = vcgeq_u8(r, vdupq_n_u8(86)), m2 = vcgeq_u8(r, vdupq_n_u8(171));
    return vsubq_u8(vsubq_u8(vdupq_n_u8(0), m1), m2);
}
BITNET_INLINE uint8x16_t times3(uint8x16_t r) { return vaddq_u8(r, vaddq_u8(r, r)); }

BITNET_INLINE uint8x16_t plane2(uint8x16_t v, int l) { /* 2-bit field l of every byte */
    switch (l) {
    case 0: return vandq_u8(v, vdupq_n_u8(3));
    case 1: return vandq_u8(vshrq_n_u8(v, 2), vdupq_n_u8(3));
    case 2: return vandq_u8(vshrq_n_u8(v, 4), vdupq_n_u8(3));
    default: return vshrq_n_u8(v, 6);
    }
}

/* Store 16 row results; rows >= n (partial last group) are left untouched. */
BITNET_INLINE void store16(float *y, const float32x4_t v[4], int64_t n) {
    if (n >= 16) {
        for (int q = 0; q < 4; q++) vst1q_f32(y + 4 * q, v[q]);
    } else {
        float t[16];
        for (int q = 0; q < 4; q++) vst1q_f32(t + 4 * q, v[q]);
        memcpy(y, t, sizeof(float) * (size_t)n);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* GEMV                                                                                           */

BITNET_INLINE void dot_tk2(const uint8_t *tile, const bitnet_act_block *xb, acc4 a[4]) {
#pragma GCC unroll 2 /* full unrolling lets gcc hoist and spill the block's broadcasts (see avx512vnni.c) */
    for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
        uint8x16_t v[4];
        for (int q = 0; q < 4; q++) v[q] = vld1q_u8(tile + 64 * c + 16 * q);
        for (int l = 0; l < 4; l++) {
            const int8x16_t x = bcast4(xb->qs + bitnet_tk2_k(c, l, 0));
            for (int q = 0; q < 4; q++) a[q] = dot4(a[q], plane2(v[q], l), x);
        }
    }
}

BITNET_INLINE void tk1_chunk(const uint8_t *tile, const bitnet_act_block *xb, int c, const int planes, acc4 a[4]) {
    uint8x16_t r[4];
    for (int q = 0; q < 4; q++) r[q] = vld1q_u8(tile + 64 * c + 16 * q);
    for (int n = 0; n < planes; n++) {
        const int8x16_t x = bcast4(xb->qs + bitnet_tk1_k(c, n, 0));
        for (int q = 0; q < 4; q++) {
            a[q] = dot4(a[q], trit_of(r[q]), x);
            r[q] = times3(r[q]);
        }
    }
}

BITNET_INLINE void dot_tk1(const uint8_t *tile, const bitnet_act_block *xb, acc4 a[4]) {
#pragma GCC unroll 2
    for (int c = 0; c < 12; c++) tk1_chunk(tile, xb, c, 5, a);
    tk1_chunk(tile, xb, 12, 4, a);
}

int bitnet_gemv(const bitnet_weights *w, const bitnet_act_block *x, float *y, int64_t r0, int64_t r1) {
    const int rc = bitnet__check(w, x, 1, 0, y, 0, r0, r1);
    if (rc != BITNET_OK) return rc;
    const int64_t nb = w->k / BITNET_QK, g1 = bitnet__groups(r1);
    const size_t tb = bitnet__tile_bytes(w->layout);
    for (int64_t g = r0 / BITNET_GROUP_ROWS; g < g1; g++) {
        const uint8_t *qp = bitnet__codes(w, g);
        const uint16_t *s = bitnet__scales(w, g);
        float32x4_t f[4];
        for (int q = 0; q < 4; q++) f[q] = vdupq_n_f32(0.0f);
        for (int64_t b = 0; b < nb; b++, qp += tb, s += BITNET_GROUP_ROWS) {
            acc4 a[4];
            for (int q = 0; q < 4; q++) a[q] = acc_zero();
            if (w->layout == BITNET_LAYOUT_TK2) dot_tk2(qp, x + b, a);
            else dot_tk1(qp, x + b, a);
            const float32x4_t dx = vdupq_n_f32(x[b].d);
            const int32x4_t sum = vdupq_n_s32(x[b].sum);
            for (int q = 0; q < 4; q++) {
                const float32x4_t isum = vcvtq_f32_s32(vsubq_s32(acc_finish(a[q]), sum));
                f[q] = vaddq_f32(f[q], vmulq_f32(isum, vmulq_f32(load_dw4(s + 4 * q), dx)));
            }
        }
        store16(y + g * BITNET_GROUP_ROWS, f, w->rows - g * BITNET_GROUP_ROWS);
    }
    return BITNET_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* GEMM                                                                                           */

static void unpack_tile(bitnet_layout layout, const uint8_t *tile, uint8_t *restrict planes) {
    for (int q = 0; q < 4; q++) { /* rows 4q .. 4q+3 */
        if (layout == BITNET_LAYOUT_TK2) {
            for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
                const uint8x16_t v = vld1q_u8(tile + 64 * c + 16 * q);
                for (int l = 0; l < 4; l++) vst1q_u8(planes + 16 * bitnet_tk2_k(c, l, 0) + 16 * q, plane2(v, l));
            }
        } else {
            for (int c = 0; c < BITNET_TK1_CHUNKS; c++) {
                uint8x16_t r = vld1q_u8(tile + 64 * c + 16 * q);
                for (int n = 0; n < (c < 12 ? 5 : 4); n++, r = times3(r))
                    vst1q_u8(planes + 16 * bitnet_tk1_k(c, n, 0) + 16 * q, trit_of(r));
            }
        }
    }
}

BITNET_INLINE void micro(const gemm_args *a, const uint8_t *planes, const uint16_t *scales, int64_t g, int64_t b,
                         int64_t c0, const int C) {
    const bitnet_act_block *xc[BITNET_GEMM_COLS];
    acc4 acc[BITNET_GEMM_COLS][4];
    for (int c = 0; c < C; c++) {
        xc[c] = a->x + (c0 + c) * a->x_stride + b;
        for (int q = 0; q < 4; q++) acc[c][q] = acc_zero();
    }
    for (int p = 0; p < 64; p++) {
        uint8x16_t wv[4];
        for (int q = 0; q < 4; q++) wv[q] = vld1q_u8(planes + 64 * p + 16 * q);
        for (int c = 0; c < C; c++) {
            const int8x16_t xv = bcast4(xc[c]->qs + 4 * p);
            for (int q = 0; q < 4; q++) acc[c][q] = dot4(acc[c][q], wv[q], xv);
        }
    }
    const int64_t n = a->w->rows - g * BITNET_GROUP_ROWS;
    const bitnet__ysums ys = bitnet__ysums_at(a, g, c0, b);
    for (int c = 0; c < C; c++) {
        const float *yp = ys.prev ? ys.prev + c * ys.prev_ld : NULL;
        float prev[16] = {0};
        if (yp) memcpy(prev, yp, sizeof(float) * (size_t)(n < 16 ? n : 16));
        const float32x4_t dx = vdupq_n_f32(xc[c]->d);
        const int32x4_t sum = vdupq_n_s32(xc[c]->sum);
        float32x4_t out[4];
        for (int q = 0; q < 4; q++) {
            const float32x4_t isum = vcvtq_f32_s32(vsubq_s32(acc_finish(acc[c][q]), sum));
            const float32x4_t base = b == 0 ? vdupq_n_f32(0.0f) : vld1q_f32(prev + 4 * q);
            out[q] = vaddq_f32(base, vmulq_f32(isum, vmulq_f32(load_dw4(scales + b * BITNET_GROUP_ROWS + 4 * q), dx)));
        }
        store16(ys.next + c * ys.next_ld, out, n);
    }
}

#define BITNET_MICRO(C)                                                                                        \
    static void micro_##C(const gemm_args *a, const uint8_t *p, const uint16_t *s, int64_t g, int64_t b,       \
                          int64_t c0) {                                                                        \
        micro(a, p, s, g, b, c0, (C) < BITNET_GEMM_COLS ? (C) : BITNET_GEMM_COLS);                             \
    }
BITNET_MICRO(1) BITNET_MICRO(2) BITNET_MICRO(3) BITNET_MICRO(4) BITNET_MICRO(5) BITNET_MICRO(6)
static const bitnet__micro_fn micro_table[6] = {micro_1, micro_2, micro_3, micro_4, micro_5, micro_6};

int bitnet_gemm(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride, float *y,
                int64_t y_stride, int64_t r0, int64_t r1) {
    return bitnet__gemm_1rg(w, x, ncols, x_stride, y, y_stride, r0, r1, unpack_tile, micro_table);
}

#else
typedef int bitnet_neon_unused; /* ISO C: no empty translation unit */
#endif
