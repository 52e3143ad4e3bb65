// Fused ops around our ternary MUL_MATs: ggml-cpu's graph loop offers every node to
// ggml_backend_cpu_ternary_fuse (patch 0012) before computing it; where a BitNet chain starts there, the
// chain runs here as one op and the loop skips its other nodes.
//
// The chains (llama.cpp's bitnet graph; patch 0012 also orders Q/K/V and up/gate next to each other):
//
//   [RMS_NORM, MUL(norm weight)]?  then 1-3 MUL_MATs of ours sharing that input, each with an optional
//   MUL by a one-element `.scale`, then an optional epilogue:
//     ADD(residual)                       after one MUL_MAT          (attn_output, ffn_down)
//     RELU, SQR, MUL(gate^2, up)          after two: up, then gate   (ffn_up + ffn_gate)
//
// As one op: (1) each thread normalizes and quantizes its columns (one decoded column: every thread
// normalizes the whole column into its own scratch and quantizes its share of the blocks), barrier;
// (2) threads take row chunks of all the MUL_MATs from one counter, and each chunk's epilogue (scale,
// residual, relu^2 gate) runs on its rows right after its matmul. Per layer that is 4 ops and 8 barriers
// instead of ~20 nodes and ~30 barriers, the activations are quantized once for Q/K/V and for up/gate,
// and the norm (a sequential double sum per row in ggml) runs 16 rows side by side (bitnet_rms_norm).
//
// Every float is computed as ggml's unfused nodes compute it (src/norm.c; the kernels' numerics are the
// same as for a lone MUL_MAT), so the outputs are bitwise equal with the fusion off (BITNET_FUSE=0) or on:
// tests/ops/test_bitnet_ops.cpp checks that on real graphs. Buffers: every result goes to the node that
// holds it in the unfused graph (a matmul's scaled result to its MUL node), and phase 2 writes only after
// the barrier, when no thread reads the float activations any more (ggml-alloc may give a later node of the
// chain the memory of the normalized input, whose last reader in the unfused graph is the last MUL_MAT).

#include "ternary-buft.h"

#include <atomic>

