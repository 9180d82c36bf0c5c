// Interface between the torch binding (inverted_residual_cpu.cpp) and the per-ISA kernels (kernel_avx2.cpp,
// kernel_avx512.cpp, both built from kernel_impl.h). No torch headers here: the ISA translation units are
// compiled with `#pragma GCC target(...)` regions and must not instantiate torch's inline functions there.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mnv2 {
namespace cpu {

// Shapes of one block (logical NCHW sizes; the buffers are NHWC).
struct Dims {
  int64_t N, Cin, H, W;  // input
  int64_t Chid;          // expanded (hidden) channels
  int64_t Cout, Ho, Wo;  // output
  int64_t stride;        // 1 or 2
  bool has_expand;
  bool residual;
};

enum class DType { F32, BF16 };  // BF16: uint16_t storage, fp32 arithmetic

// The six weight tensors (contiguous, in the activation dtype): w_expand [Chid, Cin] / b_expand [Chid]
// (nullptr without expand), w_dw [Chid, 3, 3], b_dw [Chid], w_project [Cout, Chid], b_project [Cout].
struct WeightPtrs {
  const void* w_expand;
  const void* b_expand;
  const void* w_dw;
  const void* b_dw;
  const void* w_project;
  const void* b_project;
};

// A stem convolution fused in front of a block without expand conv (KernelTable::run_stem; issue 14): dense 3x3,
// padding 1, stride 1 or 2, + bias (+ ReLU6), over an image [N, H, W, Cin] (NHWC fp32), with weights packed
// by conv3x3_pack (Cout = the block's Cin, conv3x3_supported).
struct StemArgs {
  const float* packed;
  int64_t H, W, Cin, stride;
  bool relu6;
};

// One instruction-set variant of the kernel.
struct KernelTable {
  const char* isa;  // "avx2", "avx512"
  int vec;          // floats per vector register
  // Floats of the packed-weight buffer for these dims (packed layout is ISA specific).
  int64_t (*packed_floats)(const Dims& d);
  // Packs the weights (converted to fp32) into dst (64-byte aligned, packed_floats(d) floats).
  void (*pack)(float* dst, const Dims& d, DType dt, const WeightPtrs& w);
  // y = block(x) with packed weights; x: [N, H, W, Cin], out: [N, Ho, Wo, Cout] (NHWC, contiguous, dt).
  // nthreads: how many threads may share the work. Returns false if scratch memory could not be allocated.
  bool (*run)(const void* x, void* out, DType dt, const Dims& d, const float* packed, int nthreads);

