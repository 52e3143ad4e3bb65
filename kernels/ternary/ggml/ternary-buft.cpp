// ggml-cpu "extra buffer type" for BitNet b1.58 ternary weights (TQ2_0, TQ1_0) and the fp16/bf16 head.
//
// Like ggml-cpu/repack.cpp: weights placed in this buffer type are re-laid-out at load time
// (set_tensor → bitnet_repack, or mapped from the repack cache of an earlier load: ternary-cache.cpp) and MUL_MAT with them runs our kernels on the CPU backend's own threads
// (compute_forward). GGUF files stay in upstream types. BITNET_KERNELS=0 in the environment disables
// the buffer type, so the same binary runs stock ggml (for A/B benchmarks and tests).
//
// The fp16 (or bf16) tied embedding/output head (token_embd.weight / output.weight) is not placed here: it
// stays in ggml's own (memory-mapped) buffer, unchanged, and a MUL_MAT with it runs bitnet_gemv_f16 (one
// column: decode) or bitnet_gemm_f16 (several: batched decode of several clients, all-logits runs; every
// column bitwise the GEMV's), which stream it faster than ggml's fp16 path (it is over half the bytes, and
// ggml's path is ~10% slower per byte) and keep the activations in f32. Copying it here cost 657 MB of RSS and its copy time at load for the 2B.
//
// Compiled into every CPU variant library by ggml-cpu-ternary.cmake; the variant's flags choose the
// kernels' ISA. ref: ggml/src/ggml-cpu/traits.h, repack.cpp.

#include "ternary-buft.h"
#include "ternary-cache.h"

#include "ggml-backend-impl.h"
#include "ggml-cpu.h"
#include "traits.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include <sys/mman.h>  // the buffer is mmap'd (POSIX); its repack cache is Linux only
#include <unistd.h>

ggml_backend_buffer_type_t ggml_backend_cpu_ternary_buffer_type(void);

namespace bitnet_ggml {

class tensor_traits : public ggml::cpu::tensor_traits {
  public:
    explicit tensor_traits(bool ours) : ours_(ours) {}

    bool work_size(int n_threads, const ggml_tensor * op, size_t & size) override {
        if (!ours_ || op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        size = fused_work_size(op->src[1]->ne[0], op->src[1]->ne[1], n_threads);  // >= what one MUL_MAT needs
        return true;
    }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        if (!ours_ || op->op != GGML_OP_MUL_MAT) {
            return false;  // ggml's own path runs on ggml's bytes (see repack())
        }
        const ggml_tensor * w = op->src[0];
        const ggml_tensor * x = op->src[1];
        const int64_t K = w->ne[0], rows = w->ne[1], ncols = x->ne[1];
        GGML_ASSERT(x->type == GGML_TYPE_F32 && x->ne[0] == K && x->ne[2] == 1 && x->ne[3] == 1);
        GGML_ASSERT(op->nb[0] == sizeof(float) && op->ne[0] == rows);

        // 1. quantize the activation columns to int8 blocks: per token (one scale per column, BitNet
        //    b1.58's definition) when llama.cpp tagged the node (patch 0006), else per 256-block (q8_K).
        auto * xq = static_cast<bitnet_act_block *>(params->wdata);
        GGML_ASSERT(params->wsize >= bitnet_act_size(K, ncols));
        const int64_t nblk = K / BITNET_QK;
        const void * pk = quantize_share(params, (const float *) x->data, (int64_t) (x->nb[1] / sizeof(float)), K,
                                         ncols, per_token(op), xq, pack_area(params, K, ncols));
        // 2. threads take chunks of output rows (all columns): GEMV chunks in 16-row groups, GEMM chunks in
        //    whole tiles; the chunk counter is reset here, before the barrier, like ggml's mul_mat does
        const bitnet_layout layout = layout_of(w);
        const int64_t unit = ncols == 1 ? BITNET_GROUP_ROWS : BITNET_GROUP_ROWS * gemm_row_groups();
        bitnet_chunks chunks = make_chunks(rows, unit, row_bytes(w) * ncols, params->nth, gemm_min_rows(ncols));
        if (params->ith == 0 && chunks.divisor > 0) {
            ggml_threadpool_chunk_set(params->threadpool, params->nth);
        }
        ggml_barrier(params->threadpool);

        const bitnet_weights wt = { w->data, rows, K, layout };
        for_my_chunks(params, chunks, [&](int64_t r0, int64_t r1) {
            const int rc = bitnet_matmul_packed(&wt, xq, pk, ncols, nblk, (float *) op->data,
                                                (int64_t) (op->nb[1] / sizeof(float)), r0, r1);
            GGML_ASSERT(rc == BITNET_OK);
        });
        return true;
    }

