/*
 * f16.c - GEMV of an fp16 or bf16 matrix with an f32 vector: the tied embedding / output head of BitNet
 * models (128256 x 2560 fp16 in 2B4T = 657 MB, more than half of the bytes one decoded token reads).
 * bf16 (the released 2B4T embedding's own type, stored bit for bit) runs the same code with the exact
 * bf16 -> f32 widening (a 16-bit shift) in place of vcvtph2ps.
 *
 * Stock ggml rounds the activation to fp16 first; here it stays f32. One row at a time with 64 lanes of
 * accumulators: on the 2-core Zen 4 VM four interleaved row streams ran ~30% slower than one, and
 * the fp16 -> f32 conversion (vcvtph2ps) rather than DRAM is the limit there (36 GB/s of fp16 with two
 * threads, converting only, vs 55 GB/s of plain reads).
 *
 * Numerics, identical in every ISA (explicit fused multiply-add, one rounding, in every build):
 *   64 lanes j = 0..63:  s_j = 0; for k = j, j+64, ... (in order): s_j = fma(f32(w[k]), x[k], s_j)
 *   t_j = (s_j + s_{j+16}) + (s_{j+32} + s_{j+48})  (j < 16),  u_j = t_j + t_{j+8}  (j < 8),
 *   v_j = u_j + u_{j+4}  (j < 4),  z_j = v_j + v_{j+2}  (j < 2),  y = z_0 + z_1.
 * fp16 -> f32 is exact everywhere (vcvtph2ps, fcvtl, bitnet__fp16_to_fp32), bf16 -> f32 too (shift).
 * bitnet_gemm_f16/_bf16 (several columns: batched decode, all-logits runs) give every column exactly these
 * operations in this order (only the loop nest differs), so each column is bitwise its one-column GEMV.
 * k: a multiple of 64. Not AVX-512 BF16's vdpbf16ps: it rounds the activation to bf16, a different
 * function from the model's f32 head (and the GEMV is bound by memory, not by the conversion).
 */
#include <math.h>

#include "internal.h"

int bitnet_gemv_f16_native(void) {
#if defined(BITNET_ISA_AVX512VNNI) || defined(BITNET_ISA_AVX2) || defined(BITNET_ISA_NEON)
    return 1;
#else
    return 0;
#endif
}

static int check_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, const float *y, int64_t r0,
                     int64_t r1) {
    if (!w || !x || !y || k <= 0 || k % 64 || ldw < k || r0 < 0 || r1 < r0) return BITNET_EINVAL;
    return BITNET_OK;
}

static int check_f16_gemm(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                          const float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const int rc = check_f16(w, k, ldw, x, y, r0, r1);
    if (rc != BITNET_OK) return rc;
    if (ncols < 1 || (ncols > 1 && (ldx < k || ldy < r1))) return BITNET_EINVAL;
    return BITNET_OK;
}

static inline float bf16_to_fp32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float ref_row(const uint16_t *w, int64_t k, const float *x, int bf16) {
    float s[64] = {0}, t[16];
    for (int64_t i = 0; i < k; i += 64)
        for (int j = 0; j < 64; j++)
            s[j] = fmaf(bf16 ? bf16_to_fp32(w[i + j]) : bitnet__fp16_to_fp32(w[i + j]), x[i + j], s[j]);
    for (int j = 0; j < 16; j++) t[j] = (s[j] + s[j + 16]) + (s[j + 32] + s[j + 48]);
    for (int j = 0; j < 8; j++) t[j] = t[j] + t[j + 8];
    for (int j = 0; j < 4; j++) t[j] = t[j] + t[j + 4];
    for (int j = 0; j < 2; j++) t[j] = t[j] + t[j + 2];
    return t[0] + t[1];
}

int bitnet_ref_gemv_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                        int64_t r1) {
    const int rc = check_f16(w, k, ldw, x, y, r0, r1);
    if (rc != BITNET_OK) return rc;
    for (int64_t r = r0; r < r1; r++) y[r] = ref_row(w + r * ldw, k, x, 0);
    return BITNET_OK;
}

int bitnet_ref_gemv_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                         int64_t r1) {
    const int rc = check_f16(w, k, ldw, x, y, r0, r1);
    if (rc != BITNET_OK) return rc;
    for (int64_t r = r0; r < r1; r++) y[r] = ref_row(w + r * ldw, k, x, 1);
    return BITNET_OK;
}

