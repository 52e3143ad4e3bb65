/*
 * avx512vnni.c - AVX-512 (F, BW, VL) + VNNI bodies of bitnet_gemv / bitnet_gemm.
 *
 * The integer core is vpdpbusd: per 32-bit lane, sum of 4 products u8 x s8 added to an int32. Weight
 * codes c = w + 1 in {0, 1, 2} are the unsigned operand, activation bytes the signed one, so
 *     sum_k w_k x_k = sum_k c_k x_k - sum_k x_k
 * and the -1 offset costs one broadcast of the block's activation sum per block (acc starts at -sum).
 * A 64-byte chunk of a tile = 16 rows x 4 bytes (lane r = row r); plane l of it, against 4 broadcast
 * activation bytes, is one vpdpbusd serving 16 rows (layout: bitnet_kernels.h).
 *
 * GEMV streams each 16-row group once and decodes in registers. GEMM decodes a (group, block) tile
 * once into a 4 KiB int8 scratch in "K4" order (plane p = 64 bytes: lane r = row r, k = 4p .. 4p+3),
 * then every column tile reuses it: one load per plane, RG x C vpdpbusd.
 *
 * AMX-INT8 (Sapphire Rapids and later; probed at run time, bitnet_gemm_amx): the same 4 KiB K4 scratch
 * of a tile, unpacked as the signed weights code - 1, IS the "B" operand of TDPBSSD for four 64-k steps
 * (16 k-quads x 16 rows x 4 bytes, row stride 64), and 16 activation columns x 64 k of the int8 blocks are
 * its "A" operand straight from the caller's memory (row stride = the column stride), so C[column][row] +=
 * sum_k x[k] * w[k][row] with no re-layout: the exact int32 the vpdpbusd path forms as -sum + codes . x.
 * The float steps are combine16's in the same order, so every float equals the vpdpbusd path's bit for
 * bit. Columns past the last full 16 go through the vpdpbusd micro-kernels.
 */
#define _DEFAULT_SOURCE /* syscall() */
#include "internal.h"

#if defined(BITNET_ISA_AVX512VNNI)
#include <immintrin.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__linux__) && \
    (defined(__clang__) ? __clang_major__ >= 12 : (defined(__GNUC__) && __GNUC__ >= 11))
#define BITNET_AMX_CODE 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if BITNET_GEMM_COLS < 1 || BITNET_GEMM_COLS > 12 || BITNET_GEMM_RG < 1 || BITNET_GEMM_RG > 2 || \
    BITNET_GEMM_RG * BITNET_GEMM_COLS > 24
#error "tuning.json avx512vnni: need 1 <= gemm_cols <= 12, gemm_row_groups in 1..2, product <= 24 (zmm budget)"
#endif

BITNET_INLINE __m512i bcast4(const int8_t *p) { /* 4 activation bytes to all 16 lanes (m32bcst) */
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* acc += u8 w . (4 activation bytes at p, broadcast to 16 lanes) */
BITNET_INLINE __m512i dpbusd_b(__m512i acc, __m512i w, const int8_t *p) {
    return _mm512_dpbusd_epi32(acc, w, bcast4(p));
}

BITNET_INLINE __m512 load_dw(const uint16_t *s) { /* 16 fp16 row scales -> float, exact */
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s));
}

/* out16 = (prev ? prev16 : 0) + (float)isum * (dw * dx), 16 rows, masked to the valid rows. */
BITNET_INLINE void combine16(float *out, const float *prev, __mmask16 valid, __m512i isum, __m512 dw, float dx) {
    const __m512 p = prev ? _mm512_maskz_loadu_ps(valid, prev) : _mm512_setzero_ps();
    const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, _mm512_set1_ps(dx)));
    _mm512_mask_storeu_ps(out, valid, _mm512_add_ps(p, t));
}

