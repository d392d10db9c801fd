# Included by mlx-c's project() call (see toolchain.cmake).
add_compile_options("SHELL:-include ${CMAKE_CURRENT_LIST_DIR}/include/ttsd_mlx_c_compat.h")
include_directories(BEFORE SYSTEM "${CMAKE_CURRENT_LIST_DIR}/compat")