  private:
    bool ours_;
};

// Repack a weight at load, on several threads for big ones: the first write to each page of our buffer is
// a page fault that zeroes it (on VMs also the host backing it), and with the repack itself that was most
// of the load time (2B: ~0.6 s more than stock's, one thread). Threads take disjoint 16-row groups.
static int repack(const ggml_tensor * t, const void * data) {
    const bitnet_src_type st     = src_type(t->type);
    const bitnet_layout   layout = layout_of(t);
    const int64_t         rows = t->ne[1], k = t->ne[0], groups = (rows + BITNET_GROUP_ROWS - 1) / BITNET_GROUP_ROWS;
    const int64_t min_bytes = 1 << 20;  // per thread; below this a thread start costs more than it saves
    int nth = (int) std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), 8);
    nth     = (int) std::max<int64_t>(1, std::min<int64_t>(nth, (int64_t) ggml_nbytes(t) / min_bytes));
    nth     = (int) std::min<int64_t>(nth, groups);
    std::vector<int>         rc(nth, BITNET_OK);
    std::vector<std::thread> workers;
    for (int i = 1; i < nth; i++) {
        const auto part = [&, i] {
            rc[i] = bitnet_repack_groups(layout, st, data, rows, k, t->data, groups * i / nth, groups * (i + 1) / nth);
        };
        try {
            workers.emplace_back(part);
        } catch (const std::system_error &) {  // no thread to be had: do that part here
            part();
        }
    }
    rc[0] = bitnet_repack_groups(layout, st, data, rows, k, t->data, 0, groups / nth);
    for (auto & w : workers) {
        w.join();
    }
    for (int r : rc) {
        if (r != BITNET_OK) {
            return r;
        }
    }
    return BITNET_OK;
}

static tensor_traits g_ours(true);
static tensor_traits g_stock(false);

bool runs_ours(const ggml_tensor * w) {
    return w && w->buffer && w->buffer->buft == ggml_backend_cpu_ternary_buffer_type() &&
           w->extra == static_cast<ggml::cpu::tensor_traits *>(&g_ours);
}

// Threads split the (column, 256-block) pairs when there are fewer columns than threads, so a single
// decode column is not left to one thread while the others wait at the barrier; per token, each of them
// first takes the whole column's amax (K floats, from L1/L2).
const void * quantize_share(const ggml_compute_params * params, const float * x, int64_t ldx, int64_t K,
                            int64_t ncols, bool per_tok, bitnet_act_block * xq, void * pk) {
    const int64_t nblk   = K / BITNET_QK;
    const auto    column = [&](int64_t c) { return x + c * ldx; };
    if (ncols >= params->nth) {
        for (int64_t c = params->ith; c < ncols; c += params->nth) {
            if (per_tok) {
                bitnet_quantize_act_per_token(column(c), K, xq + c * nblk);
            } else {
                bitnet_quantize_act(column(c), K, xq + c * nblk);
            }
            if (pk) {
                GGML_ASSERT(bitnet_gemm_pack(xq, K, ncols, nblk, c, c + 1, pk) == BITNET_OK);
            }
        }
        return pk;
    }
    float   amax     = 0.0f;
    int64_t amax_col = -1;
    for (int64_t i = params->ith; i < ncols * nblk; i += params->nth) {
        const int64_t c = i / nblk, b = i % nblk;
        if (per_tok) {
            if (c != amax_col) {
                amax     = bitnet_act_amax(column(c), K);
                amax_col = c;
            }
            bitnet_quantize_act_scaled(column(c) + b * BITNET_QK, BITNET_QK, amax, xq + c * nblk + b);
        } else {
            bitnet_quantize_act(column(c) + b * BITNET_QK, BITNET_QK, xq + c * nblk + b);
        }
    }
    return nullptr;
}