BITNET_INLINE __mmask16 rows_mask(int64_t g, int64_t rows) {
    const int64_t n = rows - g * BITNET_GROUP_ROWS;
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* Trit of every byte r: floor(3r / 256) = (r >= 86) + (r >= 171), as bytes 0/1/2. */
BITNET_INLINE __m512i trit_of(__m512i r) {
    const __mmask64 m1 = _mm512_cmpge_epu8_mask(r, _mm512_set1_epi8(86));
    const __mmask64 m2 = _mm512_cmpge_epu8_mask(r, _mm512_set1_epi8((char)171));
    return _mm512_mask_blend_epi8(m2, _mm512_maskz_mov_epi8(m1, _mm512_set1_epi8(1)), _mm512_set1_epi8(2));
}
BITNET_INLINE __m512i times3(__m512i r) { return _mm512_add_epi8(r, _mm512_add_epi8(r, r)); } /* 3r mod 256 */

/* ---------------------------------------------------------------------------------------------- */
/* GEMV                                                                                           */

/* int32 dot (codes - 1) . x of one TK2 tile, 16 rows. */
BITNET_INLINE __m512i dot_tk2(const uint8_t *tile, const bitnet_act_block *xb) {
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i a0 = _mm512_set1_epi32(-xb->sum), a1 = _mm512_setzero_si512(), a2 = a1, a3 = a1;
    /* Not fully unrolled: gcc would hoist all 64 broadcasts of the block out of the chunk loop and spill
     * them to the stack (4 KiB of stores per tile: TK1 GEMV ran at 12 instead of 18 GB/s). */
#pragma GCC unroll 2
    for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
        const __m512i v = _mm512_load_si512((const void *)(tile + 64 * c));
        const int8_t *xq = xb->qs + bitnet_tk2_k(c, 0, 0);
        a0 = dpbusd_b(a0, _mm512_and_si512(v, m3), xq);
        a1 = dpbusd_b(a1, _mm512_and_si512(_mm512_srli_epi16(v, 2), m3), xq + 32);
        a2 = dpbusd_b(a2, _mm512_and_si512(_mm512_srli_epi16(v, 4), m3), xq + 64);
        a3 = dpbusd_b(a3, _mm512_and_si512(_mm512_srli_epi16(v, 6), m3), xq + 96);
    }
    return _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
}

/* int32 dot of one TK1 tile, 16 rows. Trits are not materialized: with r_0 = q, r_{n+1} = 3 r_n mod 256,
 * trit_n = (3 r_n - r_{n+1}) / 256 exactly, so sum_n trit_n . x_n = (3 sum r_n . x_n - sum r_{n+1} . x_n) / 256:
 * two vpdpbusd and two byte adds per plane, no compare/select. Lane bound: 256 * 255 * 128 * 3 < 2^31. */
BITNET_INLINE void tk1_chunk(const uint8_t *tile, int c, const int8_t *xq, const int stride, const int planes,
                             __m512i *a, __m512i *b) {
    __m512i r = _mm512_load_si512((const void *)(tile + 64 * c));
    for (int n = 0; n < planes; n++) {
        a[n] = dpbusd_b(a[n], r, xq + stride * n);
        r = times3(r);
        b[n] = dpbusd_b(b[n], r, xq + stride * n);
    }
}

/* Chunks 0-7, 8-11 and 12 address their activations with different plane strides (bitnet_tk1_k): three
 * branch-free loops, so gcc keeps the ten accumulators in place (one loop with the index's branches
 * inside compiled to a register copy per accumulator per chunk). */
BITNET_INLINE __m512i dot_tk1(const uint8_t *tile, const bitnet_act_block *xb) {
    __m512i a[5], b[5];
    for (int n = 0; n < 5; n++) a[n] = b[n] = _mm512_setzero_si512();
#pragma GCC unroll 2 /* see dot_tk2 */
    for (int c = 0; c < 8; c++) tk1_chunk(tile, c, xb->qs + bitnet_tk1_k(c, 0, 0), 32, 5, a, b);
#pragma GCC unroll 2
    for (int c = 8; c < 12; c++) tk1_chunk(tile, c, xb->qs + bitnet_tk1_k(c, 0, 0), 16, 5, a, b);
    tk1_chunk(tile, 12, xb->qs + bitnet_tk1_k(12, 0, 0), 4, 4, a, b);
    __m512i sa = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], _mm512_add_epi32(a[3], a[4])));
    __m512i sb = _mm512_add_epi32(_mm512_add_epi32(b[0], b[1]), _mm512_add_epi32(b[2], _mm512_add_epi32(b[3], b[4])));
    const __m512i t = _mm512_srai_epi32(_mm512_sub_epi32(_mm512_add_epi32(sa, _mm512_add_epi32(sa, sa)), sb), 8);
    return _mm512_sub_epi32(t, _mm512_set1_epi32(xb->sum));
}

/* y of one 16-row group += block b (the float steps of every path: (float)isum * (dw * dx), in block order). */
BITNET_INLINE __m512 gemv_block(const bitnet_weights *w, const uint8_t *q, const uint16_t *s,
                                const bitnet_act_block *xb, __m512 acc) {
    if (BITNET_PREFETCH)
        for (size_t o = 0; o < bitnet__tile_bytes(w->layout); o += 64)
            _mm_prefetch((const char *)q + BITNET_PREFETCH + o, _MM_HINT_T0);
    const __m512i isum = w->layout == BITNET_LAYOUT_TK2 ? dot_tk2(q, xb) : dot_tk1(q, xb);
    const __m512 dwdx = _mm512_mul_ps(load_dw(s), _mm512_set1_ps(xb->d));
    return _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), dwdx));
}

