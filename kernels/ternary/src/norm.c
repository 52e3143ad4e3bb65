/*
 * norm.c - the float ops around a BitNet matmul that the engine fuses with it (kernels/ternary/ggml/
 * ternary-fuse.cpp): ggml's RMS_NORM (+ MUL by the norm weight), the per-tensor weight scale, the
 * residual ADD and the relu^2 gate (RELU, SQR, MUL). Each one computes exactly what ggml's own op
 * computes, bit for bit, so a fused graph gives the same floats as the unfused one (tests/test_main.c
 * group fused, tests/ops/test_bitnet_ops.cpp --fused).
 *
 * RMS_NORM is the only one with an order to keep: ggml sums the squares of a row in double, one element
 * after the other (ggml-cpu/ops.cpp ggml_compute_forward_rms_norm_f32):
 *     sum = 0.0; for i: sum += (double)(x[i] * x[i])        (the square rounded to float first)
 *     mean = (float)(sum / k); scale = 1.0f / sqrtf(mean + eps); y[i] = x[i] * scale * w[i]
 * That chain of dependent double adds runs at one element per add latency (~2.8 us for 2560). Here SIMD
 * lanes are ROWS, not elements: lane j adds row j's squares in the same order, so every row gets the
 * same sum, 8 rows at a time (8x8 float transposes feed the lanes). One row (decode) stays scalar.
 * Built with -ffp-contract=off: no multiply is fused with an add anywhere in this file.
 */
#include <math.h>

#include "internal.h"

static void norm_row_finish(const float *x, int64_t k, const float *w, float eps, double sum, float *y) {
    const float mean = (float)(sum / (double)k);
    const float scale = 1.0f / sqrtf(mean + eps);
    if (w) {
        for (int64_t i = 0; i < k; i++) y[i] = x[i] * scale * w[i];
    } else {
        for (int64_t i = 0; i < k; i++) y[i] = x[i] * scale;
    }
}

static double sumsq_row(const float *x, int64_t k) {
    double sum = 0.0;
    for (int64_t i = 0; i < k; i++) sum += (double)(x[i] * x[i]);
    return sum;
}

void bitnet_ref_sumsq_rows(const float *x, int64_t ldx, int64_t k, int64_t rows, double *sums) {
    for (int64_t r = 0; r < rows; r++) sums[r] = sumsq_row(x + r * ldx, k);
}

void bitnet_ref_rms_norm(const float *x, int64_t ldx, int64_t k, int64_t rows, const float *w, float eps, float *y,
                         int64_t ldy) {
    for (int64_t r = 0; r < rows; r++) norm_row_finish(x + r * ldx, k, w, eps, sumsq_row(x + r * ldx, k), y + r * ldy);
}

#if defined(BITNET_ISA_AVX512VNNI) || defined(BITNET_ISA_AVX2)
#include <immintrin.h>

/* Squares of 8 consecutive floats of 8 rows -> c[j] = (row 0 .. row 7) squares at element j. */
BITNET_INLINE void squares_8x8(const float *x, int64_t ldx, int64_t i, __m256 c[8]) {
    __m256 r[8], t[8], u[8];
    for (int j = 0; j < 8; j++) {
        const __m256 v = _mm256_loadu_ps(x + j * ldx + i);
        r[j] = _mm256_mul_ps(v, v);
    }
    for (int j = 0; j < 8; j += 2) {
        t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int h = 0; h < 8; h += 4) {
        u[h + 0] = _mm256_shuffle_ps(t[h + 0], t[h + 2], 0x44);
        u[h + 1] = _mm256_shuffle_ps(t[h + 0], t[h + 2], 0xEE);
        u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
        u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        c[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
        c[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
    }
}

/* Sums of squares of 16 rows (two groups of 8, interleaved so their add chains overlap), k % 8 == 0. */
static void sumsq_16rows(const float *x, int64_t ldx, int64_t k, double out[16]) {
    __m256d s[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    for (int64_t i = 0; i < k; i += 8) {
        __m256 a[8], b[8];
        squares_8x8(x, ldx, i, a);
        squares_8x8(x + 8 * ldx, ldx, i, b);
        for (int j = 0; j < 8; j++) { /* element i + j, in order */
            s[0] = _mm256_add_pd(s[0], _mm256_cvtps_pd(_mm256_castps256_ps128(a[j])));
            s[1] = _mm256_add_pd(s[1], _mm256_cvtps_pd(_mm256_extractf128_ps(a[j], 1)));
            s[2] = _mm256_add_pd(s[2], _mm256_cvtps_pd(_mm256_castps256_ps128(b[j])));
            s[3] = _mm256_add_pd(s[3], _mm256_cvtps_pd(_mm256_extractf128_ps(b[j], 1)));
        }
    }
    for (int q = 0; q < 4; q++) _mm256_storeu_pd(out + 4 * q, s[q]);
}

static void sumsq_8rows(const float *x, int64_t ldx, int64_t k, double out[8]) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (int64_t i = 0; i < k; i += 8) {
        __m256 a[8];
        squares_8x8(x, ldx, i, a);
        for (int j = 0; j < 8; j++) {
            s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(a[j])));
            s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(a[j], 1)));
        }
    }
    _mm256_storeu_pd(out, s0);
    _mm256_storeu_pd(out + 4, s1);
}

static void finish_simd(const float *x, int64_t k, const float *w, float eps, double sum, float *y) {
    const float mean = (float)(sum / (double)k);
    const __m256 scale = _mm256_set1_ps(1.0f / sqrtf(mean + eps));
    for (int64_t i = 0; i < k; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), scale);
        _mm256_storeu_ps(y + i, w ? _mm256_mul_ps(v, _mm256_loadu_ps(w + i)) : v);
    }
}