/* The reference GEMM: the reference GEMV of each column. */
static int ref_gemm(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols, float *y,
                    int64_t ldy, int64_t r0, int64_t r1, int bf16) {
    const int rc = check_f16_gemm(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1);
    if (rc != BITNET_OK) return rc;
    for (int64_t c = 0; c < ncols; c++)
        for (int64_t r = r0; r < r1; r++) y[c * ldy + r] = ref_row(w + r * ldw, k, x + c * ldx, bf16);
    return BITNET_OK;
}

int bitnet_ref_gemm_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                        float *y, int64_t ldy, int64_t r0, int64_t r1) {
    return ref_gemm(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1, 0);
}

int bitnet_ref_gemm_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                         float *y, int64_t ldy, int64_t r0, int64_t r1) {
    return ref_gemm(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1, 1);
}

/* GEMM tiling, the same in every vectorized ISA (only the loop order differs from the GEMV; every lane's
 * fma sequence and the reduction tree are the GEMV's, so every column is bitwise the GEMV of it):
 *  - columns in tiles of NC <= GEMM_NC = 4: each weight is converted once per tile and fma'd into the
 *    NC columns' accumulators;
 *  - the 64 lanes are 8 independent groups of 8 (lanes 8m .. 8m+7: weights w[i + 8m .. i + 8m + 7] of
 *    every 64-chunk i); a tile takes them in passes of LG groups (NC * LG = 8 accumulating groups in
 *    registers: 8 ymm / 16 q), pass p the groups p, p + 8/LG, ... (both cache lines of every 128-byte
 *    chunk of the row, so the first pass brings the whole segment in);
 *  - k in blocks of GEMM_KB = 512 (a tile's activations for a block, 8 KB, stay in L1; the 64 lane sums
 *    per row and column are kept in memory between blocks, in order), over sub-blocks of GEMM_SB = 8
 *    rows: one k-block of the 8 rows, then the next k-block;
 *  - rows in blocks of GEMM_RB = 16 (the engine's chunk unit) for all column tiles in turn, so a block's
 *    weights (L2) are read from memory once however many columns there are.
 * Then each column's 64 sums go through the GEMV's reduction tree. */
#define GEMM_NC 4
#define GEMM_RB 16
#define GEMM_KB 512
#define GEMM_SB 8
BITNET_INLINE int gemm_lg(int nc) { return nc == 1 ? 8 : nc == 2 ? 4 : 2; }
/* The row segments a sub-block of GEMM_SB rows reads go k-block by k-block (8 interleaved streams, which
 * the hardware prefetchers follow poorly): each segment asks for the row's next one (the next sub-block's
 * first ones at the end of a row), one k-block sweep ahead. Prefetches change no result. */
BITNET_INLINE void gemm_prefetch(const uint16_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i += 32) __builtin_prefetch(p + i, 0, 2);
}

#if defined(BITNET_ISA_AVX512VNNI) || defined(BITNET_ISA_AVX2)
/* The AVX-512 build uses this 256-bit code as well: on Zen 4 the zmm vcvtph2ps limits a 2-thread head
 * GEMV to 38 GB/s of fp16, the ymm one reaches the read bandwidth (55 GB/s, same run). */
#include <immintrin.h>

BITNET_INLINE __m256 mac8(__m256 acc, const uint16_t *w, const float *x, int bf16) {
    const __m128i h = _mm_loadu_si128((const __m128i *)w);
    const __m256 wf = bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
    return _mm256_fmadd_ps(wf, _mm256_loadu_ps(x), acc);
}

/* the GEMV's reduction tree of the 64 lane sums a[m] (lanes 8m .. 8m+7) */
BITNET_INLINE float reduce64(const __m256 *a) {
    /* t lanes 0-7 and 8-15 */
    const __m256 tlo = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[4], a[6]));
    const __m256 thi = _mm256_add_ps(_mm256_add_ps(a[1], a[3]), _mm256_add_ps(a[5], a[7]));
    const __m256 u = _mm256_add_ps(tlo, thi);
    const __m128 v = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
    const __m128 z = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(z, _mm_shuffle_ps(z, z, 1)));
}

/* Where the ISA prefetches its weights (tuning.json prefetch_bytes > 0), the head's rows are asked into L2
 * HEAD_PREFETCH bytes ahead, 128 bytes a step (rows follow each other in memory). Measured on a Sapphire
 * Rapids VM (bench_head --cols 1 --rows 128256, 2 threads, GB/s of fp16): avx2 19.7-20.5 with the earlier
 * prefetch into L1 1 KiB ahead, 22.4-23.8 with this; avx512 (two-row loop, no prefetch before) 21.9-22.2 ->
 * 24.7-25.4. Into L1 2 KiB ahead was no better than 1 KiB. */
