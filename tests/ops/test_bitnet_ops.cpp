// Op-level correctness test for the ggml-cpu extra buffer type CPU_BITNET
// (kernels/ternary/ggml/ternary-buft.cpp), in the spirit of llama.cpp's test-backend-ops: build the
// same one-op graph twice, once with the weight in CPU_BITNET and once in the plain CPU buffer type,
// compute both on the CPU backend, and compare the outputs by NMSE. test-backend-ops cannot do this
// itself: it compares other backends against the CPU and never places weights in a CPU extra buffer
// type. Both outputs are also checked against a double-precision reference computed here from the
// dequantized weights (ggml's to_float), so agreement of the two paths cannot hide a shared error.
//
// Uses only ggml's public headers; links libggml + libggml-base and loads the CPU variant library at
// run time (GGML_CPU_VARIANT=<tag> forces one, patch 0002). tests/test_ops.py builds and runs it for
// every variant the host can run, with BITNET_KERNELS=1 and =0.
//
//   test_bitnet_ops [--bin-dir DIR] [--threads 1,2,3] [--seed N] [--head ours|ggml]
//                   [--corrupt-one-weight]
//
// --head: what the fp16 head in CPU_BITNET must do on this variant: "ours" (our fp16 GEMV for one
//   column, our GEMM for several; AVX2/AVX-512 builds) or "ggml" (the buffer type leaves it to ggml;
//   the sse42 build).
//   Without it the program takes the buffer type's supports_op as the expectation.
// --corrupt-one-weight: self-test of the comparison. The CPU_BITNET copy of every ternary matrix gets
//   one weight changed (the reference and the plain copy keep the true one), so every ternary MUL_MAT
//   line must then say FAIL (tests/test_ops.py checks that).
//
// Output: one line per case and thread count, "  OP(params): metrics OK|FAIL"; a summary; exit 1 on
// any failure.

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

// ---- thresholds (NMSE = sum (a - b)^2 / sum b^2, b the reference side) ------------------------------
//
// Ternary weights: our kernels quantize each 256-block of activations to int8 with exactly ggml's q8_K
// rule (d = max/-127, round half to even), and so does ggml's stock TQ2_0/TQ1_0 path; the integer block
// sums are exact in both. What remains is float rounding in combining the blocks (and in the order of
// the sum), ~1e-7 relative per output, i.e. NMSE ~1e-14. So both paths are held to 1e-10 against
//   - each other ("bitnet~cpu"), and
//   - the "q8 reference": the same activations put through a q8_K quantizer written here (not ggml's),
//     multiplied with the dequantized weights and summed in double ("~q8ref").
// Measured (AMD EPYC Zen 4; avx512, avx2 and sse42 variants; 1-3 threads; every case below): max
// 1.3e-14 for ours~q8ref, 5.1e-14 for ggml's~q8ref, 6.0e-14 for ours~ggml's (the sse42 build's stock
// path sums in our order: 0 there). 1e-10 leaves > 1000x of room for other compilers and CPUs, and is
// still far below what one wrong weight costs: a single flipped weight among the 17.7M of the 2560-row,
// K = 6912 matrix gives NMSE 7.5e-9, the least of all cases (--corrupt-one-weight: every ternary case
// then fails).
constexpr double kTernaryTight = 1e-10;
// Against the exact product (double, activations NOT quantized: "~exact") the int8 activations cost
// |error| <= amax/254 per element; with x uniform in [-1, 1] that is NMSE ~ 1/(254^2) ~ 1.5e-5. The
// limit 1e-4 only says "this is the right product" (measured max 2.4e-5); the tight checks above do
// the real work.
constexpr double kTernaryExact = 1e-4;
// fp16 head, one column: our GEMV keeps the activation in f32 and accumulates in f32: NMSE ~1e-14
// against the exact product. ggml's path rounds the activation to fp16 first (relative 2^-11 per
// element): NMSE ~1e-7. So ours must be within 1e-10 and ggml's within 1e-6; and ours must be at least
// 100x closer to the exact product than ggml's, which is how we know our GEMV ran, not ggml's.
// Measured: ours 1.9e-14, ggml's 3.9e-8 (K = 2560).
constexpr double kHeadOurs = 1e-10;
constexpr double kHeadGgml = 1e-6;
constexpr double kHeadOursBetterBy = 100.0;
// The head with several columns (batched decode of several clients, all-logits runs) runs our GEMM: each
// of its columns must be BITWISE the one-column GEMV's result for that column alone (the logits of a
// sequence do not depend on its batch), and the same closeness checks hold.
// Anything CPU_BITNET leaves to ggml (GET_ROWS, the head on a variant without our fp16 GEMV) runs ggml's
// own code on the same bytes: it must be bitwise equal.

