// Internal to our ggml-cpu buffer type (ternary-buft.cpp) and the fused ops around its MUL_MATs
// (ternary-fuse.cpp): which tensors our kernels run, how threads split rows, activation quantization.
#pragma once

#include "bitnet_contract.h"
#include "bitnet_kernels.h"

#include "ggml-backend.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// The graph loop's hook (patch 0012, ternary-fuse.cpp): nodes after node_n computed along with it, or 0.
extern "C" int ggml_backend_cpu_ternary_fuse(const struct ggml_cgraph * cgraph, int node_n,
                                             const struct ggml_compute_params * params);

namespace bitnet_ggml {

inline bool is_ternary(ggml_type t) { return t == GGML_TYPE_TQ2_0 || t == GGML_TYPE_TQ1_0; }

inline bitnet_src_type src_type(ggml_type t) { return t == GGML_TYPE_TQ1_0 ? BITNET_SRC_TQ1_0 : BITNET_SRC_TQ2_0; }

// A weight [K x rows] (ggml ne0 = K, ne1 = rows) our kernels can take.
inline bool shape_ok(const ggml_tensor * w) {
    return is_ternary(w->type) && ggml_n_dims(w) == 2 && w->ne[0] % BITNET_QK == 0 && ggml_is_contiguous(w);
}

// The fp16 or bf16 tied embedding / output head (BitNet's lm_head is token_embd.weight itself), left in
// ggml's own host buffer (mapped, not copied); MUL_MAT with it runs bitnet_gemv_f16 / _bf16 (one column) or
// bitnet_gemm_f16 / _bf16 (several, each bitwise the GEMV's) with f32 activations: exact products, where
// ggml's own path first rounds the activation to fp16 / bf16.
inline bool is_head(const ggml_tensor * w) {
    // only where our fp16 GEMV is vectorized; elsewhere (sse42/scalar builds) ggml's path is faster
    return bitnet_gemv_f16_native() && (w->type == GGML_TYPE_F16 || w->type == GGML_TYPE_BF16) &&
           w->buffer != nullptr && ggml_backend_buffer_is_host(w->buffer) && ggml_n_dims(w) == 2 &&
           w->ne[0] % 64 == 0 && ggml_is_contiguous(w) &&
           (std::strcmp(w->name, "token_embd.weight") == 0 || std::strcmp(w->name, "output.weight") == 0);
}

// How threads split an op's rows (BITNET_SPLIT, read once). Default: guided chunks (bitnet_chunks) taken
// from the threadpool's shared chunk counter, so a thread that lost its core to another process leaves
// its unstarted rows to the others instead of holding them at the next barrier; chunks of at least
// min_bytes of weights (the counter and a restarted prefetch stream cost ~0.1 us each) and at most
// max_bytes (what a descheduled thread can hold up: ~30 us of streaming). "static" is the previous fixed
// split (bitnet_split_rows) for A/B runs; "guided:D:MIN_KIB:MAX_KIB" sets the plan for experiments.
// Either way each row is computed the same way, so the output is bitwise the same.
struct split_plan {
    int     divisor   = 2;
    int64_t min_bytes = 64 << 10;
    int64_t max_bytes = 1 << 20;
};

inline const split_plan & split() {
    static const split_plan plan = [] {
        split_plan p;
        const char * env = std::getenv(BITNET_ENV_SPLIT);
        long long    mn = 0, mx = 0;
        int          d  = 0;
        if (env && std::strcmp(env, "static") == 0) {
            p.divisor = 0;
        } else if (env && std::sscanf(env, "guided:%d:%lld:%lld", &d, &mn, &mx) == 3 && d >= 1 && mn >= 0 && mx >= 0) {
            p.divisor   = d;
            p.min_bytes = (int64_t) mn << 10;
            p.max_bytes = (int64_t) mx << 10;
        } else if (env && *env && std::strcmp(env, "guided") != 0) {
            GGML_LOG_WARN("bitnet: %s=%s not understood (static | guided | guided:D:MIN_KIB:MAX_KIB); guided\n",
                          BITNET_ENV_SPLIT, env);
        }
        return p;
    }();
    return plan;
}

// The chunk plan of an op with `rows` rows of `work_per_row` bytes x columns, on nth threads.
// min_rows: a floor under the chunks' row counts (GEMMs: gemm_min_rows), whatever the byte bounds say.
inline bitnet_chunks make_chunks(int64_t rows, int64_t unit_rows, int64_t work_per_row, int nth,
                                 int64_t min_rows = 0) {
    const split_plan & p = split();
    const int64_t      w = work_per_row > 0 ? work_per_row : 1;
    bitnet_chunks      c;
    const int rc = bitnet_chunks_init(&c, rows, unit_rows, std::max((p.min_bytes + w - 1) / w, min_rows),
                                      std::max(p.max_bytes / w, min_rows), nth, nth > 1 ? p.divisor : 0);
    GGML_ASSERT(rc == BITNET_OK);
    return c;
}

// The smallest row chunk of a ternary GEMM of ncols columns. By the byte bounds a 512-column prompt chunk
// was one tile of rows (32), and every chunk then streamed all the columns' activations (1.3-3.5 MiB) from
// L3 again for 32 rows of weights; from 256 rows on, the GEMMs keep a column chunk's activations in L2
// across the chunk's row groups. 2B4T pp512, 2 threads, AMX: 354 -> 368 t/s (with packed activations
// 368 -> 397); no AMX and AVX2 unchanged. Decode and small batches (< 64 columns) keep the byte bounds.
inline int64_t gemm_min_rows(int64_t ncols) { return ncols >= 64 ? 256 : 0; }

// Runs run(r0, r1) on this thread's chunks: chunk ith first, then the indices the threadpool's counter
// hands out. ith 0 must have set the counter to nth before a barrier all threads passed since their
// previous use of it (ggml's mul_mat protocol: every node ends with a barrier).
template <class F> void for_my_chunks(const ggml_compute_params * params, bitnet_chunks & c, F && run) {
    int64_t r0 = 0, r1 = 0;
    for (int64_t i = params->ith; bitnet_chunks_get(&c, i, &r0, &r1);
         i = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        if (r0 < r1) {
            run(r0, r1);
        }
        if (c.divisor == 0) {
            break;  // static: one chunk per thread, no counter
        }
    }
}


inline int64_t gemm_row_groups() {
    static const int64_t g = bitnet_get_kernel_info().gemm_row_groups;
    return g;
}

// True if w is a ternary weight in our buffer that was repacked for our kernels (not left to ggml).
bool runs_ours(const ggml_tensor * w);

// The layout w is repacked into: the build's preferred one (tuning.json), or BITNET_LAYOUT=tk1|tk2 for
// every ternary weight (A/B runs: TK1 reads 18% fewer bytes and decodes trits; results are the same).
inline bitnet_layout layout_of(const ggml_tensor * w) {
    static const int forced = [] {
        const char * env = std::getenv(BITNET_ENV_LAYOUT);
        if (env && std::strcmp(env, "tk1") == 0) {
            return (int) BITNET_LAYOUT_TK1;
        }
        if (env && std::strcmp(env, "tk2") == 0) {
            return (int) BITNET_LAYOUT_TK2;
        }
        if (env && *env) {
            GGML_LOG_WARN("bitnet: %s=%s not understood (tk1 | tk2); the build's layout\n", BITNET_ENV_LAYOUT, env);
        }
        return -1;
    }();
    return forced >= 0 ? (bitnet_layout) forced : bitnet_preferred_layout(src_type(w->type));
}

// Bytes of our layout per weight row of w.
inline int64_t row_bytes(const ggml_tensor * w) {
    return (int64_t) bitnet_weights_size(layout_of(w), BITNET_GROUP_ROWS, w->ne[0]) / BITNET_GROUP_ROWS;
}

// Bytes of a ternary weight w in our layout.
inline size_t repacked_size(const ggml_tensor * w) { return bitnet_weights_size(layout_of(w), w->ne[1], w->ne[0]); }

// Bytes of w in our buffer: our layout's, or ggml's where that is more (a tensor we could not repack, a
// non-ternary code, keeps ggml's bytes there).
inline size_t alloc_size(const ggml_tensor * w) {
    if (!shape_ok(w)) {
        return ggml_nbytes(w);
    }
    const size_t ours = repacked_size(w);
    return ours > ggml_nbytes(w) ? ours : ggml_nbytes(w);
}

// Whether llama.cpp tagged a MUL_MAT for per-token activation quantization (patch 0006).
inline bool per_token(const ggml_tensor * mm) {
    return mm->op_params[BITNET_OP_PARAM_ACT_QUANT] == BITNET_ACT_PER_TOKEN_TAG;
}

// Work buffer of a MUL_MAT with a [K x ncols] activation, enough for the fused group it may lead
// (ternary-fuse.cpp): the quantized columns, then for one column a private K-float row per thread, or for
// 16+ columns on an AMX host the packed copy of the quantized columns (bitnet_gemm_pack, 64-byte aligned).
inline size_t fused_scratch_offset(int64_t K, int64_t ncols) {
    return (bitnet_act_size(K, ncols) + 63) / 64 * 64;
}
inline size_t fused_work_size(int64_t K, int64_t ncols, int nth) {
    const size_t pack = bitnet_gemm_pack_size(K, ncols);
    return fused_scratch_offset(K, ncols) +
           std::max<size_t>(ncols == 1 ? (size_t) nth * (size_t) K * sizeof(float) : 0, pack ? pack + 64 : 0);
}
// Where this op's threads pack the quantized columns for the AMX GEMM, or null (no AMX, < 16 columns, or a
// work buffer planned before AMX was switched on).
inline void * pack_area(const ggml_compute_params * params, int64_t K, int64_t ncols) {
    const size_t pack = bitnet_gemm_pack_size(K, ncols), off = fused_scratch_offset(K, ncols);
    if (!pack || params->wsize < off + pack + 64) {
        return nullptr;
    }
    const uintptr_t p = ((uintptr_t) params->wdata + off + 63) & ~(uintptr_t) 63;
    return (void *) p;
}

// Prompt attention (ternary-attn.cpp): whether we run this FLASH_ATTN_EXT node, and running it.
bool attn_takes(const ggml_tensor * op);
void attn_run(const ggml_compute_params * params, ggml_tensor * dst);

// Quantizes this thread's share of the ncols columns of x (K floats each, column c at x + c*ldx floats)
// into xq (K/256 blocks per column): whole columns when there are at least as many as threads, else
// (column, 256-block) pairs, each thread taking the whole column's amax first in per-token mode. The
// caller puts a barrier after it before any thread reads xq. With pk (pack_area) a thread that quantized
// whole columns also packs them there; returns pk when every column was packed (whole columns), so the GEMMs
// after the barrier may read it, else null.
const void * quantize_share(const ggml_compute_params * params, const float * x, int64_t ldx, int64_t K,
                            int64_t ncols, bool per_tok, bitnet_act_block * xq, void * pk = nullptr);

}  // namespace bitnet_ggml
