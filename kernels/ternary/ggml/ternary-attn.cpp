// Prompt attention (FLASH_ATTN_EXT with >= 64 query rows): ggml's tiled flash attention
// (ggml-cpu/ops.cpp, ggml_compute_forward_flash_attn_ext_tiled) reorganized, with every row's arithmetic
// unchanged, so the output is bitwise ggml's.
//
// What ggml does per (query head, tile of 64 query rows) and per tile of 64 keys: convert the mask tile
// f16 -> f32 and test it for -inf one element at a time, convert the key tile f16 -> f32 transposed one
// element at a time (a table lookup and a strided store each), convert the value tile; then the two small
// GEMMs (simd_gemm) and the online softmax. In a 512-token prefill of the 2B4T shape those conversions were
// ~40% of the attention time (perf annotate), repeated for each of the 4 query heads that share a key/value
// head (GQA). Here a work item is (key/value head, query tile): the mask, key and value tiles are converted
// once for its 4 query heads, vectorized (ggml_cpu_fp16_to_fp32; whole key tiles converted and transposed
// in registers), and then each head runs exactly ggml's sequence: simd_gemm for Q K^T, ggml_vec_scale_f32,
// the -inf padding, ggml_vec_add_f32 of the mask, the row maximum (tile_row_max: ggml_vec_max_f32's value
// in 8 lanes, see there), expf, ggml_vec_soft_max_f32, simd_gemm for the values, the final 1/S scale - the
// same functions, compiled with the same flags, on the same values in the same order. The conversions are
// exact, and key/value buffers keep ggml's contents between tiles (stale columns past a short last tile
// included).
//
// Taken: f32 Q, f16 K and V, f16 mask broadcast over heads, no ALiBi, softcap or sinks, >= 64 query rows
// (where ggml runs the tiled path). Anything else stays ggml's. BITNET_ATTN=0 leaves all of it to ggml.
// Only difference: ggml's tiles follow its thread chunks, ours are aligned to 64 rows; where a whole
// key tile is masked for one grouping and not the other, a row that sees only -inf there adds 0 * V
// (ggml's own result then depends on its thread count in the same way: the sign of an exact zero at most).

#include "ternary-buft.h"

#include "common.h"
#include "simd-gemm.h"
#include "vec.h"

#if defined(__AVX__) && defined(__F16C__)
#    include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace bitnet_ggml {

namespace {

constexpr int QT = GGML_FA_TILE_Q;   // 64 query rows per tile, as ggml
constexpr int KT = GGML_FA_TILE_KV;  // 64 keys per tile, as ggml

bool attn_on() {
    static const bool on = [] {
        const char * env = std::getenv(BITNET_ENV_ATTN);
        return !(env && std::strcmp(env, "0") == 0);
    }();
    return on;
}

struct scratch {
    std::vector<float> q, vkq, s, m, kq, mask, kf, kr, vf;
};

// The maximum of one row of a key tile, the value ggml_vec_max_f32 gives, without its chain of dependent
// scalar maxima (a 4-cycle vmaxss per key: ~60% of attn_item's own time in a 512-token prefill, perf).
// Eight lanes of ggml's MAX(a, b) = a > b ? a : b, then the lanes the same way: the same maximum, at most
// with another sign of a zero maximum, which changes no result below (the max is only compared with -inf
// and taken by fmaxf into M; x - (+0) and x - (-0) differ only in the sign of a zero, whose expf is 1
// either way, and M - Mnew is computed only when Mnew > M). A NaN in the row: ggml's own loop, whose
// result depends on where the NaN is.
static_assert(KT % 8 == 0, "tile_row_max takes 8 keys at a time");
float tile_row_max(const float * x) {
#if defined(__GNUC__)
    typedef float v8f __attribute__((vector_size(32)));
    typedef int   v8i __attribute__((vector_size(32)));
    v8f m   = { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY };
    v8i nan = {};
    for (int i = 0; i < KT; i += 8) {
        v8f v;
        std::memcpy(&v, x + i, sizeof v);
        m = m > v ? m : v;
        nan |= v != v;
    }
    bool any_nan = false;
    float max    = -INFINITY;
    for (int l = 0; l < 8; l++) {
        any_nan = any_nan || nan[l] != 0;
        max     = max > m[l] ? max : m[l];
    }
    if (!any_nan) {
        return max;
    }
#endif
    float max_ggml;
    ggml_vec_max_f32(KT, &max_ggml, x);
    return max_ggml;
}

// A whole key tile (kv == KT, DK a multiple of 8) straight from its f16 rows to kf[dk][key]: 8 keys x 8
// dims converted (exact, as ggml_cpu_fp16_to_fp32) and transposed in registers, instead of converting
// rows into kr and copying them column by column (one scalar load and store per element). False: not
// taken (no F16C in this build, or a short last tile), the caller does it the plain way.
bool keys_transposed(const char * k0, size_t row_bytes, int kv, int64_t DK, float * kf) {
#if defined(__AVX__) && defined(__F16C__)
    if (kv != KT || DK % 8 != 0) {
        return false;
    }
    for (int j0 = 0; j0 < KT; j0 += 8) {
        for (int64_t d0 = 0; d0 < DK; d0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) {
                const auto * row = (const ggml_fp16_t *) (k0 + (j0 + i) * row_bytes) + d0;
                r[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) row));
            }
            __m256 t[8], u[8];
            for (int i = 0; i < 8; i += 2) {
                t[i]     = _mm256_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                u[i]     = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
                u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
                u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
            }
            for (int i = 0; i < 4; i++) {  // dim d0 + i: keys j0..j0+3 from u[i], j0+4..j0+7 from u[i + 4]
                _mm256_storeu_ps(kf + (d0 + i) * KT + j0, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
                _mm256_storeu_ps(kf + (d0 + i + 4) * KT + j0, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
            }
        }
    }
    return true;
#else
    (void) k0, (void) row_bytes, (void) kv, (void) DK, (void) kf;
    return false;
#endif
}

}  // namespace

