// Exactness test of the fused BitNet chains (kernels/ternary/ggml/ternary-fuse.cpp, patch 0012): a chain
// of ggml nodes computed as ONE graph on the CPU backend, where the graph loop hands it to our fused op,
// must give bitwise the floats of the same nodes computed ONE AT A TIME (one graph per node: nothing can
// fuse, every node runs ggml's own op or the buffer type's lone MUL_MAT).
//
// The chains are the bitnet graph's (src/models/bitnet.cpp with patch 0012's node order), with the weights
// in CPU_BITNET, random ternary matrices of the 2B4T widths and small ones, 1..33 columns (decode GEMV,
// prefill GEMM tiles), 1-3 threads, per-token and per-block activation quantization, and variants that
// must fuse less (the normalized input read by another node too; no scale). The fused graph is allocated
// by ggml's graph allocator, as llama.cpp does (intermediate buffers reused in place); the one-node
// reference gives every tensor its own memory.
//
//   test_bitnet_fused [--bin-dir DIR] [--threads 1,2,3] [--seed N] [--quick] [--attention]
//
// Which chains really ran fused is printed by the engine on stderr with GGML_CPU_VARIANT_REPORT set
// ("bitnet: fused chain ..."); tests/test_ops.py checks those lines. Output: one line per case, a summary,
// exit 1 on any difference.

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int32_t kPerTokenTag = 0x4b4f5442;  // BITNET_ACT_PER_TOKEN_TAG in op_params[7] (patch 0006)

[[noreturn]] void die(const std::string & msg) {
    fprintf(stderr, "test_bitnet_fused: %s\n", msg.c_str());
    exit(2);
}

struct Backend {
    ggml_backend_dev_t            dev           = nullptr;
    ggml_backend_t                backend       = nullptr;
    ggml_backend_set_n_threads_t  set_n_threads = nullptr;
    ggml_backend_buffer_type_t    plain         = nullptr;
    ggml_backend_buffer_type_t    bitnet        = nullptr;
};

// The weights of one case, in CPU_BITNET (repacked at set_tensor).
struct Weights {
    ggml_context *        ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    std::vector<ggml_tensor *> w;
    ~Weights() {
        if (buf) {
            ggml_backend_buffer_free(buf);
        }
        if (ctx) {
            ggml_free(ctx);
        }
    }
};

std::vector<float> ternary_floats(int64_t k, int64_t rows, std::mt19937 & rng) {
    std::uniform_int_distribution<int>    trit(-1, 1);
    std::uniform_real_distribution<float> scale(0.25f, 2.0f);
    std::vector<float>                    f(k * rows);
    for (int64_t i = 0; i < k * rows; i += 256) {
        const float s = scale(rng);
        for (int j = 0; j < 256; j++) {
            f[i + j] = s * (float) trit(rng);
        }
        f[i] = s;
    }
    return f;
}

// Activations of a residual stream: per column a random magnitude over several decades, some zeros.
std::vector<float> activations(size_t n, int64_t k, std::mt19937 & rng) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f), e(-2.0f, 2.0f);
    std::vector<float>                    v(n);
    float                                 col_scale = 1.0f;
    for (size_t i = 0; i < n; i++) {
        if (i % (size_t) k == 0) {
            col_scale = std::pow(10.0f, e(rng));
        }
        v[i] = (i % 97 == 5) ? 0.0f : col_scale * u(rng) * std::pow(10.0f, e(rng) - 2.0f);
    }
    return v;
}

