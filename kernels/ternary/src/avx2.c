/*
 * avx2.c - AVX2 (+F16C) bodies of bitnet_gemv / bitnet_gemm.
 *
 * The integer core is vpmaddubsw (u8 code x s8 activation, adjacent pairs summed to int16) accumulated
 * in int16 over a whole 256-block, then widened once with vpmaddwd. No overflow: every int16 lane sums
 * 128 products c*x with c in {0,1,2}, x in [-128,127]: range [-32768, 32512]; a pair is in [-512, 508],
 * so vpmaddubsw never saturates. (This is why repack refuses the TQ2_0 code 3.) The -1 offset of the
 * codes is folded by subtracting the block's activation sum after widening.
 * A 64-byte chunk is two ymm: rows 0-7 and rows 8-15 (lane r = 4 bytes of row r).
 *
 * With AVX-VNNI (Alder Lake and later: VEX vpdpbusd on ymm) the same code accumulates in int32 with
 * vpdpbusd instead (one instruction per product step, no widening): ISA name "avxvnni". The EVEX ymm
 * form (AVX512-VL + VNNI) computes the identical thing; the C tests build this path with it on hosts
 * without AVX-VNNI (tests variant "avx2vnni"), so the algorithm is tested where the VEX encoding
 * cannot run.
 *
 * GEMV decodes in registers. GEMM decodes each (group, block) tile once into a 4 KiB int8 scratch in K4
 * order (plane p = 64 bytes: lane r = row r, k = 4p .. 4p+3) that all column tiles reuse.
 */
#include "internal.h"

#if defined(BITNET_ISA_AVX2)
#include <immintrin.h>

#if BITNET_GEMM_COLS < 1 || BITNET_GEMM_COLS > 6 || BITNET_GEMM_RG != 1
#error "tuning.json avx2: need 1 <= gemm_cols <= 6 (2*cols int16 accumulators in 16 ymm), gemm_row_groups 1"
#endif

BITNET_INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

BITNET_INLINE __m256 load_dw8(const uint16_t *s) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s)); }

/* lanes < n all ones: the valid rows of a half group */
BITNET_INLINE __m256i lanes_below(int64_t n) {
    const int32_t m = n < 0 ? 0 : n > 8 ? 8 : (int32_t)n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

#if defined(BITNET_AVX2_DPBUSD)
/* acc (int32 per row lane) += sum of 4 products u8 code x s8 activation */
BITNET_INLINE __m256i mac(__m256i acc, __m256i w, __m256i x) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, w, x);
#else
    return _mm256_dpbusd_epi32(acc, w, x); /* EVEX form (AVX512-VL + VNNI), same result */
#endif
}
BITNET_INLINE __m256i acc_add(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
/* int32 accumulators minus the activation block sum */
BITNET_INLINE __m256i widen(__m256i acc32, int32_t sum) { return _mm256_sub_epi32(acc32, _mm256_set1_epi32(sum)); }
#else
/* acc (int16 pairs) += u8 code x s8 activation, adjacent products summed */
BITNET_INLINE __m256i mac(__m256i acc, __m256i w, __m256i x) {
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x));
}
BITNET_INLINE __m256i acc_add(__m256i a, __m256i b) { return _mm256_add_epi16(a, b); }
/* int16 accumulators (pairs) -> int32 per row lane, minus the activation block sum */
BITNET_INLINE __m256i widen(__m256i acc16, int32_t sum) {
    return _mm256_sub_epi32(_mm256_madd_epi16(acc16, _mm256_set1_epi16(1)), _mm256_set1_epi32(sum));
}
#endif

/* out8 = (prev ? prev8 : 0) + (float)isum * (dw * dx), masked to valid rows */
BITNET_INLINE void combine8(float *out, const float *prev, __m256i valid, __m256i isum, __m256 dw, float dx) {
    const __m256 p = prev ? _mm256_maskload_ps(prev, valid) : _mm256_setzero_ps();
    const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(dx)));
    _mm256_maskstore_ps(out, valid, _mm256_add_ps(p, t));
}

/* Trit of each byte, given rs = r ^ 0x80 (so signed compares order r): (r >= 86) + (r >= 171). The
 * x3 step commutes with the ^0x80 bias: 3(r + 128) = 3r + 128 (mod 256). */
