/*
 * pack.c - everything that is not a per-ISA kernel: layout sizes, repacking ggml TQ2_0/TQ1_0 rows into
 * our layouts (bitnet_kernels.h holds the definition), activation quantization, row splitting and the
 * GEMV/GEMM dispatcher. Portable C, the same in every ISA build.
 */
#define _DEFAULT_SOURCE /* sysconf's cache sizes */
#include <math.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "internal.h"

/* The bytes of activations one GEMM pass over the row groups reads (internal.h, bitnet__l2_cols). */
int64_t bitnet__act_budget(void) {
#if defined(BITNET_L2_ACT_BYTES)
    return BITNET_L2_ACT_BYTES;
#else
    static int64_t budget; /* computed once; threads racing here store the same value */
    int64_t v = __atomic_load_n(&budget, __ATOMIC_RELAXED);
    if (v == 0) {
        int64_t l2 = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
        l2 = (int64_t)sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        const int64_t b = l2 > 0 ? l2 / 8 : 256 * 1024;
        v = b < 64 * 1024 ? 64 * 1024 : b > 512 * 1024 ? 512 * 1024 : b;
        __atomic_store_n(&budget, v, __ATOMIC_RELAXED);
    }
    return v;
#endif
}

size_t bitnet_weights_size(bitnet_layout layout, int64_t rows, int64_t k) {
    if (rows < 0 || k <= 0 || k % BITNET_QK) return 0;
    if (layout != BITNET_LAYOUT_TK2 && layout != BITNET_LAYOUT_TK1) return 0;
    const size_t tiles = (size_t)bitnet__groups(rows) * (size_t)(k / BITNET_QK);
    return tiles * (bitnet__tile_bytes(layout) + BITNET_GROUP_ROWS * sizeof(uint16_t));
}

/* The 64 TQ2_0 qs bytes holding the same 256 ternary values as a TQ1_0 block (bit order: see header). */
static void tq1_to_tq2_qs(const bitnet_block_tq1_0 *src, uint8_t qs[BITNET_QK / 4]) {
    uint8_t code[BITNET_QK];
    for (int m = 0; m < 32; m++)
        for (int n = 0; n < 5; n++) code[32 * n + m] = (uint8_t)bitnet_trit(src->qs[m], n);
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 5; n++) code[160 + 16 * n + m] = (uint8_t)bitnet_trit(src->qs[32 + m], n);
    for (int j = 0; j < 4; j++)
        for (int n = 0; n < 4; n++) code[240 + 4 * n + j] = (uint8_t)bitnet_trit(src->qh[j], n);
    memset(qs, 0, BITNET_QK / 4);
    for (int k = 0; k < BITNET_QK; k++) {
        const int h = k / 128, l = (k % 128) / 32, m = k % 32;
        qs[32 * h + m] |= (uint8_t)(code[k] << (2 * l));
    }
}

/* The 52 TQ1_0 bytes (qs, then qh) holding the same 256 codes as a TQ2_0 block: ggml's quantize_row_tq1_0_ref
 * packing (bit order: see header), q = ceil(base-3 value * 256 / 243). Codes must be 0..2.
 * Code k of TQ2_0 is bits 2l..2l+1 of qs[32h + m] (k = 128h + 32l + m); TQ1_0 byte m < 32 holds codes
 * 32n + m, byte 32 + j codes 160 + 16n + j (n = 0..4, the first in the top trit), qh[j] codes 240 + 4n + j
 * (n = 0..3). Written as plain byte loops over qs so the compiler vectorizes them (a one-token 2B load without
 * the repack cache, which re-encodes every matrix: 2.2 -> 0.7 s; with a code array and nested loops before). */