#define HEAD_PREFETCH 3072
BITNET_INLINE void head_prefetch(const uint16_t *w) {
    if (BITNET_PREFETCH)
        for (int o = 0; o < 128; o += 64) _mm_prefetch((const char *)w + HEAD_PREFETCH + o, _MM_HINT_T1);
}

BITNET_INLINE float gemv_row(const uint16_t *wr, int64_t k, const float *x, int bf16) {
    __m256 a[8]; /* a[m]: lanes 8m .. 8m+7 */
    for (int m = 0; m < 8; m++) a[m] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 64) {
        head_prefetch(wr + i);
        for (int m = 0; m < 8; m++) a[m] = mac8(a[m], wr + i + 8 * m, x + i + 8 * m, bf16);
    }
    return reduce64(a);
}

BITNET_INLINE void gemv_rows(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                             int64_t r1, int bf16) {
#if defined(BITNET_ISA_AVX512VNNI)
    /* Two rows at once, from the two halves of the range: two sequential streams per thread (32 registers hold
     * both rows' 8 accumulators). Each row's sums are the one-row code's, in the same order. */
    const int64_t n = r1 - r0, half = n / 2;
    for (int64_t i = 0; i < n - half; i++) {
        const int64_t ra = r0 + i, rb = r0 + half + i + n % 2; /* odd count: the middle row alone */
        if (i >= half) {
            y[ra] = gemv_row(w + ra * ldw, k, x, bf16);
            continue;
        }
        const uint16_t *wa = w + ra * ldw, *wb = w + rb * ldw;
        __m256 a[8], b[8];
        for (int m = 0; m < 8; m++) a[m] = b[m] = _mm256_setzero_ps();
        for (int64_t j = 0; j < k; j += 64) {
            head_prefetch(wa + j);
            head_prefetch(wb + j);
            for (int m = 0; m < 8; m++) {
                a[m] = mac8(a[m], wa + j + 8 * m, x + j + 8 * m, bf16);
                b[m] = mac8(b[m], wb + j + 8 * m, x + j + 8 * m, bf16);
            }
        }
        y[ra] = reduce64(a);
        y[rb] = reduce64(b);
    }
#else
    for (int64_t r = r0; r < r1; r++) y[r] = gemv_row(w + r * ldw, k, x, bf16);
#endif
}

BITNET_INLINE __m256 cvt8(const uint16_t *w, int bf16) {
    const __m128i h = _mm_loadu_si128((const __m128i *)w);
    return bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

/* NC columns x the rows [r0, r1) (see GEMM tiling above) */
BITNET_INLINE void gemm_tile(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, float *y,
                             int64_t ldy, int64_t r0, int64_t r1, int bf16, const int nc) {
    const int lg = gemm_lg(nc), np = 8 / lg;
    for (int64_t b0 = r0; b0 < r1; b0 += GEMM_SB) {
        const int nr = r1 - b0 > GEMM_SB ? GEMM_SB : (int)(r1 - b0);
        __m256 s[GEMM_SB][GEMM_NC][8];
        for (int rr = 0; rr < nr; rr++)
            for (int c = 0; c < nc; c++)
                for (int m = 0; m < 8; m++) s[rr][c][m] = _mm256_setzero_ps();
        for (int64_t i0 = 0; i0 < k; i0 += GEMM_KB) {
            const int64_t i1 = k - i0 > GEMM_KB ? i0 + GEMM_KB : k;
            for (int rr = 0; rr < nr; rr++) {
                const uint16_t *wr = w + (b0 + rr) * ldw;
                if (i1 < k) gemm_prefetch(wr + i1, k - i1 < GEMM_KB ? k - i1 : GEMM_KB);
                else if (b0 + GEMM_SB + rr < r1) gemm_prefetch(wr + GEMM_SB * ldw, k < GEMM_KB ? k : GEMM_KB);
                for (int p = 0; p < np; p++) {
                    __m256 a[GEMM_NC][8];
                    for (int c = 0; c < nc; c++)
                        for (int g = 0; g < lg; g++) a[c][g] = s[rr][c][p + np * g];
                    for (int64_t i = i0; i < i1; i += 64)
                        for (int g = 0; g < lg; g++) {
                            const int64_t o = i + 8 * (p + np * g);
                            const __m256 wf = cvt8(wr + o, bf16);
                            for (int c = 0; c < nc; c++)
                                a[c][g] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + c * ldx + o), a[c][g]);
                        }
                    for (int c = 0; c < nc; c++)
                        for (int g = 0; g < lg; g++) s[rr][c][p + np * g] = a[c][g];
                }
            }
        }
        for (int rr = 0; rr < nr; rr++)
            for (int c = 0; c < nc; c++) y[c * ldy + b0 + rr] = reduce64(s[rr][c]);
    }
}