void make_weights(const Backend & be, Weights & W, ggml_type type, const std::vector<std::pair<int64_t, int64_t>> & shapes,
                  std::mt19937 & rng) {
    ggml_init_params ip = { ggml_tensor_overhead() * 8, nullptr, true };
    W.ctx               = ggml_init(ip);
    for (size_t i = 0; i < shapes.size(); i++) {
        ggml_tensor * t = ggml_new_tensor_2d(W.ctx, type, shapes[i].first, shapes[i].second);
        ggml_set_name(t, ("blk.0.w" + std::to_string(i) + ".weight").c_str());
        W.w.push_back(t);
    }
    W.buf = ggml_backend_alloc_ctx_tensors_from_buft(W.ctx, be.bitnet);
    if (!W.buf) {
        die("could not allocate CPU_BITNET weights");
    }
    ggml_backend_buffer_set_usage(W.buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    for (ggml_tensor * t : W.w) {
        const std::vector<float> f = ternary_floats(t->ne[0], t->ne[1], rng);
        std::vector<uint8_t>     bytes(ggml_nbytes(t));
        ggml_quantize_chunk(type, f.data(), bytes.data(), 0, t->ne[1], t->ne[0], nullptr);
        ggml_backend_tensor_set(t, bytes.data(), 0, bytes.size());
    }
}

// What a case builds: its inputs (name -> data), its graph's outputs.
struct Built {
    std::vector<std::pair<ggml_tensor *, std::vector<float>>> inputs;
    std::vector<ggml_tensor *>                                outputs;
};

using Builder = std::function<Built(ggml_context *, ggml_cgraph *)>;

std::vector<std::vector<float>> run(const Backend & be, const Builder & build, int nth, bool one_node_at_a_time) {
    ggml_init_params ip  = { ggml_tensor_overhead() * 64 + 2 * ggml_graph_overhead(), nullptr, true };
    ggml_context *   ctx = ggml_init(ip);
    ggml_cgraph *    gf  = ggml_new_graph(ctx);
    Built            b   = build(ctx, gf);
    for (auto & in : b.inputs) {
        ggml_set_input(in.first);
    }
    for (ggml_tensor * o : b.outputs) {
        ggml_set_output(o);
    }
    ggml_backend_buffer_t buf    = nullptr;
    ggml_gallocr_t        galloc = nullptr;
    if (one_node_at_a_time) {
        buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, be.plain);  // every tensor its own memory
    } else {
        galloc = ggml_gallocr_new(be.plain);  // llama.cpp's allocation: buffers reused in place
        if (!ggml_gallocr_alloc_graph(galloc, gf)) {
            die("ggml_gallocr_alloc_graph failed");
        }
    }
    for (auto & in : b.inputs) {
        ggml_backend_tensor_set(in.first, in.second.data(), 0, ggml_nbytes(in.first));
    }
    be.set_n_threads(be.backend, nth);
    if (one_node_at_a_time) {
        ggml_cgraph * one = ggml_new_graph(ctx);
        for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
            ggml_graph_clear(one);
            ggml_graph_add_node(one, ggml_graph_node(gf, i));
            if (ggml_backend_graph_compute(be.backend, one) != GGML_STATUS_SUCCESS) {
                die("node compute failed");
            }
        }
    } else if (ggml_backend_graph_compute(be.backend, gf) != GGML_STATUS_SUCCESS) {
        die("graph compute failed");
    }
    std::vector<std::vector<float>> out;
    for (ggml_tensor * o : b.outputs) {
        out.emplace_back(ggml_nelements(o));
        ggml_backend_tensor_get(o, out.back().data(), 0, ggml_nbytes(o));
    }
    if (galloc) {
        ggml_gallocr_free(galloc);
    }
    if (buf) {
        ggml_backend_buffer_free(buf);
    }
    ggml_free(ctx);
    return out;
}

int g_cases = 0, g_failures = 0;