static void tq2_to_tq1_bytes(const bitnet_block_tq2_0 *src, uint8_t out[52]) {
    const uint8_t *q = src->qs;
    for (int m = 0; m < 32; m++) {
        const unsigned a = q[m], v = 81 * (a & 3) + 27 * ((a >> 2) & 3) + 9 * ((a >> 4) & 3) + 3 * (a >> 6) +
                                     (q[32 + m] & 3u);
        out[m] = (uint8_t)((v * 256 + 242) / 243);
    }
    for (int j = 0; j < 16; j++) {
        const unsigned a = q[32 + j], b = q[48 + j];
        const unsigned v = 81 * ((a >> 2) & 3) + 27 * ((b >> 2) & 3) + 9 * ((a >> 4) & 3) + 3 * ((b >> 4) & 3) + (a >> 6);
        out[32 + j] = (uint8_t)((v * 256 + 242) / 243);
    }
    for (int j = 0; j < 4; j++) {
        const unsigned v = 27 * (q[48 + j] >> 6) + 9 * (q[52 + j] >> 6) + 3 * (q[56 + j] >> 6) + (q[60 + j] >> 6);
        out[48 + j] = (uint8_t)((3 * v * 256 + 242) / 243); /* 4 trits, the first in the top trit */
    }
}

int bitnet_repack(bitnet_layout layout, bitnet_src_type src_type, const void *src, int64_t rows, int64_t k,
                  void *dst) {
    return bitnet_repack_groups(layout, src_type, src, rows, k, dst, 0, bitnet__groups(rows));
}

int bitnet_repack_groups(bitnet_layout layout, bitnet_src_type src_type, const void *src, int64_t rows, int64_t k,
                         void *dst, int64_t g0, int64_t g1) {
    const size_t size = bitnet_weights_size(layout, rows, k);
    if (!src || !dst || size == 0) return BITNET_EINVAL;
    if (src_type != BITNET_SRC_TQ2_0 && src_type != BITNET_SRC_TQ1_0) return BITNET_EINVAL;

    const int64_t nb = k / BITNET_QK, ngroups = bitnet__groups(rows);
    if (g0 < 0 || g1 > ngroups || g0 > g1) return BITNET_EINVAL;
    const size_t tile_bytes = bitnet__tile_bytes(layout);
    const size_t src_block = src_type == BITNET_SRC_TQ2_0 ? sizeof(bitnet_block_tq2_0) : sizeof(bitnet_block_tq1_0);
    uint8_t *codes = (uint8_t *)dst;
    uint16_t *scales = (uint16_t *)(codes + (size_t)ngroups * (size_t)nb * tile_bytes);
    uint8_t bad = 0; /* OR of (code & code>>1) over TQ2_0 codes: bit set iff some code is 3 */

    for (int64_t g = g0; g < g1; g++) {
        const int partial = (g + 1) * BITNET_GROUP_ROWS > rows; /* the last group of rows % 16 != 0 */
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *tile = codes + (size_t)(g * nb + b) * tile_bytes;
            uint16_t *d = scales + (size_t)(g * nb + b) * BITNET_GROUP_ROWS;
            if (partial) { /* padding rows: zero codes, d = 0 (every other byte is written below once) */
                memset(tile, 0, tile_bytes);
                memset(d, 0, BITNET_GROUP_ROWS * sizeof *d);
            }
            for (int r = 0; r < BITNET_GROUP_ROWS && g * BITNET_GROUP_ROWS + r < rows; r++) {
                const uint8_t *blk = (const uint8_t *)src + ((size_t)(g * BITNET_GROUP_ROWS + r) * (size_t)nb +
                                                             (size_t)b) * src_block;
                uint8_t bytes[BITNET_QK / 4]; /* the row's code bytes in ggml order */
                int nchunks;
                if (src_type == BITNET_SRC_TQ2_0) {
                    const bitnet_block_tq2_0 *x = (const bitnet_block_tq2_0 *)blk;
                    uint8_t blk_bad = 0;
                    for (size_t j = 0; j < sizeof x->qs; j++) blk_bad |= (uint8_t)(x->qs[j] & (x->qs[j] >> 1));
                    bad |= blk_bad;
                    if (layout == BITNET_LAYOUT_TK2) {
                        memcpy(bytes, x->qs, sizeof x->qs);
                        nchunks = BITNET_TK2_CHUNKS;
                    } else {
                        if (blk_bad & 0x55) return BITNET_EBADCODE; /* no base-3 form of a code 3 */
                        tq2_to_tq1_bytes(x, bytes);
                        nchunks = BITNET_TK1_CHUNKS;
                    }
                    d[r] = x->d;
                } else if (layout == BITNET_LAYOUT_TK2) {
                    const bitnet_block_tq1_0 *x = (const bitnet_block_tq1_0 *)blk;
                    tq1_to_tq2_qs(x, bytes);
                    d[r] = x->d;
                    nchunks = BITNET_TK2_CHUNKS;
                } else {
                    const bitnet_block_tq1_0 *x = (const bitnet_block_tq1_0 *)blk;
                    memcpy(bytes, x->qs, sizeof x->qs);
                    memcpy(bytes + sizeof x->qs, x->qh, sizeof x->qh);
                    d[r] = x->d;
                    nchunks = BITNET_TK1_CHUNKS;
                }
                /* tile.q[c][r][i] = bytes[4c + i] */
                for (int c = 0; c < nchunks; c++)
                    memcpy(tile + ((size_t)c * BITNET_GROUP_ROWS + r) * 4, bytes + 4 * c, 4);
            }
        }
    }
    return (bad & 0x55) ? BITNET_EBADCODE : BITNET_OK;
}