namespace bitnet_ggml {
namespace {

bool fusion_on() {
    static const bool on = [] {
        const char * env = std::getenv(BITNET_ENV_FUSE);
        return !(env && std::strcmp(env, "0") == 0);
    }();
    return on;
}

struct part {
    const ggml_tensor * w     = nullptr;  // our repacked weight
    ggml_tensor *       mm    = nullptr;  // the MUL_MAT node
    const ggml_tensor * scale = nullptr;  // one F32 value the MUL_MAT's result is multiplied by, or null
    ggml_tensor *       y     = nullptr;  // the node that holds the (scaled) result: the MUL, else mm
    int                 y_idx = -1;
};

enum class epilogue { none, add, relu2 };

struct chain {
    const ggml_tensor * norm_src = nullptr;  // input of the fused RMS_NORM, or null (no norm)
    const ggml_tensor * norm_w   = nullptr;
    float               eps      = 0.0f;
    const ggml_tensor * x        = nullptr;  // the F32 activations all MUL_MATs read
    ggml_tensor *       x_node   = nullptr;  // the norm's MUL node when the norm is fused (x written there)
    part                p[3];
    int                 n        = 0;
    epilogue            epi      = epilogue::none;
    ggml_tensor *       out      = nullptr;  // add / relu2: the epilogue's last node
    const ggml_tensor * other    = nullptr;  // add: the residual
    int                 end      = 0;        // one past the chain's last node
};

bool computes(const ggml_tensor * t) { return (t->flags & GGML_TENSOR_FLAG_COMPUTE) != 0; }

// F32 [ne0 x ne1] with contiguous rows
bool rows_f32(const ggml_tensor * t) {
    return t->type == GGML_TYPE_F32 && t->ne[2] == 1 && t->ne[3] == 1 && t->nb[0] == sizeof(float);
}

const ggml_tensor * other_src(const ggml_tensor * node, const ggml_tensor * t) {
    return node->src[0] == t ? node->src[1] : node->src[1] == t ? node->src[0] : nullptr;
}

int next_node(const ggml_cgraph * g, int j) {
    while (j < g->n_nodes && ggml_op_is_empty(g->nodes[j]->op)) {
        j++;
    }
    return j;
}

bool match(const ggml_cgraph * g, const int i0, chain & c) {
    const int n = g->n_nodes;
    int       j = i0, x_idx = -1;

    ggml_tensor * t = g->nodes[i0];
    if (t->op == GGML_OP_RMS_NORM && i0 + 1 < n) {
        ggml_tensor *       mul = g->nodes[i0 + 1];
        const ggml_tensor * nw  = mul->op == GGML_OP_MUL ? other_src(mul, t) : nullptr;
        if (nw && computes(t) && computes(mul) && rows_f32(t->src[0]) && rows_f32(mul) && ggml_are_same_shape(t, mul) &&
            nw->type == GGML_TYPE_F32 && ggml_nelements(nw) == t->ne[0] && ggml_is_contiguous(nw) &&
            ggml_node_has_n_uses(g, i0, 1)) {
            c.norm_src = t->src[0];
            c.norm_w   = nw;
            std::memcpy(&c.eps, t->op_params, sizeof(float));
            c.x      = mul;
            c.x_node = mul;
            x_idx    = i0 + 1;
            j        = i0 + 2;
        }
    } else if (t->op != GGML_OP_MUL_MAT) {
        return false;
    }

    for (int k = next_node(g, j); k < n && c.n < 3; k = next_node(g, j)) {
        ggml_tensor * mm = g->nodes[k];
        if (mm->op != GGML_OP_MUL_MAT || !computes(mm) || !runs_ours(mm->src[0])) {
            break;
        }
        const ggml_tensor * x = mm->src[1];
        if ((c.x && x != c.x) || (c.n > 0 && per_token(mm) != per_token(c.p[0].mm)) || !rows_f32(x) ||
            !rows_f32(mm) || x->ne[0] != mm->src[0]->ne[0]) {
            break;
        }
        c.x    = x;
        part & p = c.p[c.n++];
        p        = part{ mm->src[0], mm, nullptr, mm, k };
        j        = k + 1;
        if (j < n) {  // ggml_mul(mm, scale), as llama.cpp's build_lora_mm makes it
            ggml_tensor * m = g->nodes[j];
            if (m->op == GGML_OP_MUL && m->src[0] == mm && computes(m) && m->src[1]->type == GGML_TYPE_F32 &&
                ggml_nelements(m->src[1]) == 1 && rows_f32(m) && ggml_are_same_shape(m, mm) &&
                ggml_node_has_n_uses(g, k, 1)) {
                p.scale = m->src[1];
                p.y     = m;
                p.y_idx = j;
                j++;
            }
        }
    }
    if (c.n == 0) {
        return false;
    }
    if (c.norm_src && !ggml_node_has_n_uses(g, x_idx, c.n)) {
        return false;  // the normalized activations have other readers: ggml runs the norm, we start at the MUL_MAT
    }

    if (c.n == 1) {  // + ADD(residual)
        const int k = next_node(g, j);
        if (k < n) {
            ggml_tensor *       a = g->nodes[k];
            const ggml_tensor * o = a->op == GGML_OP_ADD ? other_src(a, c.p[0].y) : nullptr;
            if (o && o != c.p[0].y && computes(a) && rows_f32(a) && rows_f32(o) && ggml_are_same_shape(a, o) &&
                ggml_are_same_shape(a, c.p[0].y) && ggml_node_has_n_uses(g, c.p[0].y_idx, 1)) {
                c.epi   = epilogue::add;
                c.out   = a;
                c.other = o;
                j       = k + 1;
            }
        }
    } else if (c.n == 2) {  // up, gate + RELU(gate), SQR, MUL(., up)
        const int k1 = next_node(g, j);
        const int k2 = k1 < n ? next_node(g, k1 + 1) : n;
        const int k3 = k2 < n ? next_node(g, k2 + 1) : n;
        if (k3 < n) {
            ggml_tensor * relu = g->nodes[k1];
            ggml_tensor * sqr  = g->nodes[k2];
            ggml_tensor * mul  = g->nodes[k3];
            if (relu->op == GGML_OP_UNARY && ggml_get_unary_op(relu) == GGML_UNARY_OP_RELU &&
                relu->src[0] == c.p[1].y && sqr->op == GGML_OP_SQR && sqr->src[0] == relu && mul->op == GGML_OP_MUL &&
                other_src(mul, sqr) == c.p[0].y && computes(relu) && computes(sqr) && computes(mul) &&
                rows_f32(relu) && rows_f32(sqr) && rows_f32(mul) && ggml_are_same_shape(relu, c.p[1].y) &&
                ggml_are_same_shape(sqr, relu) && ggml_are_same_shape(mul, sqr) &&
                ggml_are_same_shape(c.p[0].y, c.p[1].y) && ggml_node_has_n_uses(g, c.p[1].y_idx, 1) &&
                ggml_node_has_n_uses(g, k1, 1) && ggml_node_has_n_uses(g, k2, 1) &&
                ggml_node_has_n_uses(g, c.p[0].y_idx, 1)) {
                c.epi = epilogue::relu2;
                c.out = mul;
                j     = k3 + 1;
            }
        }
    }
    if (c.n == 1 && !c.norm_src && !c.p[0].scale && c.epi == epilogue::none) {
        return false;  // a lone MUL_MAT: the buffer type's compute_forward runs it
    }
    c.end = j;
    return true;
}

float value(const ggml_tensor * one) { return *(const float *) one->data; }

int64_t ld(const ggml_tensor * t) { return (int64_t) (t->nb[1] / sizeof(float)); }

// Phase 1: the activations of all columns, quantized into xq (per token or per 256-block).
// With pk (pack_area) the columns are packed for the AMX GEMM too; returns pk when all of them were, else null.
const void * quantize_phase(const ggml_compute_params * params, const chain & c, bitnet_act_block * xq, void * pk) {
    const int64_t K = c.x->ne[0], ncols = c.x->ne[1], nblk = K / BITNET_QK;
    const bool    pt = per_token(c.p[0].mm);
    if (!c.norm_src) {
        return quantize_share(params, (const float *) c.x->data, ld(c.x), K, ncols, pt, xq, pk);
    }
    const auto * src = (const float *) c.norm_src->data;
    const auto * nw  = (const float *) c.norm_w->data;
    if (ncols == 1) {  // every thread the whole column (the sum is sequential anyway), then its blocks
        float * tmp = (float *) ((char *) params->wdata + fused_scratch_offset(K, 1)) + (size_t) params->ith * K;
        bitnet_rms_norm(src, ld(c.norm_src), K, 1, nw, c.eps, tmp, K);
        quantize_share(params, tmp, K, K, 1, pt, xq);
        return nullptr;
    }
    auto *        x      = (float *) c.x_node->data;
    const int64_t nbatch = (ncols + 15) / 16;
    for (int64_t b = params->ith; b < nbatch; b += params->nth) {
        const int64_t c0 = 16 * b, nc = ncols - c0 < 16 ? ncols - c0 : 16;
        bitnet_rms_norm(src + c0 * ld(c.norm_src), ld(c.norm_src), K, nc, nw, c.eps, x + c0 * ld(c.x_node),
                        ld(c.x_node));
        for (int64_t col = c0; col < c0 + nc; col++) {
            const float * xc = x + col * ld(c.x_node);
            if (pt) {
                bitnet_quantize_act_per_token(xc, K, xq + col * nblk);
            } else {
                bitnet_quantize_act(xc, K, xq + col * nblk);
            }
            if (pk) {
                GGML_ASSERT(bitnet_gemm_pack(xq, K, ncols, nblk, col, col + 1, pk) == BITNET_OK);
            }
        }
    }
    return pk;
}

// The unscaled product into p.y's buffer (scaled in place when no epilogue follows: the epilogues
// apply the scale in their own pass).
void matmul_rows(const part & p, const bitnet_act_block * xq, const void * pk, int64_t ncols, int64_t r0, int64_t r1,
                 bool scale) {
    const bitnet_weights wt = { p.w->data, p.w->ne[1], p.w->ne[0], layout_of(p.w) };
    auto *               y  = (float *) p.y->data;
    const int rc = bitnet_matmul_packed(&wt, xq, pk, ncols, p.w->ne[0] / BITNET_QK, y, ld(p.y), r0, r1);
    GGML_ASSERT(rc == BITNET_OK);
    if (scale && p.scale) {
        bitnet_scale_rows(y, ld(p.y), ncols, r0, r1, value(p.scale));
    }
}

const float * scale_of(const part & p) { return p.scale ? (const float *) p.scale->data : nullptr; }

void run(const ggml_compute_params * params, const chain & c) {
    const int64_t K = c.x->ne[0], ncols = c.x->ne[1];
    GGML_ASSERT(params->wsize >= fused_work_size(K, ncols, params->nth));
    auto * xq = static_cast<bitnet_act_block *>(params->wdata);
    const void * pk = quantize_phase(params, c, xq, pack_area(params, K, ncols));

    // phase 2 plan: one chunk list per MUL_MAT (relu2: one list over the rows of up and gate together)
    const int64_t unit   = ncols == 1 ? BITNET_GROUP_ROWS : BITNET_GROUP_ROWS * gemm_row_groups();
    const int     nplans = c.epi == epilogue::relu2 ? 1 : c.n;
    bitnet_chunks plans[3];
    int64_t       first[4] = { 0, 0, 0, 0 };  // global index of each plan's chunk 0
    for (int i = 0; i < nplans; i++) {
        int64_t bytes = row_bytes(c.p[i].w);
        if (c.epi == epilogue::relu2) {
            bytes += row_bytes(c.p[1].w);
        }
        plans[i] = make_chunks(c.p[i].w->ne[1], unit, bytes * ncols, params->nth, gemm_min_rows(ncols));
        int64_t count = 0, r0, r1;
        while (bitnet_chunks_get(&plans[i], count, &r0, &r1)) {
            count++;
        }
        first[i + 1] = first[i] + count;
    }
    const bool guided = plans[0].divisor > 0;
    if (params->ith == 0 && guided) {
        ggml_threadpool_chunk_set(params->threadpool, params->nth);
    }
    ggml_barrier(params->threadpool);

    const auto chunk = [&](int i, int64_t r0, int64_t r1) {
        if (r0 >= r1) {
            return;
        }
        if (c.epi == epilogue::relu2) {
            matmul_rows(c.p[0], xq, pk, ncols, r0, r1, false);  // up
            matmul_rows(c.p[1], xq, pk, ncols, r0, r1, false);  // gate
            bitnet_relu2_mul_rows((float *) c.out->data, ld(c.out), (const float *) c.p[1].y->data, ld(c.p[1].y),
                                  scale_of(c.p[1]), (const float *) c.p[0].y->data, ld(c.p[0].y), scale_of(c.p[0]),
                                  ncols, r0, r1);
            return;
        }
        matmul_rows(c.p[i], xq, pk, ncols, r0, r1, c.epi == epilogue::none);
        if (c.epi == epilogue::add) {
            bitnet_scale_add_rows((float *) c.out->data, ld(c.out), (const float *) c.p[0].y->data, ld(c.p[0].y),
                                  scale_of(c.p[0]), (const float *) c.other->data, ld(c.other), ncols, r0, r1);
        }
    };
    int64_t r0 = 0, r1 = 0;
    if (!guided) {  // static split: chunk ith of every plan
        for (int i = 0; i < nplans; i++) {
            if (bitnet_chunks_get(&plans[i], params->ith, &r0, &r1)) {
                chunk(i, r0, r1);
            }
        }
        return;
    }
    int plan = 0;
    for (int64_t g = params->ith; g < first[nplans]; g = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        while (g >= first[plan + 1]) {
            plan++;
        }
        if (bitnet_chunks_get(&plans[plan], g - first[plan], &r0, &r1)) {  // a thread's indices only grow
            chunk(plan, r0, r1);
        }
    }
}

// With GGML_CPU_VARIANT_REPORT set: one stderr line the first time each kind of chain runs, e.g.
// "bitnet: fused chain rms_norm+mul_mat*3+scale" (tests/test_ops.py looks for them).
void report(const chain & c) {
    static const bool on = std::getenv(BITNET_ENV_VARIANT_REPORT) != nullptr;
    static std::atomic<uint32_t> seen{ 0 };
    if (!on) {
        return;
    }
    bool scaled = false;
    for (int i = 0; i < c.n; i++) {
        scaled = scaled || c.p[i].scale;
    }
    const uint32_t bit = 1u << ((c.norm_src ? 1 : 0) + 2 * (scaled ? 1 : 0) + 4 * (int) c.epi + 12 * (c.n - 1));
    if (seen.fetch_or(bit) & bit) {
        return;
    }
    char what[96];
    snprintf(what, sizeof what, "%smul_mat*%d%s%s", c.norm_src ? "rms_norm+" : "", c.n, scaled ? "+scale" : "",
             c.epi == epilogue::add ? "+add" : c.epi == epilogue::relu2 ? "+relu2" : "");
    fprintf(stderr, BITNET_REPORT_FUSED, what);
}

}  // namespace
}  // namespace bitnet_ggml

// Called by every thread for every node (patch 0012): returns how many nodes after node_n this call also
// computed (it computed node_n too), or 0 when no chain of ours starts at node_n. The decision depends on
// the graph alone, so all threads take the same one.
extern "C" int ggml_backend_cpu_ternary_fuse(const struct ggml_cgraph * cgraph, int node_n,
                                             const struct ggml_compute_params * params) {
    using namespace bitnet_ggml;
    const ggml_op op = cgraph->nodes[node_n]->op;
    if ((op != GGML_OP_RMS_NORM && op != GGML_OP_MUL_MAT) || !fusion_on()) {
        return 0;
    }
    chain c;
    if (!match(cgraph, node_n, c)) {
        return 0;
    }
    if (params->ith == 0) {
        report(c);
    }
    run(params, c);
    return c.end - 1 - node_n;
}