// The fp16/bf16 head: a MUL_MAT with any number of columns (decode: one; llama-server batching the decode
// tokens of several clients, or a run that needs all logits: more) runs our GEMV or, with 2+ columns, our
// GEMM, whose every column is bitwise the GEMV of that column: a sequence's logits do not depend on how
// many others share its batch, and they keep f32 activations (ggml's own path rounds them to fp16 first).
// Other shapes (batched src1, non-f32) return false and ggml's own MUL_MAT runs on the unchanged bytes.
class head_traits : public ggml::cpu::tensor_traits {
  public:
    bool work_size(int /*n_threads*/, const ggml_tensor * /*op*/, size_t & /*size*/) override { return false; }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        const ggml_tensor * w = op->src[0];
        const ggml_tensor * x = op->src[1];
        if (op->op != GGML_OP_MUL_MAT || x->type != GGML_TYPE_F32 || op->type != GGML_TYPE_F32 || x->ne[1] < 1 ||
            x->ne[2] != 1 || x->ne[3] != 1 || x->nb[0] != sizeof(float) || x->nb[1] % sizeof(float) != 0 ||
            op->nb[0] != sizeof(float) || op->nb[1] % sizeof(float) != 0) {
            return false;
        }
        // the largest op of a token (the 128k-row head is over half its bytes): guided chunks here matter
        // most; the counter needs one barrier of its own (after ith 0 reset it). Chunks are whole 16-row
        // groups (the GEMM's row blocks), sized by the columns' work as the ternary GEMM's are.
        const int64_t rows = w->ne[1], ncols = x->ne[1];
        bitnet_chunks chunks =
            make_chunks(rows, BITNET_GROUP_ROWS, w->ne[0] * (int64_t) sizeof(uint16_t) * ncols, params->nth);
        if (chunks.divisor > 0) {
            if (params->ith == 0) {
                ggml_threadpool_chunk_set(params->threadpool, params->nth);
            }
            ggml_barrier(params->threadpool);
        }
        const bool     bf16 = w->type == GGML_TYPE_BF16;
        const auto     gemv = bf16 ? bitnet_gemv_bf16 : bitnet_gemv_f16;
        const auto     gemm = bf16 ? bitnet_gemm_bf16 : bitnet_gemm_f16;
        const auto *   wd   = (const uint16_t *) w->data;
        const int64_t  ldw  = (int64_t) (w->nb[1] / sizeof(uint16_t));
        const auto *   xd   = (const float *) x->data;
        auto *         yd   = (float *) op->data;
        const int64_t  ldx = (int64_t) (x->nb[1] / sizeof(float)), ldy = (int64_t) (op->nb[1] / sizeof(float));
        for_my_chunks(params, chunks, [&](int64_t r0, int64_t r1) {
            const int rc = ncols == 1 ? gemv(wd, w->ne[0], ldw, xd, yd, r0, r1)
                                      : gemm(wd, w->ne[0], ldw, xd, ldx, ncols, yd, ldy, r0, r1);
            GGML_ASSERT(rc == BITNET_OK);
        });
        return true;
    }
};

static head_traits g_head;

// FLASH_ATTN_EXT of a prompt (ternary-attn.cpp): ggml's tiled attention with the conversions shared by the
// query heads of a key/value head; work buffer: its own (ggml's size for the node stays as it is).
class attn_traits : public ggml::cpu::tensor_traits {
  public:
    bool work_size(int /*n_threads*/, const ggml_tensor * /*op*/, size_t & /*size*/) override { return false; }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        if (params->use_ref || !attn_takes(op)) {
            return false;
        }
        attn_run(params, op);
        return true;
    }
};

static attn_traits g_attn;

}  // namespace bitnet_ggml

// Our buffer: page-aligned memory from mmap with the repack cache of its tensors (ternary-cache.h); every
// tensor starts on a page (get_alignment) so that a cached one can map its pages of the cache file.
struct weights_buffer {
    uint8_t *                 base;
    size_t                    size;  // mapped bytes: a whole number of pages
    bitnet_ggml::repack_cache cache;

    weights_buffer(uint8_t * b, size_t n) : base(b), size(n), cache(b, n) {}
};

static weights_buffer * weights_of(ggml_backend_buffer_t buffer) {
    return static_cast<weights_buffer *>(buffer->context);
}