size_t bitnet_act_size(int64_t k, int64_t ncols) {
    if (k <= 0 || k % BITNET_QK || ncols < 0) return 0;
    return (size_t)(k / BITNET_QK) * (size_t)ncols * sizeof(bitnet_act_block);
}

/* ggml's nearest_int (ggml-quants.c): round half to even via the 1.5*2^23 trick, |f| <= 2^22. */
static inline int nearest_int(float f) {
    const float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/*
 * One block with a given iscale, portable C: qs = clamp(round_half_even(iscale * x), -128, 127),
 * sum = sum(qs), d = 1/iscale. Both modes end here (q8_K's iscale = -127/max never goes below -127,
 * so its values are unchanged by the -128 bound). The SIMD versions below reproduce it bit for bit.
 */
static void quantize_block_scaled_c(const float *x, float iscale, bitnet_act_block *y) {
    int32_t sum = 0;
    for (int j = 0; j < BITNET_QK; j++) {
        const int v = nearest_int(iscale * x[j]);
        y->qs[j] = (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v);
        sum += y->qs[j];
    }
    y->sum = sum;
    y->d = 1.0f / iscale;
}

/* max |x[j]| over n floats, NaN ignored (the scalar `>` and the SIMD max both skip it). */
static float amax_c(const float *x, int64_t n) {
    float amax = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float ax = fabsf(x[j]);
        if (ax > amax) amax = ax;
    }
    return amax;
}

/* q8_K: the definition the SIMD versions reproduce bit for bit. */
static void quantize_block_c(const float *x, bitnet_act_block *y) {
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < BITNET_QK; j++) {
        const float ax = fabsf(x[j]);
        if (ax > amax) {
            amax = ax;
            max = x[j];
        }
    }
    if (amax == 0.0f) {
        y->d = 0.0f;
        y->sum = 0;
        memset(y->qs, 0, sizeof y->qs);
        return;
    }
    quantize_block_scaled_c(x, -127.f / max, y);
}

/*
 * SIMD versions: the same operations per element in the same order (|x| max ignoring NaN like the
 * scalar `>`, the first x of largest |x|, iscale * x rounded with ggml's 1.5*2^23 trick, clamp to
 * [-128, 127]), so the blocks are identical (tests/test_main.c group quant compares them with ggml's
 * q8_K and with the C per-token definition). They matter in prefill: the scalar loop was ~4% of a
 * 512-token prompt (perf, 2B4T shape).
 */