/* Two row groups at once, from the two halves of the range, block by block: two sequential streams per thread.
 * On a Sapphire Rapids VM one stream read 8.1-8.5 GB/s per core and two 9.8-10.4 (`bench_gemv_avx512
 * --no-gemm`, 6912x2560 and 2560x6912; 2 threads 16.1-16.5 -> 19.7-19.9 GB/s); four were no better than two.
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
        __m512 acca = _mm512_setzero_ps(), accb = acca;
        if (i < half) {
            const uint8_t *qb = bitnet__codes(w, gb);
            const uint16_t *sb = bitnet__scales(w, gb);
            for (int64_t b = 0; b < nb; b++) {
                acca = gemv_block(w, qa + (size_t)b * tb, sa + b * BITNET_GROUP_ROWS, x + b, acca);
                accb = gemv_block(w, qb + (size_t)b * tb, sb + b * BITNET_GROUP_ROWS, x + b, accb);
            }
            _mm512_mask_storeu_ps(y + gb * BITNET_GROUP_ROWS, rows_mask(gb, w->rows), accb);
        } else {
            for (int64_t b = 0; b < nb; b++)
                acca = gemv_block(w, qa + (size_t)b * tb, sa + b * BITNET_GROUP_ROWS, x + b, acca);
        }
        _mm512_mask_storeu_ps(y + ga * BITNET_GROUP_ROWS, rows_mask(ga, w->rows), acca);
    }
    return BITNET_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* GEMM                                                                                           */

/* The codes c (unsigned) or, with `sign`, the weights c - 1 in {-1, 0, 1} (AMX's TDPBSSD operand). */
BITNET_INLINE void unpack_tile_as(bitnet_layout layout, const uint8_t *tile, uint8_t *restrict planes, const int sign) {
    const __m512i off = _mm512_set1_epi8(sign ? 1 : 0);
    if (layout == BITNET_LAYOUT_TK2) {
        const __m512i m3 = _mm512_set1_epi8(3);
        for (int c = 0; c < BITNET_TK2_CHUNKS; c++) {
            const __m512i v = _mm512_load_si512((const void *)(tile + 64 * c));
            /* plane p = k/4 lives at byte 64p = 16k */
            for (int l = 0; l < 4; l++)
                _mm512_store_si512((void *)(planes + 16 * bitnet_tk2_k(c, l, 0)),
                                   _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 2 * l), m3), off));
        }
    } else {
        for (int c = 0; c < BITNET_TK1_CHUNKS; c++) {
            __m512i r = _mm512_load_si512((const void *)(tile + 64 * c));
            for (int n = 0; n < (c < 12 ? 5 : 4); n++, r = times3(r))
                _mm512_store_si512((void *)(planes + 16 * bitnet_tk1_k(c, n, 0)), _mm512_sub_epi8(trit_of(r), off));
        }
    }
}

/* Decode tile (g, b) into 64 planes of 64 bytes, K4 order: plane p, lane r = codes of row r, k = 4p..4p+3. */
static void unpack_tile(bitnet_layout layout, const uint8_t *tile, uint8_t *restrict planes) {
    unpack_tile_as(layout, tile, planes, 0);
}

/* RG groups x C columns for block b: acc = -sum_x; 64 planes of vpdpbusd; combine into y. */
BITNET_INLINE void micro(const gemm_args *a, const uint8_t *planes, const uint16_t *const *scales, int64_t g,
                         int64_t b, int64_t c0, const int RG, const int C) {
    const bitnet_act_block *xc[BITNET_GEMM_COLS];
    __m512i acc[BITNET_GEMM_RG][BITNET_GEMM_COLS];
    for (int c = 0; c < C; c++) {
        xc[c] = a->x + (c0 + c) * a->x_stride + b;
        for (int j = 0; j < RG; j++) acc[j][c] = _mm512_set1_epi32(-xc[c]->sum);
    }
#pragma GCC unroll 8
    for (int p = 0; p < 64; p++) {
        __m512i wv[BITNET_GEMM_RG];
        for (int j = 0; j < RG; j++) wv[j] = _mm512_load_si512((const void *)(planes + 4096 * j + 64 * p));
        for (int c = 0; c < C; c++) {
            const __m512i xv = bcast4(xc[c]->qs + 4 * p);
            for (int j = 0; j < RG; j++) acc[j][c] = _mm512_dpbusd_epi32(acc[j][c], wv[j], xv);
        }
    }
    const bitnet__ysums ys = bitnet__ysums_at(a, g, c0, b);
    for (int j = 0; j < RG; j++) {
        const __m512 dw = load_dw(scales[j] + b * BITNET_GROUP_ROWS);
        const __mmask16 valid = rows_mask(g + j, a->w->rows);
        for (int c = 0; c < C; c++)
            combine16(ys.next + c * ys.next_ld + 16 * j, ys.prev ? ys.prev + c * ys.prev_ld + 16 * j : NULL, valid,
                      acc[j][c], dw, xc[c]->d);
    }
}