static enum ggml_status ternary_buffer_init_tensor(ggml_backend_buffer_t buffer, ggml_tensor * tensor) {
    // stored as the base class pointer get_tensor_traits() casts back to
    ggml::cpu::tensor_traits * traits = &bitnet_ggml::g_stock;
    if (bitnet_ggml::shape_ok(tensor)) {
        traits = &bitnet_ggml::g_ours;
    }
    weights_of(buffer)->cache.announce(tensor, traits == &bitnet_ggml::g_ours);
    tensor->extra = traits;
    return GGML_STATUS_SUCCESS;
}

static void ternary_buffer_set_tensor(ggml_backend_buffer_t buffer, ggml_tensor * tensor, const void * data,
                                      size_t offset, size_t size) {
    GGML_ASSERT(offset == 0 && size == ggml_nbytes(tensor));
    bitnet_ggml::repack_cache & cache = weights_of(buffer)->cache;
    if (tensor->extra == static_cast<ggml::cpu::tensor_traits *>(&bitnet_ggml::g_ours)) {
        if (cache.map(tensor, data)) {
            return;  // our layout, from the cache file of an earlier load
        }
        const int rc = bitnet_ggml::repack(tensor, data);
        cache.repacked(tensor, rc == BITNET_OK);
        if (rc == BITNET_OK) {
            return;
        }
        // e.g. a TQ2_0 code 3 (not ternary): keep ggml's bytes and its kernels for this tensor
        GGML_LOG_WARN("bitnet: %s not repacked (code %d); stock kernels run it\n", tensor->name, rc);
        tensor->extra = static_cast<ggml::cpu::tensor_traits *>(&bitnet_ggml::g_stock);
    } else {
        cache.before_copy(tensor, data);
    }
    memcpy(tensor->data, data, size);
}

static void * ternary_buffer_get_base(ggml_backend_buffer_t buffer) { return weights_of(buffer)->base; }

static void ternary_buffer_clear(ggml_backend_buffer_t buffer, uint8_t value) {
    weights_buffer * wb = weights_of(buffer);
    wb->cache.drop_all();  // cached tensors are read-only file pages: private zeroed memory again
    if (value != 0) {
        memset(wb->base, value, wb->size);
    }
}

static void ternary_buffer_free(ggml_backend_buffer_t buffer) {
    weights_buffer * wb   = weights_of(buffer);
    uint8_t *        base = wb->base;
    const size_t     size = wb->size;
    delete wb;  // waits for a cache file being finished
    munmap(base, size);
}

static size_t page_size() {
    static const size_t page = (size_t) sysconf(_SC_PAGESIZE);
    return page;
}

static const char * ternary_buft_get_name(ggml_backend_buffer_type_t) { return "CPU_BITNET"; }

static ggml_backend_buffer_t ternary_buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    // 2 MiB-aligned (the repack cache's image is, in its file, for huge pages in both), whole pages
    const size_t huge = (size_t) 2 << 20;
    const size_t len  = (std::max<size_t>(size, 1) + page_size() - 1) / page_size() * page_size();
    void *       raw  = mmap(nullptr, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        GGML_LOG_ERROR("bitnet: could not allocate %zu MiB for the weights: %s\n", len >> 20, strerror(errno));
        return nullptr;
    }
    auto * mem = (uint8_t *) (((uintptr_t) raw + huge - 1) & ~(uintptr_t) (huge - 1));
    if (mem > (uint8_t *) raw) {
        munmap(raw, (size_t) (mem - (uint8_t *) raw));
    }
    munmap(mem + len, (size_t) ((uint8_t *) raw + huge - mem));  // the rest of the 2 MiB of slack
#if defined(MADV_HUGEPAGE)
    // Ask for transparent huge pages (the usual THP mode is "madvise"): a repack writes every byte once, and
    // 2 MiB pages take 512x fewer page faults for it; decode then streams the weights with fewer TLB misses.
    // Advice only: without THP nothing changes.
    (void) madvise(mem, len, MADV_HUGEPAGE);
#endif
    const ggml_backend_buffer_i iface = {
        /* .free_buffer   = */ ternary_buffer_free,
        /* .get_base      = */ ternary_buffer_get_base,
        /* .init_tensor   = */ ternary_buffer_init_tensor,
        /* .memset_tensor = */ nullptr,  // weights are only set
        /* .set_tensor    = */ ternary_buffer_set_tensor,
        /* .get_tensor    = */ nullptr,
        /* .set_tensor_2d = */ nullptr,
        /* .get_tensor_2d = */ nullptr,
        /* .cpy_tensor    = */ nullptr,
        /* .clear         = */ ternary_buffer_clear,
        /* .reset         = */ nullptr,
    };
    return ggml_backend_buffer_init(buft, iface, new weights_buffer(mem, len), size);
}