#if defined(BITNET_ISA_AVX512VNNI)
#include <immintrin.h>
static float amax_simd(const float *x, int64_t n) { /* n a multiple of 256 */
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 m0 = _mm512_setzero_ps(), m1 = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 32) { /* max(a, m) returns m when a is NaN: NaN ignored */
        m0 = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + j)), m0);
        m1 = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + j + 16)), m1);
    }
    return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

static void quantize_block_scaled(const float *x, float iscale, bitnet_act_block *y) {
    const __m512 is = _mm512_set1_ps(iscale), magic = _mm512_set1_ps(12582912.f);
    const __m512i mant = _mm512_set1_epi32(0x007fffff), off = _mm512_set1_epi32(0x00400000),
                  hi = _mm512_set1_epi32(127), lo = _mm512_set1_epi32(-128);
    __m512i sum = _mm512_setzero_si512();
    for (int j = 0; j < BITNET_QK; j += 16) {
        const __m512 v = _mm512_add_ps(_mm512_mul_ps(is, _mm512_loadu_ps(x + j)), magic);
        __m512i q = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(v), mant), off);
        q = _mm512_max_epi32(_mm512_min_epi32(q, hi), lo);
        sum = _mm512_add_epi32(sum, q);
        _mm_storeu_si128((__m128i *)(y->qs + j), _mm512_cvtepi32_epi8(q));
    }
    y->sum = _mm512_reduce_add_epi32(sum);
    y->d = 1.0f / iscale;
}

static void quantize_block(const float *x, bitnet_act_block *y) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const float amax = amax_simd(x, BITNET_QK);
    if (!(amax > 0.0f)) {
        quantize_block_c(x, y); /* all zero (or NaN): the rare case keeps the reference code */
        return;
    }
    float max = 0.0f;
    const __m512 am = _mm512_set1_ps(amax);
    for (int j = 0; j < BITNET_QK; j += 16) {
        const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + j)), am, _CMP_EQ_OQ);
        if (eq) {
            max = x[j + __builtin_ctz(eq)];
            break;
        }
    }
    quantize_block_scaled(x, -127.f / max, y);
}
#elif defined(BITNET_ISA_AVX2)
#include <immintrin.h>
static float amax_simd(const float *x, int64_t n) { /* n a multiple of 256 */
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) { /* max(a, m) returns m when a is NaN: NaN ignored */
        m0 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), m0);
        m1 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j + 8)), m1);
    }
    const __m256 m = _mm256_max_ps(m0, m1);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    return _mm_cvtss_f32(m4);
}

static void quantize_block_scaled(const float *x, float iscale, bitnet_act_block *y) {
    const __m256 is = _mm256_set1_ps(iscale), magic = _mm256_set1_ps(12582912.f);
    const __m256i mant = _mm256_set1_epi32(0x007fffff), off = _mm256_set1_epi32(0x00400000),
                  hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-128),
                  order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i sum = _mm256_setzero_si256();
    for (int j = 0; j < BITNET_QK; j += 32) {
        __m256i q[4];
        for (int i = 0; i < 4; i++) {
            const __m256 v = _mm256_add_ps(_mm256_mul_ps(is, _mm256_loadu_ps(x + j + 8 * i)), magic);
            q[i] = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(v), mant), off);
            q[i] = _mm256_max_epi32(_mm256_min_epi32(q[i], hi), lo);
            sum = _mm256_add_epi32(sum, q[i]);
        }
        /* values are in [-128, 127]: the saturating packs are exact; the permute undoes their lane order */
        const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(y->qs + j), _mm256_permutevar8x32_epi32(b, order));
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    y->sum = _mm_cvtsi128_si32(s4);
    y->d = 1.0f / iscale;
}

