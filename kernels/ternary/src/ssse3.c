/*
 * ssse3.c - SSSE3 bodies of bitnet_gemv / bitnet_gemm, for x86-64 CPUs without AVX2 (the engine's sse42
 * variant: Nehalem .. Ivy Bridge, Silvermont-class Atoms, some VMs that hide AVX).
 *
 * The AVX2 algorithm (avx2.c) on 128-bit registers: pmaddubsw (u8 code x s8 activation, adjacent pairs
 * summed to int16) accumulated in int16 over a whole 256-block, widened once with pmaddwd. The int16
 * bound of avx2.c holds unchanged (each int16 lane sums 128 products c*x, c in {0,1,2}). A 64-byte chunk
 * is four xmm: rows 0-3, 4-7, 8-11, 12-15 (lane r = the 4 code bytes of row r).
 *
 * No F16C at this level: the fp16 row scales are converted with integer SSE2 (exact, see load_dw4), and
 * there are no masked loads/stores: partial row groups go through a small buffer.
 */
#include "internal.h"

#if defined(BITNET_ISA_SSSE3)
#include <tmmintrin.h>

#if BITNET_GEMM_COLS < 1 || BITNET_GEMM_COLS > 2 || BITNET_GEMM_RG != 1
#error "tuning.json ssse3: need 1 <= gemm_cols <= 2 (4*cols int16 accumulators + 4 planes in 16 xmm), gemm_row_groups 1"
#endif

BITNET_INLINE __m128i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm_set1_epi32(v);
}

/* acc (int16 pairs) += u8 code x s8 activation, adjacent products summed */
BITNET_INLINE __m128i mac(__m128i acc, __m128i w, __m128i x) { return _mm_add_epi16(acc, _mm_maddubs_epi16(w, x)); }

/* int16 accumulators (pairs) -> int32 per row lane, minus the activation block sum */
BITNET_INLINE __m128i widen(__m128i acc16, int32_t sum) {
    return _mm_sub_epi32(_mm_madd_epi16(acc16, _mm_set1_epi16(1)), _mm_set1_epi32(sum));
}

/* 4 fp16 scales -> float, exact for every input (as bitnet__fp16_to_fp32): the exponent/mantissa bits
 * shifted into a float's place read as 2^-112 times the value, for normals and subnormals alike (a
 * subnormal half becomes a subnormal float), so one multiply by 2^112 rescales exactly; inf/nan
 * (exponent 31) get the float exponent 255. Needs denormals not flushed on input (ggml never sets DAZ). */
BITNET_INLINE __m128 load_dw4(const uint16_t *s) {
    const __m128i h = _mm_unpacklo_epi16(_mm_loadl_epi64((const __m128i *)s), _mm_setzero_si128());
    const __m128i sign = _mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x8000)), 16);
    const __m128i em = _mm_and_si128(h, _mm_set1_epi32(0x7fff));
    const __m128 scaled = _mm_mul_ps(_mm_castsi128_ps(_mm_slli_epi32(em, 13)), _mm_castsi128_ps(_mm_set1_epi32(0x77800000)));
    const __m128i infnan = _mm_cmpgt_epi32(em, _mm_set1_epi32(0x7bff));
    const __m128i special = _mm_or_si128(_mm_slli_epi32(em, 13), _mm_set1_epi32(0x7f800000));
    const __m128i bits = _mm_or_si128(_mm_andnot_si128(infnan, _mm_castps_si128(scaled)), _mm_and_si128(infnan, special));
    return _mm_castsi128_ps(_mm_or_si128(bits, sign));
}

/* Store the first n (clamped to 0..4) lanes of v at y. */
BITNET_INLINE void store_rows(float *y, __m128 v, int64_t n) {
    if (n >= 4) {
        _mm_storeu_ps(y, v);
    } else if (n > 0) {
        float t[4];
        _mm_storeu_ps(t, v);
        memcpy(y, t, (size_t)n * sizeof(float));
    }
}

/* out4 = (prev ? prev4 : 0) + (float)isum * (dw * dx), first n rows */
BITNET_INLINE void combine4(float *out, const float *prev, int64_t n, __m128i isum, __m128 dw, float dx) {
    float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (prev && n > 0) memcpy(p, prev, (size_t)(n < 4 ? n : 4) * sizeof(float));
    const __m128 t = _mm_mul_ps(_mm_cvtepi32_ps(isum), _mm_mul_ps(dw, _mm_set1_ps(dx)));
    store_rows(out, _mm_add_ps(_mm_loadu_ps(p), t), n);
}