  // Stem / head helpers (fp32; NHWC rows). Dense 3x3 convolution, padding 1, stride s, + bias (+ ReLU6):
  // x [N, H, W, Cin], w [Cout, Cin, 3, 3], b [Cout] -> out [N, Ho, Wo, Cout]; only where conv3x3_supported.
  bool (*conv3x3_supported)(int64_t Cin, int64_t Cout);
  int64_t (*conv3x3_packed_floats)(int64_t Cin, int64_t Cout);
  void (*conv3x3_pack)(float* dst, const float* w, const float* b, int64_t Cin, int64_t Cout);
  bool (*conv3x3_run)(const float* x, float* out, int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t Cout,
                      int64_t stride, bool relu6, const float* packed, int nthreads);
  // Dense layer (1x1 convolution over NHWC pixels, or nn.Linear): x [M, K], w [Ncols, K], b [Ncols]
  // -> out [M, Ncols] = x . w^T + b (+ ReLU6).
  int64_t (*dense_packed_floats)(int64_t K, int64_t Ncols);
  void (*dense_pack)(float* dst, const float* w, const float* b, int64_t K, int64_t Ncols);
  bool (*dense_run)(const float* x, float* out, int64_t M, int64_t K, int64_t Ncols, bool relu6,
                    const float* packed, int nthreads);
  // relu6?(stem conv(x)) -> block, the stem's output never in memory (fp32; the block has no expand conv):
  // x [N, stem.H, stem.W, stem.Cin], out [N, Ho, Wo, Cout]; d describes the block (d.H, d.W: the stem's
  // output size, d.Cin its channels); packed: the block's packed weights. false: scratch allocation failed.
  bool (*run_stem)(const float* x, float* out, const Dims& d, const float* packed, const StemArgs& stem,
                   int nthreads);
  // Head + global average pool: x [N, HW, K] -> out [N, Ncols] = mean_p relu6(x[n, p] . w^T + b); dense_pack.
  bool (*dense_relu6_mean_run)(const float* x, float* out, int64_t N, int64_t HW, int64_t K, int64_t Ncols,
                               const float* packed, int nthreads);
};

const KernelTable* avx2_kernel();    // nullptr when the compiler could not build it
const KernelTable* avx512_kernel();  // nullptr when the compiler could not build it

// ---------------------------------------------------------------------------------------------------------
// The generalised block (issue 13, mnv2::inverted_residual_ex; docs/CONTRACT.md "The generalised block"):
// kernel_ex_impl.h, compiled per ISA by kernel_ex_avx2.cpp / kernel_ex_avx512.cpp.
// ---------------------------------------------------------------------------------------------------------
// Activation codes: the same numbers as ActKind in kernel_impl.h (checked there by static_asserts).
enum class ExAct : int { None = 0, Relu6 = 1, Relu = 2, Hardswish = 3, Silu = 4, Gelu = 5, GeluTanh = 6,
                         Sigmoid = 7, Hardsigmoid = 8 };

// Shapes and options of one generalised block (logical NCHW sizes; the buffers are NHWC).
struct ExDims {
  int64_t N, Cin, H, W;      // block input x
  int64_t H1, W1;            // after the leading depthwise (H, W without one)
  int64_t Chid, Crd, Cout;   // expanded, squeeze-excite reduced (0: no SE), output channels
  int64_t Ho, Wo;            // output
  int64_t k, stride;         // depthwise kernel (odd, 1..9) and stride (1, 2)
  int64_t pt, pl;            // top / left zero padding of the depthwise (bottom / right: what the taps need)
  int64_t k0, stride0;       // leading depthwise kernel (0: none) and stride
  int64_t pt0, pl0;          // its top / left padding
  bool has_expand, residual;
  int act_expand, act_dw, se_act, se_gate, act_project;  // ExAct codes
  int64_t se_scratch_bytes;  // squeeze-excite: one image's depthwise output stays in thread scratch up to this
};

// The twelve weight tensors (contiguous, in the activation dtype; nullptr where absent): w_expand [Chid, Cin],
// b_expand [Chid], w_dw [Chid, k, k], b_dw [Chid], w_se_reduce [Crd, Chid], b_se_reduce [Crd],
// w_se_expand [Chid, Crd], b_se_expand [Chid], w_project [Cout, Chid], b_project [Cout],
// w_dw_start [Cin, k0, k0], b_dw_start [Cin].
struct ExWeightPtrs {
  const void* w_expand;
  const void* b_expand;
  const void* w_dw;
  const void* b_dw;
  const void* w_se_reduce;
  const void* b_se_reduce;
  const void* w_se_expand;
  const void* b_se_expand;
  const void* w_project;
  const void* b_project;
  const void* w_dw_start;
  const void* b_dw_start;
};

struct ExKernelTable {
  const char* isa;  // "avx2", "avx512"
  int vec;
  // Floats of the packed-weight buffer (the layout ignores the spatial sizes and the pads).
  int64_t (*packed_floats)(const ExDims& d);
  // Packs the weights (fp32, 64-byte aligned dst). packed[0] = 1 if every depthwise weight (both
  // depthwise convs) is finite, else 0: the binding then lets the reference compute the block.
  void (*pack)(float* dst, const ExDims& d, DType dt, const ExWeightPtrs& w);
  // y = block(x): x [N, H, W, Cin] (NHWC, dt), out [N, Ho, Wo, Cout] (NHWC, dt). x1: with a leading
  // depthwise, a float buffer [N, H1, W1, Cin] for its output (else unused); xf32: x as float32 when dt is
  // BF16 and there is a leading depthwise (else nullptr). Returns false when scratch could not be allocated.
  bool (*run)(const void* x, const float* xf32, float* x1, void* out, DType dt, const ExDims& d,
              const float* packed, int nthreads);
};

const ExKernelTable* avx2_ex_kernel();    // nullptr when the compiler could not build it
const ExKernelTable* avx512_ex_kernel();  // nullptr when the compiler could not build it


// Blocks (f32, with expand conv) whose input has at most this many pixels (H*W; default 49), with fewer images
// than threads, run in two phases split by channels (kernel_impl.h, run_block_split) instead of row bands.
// MNV2_CPU_SPLIT_PIXELS sets it at the first call (0: never); set_split_max_pixels (mnv2_kernels._C) for tests
// and benchmarks, returns the old one.
int64_t split_max_pixels();
int64_t set_split_max_pixels(int64_t pixels);

// ---------------------------------------------------------------------------------------------------------
// Thread pool (thread_pool.cpp). parallel_units(n, nthreads, fn, ctx) calls fn(ctx, u) once for every
// u in [0, n): the calling thread claims units itself, and up to nthreads-1 pool threads join while units
// are left. The caller never waits for a helper that has not started (on a busy machine it simply does
// the work alone), only for helpers that are running a unit. Nested calls and calls made while another
// thread uses the pool run inline on the calling thread.
// ---------------------------------------------------------------------------------------------------------
using UnitFn = void (*)(void* ctx, int64_t unit);
void parallel_units(int64_t n, int nthreads, UnitFn fn, void* ctx);

template <typename F>
inline void parallel_units(int64_t n, int nthreads, F& f) {
  parallel_units(n, nthreads, [](void* c, int64_t u) { (*static_cast<F*>(c))(u); }, &f);
}

}  // namespace cpu
}  // namespace mnv2