static void quantize_block(const float *x, bitnet_act_block *y) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const float amax = amax_simd(x, BITNET_QK);
    if (!(amax > 0.0f)) {
        quantize_block_c(x, y);
        return;
    }
    float max = 0.0f;
    const __m256 am = _mm256_set1_ps(amax);
    for (int j = 0; j < BITNET_QK; j += 8) {
        const int eq = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), am, _CMP_EQ_OQ));
        if (eq) {
            max = x[j + __builtin_ctz((unsigned)eq)];
            break;
        }
    }
    quantize_block_scaled(x, -127.f / max, y);
}
#else
#define quantize_block quantize_block_c
#define quantize_block_scaled quantize_block_scaled_c
#define amax_simd amax_c
#endif

void bitnet_quantize_act(const float *x, int64_t k, bitnet_act_block *y) {
    for (int64_t b = 0; b < k / BITNET_QK; b++) quantize_block(x + b * BITNET_QK, y + b);
}

float bitnet_act_amax(const float *x, int64_t k) {
    if (!x || k <= 0 || k % BITNET_QK) return 0.0f;
    return amax_simd(x, k);
}

void bitnet_quantize_act_scaled(const float *x, int64_t k, float amax, bitnet_act_block *y) {
    /* transformers' activation_quant: scale = 127 / amax.clamp(min=1e-5), in float32 */
    const float iscale = 127.f / (amax > BITNET_ACT_AMAX_MIN ? amax : BITNET_ACT_AMAX_MIN);
    for (int64_t b = 0; b < k / BITNET_QK; b++) quantize_block_scaled(x + b * BITNET_QK, iscale, y + b);
}

void bitnet_quantize_act_per_token(const float *x, int64_t k, bitnet_act_block *y) {
    bitnet_quantize_act_scaled(x, k, bitnet_act_amax(x, k), y);
}

void bitnet_ref_quantize_act_per_token(const float *x, int64_t k, bitnet_act_block *y) {
    const float amax = k > 0 ? amax_c(x, k) : 0.0f;
    const float iscale = 127.f / (amax > BITNET_ACT_AMAX_MIN ? amax : BITNET_ACT_AMAX_MIN);
    for (int64_t b = 0; b < k / BITNET_QK; b++) quantize_block_scaled_c(x + b * BITNET_QK, iscale, y + b);
}

void bitnet_split_rows(int64_t rows, int ith, int nth, int64_t *r0, int64_t *r1) {
    const int64_t groups = bitnet__groups(rows);
    int64_t a = nth > 0 ? groups * ith / nth : 0, b = nth > 0 ? groups * (ith + 1) / nth : groups;
    a *= BITNET_GROUP_ROWS;
    b *= BITNET_GROUP_ROWS;
    *r0 = a < rows ? a : rows;
    *r1 = b < rows ? b : rows;
}

int bitnet_chunks_init(bitnet_chunks *c, int64_t rows, int64_t unit_rows, int64_t min_rows, int64_t max_rows,
                       int nth, int divisor) {
    if (!c || rows < 0 || unit_rows <= 0 || unit_rows % BITNET_GROUP_ROWS || nth < 1 || divisor < 0 ||
        min_rows < 0 || max_rows < 0)
        return BITNET_EINVAL;
    c->rows = rows;
    c->unit_rows = unit_rows;
    c->units = (rows + unit_rows - 1) / unit_rows;
    c->min_units = min_rows > unit_rows ? (min_rows + unit_rows - 1) / unit_rows : 1;
    c->max_units = max_rows > 0 ? (max_rows + unit_rows - 1) / unit_rows : c->units;
    if (c->max_units < c->min_units) c->max_units = c->min_units;
    c->nth = nth;
    c->divisor = divisor;
    c->cur_index = 0;
    c->cur_unit = 0;
    return BITNET_OK;
}