struct Options {
    std::string bin_dir;
    std::vector<int> threads = {1, 2, 3};
    unsigned seed = 1234;
    std::string head;  // "", "ours", "ggml"
    bool corrupt = false;
};

struct Backend {
    ggml_backend_dev_t dev = nullptr;
    ggml_backend_t backend = nullptr;
    ggml_backend_set_n_threads_t set_n_threads = nullptr;
    ggml_backend_buffer_type_t plain = nullptr;
    ggml_backend_buffer_type_t bitnet = nullptr;  // nullptr: not registered (BITNET_KERNELS=0)
};

// A weight matrix: ggml's bytes and the values they decode to (ggml's to_float), rows x k row-major.
struct Matrix {
    ggml_type type = GGML_TYPE_F32;
    int64_t k = 0, rows = 0;
    std::string name;
    std::vector<uint8_t> bytes;
    std::vector<float> values;
};

// A weight placed in one buffer type (its own context and buffer).
struct Placed {
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor * t = nullptr;
    size_t alloc_size = 0;  // what the buffer type asked for this tensor
    bool bytes_changed = false;  // tensor memory differs from the bytes handed to set_tensor (repacked)

    Placed() = default;
    Placed(const Placed &) = delete;
    Placed & operator=(const Placed &) = delete;
    ~Placed() {
        if (buf) {
            ggml_backend_buffer_free(buf);
        }
        if (ctx) {
            ggml_free(ctx);
        }
    }
};

struct Result {
    std::vector<float> y;
    bool supported = false;  // ggml_backend_dev_supports_op for the op node
};

int g_failures = 0;
int g_cases = 0;
std::map<std::string, double> g_max_nmse;  // "tq2_0 bitnet~q8ref" -> max NMSE seen
std::vector<std::string> g_failed;

[[noreturn]] void die(const char * msg) {
    fprintf(stderr, "test_bitnet_ops: %s\n", msg);
    exit(2);
}

double nmse(const std::vector<float> & a, const std::vector<double> & ref) {
    double err = 0, norm = 0;
    for (size_t i = 0; i < a.size(); i++) {
        const double d = (double) a[i] - ref[i];
        err += d * d;
        norm += ref[i] * ref[i];
    }
    return norm > 0 ? err / norm : (err > 0 ? INFINITY : 0.0);
}

std::vector<double> as_double(const std::vector<float> & v) { return std::vector<double>(v.begin(), v.end()); }

