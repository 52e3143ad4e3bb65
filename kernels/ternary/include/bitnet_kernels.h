/*
 * bitnet_kernels.h - ternary (BitNet b1.58) matrix kernels for CPUs: the C API.
 *
 * What it computes: y = W x for a ternary weight matrix W [rows x K] (values -1/0/+1 times an fp16
 * scale per 256-block, as ggml's TQ2_0 / TQ1_0 store them) and int8-quantized activation columns x.
 * The caller owns threads: every kernel works on a row range [r0, r1) of W, so threads split rows.
 *
 * How to use it (what the ggml-cpu extra buffer type does):
 *   load time:  size = bitnet_weights_size(layout, rows, K);      allocate `size` bytes
 *               bitnet_repack(layout, BITNET_SRC_TQ2_0, ggml_data, rows, K, dst)   (or TQ1_0)
 *   per matmul: each thread quantizes some columns of x:  bitnet_quantize_act(x_col, K, xq + c*nb)
 *               barrier
 *               bitnet_split_rows(rows, ith, nth, &r0, &r1)        (or chunks: bitnet_chunks_get)
 *               bitnet_matmul(&w, xq, ncols, nb, y, ldy, r0, r1)    (GEMV for 1 column, GEMM tiles else)
 *
 * The ISA is chosen at compile time from the compiler's target flags (one library per ISA variant);
 * bitnet_isa() says which. bitnet_ref_* are the scalar reference, present in every build.
 *
 * Numerics (identical in every ISA, so results are bitwise equal to bitnet_ref_*):
 *   isum[r][b] = sum over the 256 k of block b of (w[r][k]) * xq[k]          exact int32
 *   y[r]       = 0.0f; for b = 0 .. K/256-1:  y[r] = y[r] + (float)isum[r][b] * (d_w[r][b] * d_x[b])
 *                (float multiply, multiply, add in that order; never fused: the library builds with
 *                -ffp-contract=off)
 *
 * ref: ggml/src/ggml-common.h (block_tq2_0, block_tq1_0, block_q8_K), ggml/src/ggml-quants.c
 *      (quantize_row_tq1_0_ref, dequantize_row_tq2_0, quantize_row_q8_K_ref); issue 5.
 */
#ifndef BITNET_KERNELS_H
#define BITNET_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define BITNET_STATIC_ASSERT(c, msg) static_assert(c, msg)
#else
#define BITNET_STATIC_ASSERT(c, msg) _Static_assert(c, msg)
#endif

#define BITNET_QK 256        /* weights per block along K (ggml QK_K) */
#define BITNET_GROUP_ROWS 16 /* rows interleaved in one group of our layouts; r0 of a range is a multiple */

/* Return codes. */
enum {
    BITNET_OK = 0,
    BITNET_EINVAL = -1,  /* bad argument: K not a multiple of 256, unaligned row range, NULL pointer... */
    BITNET_EBADCODE = -2 /* TQ2_0 source holds the 2-bit code 3, which is not a ternary value */
};

/* ------------------------------------------------------------------------------------------------
 * Source formats: ggml's blocks, byte for byte (256 weights each; d is an IEEE fp16 bit pattern).
 *
 * TQ2_0 (2.0625 bits/weight): weight = code - 1, code in {0,1,2} (3 is invalid), where
 *   code(k) = (qs[32*h + m] >> (2*l)) & 3   for k = 128*h + 32*l + m,  h in 0..1, l in 0..3, m in 0..31.
 * TQ1_0 (1.6875 bits/weight): weight = trit - 1, trits in {0,1,2} packed 5 per byte (4 in qh) in
 *   fixed point: byte q holds trits t0..t4 as q = ceil((t0*81 + t1*27 + t2*9 + t3*3 + t4) * 256 / 243);
 *   trit n of q is ((uint8_t)(q * 3^n) * 3) >> 8.  Positions:
 *     qs[m],      m in 0..31: trit n (0..4) is k = 32*n + m
 *     qs[32 + m], m in 0..15: trit n (0..4) is k = 160 + 16*n + m
 *     qh[j],      j in 0..3:  trit n (0..3) is k = 240 + 4*n + j
 * ---------------------------------------------------------------------------------------------- */
