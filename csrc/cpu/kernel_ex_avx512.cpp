// The avx512 build of the generalised block's CPU kernel (kernel_ex_impl.h on top of kernel_impl.h), chosen at
// run time by inverted_residual_cpu.cpp (the same instruction set as the MobileNetV2 kernel). Only this file's
// own functions get the target attribute (the pragma region opens after every include).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cpu_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // GCC: `#pragma GCC target` regions
#define MNV2_VW 16
#pragma GCC push_options
#pragma GCC diagnostic push
// False positives: the row-pointer arrays are only read for the rows a tile has; GCC's own AVX-512 masked loads.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 avx512fintrin.h: the undefined source of unmasked conversions
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace mnv2 {
namespace cpu {
namespace avx512_ex {
#include "kernel_impl.h"
#include "kernel_ex_impl.h"
}  // namespace avx512_ex
}  // namespace cpu
}  // namespace mnv2
#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace mnv2 {
namespace cpu {
const ExKernelTable* avx512_ex_kernel() {
  static const ExKernelTable t{"avx512", MNV2_VW, &avx512_ex::ex_packed_floats, &avx512_ex::ex_pack, &avx512_ex::ex_run};
  return &t;
}
}  // namespace cpu
}  // namespace mnv2
#else
namespace mnv2 {
namespace cpu {
const ExKernelTable* avx512_ex_kernel() { return nullptr; }
}  // namespace cpu
}  // namespace mnv2
#endif