bool bitwise_equal(const std::vector<float> & a, const std::vector<float> & b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void note(const std::string & key, double v) {
    double & m = g_max_nmse[key];
    m = std::max(m, v);
}

// One printed case line: collects metrics and failures, prints "  name: ... OK|FAIL".
struct Line {
    std::string name, text;
    bool ok = true;
    std::vector<std::string> why;

    explicit Line(std::string n) : name(std::move(n)) {}
    void metric(const char * label, double v) {
        char s[64];
        snprintf(s, sizeof s, " %s=%.2e", label, v);
        text += s;
    }
    void check(bool cond, const std::string & what) {
        if (!cond) {
            ok = false;
            why.push_back(what);
        }
    }
    // metric + threshold check (+ running max under key)
    void nmse_le(const char * label, double v, double limit, const std::string & key) {
        metric(label, v);
        note(key, v);
        char s[96];
        snprintf(s, sizeof s, "%s %.2e > %.0e", label, v, limit);
        check(v <= limit, s);
    }
    void finish() {
        g_cases++;
        std::string line = "  " + name + ":" + text + "  " + (ok ? "OK" : "FAIL");
        if (!ok) {
            g_failures++;
            std::string w;
            for (const auto & s : why) {
                w += (w.empty() ? "" : "; ") + s;
            }
            line += " (" + w + ")";
            g_failed.push_back(name);
        }
        printf("%s\n", line.c_str());
        fflush(stdout);
    }
};

// ---- data --------------------------------------------------------------------------------------------

Matrix make_matrix(ggml_type type, const std::string & name, int64_t k, int64_t rows, const std::vector<float> & f) {
    Matrix m;
    m.type = type;
    m.k = k;
    m.rows = rows;
    m.name = name;
    m.bytes.resize(ggml_row_size(type, k) * rows);
    const size_t n = ggml_quantize_chunk(type, f.data(), m.bytes.data(), 0, rows, k, nullptr);
    if (n != m.bytes.size()) {
        die("ggml_quantize_chunk wrote an unexpected size");
    }
    const ggml_type_traits * tr = ggml_get_type_traits(type);
    if (!tr->to_float) {
        die("no to_float for the weight type");
    }
    m.values.resize(k * rows);
    tr->to_float(m.bytes.data(), m.values.data(), k * rows);
    return m;
}

// Ternary weights: per 256-block a random scale s in [0.25, 2] times -1/0/+1; the quantizer's block scale
// is the block's max |w| = s, so the matrix is ternary in ggml's sense exactly (up to fp16 of s).
std::vector<float> ternary_floats(int64_t k, int64_t rows, std::mt19937 & rng) {
    std::uniform_int_distribution<int> trit(-1, 1);
    std::uniform_real_distribution<float> scale(0.25f, 2.0f);
    std::vector<float> f(k * rows);
    for (int64_t i = 0; i < k * rows; i += 256) {
        const float s = scale(rng);
        for (int j = 0; j < 256; j++) {
            f[i + j] = s * (float) trit(rng);
        }
        f[i] = s;  // at least one weight at the block's scale
    }
    return f;
}

std::vector<float> uniform_floats(size_t n, std::mt19937 & rng) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (auto & x : v) {
        x = u(rng);
    }
    return v;
}

// Activations as ggml's q8_K stores them (quantize_row_q8_K_ref; our kernels use the same values),
// written independently here and returned dequantized (d * q, exact in double). ggml's nearest_int is
// round half to even, which nearbyintf is in the default rounding mode.
std::vector<double> q8k_values(const float * x, int64_t k) {
    std::vector<double> out(k);
    for (int64_t b = 0; b < k; b += 256) {
        float amax = 0, max = 0;
        for (int j = 0; j < 256; j++) {
            const float ax = std::fabs(x[b + j]);
            if (ax > amax) {
                amax = ax;
                max = x[b + j];
            }
        }
        if (amax == 0) {
            std::fill(out.begin() + b, out.begin() + b + 256, 0.0);
            continue;
        }
        const float iscale = -127.f / max;
        const float d = 1 / iscale;
        for (int j = 0; j < 256; j++) {
            const int q = std::min(127, (int) std::nearbyint(iscale * x[b + j]));
            out[b + j] = (double) d * q;
        }
    }
    return out;
}

