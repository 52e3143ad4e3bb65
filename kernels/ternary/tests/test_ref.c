/* test_ref.c - see test_ref.h. Written from ggml's block layouts, not from bitnet_kernels.h. */
#include "test_ref.h"

#include <math.h>
#include <string.h>

uint64_t t_next(t_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int t_uniform(t_rng *r, int n) { return (int)(t_next(r) % (uint64_t)n); }

float t_uniform_f(t_rng *r, float a, float b) {
    return a + (b - a) * (float)((double)(t_next(r) >> 11) / 9007199254740992.0);
}

float t_fp16_to_float(uint16_t h) {
    const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
    double v;
    if (exp == 31) return mant ? NAN : (sign ? -INFINITY : INFINITY);
    if (exp == 0) v = ldexp((double)mant, -24);
    else v = ldexp(1024.0 + mant, exp - 25);
    return (float)(sign ? -v : v);
}

uint16_t t_random_fp16_scale(t_rng *r) {
    const uint16_t sign = t_uniform(r, 8) == 0 ? 0x8000 : 0; /* some negative scales too */
    const uint16_t exp = (uint16_t)(9 + t_uniform(r, 8));     /* 2^-6 .. 2^1 */
    return (uint16_t)(sign | (exp << 10) | (uint16_t)t_uniform(r, 1024));
}

/* ggml block_tq2_0: uint8_t qs[64]; ggml_half d;  (66 bytes)
 * quantize_row_tq2_0_ref: for j in {0, 32}: for m < 32: qs[j+m] = sum_n (x[4j + 32n + m] + 1) << 2n. */
void t_encode_tq2_0(const int8_t *w, const uint16_t *d, int64_t rows, int64_t k, uint8_t *out) {
    const int64_t nb = k / T_QK;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = out + (r * nb + b) * 66;
            const int8_t *x = w + r * k + b * T_QK;
            for (int j = 0; j < 64; j += 32)
                for (int m = 0; m < 32; m++) {
                    uint8_t q = 0;
                    for (int n = 0; n < 4; n++) q |= (uint8_t)((x[4 * j + 32 * n + m] + 1) << (2 * n));
                    blk[j + m] = q;
                }
            memcpy(blk + 64, &d[r * nb + b], 2);
        }
}

void t_dequant_tq2_0(const uint8_t *row, int64_t k, float *out) {
    for (int64_t b = 0; b < k / T_QK; b++) {
        const uint8_t *blk = row + b * 66;
        uint16_t dh;
        memcpy(&dh, blk + 64, 2);
        const float d = t_fp16_to_float(dh);
        for (int j = 0; j < 64; j += 32)
            for (int l = 0; l < 4; l++)
                for (int m = 0; m < 32; m++) *out++ = (float)(((blk[j + m] >> (2 * l)) & 3) - 1) * d;
    }
}

/* ggml block_tq1_0: uint8_t qs[48]; uint8_t qh[4]; ggml_half d;  (54 bytes)
 * quantize_row_tq1_0_ref: 5 trits per byte, q = sum_n t[n]*3^(4-n), stored as ceil(q*256/243);
 * qs[0..31]: x[m + 32n]; qs[32..47]: x[160 + m + 16n]; qh[0..3]: x[240 + j + 4n] (n < 4), times 3. */
static uint8_t t_pack5(const int t[5]) {
    unsigned q = 0;
    for (int n = 0; n < 5; n++) q = q * 3 + (unsigned)t[n];
    return (uint8_t)((q * 256 + 242) / 243);
}

void t_encode_tq1_0(const int8_t *w, const uint16_t *d, int64_t rows, int64_t k, uint8_t *out) {
    const int64_t nb = k / T_QK;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = out + (r * nb + b) * 54;
            const int8_t *x = w + r * k + b * T_QK;
            int t[5];
            for (int m = 0; m < 32; m++) {
                for (int n = 0; n < 5; n++) t[n] = x[m + 32 * n] + 1;
                blk[m] = t_pack5(t);
            }
            for (int m = 0; m < 16; m++) {
                for (int n = 0; n < 5; n++) t[n] = x[160 + m + 16 * n] + 1;
                blk[32 + m] = t_pack5(t);
            }
            for (int j = 0; j < 4; j++) {
                for (int n = 0; n < 4; n++) t[n] = x[240 + j + 4 * n] + 1;
                t[4] = 0;
                blk[48 + j] = t_pack5(t);
            }
            memcpy(blk + 52, &d[r * nb + b], 2);
        }
}

static int t_trit(uint8_t q, int n) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t v = (uint8_t)(q * pow3[n]);
    return (v * 3) >> 8;
}

void t_dequant_tq1_0(const uint8_t *row, int64_t k, float *out) {
    for (int64_t b = 0; b < k / T_QK; b++) {
        const uint8_t *blk = row + b * 54;
        uint16_t dh;
        memcpy(&dh, blk + 52, 2);
        const float d = t_fp16_to_float(dh);
        for (int n = 0; n < 5; n++)
            for (int m = 0; m < 32; m++) *out++ = (float)(t_trit(blk[m], n) - 1) * d;
        for (int n = 0; n < 5; n++)
            for (int m = 0; m < 16; m++) *out++ = (float)(t_trit(blk[32 + m], n) - 1) * d;
        for (int n = 0; n < 4; n++)
            for (int j = 0; j < 4; j++) *out++ = (float)(t_trit(blk[48 + j], n) - 1) * d;
    }
}

/* quantize_row_q8_K_ref, with lrintf for nearest_int (both round half to even in range). */
void t_quantize_q8_K(const float *x, int64_t k, t_block_q8_K *y) {
    for (int64_t b = 0; b < k / T_QK; b++, x += T_QK, y++) {
        float max = 0, amax = 0;
        for (int j = 0; j < T_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        memset(y, 0, sizeof *y);
        if (amax == 0) continue;
        const float iscale = -127.f / max;
        for (int j = 0; j < T_QK; j++) {
            const long v = lrintf(iscale * x[j]);
            y->qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < T_QK / 16; j++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += y->qs[16 * j + i];
            y->bsums[j] = (int16_t)s;
        }
        y->d = 1 / iscale;
    }
}
