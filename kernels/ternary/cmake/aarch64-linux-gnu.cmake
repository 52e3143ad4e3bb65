# CMake toolchain: cross-compile for aarch64 Linux with Debian's cross gcc, run tests under qemu-user.
#   apt-get install -y gcc-aarch64-linux-gnu qemu-user
#   cmake -S kernels/ternary -B /tmp/tk-arm -G Ninja \
#         -DCMAKE_TOOLCHAIN_FILE=$PWD/kernels/ternary/cmake/aarch64-linux-gnu.cmake   (absolute path:
#         a relative one is resolved against the build directory)
#   cmake --build /tmp/tk-arm -j1 && ctest --test-dir /tmp/tk-arm
# ctest runs each test through CMAKE_CROSSCOMPILING_EMULATOR; qemu's default CPU model ("max") has
# NEON and dotprod. Override the prefix with -DBITNET_CROSS_PREFIX=... (e.g. aarch64-linux-gnu-gcc-12).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(BITNET_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "cross toolchain prefix")
set(BITNET_CROSS_SYSROOT "/usr/aarch64-linux-gnu" CACHE PATH "target libraries for qemu -L")
set(CMAKE_C_COMPILER "${BITNET_CROSS_PREFIX}gcc")

find_program(BITNET_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(BITNET_QEMU_AARCH64)
    set(CMAKE_CROSSCOMPILING_EMULATOR "${BITNET_QEMU_AARCH64};-L;${BITNET_CROSS_SYSROOT}")
endif()

set(CMAKE_FIND_ROOT_PATH "${BITNET_CROSS_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