// y[c*rows + r] = sum_k w[r][k] * x[c][k] in double; with q8 != nullptr also against q8_K-quantized x.
void reference(const Matrix & w, const std::vector<float> & x, int64_t ncols, std::vector<double> & exact,
               std::vector<double> * q8) {
    const int64_t k = w.k, rows = w.rows;
    exact.assign(rows * ncols, 0.0);
    if (q8) {
        q8->assign(rows * ncols, 0.0);
    }
    std::vector<double> xd(k), xq;
    for (int64_t c = 0; c < ncols; c++) {
        const float * xc = x.data() + c * k;
        for (int64_t i = 0; i < k; i++) {
            xd[i] = xc[i];
        }
        if (q8) {
            xq = q8k_values(xc, k);
        }
        for (int64_t r = 0; r < rows; r++) {
            const float * wr = w.values.data() + r * k;
            double a = 0, b = 0;
            if (q8) {
                for (int64_t i = 0; i < k; i++) {
                    a += wr[i] * xd[i];
                    b += wr[i] * xq[i];
                }
                (*q8)[c * rows + r] = b;
            } else {
                for (int64_t i = 0; i < k; i++) {
                    a += wr[i] * xd[i];
                }
            }
            exact[c * rows + r] = a;
        }
    }
}

// ---- ggml plumbing -----------------------------------------------------------------------------------

void place(Placed & p, ggml_backend_buffer_type_t buft, const Matrix & m, const std::vector<uint8_t> & bytes) {
    ggml_init_params ip = { ggml_tensor_overhead() * 2, nullptr, /*no_alloc =*/true };
    p.ctx = ggml_init(ip);
    p.t = ggml_new_tensor_2d(p.ctx, m.type, m.k, m.rows);
    ggml_set_name(p.t, m.name.c_str());
    p.alloc_size = ggml_backend_buft_get_alloc_size(buft, p.t);
    p.buf = ggml_backend_alloc_ctx_tensors_from_buft(p.ctx, buft);
    if (!p.buf) {
        die("could not allocate a weight buffer");
    }
    ggml_backend_buffer_set_usage(p.buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    ggml_backend_tensor_set(p.t, bytes.data(), 0, bytes.size());
    // CPU_BITNET buffers are CPU memory but have no get_tensor: look at the tensor's bytes directly
    p.bytes_changed = std::memcmp(p.t->data, bytes.data(), bytes.size()) != 0;
}

// Compute MUL_MAT(w, x) (x: ncols columns of w->ne[0] floats) or GET_ROWS(w, ids) with nth threads.
Result compute(const Backend & be, ggml_tensor * w, const std::vector<float> * x, int64_t ncols,
               const std::vector<int32_t> * ids, int nth) {
    ggml_init_params ip = { ggml_tensor_overhead() * 4 + ggml_graph_overhead(), nullptr, /*no_alloc =*/true };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * in = nullptr;
    ggml_tensor * out = nullptr;
    if (x) {
        in = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], ncols);
        out = ggml_mul_mat(ctx, w, in);
    } else {
        in = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, (int64_t) ids->size());
        out = ggml_get_rows(ctx, w, in);
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, be.plain);
    if (!buf) {
        die("could not allocate the graph's buffer");
    }
    ggml_backend_tensor_set(in, x ? (const void *) x->data() : (const void *) ids->data(), 0, ggml_nbytes(in));

    Result r;
    r.supported = ggml_backend_dev_supports_op(be.dev, out);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    be.set_n_threads(be.backend, nth);
    if (ggml_backend_graph_compute(be.backend, gf) != GGML_STATUS_SUCCESS) {
        die("ggml_backend_graph_compute failed");
    }
    r.y.resize(ggml_nelements(out));
    ggml_backend_tensor_get(out, r.y.data(), 0, ggml_nbytes(out));
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return r;
}

std::string mm_name(const Matrix & w, int64_t ncols, int nth) {
    char s[160];
    snprintf(s, sizeof s, "MUL_MAT(type=%s,k=%lld,rows=%lld,ncols=%lld,nth=%d)", ggml_type_name(w.type),
             (long long) w.k, (long long) w.rows, (long long) ncols, nth);
    return s;
}