/* Trit of each byte, given rs = r ^ 0x80 (signed compares order r): (r >= 86) + (r >= 171); see avx2.c */
BITNET_INLINE __m128i trit_of_biased(__m128i rs) {
    const __m128i m1 = _mm_cmpgt_epi8(rs, _mm_set1_epi8(85 - 128));
    const __m128i m2 = _mm_cmpgt_epi8(rs, _mm_set1_epi8(170 - 128));
    return _mm_sub_epi8(_mm_setzero_si128(), _mm_add_epi8(m1, m2));
}
BITNET_INLINE __m128i times3(__m128i r) { return _mm_add_epi8(r, _mm_add_epi8(r, r)); }

/* ---------------------------------------------------------------------------------------------- */
/* GEMV                                                                                           */

/* int16 pair sums of codes . x over one TK2 tile; acc[q] = rows 4q .. 4q+3 */
BITNET_INLINE void dot_tk2(const uint8_t *tile, const bitnet_act_block *xb, __m128i acc[4]) {
    const __m128i m3 = _mm_set1_epi8(3);
    __m128i a[4], b[4];
    for (int q = 0; q < 4; q++) a[q] = b[q] = _mm_setzero_si128();
#pragma GCC unroll 1 /* see avx2.c: no hoisting of every broadcast of the block */
    for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
        const int8_t *xq = xb->qs + bitnet_tk2_k(c, 0, 0);
        const __m128i x0 = bcast4(xq), x1 = bcast4(xq + 32), x2 = bcast4(xq + 64), x3 = bcast4(xq + 96);
        for (int q = 0; q < 4; q++) {
            const __m128i v = _mm_load_si128((const __m128i *)(tile + 64 * c + 16 * q));
            a[q] = mac(a[q], _mm_and_si128(v, m3), x0);
            b[q] = mac(b[q], _mm_and_si128(_mm_srli_epi16(v, 2), m3), x1);
            a[q] = mac(a[q], _mm_and_si128(_mm_srli_epi16(v, 4), m3), x2);
            b[q] = mac(b[q], _mm_and_si128(_mm_srli_epi16(v, 6), m3), x3);
        }
    }
    for (int q = 0; q < 4; q++) acc[q] = _mm_add_epi16(a[q], b[q]);
}

BITNET_INLINE void tk1_chunk(const uint8_t *tile, const bitnet_act_block *xb, int c, const int planes, __m128i acc[4]) {
    const __m128i bias = _mm_set1_epi8((char)0x80);
    __m128i r[4];
    for (int q = 0; q < 4; q++) r[q] = _mm_xor_si128(_mm_load_si128((const __m128i *)(tile + 64 * c + 16 * q)), bias);
    for (int n = 0; n < planes; n++) {
        const __m128i x = bcast4(xb->qs + bitnet_tk1_k(c, n, 0));
        for (int q = 0; q < 4; q++) {
            acc[q] = mac(acc[q], trit_of_biased(r[q]), x);
            r[q] = times3(r[q]);
        }
    }
}

BITNET_INLINE void dot_tk1(const uint8_t *tile, const bitnet_act_block *xb, __m128i acc[4]) {
    for (int q = 0; q < 4; q++) acc[q] = _mm_setzero_si128();
#pragma GCC unroll 1
    for (int c = 0; c < 12; c++) tk1_chunk(tile, xb, c, 5, acc);
    tk1_chunk(tile, xb, 12, 4, acc);
}