#define BITNET_MICRO(RG, C)                                                                                      \
    static void micro_##RG##_##C(const gemm_args *a, const uint8_t *p, const uint16_t *const *s, int64_t g,    \
                                 int64_t b, int64_t c0) {                                                        \
        micro(a, p, s, g, b, c0, RG, (C) < BITNET_GEMM_COLS ? (C) : BITNET_GEMM_COLS);                           \
    }
#define BITNET_MICRO_RG(RG)                                                                                     \
    BITNET_MICRO(RG, 1) BITNET_MICRO(RG, 2) BITNET_MICRO(RG, 3) BITNET_MICRO(RG, 4) BITNET_MICRO(RG, 5)          \
    BITNET_MICRO(RG, 6) BITNET_MICRO(RG, 7) BITNET_MICRO(RG, 8) BITNET_MICRO(RG, 9) BITNET_MICRO(RG, 10)         \
    BITNET_MICRO(RG, 11) BITNET_MICRO(RG, 12)
BITNET_MICRO_RG(1)
#if BITNET_GEMM_RG == 2
BITNET_MICRO_RG(2)
#endif

typedef void (*micro_fn)(const gemm_args *, const uint8_t *, const uint16_t *const *, int64_t, int64_t, int64_t);
#define BITNET_MICRO_TABLE(RG)                                                                                  \
    {micro_##RG##_1, micro_##RG##_2, micro_##RG##_3, micro_##RG##_4,  micro_##RG##_5,  micro_##RG##_6,            \
     micro_##RG##_7, micro_##RG##_8, micro_##RG##_9, micro_##RG##_10, micro_##RG##_11, micro_##RG##_12}
static const micro_fn micro_table[BITNET_GEMM_RG][12] = {
    BITNET_MICRO_TABLE(1),
#if BITNET_GEMM_RG == 2
    BITNET_MICRO_TABLE(2),
#endif
};

/* ---------------------------------------------------------------------------------------------- */
/* AMX-INT8 tiles for the GEMM                                                                    */

static int amx_state = -1; /* -1 not probed yet, 0 off, 1 on (read and written with relaxed atomics) */

#if defined(BITNET_AMX_CODE)
/* The CPU has AMX-TILE + AMX-INT8, the OS enables the tile state (XCR0 bits 17-18), and Linux granted
 * this process the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA; idempotent). */
static int amx_hw(void) {
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid(1, a, b, c, d);
    if (!(c & (1u << 27))) return 0; /* OSXSAVE */
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 24) & 1) || !((d >> 25) & 1)) return 0;
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    return (lo & (3u << 17)) == (3u << 17);
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

/* C tiles 0-3 (column tile t, row group j: 2t + j), A (16 columns x 64 k) in 4-5, B (64 k x 16 rows) in 6-7:
 * every tile 16 rows x 64 bytes. The B scratch holds the weights w = c - 1 (signed), so TDPBSSD gives the
 * int32 dot directly (the vpdpbusd path's acc = -sum + codes . x, the same integer). RG row groups (1-2) share
 * the A loads, NT column tiles (1-2) the B. */
#define BITNET_AMX_STEP(s)                                                                                       \
    do {                                                                                                         \
        _tile_loadd(6, pl + 1024 * (s), 64);                                                                     \
        if (rg > 1) _tile_loadd(7, pl + 4096 + 1024 * (s), 64);                                                  \
        _tile_loadd(4, xa0 + xstep * (s), xs);                                                                   \
        _tile_dpbssd(0, 4, 6);                                                                                   \
        if (rg > 1) _tile_dpbssd(1, 4, 7);                                                                       \
        if (nt > 1) {                                                                                            \
            _tile_loadd(5, xa1 + xstep * (s), xs);                                                                \
            _tile_dpbssd(2, 5, 6);                                                                               \
            if (rg > 1) _tile_dpbssd(3, 5, 7);                                                                   \
        }                                                                                                        \
    } while (0)

