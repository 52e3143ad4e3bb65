/*
 * scalar.c - the reference kernels: the definition of correct, written for clarity straight from the
 * layout definition in bitnet_kernels.h (tile structs + k mapping). Present in every build as
 * bitnet_ref_*; in the scalar ISA build (no SIMD flags: the engine's sse42 variant, unknown CPUs) they
 * are also the public bitnet_gemv / bitnet_gemm.
 */
#include "internal.h"

/* Weights (code - 1, in {-1, 0, 1, 2}; 2 only from an invalid TQ2_0 code 3) of row rr (0..15) of group
 * tile `tile`, in k order. */
static void decode_row_block(bitnet_layout layout, const uint8_t *tile, int rr, int8_t w[BITNET_QK]) {
    if (layout == BITNET_LAYOUT_TK2) {
        const bitnet_tk2_tile *t = (const bitnet_tk2_tile *)tile;
        for (int c = 0; c < BITNET_TK2_CHUNKS; c++)
            for (int l = 0; l < 4; l++)
                for (int i = 0; i < 4; i++) w[bitnet_tk2_k(c, l, i)] = (int8_t)(((t->q[c][rr][i] >> (2 * l)) & 3) - 1);
    } else {
        const bitnet_tk1_tile *t = (const bitnet_tk1_tile *)tile;
        for (int c = 0; c < BITNET_TK1_CHUNKS; c++)
            for (int n = 0; n < (c < 12 ? 5 : 4); n++)
                for (int i = 0; i < 4; i++) w[bitnet_tk1_k(c, n, i)] = (int8_t)(bitnet_trit(t->q[c][rr][i], n) - 1);
    }
}

int bitnet_ref_gemm(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride,
                    float *y, int64_t y_stride, int64_t r0, int64_t r1) {
    const int rc = bitnet__check(w, x, ncols, x_stride, y, y_stride, r0, r1);
    if (rc != BITNET_OK) return rc;
    const int64_t nb = w->k / BITNET_QK;
    const size_t tile_bytes = bitnet__tile_bytes(w->layout);

    for (int64_t r = r0; r < r1; r++) {
        const int64_t g = r / BITNET_GROUP_ROWS;
        const int rr = (int)(r % BITNET_GROUP_ROWS);
        const uint8_t *codes = bitnet__codes(w, g);
        const uint16_t *scales = bitnet__scales(w, g);
        for (int64_t b = 0; b < nb; b++) {
            int8_t wq[BITNET_QK];
            decode_row_block(w->layout, codes + (size_t)b * tile_bytes, rr, wq);
            const float dw = bitnet__fp16_to_fp32(scales[b * BITNET_GROUP_ROWS + rr]);
            for (int64_t c = 0; c < ncols; c++) {
                const bitnet_act_block *xb = x + c * x_stride + b;
                int32_t isum = 0;
                for (int k = 0; k < BITNET_QK; k++) isum += wq[k] * xb->qs[k];
                float *out = y + c * y_stride + r;
                const float acc = b == 0 ? 0.0f : *out;
                *out = acc + (float)isum * (dw * xb->d);
            }
        }
    }
    return BITNET_OK;
}

int bitnet_ref_gemv(const bitnet_weights *w, const bitnet_act_block *x, float *y, int64_t r0, int64_t r1) {
    return bitnet_ref_gemm(w, x, 1, w ? w->k / BITNET_QK : 0, y, w ? w->rows : 0, r0, r1);
}

#if defined(BITNET_ISA_SCALAR)
int bitnet_gemv(const bitnet_weights *w, const bitnet_act_block *x, float *y, int64_t r0, int64_t r1) {
    return bitnet_ref_gemv(w, x, y, r0, r1);
}

int bitnet_gemm(const bitnet_weights *w, const bitnet_act_block *x, int64_t ncols, int64_t x_stride, float *y,
                int64_t y_stride, int64_t r0, int64_t r1) {
    return bitnet_ref_gemm(w, x, ncols, x_stride, y, y_stride, r0, r1);
}
#endif