#elif defined(BITNET_ISA_NEON)
#include <arm_neon.h>

/* lanes 0-3 and 4-7 of 8 fp16/bf16 weights */
BITNET_INLINE void cvt8(const uint16_t *w, int bf16, float32x4_t *lo, float32x4_t *hi) {
    const uint16x8_t h = vld1q_u16(w);
    if (bf16) {
        *lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        *hi = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(h), 16));
    } else {
        const float16x8_t hf = vreinterpretq_f16_u16(h);
        *lo = vcvt_f32_f16(vget_low_f16(hf));
        *hi = vcvt_high_f32_f16(hf);
    }
}

/* the GEMV's reduction tree of the 64 lane sums a[m] (lanes 4m .. 4m+3) */
BITNET_INLINE float reduce64(const float32x4_t *a) {
    float32x4_t t[4]; /* t lanes 4q .. 4q+3 */
    for (int q = 0; q < 4; q++) t[q] = vaddq_f32(vaddq_f32(a[q], a[q + 4]), vaddq_f32(a[q + 8], a[q + 12]));
    const float32x4_t u0 = vaddq_f32(t[0], t[2]), u1 = vaddq_f32(t[1], t[3]); /* u lanes 0-3, 4-7 */
    const float32x4_t v = vaddq_f32(u0, u1);
    const float32x2_t z = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(z, 0) + vget_lane_f32(z, 1);
}

BITNET_INLINE void gemv_rows(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                             int64_t r1, int bf16) {
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *wr = w + r * ldw;
        float32x4_t a[16]; /* a[m]: lanes 4m .. 4m+3 */
        for (int m = 0; m < 16; m++) a[m] = vdupq_n_f32(0);
        for (int64_t i = 0; i < k; i += 64)
            for (int m = 0; m < 16; m += 2) {
                float32x4_t lo, hi;
                cvt8(wr + i + 4 * m, bf16, &lo, &hi);
                a[m] = vfmaq_f32(a[m], lo, vld1q_f32(x + i + 4 * m));
                a[m + 1] = vfmaq_f32(a[m + 1], hi, vld1q_f32(x + i + 4 * m + 4));
            }
        y[r] = reduce64(a);
    }
}

/* NC columns x the rows [r0, r1) (see GEMM tiling above); group g of 8 lanes is a[2g], a[2g + 1] */
BITNET_INLINE void gemm_tile(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, float *y,
                             int64_t ldy, int64_t r0, int64_t r1, int bf16, const int nc) {
    const int lg = gemm_lg(nc), np = 8 / lg;
    for (int64_t b0 = r0; b0 < r1; b0 += GEMM_SB) {
        const int nr = r1 - b0 > GEMM_SB ? GEMM_SB : (int)(r1 - b0);
        float32x4_t s[GEMM_SB][GEMM_NC][16];
        for (int rr = 0; rr < nr; rr++)
            for (int c = 0; c < nc; c++)
                for (int m = 0; m < 16; m++) s[rr][c][m] = vdupq_n_f32(0);
        for (int64_t i0 = 0; i0 < k; i0 += GEMM_KB) {
            const int64_t i1 = k - i0 > GEMM_KB ? i0 + GEMM_KB : k;
            for (int rr = 0; rr < nr; rr++) {
                const uint16_t *wr = w + (b0 + rr) * ldw;
                if (i1 < k) gemm_prefetch(wr + i1, k - i1 < GEMM_KB ? k - i1 : GEMM_KB);
                else if (b0 + GEMM_SB + rr < r1) gemm_prefetch(wr + GEMM_SB * ldw, k < GEMM_KB ? k : GEMM_KB);
                for (int p = 0; p < np; p++) {
                    float32x4_t a[GEMM_NC][16];
                    for (int c = 0; c < nc; c++)
                        for (int g = 0; g < lg; g++) {
                            a[c][2 * g] = s[rr][c][2 * (p + np * g)];
                            a[c][2 * g + 1] = s[rr][c][2 * (p + np * g) + 1];
                        }
                    for (int64_t i = i0; i < i1; i += 64)
                        for (int g = 0; g < lg; g++) {
                            const int64_t o = i + 8 * (p + np * g);
                            float32x4_t lo, hi;
                            cvt8(wr + o, bf16, &lo, &hi);
                            for (int c = 0; c < nc; c++) {
                                a[c][2 * g] = vfmaq_f32(a[c][2 * g], lo, vld1q_f32(x + c * ldx + o));
                                a[c][2 * g + 1] = vfmaq_f32(a[c][2 * g + 1], hi, vld1q_f32(x + c * ldx + o + 4));
                            }
                        }
                    for (int c = 0; c < nc; c++)
                        for (int g = 0; g < lg; g++) {
                            s[rr][c][2 * (p + np * g)] = a[c][2 * g];
                            s[rr][c][2 * (p + np * g) + 1] = a[c][2 * g + 1];
                        }
                }
            }
        }
        for (int rr = 0; rr < nr; rr++)
            for (int c = 0; c < nc; c++) y[c * ldy + b0 + rr] = reduce64(s[rr][c]);
    }
}