// ---- cases -------------------------------------------------------------------------------------------

struct Counters {
    int ternary_weights = 0, repacked = 0;
    int head_lines = 0, head_ours = 0;
} g_count;

// One ternary matrix, several column counts, every thread count.
void ternary_case(const Backend & be, const Options & opt, std::mt19937 & rng, ggml_type type, int64_t k,
                  int64_t rows, const std::vector<int64_t> & ncols_list) {
    const std::string tname = ggml_type_name(type);
    const char * name = "blk.0.ffn_down.weight";
    std::vector<float> f = ternary_floats(k, rows, rng);
    const Matrix w = make_matrix(type, name, k, rows, f);

    Placed plain, ours;
    place(plain, be.plain, w, w.bytes);
    const char * layout = "";  // ours, as the buffer type's alloc size tells
    bool size_ok = true;
    if (be.bitnet) {
        std::vector<uint8_t> bytes = w.bytes;
        if (opt.corrupt) {
            // one weight of the middle row changes (0 -> s, or +-s -> 0); the block keeps its scale
            const int64_t i = (rows / 2) * k + k / 2 + 1;
            f[i] = f[i] == 0 ? f[(i / 256) * 256] : 0.0f;
            bytes = make_matrix(type, name, k, rows, f).bytes;
        }
        place(ours, be.bitnet, w, bytes);
        g_count.ternary_weights++;
        // Our layouts interleave 16 rows per tile: the memory must differ from ggml's bytes. A tensor
        // left in ggml's layout (repack refused) would compute with stock kernels instead.
        g_count.repacked += ours.bytes_changed ? 1 : 0;
        // get_alloc_size: our layout's size - ggml's row size of TQ1_0 (TK1) or TQ2_0 (TK2) blocks padded to 16
        // rows - or ggml's own size where that is larger (room for ggml's bytes if a repack is refused)
        const int64_t rows16 = (rows + 15) / 16 * 16;
        const size_t tk1 = ggml_row_size(GGML_TYPE_TQ1_0, k) * rows16;
        const size_t tk2 = ggml_row_size(GGML_TYPE_TQ2_0, k) * rows16;
        const size_t own = ggml_row_size(type, k) * rows;
        layout = ours.alloc_size == std::max(tk2, own) ? " [tk2]" : " [tk1]";
        size_ok = ours.alloc_size == std::max(tk1, own) || ours.alloc_size == std::max(tk2, own);
    }

    for (int64_t ncols : ncols_list) {
        const std::vector<float> x = uniform_floats(k * ncols, rng);
        std::vector<double> exact, q8;
        reference(w, x, ncols, exact, &q8);
        for (int nth : opt.threads) {
            Line l(mm_name(w, ncols, nth));
            const Result c = compute(be, plain.t, &x, ncols, nullptr, nth);
            l.check(c.supported, "CPU device does not support the plain op");
            if (be.bitnet) {
                const Result b = compute(be, ours.t, &x, ncols, nullptr, nth);
                l.check(b.supported, "CPU_BITNET's supports_op refused a shape_ok weight");
                l.nmse_le("bitnet~q8ref", nmse(b.y, q8), kTernaryTight, tname + " bitnet~q8ref");
                l.nmse_le("cpu~q8ref", nmse(c.y, q8), kTernaryTight, tname + " cpu~q8ref");
                l.nmse_le("bitnet~cpu", nmse(b.y, as_double(c.y)), kTernaryTight, tname + " bitnet~cpu");
                l.nmse_le("bitnet~exact", nmse(b.y, exact), kTernaryExact, tname + " bitnet~exact");
                l.check(ours.bytes_changed, "weight not repacked: stock kernels would run on it");
                l.check(size_ok, "alloc size " + std::to_string(ours.alloc_size) + " is not ggml's padded to 16 rows");
                l.text += layout;
            } else {
                l.nmse_le("cpu~q8ref", nmse(c.y, q8), kTernaryTight, tname + " cpu~q8ref");
                l.nmse_le("cpu~exact", nmse(c.y, exact), kTernaryExact, tname + " cpu~exact");
            }
            l.finish();
        }
    }
}

