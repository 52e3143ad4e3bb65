# bitnet_generate_tuning_header(<tuning.json> <out.h>)
#
# Turns the per-ISA tile table in tuning.json into a C header of macros
#   #define BITNET_TUNE_<ISA>_<PARAM> <int>
# (ISA and PARAM upper-cased, ISA made a C identifier: neon-dotprod -> NEON_DOTPROD), written only when its content changes, and makes CMake re-run when the
# JSON changes. Used by this project and, next, by the llama.cpp integration (include this file and
# call it for the ggml-cpu target). Every ISA must define every parameter in BITNET_TUNING_PARAMS.
set(BITNET_TUNING_PARAMS gemm_row_groups gemm_cols prefetch_bytes tq1_base3 tq2_base3)

function(bitnet_generate_tuning_header json_file out_file)
    file(READ "${json_file}" json)
    string(JSON n_isa ERROR_VARIABLE err LENGTH "${json}" isa)
    if(err)
        message(FATAL_ERROR "${json_file}: no \"isa\" table (${err}); see kernels/ternary/tuning.json")
    endif()
    set(text "/* Generated from ${json_file} by bitnet_tuning.cmake. Do not edit: edit the JSON. */\n")
    string(APPEND text "#ifndef BITNET_TUNING_H\n#define BITNET_TUNING_H\n")
    math(EXPR last "${n_isa} - 1")
    foreach(i RANGE ${last})
        string(JSON isa MEMBER "${json}" isa ${i})
        string(TOUPPER "${isa}" ISA)
        string(MAKE_C_IDENTIFIER "${ISA}" ISA) # neon-dotprod -> NEON_DOTPROD
        foreach(p IN LISTS BITNET_TUNING_PARAMS)
            string(JSON v ERROR_VARIABLE err GET "${json}" isa "${isa}" "${p}")
            if(err OR NOT v MATCHES "^[0-9]+$")
                message(FATAL_ERROR "${json_file}: isa.${isa}.${p} must be a non-negative integer (got '${v}')")
            endif()
            string(TOUPPER "${p}" P)
            string(APPEND text "#define BITNET_TUNE_${ISA}_${P} ${v}\n")
        endforeach()
    endforeach()
    string(APPEND text "#endif\n")
    set(tmp "${out_file}.tmp")
    file(WRITE "${tmp}" "${text}")
    configure_file("${tmp}" "${out_file}" COPYONLY) # rewrites only if changed: no needless rebuilds
    file(REMOVE "${tmp}")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${json_file}")
endfunction()