BITNET_INLINE __m256i trit_of_biased(__m256i rs) {
    const __m256i m1 = _mm256_cmpgt_epi8(rs, _mm256_set1_epi8(85 - 128));
    const __m256i m2 = _mm256_cmpgt_epi8(rs, _mm256_set1_epi8(170 - 128));
    return _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(m1, m2));
}
BITNET_INLINE __m256i times3(__m256i r) { return _mm256_add_epi8(r, _mm256_add_epi8(r, r)); }

/* ---------------------------------------------------------------------------------------------- */
/* GEMV                                                                                           */

/* int16 pair sums of codes . x over one tile, for rows 0-7 (acc[0]) and 8-15 (acc[1]) */
BITNET_INLINE void dot_tk2(const uint8_t *tile, const bitnet_act_block *xb, __m256i acc[2]) {
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0;
    /* not fully unrolled: gcc would hoist all 64 broadcasts of the block and spill them (13.5 -> 21 GB/s) */
#pragma GCC unroll 2
    for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
        const __m256i v0 = _mm256_load_si256((const __m256i *)(tile + 64 * c));
        const __m256i v1 = _mm256_load_si256((const __m256i *)(tile + 64 * c + 32));
        const int8_t *xq = xb->qs + bitnet_tk2_k(c, 0, 0);
        __m256i x = bcast4(xq);
        a0 = mac(a0, _mm256_and_si256(v0, m3), x);
        a1 = mac(a1, _mm256_and_si256(v1, m3), x);
        x = bcast4(xq + 32);
        b0 = mac(b0, _mm256_and_si256(_mm256_srli_epi16(v0, 2), m3), x);
        b1 = mac(b1, _mm256_and_si256(_mm256_srli_epi16(v1, 2), m3), x);
        x = bcast4(xq + 64);
        a0 = mac(a0, _mm256_and_si256(_mm256_srli_epi16(v0, 4), m3), x);
        a1 = mac(a1, _mm256_and_si256(_mm256_srli_epi16(v1, 4), m3), x);
        x = bcast4(xq + 96);
        b0 = mac(b0, _mm256_and_si256(_mm256_srli_epi16(v0, 6), m3), x);
        b1 = mac(b1, _mm256_and_si256(_mm256_srli_epi16(v1, 6), m3), x);
    }
    acc[0] = acc_add(a0, b0);
    acc[1] = acc_add(a1, b1);
}

#if defined(BITNET_AVX2_DPBUSD)
/* With vpdpbusd the trits need not be materialized (as in avx512vnni.c's dot_tk1): with r_0 = q and
 * r_{n+1} = 3 r_n mod 256, trit_n = (3 r_n - r_{n+1}) / 256 exactly, so sum_n trit_n . x_n =
 * (3 sum r_n . x_n - sum r_{n+1} . x_n) / 256: two vpdpbusd and two byte adds per plane and half instead
 * of two compares, two adds and one vpdpbusd. Lane bound: 255 * 128 * 4 * 64 * 3 < 2^31. Accumulators
 * a/b x plane parity x half (8): one pair per plane would wait on vpdpbusd's latency. */
BITNET_INLINE void tk1_chunk(const uint8_t *tile, const bitnet_act_block *xb, int c, const int planes,
                             __m256i a[2][2], __m256i b[2][2]) {
    __m256i r0 = _mm256_load_si256((const __m256i *)(tile + 64 * c));
    __m256i r1 = _mm256_load_si256((const __m256i *)(tile + 64 * c + 32));
    for (int n = 0; n < planes; n++) {
        const __m256i x = bcast4(xb->qs + bitnet_tk1_k(c, n, 0));
        a[n & 1][0] = mac(a[n & 1][0], r0, x);
        a[n & 1][1] = mac(a[n & 1][1], r1, x);
        r0 = times3(r0);
        r1 = times3(r1);
        b[n & 1][0] = mac(b[n & 1][0], r0, x);
        b[n & 1][1] = mac(b[n & 1][1], r1, x);
    }
}