// The fp16 head stays in ggml's own buffer (in the engine: the memory-mapped file, no copy); CPU_BITNET
// must refuse it (so llama.cpp does not copy it into our buffer), and a MUL_MAT with it runs our GEMV (one
// column) or GEMM (several) from there where the variant has it. The head is found by name (token_embd.weight is the tied
// head); the same bytes under another name always run ggml's path, which is what "ggml" means below.
void head_cases(const Backend & be, const Options & opt, std::mt19937 & rng, int64_t k, int64_t rows) {
    const std::vector<float> f = uniform_floats(k * rows, rng);
    const Matrix other = make_matrix(GGML_TYPE_F16, "blk.0.not_the_head.weight", k, rows, f);
    Placed ggml_path;
    place(ggml_path, be.plain, other, other.bytes);
    for (const char * name : { "output.weight", "token_embd.weight" }) {
        const Matrix w = make_matrix(GGML_TYPE_F16, name, k, rows, f);
        Placed head, in_ours;
        place(head, be.plain, w, w.bytes);
        if (be.bitnet) {
            place(in_ours, be.bitnet, w, w.bytes);
        }
        for (int64_t ncols : { (int64_t) 1, (int64_t) 4, (int64_t) 7 }) {
            const std::vector<float> x = uniform_floats(k * ncols, rng);
            std::vector<double> exact;
            reference(w, x, ncols, exact, nullptr);
            for (int nth : opt.threads) {
                Line l(mm_name(w, ncols, nth) + "[" + name + "]");
                const Result c = compute(be, ggml_path.t, &x, ncols, nullptr, nth);
                const double ce = nmse(c.y, exact);
                l.nmse_le("ggml~exact", ce, kHeadGgml, "f16 head ggml~exact");
                const Result h = compute(be, head.t, &x, ncols, nullptr, nth);
                l.check(h.supported, "CPU device does not support the head's MUL_MAT");
                const bool head_ours = be.bitnet && (opt.head.empty() || opt.head == "ours");
                if (head_ours) {
                    const double oe = nmse(h.y, exact);
                    l.nmse_le("head~exact", oe, kHeadOurs, "f16 head GEMV head~exact");
                    l.metric("head~ggml", nmse(h.y, as_double(c.y)));
                    l.check(oe * kHeadOursBetterBy <= ce,
                            "not clearly more exact than ggml's fp16-activation path: did our GEMV run?");
                    if (ncols > 1) {
                        // batch invariance: each column alone (one-column MUL_MAT: our GEMV) gives the same bits
                        bool same = true;
                        for (int64_t col = 0; col < ncols; col++) {
                            const std::vector<float> xc(x.begin() + col * k, x.begin() + (col + 1) * k);
                            const Result one = compute(be, head.t, &xc, 1, nullptr, nth);
                            same = same && std::equal(one.y.begin(), one.y.end(), h.y.begin() + col * rows,
                                                      [](float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; });
                        }
                        l.check(same, "a column of the head's GEMM differs from the one-column GEMV of it");
                        l.text += " cols==gemv";
                    }
                    l.text += " [ours]";
                    g_count.head_ours++;
                } else {
                    l.check(bitwise_equal(h.y, c.y), "the head's product differs from ggml's path on the same bytes");
                    l.text += " head==ggml [ggml]";
                }
                if (be.bitnet) {
                    const Result b = compute(be, in_ours.t, &x, ncols, nullptr, nth);
                    l.check(!b.supported, "CPU_BITNET accepts the head: llama.cpp would copy it out of the file");
                    g_count.head_lines++;
                }
                l.finish();
            }
        }
        // GET_ROWS: fp16 -> f32 is exact, so it must give the fp16 values bit for bit
        const std::vector<int32_t> ids = { 0, (int32_t) rows - 1, 5, 5, (int32_t) rows / 2, 1, 2 };
        std::vector<float> expect;
        for (int32_t id : ids) {
            expect.insert(expect.end(), w.values.begin() + id * k, w.values.begin() + (id + 1) * k);
        }
        for (int nth : opt.threads) {
            char s[160];
            snprintf(s, sizeof s, "GET_ROWS(type=f16,k=%lld,rows=%lld,n=%zu,nth=%d)[%s]", (long long) k,
                     (long long) rows, ids.size(), nth, name);
            Line l(s);
            const Result c = compute(be, head.t, nullptr, 0, &ids, nth);
            l.check(bitwise_equal(c.y, expect), "the head's rows differ from the fp16 values");
            l.text += " head==values";
            if (be.bitnet) {
                const Result b = compute(be, in_ours.t, nullptr, 0, &ids, nth);
                l.check(!b.supported, "CPU_BITNET accepts the head's GET_ROWS: llama.cpp would copy the head");
            }
            l.finish();
        }
    }
}