bool attn_takes(const ggml_tensor * op) {
    if (op->op != GGML_OP_FLASH_ATTN_EXT || !attn_on()) {
        return false;
    }
    const ggml_tensor *q = op->src[0], *k = op->src[1], *v = op->src[2], *mask = op->src[3];
    float scale = 1.0f, max_bias = 0.0f, softcap = 0.0f;
    std::memcpy(&scale, (const float *) op->op_params + 0, sizeof(float));
    std::memcpy(&max_bias, (const float *) op->op_params + 1, sizeof(float));
    std::memcpy(&softcap, (const float *) op->op_params + 2, sizeof(float));
    const int32_t prec = op->op_params[3];
    return (prec == GGML_PREC_DEFAULT || prec == GGML_PREC_F32) && q->type == GGML_TYPE_F32 &&
           k->type == GGML_TYPE_F16 && v->type == GGML_TYPE_F16 && op->src[4] == nullptr && max_bias == 0.0f &&
           softcap == 0.0f && q->ne[1] >= QT && q->ne[3] == 1 && k->ne[3] == 1 && v->ne[3] == 1 &&
           k->ne[2] == v->ne[2] && q->ne[2] % k->ne[2] == 0 && q->ne[0] == k->ne[0] && k->ne[1] == v->ne[1] &&
           q->nb[0] == sizeof(float) && k->nb[0] == sizeof(ggml_fp16_t) && v->nb[0] == sizeof(ggml_fp16_t) &&
           op->type == GGML_TYPE_F32 && op->nb[0] == sizeof(float) && op->ne[0] == v->ne[0] &&
           (!mask || (mask->type == GGML_TYPE_F16 && mask->ne[2] == 1 && mask->ne[3] == 1 &&
                      mask->ne[0] >= k->ne[1] && mask->ne[1] >= q->ne[1]));
}