typedef struct {
    uint8_t qs[BITNET_QK / 4];
    uint16_t d;
} bitnet_block_tq2_0;
BITNET_STATIC_ASSERT(sizeof(bitnet_block_tq2_0) == 66, "block_tq2_0 is 66 bytes in ggml");

typedef struct {
    uint8_t qs[48];
    uint8_t qh[4];
    uint16_t d;
} bitnet_block_tq1_0;
BITNET_STATIC_ASSERT(sizeof(bitnet_block_tq1_0) == 54, "block_tq1_0 is 54 bytes in ggml");

typedef enum { BITNET_SRC_TQ2_0 = 0, BITNET_SRC_TQ1_0 = 1 } bitnet_src_type;

/* ------------------------------------------------------------------------------------------------
 * Our layouts. THE definition of both is here; every kernel (scalar included) reads them through
 * these structs and the two k-mapping functions below.
 *
 * Rows are taken in groups of 16 (the last group padded with zero bytes and d = 0). For each group and
 * each 256-block, a tile holds the group's ggml code bytes unchanged, interleaved across the 16 rows
 * at 4-byte granularity:
 *
 *     tile.q[c][r][i] = byte 4*c + i of row r's ggml block (TQ2_0: qs; TQ1_0: qs followed by qh)
 *
 * so a 64-byte chunk c is one SIMD load holding 16 rows x 4 bytes: 32-bit lane r = row r. Decoding
 * plane l of a chunk (2-bit field l for TK2, trit l for TK1) yields, in lane r, the codes of 4
 * CONSECUTIVE k (byte i -> k0 + i) of row r: one vpdpbusd / sdot step against 4 broadcast activation
 * bytes x[k0 .. k0+3] serves 16 rows. No gathers; a row group is one sequential stream.
 *
 * Matrix (G = ceil(rows/16) groups, nb = K/256 blocks per row):
 *     [codes: tile (g, b) at byte (g*nb + b) * sizeof(tile)]       (64-byte aligned if data is)
 *     [scales: fp16 d of row 16*g + r, block b, at uint16 index (g*nb + b)*16 + r]
 * Size = G * nb * (sizeof(tile) + 32) = exactly ggml's size when rows % 16 == 0.
 *
 * TK2 (from TQ2_0; or from TQ1_0, re-encoded to 2 bits): 16 chunks, planes l = 0..3 (bits 2l..2l+1).
 * TK1 (from TQ1_0, base-3 bytes kept): 13 chunks (12 from qs, 1 from qh), planes n = 0..4 (0..3 in
 *     chunk 12).
 * ---------------------------------------------------------------------------------------------- */
typedef enum { BITNET_LAYOUT_TK2 = 0, BITNET_LAYOUT_TK1 = 1 } bitnet_layout;

#define BITNET_TK2_CHUNKS 16
#define BITNET_TK1_CHUNKS 13

typedef struct {
    uint8_t q[BITNET_TK2_CHUNKS][BITNET_GROUP_ROWS][4];
} bitnet_tk2_tile;
BITNET_STATIC_ASSERT(sizeof(bitnet_tk2_tile) == 16 * sizeof(((bitnet_block_tq2_0 *)0)->qs),
                     "a TK2 tile holds the qs of 16 TQ2_0 blocks");

typedef struct {
    uint8_t q[BITNET_TK1_CHUNKS][BITNET_GROUP_ROWS][4];
} bitnet_tk1_tile;
BITNET_STATIC_ASSERT(sizeof(bitnet_tk1_tile) == 16 * (sizeof(((bitnet_block_tq1_0 *)0)->qs) +
                                                      sizeof(((bitnet_block_tq1_0 *)0)->qh)),
                     "a TK1 tile holds the qs+qh of 16 TQ1_0 blocks");