#define BITNET_AMX_KB 4 /* 256-blocks per pass: 2 groups x 4 blocks x 4 KiB = 32 KiB of weight scratch */

typedef int32_t amx_cbuf[BITNET_AMX_KB][4][16][16]; /* one column pair's int32 sums, every block of a pass */

/* The activations the A tiles read: packed (pk: see bitnet_gemm_pack) or, without it, the blocks themselves
 * (tile rows a column's stride apart). */
typedef struct {
    const int8_t *pk;
    const float *dx; /* with pk: the columns' block scales, column after column (nb each) */
    int64_t nb;
} amx_acts;

/* The tile work of column pair [c0, c0 + 32) (or 16) over the pass's blocks: sums into cb. */
__attribute__((target("amx-tile,amx-int8"))) static void amx_issue(const gemm_args *a, const uint8_t *planes,
                                                                    int rg, int64_t b0, int nbk, int64_t c0,
                                                                    int nt, const amx_acts *in, amx_cbuf cb) {
    const long xs = in->pk ? 64 : (long)(a->x_stride * (int64_t)sizeof(bitnet_act_block));
    /* the tile loads are asm the compiler cannot see reading memory: the unpacked planes must be stored first */
    __asm__ volatile("" ::: "memory");
    const int xstep = in->pk ? 1024 : 64;
    for (int bb = 0; bb < nbk; bb++) {
        const uint8_t *pl = planes + 8192 * bb;
        const int8_t *xa0, *xa1;
        if (in->pk) {
            xa0 = in->pk + ((size_t)(c0 / 16) * (size_t)in->nb + (size_t)(b0 + bb)) * 4096;
            xa1 = xa0 + (size_t)in->nb * 4096;
        } else {
            xa0 = a->x[c0 * a->x_stride + b0 + bb].qs;
            xa1 = xa0 + 16 * xs;
        }
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        BITNET_AMX_STEP(0);
        BITNET_AMX_STEP(1);
        BITNET_AMX_STEP(2);
        BITNET_AMX_STEP(3);
        _tile_stored(0, cb[bb][0], 64);
        if (rg > 1) _tile_stored(1, cb[bb][1], 64);
        if (nt > 1) _tile_stored(2, cb[bb][2], 64);
        if (nt > 1 && rg > 1) _tile_stored(3, cb[bb][3], 64);
    }
    __asm__ volatile("" ::: "memory"); /* cb was written by the tile stores */
}

/* y of column pair [c0, c0 + 16 nt) += the pass's blocks, one block after the other in float (combine16's
 * steps: (float)isum * (dw * dx), added to the running sum; b == 0 starts from +0): the running sums are
 * loaded and stored once per pass (bitnet__ysums_at: the scratch between passes, y at the end). */
BITNET_INLINE void amx_combine_n(const gemm_args *a, const uint16_t *const *scales, int64_t g, int rg, int64_t b0,
                                  const int nbk, int64_t c0, int nt, const amx_acts *in, amx_cbuf cb) {
    __m512 dw[BITNET_AMX_KB][2];
    for (int bb = 0; bb < nbk; bb++)
        for (int j = 0; j < rg; j++) dw[bb][j] = load_dw(scales[j] + (b0 + bb) * BITNET_GROUP_ROWS);
    /* addresses once per call (as in micro): the running sums before the pass, and where the pass's go */
    const bitnet__ysums sp = bitnet__ysums_at(a, g, c0, b0), sn = bitnet__ysums_at(a, g, c0, b0 + nbk - 1);
    for (int j = 0; j < rg; j++) {
        const __mmask16 valid = rows_mask(g + j, a->w->rows);
        for (int t = 0; t < nt; t++)
            for (int i = 0; i < 16; i++) {
                const int64_t c = 16 * t + i;
                const bitnet_act_block *xb = a->x + (c0 + c) * a->x_stride + b0;
                const float *dx = in->dx ? in->dx + (c0 + c) * in->nb + b0 : NULL;
                __m512 acc = sp.prev ? _mm512_maskz_loadu_ps(valid, sp.prev + c * sp.prev_ld + 16 * j)
                                     : _mm512_setzero_ps();
                for (int bb = 0; bb < nbk; bb++) {
                    const __m512 isum = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)cb[bb][2 * t + j][i]));
                    const float d = dx ? dx[bb] : xb[bb].d;
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(isum, _mm512_mul_ps(dw[bb][j], _mm512_set1_ps(d))));
                }
                _mm512_mask_storeu_ps(sn.next + c * sn.next_ld + 16 * j, valid, acc);
            }
    }
}
static void amx_combine(const gemm_args *a, const uint16_t *const *scales, int64_t g, int rg, int64_t b0, int nbk,
                        int64_t c0, int nt, const amx_acts *in, amx_cbuf cb) {
    if (nbk == BITNET_AMX_KB) amx_combine_n(a, scales, g, rg, b0, BITNET_AMX_KB, c0, nt, in, cb);
    else amx_combine_n(a, scales, g, rg, b0, nbk, c0, nt, in, cb);
}