/* Units in the guided chunk that starts at unit u (u < units). */
static int64_t guided_size(const bitnet_chunks *c, int64_t u) {
    const int64_t rem = c->units - u, div = (int64_t)c->divisor * c->nth;
    int64_t n = (rem + div - 1) / div;
    if (n < c->min_units) n = c->min_units;
    if (n > c->max_units) n = c->max_units;
    return n < rem ? n : rem;
}

int bitnet_chunks_get(bitnet_chunks *c, int64_t i, int64_t *r0, int64_t *r1) {
    int64_t u0, u1;
    if (i < 0) return 0;
    if (c->divisor == 0) {
        if (i >= c->nth) return 0;
        u0 = c->units * i / c->nth;
        u1 = c->units * (i + 1) / c->nth;
    } else {
        if (i < c->cur_index) {
            c->cur_index = 0;
            c->cur_unit = 0;
        }
        while (c->cur_index < i && c->cur_unit < c->units) {
            c->cur_unit += guided_size(c, c->cur_unit);
            c->cur_index++;
        }
        if (c->cur_unit >= c->units) return 0;
        u0 = c->cur_unit;
        u1 = u0 + guided_size(c, u0);
    }
    *r0 = u0 * c->unit_rows < c->rows ? u0 * c->unit_rows : c->rows;
    *r1 = u1 * c->unit_rows < c->rows ? u1 * c->unit_rows : c->rows;
    return 1;
}

int bitnet_matmul(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride, float *y,
                  int64_t y_stride, int64_t r0, int64_t r1) {
    if (ncols == 1) return bitnet_gemv(w, x, y, r0, r1);
    return bitnet_gemm(w, x, ncols, x_stride, y, y_stride, r0, r1);
}

int bitnet_matmul_packed(const bitnet_weights *w, const bitnet_act_block *x, const void *pk, int64_t ncols,
                         int64_t x_stride, float *y, int64_t y_stride, int64_t r0, int64_t r1) {
    if (ncols == 1) return bitnet_gemv(w, x, y, r0, r1);
    return bitnet_gemm_packed(w, x, pk, ncols, x_stride, y, y_stride, r0, r1);
}

bitnet_layout bitnet_preferred_layout(bitnet_src_type src_type) {
    if (src_type == BITNET_SRC_TQ1_0) return BITNET_TQ1_BASE3 ? BITNET_LAYOUT_TK1 : BITNET_LAYOUT_TK2;
    return BITNET_TQ2_BASE3 ? BITNET_LAYOUT_TK1 : BITNET_LAYOUT_TK2;
}

bitnet_kernel_info bitnet_get_kernel_info(void) {
    bitnet_kernel_info info = {BITNET_ISA_NAME, BITNET_GEMM_RG, BITNET_GEMM_COLS,
                               bitnet_preferred_layout(BITNET_SRC_TQ1_0)};
    return info;
}

const char *bitnet_isa(void) { return BITNET_ISA_NAME; }

#if !defined(BITNET_ISA_AVX512VNNI) /* avx512vnni.c has the AMX GEMM and these */
size_t bitnet_gemm_pack_size(int64_t k, int64_t ncols) {
    (void)k, (void)ncols;
    return 0;
}
int bitnet_gemm_pack(const bitnet_act_block *x, int64_t k, int64_t ncols, int64_t x_stride, int64_t c0, int64_t c1,
                     void *pk) {
    return bitnet__pack_check(x, k, ncols, x_stride, c0, c1, pk); /* nothing reads a copy here */
}
int bitnet_gemm_packed(const bitnet_weights *w, const bitnet_act_block *x, const void *pk, int64_t ncols,
                       int64_t x_stride, float *y, int64_t y_stride, int64_t r0, int64_t r1) {
    (void)pk;
    return bitnet_gemm(w, x, ncols, x_stride, y, y_stride, r0, r1);
}
int bitnet_gemm_amx(void) { return 0; }
int bitnet_set_gemm_amx(int on) {
    (void)on;
    return 0;
}
#endif