/* k (0..255 within the block) of byte i (0..3) of chunk c, plane l (0..3) in a TK2 tile. */
static inline int bitnet_tk2_k(int c, int l, int i) { return 128 * (c / 8) + 32 * l + 4 * (c % 8) + i; }

/* k of byte i of chunk c, trit n in a TK1 tile (n in 0..4; 0..3 for c == 12). */
static inline int bitnet_tk1_k(int c, int n, int i) {
    return c < 8 ? 32 * n + 4 * c + i : c < 12 ? 160 + 16 * n + 4 * (c - 8) + i : 240 + 4 * n + i;
}

/* Trit n (0..4) of a base-3 byte q, as ggml decodes it: result in {0, 1, 2}. */
static inline int bitnet_trit(uint8_t q, int n) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    return ((uint16_t)(uint8_t)(q * pow3[n]) * 3) >> 8;
}

/* The layout this build prefers for a source type: TK1 or TK2 per ISA and source, as measured
 * (tuning.json "tq1_base3", "tq2_base3"). Every pair works in every build; this is the fast one. */
bitnet_layout bitnet_preferred_layout(bitnet_src_type src_type);

/* Bytes our layout needs for a [rows x k] matrix (k a multiple of 256), 0 if the shape is invalid. */
size_t bitnet_weights_size(bitnet_layout layout, int64_t rows, int64_t k);

/* Repack `rows` ggml rows of `k` weights (row-major blocks, as in a ggml tensor) into our layout at
 * dst (bitnet_weights_size bytes; 64-byte aligned for best speed). Supported: TQ2_0 -> TK2,
 * TQ2_0 -> TK1 (codes re-encoded as TQ1_0's base-3 bytes: the same ternary values), TQ1_0 -> TK1,
 * TQ1_0 -> TK2. Returns BITNET_OK, BITNET_EINVAL, or BITNET_EBADCODE (dst then undefined). Single-threaded; per 6912x2560 matrix on the README's machine: TQ1_0->TK1 0.7 ms,
 * TQ2_0->TK2 2.7 ms (checks every code), TQ1_0->TK2 17 ms (scalar trit decode). */
int bitnet_repack(bitnet_layout layout, bitnet_src_type src_type, const void *src, int64_t rows, int64_t k,
                  void *dst);

/* bitnet_repack of the 16-row groups [g0, g1) only (0 <= g0 <= g1 <= ceil(rows/16)); the other groups'
 * bytes of dst are not touched, so threads may repack disjoint group ranges of one matrix at once. The
 * union of the ranges gives bitnet_repack's bytes; BITNET_EBADCODE if a code in the range is 3. */
int bitnet_repack_groups(bitnet_layout layout, bitnet_src_type src_type, const void *src, int64_t rows, int64_t k,
                         void *dst, int64_t g0, int64_t g1);

/* A repacked matrix, as the kernels take it. */
typedef struct {
    const void *data; /* from bitnet_repack */
    int64_t rows;     /* output rows (ggml ne01) */
    int64_t k;        /* inner dimension (ggml ne00), a multiple of 256 */
    bitnet_layout layout;
} bitnet_weights;

/* ------------------------------------------------------------------------------------------------
 * Activations: int8 per 256-block, values identical to ggml's q8_K (quantize_row_q8_K_ref):
 *   m = the x of largest |x| in the block (first one on ties); if m == 0: d = 0, qs = 0; else
 *   iscale = -127/m, qs[k] = min(127, round_half_even(iscale * x[k])), d = 1/iscale; sum = sum(qs).
 * So qs is in [-127, 127] (the kernels also accept -128) and d may be negative.
 * Error: |x[k] - d*qs[k]| <= |d|/2 = amax/254 per element (plus float rounding of iscale*x).
 * Layout: one struct per block, blocks of a column contiguous; column c of a batch at x + c*x_stride.
 * ---------------------------------------------------------------------------------------------- */