// Item i of nq*ng: the query tiles from the last (the most keys under a causal mask) to the first.
static void attn_item(const ggml_tensor * dst, int64_t item, scratch & w) {
    const ggml_tensor *q = dst->src[0], *k = dst->src[1], *v = dst->src[2], *mask = dst->src[3];
    const int64_t DK = k->ne[0], DV = v->ne[0], N = q->ne[1], nkv = k->ne[1];
    const int64_t ng = k->ne[2], rk = q->ne[2] / ng, nq = (N + QT - 1) / QT;
    const int64_t t = nq - 1 - item / ng, g = item % ng;
    const int64_t iq1 = t * QT, rows = std::min<int64_t>(QT, N - iq1);
    float         scale;
    std::memcpy(&scale, (const float *) dst->op_params + 0, sizeof(float));

    w.q.assign(rk * QT * DK, 0.0f);
    w.vkq.assign(rk * QT * DV, 0.0f);
    w.s.assign(rk * QT, 0.0f);
    w.m.assign(rk * QT, -INFINITY);
    w.kq.resize(QT * KT);
    w.mask.assign(QT * KT, 0.0f);
    w.kf.assign(DK * KT, 0.0f);
    w.kr.resize(KT * DK);
    w.vf.assign(KT * DV, 0.0f);
    for (int64_t h = 0; h < rk; h++) {
        for (int64_t r = 0; r < rows; r++) {
            std::memcpy(&w.q[(h * QT + r) * DK], (const char *) q->data + (iq1 + r) * q->nb[1] + (g * rk + h) * q->nb[2],
                        DK * sizeof(float));
        }
    }
    for (int64_t ic = 0; ic < nkv; ic += KT) {
        const int kv = (int) std::min<int64_t>(KT, nkv - ic);
        if (mask) {  // ggml: mask32 = slope * f32(mask) with slope 1 (no ALiBi); rows past `rows` stay 0
            bool skip = true;
            for (int64_t r = 0; r < rows; r++) {
                float * mr = &w.mask[r * KT];
                ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) mask->data + (iq1 + r) * mask->nb[1]) + ic, mr, kv);
                for (int j = kv; j < KT; j++) {
                    mr[j] = -INFINITY;
                }
                for (int j = 0; j < kv && skip; j++) {
                    skip = mr[j] == -INFINITY;
                }
            }
            if (skip) {
                continue;
            }
        }
        // keys: f32 rows, then transposed to kf[dk][key] (columns past kv keep the previous tile's, as ggml)
        const char * k0 = (const char *) k->data + ic * k->nb[1] + g * k->nb[2];
        if (!keys_transposed(k0, k->nb[1], kv, DK, w.kf.data())) {
            for (int j = 0; j < kv; j++) {
                ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) (k0 + j * k->nb[1]), &w.kr[j * DK], DK);
            }
            for (int64_t d = 0; d < DK; d++) {
                float * kd = &w.kf[d * KT];
                for (int j = 0; j < kv; j++) {
                    kd[j] = w.kr[j * DK + d];
                }
            }
        }
        for (int j = 0; j < kv; j++) {
            ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) v->data + (ic + j) * v->nb[1] + g * v->nb[2]),
                                  &w.vf[j * DV], DV);
        }
        for (int64_t h = 0; h < rk; h++) {
            float * KQ = w.kq.data();
            float * S  = &w.s[h * QT];
            float * M  = &w.m[h * QT];
            float * VK = &w.vkq[h * QT * DV];
            std::memset(KQ, 0, QT * KT * sizeof(float));
            simd_gemm(KQ, &w.q[h * QT * DK], w.kf.data(), (int) rows, (int) DK, KT);
            ggml_vec_scale_f32(QT * KT, KQ, scale);
            if (kv < KT) {
                for (int64_t r = 0; r < rows; r++) {
                    for (int j = kv; j < KT; j++) {
                        KQ[r * KT + j] = -INFINITY;
                    }
                }
            }
            if (mask) {
                ggml_vec_add_f32((int) (rows * KT), KQ, KQ, w.mask.data());
            }
            for (int64_t r = 0; r < rows; r++) {
                float * row = KQ + r * KT;
                const float tile_max = tile_row_max(row);
                if (tile_max == -INFINITY) {
                    std::memset(row, 0, KT * sizeof(float));  // ggml: skip[tq], then the row is zeroed
                    continue;
                }
                const float Mold = M[r];
                const float Mnew = fmaxf(Mold, tile_max);
                if (Mnew > Mold) {
                    const float ms = expf(Mold - Mnew);
                    ggml_vec_scale_f32((int) DV, VK + r * DV, ms);
                    S[r] *= ms;
                }
                M[r] = Mnew;
                S[r] += ggml_vec_soft_max_f32(KT, row, row, Mnew);
            }
            simd_gemm(VK, KQ, w.vf.data(), (int) rows, KT, (int) DV);
        }
    }
    for (int64_t h = 0; h < rk; h++) {
        for (int64_t r = 0; r < rows; r++) {
            float *     VK    = &w.vkq[(h * QT + r) * DV];
            const float S     = w.s[h * QT + r];
            const float S_inv = S == 0.0f ? 0.0f : 1.0f / S;
            ggml_vec_scale_f32((int) DV, VK, S_inv);
            // permute(0, 2, 1, 3), as ggml writes it
            const int64_t i1 = iq1 + r, i2 = g * rk + h;
            std::memcpy((char *) dst->data + (i2 + i1 * dst->ne[1]) * dst->nb[1], VK, dst->nb[1]);
        }
    }
}

void attn_run(const ggml_compute_params * params, ggml_tensor * dst) {
    static thread_local scratch w;
    static const bool report = [] {  // with GGML_CPU_VARIANT_REPORT: say once that ours runs
        if (std::getenv(BITNET_ENV_VARIANT_REPORT)) {
            fprintf(stderr, BITNET_REPORT_ATTN);
        }
        return true;
    }();
    (void) report;
    const ggml_tensor * q     = dst->src[0];
    const int64_t       items = (q->ne[1] + QT - 1) / QT * dst->src[1]->ne[2];
    if (params->ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, params->nth);
    }
    ggml_barrier(params->threadpool);
    for (int64_t i = params->ith; i < items; i = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        attn_item(dst, i, w);
    }
}

}  // namespace bitnet_ggml
