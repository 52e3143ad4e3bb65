/*
 * test_ref.h - test-side references written independently of the library, from ggml's documented
 * block layouts (ggml/src/ggml-common.h, ggml-quants.c: quantize_row_tq2_0_ref, quantize_row_tq1_0_ref,
 * dequantize_row_tq2_0, dequantize_row_tq1_0, quantize_row_q8_K_ref). ggml is not linked.
 */
#ifndef BITNET_TEST_REF_H
#define BITNET_TEST_REF_H

#include <stddef.h>
#include <stdint.h>

#define T_QK 256

/* splitmix64 */
typedef struct {
    uint64_t s;
} t_rng;
uint64_t t_next(t_rng *r);
int t_uniform(t_rng *r, int n);          /* 0 .. n-1 */
float t_uniform_f(t_rng *r, float a, float b);

float t_fp16_to_float(uint16_t h);        /* via ldexp, independent of the library's converter */
uint16_t t_random_fp16_scale(t_rng *r);   /* a positive or negative normal fp16 of magnitude ~1/64 .. 4 */

/* Ternary matrix w[rows*k] in {-1,0,1} with per-(row, block) fp16 scales d[rows*(k/256)] -> ggml bytes. */
void t_encode_tq2_0(const int8_t *w, const uint16_t *d, int64_t rows, int64_t k, uint8_t *out);
void t_encode_tq1_0(const int8_t *w, const uint16_t *d, int64_t rows, int64_t k, uint8_t *out);
/* ggml bytes -> float weights (d * (code - 1)), one row of k. */
void t_dequant_tq2_0(const uint8_t *row, int64_t k, float *out);
void t_dequant_tq1_0(const uint8_t *row, int64_t k, float *out);

/* ggml's q8_K block and its reference quantizer. */
typedef struct {
    float d;
    int8_t qs[T_QK];
    int16_t bsums[T_QK / 16];
} t_block_q8_K;
void t_quantize_q8_K(const float *x, int64_t k, t_block_q8_K *y);

#endif