typedef struct {
    float d;       /* scale: x ~ d * qs */
    int32_t sum;   /* sum of qs over the block: folds the -1 offset of the unsigned weight codes */
    int8_t qs[BITNET_QK];
} bitnet_act_block;
BITNET_STATIC_ASSERT(sizeof(bitnet_act_block) == 8 + BITNET_QK, "bitnet_act_block is 264 bytes");

/* Bytes of ncols quantized columns of k activations (what a caller's work buffer needs), 0 if invalid. */
size_t bitnet_act_size(int64_t k, int64_t ncols);

/* Quantize one column of k floats (k a multiple of 256) into k/256 blocks, one scale per block (q8_K). */
void bitnet_quantize_act(const float *x, int64_t k, bitnet_act_block *y);

/* ------------------------------------------------------------------------------------------------
 * Activations per token: BitNet b1.58's definition (transformers `ActQuant` / `activation_quant`):
 * ONE scale for the whole column of k values,
 *   amax = max |x| over all k (NaN ignored), iscale = 127 / max(amax, 1e-5)   (float32)
 *   qs[k] = clamp(round_half_even(iscale * x[k]), -128, 127),  d = 1/iscale in every block,
 * sum per block as above. The blocks have the same struct, so every kernel runs either mode unchanged:
 * y = sum over b of isum[b] * (d_w[b] * d) with the same d in every block.
 * Error: |x[k] - d*qs[k]| <= amax/254 per element (the per-block mode's bound uses the block's amax).
 * ---------------------------------------------------------------------------------------------- */
#define BITNET_ACT_AMAX_MIN 1e-5f
void bitnet_quantize_act_per_token(const float *x, int64_t k, bitnet_act_block *y);
/* The two halves, for callers that split one column's blocks across threads: every thread computes
 * amax of the whole column (k floats; 0 if k is invalid) and quantizes its own blocks with it.
 * bitnet_quantize_act_scaled(x, k, bitnet_act_amax(x, k), y) == bitnet_quantize_act_per_token(x, k, y),
 * and quantizing blocks [b0, b1) of the column with the whole column's amax gives those blocks exactly. */
float bitnet_act_amax(const float *x, int64_t k);
void bitnet_quantize_act_scaled(const float *x, int64_t k, float amax, bitnet_act_block *y);
/* The portable C definition of the per-token mode, present in every build (tests compare with it). */
void bitnet_ref_quantize_act_per_token(const float *x, int64_t k, bitnet_act_block *y);

/* How the engine says which mode a matmul runs (kernels/patches/0006): llama.cpp tags each ternary
 * MUL_MAT node of a per-token model with op_params[BITNET_OP_PARAM_ACT_QUANT] = BITNET_ACT_PER_TOKEN_TAG
 * (ggml uses slots 0 and 1 of a MUL_MAT); untagged nodes run per block. The patch spells both numbers
 * too: tests/test_engine.py checks that they agree. */
#define BITNET_OP_PARAM_ACT_QUANT 7
#define BITNET_ACT_PER_TOKEN_TAG 0x4b4f5442 /* "BTOK" */

/* ------------------------------------------------------------------------------------------------
 * Kernels. Rows [r0, r1) of y are written, for every column c in [0, ncols):
 *     y[c*y_stride + r] = row r of W . column c of x,   x of column c at x + c*x_stride (in blocks).
 * Row range: 0 <= r0 <= r1 <= rows, r0 a multiple of 16, r1 a multiple of 16 or == rows.
 * Returns BITNET_OK or BITNET_EINVAL. No threads; a GEMM of 64+ columns allocates a scratch for running sums.
 * Safe to call concurrently on disjoint row ranges. Stack use < 72 KiB (the AMX GEMM keeps 64 KiB of
 * scratch; the others < 40 KiB).
 * ---------------------------------------------------------------------------------------------- */