std::vector<int> parse_list(const char * s) {
    std::vector<int> v;
    for (const char * p = s; *p;) {
        char * end = nullptr;
        const long n = std::strtol(p, &end, 10);
        if (end == p || n < 1 || n > 64) {
            die("bad --threads list");
        }
        v.push_back((int) n);
        p = *end == ',' ? end + 1 : end;
    }
    return v;
}

Options parse_args(int argc, char ** argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto value = [&]() -> const char * {
            if (i + 1 >= argc) {
                die(("missing value for " + a).c_str());
            }
            return argv[++i];
        };
        if (a == "--bin-dir") {
            o.bin_dir = value();
        } else if (a == "--threads") {
            o.threads = parse_list(value());
        } else if (a == "--seed") {
            o.seed = (unsigned) std::strtoul(value(), nullptr, 10);
        } else if (a == "--head") {
            o.head = value();
            if (o.head != "ours" && o.head != "ggml") {
                die("--head takes ours or ggml");
            }
        } else if (a == "--corrupt-one-weight") {
            o.corrupt = true;
        } else {
            die(("unknown argument " + a).c_str());
        }
    }
    if (o.bin_dir.empty()) {  // where libggml.so is: the engine's bin dir holds the CPU variants too
        Dl_info info;
        if (dladdr((void *) &ggml_backend_load_all, &info) && info.dli_fname) {
            o.bin_dir = info.dli_fname;
            const size_t slash = o.bin_dir.rfind('/');
            o.bin_dir = slash == std::string::npos ? "." : o.bin_dir.substr(0, slash);
        }
    }
    return o;
}

}  // namespace