void check(const Backend & be, const std::string & name, const Builder & build, const std::vector<int> & threads) {
    const auto ref = run(be, build, 1, true);
    for (int nth : threads) {
        const auto got = run(be, build, nth, false);
        bool   same = got.size() == ref.size();
        size_t ndiff = 0, n = 0;
        for (size_t i = 0; same && i < got.size(); i++) {
            same = got[i].size() == ref[i].size();
            for (size_t j = 0; same && j < got[i].size(); j++) {
                n++;
                ndiff += std::memcmp(&got[i][j], &ref[i][j], sizeof(float)) != 0;
            }
        }
        // nonzero outputs: a chain that computed nothing would match a reference of zeros
        size_t nonzero = 0;
        for (const auto & v : ref) {
            for (float x : v) {
                nonzero += x != 0.0f;
            }
        }
        const bool ok = same && ndiff == 0 && nonzero > n / 4;  // relu^2 zeroes about half
        g_cases++;
        g_failures += ok ? 0 : 1;
        printf("  %s nth=%d: %zu floats, %zu differ, %zu nonzero  %s\n", name.c_str(), nth, n, ndiff, nonzero,
               ok ? "OK" : "FAIL");
        fflush(stdout);
    }
}

ggml_tensor * input(ggml_context * ctx, Built & b, int64_t ne0, int64_t ne1, const std::vector<float> & data) {
    ggml_tensor * t = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, ne1);
    b.inputs.emplace_back(t, data);
    return t;
}

ggml_tensor * scalar(ggml_context * ctx, Built & b, float v) { return input(ctx, b, 1, 1, { v }); }

ggml_tensor * mm(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, bool per_token) {
    ggml_tensor * t = ggml_mul_mat(ctx, w, x);
    if (per_token) {
        t->op_params[7] = kPerTokenTag;
    }
    return t;
}

struct Case {
    int64_t k, ncols;
    bool    per_token;
};