int bitnet_gemv(const bitnet_weights *w, const bitnet_act_block *x, float *y, int64_t r0, int64_t r1) {
    const int rc = bitnet__check(w, x, 1, 0, y, 0, r0, r1);
    if (rc != BITNET_OK) return rc;
    const int64_t nb = w->k / BITNET_QK, g1 = bitnet__groups(r1);
    const size_t tb = bitnet__tile_bytes(w->layout);
    for (int64_t g = r0 / BITNET_GROUP_ROWS; g < g1; g++) {
        const uint8_t *q = bitnet__codes(w, g);
        const uint16_t *s = bitnet__scales(w, g);
        __m128 f[4];
        for (int h = 0; h < 4; h++) f[h] = _mm_setzero_ps();
        for (int64_t b = 0; b < nb; b++, q += tb, s += BITNET_GROUP_ROWS) {
            if (BITNET_PREFETCH)
                for (size_t o = 0; o < tb; o += 64) _mm_prefetch((const char *)q + BITNET_PREFETCH + o, _MM_HINT_T0);
            __m128i acc[4];
            if (w->layout == BITNET_LAYOUT_TK2) dot_tk2(q, x + b, acc);
            else dot_tk1(q, x + b, acc);
            const __m128 dx = _mm_set1_ps(x[b].d);
            for (int h = 0; h < 4; h++) {
                const __m128 i = _mm_cvtepi32_ps(widen(acc[h], x[b].sum));
                f[h] = _mm_add_ps(f[h], _mm_mul_ps(i, _mm_mul_ps(load_dw4(s + 4 * h), dx)));
            }
        }
        const int64_t n = w->rows - g * BITNET_GROUP_ROWS;
        for (int h = 0; h < 4; h++) store_rows(y + g * BITNET_GROUP_ROWS + 4 * h, f[h], n - 4 * h);
    }
    return BITNET_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* GEMM                                                                                           */

/* Decode one tile into 64 planes of 64 bytes, K4 order (plane p: lane r = row r, k = 4p .. 4p+3). */
static void unpack_tile(bitnet_layout layout, const uint8_t *tile, uint8_t *restrict planes) {
    for (int h = 0; h < 4; h++) { /* rows 4h .. 4h+3 */
        uint8_t *p = planes + 16 * h;
        if (layout == BITNET_LAYOUT_TK2) {
            const __m128i m3 = _mm_set1_epi8(3);
            for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
                const __m128i v = _mm_load_si128((const __m128i *)(tile + 64 * c + 16 * h));
                /* plane p = k/4 lives at byte 64p = 16k */
                _mm_store_si128((__m128i *)(p + 16 * bitnet_tk2_k(c, 0, 0)), _mm_and_si128(v, m3));
                _mm_store_si128((__m128i *)(p + 16 * bitnet_tk2_k(c, 1, 0)), _mm_and_si128(_mm_srli_epi16(v, 2), m3));
                _mm_store_si128((__m128i *)(p + 16 * bitnet_tk2_k(c, 2, 0)), _mm_and_si128(_mm_srli_epi16(v, 4), m3));
                _mm_store_si128((__m128i *)(p + 16 * bitnet_tk2_k(c, 3, 0)), _mm_and_si128(_mm_srli_epi16(v, 6), m3));
            }
        } else {
            for (int c = 0; c < BITNET_TK1_CHUNKS; c++) {
                __m128i r = _mm_xor_si128(_mm_load_si128((const __m128i *)(tile + 64 * c + 16 * h)),
                                          _mm_set1_epi8((char)0x80));
                for (int n = 0; n < (c < 12 ? 5 : 4); n++, r = times3(r))
                    _mm_store_si128((__m128i *)(p + 16 * bitnet_tk1_k(c, n, 0)), trit_of_biased(r));
            }
        }
    }
}

/* one 16-row group x C columns, block b */
BITNET_INLINE void micro(const gemm_args *a, const uint8_t *planes, const uint16_t *scales, int64_t g, int64_t b,
                         int64_t c0, const int C) {
    const bitnet_act_block *xc[BITNET_GEMM_COLS];
    __m128i acc[4][BITNET_GEMM_COLS];
    for (int c = 0; c < C; c++) {
        xc[c] = a->x + (c0 + c) * a->x_stride + b;
        for (int q = 0; q < 4; q++) acc[q][c] = _mm_setzero_si128();
    }
#pragma GCC unroll 2
    for (int p = 0; p < 64; p++) {
        __m128i wv[4];
        for (int q = 0; q < 4; q++) wv[q] = _mm_load_si128((const __m128i *)(planes + 64 * p + 16 * q));
        for (int c = 0; c < C; c++) {
            const __m128i xv = bcast4(xc[c]->qs + 4 * p);
            for (int q = 0; q < 4; q++) acc[q][c] = mac(acc[q][c], wv[q], xv);
        }
    }
    const int64_t n = a->w->rows - g * BITNET_GROUP_ROWS;
    const bitnet__ysums ys = bitnet__ysums_at(a, g, c0, b);
    for (int q = 0; q < 4; q++) {
        const __m128 dw = load_dw4(scales + b * BITNET_GROUP_ROWS + 4 * q);
        for (int c = 0; c < C; c++) {
            const float *prev = ys.prev ? ys.prev + c * ys.prev_ld : NULL;
            combine4(ys.next + c * ys.next_ld + 4 * q, prev ? prev + 4 * q : NULL, n - 4 * q,
                     widen(acc[q][c], xc[c]->sum), dw, xc[c]->d);
        }
    }
}

#define BITNET_MICRO(C)                                                                                        \
    static void micro_##C(const gemm_args *a, const uint8_t *p, const uint16_t *s, int64_t g, int64_t b,       \
                          int64_t c0) {                                                                        \
        micro(a, p, s, g, b, c0, (C) < BITNET_GEMM_COLS ? (C) : BITNET_GEMM_COLS);                             \
    }
BITNET_MICRO(1) BITNET_MICRO(2)
static const bitnet__micro_fn micro_table[2] = {micro_1, micro_2};

int bitnet_gemm(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride, float *y,
                int64_t y_stride, int64_t r0, int64_t r1) {
    return bitnet__gemm_1rg(w, x, ncols, x_stride, y, y_stride, r0, r1, unpack_tile, micro_table);
}

#else
typedef int bitnet_ssse3_unused; /* ISO C: no empty translation unit */
#endif
