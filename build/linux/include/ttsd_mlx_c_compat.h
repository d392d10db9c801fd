/* Half-precision typedefs that mlx-c's half.h only provides on aarch64.
 *
 * Pre-included into mlx-c's C++ compile (toolchain.cmake) and into bindgen's
 * parse (BINDGEN_EXTRA_CLANG_ARGS in .cargo/config.toml) on Linux.
 * mlx-rs expects both types from mlx-sys: bindgen renders `__fp16` as a tuple
 * struct over u16, and mlx-rs reads `bfloat16_t` as u16. ttsd itself only
 * moves float32 through these bindings. */
#ifndef TTSD_MLX_C_COMPAT_H
#define TTSD_MLX_C_COMPAT_H
#ifdef __cplusplus
/* mlx-c's private/io.h calls std::format without including <format>; newer
 * libstdc++ pulls it in through <mlx/mlx.h>, GCC 12 has none (compat/format). */
#include <format>
#endif
#if !defined(__aarch64__) && !defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC)
#ifdef __cplusplus
#include <mlx/types/half_types.h>
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;
#else
#include <stdint.h>
typedef __fp16 float16_t;
typedef uint16_t bfloat16_t;
#endif
#define HAS_FLOAT16
#define HAS_BFLOAT16
#endif
#endif