void chains(const Backend & be, std::mt19937 & rng, ggml_type type, int64_t K, int64_t N, int64_t Nkv,
            const std::vector<int64_t> & cols, const std::vector<int> & threads) {
    Weights W;  // q, k, v (K -> N, Nkv, Nkv), o (N -> K), up, gate (K -> F), down (F -> K); F = N here
    make_weights(be, W, type, { { K, N }, { K, Nkv }, { K, Nkv }, { N, K }, { K, N }, { K, N }, { N, K } }, rng);
    const std::string tn = ggml_type_name(type);
    for (int64_t ncols : cols) {
        for (bool pt : { true, false }) {
            const std::vector<float> x   = activations((size_t) (K * ncols), K, rng);
            const std::vector<float> xf  = activations((size_t) (N * ncols), N, rng);
            const std::vector<float> res = activations((size_t) (K * ncols), K, rng);
            std::vector<float>       nw  = activations((size_t) K, K, rng), nwf = activations((size_t) N, N, rng);
            char tag[96];
            snprintf(tag, sizeof tag, "(%s,K=%lld,N=%lld,ncols=%lld,%s)", tn.c_str(), (long long) K, (long long) N,
                     (long long) ncols, pt ? "per_token" : "per_block");
            const float eps = 1e-5f;

            // attn_norm -> Q, K, V with scales
            check(be, std::string("norm+qkv") + tag, [&](ggml_context * ctx, ggml_cgraph * gf) {
                Built b;
                ggml_tensor * h = ggml_mul(ctx, ggml_rms_norm(ctx, input(ctx, b, K, ncols, x), eps), input(ctx, b, K, 1, nw));
                for (int i = 0; i < 3; i++) {
                    ggml_tensor * y = ggml_mul(ctx, mm(ctx, W.w[i], h, pt), scalar(ctx, b, 0.5f + 0.25f * i));
                    ggml_build_forward_expand(gf, y);
                    b.outputs.push_back(y);
                }
                return b;
            }, threads);
            // attn_sub_norm -> wo, scale, + residual
            check(be, std::string("norm+wo+add") + tag, [&](ggml_context * ctx, ggml_cgraph * gf) {
                Built b;
                ggml_tensor * h = ggml_mul(ctx, ggml_rms_norm(ctx, input(ctx, b, N, ncols, xf), eps), input(ctx, b, N, 1, nwf));
                ggml_tensor * y = ggml_mul(ctx, mm(ctx, W.w[3], h, pt), scalar(ctx, b, 0.7f));
                ggml_tensor * o = ggml_add(ctx, y, input(ctx, b, K, ncols, res));
                ggml_build_forward_expand(gf, o);
                b.outputs.push_back(o);
                return b;
            }, threads);
            // ffn_norm -> up, gate, relu^2 gate
            check(be, std::string("norm+up+gate+relu2") + tag, [&](ggml_context * ctx, ggml_cgraph * gf) {
                Built b;
                ggml_tensor * h  = ggml_mul(ctx, ggml_rms_norm(ctx, input(ctx, b, K, ncols, x), eps), input(ctx, b, K, 1, nw));
                ggml_tensor * up = ggml_mul(ctx, mm(ctx, W.w[4], h, pt), scalar(ctx, b, 1.5f));
                ggml_build_forward_expand(gf, up);
                ggml_tensor * g = ggml_mul(ctx, mm(ctx, W.w[5], h, pt), scalar(ctx, b, 0.3f));
                ggml_tensor * o = ggml_mul(ctx, ggml_sqr(ctx, ggml_relu(ctx, g)), up);
                ggml_build_forward_expand(gf, o);
                b.outputs.push_back(o);
                return b;
            }, threads);
            // ffn_sub_norm -> down, scale, + residual; then the next layer's norm reads the sum
            check(be, std::string("norm+down+add") + tag, [&](ggml_context * ctx, ggml_cgraph * gf) {
                Built b;
                ggml_tensor * h = ggml_mul(ctx, ggml_rms_norm(ctx, input(ctx, b, N, ncols, xf), eps), input(ctx, b, N, 1, nwf));
                ggml_tensor * y = ggml_mul(ctx, mm(ctx, W.w[6], h, pt), scalar(ctx, b, 0.9f));
                ggml_tensor * o = ggml_add(ctx, input(ctx, b, K, ncols, res), y);  // residual as src0
                ggml_tensor * n = ggml_mul(ctx, ggml_rms_norm(ctx, o, eps), input(ctx, b, K, 1, nw));
                ggml_build_forward_expand(gf, n);
                b.outputs.push_back(o);
                b.outputs.push_back(n);
                return b;
            }, threads);
            // must fuse less: the normalized input is also an output; no scales; two MUL_MATs, no gate
            check(be, std::string("norm-read-twice+2mm") + tag, [&](ggml_context * ctx, ggml_cgraph * gf) {
                Built b;
                ggml_tensor * h = ggml_mul(ctx, ggml_rms_norm(ctx, input(ctx, b, K, ncols, x), eps), input(ctx, b, K, 1, nw));
                ggml_tensor * q = mm(ctx, W.w[0], h, pt);
                ggml_tensor * k = mm(ctx, W.w[1], h, pt);
                ggml_build_forward_expand(gf, q);
                ggml_build_forward_expand(gf, k);
                b.outputs.push_back(h);
                b.outputs.push_back(q);
                b.outputs.push_back(k);
                return b;
            }, threads);
        }
    }
}