#endif

#if defined(BITNET_ISA_AVX512VNNI) || defined(BITNET_ISA_AVX2) || defined(BITNET_ISA_NEON)
int bitnet_gemv_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0, int64_t r1) {
    const int rc = check_f16(w, k, ldw, x, y, r0, r1);
    if (rc != BITNET_OK) return rc;
    gemv_rows(w, k, ldw, x, y, r0, r1, 0);
    return BITNET_OK;
}

int bitnet_gemv_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                     int64_t r1) {
    const int rc = check_f16(w, k, ldw, x, y, r0, r1);
    if (rc != BITNET_OK) return rc;
    gemv_rows(w, k, ldw, x, y, r0, r1, 1);
    return BITNET_OK;
}

/* column tiles of GEMM_NC (the last one 1..GEMM_NC) over row blocks of GEMM_RB */
BITNET_INLINE void gemm_rows(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                             float *y, int64_t ldy, int64_t r0, int64_t r1, int bf16) {
    for (int64_t b0 = r0; b0 < r1; b0 += GEMM_RB) {
        const int64_t b1 = r1 - b0 > GEMM_RB ? b0 + GEMM_RB : r1;
        for (int64_t c0 = 0; c0 < ncols; c0 += GEMM_NC) {
            const float *xc = x + c0 * ldx;
            float *yc = y + c0 * ldy;
            switch (ncols - c0 >= GEMM_NC ? GEMM_NC : (int)(ncols - c0)) {
            case 1: gemm_tile(w, k, ldw, xc, ldx, yc, ldy, b0, b1, bf16, 1); break;
            case 2: gemm_tile(w, k, ldw, xc, ldx, yc, ldy, b0, b1, bf16, 2); break;
            case 3: gemm_tile(w, k, ldw, xc, ldx, yc, ldy, b0, b1, bf16, 3); break;
            default: gemm_tile(w, k, ldw, xc, ldx, yc, ldy, b0, b1, bf16, 4); break;
            }
        }
    }
}

static void gemm_rows_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                          float *y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_rows(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1, 0);
}

static void gemm_rows_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                           float *y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_rows(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1, 1);
}

int bitnet_gemm_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols, float *y,
                    int64_t ldy, int64_t r0, int64_t r1) {
    const int rc = check_f16_gemm(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1);
    if (rc != BITNET_OK) return rc;
    gemm_rows_f16(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1);
    return BITNET_OK;
}

int bitnet_gemm_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                     float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const int rc = check_f16_gemm(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1);
    if (rc != BITNET_OK) return rc;
    gemm_rows_bf16(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1);
    return BITNET_OK;
}
#else
int bitnet_gemv_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0, int64_t r1) {
    return bitnet_ref_gemv_f16(w, k, ldw, x, y, r0, r1);
}

int bitnet_gemv_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                     int64_t r1) {
    return bitnet_ref_gemv_bf16(w, k, ldw, x, y, r0, r1);
}

int bitnet_gemm_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols, float *y,
                    int64_t ldy, int64_t r0, int64_t r1) {
    return bitnet_ref_gemm_f16(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1);
}

int bitnet_gemm_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                     float *y, int64_t ldy, int64_t r0, int64_t r1) {
    return bitnet_ref_gemm_bf16(w, k, ldw, x, ldx, ncols, y, ldy, r0, r1);
}
#endif