int bitnet_gemv(const bitnet_weights *w, const bitnet_act_block *x, float *y, int64_t r0, int64_t r1);
int bitnet_gemm(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride, float *y,
                int64_t y_stride, int64_t r0, int64_t r1);
/* GEMV when ncols == 1, GEMM otherwise: what an integration calls. */
int bitnet_matmul(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride, float *y,
                  int64_t y_stride, int64_t r0, int64_t r1);

/* Packed activations for the AMX GEMM. bitnet_gemm_pack_size(k, ncols) is the bytes of the copy, 0 where no GEMM
 * would read one (no AMX on this host or build, fewer than 16 columns). bitnet_gemm_pack copies columns [c0, c1)
 * of x into pk (64-byte aligned, that size; threads may pack disjoint column ranges of one buffer concurrently,
 * each column is its own bytes). Once every column is packed, the *_packed calls read their A tiles from it
 * (contiguous 1 KiB tiles, column chunks that stay in L2) instead of the column strides of x: the AMX GEMM of
 * a 2B4T prefill ran 11-37% faster. pk NULL: the same as the unpacked calls. Same results bit for bit. */
size_t bitnet_gemm_pack_size(int64_t k, int64_t ncols);
int bitnet_gemm_pack(const bitnet_act_block *x, int64_t k, int64_t ncols, int64_t x_stride, int64_t c0, int64_t c1,
                     void *pk);
int bitnet_gemm_packed(const bitnet_weights *w, const bitnet_act_block *x, const void *pk, int64_t ncols,
                       int64_t x_stride, float *y, int64_t y_stride, int64_t r0, int64_t r1);
int bitnet_matmul_packed(const bitnet_weights *w, const bitnet_act_block *x, const void *pk, int64_t ncols,
                         int64_t x_stride, float *y, int64_t y_stride, int64_t r0, int64_t r1);

/* The scalar reference (the definition of correct), present in every build. */
int bitnet_ref_gemv(const bitnet_weights *w, const bitnet_act_block *x, float *y, int64_t r0, int64_t r1);
int bitnet_ref_gemm(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride,
                    float *y, int64_t y_stride, int64_t r0, int64_t r1);

/* ------------------------------------------------------------------------------------------------
 * fp16 GEMV (the tied embedding / output head): y[r] = sum_k f32(w[r*ldw + k]) * x[k] for r in
 * [r0, r1) (any rows; threads split rows), k a multiple of 64, ldw >= k (in elements). w holds IEEE fp16
 * bit patterns in ggml's row-major layout (no repacking: the same tensor serves GET_ROWS). f32
 * accumulation in one fixed order in every ISA (see src/f16.c), so all builds are bitwise equal.
 * Returns BITNET_OK or BITNET_EINVAL.
 * ---------------------------------------------------------------------------------------------- */
int bitnet_gemv_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0, int64_t r1);
int bitnet_ref_gemv_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                        int64_t r1);
/* The same for a bf16 matrix (bfloat16 bit patterns): bf16 -> f32 is exact (a shift), same fixed order. */
int bitnet_gemv_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                     int64_t r1);
int bitnet_ref_gemv_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, float *y, int64_t r0,
                         int64_t r1);
/* The same products for ncols >= 1 activation columns: y[c*ldy + r] = sum_k f32(w[r*ldw + k]) * x[c*ldx + k]
 * for r in [r0, r1), c < ncols (ldx >= k and ldy >= r1 when ncols > 1, in elements). Each weight row is
 * read once per tile of 4 columns, and every column's result is BIT FOR BIT what bitnet_gemv_f16 /
 * _bf16 gives for that column alone (same per-lane fma order, same reduction tree), so a sequence's
 * logits do not depend on how many others share its batch. Returns BITNET_OK or BITNET_EINVAL. */