// Prompt attention (kernels/ternary/ggml/ternary-attn.cpp) is checked across processes: this prints a hash
// of each case's output; tests/test_ops.py runs it with BITNET_ATTN=1 (ours) and =0 (ggml's tiled kernel)
// and compares the lines. f16 K/V and a causal f16 mask as llama.cpp builds them (KV rows past the
// tokens masked), GQA ratios 1, 2, 4, head sizes 64 and 128, prompts of 64..300 rows.
uint64_t fnv(const std::vector<float> & v) {
    uint64_t h = 1469598103934665603ull;
    const auto * p = (const unsigned char *) v.data();
    for (size_t i = 0; i < v.size() * sizeof(float); i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    return h;
}

void attention(const Backend & be, std::mt19937 & rng, const std::vector<int> & threads, bool quick) {
    struct Shape { int64_t d, nq, nh, nkvh, nkv; };
    std::vector<Shape> shapes = { { 128, 64, 4, 1, 64 }, { 128, 300, 8, 2, 320 }, { 64, 100, 4, 4, 128 },
                                  { 128, 256, 20, 5, 256 } };
    if (quick) {
        shapes.resize(2);
    }
    for (const Shape & sh : shapes) {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> q(sh.d * sh.nq * sh.nh), k(sh.d * sh.nkv * sh.nkvh), v(sh.d * sh.nkv * sh.nkvh);
        for (auto * vec : { &q, &k, &v }) {
            for (auto & x : *vec) {
                x = nd(rng);
            }
        }
        // causal mask over nkv cache rows: query i sees keys 0 .. i + (nkv_used - nq); rows past nq: -inf
        const int64_t used = std::min(sh.nkv, sh.nq + 7), mrows = (sh.nq + 63) / 64 * 64;
        std::vector<ggml_fp16_t> mask(sh.nkv * mrows);
        for (int64_t i = 0; i < mrows; i++) {
            for (int64_t j = 0; j < sh.nkv; j++) {
                const bool see = i < sh.nq && j < used && j <= i + (used - sh.nq);
                mask[i * sh.nkv + j] = ggml_fp32_to_fp16(see ? 0.0f : -INFINITY);
            }
        }
        std::vector<ggml_fp16_t> kh(k.size()), vh(v.size());
        ggml_fp32_to_fp16_row(k.data(), kh.data(), (int64_t) k.size());
        ggml_fp32_to_fp16_row(v.data(), vh.data(), (int64_t) v.size());
        for (int nth : threads) {
            ggml_init_params ip  = { ggml_tensor_overhead() * 16 + ggml_graph_overhead(), nullptr, true };
            ggml_context *   ctx = ggml_init(ip);
            ggml_tensor *    tq  = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, sh.d, sh.nq, sh.nh);
            ggml_tensor *    tk  = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, sh.d, sh.nkv, sh.nkvh);
            ggml_tensor *    tv  = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, sh.d, sh.nkv, sh.nkvh);
            ggml_tensor *    tm  = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, sh.nkv, mrows);
            // llama.cpp's layout: q [d, tokens, heads] as a permuted view; here plain, same strides role
            ggml_tensor * out = ggml_flash_attn_ext(ctx, tq, tk, tv, tm, 1.0f / std::sqrt((float) sh.d), 0.0f, 0.0f);
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, be.plain);
            ggml_backend_tensor_set(tq, q.data(), 0, ggml_nbytes(tq));
            ggml_backend_tensor_set(tk, kh.data(), 0, ggml_nbytes(tk));
            ggml_backend_tensor_set(tv, vh.data(), 0, ggml_nbytes(tv));
            ggml_backend_tensor_set(tm, mask.data(), 0, ggml_nbytes(tm));
            ggml_cgraph * gf = ggml_new_graph(ctx);
            ggml_build_forward_expand(gf, out);
            be.set_n_threads(be.backend, nth);
            if (ggml_backend_graph_compute(be.backend, gf) != GGML_STATUS_SUCCESS) {
                die("attention compute failed");
            }
            std::vector<float> y(ggml_nelements(out));
            ggml_backend_tensor_get(out, y.data(), 0, ggml_nbytes(out));
            size_t finite = 0;
            for (float x : y) {
                finite += std::isfinite(x) && x != 0.0f;
            }
            printf("  ATTN(d=%lld,nq=%lld,heads=%lld/%lld,nkv=%lld) nth=%d: hash=%016llx nonzero=%zu/%zu\n",
                   (long long) sh.d, (long long) sh.nq, (long long) sh.nh, (long long) sh.nkvh, (long long) sh.nkv,
                   nth, (unsigned long long) fnv(y), finite, y.size());
            fflush(stdout);
            ggml_backend_buffer_free(buf);
            ggml_free(ctx);
        }
    }
}