int main(int argc, char ** argv) {
    const Options opt = parse_args(argc, argv);
    ggml_backend_load_all_from_path(opt.bin_dir.c_str());

    Backend be;
    be.dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!be.dev) {
        die(("no CPU backend found in " + opt.bin_dir).c_str());
    }
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(be.dev);
    auto get_extra = (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(
        reg, "ggml_backend_dev_get_extra_bufts");
    be.set_n_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (!get_extra || !be.set_n_threads) {
        die("the CPU backend does not export ggml_backend_dev_get_extra_bufts / ggml_backend_set_n_threads");
    }
    std::string names;
    for (ggml_backend_buffer_type_t * b = get_extra(be.dev); b && *b; b++) {
        names += std::string(names.empty() ? "" : ", ") + ggml_backend_buft_name(*b);
        if (std::strcmp(ggml_backend_buft_name(*b), "CPU_BITNET") == 0) {
            be.bitnet = *b;
        }
    }
    be.plain = ggml_backend_dev_buffer_type(be.dev);
    be.backend = ggml_backend_dev_init(be.dev, nullptr);
    if (!be.backend) {
        die("could not start the CPU backend");
    }
    const char * env = std::getenv("BITNET_KERNELS");
    const bool kernels_off = env && std::strcmp(env, "0") == 0;
    printf("CPU device: %s (backends from %s)\n", ggml_backend_dev_description(be.dev), opt.bin_dir.c_str());
    printf("extra buffer types: %s\n", names.empty() ? "(none)" : names.c_str());
    if (!be.bitnet && !kernels_off) {
        fprintf(stderr,
                "FAIL: the CPU backend has no CPU_BITNET extra buffer type (found: %s). Is this the engine "
                "built with BITNET_KERNELS_DIR (patch 0004)?\n",
                names.empty() ? "none" : names.c_str());
        return 1;
    }
    if (be.bitnet && kernels_off) {
        fprintf(stderr, "FAIL: CPU_BITNET is registered although BITNET_KERNELS=0\n");
        return 1;
    }
    printf("mode: %s\n", be.bitnet ? "CPU_BITNET vs CPU vs reference"
                                   : "BITNET_KERNELS=0: CPU_BITNET not registered (as expected); CPU vs reference");
    fflush(stdout);

    std::mt19937 rng(opt.seed);
    const std::vector<int64_t> all = { 1, 2, 3, 7, 16, 33 };
    for (ggml_type type : { GGML_TYPE_TQ2_0, GGML_TYPE_TQ1_0 }) {
        // K = 256: row counts around the 16-row groups (17: a padded last group), every column count
        for (int64_t rows : { 16, 17, 48 }) {
            ternary_case(be, opt, rng, type, 256, rows, all);
        }
        ternary_case(be, opt, rng, type, 256, 48, { 512 });
        // K = 2560: a few groups; 100 rows (6 groups + 4); the 2B model's square and up/gate shapes
        ternary_case(be, opt, rng, type, 2560, 32, { 1, 3, 7, 33 });
        ternary_case(be, opt, rng, type, 2560, 100, { 1, 2, 7 });
        ternary_case(be, opt, rng, type, 2560, 32, { 512 });
        ternary_case(be, opt, rng, type, 2560, 2560, { 1, 2, 16 });
        ternary_case(be, opt, rng, type, 2560, 6912, { 1 });
        // K = 6912: the 2B model's ffn_down
        ternary_case(be, opt, rng, type, 6912, 48, { 1, 16 });
        // past one column chunk of the packed AMX GEMM (128 columns at this depth) with a vpdpbusd tail, and
        // enough rows for the GEMMs' 256-row chunks
        ternary_case(be, opt, rng, type, 6912, 288, { 300 });
        ternary_case(be, opt, rng, type, 6912, 2560, { 1, 3 });
    }
    head_cases(be, opt, rng, 2560, 1000);

    printf("\nmax NMSE:");
    for (const auto & [key, v] : g_max_nmse) {
        printf("  %s=%.2e", key.c_str(), v);
    }
    printf("\n");
    if (be.bitnet) {
        // Why we know CPU_BITNET's MUL_MATs ran our kernels: each ternary weight's memory was repacked
        // into our row-interleaved layout (it differs from ggml's bytes), and ggml's own TQ kernels read
        // ggml's layout, so matching the reference above means our kernels computed it. The head GEMV and
        // GEMM: see kHeadOursBetterBy.
        printf("our kernels: %d/%d ternary weights repacked in CPU_BITNET; fp16 head GEMV/GEMM ours in %d/%d cases\n",
               g_count.repacked, g_count.ternary_weights, g_count.head_ours, g_count.head_lines);
    }
    printf("%d/%d cases OK\n", g_cases - g_failures, g_cases);
    if (g_failures) {
        printf("FAILED:");
        for (const auto & n : g_failed) {
            printf(" %s", n.c_str());
        }
        printf("\n");
        return 1;
    }
    return 0;
}