/* Columns [cc0, cc1) of the pass (cc1 - cc0 a multiple of 16): column pairs outer (the tile loads walk each
 * column's activations forward; a fixed block across all columns jumps a column's stride per tile row, which
 * ran the 2560x6912 GEMM at half the others' speed), software-pipelined: the tiles of pair p+1 are issued
 * before pair p is combined, so the TMUL unit and the vector ports work at the same time. */
static void amx_columns(const gemm_args *a, const uint8_t *planes, const uint16_t *const *scales, int64_t g, int rg,
                        int64_t b0, int nbk, int64_t cc0, int64_t cc1, const amx_acts *in, const uint8_t *const *next,
                        size_t next_bytes) {
    _Alignas(64) amx_cbuf cb[2];
    int64_t c0 = cc0;
    int nt = cc1 - c0 >= 32 ? 2 : 1;
    const int64_t npairs = (cc1 - cc0 + 31) / 32;
    amx_issue(a, planes, rg, b0, nbk, c0, nt, in, cb[0]);
    for (int p = 0; c0 < cc1; p++) {
        for (int j = 0; j < rg; j++) bitnet__prefetch_part(next[j], next_bytes, p, npairs);
        const int64_t c1 = c0 + 16 * nt;
        const int nt1 = cc1 - c1 >= 32 ? 2 : 1;
        if (c1 < cc1) amx_issue(a, planes, rg, b0, nbk, c1, nt1, in, cb[(p + 1) & 1]);
        amx_combine(a, scales, g, rg, b0, nbk, c0, nt, in, cb[p & 1]);
        c0 = c1;
        nt = nt1;
    }
}