int bitnet_gemm_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols, float *y,
                    int64_t ldy, int64_t r0, int64_t r1);
int bitnet_gemm_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                     float *y, int64_t ldy, int64_t r0, int64_t r1);
int bitnet_ref_gemm_f16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                        float *y, int64_t ldy, int64_t r0, int64_t r1);
int bitnet_ref_gemm_bf16(const uint16_t *w, int64_t k, int64_t ldw, const float *x, int64_t ldx, int64_t ncols,
                         float *y, int64_t ldy, int64_t r0, int64_t r1);
/* 1 if this build's bitnet_gemv_f16 / _bf16 and bitnet_gemm_f16 / _bf16 are vectorized (AVX2/AVX-512 with F16C + FMA, NEON); 0 if it is the
 * reference (scalar, SSSE3: no hardware fused multiply-add, so fmaf() in software is far slower than
 * ggml's own fp16 path; the engine then leaves the head to ggml). */
int bitnet_gemv_f16_native(void);

/* ------------------------------------------------------------------------------------------------
 * The float ops the engine fuses around a ternary matmul (src/norm.c), each bitwise equal to ggml's op:
 *
 * RMS_NORM (+ MUL by a weight row w, NULL for none) of `rows` rows of k floats (row r at x + r*ldx,
 * output at y + r*ldy; y may be x), as ggml-cpu/ops.cpp computes it:
 *     sum = 0.0 (double); for i in order: sum += (double)(x[i] * x[i]);
 *     mean = (float)(sum / k); scale = 1.0f / sqrtf(mean + eps); y[i] = x[i] * scale * w[i]
 * bitnet_rms_norm keeps that per-row order and runs 8 or 16 rows side by side in SIMD lanes (AVX2 and
 * AVX-512 builds); bitnet_ref_rms_norm is the loop above. */
void bitnet_rms_norm(const float *x, int64_t ldx, int64_t k, int64_t rows, const float *w, float eps, float *y,
                     int64_t ldy);
/* The double sums alone (sums[r] for row r), bitwise equal to the loop above in every build: the
 * summation order is what the tests check here (the float mean hides almost every reordering). */
void bitnet_sumsq_rows(const float *x, int64_t ldx, int64_t k, int64_t rows, double *sums);
void bitnet_ref_sumsq_rows(const float *x, int64_t ldx, int64_t k, int64_t rows, double *sums);
void bitnet_ref_rms_norm(const float *x, int64_t ldx, int64_t k, int64_t rows, const float *w, float eps, float *y,
                         int64_t ldy);
/* Epilogues on rows [r0, r1) of columns 0 .. ncols-1 of a matmul output (column c at + c*ld); out may be
 * any of the inputs (element i is read before it is written); s / sg / su point to the one value of a
 * weight's `.scale` (its MUL node), or are NULL when there is none:
 *   scale:      y = y * s
 *   scale_add:  out = y * s + b                     (MUL, then ADD: the residual; two roundings)
 *   relu2_mul:  g' = g * sg, u' = u * su, r = g' > 0 ? g' : 0, out = (r * r) * u'
 *                                                   (MUL, MUL, RELU, SQR, MUL: BitNet's relu^2 FFN gate) */
void bitnet_scale_rows(float *y, int64_t ldy, int64_t ncols, int64_t r0, int64_t r1, float s);
void bitnet_scale_add_rows(float *out, int64_t ldo, const float *y, int64_t ldy, const float *s, const float *b,
                           int64_t ldb, int64_t ncols, int64_t r0, int64_t r1);
void bitnet_relu2_mul_rows(float *out, int64_t ldo, const float *g, int64_t ldg, const float *sg, const float *u,
                           int64_t ldu, const float *su, int64_t ncols, int64_t r0, int64_t r1);

