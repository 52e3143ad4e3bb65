# Adds our ternary kernels and their ggml-cpu buffer type to one CPU variant library.
# Included by ggml/src/ggml-cpu/CMakeLists.txt (patch 0004) inside ggml_add_cpu_backend_variant_impl,
# where GGML_CPU_NAME is the variant's target; the variant's ARCH_FLAGS pick the kernel ISA
# (src/internal.h), so each libggml-cpu-<variant>.so carries the kernels for its own instruction set.
include("${BITNET_KERNELS_DIR}/cmake/bitnet_tuning.cmake")
set(_bitnet_gen "${CMAKE_CURRENT_BINARY_DIR}/bitnet-${GGML_CPU_NAME}")
# BITNET_TUNING_FILE: the tile table; `invoke tune` writes a measured one into the build dir and the
# engine build passes it here. Default: the checked-in table.
if(NOT BITNET_TUNING_FILE)
    set(BITNET_TUNING_FILE "${BITNET_KERNELS_DIR}/tuning.json")
endif()
bitnet_generate_tuning_header("${BITNET_TUNING_FILE}" "${_bitnet_gen}/bitnet_tuning.h")
set(_bitnet_c
    "${BITNET_KERNELS_DIR}/src/pack.c"
    "${BITNET_KERNELS_DIR}/src/scalar.c"
    "${BITNET_KERNELS_DIR}/src/ssse3.c"
    "${BITNET_KERNELS_DIR}/src/avx2.c"
    "${BITNET_KERNELS_DIR}/src/avx512vnni.c"
    "${BITNET_KERNELS_DIR}/src/neon.c"
    "${BITNET_KERNELS_DIR}/src/f16.c"
    "${BITNET_KERNELS_DIR}/src/norm.c")
target_sources(${GGML_CPU_NAME} PRIVATE ${_bitnet_c} "${BITNET_KERNELS_DIR}/ggml/ternary-buft.cpp"
    "${BITNET_KERNELS_DIR}/ggml/ternary-fuse.cpp" "${BITNET_KERNELS_DIR}/ggml/ternary-attn.cpp"
    "${BITNET_KERNELS_DIR}/ggml/ternary-cache.cpp")
target_include_directories(${GGML_CPU_NAME} PRIVATE
    "${BITNET_KERNELS_DIR}/include" "${BITNET_KERNELS_DIR}/src" "${_bitnet_gen}")
target_compile_definitions(${GGML_CPU_NAME} PRIVATE GGML_USE_CPU_TERNARY)
# no fused multiply-add: every ISA combines blocks bit-identically with the scalar reference
set_source_files_properties(${_bitnet_c} TARGET_DIRECTORY ${GGML_CPU_NAME} PROPERTIES COMPILE_OPTIONS "-ffp-contract=off")
