# CMake toolchain file for building mlx-c (inside the mlx-sys crate) on Linux.
#
# Picked up by the `cmake` crate through CMAKE_TOOLCHAIN_FILE_<target>, which
# .cargo/config.toml sets for Linux targets only; macOS keeps mlx-rs's default
# (Metal) build. What it does:
#   * builds mlx-c against the MLX runtime that scripts/setup installed from PyPI
#     (.deps/mlx -> the wheel's `mlx` folder) instead of fetching MLX from GitHub;
#   * through mlx_c_flags.cmake (run by mlx-c's project()), pre-includes
#     include/ttsd_mlx_c_compat.h (float16_t / bfloat16_t off aarch64) and puts
#     compat/ on the include path, whose <format> stands in for GCC 12's
#     missing one (it defers to the real header on newer compilers).
get_filename_component(_ttsd_root "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
set(MLX_C_USE_SYSTEM_MLX ON CACHE BOOL "use the MLX runtime from .deps" FORCE)
set(MLX_C_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
set(MLX_DIR "${_ttsd_root}/.deps/mlx/share/cmake/MLX" CACHE PATH "MLX from the PyPI wheel" FORCE)
# Only mlx-c's own project (named mlx.data), not CMake's compiler checks.
set(CMAKE_PROJECT_mlx.data_INCLUDE "${CMAKE_CURRENT_LIST_DIR}/mlx_c_flags.cmake")