void bitnet_sumsq_rows(const float *x, int64_t ldx, int64_t k, int64_t rows, double *sums) {
    int64_t r = 0;
    if (k % 8 == 0) {
        for (; r + 16 <= rows; r += 16) sumsq_16rows(x + r * ldx, ldx, k, sums + r);
        for (; r + 8 <= rows; r += 8) sumsq_8rows(x + r * ldx, ldx, k, sums + r);
    }
    for (; r < rows; r++) sums[r] = sumsq_row(x + r * ldx, k);
}

void bitnet_rms_norm(const float *x, int64_t ldx, int64_t k, int64_t rows, const float *w, float eps, float *y,
                     int64_t ldy) {
    if (k % 8) {
        bitnet_ref_rms_norm(x, ldx, k, rows, w, eps, y, ldy);
        return;
    }
    double sums[16];
    for (int64_t r = 0; r < rows; r += 16) {
        const int64_t n = rows - r < 16 ? rows - r : 16;
        bitnet_sumsq_rows(x + r * ldx, ldx, k, n, sums);
        for (int64_t j = 0; j < n; j++) finish_simd(x + (r + j) * ldx, k, w, eps, sums[j], y + (r + j) * ldy);
    }
}
#else
void bitnet_sumsq_rows(const float *x, int64_t ldx, int64_t k, int64_t rows, double *sums) {
    bitnet_ref_sumsq_rows(x, ldx, k, rows, sums);
}

void bitnet_rms_norm(const float *x, int64_t ldx, int64_t k, int64_t rows, const float *w, float eps, float *y,
                     int64_t ldy) {
    bitnet_ref_rms_norm(x, ldx, k, rows, w, eps, y, ldy);
}
#endif

/* ---- epilogues on a block of matmul output: rows [r0, r1) of columns 0 .. ncols-1 ----
 * out is either one of the inputs exactly (in place) or disjoint from them, and element i depends on
 * element i only: the loops vectorize safely in place, which gcc's run-time overlap check would refuse
 * (it found out == a and ran the scalar loop: the residual ADD cost 5x ggml's own in a prefill profile). */
#if defined(__clang__)
#define BITNET_ELEMENTWISE _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define BITNET_ELEMENTWISE _Pragma("GCC ivdep")
#else
#define BITNET_ELEMENTWISE
#endif

void bitnet_scale_rows(float *y, int64_t ldy, int64_t ncols, int64_t r0, int64_t r1, float s) {
    for (int64_t c = 0; c < ncols; c++) {
        float *yc = y + c * ldy;
        BITNET_ELEMENTWISE
        for (int64_t r = r0; r < r1; r++) yc[r] = yc[r] * s;
    }
}

void bitnet_scale_add_rows(float *out, int64_t ldo, const float *y, int64_t ldy, const float *s, const float *b,
                           int64_t ldb, int64_t ncols, int64_t r0, int64_t r1) {
    for (int64_t c = 0; c < ncols; c++) {
        float *oc = out + c * ldo;
        const float *yc = y + c * ldy, *bc = b + c * ldb;
        if (s) {
            const float sv = *s;
            BITNET_ELEMENTWISE
            for (int64_t r = r0; r < r1; r++) oc[r] = yc[r] * sv + bc[r]; /* two roundings: MUL, then ADD */
        } else {
            BITNET_ELEMENTWISE
            for (int64_t r = r0; r < r1; r++) oc[r] = yc[r] + bc[r];
        }
    }
}

/* g and u scaled first when sg / su are given (their MUL nodes), then RELU, SQR, MUL. */
BITNET_INLINE void relu2_mul_col(float *oc, const float *gc, const float *uc, float sg, float su, int scale_g,
                                 int scale_u, int64_t r0, int64_t r1) {
    BITNET_ELEMENTWISE
    for (int64_t r = r0; r < r1; r++) {
        const float g = scale_g ? gc[r] * sg : gc[r], u = scale_u ? uc[r] * su : uc[r];
        /* ggml's op_relu: g > 0 ? g : 0 (-0 and NaN give +0), as a bit mask: written as the conditional, GCC kept
         * a branch per element (no vectorizing, ~50% mispredicted on activations' random signs; 5% of an AVX2
         * prefill) */
        uint32_t bits;
        memcpy(&bits, &g, sizeof bits);
        bits &= 0u - (uint32_t)(g > 0.0f);
        float relu;
        memcpy(&relu, &bits, sizeof relu);
        oc[r] = (relu * relu) * u; /* SQR, then MUL(sqr, up) */
    }
}

void bitnet_relu2_mul_rows(float *out, int64_t ldo, const float *g, int64_t ldg, const float *sg, const float *u,
                           int64_t ldu, const float *su, int64_t ncols, int64_t r0, int64_t r1) {
    const float sgv = sg ? *sg : 1.0f, suv = su ? *su : 1.0f;
    for (int64_t c = 0; c < ncols; c++) {
        float *oc = out + c * ldo;
        const float *gc = g + c * ldg, *uc = u + c * ldu;
        /* four instantiations, so the loop has no per-element branch on the scales */
        if (sg && su) relu2_mul_col(oc, gc, uc, sgv, suv, 1, 1, r0, r1);
        else if (sg) relu2_mul_col(oc, gc, uc, sgv, suv, 1, 0, r0, r1);
        else if (su) relu2_mul_col(oc, gc, uc, sgv, suv, 0, 1, r0, r1);
        else relu2_mul_col(oc, gc, uc, sgv, suv, 0, 0, r0, r1);
    }
}
