# cmake -DBITNET_JSON=table.json -DBITNET_OUT=out.h -P gen_tuning_header.cmake
# Runs the kernels' tuning-header generator on one table, as the engine and kernel builds do
# (tests/test_tune.py checks that a table written by `invoke tune` is accepted).
include("${CMAKE_CURRENT_LIST_DIR}/../../kernels/ternary/cmake/bitnet_tuning.cmake")
bitnet_generate_tuning_header("${BITNET_JSON}" "${BITNET_OUT}")