BITNET_INLINE void dot_tk1(const uint8_t *tile, const bitnet_act_block *xb, __m256i acc[2]) {
    __m256i a[2][2], b[2][2];
    for (int j = 0; j < 2; j++) a[j][0] = a[j][1] = b[j][0] = b[j][1] = _mm256_setzero_si256();
#pragma GCC unroll 2 /* see dot_tk2 */
    for (int c = 0; c < 12; c++) tk1_chunk(tile, xb, c, 5, a, b);
    tk1_chunk(tile, xb, 12, 4, a, b);
    for (int h = 0; h < 2; h++) {
        const __m256i sa = _mm256_add_epi32(a[0][h], a[1][h]), sb = _mm256_add_epi32(b[0][h], b[1][h]);
        acc[h] = _mm256_srai_epi32(_mm256_sub_epi32(_mm256_add_epi32(sa, _mm256_add_epi32(sa, sa)), sb), 8);
    }
}
#else
BITNET_INLINE void tk1_chunk(const uint8_t *tile, const bitnet_act_block *xb, int c, const int planes, __m256i *a0,
                             __m256i *a1) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    __m256i r0 = _mm256_xor_si256(_mm256_load_si256((const __m256i *)(tile + 64 * c)), bias);
    __m256i r1 = _mm256_xor_si256(_mm256_load_si256((const __m256i *)(tile + 64 * c + 32)), bias);
    for (int n = 0; n < planes; n++) {
        const __m256i x = bcast4(xb->qs + bitnet_tk1_k(c, n, 0));
        *a0 = mac(*a0, trit_of_biased(r0), x);
        *a1 = mac(*a1, trit_of_biased(r1), x);
        r0 = times3(r0);
        r1 = times3(r1);
    }
}

BITNET_INLINE void dot_tk1(const uint8_t *tile, const bitnet_act_block *xb, __m256i acc[2]) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
#pragma GCC unroll 2 /* see dot_tk2 */
    for (int c = 0; c < 12; c++) tk1_chunk(tile, xb, c, 5, &a0, &a1);
    tk1_chunk(tile, xb, 12, 4, &a0, &a1);
    acc[0] = a0;
    acc[1] = a1;
}

#endif

/* rows 0-7 (f0) and 8-15 (f1) of one group += block xb (the float steps of every path, in block order) */
BITNET_INLINE void gemv_block(const bitnet_weights *w, const uint8_t *q, const uint16_t *s, const bitnet_act_block *xb,
                              __m256 *f0, __m256 *f1) {
    if (BITNET_PREFETCH)
        for (size_t o = 0; o < bitnet__tile_bytes(w->layout); o += 64)
            _mm_prefetch((const char *)q + BITNET_PREFETCH + o, _MM_HINT_T0);
    __m256i acc[2];
    if (w->layout == BITNET_LAYOUT_TK2) dot_tk2(q, xb, acc);
    else dot_tk1(q, xb, acc);
    const __m256 dx = _mm256_set1_ps(xb->d);
    const __m256 i0 = _mm256_cvtepi32_ps(widen(acc[0], xb->sum));
    const __m256 i1 = _mm256_cvtepi32_ps(widen(acc[1], xb->sum));
    *f0 = _mm256_add_ps(*f0, _mm256_mul_ps(i0, _mm256_mul_ps(load_dw8(s), dx)));
    *f1 = _mm256_add_ps(*f1, _mm256_mul_ps(i1, _mm256_mul_ps(load_dw8(s + 8), dx)));
}

BITNET_INLINE void store_group(const bitnet_weights *w, float *y, int64_t g, __m256 f0, __m256 f1) {
    const int64_t n = w->rows - g * BITNET_GROUP_ROWS;
    _mm256_maskstore_ps(y + g * BITNET_GROUP_ROWS, lanes_below(n), f0);
    _mm256_maskstore_ps(y + g * BITNET_GROUP_ROWS + 8, lanes_below(n - 8), f1);
}

/* Two row groups at once, from the two halves of the range, block by block: two sequential streams per
 * thread, as in avx512vnni.c (Sapphire Rapids VM, this code forced: one stream read 5.9 GB/s per core).
 * Each group's y is the same function of its own tiles as with one stream, bit for bit. */
