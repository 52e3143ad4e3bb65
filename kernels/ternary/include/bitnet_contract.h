/* The engine contract, C side: the names our patched llama.cpp and bitnet/contract.py must spell the
 * same (environment variables, GGUF keys, the lines the engine prints about itself). Our own sources
 * include this header; the patches to llama.cpp spell the same strings, and tests/test_contract.py
 * checks that this header, the patches and the Python module agree. */
#ifndef BITNET_CONTRACT_H
#define BITNET_CONTRACT_H

/* environment */
#define BITNET_ENV_KERNELS        "BITNET_KERNELS"          /* "0": stock ggml kernels (patch 0004) */
#define BITNET_ENV_ACT_QUANT      "BITNET_ACT_QUANT"        /* per_token | per_block (patch 0006) */
#define BITNET_ENV_CPU_VARIANT    "GGML_CPU_VARIANT"        /* force libggml-cpu-<name> (patch 0002) */
#define BITNET_ENV_VARIANT_REPORT "GGML_CPU_VARIANT_REPORT" /* print the report lines below */
#define BITNET_ENV_SPLIT          "BITNET_SPLIT"            /* static | guided: row split (ternary-buft.cpp) */
#define BITNET_ENV_BARRIER_SPIN   "GGML_BARRIER_SPIN"       /* spins before a waiter yields, or off (patch 0009) */
#define BITNET_ENV_FUSE           "BITNET_FUSE"             /* "0": no fused norm/matmul chains (patch 0012) */
#define BITNET_ENV_ATTN           "BITNET_ATTN"             /* "0": prompt attention left to ggml (ternary-attn.cpp) */
#define BITNET_ENV_AMX            "BITNET_AMX"              /* "0": the GEMM without AMX-INT8 tiles (avx512vnni.c) */
#define BITNET_ENV_LAYOUT         "BITNET_LAYOUT"           /* tk1 | tk2: every ternary weight's layout (ternary-buft.h) */
#define BITNET_ENV_REPACK_CACHE   "BITNET_REPACK_CACHE"     /* "0": no <gguf>.<isa>.bitnet-repack file (ternary-cache.cpp) */

/* GGUF keys, after "<arch>." */
#define BITNET_GGUF_HIDDEN_ACTIVATION "hidden_activation"   /* relu2 | silu (patch 0001) */
#define BITNET_GGUF_ACTIVATION_QUANT  "activation_quant"    /* per_token | per_block (patch 0006) */

/* report lines (stderr), as printf formats */
#define BITNET_REPORT_CPU_VARIANT "ggml: CPU variant %s\n"                  /* patch 0002 */
#define BITNET_REPORT_KERNELS     "bitnet: ternary kernels %s (%s)\n"       /* ternary-buft.cpp */
#define BITNET_REPORT_ACT_QUANT   "bitnet: activation quantization %s (%s)" /* patch 0006 */
#define BITNET_REPORT_FUSED       "bitnet: fused chain %s\n"                 /* ternary-fuse.cpp, first run of a kind */
#define BITNET_REPORT_ATTN        "bitnet: prompt attention ours\n"          /* ternary-attn.cpp, first run */
#define BITNET_REPORT_REPACK_CACHE "bitnet: repack cache %s\n"              /* ternary-cache.cpp, per load */

#endif /* BITNET_CONTRACT_H */