__attribute__((target("amx-tile"))) static void amx_begin(void) {
    _Alignas(64) amx_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    /* our own ldtilecfg: the compiler's _tile_loadconfig tells it only the first byte is read, and gcc 12
     * then dropped the stores of the shapes (tilezero raised SIGILL) */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

__attribute__((target("amx-tile"))) static void amx_end(void) { _tile_release(); }
#else
static int amx_hw(void) { return 0; }
#endif

int bitnet_gemm_amx(void) {
    int s = __atomic_load_n(&amx_state, __ATOMIC_RELAXED);
    if (s < 0) {
        const char *e = getenv("BITNET_AMX");
        s = (e && e[0] == '0' && e[1] == 0) ? 0 : amx_hw();
        __atomic_store_n(&amx_state, s, __ATOMIC_RELAXED);
    }
    return s;
}

int bitnet_set_gemm_amx(int on) {
    const int s = on ? amx_hw() : 0;
    __atomic_store_n(&amx_state, s, __ATOMIC_RELAXED);
    return s;
}

#if defined(BITNET_AMX_CODE)
/* The packed activations (bitnet_gemm_pack): columns [0, n16), n16 = ncols rounded down to 16, in A-tile order:
 * per 16 columns, block and 64-byte step one 1 KiB tile (16 columns x 64 activations, rows 64 bytes apart), the
 * 16 tiles of a block and the blocks of a 16-column group in a row; then the block scales d, column after
 * column. Read in place, every tile row was a separate line a column's stride (2.6-7 KiB) away. With the copy,
 * and chunks of columns whose copy fits in L2 (gemm_amx), bench_gemv's AMX GEMM ran 11-37% faster (1-2 threads,
 * 2560 and 6912 deep). */
static size_t amx_pack_qbytes(int64_t nb, int64_t n16) { return (size_t)(n16 / 16) * (size_t)nb * 4096; }
static amx_acts amx_acts_of(const void *pk, int64_t nb, int64_t ncols) {
    const int8_t *q = (const int8_t *)pk;
    const amx_acts in = {q, q ? (const float *)(q + amx_pack_qbytes(nb, ncols / 16 * 16)) : NULL, nb};
    return in;
}

/* The GEMM with AMX: per chunk of columns, pair of row groups and pass of BITNET_AMX_KB blocks, unpack the
 * weights (signed) once and run the chunk's whole column tiles in AMX; the rest (ncols % 16, last chunk) through
 * the vpdpbusd micro-kernels on the codes (unpacked again, unsigned; one group at a time when the tile table has
 * gemm_row_groups 1). */
static void gemm_amx(const bitnet_weights *w, const bitnet_act_block *x, const void *pk, int64_t ncols,
                     int64_t x_stride, float *y, int64_t y_stride, int64_t r0, int64_t r1) {
    gemm_args a = {w, x, x_stride, y_stride, y, bitnet__ys_alloc(2, ncols), 0, 0, 2 * BITNET_GROUP_ROWS};
    const int64_t nb = w->k / BITNET_QK, g1 = bitnet__groups(r1);
    /* columns per chunk: with packed activations and the scratch, the most (a power of two up to 512) whose
     * packed activations fit in 1 MiB, so they stay in L2 while the row groups of the call run over them
     * (bench_gemv AMX GEMM, 1-2 threads: 2560 deep 256 > 512, 128; 6912 deep 128 > 256 > 64 > 512) */
    int64_t chunk = a.ys ? BITNET_YS_COLS : ncols;
    if (a.ys && pk)
        while (chunk > 32 && chunk * w->k > (1 << 20)) chunk /= 2;
    const size_t tb = bitnet__tile_bytes(w->layout);
    _Alignas(64) uint8_t planes[BITNET_AMX_KB * 2 * 4096];
    const amx_acts in = amx_acts_of(pk, nb, ncols);
    amx_begin();
    for (int64_t cc0 = 0; cc0 < ncols; cc0 += chunk) {
        const int64_t cc1 = ncols - cc0 < chunk ? ncols : cc0 + chunk;
        const int64_t n16 = cc0 + (cc1 - cc0) / 16 * 16; /* AMX: [cc0, n16); vpdpbusd: [n16, cc1) */
        a.ys_c0 = cc0;
        for (int64_t g = r0 / BITNET_GROUP_ROWS; g < g1; g += 2) {
            const int rg = g + 2 <= g1 ? 2 : 1;
            const uint16_t *scales[2];
            for (int j = 0; j < rg; j++) scales[j] = bitnet__scales(w, g + j);
            a.ys_g0 = g;
            for (int64_t b0 = 0; b0 < nb; b0 += BITNET_AMX_KB) {
                const int nbk = nb - b0 < BITNET_AMX_KB ? (int)(nb - b0) : BITNET_AMX_KB;
                if (n16 > cc0) {
                    /* the next pass's tiles; after the last pass, the next pair's first ones */
                    const uint8_t *next[2];
                    for (int j = 0; j < rg; j++)
                        next[j] = b0 + BITNET_AMX_KB < nb ? bitnet__codes(w, g + j) + (size_t)(b0 + BITNET_AMX_KB) * tb
                                                          : bitnet__codes(w, g + j + rg);
                    for (int bb = 0; bb < nbk; bb++)
                        for (int j = 0; j < rg; j++)
                            unpack_tile_as(w->layout, bitnet__codes(w, g + j) + (size_t)(b0 + bb) * tb,
                                           planes + 8192 * bb + 4096 * j, 1);
                    amx_columns(&a, planes, scales, g, rg, b0, nbk, cc0, n16, &in, next, BITNET_AMX_KB * tb);
                }
                if (n16 == cc1) continue;
                for (int bb = 0; bb < nbk; bb++) {
                    for (int j = 0; j < rg; j++)
                        unpack_tile(w->layout, bitnet__codes(w, g + j) + (size_t)(b0 + bb) * tb, planes + 4096 * j);
                    for (int64_t c0 = n16; c0 < cc1; c0 += BITNET_GEMM_COLS) {
                        const int64_t nc = cc1 - c0 < BITNET_GEMM_COLS ? cc1 - c0 : BITNET_GEMM_COLS;
                        if (rg <= BITNET_GEMM_RG) {
                            micro_table[rg - 1][nc - 1](&a, planes, scales, g, b0 + bb, c0);
                        } else {
                            micro_table[0][nc - 1](&a, planes, scales, g, b0 + bb, c0);
                            micro_table[0][nc - 1](&a, planes + 4096, scales + 1, g + 1, b0 + bb, c0);
                        }
                    }
                }
            }
        }
    }
    amx_end();
    free(a.ys);
}
#endif

size_t bitnet_gemm_pack_size(int64_t k, int64_t ncols) {
#if defined(BITNET_AMX_CODE)
    if (k <= 0 || k % BITNET_QK || ncols < 16 || !bitnet_gemm_amx()) return 0;
    const int64_t nb = k / BITNET_QK, n16 = ncols / 16 * 16;
    return (amx_pack_qbytes(nb, n16) + (size_t)(n16 * nb) * sizeof(float) + 63) / 64 * 64;
#else
    (void)k, (void)ncols;
    return 0;
#endif
}

int bitnet_gemm_pack(const bitnet_act_block *x, int64_t k, int64_t ncols, int64_t x_stride, int64_t c0, int64_t c1,
                     void *pk) {
    if (bitnet__pack_check(x, k, ncols, x_stride, c0, c1, pk) != BITNET_OK) return BITNET_EINVAL;
#if defined(BITNET_AMX_CODE)
    const int64_t nb = k / BITNET_QK, n16 = ncols / 16 * 16;
    int8_t *q = (int8_t *)pk;
    float *dx = (float *)(q + amx_pack_qbytes(nb, n16));
    for (int64_t c = c0; c < c1 && c < n16; c++) {
        const bitnet_act_block *xb = x + c * x_stride;
        int8_t *dst = q + (size_t)(c / 16) * (size_t)nb * 4096 + (size_t)(c % 16) * 64;
        for (int64_t b = 0; b < nb; b++) {
            dx[c * nb + b] = xb[b].d;
            for (int st = 0; st < 4; st++) memcpy(dst + (size_t)b * 4096 + 1024 * st, xb[b].qs + 64 * st, 64);
        }
    }
#endif
    return BITNET_OK;
}

int bitnet_gemm(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride, float *y,
                int64_t y_stride, int64_t r0, int64_t r1) {
    return bitnet_gemm_packed(w, x, NULL, ncols, x_stride, y, y_stride, r0, r1);
}

int bitnet_gemm_packed(const bitnet_weights *w, const bitnet_act_block *x, const void *pk, int64_t ncols,
                       int64_t x_stride, float *y, int64_t y_stride, int64_t r0, int64_t r1) {
    const int rc = bitnet__check(w, x, ncols, x_stride, y, y_stride, r0, r1);
    if (rc != BITNET_OK) return rc;
#if defined(BITNET_AMX_CODE)
    if (ncols >= 16 && bitnet_gemm_amx()) {
        gemm_amx(w, x, pk, ncols, x_stride, y, y_stride, r0, r1);
        return BITNET_OK;
    }
#else
    (void)pk;
#endif
    gemm_args a = {w, x, x_stride, y_stride, y, bitnet__ys_alloc(BITNET_GEMM_RG, ncols), 0, 0,
                   BITNET_GEMM_RG * BITNET_GROUP_ROWS};
    const int64_t nb = w->k / BITNET_QK, g1 = bitnet__groups(r1);
    const int64_t chunk = bitnet__l2_cols(nb, a.ys ? BITNET_YS_COLS : ncols); /* see internal.h */
    const size_t tb = bitnet__tile_bytes(w->layout);
    _Alignas(64) uint8_t planes[BITNET_GEMM_RG * 4096];

    for (int64_t cc0 = 0; cc0 < ncols; cc0 += chunk) {
        const int64_t cc1 = ncols - cc0 < chunk ? ncols : cc0 + chunk;
        a.ys_c0 = cc0;
        for (int64_t g = r0 / BITNET_GROUP_ROWS; g < g1; g += BITNET_GEMM_RG) {
            const int rg = g + BITNET_GEMM_RG <= g1 ? BITNET_GEMM_RG : (int)(g1 - g);
            const uint16_t *scales[BITNET_GEMM_RG];
            for (int j = 0; j < rg; j++) scales[j] = bitnet__scales(w, g + j);
            a.ys_g0 = g;
            for (int64_t b = 0; b < nb; b++) {
                for (int j = 0; j < rg; j++)
                    unpack_tile(w->layout, bitnet__codes(w, g + j) + (size_t)b * tb, planes + 4096 * j);
                /* block b + 1's tiles; after the last block, the next pair's block 0 */
                for (int j = 0; j < rg; j++)
                    bitnet__prefetch_part(b + 1 < nb ? bitnet__codes(w, g + j) + (size_t)(b + 1) * tb
                                                     : bitnet__codes(w, g + j + rg),
                                          tb, 0, 1);
                for (int64_t c0 = cc0; c0 < cc1; c0 += BITNET_GEMM_COLS) {
                    const int64_t nc = cc1 - c0 < BITNET_GEMM_COLS ? cc1 - c0 : BITNET_GEMM_COLS;
                    micro_table[rg - 1][nc - 1](&a, planes, scales, g, b, c0);
                }
            }
        }
    }
    free(a.ys);
    return BITNET_OK;
}

#else
typedef int bitnet_avx512vnni_unused; /* ISO C: no empty translation unit */
#endif