std::vector<int> parse_list(const char * s) {
    std::vector<int> v;
    for (const char * p = s; *p;) {
        char *     end = nullptr;
        const long n   = std::strtol(p, &end, 10);
        if (end == p || n < 1 || n > 64) {
            die("bad --threads list");
        }
        v.push_back((int) n);
        p = *end == ',' ? end + 1 : end;
    }
    return v;
}

}  // namespace

int main(int argc, char ** argv) {
    std::string      bin_dir;
    std::vector<int> threads = { 1, 2, 3 };
    unsigned         seed    = 4321;
    bool             quick   = false, attn = false;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (a == "--bin-dir" && i + 1 < argc) {
            bin_dir = argv[++i];
        } else if (a == "--threads" && i + 1 < argc) {
            threads = parse_list(argv[++i]);
        } else if (a == "--seed" && i + 1 < argc) {
            seed = (unsigned) std::strtoul(argv[++i], nullptr, 10);
        } else if (a == "--quick") {
            quick = true;
        } else if (a == "--attention") {
            attn = true;
        } else {
            die("usage: test_bitnet_fused [--bin-dir DIR] [--threads 1,2,3] [--seed N] [--quick] [--attention]");
        }
    }
    if (bin_dir.empty()) {
        Dl_info info;
        if (dladdr((void *) &ggml_backend_load_all, &info) && info.dli_fname) {
            bin_dir            = info.dli_fname;
            const size_t slash = bin_dir.rfind('/');
            bin_dir            = slash == std::string::npos ? "." : bin_dir.substr(0, slash);
        }
    }
    ggml_backend_load_all_from_path(bin_dir.c_str());
    Backend be;
    be.dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!be.dev) {
        die("no CPU backend in " + bin_dir);
    }
    ggml_backend_reg_t reg       = ggml_backend_dev_backend_reg(be.dev);
    auto               get_extra = (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(
        reg, "ggml_backend_dev_get_extra_bufts");
    be.set_n_threads =
        (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    for (ggml_backend_buffer_type_t * b = get_extra ? get_extra(be.dev) : nullptr; b && *b; b++) {
        if (std::strcmp(ggml_backend_buft_name(*b), "CPU_BITNET") == 0) {
            be.bitnet = *b;
        }
    }
    if (!be.bitnet || !be.set_n_threads) {
        die("the CPU backend has no CPU_BITNET buffer type (BITNET_KERNELS=0, or not our engine)");
    }
    be.plain   = ggml_backend_dev_buffer_type(be.dev);
    be.backend = ggml_backend_dev_init(be.dev, nullptr);
    printf("CPU device: %s (backends from %s)\n", ggml_backend_dev_description(be.dev), bin_dir.c_str());
    fflush(stdout);

    std::mt19937 rng(seed);
    if (attn) {
        attention(be, rng, threads, quick);
        return 0;
    }
    const std::vector<int64_t> cols = quick ? std::vector<int64_t>{ 1, 17 } : std::vector<int64_t>{ 1, 2, 3, 17, 33 };
    chains(be, rng, GGML_TYPE_TQ2_0, 256, 512, 256, cols, threads);     // the tiny model's widths
    chains(be, rng, GGML_TYPE_TQ1_0, 512, 768, 256, { 1, 7 }, threads);  // TK1 (avx512) / TK2, odd group counts
    chains(be, rng, GGML_TYPE_TQ2_0, 2560, 6912, 640, quick ? std::vector<int64_t>{ 1 } : std::vector<int64_t>{ 1, 16 },
           threads);  // 2B4T: K 2560, ffn 6912, kv 640
    printf("%d/%d cases OK\n", g_cases - g_failures, g_cases);
    return g_failures ? 1 : 0;
}