int bitnet_gemv(const bitnet_weights *w, const bitnet_act_block *x, float *y, int64_t r0, int64_t r1) {
    const int rc = bitnet__check(w, x, 1, 0, y, 0, r0, r1);
    if (rc != BITNET_OK) return rc;
    const int64_t nb = w->k / BITNET_QK, g0 = r0 / BITNET_GROUP_ROWS, g1 = bitnet__groups(r1);
    const int64_t half = (g1 - g0) / 2;
    const size_t tb = bitnet__tile_bytes(w->layout);
    for (int64_t i = 0; i < g1 - g0 - half; i++) {
        const int64_t ga = g0 + i, gb = g0 + half + i + ((g1 - g0) % 2); /* odd count: the middle group alone */
        const uint8_t *qa = bitnet__codes(w, ga);
        const uint16_t *sa = bitnet__scales(w, ga);
        __m256 fa0 = _mm256_setzero_ps(), fa1 = fa0;
        if (i < half) {
            const uint8_t *qb = bitnet__codes(w, gb);
            const uint16_t *sb = bitnet__scales(w, gb);
            __m256 fb0 = fa0, fb1 = fa0;
            for (int64_t b = 0; b < nb; b++) {
                gemv_block(w, qa + (size_t)b * tb, sa + b * BITNET_GROUP_ROWS, x + b, &fa0, &fa1);
                gemv_block(w, qb + (size_t)b * tb, sb + b * BITNET_GROUP_ROWS, x + b, &fb0, &fb1);
            }
            store_group(w, y, gb, fb0, fb1);
        } else {
            for (int64_t b = 0; b < nb; b++)
                gemv_block(w, qa + (size_t)b * tb, sa + b * BITNET_GROUP_ROWS, x + b, &fa0, &fa1);
        }
        store_group(w, y, ga, fa0, fa1);
    }
    return BITNET_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* GEMM                                                                                           */

/* Decode one tile into 64 planes of 64 bytes, K4 order (plane p: lane r = row r, k = 4p .. 4p+3). */
static void unpack_tile(bitnet_layout layout, const uint8_t *tile, uint8_t *restrict planes) {
    for (int h = 0; h < 2; h++) { /* rows 0-7, rows 8-15 */
        if (layout == BITNET_LAYOUT_TK2) {
            const __m256i m3 = _mm256_set1_epi8(3);
            for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
                const __m256i v = _mm256_load_si256((const __m256i *)(tile + 64 * c + 32 * h));
                uint8_t *p = planes + 32 * h;
                /* plane p = k/4 lives at byte 64p = 16k */
                _mm256_store_si256((__m256i *)(p + 16 * bitnet_tk2_k(c, 0, 0)), _mm256_and_si256(v, m3));
                _mm256_store_si256((__m256i *)(p + 16 * bitnet_tk2_k(c, 1, 0)),
                                   _mm256_and_si256(_mm256_srli_epi16(v, 2), m3));
                _mm256_store_si256((__m256i *)(p + 16 * bitnet_tk2_k(c, 2, 0)),
                                   _mm256_and_si256(_mm256_srli_epi16(v, 4), m3));
                _mm256_store_si256((__m256i *)(p + 16 * bitnet_tk2_k(c, 3, 0)),
                                   _mm256_and_si256(_mm256_srli_epi16(v, 6), m3));
            }
        } else {
            for (int c = 0; c < BITNET_TK1_CHUNKS; c++) {
                __m256i r = _mm256_xor_si256(_mm256_load_si256((const __m256i *)(tile + 64 * c + 32 * h)),
                                             _mm256_set1_epi8((char)0x80));
                for (int n = 0; n < (c < 12 ? 5 : 4); n++, r = times3(r))
                    _mm256_store_si256((__m256i *)(planes + 32 * h + 16 * bitnet_tk1_k(c, n, 0)), trit_of_biased(r));
            }
        }
    }
}

/* The sums of one 16-row group x C columns over one block: acc[h][c] (rows 8h .. 8h+7, column c). A
 * function of its own (not inlined into micro): with the epilogue's values live too, GCC kept copies of the
 * accumulators on the stack inside the plane loop and rotated registers through moves. */
