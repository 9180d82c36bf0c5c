// The avx512 build of the fused CPU kernel (kernel_impl.h), chosen at run time by inverted_residual_cpu.cpp.
// Only this file's own functions get the target attribute (the pragma region opens after every include),
// so no inline function of a shared header is emitted with avx512 instructions.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "cpu_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // GCC: `#pragma GCC target` regions
#define MNV2_VW 16
#pragma GCC push_options
#pragma GCC diagnostic push
// False positives: the row-pointer arrays are only read for the rows a tile has; GCC's own AVX-512 masked loads.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace mnv2 {
namespace cpu {
namespace avx512 {
#include "kernel_impl.h"
}  // namespace avx512
}  // namespace cpu
}  // namespace mnv2
#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace mnv2 {
namespace cpu {
// Outside the target region: callable (and its table built) on any x86-64 machine.
const KernelTable* avx512_kernel() {
  static const KernelTable t{"avx512", MNV2_VW, &avx512::packed_floats, &avx512::pack, &avx512::run,
                             &avx512::conv3x3_supported, &avx512::conv3x3_packed_floats, &avx512::conv3x3_pack,
                             &avx512::conv3x3_run, &avx512::dense_packed_floats, &avx512::dense_pack, &avx512::dense_run,
                             &avx512::run_stem, &avx512::dense_relu6_mean_run};
  return &t;
}
}  // namespace cpu
}  // namespace mnv2
#else
namespace mnv2 {
namespace cpu {
const KernelTable* avx512_kernel() { return nullptr; }
}  // namespace cpu
}  // namespace mnv2
#endif