/* Thread ith of nth gets rows [*r0, *r1): contiguous, 16-aligned, balanced in groups; may be empty. */
void bitnet_split_rows(int64_t rows, int ith, int nth, int64_t *r0, int64_t *r1);

/* ------------------------------------------------------------------------------------------------
 * Dynamic row split (what the engine's MUL_MAT and head GEMV use): the rows are cut into chunks that
 * threads take in order - chunk ith first, then the next index from a counter shared by the threads -
 * so a thread that lost its core to another process leaves its unstarted rows to the others instead of
 * making them wait for it at the next barrier. Chunk boundaries depend only on the plan (rows, sizes,
 * nth, divisor), never on which thread takes a chunk, and every kernel computes a row the same way in
 * any row range: the output is bitwise identical to the static split's.
 *
 * Guided schedule (divisor >= 1): chunk i starts where chunk i-1 ended and has
 *     clamp(ceil(remaining units / (divisor * nth)), min_units, max_units) units (the last: what is left),
 * a unit being unit_rows rows (a multiple of 16: chunk starts stay 16-aligned; the last chunk ends at rows).
 * Big chunks first keep the shared counter quiet; the small ones at the end leave an idle machine at most
 * one small chunk of imbalance. divisor == 0 is the static split: exactly nth chunks, chunk i =
 * bitnet_split_rows(rows, i, nth) in units (the same ranges when unit_rows == 16), possibly empty.
 * ---------------------------------------------------------------------------------------------- */
typedef struct {
    int64_t rows, unit_rows, units, min_units, max_units;
    int nth, divisor;
    int64_t cur_index, cur_unit; /* cursor: chunk cur_index starts at unit cur_unit */
} bitnet_chunks;

/* min_rows / max_rows are rounded up to whole units (at least 1; max_rows 0 = no cap). Returns BITNET_OK, or
 * BITNET_EINVAL (rows < 0, unit_rows not a positive multiple of 16, nth < 1, divisor < 0). */
int bitnet_chunks_init(bitnet_chunks *c, int64_t rows, int64_t unit_rows, int64_t min_rows, int64_t max_rows,
                       int nth, int divisor);
/* Rows [*r0, *r1) of chunk i: returns 1 (the range is non-empty, except in the static split), or 0 when the
 * plan has no chunk i. O(1) amortized when every call's i is >= the previous call's (the cursor walks forward;
 * a smaller i walks again from chunk 0). */
int bitnet_chunks_get(bitnet_chunks *c, int64_t i, int64_t *r0, int64_t *r1);

/* What this build runs: ISA name ("scalar", "avx2", "avx512vnni", "neon", "neon-dotprod") and tiles. */
typedef struct {
    const char *isa;
    int gemm_row_groups; /* 16-row groups per GEMM tile */
    int gemm_cols;       /* activation columns per GEMM tile */
    bitnet_layout tq1_layout; /* bitnet_preferred_layout(BITNET_SRC_TQ1_0) */
} bitnet_kernel_info;
bitnet_kernel_info bitnet_get_kernel_info(void);
const char *bitnet_isa(void);

/* AMX-INT8 (Intel Sapphire Rapids and later): the avx512vnni build's bitnet_gemm runs its columns in
 * 16-column tiles of TDPBSUD when the CPU has AMX-TILE + AMX-INT8 and Linux grants the process the tile
 * state (probed once, at the first call); the results are bitwise those of the vpdpbusd path. 1 if
 * bitnet_gemm uses AMX on this host (environment BITNET_AMX=0 turns it off before the first call), 0 in
 * every other build. bitnet_set_gemm_amx(0/1) switches at run time (for tests and A/B benchmarks; not
 * while another thread is inside bitnet_gemm) and returns what is now in effect. */
int bitnet_gemm_amx(void);
int bitnet_set_gemm_amx(int on);

#ifdef __cplusplus
}
#endif
#endif /* BITNET_KERNELS_H */