BITNET_INLINE void micro_sums(const uint8_t *planes, const bitnet_act_block *const *xc, __m256i acc[2][BITNET_GEMM_COLS],
                              const int C) {
    const __m256i z = _mm256_setzero_si256();
    __m256i a0 = z, b0 = z, a1 = z, b1 = z, a2 = z, b2 = z, a3 = z, b3 = z, a4 = z, b4 = z, a5 = z, b5 = z;
    const int8_t *x0 = xc[0]->qs, *x1 = C > 1 ? xc[1]->qs : x0, *x2 = C > 2 ? xc[2]->qs : x0;
    const int8_t *x3 = C > 3 ? xc[3]->qs : x0, *x4 = C > 4 ? xc[4]->qs : x0, *x5 = C > 5 ? xc[5]->qs : x0;
#define BITNET_COL(k)                                                                                          \
    if (C > k) {                                                                                               \
        const __m256i xv = bcast4(x##k + 4 * p);                                                               \
        a##k = mac(a##k, w0, xv);                                                                              \
        b##k = mac(b##k, w1, xv);                                                                              \
    }
#pragma GCC unroll 4
    for (int p = 0; p < 64; p++) {
        const __m256i w0 = _mm256_load_si256((const __m256i *)(planes + 64 * p));
        const __m256i w1 = _mm256_load_si256((const __m256i *)(planes + 64 * p + 32));
        BITNET_COL(0) BITNET_COL(1) BITNET_COL(2) BITNET_COL(3) BITNET_COL(4) BITNET_COL(5)
    }
#undef BITNET_COL
    acc[0][0] = a0, acc[1][0] = b0;
    if (C > 1) acc[0][1] = a1, acc[1][1] = b1;
    if (C > 2) acc[0][2] = a2, acc[1][2] = b2;
    if (C > 3) acc[0][3] = a3, acc[1][3] = b3;
    if (C > 4) acc[0][4] = a4, acc[1][4] = b4;
    if (C > 5) acc[0][5] = a5, acc[1][5] = b5;
}

#define BITNET_SUMS(C)                                                                                         \
    static __attribute__((noinline)) void micro_sums_##C(const uint8_t *planes, const bitnet_act_block *const *xc, \
                                                         __m256i acc[2][BITNET_GEMM_COLS]) {                   \
        micro_sums(planes, xc, acc, (C) < BITNET_GEMM_COLS ? (C) : BITNET_GEMM_COLS);                          \
    }
BITNET_SUMS(1) BITNET_SUMS(2) BITNET_SUMS(3) BITNET_SUMS(4) BITNET_SUMS(5) BITNET_SUMS(6)

/* one 16-row group x C columns, block b */
BITNET_INLINE void micro(const gemm_args *a, const uint8_t *planes, const uint16_t *scales, int64_t g, int64_t b,
                         int64_t c0, const int C) {
    const bitnet_act_block *xc[BITNET_GEMM_COLS];
    __m256i acc[2][BITNET_GEMM_COLS];
    for (int c = 0; c < C; c++) xc[c] = a->x + (c0 + c) * a->x_stride + b;
    switch (C) {
    case 1: micro_sums_1(planes, xc, acc); break;
    case 2: micro_sums_2(planes, xc, acc); break;
    case 3: micro_sums_3(planes, xc, acc); break;
    case 4: micro_sums_4(planes, xc, acc); break;
    case 5: micro_sums_5(planes, xc, acc); break;
    default: micro_sums_6(planes, xc, acc); break;
    }
    const int64_t n = a->w->rows - g * BITNET_GROUP_ROWS;
    const __m256i v0 = lanes_below(n), v1 = lanes_below(n - 8);
    const __m256 dw0 = load_dw8(scales + b * BITNET_GROUP_ROWS), dw1 = load_dw8(scales + b * BITNET_GROUP_ROWS + 8);
    const bitnet__ysums ys = bitnet__ysums_at(a, g, c0, b);
    for (int c = 0; c < C; c++) {
        const float *prev = ys.prev ? ys.prev + c * ys.prev_ld : NULL;
        float *out = ys.next + c * ys.next_ld;
        combine8(out, prev, v0, widen(acc[0][c], xc[c]->sum), dw0, xc[c]->d);
        combine8(out + 8, prev ? prev + 8 : NULL, v1, widen(acc[1][c], xc[c]->sum), dw1, xc[c]->d);
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
typedef int bitnet_avx2_unused; /* ISO C: no empty translation unit */
#endif