static size_t ternary_buft_get_alignment(ggml_backend_buffer_type_t) { return page_size(); }

static size_t ternary_buft_get_alloc_size(ggml_backend_buffer_type_t, const ggml_tensor * tensor) {
    return bitnet_ggml::alloc_size(tensor);
}

ggml_backend_buffer_type_t ggml_backend_cpu_ternary_buffer_type(void);

namespace bitnet_ggml {
class extra_buffer_type : ggml::cpu::extra_buffer_type {
    bool supports_op(ggml_backend_dev_t, const ggml_tensor * op) override {
        const ggml_tensor * w = op->src[0];
        if (!w || !w->buffer || w->buffer->buft != ggml_backend_cpu_ternary_buffer_type()) {
            return false;
        }
        const ggml_tensor * x = op->src[1];
        const bool host_x = x && (x->buffer == nullptr || ggml_backend_buft_is_host(x->buffer->buft));
        return op->op == GGML_OP_MUL_MAT && shape_ok(w) && host_x && x->type == GGML_TYPE_F32 && x->ne[2] == 1 &&
               x->ne[3] == 1;
    }

    // ggml-cpu asks every extra buffer type about every op it runs (traits.cpp): ours are the MUL_MATs
    // with weights in our buffer, and the head's MUL_MAT wherever ggml keeps it (head_traits declines
    // shapes it does not take, which ggml then runs itself)
    ggml::cpu::tensor_traits * get_tensor_traits(const ggml_tensor * op) override {
        if (op->op == GGML_OP_FLASH_ATTN_EXT) {
            return attn_takes(op) ? &g_attn : nullptr;
        }
        if (op->op != GGML_OP_MUL_MAT || op->src[0]->buffer == nullptr) {
            return nullptr;
        }
        if (op->src[0]->buffer->buft == ggml_backend_cpu_ternary_buffer_type()) {
            return (ggml::cpu::tensor_traits *) op->src[0]->extra;
        }
        return is_head(op->src[0]) ? &g_head : nullptr;
    }
};
}  // namespace bitnet_ggml

static bool kernels_enabled() {
    static const bool on = [] {
        const char * env = std::getenv(BITNET_ENV_KERNELS);
        return !(env && std::strcmp(env, "0") == 0);
    }();
    return on;
}

// Called when the CPU backend registers (patch 0004): with GGML_CPU_VARIANT_REPORT set, say once,
// synchronously on stderr like patch 0002's variant line, whether our kernels run and for which ISA.
void ggml_backend_cpu_ternary_report(void) {
    static const bool once = [] {
        if (std::getenv(BITNET_ENV_VARIANT_REPORT)) {
            // "on, AMX-INT8 GEMM": prompts run in AMX tiles (Sapphire Rapids and later; BITNET_AMX=0 turns it off)
            fprintf(stderr, BITNET_REPORT_KERNELS,
                    !kernels_enabled() ? "off (" BITNET_ENV_KERNELS "=0)"
                    : bitnet_gemm_amx() ? "on, AMX-INT8 GEMM"
                                        : "on",
                    bitnet_isa());
        }
        return true;
    }();
    (void) once;
}

ggml_backend_buffer_type_t ggml_backend_cpu_ternary_buffer_type(void) {
    if (!kernels_enabled()) {
        return nullptr;
    }
    static struct ggml_backend_buffer_type buft = {
        /* .iface    = */ {
            /* .get_name         = */ ternary_buft_get_name,
            /* .alloc_buffer     = */ ternary_buft_alloc_buffer,
            /* .get_alignment    = */ ternary_buft_get_alignment,
            /* .get_max_size     = */ nullptr,
            /* .get_alloc_size   = */ ternary_buft_get_alloc_size,
            /* .is_host          = */ nullptr,
        },
        /* .device  = */ ggml_backend_reg_dev_get(ggml_backend_cpu_reg(), 0),
        /* .context = */ new bitnet_ggml::extra_buffer_type(),
    };
    return &buft;
}
