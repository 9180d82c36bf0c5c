// Fused MobileNetV2 inverted-residual block, one launch, second design (docs/CONTRACT.md, docs/CUDA_KERNEL.md).
//
// Persistent CTAs (256 threads, 8 warps). A work item is (image n, band of output rows). A CTA walks down its
// band in steps of R output rows; each step:
//   1. the input rows the step newly needs, [e0, e1), are in shared memory sX (cp.async, 16-byte, zero-filled
//      padding; the next step's rows are prefetched while this step runs its depthwise and project);
//   2. for each chunk of HC hidden channels:
//        expand GEMM [pixels of rows e0..e1) x Cin] x [Cin x HC] on tensor cores (mma.sync m16n8k16, fp32
//        accumulate, starting from the bias), rounded to the I/O dtype, ReLU6 on packed pairs, hidden channels >=
//        Chid forced to exactly 0 (a mask), 16-byte stores into a ring of RR expanded rows (sRing) whose rows are
//        separated by zero pixels. Without an expand conv the ring gets the input channels themselves. Rows and
//        columns outside the image are never computed: the depthwise reads the zero pixels for columns -1 and W
//        and skips rows -1 and H (the padding lives in the expanded, activated space and is exactly 0);
//        depthwise 3x3 (stride S) from register sliding windows: a thread computes 7 output pixels x 8 channels
//        from the 3 x (6S+3) input vectors it needs, fp32 accumulation, + bias, ReLU6, rounded to the I/O dtype
//        (as eager PyTorch does before the project conv) -> sDW [R*Wo pixels x ChidP];
//   3. project GEMM [R*Wo x ChidP] x [ChidP x Cout] on tensor cores, + bias (+ residual, read from x), 16-byte
//      NHWC stores.
// Ring mode (one chunk, HC = ChidP): the last rows of a step stay in the ring for the next, so every input row is
// expanded once per band. Chunk mode (several chunks, used when all hidden channels of the ring do not fit):
// one step per band, the ring holds the band's rows for one chunk at a time.
//
// Both GEMMs: A fragments by ldmatrix.x4 from the natural [pixel][channel] shared layout; B fragments (weights,
// packed by the binding's pack_k32 into fragment order) by one 16-byte __ldg per n-tile and 32-wide K block; an N
// permutation (column c of n-tile j is channel 8*(c/2) + 2j + c%2 of a 32-wide N slice), so each thread's
// accumulators hold 8 consecutive channels of a pixel and store as one 16-byte vector.
//
// ReLU6 is __hmax2_nan / __hmin2_nan on the rounded pairs: NaN passes through as in PyTorch (fminf/fmaxf would
// drop it); rounding is monotonic and 0, 6 are exact, so this equals rounding the float clamp.
// Offsets into x and y are int64; the in-CTA pixel counts are small (bounded by shared memory).
// No torch headers here; the binding (inverted_residual_binding.cpp) validates, pads and allocates.
//
// The generalised block (mnv2::inverted_residual_ex, issue 13; docs/CUDA_KERNEL.md "Generalised blocks") is the
// same body with GEN = true (mnv2_ir_ex_kernel<T>, one instantiation per dtype): stride S and depthwise kernel K in
// 1, 3, 5, 7, 9 from the parameters (its depthwise walks one tap column at a time, so K costs no registers), pads
// before (pad_t, pad_l: symmetric or TF "same"; the after-pads are implicit: rows >= H are skipped, columns >= W
// read the ring's zero gap of Z = max(K / 2, 1) pixels between rows), runtime activations after expand,
// depthwise and project (a warp-uniform switch in each epilogue, on values rounded to the I/O dtype as eager
// PyTorch computes them), and squeeze-excite in two passes over the input that never write the expanded tensor:
// se_mode 1 runs expand + depthwise and adds the depthwise outputs of each (image, channel) into a float32 pool
// (global atomics, no project), se_excite_kernel turns the pool into the gate, se_mode 2 recomputes, multiplies
// the depthwise output by the gate and projects. A leading depthwise (MobileNetV4 UIB ExtraDW) runs first as
// leading_dw_kernel into a narrow [N, H1, W1, Cin8] buffer; the residual then adds the original x (xres).
// The MobileNetV2 instantiation (mnv2_ir_ring_kernel<T, S>: GEN = false, K = 3, ReLU6) compiles to the same code
// as before.
#include "inverted_residual_cuda.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <type_traits>
#include <cstddef>
#include <cstdint>

namespace {

// Keep these in step with mnv2_kernels/cuda_plan.py (a CPU test compares the two plans).
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kPX = 7;               // output pixels per depthwise work item (MobileNet widths are multiples of 7)
constexpr int kMaxStepPixels = 256;  // R * Wo <= this (unless R == 1)
constexpr int kChunk = 96;           // hidden channels per chunk in chunk mode
constexpr int64_t kBudget2 = 113 * 1024;  // shared memory per CTA for 2 CTAs per SM (228 KB SM, 1 KB reserved)
constexpr int kMinRingPixels = 24;   // ring mode needs R * Wo >= this (or R == Ho)
constexpr int64_t kMaxChannels = 1 << 16;
constexpr int kMaxK = 9;             // largest depthwise kernel (generalised block)

// Zero pixels between ring rows for a K x K depthwise: the largest pad on either side (symmetric: K / 2; TF
// "same": at most K / 2 as well), at least 1 (the MobileNetV2 layout).
constexpr int ring_gap(int K) { return K / 2 > 1 ? K / 2 : 1; }
// Ring rows a step needs: (R - 1) * S + K input rows, at least R * S (K = 1, stride 2: the rows between two
// steps' rows are expanded too, as the band's rows are contiguous).
inline int64_t ring_rows_for(int64_t R, int S, int K, int64_t H) {
  const int64_t rr = (R - 1) * S + (K > S ? K : S);
  return rr < H ? rr : H;
}

// ---------------------------------------------------------------------------------------------------------
// Plan (host). Mirrored by mnv2_kernels/cuda_plan.py.

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t align128(int64_t v) { return round_up(v, 128); }
// Leading dimension (elements, 2-byte) of a shared row of `elems` (a multiple of 8) channels: an odd number of
// 16-byte units, so the 8 rows one ldmatrix phase reads fall in 8 different bank groups.
inline int64_t pad_ld(int64_t elems) { return (elems / 8) % 2 == 1 ? elems : elems + 8; }

// Ring of expanded rows: row r holds image columns 0 .. W-1 at pixels r*(W+Z) + Z .. r*(W+Z) + Z + W - 1 (Z =
// ring_gap(K), 1 for 3x3); the Z pixels before each row (and after the last) are zero, so columns -Z .. -1 of a row
// and W .. W+Z-1 (the next row's zero pixels) read as zero padding without a check. A few slack pixels after the
// last row absorb the reads of a partial depthwise strip (outputs past Wo, which are discarded).
inline int64_t ring_pixels(int64_t RR, int64_t W, int64_t Z = 1) { return RR * (W + Z) + Z + 2 * kPX + 2; }

struct Layout {
  int64_t LX, MXP, LH, LD2, MOP, KP, RR;
  int64_t off_x, off_ring, off_dw, off_wdw, off_bdw, total;
};

Layout make_layout(int64_t Cin8, int64_t Chid8, int64_t H, int64_t W, int64_t Wo, int S, int64_t R, int64_t HC,
                   int K = 3) {
  Layout L;
  L.RR = ring_rows_for(R, S, K, H);
  L.LX = pad_ld(round_up(Cin8, 32));
  L.MXP = round_up(L.RR * W, 32);
  L.LH = pad_ld(HC);
  L.KP = round_up(Chid8, HC);
  L.LD2 = pad_ld(L.KP);
  L.MOP = round_up(R * Wo, 32);
  int64_t off = 0;
  L.off_x = off;    off = align128(off + L.MXP * L.LX * 2);
  L.off_ring = off; off = align128(off + ring_pixels(L.RR, W, ring_gap(K)) * L.LH * 2);
  L.off_dw = off;   off = align128(off + L.MOP * L.LD2 * 2);
  L.off_wdw = off;  off = align128(off + int64_t(K) * K * HC * 4);
  L.off_bdw = off;  off = align128(off + HC * 4);
  L.total = off;
  return L;
}

// Largest R in [1, Ho] with R*Wo <= kMaxStepPixels (R = 1 always allowed) whose layout fits `budget`; 0 if none.
int64_t best_rows(int64_t Cin8, int64_t Chid8, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int S, int64_t HC,
                  int64_t budget, int K) {
  int64_t rmax = kMaxStepPixels / Wo;
  if (rmax < 1) rmax = 1;
  if (rmax > Ho) rmax = Ho;
  for (int64_t R = rmax; R >= 1; --R)
    if (make_layout(Cin8, Chid8, H, W, Wo, S, R, HC, K).total <= budget) return R;
  return 0;
}

// Expanded pixel slots (32-pixel warp tiles x 32) of one image when every band is one step of R output rows (chunk
// mode: each band expands its own halo rows).
int64_t chunk_mode_slots(int64_t H, int64_t W, int64_t Ho, int S, int64_t R, int K, int pad_t) {
  int64_t slots = 0;
  for (int64_t oy0 = 0; oy0 < Ho; oy0 += R) {
    const int64_t r1 = oy0 + R < Ho ? oy0 + R : Ho;
    const int64_t e0 = oy0 * S - pad_t > 0 ? oy0 * S - pad_t : 0;
    const int64_t e1 = (r1 - 1) * S - pad_t + K < H ? (r1 - 1) * S - pad_t + K : H;
    slots += round_up((e1 - e0) * W, 32);
  }
  return slots;
}

}  // namespace

extern "C" void mnv2_ir_cuda_plan_ex(int64_t N, int64_t Cin8, int64_t Chid8, int64_t Cout8, int64_t H, int64_t W,
                                     int stride, int kernel, int pad_t, int has_expand, int64_t smem_limit,
                                     int num_sms, mnv2_ir_plan* plan) {
  mnv2_ir_plan P = {};
  (void)has_expand;
  (void)Cout8;
  const int K = kernel;
  if (N < 0 || H < 1 || W < 1 || Cin8 < 8 || Chid8 < 8 || Cin8 > kMaxChannels || Chid8 > kMaxChannels ||
      (stride != 1 && stride != 2) || num_sms < 1 || K < 1 || K > kMaxK || K % 2 == 0 || pad_t < 0 ||
      pad_t > K / 2) {
    *plan = P;
    return;
  }
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const int64_t ChidP = round_up(Chid8, 32);
  const int64_t hc_chunk = ChidP < kChunk ? ChidP : kChunk;
  const int64_t budgets[2] = {kBudget2 < smem_limit ? kBudget2 : smem_limit, smem_limit};
  int64_t R = 0, HC = 0;
  for (int b = 0; b < 2 && R == 0; ++b) {
    const int64_t r = best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, ChidP, budgets[b], K);
    if (r > 0 && (r == Ho || r * Wo >= kMinRingPixels)) {
      R = r;
      HC = ChidP;
      break;
    }
    int64_t rc = best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, hc_chunk, budgets[b], K);
    if (rc > 0 && b == 0) {  // one CTA per SM with taller bands when that expands far fewer halo pixels
      const int64_t rl = best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, hc_chunk, budgets[1], K);
      if (rl > rc && 10 * chunk_mode_slots(H, W, Ho, stride, rl, K, pad_t) <
                         7 * chunk_mode_slots(H, W, Ho, stride, rc, K, pad_t))
        rc = rl;
    }
    if (rc > 0) {
      R = rc;
      HC = hc_chunk;
      break;
    }
  }
  if (R == 0) {
    *plan = P;
    return;
  }
  const Layout L = make_layout(Cin8, Chid8, H, W, Wo, stride, R, HC, K);
  P.ok = 1;
  P.rows = int(R);
  P.chunk = int(HC);
  P.nchunks = int(L.KP / HC);
  P.ring_rows = int(L.RR);
  P.steps = int((Ho + R - 1) / R);
  P.ctas_per_sm = L.total <= kBudget2 ? 2 : 1;
  const int64_t slots = int64_t(P.ctas_per_sm) * num_sms;
  if (P.nchunks > 1) {
    P.bands = P.steps;  // chunk mode: one step per band
  } else {
    int64_t b = N > 0 ? slots / N : 1;
    if (b < 1) b = 1;
    if (b > P.steps) b = P.steps;
    P.bands = int(b);
  }
  P.items = N * P.bands;
  P.grid = P.items < slots ? P.items : slots;
  P.smem = L.total;
  *plan = P;
}

extern "C" void mnv2_ir_cuda_plan(int64_t N, int64_t Cin8, int64_t Chid8, int64_t Cout8, int64_t H, int64_t W,
                                  int stride, int has_expand, int64_t smem_limit, int num_sms, mnv2_ir_plan* plan) {
  mnv2_ir_cuda_plan_ex(N, Cin8, Chid8, Cout8, H, W, stride, 3, 1, has_expand, smem_limit, num_sms, plan);
}

namespace {

// ---------------------------------------------------------------------------------------------------------
// Device helpers

// Unsigned division by a runtime constant: n / d == (umulhi(n, mul) + n) >> shift for n < 2^31.
struct FastDiv {
  uint32_t d, mul, shift;
};

inline FastDiv make_fastdiv(uint32_t d) {
  FastDiv f;
  f.d = d;
  f.shift = 0;
  while ((uint64_t(1) << f.shift) < d) ++f.shift;
  f.mul = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << f.shift) - d)) / d + 1);
  return f;
}

__device__ __forceinline__ uint32_t fdiv(uint32_t n, const FastDiv& f) {
  return (__umulhi(n, f.mul) + n) >> f.shift;
}

// Activations in float (generalised block), NaN propagating as PyTorch's: the clamps go through fminf / fmaxf
// only where a NaN input still yields NaN (x * clamp(x + 3) is NaN for a NaN x; hardsigmoid checks explicitly).
// Codes: mnv2_act in inverted_residual_cuda.cuh.
__device__ __forceinline__ float act_f(int a, float v) {
  switch (a) {
    case MNV2_ACT_RELU6: return v != v ? v : fminf(fmaxf(v, 0.f), 6.f);
    case MNV2_ACT_RELU: return v != v ? v : fmaxf(v, 0.f);
    case MNV2_ACT_HARDSWISH: return v * fminf(fmaxf(v + 3.f, 0.f), 6.f) / 6.f;
    case MNV2_ACT_SILU: return v / (1.f + expf(-v));
    case MNV2_ACT_GELU: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case MNV2_ACT_GELU_TANH: {
      const float inner = 0.79788456080286536f * (v + 0.044715f * v * v * v);
      return 0.5f * v * (1.f + tanhf(inner));
    }
    case MNV2_GATE_SIGMOID: return 1.f / (1.f + expf(-v));
    case MNV2_GATE_HARDSIGMOID: return v != v ? v : fminf(fmaxf(v + 3.f, 0.f), 6.f) / 6.f;
    default: return v;  // MNV2_ACT_NONE
  }
}

// The smooth activations of the epilogues, compact (one code path per element whatever the activation, so the
// 32-value epilogues stay small): act(v) = v * m(v) with m = (1 + erf(v / sqrt 2)) / 2 (GELU), clamp(v + 3, 0, 6) / 6
// (hardswish) or sigmoid(z) with z = v (SiLU) or z = 2 sqrt(2 / pi) (v + 0.044715 v^3) (GELU tanh: (1 + tanh(u)) / 2
// = sigmoid(2u)). NaN propagates (v * m). ReLU6 / ReLU / none are handled in packed form by the callers.
__device__ __forceinline__ float act_smooth(int a, float v) {
  float m;
  if (a == MNV2_ACT_GELU) {
    m = 0.5f * (1.f + erff(v * 0.70710678118654752f));
  } else if (a == MNV2_ACT_HARDSWISH) {
    m = fminf(fmaxf(v + 3.f, 0.f), 6.f) * (1.f / 6.f);
  } else {
    const float z = a == MNV2_ACT_SILU ? v : 1.5957691216057308f * (v + 0.044715f * v * v * v);
    m = 1.f / (1.f + __expf(-z));
  }
  return v * m;
}

template <typename T>
struct Tr;

// A packed pair of a 16-bit type (__half2, __nv_bfloat162): packing two floats (rounded), broadcasting one,
// unpacking to float2. TrPair builds Tr's packed helpers on these for either type.
template <typename T2>
struct Pair2;

template <>
struct Pair2<__half2> {
  static __device__ __forceinline__ __half2 pack(float a, float b) { return __floats2half2_rn(a, b); }
  static __device__ __forceinline__ __half2 splat(float v) { return __float2half2_rn(v); }
  static __device__ __forceinline__ float2 unpack(__half2 h) { return __half22float2(h); }
};

template <>
struct Pair2<__nv_bfloat162> {
  static __device__ __forceinline__ __nv_bfloat162 pack(float a, float b) { return __floats2bfloat162_rn(a, b); }
  static __device__ __forceinline__ __nv_bfloat162 splat(float v) { return __float2bfloat162_rn(v); }
  static __device__ __forceinline__ float2 unpack(__nv_bfloat162 h) { return __bfloat1622float2(h); }
};

// Tr's packed-pair helpers, the same for __half (T2 = __half2) and __nv_bfloat16 (T2 = __nv_bfloat162); a pair
// travels as its 32 bits (uint32_t).
template <typename T2>
struct TrPair {
  using P = Pair2<T2>;
  static __device__ __forceinline__ uint32_t bits(T2 h) { return *reinterpret_cast<const uint32_t*>(&h); }
  // act(a, b) rounded to a packed pair, for the generalised block's runtime activation `act` (warp-uniform): the
  // conv output is rounded first (eager PyTorch rounds every op's output), then the activation in float, rounded.
  // ReLU6 / ReLU / none stay in packed form (NaN-propagating min / max, as relu6_f2).
  static __device__ __forceinline__ uint32_t act_f2(int act, float a, float b) {
    T2 h = P::pack(a, b);
    if (act == MNV2_ACT_RELU6) {
      h = __hmin2_nan(__hmax2_nan(h, P::splat(0.f)), P::splat(6.f));
    } else if (act == MNV2_ACT_RELU) {
      h = __hmax2_nan(h, P::splat(0.f));
    } else if (act != MNV2_ACT_NONE) {
      const float2 f = P::unpack(h);
      h = P::pack(act_smooth(act, f.x), act_smooth(act, f.y));
    }
    return bits(h);
  }
  static __device__ __forceinline__ float2 to_f2(uint32_t v) { return P::unpack(*reinterpret_cast<const T2*>(&v)); }
  static __device__ __forceinline__ uint32_t from_f2(float a, float b) { return bits(P::pack(a, b)); }
  // relu6 of (a, b) rounded to a packed pair: round, then clamp with the NaN-propagating min / max (rounding is
  // monotonic and 0, 6 are exact, so this equals rounding the float clamp).
  static __device__ __forceinline__ uint32_t relu6_f2(float a, float b) {
    return bits(__hmin2_nan(__hmax2_nan(P::pack(a, b), P::splat(0.f)), P::splat(6.f)));
  }
};

template <>
struct Tr<__half> : TrPair<__half2> {
  static __device__ __forceinline__ float round_f(float v) { return to_f(from_f(v)); }
  static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ void mma(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

template <>
struct Tr<__nv_bfloat16> : TrPair<__nv_bfloat162> {
  static __device__ __forceinline__ float round_f(float v) { return to_f(from_f(v)); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ void mma(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes == 0 writes 16 zero bytes (src is not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// A fragment (16 x 16, row-major in shared memory) of mma m16n8k16: lane l gives the address of row (l & 7) +
// 8 * ((l >> 3) & 1), column 8 * (l >> 4) of the tile.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ uint4 lds16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
// One 16-byte shared store (inline PTX: the front end otherwise splits some of these into four 4-byte stores).
// Ordering against other threads' reads comes from __syncthreads, as for plain stores.
__device__ __forceinline__ void sts16(void* p, uint4 v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr(p)), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w));
}

// ---------------------------------------------------------------------------------------------------------
// Kernel parameters (filled by the launcher from the plan)

struct Params {
  const void* x;    // [N, H, W, Cin8]
  const void* we;   // [Chid8, Cin8] or null (no expand conv)
  const void* be;   // [Chid8]
  const void* wdw;  // [Chid8, 9]
  const void* bdw;  // [Chid8]
  const void* wp;   // [Cout8, Chid8]
  const void* bp;   // [Cout8]
  void* y;          // [N, Ho, Wo, Cout8]
  int H, W, Ho, Wo, Cin8, Chid8, chid_real, Cout8;
  int residual, has_expand;
  int R, HC, nchunks, RR, steps, bands;
  int64_t items;
  int LX, LH, LD2, KP, CinP, ChidP;  // CinP / ChidP = Cin8 / Chid8 rounded up to 32 (packed weight row lengths)
  int off_ring, off_dw, off_wdw, off_bdw;
  FastDiv div_xvec;   // sX vector index -> pixel (CinP / 8 vectors per pixel)
  int xv_pstep, xv_cstep;  // kThreads = xv_pstep * (CinP / 8) + xv_cstep / 8
  FastDiv div_ncg;    // depthwise item -> channel group (HC / 8 groups)
  FastDiv div_ns;     // depthwise strip -> (row, strip) (ceil(Wo / kPX) strips per row)
  FastDiv div_hcv;    // copy (no expand) index -> pixel (HC / 8 vectors per pixel)
  FastDiv div_ntp;    // project warp tile -> (m tile, n tile)
  FastDiv div_w;      // pixel -> (row, column) of the ring
  FastDiv div_nte;    // expand warp tile -> (m tile, n tile)
  // generalised block only (GEN = true; the MobileNetV2 kernel never reads these)
  const void* xres;   // [N, H, W, Cin8]: the residual's source (x, or the block input before a leading depthwise)
  int pad_t, pad_l;   // padding rows / columns before the image
  int act_e, act_d, act_p;  // mnv2_act codes
  int se_mode;        // 0: no squeeze-excite; 1: pass 1 (pool, no project); 2: pass 2 (gate, project)
  float* pool;        // [N, Chid8] float32 sums of the depthwise output (pass 1)
  const float* gate;  // [N, Chid8] float32 gate (pass 2)
  int stride, ksize, zgap;  // S, K, ring_gap(K) (template constants in the MobileNetV2 kernel)
};

// Ring pixel of pixel `pix` (row-major over W columns) of the rows starting at ring row `ring_row0` (Z zero pixels
// before each row).
__device__ __forceinline__ int ring_pos(const Params& p, int ring_row0, int pix, int Z) {
  const int r = int(fdiv(uint32_t(pix), p.div_w));
  int slot = ring_row0 + r;
  if (slot >= p.RR) slot -= p.RR;
  return slot * (p.W + Z) + Z + (pix - r * p.W);
}

// ---------------------------------------------------------------------------------------------------------
// Phases

// Input rows [e0, e1) of image n -> sX [pixels][LX] (zero channels beyond Cin8, zero pixels up to a multiple of 32).
template <typename T>
__device__ __forceinline__ void load_rows(const Params& p, T* sX, int64_t n, int e0, int e1) {
  const T* x = static_cast<const T*>(p.x);
  const int npix = (e1 - e0) * p.W;
  const int vpp = p.CinP >> 3;
  const int tot_pix = (npix + 31) & ~31;
  const T* base = x + (int64_t(n) * p.H + e0) * int64_t(p.W) * p.Cin8;
  // thread -> (pixel, 16-byte vector); kThreads = xv_pstep * vpp + xv_cstep (no division in the loop)
  int pix = int(fdiv(uint32_t(threadIdx.x), p.div_xvec));
  int c = (int(threadIdx.x) - pix * vpp) << 3;
  const T* src = base + int64_t(pix) * p.Cin8 + c;  // advanced with (pix, c); dereferenced only when in range
  const int step = p.xv_pstep * p.Cin8 + p.xv_cstep, wrap = p.Cin8 - p.CinP;
#pragma unroll 1
  while (pix < tot_pix) {
    const bool ok = pix < npix && c < p.Cin8;
    cp_async16(sX + pix * p.LX + c, ok ? src : x, ok ? 16u : 0u);
    pix += p.xv_pstep;
    c += p.xv_cstep;
    src += step;
    if (c >= p.CinP) {
      c -= p.CinP;
      ++pix;
      src += wrap;  // offset pix * Cin8 + c: -CinP + Cin8
    }
  }
  cp_async_commit();
}

// Expand (or copy) the rows of sX, chunk channels [c0, c0 + HC), into the ring rows starting at ring_row0 (wrapping
// at RR). Also stages the chunk's depthwise weights and bias as float.
// K = 0: the generalised kernel (K and the ring gap from the parameters).
template <typename T, int K = 3, bool GEN = false>
__device__ __forceinline__ void expand_chunk(const Params& p, const T* sX, T* sRing, float* sWdw, float* sBdw,
                                             int npix, int ring_row0, int c0, bool stage_dw) {
  const int Z = K ? ring_gap(K) : p.zgap, KK = K ? K * K : p.ksize * p.ksize;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  if (stage_dw) {
    const T* wdw = static_cast<const T*>(p.wdw);
    const T* bdw = static_cast<const T*>(p.bdw);
#pragma unroll 1
    for (int c = threadIdx.x; c < p.HC; c += kThreads) {  // sWdw[tap][c] from w_dw[c][tap], sBdw[c] from b_dw[c]
      const int ch = c0 + c;
      const bool ok = ch < p.Chid8;
      const T* src = wdw + int64_t(ok ? ch : 0) * KK;
#pragma unroll
      for (int tap = 0; tap < KK; ++tap) sWdw[tap * p.HC + c] = ok ? Tr<T>::to_f(src[tap]) : 0.f;
      sBdw[c] = ok ? Tr<T>::to_f(bdw[ch]) : 0.f;
    }
  }
  if (!p.has_expand) {  // the ring gets input channels c0 .. c0 + HC (Chid8 == Cin8; sX is zero beyond Cin8)
    const int vpp = p.HC >> 3;
    const int total = npix * vpp;
#pragma unroll 1
    for (int v = threadIdx.x; v < total; v += kThreads) {
      const int pix = int(fdiv(uint32_t(v), p.div_hcv));
      const int c = (v - pix * vpp) << 3;
      sts16(sRing + ring_pos(p, ring_row0, pix, Z) * p.LH + c,
            c0 + c < p.Cin8 ? lds16(sX + pix * p.LX + c0 + c) : make_uint4(0, 0, 0, 0));
    }
    return;
  }
  const T* we = static_cast<const T*>(p.we);
  const T* be = static_cast<const T*>(p.be);
  const int mtiles = (npix + 31) >> 5;  // 32-pixel warp tiles
  const int ntiles = p.HC >> 5;         // 32-channel warp tiles
  for (int t = warp; t < mtiles * ntiles; t += kWarps) {  // warp-uniform
    const int mt = int(fdiv(uint32_t(t), p.div_nte));
    const int nt = t - mt * ntiles;
    const int px0 = mt << 5;
    const int nb = c0 + (nt << 5);  // first hidden channel of the warp tile
    // this thread's accumulators hold channels ch0 .. ch0 + 7 (pair j: ch0 + 2j, + 1) of pixels px0 + 16i + g (+8);
    // they start at the bias
    const int ch0 = nb + (q << 3);
    float acc[2][4][4];
    {
      const uint4 bv = ch0 < p.Chid8 ? ldg16(be + ch0) : make_uint4(0, 0, 0, 0);
      const uint32_t bw[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = Tr<T>::to_f2(bw[j]);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          acc[i][j][0] = acc[i][j][2] = f.x;
          acc[i][j][1] = acc[i][j][3] = f.y;
        }
      }
    }
    // B rows of this thread: hidden channel nb + 8*(g/2) + 2j + g%2. Rows past Chid8 read row 0 instead: their
    // outputs are padded channels, which the epilogue forces to 0. w_expand is packed (see the binding): one
    // 16-byte load gives this thread's B fragments of two k16 steps.
    const int brow0 = nb + ((g >> 1) << 3) + (g & 1);
    const T* bptr[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) bptr[j] = we + int64_t(brow0 + 2 * j < p.Chid8 ? brow0 + 2 * j : 0) * p.CinP + 8 * q;
    const T* ap = sX + (px0 + (lane & 7) + ((lane >> 3) & 1) * 8) * p.LX + ((lane >> 4) << 3);
    const int a16 = 16 * p.LX;
    int k = 0;
#pragma unroll 1
    do {  // CinP >= 32: at least one trip (a do-while keeps the compiler from duplicating the epilogue)
      uint32_t a[2][2][4];  // [k16 step][m tile]
      ldmatrix_x4(a[0][0], ap);
      ldmatrix_x4(a[0][1], ap + a16);
      ldmatrix_x4(a[1][0], ap + 16);
      ldmatrix_x4(a[1][1], ap + 16 + a16);
      ap += 32;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint4 b = ldg16(bptr[j] + k);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          Tr<T>::mma(acc[i][j], a[0][i][0], a[0][i][1], a[0][i][2], a[0][i][3], b.x, b.y);
          Tr<T>::mma(acc[i][j], a[1][i][0], a[1][i][1], a[1][i][2], a[1][i][3], b.z, b.w);
        }
      }
      k += 32;
    } while (k < p.CinP);
    // epilogue: ReLU6 (GEN: act_e), round, hidden channels >= chid_real forced to exactly 0 (a mask, so NaN cannot
    // leak)
    uint32_t keep[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      keep[j] = (ch0 + 2 * j < p.chid_real ? 0xffffu : 0u) | (ch0 + 2 * j + 1 < p.chid_real ? 0xffff0000u : 0u);
    T* const dst = sRing + (ch0 - c0);  // chunk-local channel
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int d = i * 16 + 8 * h;
        uint4 o;
        if constexpr (GEN) {
          o.x = Tr<T>::act_f2(p.act_e, acc[i][0][2 * h], acc[i][0][2 * h + 1]) & keep[0];
          o.y = Tr<T>::act_f2(p.act_e, acc[i][1][2 * h], acc[i][1][2 * h + 1]) & keep[1];
          o.z = Tr<T>::act_f2(p.act_e, acc[i][2][2 * h], acc[i][2][2 * h + 1]) & keep[2];
          o.w = Tr<T>::act_f2(p.act_e, acc[i][3][2 * h], acc[i][3][2 * h + 1]) & keep[3];
        } else {
          o.x = Tr<T>::relu6_f2(acc[i][0][2 * h], acc[i][0][2 * h + 1]) & keep[0];
          o.y = Tr<T>::relu6_f2(acc[i][1][2 * h], acc[i][1][2 * h + 1]) & keep[1];
          o.z = Tr<T>::relu6_f2(acc[i][2][2 * h], acc[i][2][2 * h + 1]) & keep[2];
          o.w = Tr<T>::relu6_f2(acc[i][3][2 * h], acc[i][3][2 * h + 1]) & keep[3];
        }
        if (px0 + g + d < npix) sts16(dst + ring_pos(p, ring_row0, px0 + g + d, Z) * p.LH, o);
      }
  }
}

// Depthwise K x K (3x3 for MobileNetV2) for output rows oy0 .. oy0 + nrows of the chunk -> sDW[:, c0 .. c0 + HC).
// `slot0` is the ring row of input row oy0 * S - pad_t (negative only when that row lies above the image).
// GEN: act_d, and the squeeze-excite modes (se_mode 1: the outputs of image n are added into p.pool, nothing is
// stored; se_mode 2: the outputs are multiplied by the gate of image n, rounded, stored).
// S = K = 0: the generalised kernel (stride, K and the ring gap from the parameters).
template <typename T, int S, int K = 3, bool GEN = false>
__device__ __forceinline__ void depthwise_chunk(const Params& p, const T* sRing, const float* sWdw,
                                                const float* sBdw, T* sDW, int64_t n, int oy0, int nrows, int slot0,
                                                int c0) {
  const int Z = K ? ring_gap(K) : p.zgap;
  const int SS = S ? S : p.stride, KS = K ? K : p.ksize;
  // MobileNetV2 (3x3): each ring row's NCOL input vectors are loaded once and every tap column's weights held in
  // registers (K x 8 floats). The generalised kernel (more live state: activations, squeeze-excite, pads) would spill
  // that way even at 3x3 (128 registers): one tap column at a time there, input vectors reloaded from shared memory.
  constexpr bool kStream = !GEN && K <= 3;
  constexpr int NCOL = (kPX - 1) * S + K;
  int pt = 1, pl = 1;
  if constexpr (GEN) {
    pt = p.pad_t;
    pl = p.pad_l;
  }
  const int ncg = p.HC >> 3;
  const int ns = (p.Wo + kPX - 1) / kPX;  // strips per row (once per call)
  const int total = nrows * ns * ncg;
  for (int it = threadIdx.x; it < total; it += kThreads) {
    const int sidx = int(fdiv(uint32_t(it), p.div_ncg));
    const int cg = it - sidx * ncg;
    const int i = int(fdiv(uint32_t(sidx), p.div_ns));
    const int j = sidx - i * ns;
    const int oy = oy0 + i;
    const int ox0 = j * kPX;
    const int ix0 = ox0 * SS - pl;
    const int c = cg << 3;
    float acc[kPX][8];  // start at the bias
    {
      const float4 b0 = *reinterpret_cast<const float4*>(sBdw + c);
      const float4 b1 = *reinterpret_cast<const float4*>(sBdw + c + 4);
#pragma unroll
      for (int px = 0; px < kPX; ++px) {
        acc[px][0] = b0.x; acc[px][1] = b0.y; acc[px][2] = b0.z; acc[px][3] = b0.w;
        acc[px][4] = b1.x; acc[px][5] = b1.y; acc[px][6] = b1.z; acc[px][7] = b1.w;
      }
    }
    if constexpr (kStream) {
#pragma unroll
      for (int ky = 0; ky < K; ++ky) {
        const int iy = oy * S - pt + ky;
        if (iy < 0 || iy >= p.H) continue;  // a zero-padding row: contributes nothing (mostly warp-uniform)
        int slot = slot0 + i * S + ky;
        if (slot >= p.RR) slot -= p.RR;
        const T* rowp = sRing + (slot * (p.W + Z) + Z) * p.LH + c;  // column 0 of the row
        float w[K][8];
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
          const float4 w0 = *reinterpret_cast<const float4*>(sWdw + (ky * K + kx) * p.HC + c);
          const float4 w1 = *reinterpret_cast<const float4*>(sWdw + (ky * K + kx) * p.HC + c + 4);
          w[kx][0] = w0.x; w[kx][1] = w0.y; w[kx][2] = w0.z; w[kx][3] = w0.w;
          w[kx][4] = w1.x; w[kx][5] = w1.y; w[kx][6] = w1.z; w[kx][7] = w1.w;
        }
#pragma unroll
        for (int t = 0; t < NCOL; ++t) {
          const int ix = ix0 + t;
          const uint4 v = lds16(rowp + ix * p.LH);  // columns -Z .. -1 and W .. W+Z-1 are the ring's zero pixels
          float f[8];
          {
            const uint32_t vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 ff = Tr<T>::to_f2(vw[e]);
              f[2 * e] = ff.x;
              f[2 * e + 1] = ff.y;
            }
          }
#pragma unroll
          for (int px = 0; px < kPX; ++px) {
            const int kx = t - px * S;
            if (kx >= 0 && kx < K) {
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[px][e] = fmaf(w[kx][e], f[e], acc[px][e]);
            }
          }
        }
      }
    } else {
#pragma unroll 1
      for (int ky = 0; ky < KS; ++ky) {
        const int iy = oy * SS - pt + ky;
        if (iy < 0 || iy >= p.H) continue;
        int slot = slot0 + i * SS + ky;
        if (slot >= p.RR) slot -= p.RR;
        const T* rowp = sRing + (slot * (p.W + Z) + Z) * p.LH + c;
        const float* wrow = sWdw + ky * KS * p.HC + c;
#pragma unroll 1
        for (int kx = 0; kx < KS; ++kx) {
          const float4 w0 = *reinterpret_cast<const float4*>(wrow + kx * p.HC);
          const float4 w1 = *reinterpret_cast<const float4*>(wrow + kx * p.HC + 4);
          const float w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
          const T* colp = rowp + (ix0 + kx) * p.LH;  // input column of output pixel 0, advanced by S columns
#pragma unroll
          for (int px = 0; px < kPX; ++px) {
            const uint4 v = lds16(colp);
            colp += SS * p.LH;
            const uint32_t vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 ff = Tr<T>::to_f2(vw[e]);
              acc[px][2 * e] = fmaf(w[2 * e], ff.x, acc[px][2 * e]);
              acc[px][2 * e + 1] = fmaf(w[2 * e + 1], ff.y, acc[px][2 * e + 1]);
            }
          }
        }
      }
    }
    if constexpr (GEN) {
      const bool real = c0 + c < p.Chid8;  // chunk mode: the last chunk may run past Chid8
      uint32_t o[kPX][4];  // act_d of the rounded outputs, rounded (one inlined activation per value)
#pragma unroll
      for (int px = 0; px < kPX; ++px)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[px][e] = Tr<T>::act_f2(p.act_d, acc[px][2 * e], acc[px][2 * e + 1]);
      if (p.se_mode == 1) {  // pass 1: per-(image, channel) sums of the activated, rounded outputs
        float sum[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int px = 0; px < kPX; ++px) {
          if (ox0 + px < p.Wo) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 f = Tr<T>::to_f2(o[px][e]);
              sum[2 * e] += f.x;
              sum[2 * e + 1] += f.y;
            }
          }
        }
        if (real) {
          float* dst = p.pool + n * p.Chid8 + c0 + c;
#pragma unroll
          for (int e = 0; e < 8; ++e) atomicAdd(dst + e, sum[e]);
        }
        continue;
      }
      if (p.se_mode == 2) {  // h * gate, rounded (eager multiplies the rounded tensors)
        const float* src = p.gate + n * p.Chid8 + c0 + c;
        const float4 g0 = real ? __ldg(reinterpret_cast<const float4*>(src)) : make_float4(0.f, 0.f, 0.f, 0.f);
        const float4 g1 = real ? __ldg(reinterpret_cast<const float4*>(src + 4)) : make_float4(0.f, 0.f, 0.f, 0.f);
        const float gt[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
#pragma unroll
        for (int px = 0; px < kPX; ++px)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = Tr<T>::to_f2(o[px][e]);
            o[px][e] = Tr<T>::from_f2(f.x * gt[2 * e], f.y * gt[2 * e + 1]);
          }
      }
#pragma unroll
      for (int px = 0; px < kPX; ++px) {
        const int ox = ox0 + px;
        if (ox < p.Wo) sts16(sDW + (i * p.Wo + ox) * p.LD2 + c0 + c, make_uint4(o[px][0], o[px][1], o[px][2], o[px][3]));
      }
    } else {
#pragma unroll
      for (int px = 0; px < kPX; ++px) {
        const int ox = ox0 + px;
        if (ox < p.Wo) {
          uint32_t o[4];
#pragma unroll
          for (int e = 0; e < 4; ++e)
            o[e] = Tr<T>::relu6_f2(acc[px][2 * e], acc[px][2 * e + 1]);
          sts16(sDW + (i * p.Wo + ox) * p.LD2 + c0 + c, make_uint4(o[0], o[1], o[2], o[3]));
        }
      }
    }
  }
}

// Project GEMM of output pixels [0, npix) of the step (global output pixel opix0 + pixel of image n) -> y.
// GEN: act_p on the rounded conv output (then rounded) before the residual, which is read from xres.
template <typename T, bool GEN = false>
__device__ __forceinline__ void project(const Params& p, const T* sDW, int64_t n, int opix0, int npix) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  const T* wp = static_cast<const T*>(p.wp);
  const T* bp = static_cast<const T*>(p.bp);
  const T* x = static_cast<const T*>(GEN ? p.xres : p.x);
  T* y = static_cast<T*>(p.y);
  const int mtiles = (npix + 31) >> 5;
  const int ntiles = (p.Cout8 + 31) >> 5;
  for (int t = warp; t < mtiles * ntiles; t += kWarps) {  // warp-uniform
    const int mt = int(fdiv(uint32_t(t), p.div_ntp));
    const int nt = t - mt * ntiles;
    const int px0 = mt << 5;
    const int nb = nt << 5;
    // accumulators: output channels co .. co + 7 (pair j: co + 2j, + 1) of pixels px0 + 16i + g (+8), from the bias
    const int co = nb + (q << 3);
    float acc[2][4][4];
    {
      const uint4 bv = co < p.Cout8 ? ldg16(bp + co) : make_uint4(0, 0, 0, 0);
      const uint32_t bw[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = Tr<T>::to_f2(bw[j]);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          acc[i][j][0] = acc[i][j][2] = f.x;
          acc[i][j][1] = acc[i][j][3] = f.y;
        }
      }
    }
    // rows past Cout8 read row 0: those outputs are not stored. w_project is packed like w_expand.
    const int brow0 = nb + ((g >> 1) << 3) + (g & 1);
    const T* bptr[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) bptr[j] = wp + int64_t(brow0 + 2 * j < p.Cout8 ? brow0 + 2 * j : 0) * p.ChidP + 8 * q;
    const T* ap = sDW + (px0 + (lane & 7) + ((lane >> 3) & 1) * 8) * p.LD2 + ((lane >> 4) << 3);
    const int a16 = 16 * p.LD2;
    int k = 0;
#pragma unroll 1
    do {  // k < ChidP (>= 32); sDW columns ChidP .. KP are zero: not read
      uint32_t a[2][2][4];  // [k16 step][m tile]
      ldmatrix_x4(a[0][0], ap);
      ldmatrix_x4(a[0][1], ap + a16);
      ldmatrix_x4(a[1][0], ap + 16);
      ldmatrix_x4(a[1][1], ap + 16 + a16);
      ap += 32;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint4 b = ldg16(bptr[j] + k);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          Tr<T>::mma(acc[i][j], a[0][i][0], a[0][i][1], a[0][i][2], a[0][i][3], b.x, b.y);
          Tr<T>::mma(acc[i][j], a[1][i][0], a[1][i][1], a[1][i][2], a[1][i][3], b.z, b.w);
        }
      }
      k += 32;
    } while (k < p.ChidP);
    if (co >= p.Cout8) continue;  // this thread's 8 output channels are padding
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int pix = px0 + i * 16 + g + 8 * h;
        if (pix < npix) {
          const int64_t gp = int64_t(n) * p.Ho * p.Wo + opix0 + pix;  // output pixel (NHWC row)
          float v[8];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            v[2 * j] = acc[i][j][2 * h];
            v[2 * j + 1] = acc[i][j][2 * h + 1];
          }
          if constexpr (GEN) {
            if (p.act_p != MNV2_ACT_NONE) {
#pragma unroll
              for (int j = 0; j < 4; ++j) {
                const float2 f = Tr<T>::to_f2(Tr<T>::act_f2(p.act_p, v[2 * j], v[2 * j + 1]));
                v[2 * j] = f.x;
                v[2 * j + 1] = f.y;
              }
            }
          }
          if (p.residual) {  // stride 1, Cin8 == Cout8, H == Ho, W == Wo: the same pixel of x
            const uint4 rv = ldg16(x + gp * p.Cin8 + co);
            const uint32_t rw[4] = {rv.x, rv.y, rv.z, rv.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const float2 f = Tr<T>::to_f2(rw[j]);
              v[2 * j] += f.x;
              v[2 * j + 1] += f.y;
            }
          }
          uint4 o;
          o.x = Tr<T>::from_f2(v[0], v[1]);
          o.y = Tr<T>::from_f2(v[2], v[3]);
          o.z = Tr<T>::from_f2(v[4], v[5]);
          o.w = Tr<T>::from_f2(v[6], v[7]);
          *reinterpret_cast<uint4*>(y + gp * p.Cout8 + co) = o;
        }
      }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Kernel

// Two CTAs per SM (128 registers) on sm_90; sm_80's ptxas needs a few more than 128 registers for this kernel
// (it spills otherwise), so it is built for one CTA per SM there: the persistent grid still covers every work
// item (grid-stride loop), a second CTA per SM just waits for a slot.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define MNV2_MIN_CTAS(S) 1
#else
#define MNV2_MIN_CTAS(S) 2
#endif

// Body of mnv2_ir_ring_kernel(const Params) (MobileNetV2: GEN = false, K = 3) and of mnv2_ir_ex_kernel (GEN).
// S = K = 0 (the generalised kernel): stride, K and the ring gap from the parameters.
template <typename T, int S, int K, bool GEN>
__device__ __forceinline__ void ring_body(const Params& p) {
  const int Z = K ? ring_gap(K) : p.zgap;
#define MNV2_S (S ? S : p.stride)
#define MNV2_K (K ? K : p.ksize)
  extern __shared__ __align__(128) unsigned char smem[];
  T* const sX = reinterpret_cast<T*>(smem);                         // [MXP][LX]      input rows of a step
  T* const sRing = reinterpret_cast<T*>(smem + p.off_ring);         // [ring_pixels][LH] expanded rows (ring)
  T* const sDW = reinterpret_cast<T*>(smem + p.off_dw);             // [MOP][LD2]     depthwise output
  float* const sWdw = reinterpret_cast<float*>(smem + p.off_wdw);   // [9][HC]        depthwise taps
  float* const sBdw = reinterpret_cast<float*>(smem + p.off_bdw);   // [HC]           depthwise bias

  // the ring's zero pixels (Z before every row and after the last), once: the expand never writes them
  for (int v = threadIdx.x; v < (p.RR + 1) * Z * (p.LH >> 3); v += kThreads) {
    const int zp = v / (p.LH >> 3);  // once per CTA
    const int r = zp / Z;
    sts16(sRing + (r * (p.W + Z) + (zp - r * Z)) * p.LH + ((v - zp * (p.LH >> 3)) << 3), make_uint4(0, 0, 0, 0));
  }
#define MNV2_PT (GEN ? p.pad_t : 1)  // read from the parameters at each use (no register held across the loops)
  bool dw_staged = false;  // ring mode: the depthwise weights stay in shared memory for the whole CTA
  // the generalised kernel indexes work items and images with int (the launcher checks items < 2^31): two
  // registers fewer across the whole loop nest
  using Idx = typename std::conditional<GEN, int, int64_t>::type;
  for (Idx item = blockIdx.x; item < p.items; item += gridDim.x) {
    // item -> (image n, band b); band b covers steps [b*steps/bands, (b+1)*steps/bands)
    const Idx n = item / p.bands;  // once per work item
    const int b = int(item - n * p.bands);
    const int k0 = int(int64_t(b) * p.steps / p.bands);
    const int k1 = int(int64_t(b + 1) * p.steps / p.bands);
    int oy0 = k0 * p.R;
    int e0 = oy0 * MNV2_S - MNV2_PT;
    if (e0 < 0) e0 = 0;
    int origin = e0;  // image row held in ring row 0 (advanced by RR as the band moves down)
    int e1 = 0;
    {
      const int r1 = min(p.Ho, oy0 + p.R);
      e1 = min(p.H, (r1 - 1) * MNV2_S - MNV2_PT + MNV2_K);
      __syncthreads();  // the previous item's expand phase no longer reads sX
      load_rows<T>(p, sX, n, e0, e1);
    }
    for (int k = k0; k < k1; ++k) {
      const int nrows = min(p.R, p.Ho - oy0);
      const int fr = oy0 * MNV2_S - MNV2_PT;  // first input row the step reads
      // first ring row in use: fr, or e0 when the step expands a row above fr (K < S: the row between two steps'
      // rows, expanded because a band's rows are contiguous, never read)
      const int lo = (GEN && MNV2_K < MNV2_S && e0 < fr) ? e0 : fr;
      if (lo - origin >= p.RR) origin += p.RR;
      const int npix_in = (e1 - e0) * p.W;
      int ring_row0 = e0 - origin;  // ring row of e0
      if (ring_row0 >= p.RR) ring_row0 -= p.RR;
      const int slot0 = fr - origin;  // ring row of fr (negative only when fr < 0; up to RR when K < S)
      cp_async_wait_all();
      __syncthreads();  // sX ready; the previous step's project no longer reads sDW
      for (int ch = 0; ch < p.nchunks; ++ch) {
        const int c0 = ch * p.HC;
        const bool stage = p.nchunks > 1 || !dw_staged;
        expand_chunk<T, K, GEN>(p, sX, sRing, sWdw, sBdw, npix_in, ring_row0, c0, stage);
        dw_staged = true;
        __syncthreads();  // ring rows and depthwise weights ready; sX free after the last chunk
        if (ch == p.nchunks - 1 && k + 1 < k1) {  // prefetch the next step's new rows
          const int r1 = min(p.Ho, oy0 + 2 * p.R);
          const int ne1 = min(p.H, (r1 - 1) * MNV2_S - MNV2_PT + MNV2_K);
          load_rows<T>(p, sX, n, e1, ne1);
          e0 = e1;
          e1 = ne1;
        }
        depthwise_chunk<T, S, K, GEN>(p, sRing, sWdw, sBdw, sDW, n, oy0, nrows, slot0, c0);
        __syncthreads();  // sDW chunk ready; the ring and the depthwise weights are free again
      }
      bool proj = true;
      if constexpr (GEN) proj = p.se_mode != 1;  // squeeze-excite pass 1 only pools
      if (proj) project<T, GEN>(p, sDW, n, oy0 * p.Wo, nrows * p.Wo);
      oy0 += p.R;
    }
  }
#undef MNV2_PT
#undef MNV2_S
#undef MNV2_K
}

template <typename T, int S>
__global__ void __launch_bounds__(kThreads, MNV2_MIN_CTAS(S)) mnv2_ir_ring_kernel(const Params p) {
  ring_body<T, S, 3, false>(p);
}

// The generalised block: stride, K x K depthwise, pads, activations and squeeze-excite mode from the parameters
// (one instantiation per dtype: the generalised depthwise walks one tap column at a time, so K costs no registers).
template <typename T>
__global__ void __launch_bounds__(kThreads, MNV2_MIN_CTAS(0)) mnv2_ir_ex_kernel(const Params p) {
  ring_body<T, 0, 0, true>(p);
}

// Squeeze-excite between the passes, one CTA per image: s = pool / (Ho * Wo) (rounded, as eager's mean),
// r = se_act(w_se_reduce s + b) (rounded), gate = se_gate(w_se_expand r + b) (rounded) -> gate [N, Chid8].
// Weights [Crd, Chid8], [Crd], [Chid8, Crd], [Chid8]; shared: Chid8 + Crd floats.
template <typename T>
__global__ void __launch_bounds__(kThreads) se_excite_kernel(const float* pool, const T* wr, const T* br,
                                                             const T* we, const T* be, float* gate, int Chid8,
                                                             int Crd, float inv_hw, int se_act, int se_gate) {
  extern __shared__ float sse[];
  float* sS = sse;           // [Chid8]
  float* sR = sse + Chid8;   // [Crd]
  const int64_t n = blockIdx.x;
  for (int c = threadIdx.x; c < Chid8; c += kThreads) sS[c] = Tr<T>::round_f(pool[n * Chid8 + c] * inv_hw);
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int r = warp; r < Crd; r += kWarps) {
    float acc = 0.f;
    for (int c = lane; c < Chid8; c += 32) acc = fmaf(Tr<T>::to_f(wr[int64_t(r) * Chid8 + c]), sS[c], acc);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) sR[r] = Tr<T>::round_f(act_f(se_act, Tr<T>::round_f(acc + Tr<T>::to_f(br[r]))));
  }
  __syncthreads();
  for (int c = threadIdx.x; c < Chid8; c += kThreads) {
    float acc = Tr<T>::to_f(be[c]);
    for (int r = 0; r < Crd; ++r) acc = fmaf(Tr<T>::to_f(we[int64_t(c) * Crd + r]), sR[r], acc);
    gate[n * Chid8 + c] = Tr<T>::round_f(act_f(se_gate, Tr<T>::round_f(acc)));
  }
}

// Leading depthwise (no activation): x [N, H, W, C8] -> y [N, Ho, Wo, C8], one thread per (pixel, 8 channels).
template <typename T>
__global__ void __launch_bounds__(kThreads) leading_dw_kernel(const T* x, const T* w, const T* b, T* y,
                                                              int64_t total, int C8, int H, int W, int Ho, int Wo,
                                                              int K, int S, int pad_t, int pad_l) {
  const int cv = C8 >> 3;
  for (int64_t v = int64_t(blockIdx.x) * kThreads + threadIdx.x; v < total; v += int64_t(gridDim.x) * kThreads) {
    const int c = int(v % cv) << 3;
    const int64_t pix = v / cv;  // n * Ho * Wo + oy * Wo + ox
    const int ox = int(pix % Wo);
    const int64_t t = pix / Wo;
    const int oy = int(t % Ho);
    const int64_t n = t / Ho;
    float acc[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = Tr<T>::to_f(b[c + e]);
    for (int ky = 0; ky < K; ++ky) {
      const int iy = oy * S - pad_t + ky;
      if (iy < 0 || iy >= H) continue;
      for (int kx = 0; kx < K; ++kx) {
        const int ix = ox * S - pad_l + kx;
        if (ix < 0 || ix >= W) continue;
        const uint4 xv = ldg16(x + ((n * H + iy) * W + ix) * C8 + c);
        const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 f = Tr<T>::to_f2(xw[e]);
          acc[2 * e] = fmaf(Tr<T>::to_f(w[(c + 2 * e) * K * K + ky * K + kx]), f.x, acc[2 * e]);
          acc[2 * e + 1] = fmaf(Tr<T>::to_f(w[(c + 2 * e + 1) * K * K + ky * K + kx]), f.y, acc[2 * e + 1]);
        }
      }
    }
    uint4 o;
    o.x = Tr<T>::from_f2(acc[0], acc[1]);
    o.y = Tr<T>::from_f2(acc[2], acc[3]);
    o.z = Tr<T>::from_f2(acc[4], acc[5]);
    o.w = Tr<T>::from_f2(acc[6], acc[7]);
    *reinterpret_cast<uint4*>(y + pix * C8 + c) = o;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host side

constexpr int kMaxDevices = 64;

// The dynamic shared memory opt-in of one kernel instantiation (`Tag` makes the cache per instantiation).
template <typename Tag>
cudaError_t ensure_smem_limit(const void* func, int device, size_t bytes) {
  static std::atomic<size_t> configured[kMaxDevices];
  if (bytes <= 48 * 1024) return cudaSuccess;
  if (device >= 0 && device < kMaxDevices && configured[device].load(std::memory_order_relaxed) >= bytes)
    return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kMaxDevices) {
    size_t cur = configured[device].load(std::memory_order_relaxed);
    while (cur < bytes && !configured[device].compare_exchange_weak(cur, bytes)) {
    }
  }
  return cudaSuccess;
}

template <typename T, int S, int K, bool GEN>
struct KernelTag {};

template <typename T, int S, int K, bool GEN>
cudaError_t launch_typed(const Params& p, unsigned grid, size_t smem, int device, cudaStream_t stream) {
  const void* func;
  if constexpr (GEN)
    func = reinterpret_cast<const void*>(&mnv2_ir_ex_kernel<T>);
  else
    func = reinterpret_cast<const void*>(&mnv2_ir_ring_kernel<T, S>);
  cudaError_t err = ensure_smem_limit<KernelTag<T, S, K, GEN>>(func, device, smem);
  if (err != cudaSuccess) return err;
  if constexpr (GEN)
    mnv2_ir_ex_kernel<T><<<grid, kThreads, smem, stream>>>(p);
  else
    mnv2_ir_ring_kernel<T, S><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_se_excite(const Params& p, const mnv2_ir_ex_options& o, int64_t N, int device,
                             cudaStream_t stream) {
  const size_t smem = size_t(p.Chid8 + o.se_reduced) * sizeof(float);
  if (smem > 48 * 1024) {
    cudaError_t err = ensure_smem_limit<KernelTag<T, 0, 0, false>>(
        reinterpret_cast<const void*>(&se_excite_kernel<T>), device, smem);
    if (err != cudaSuccess) return err;
  }
  se_excite_kernel<T><<<unsigned(N), kThreads, smem, stream>>>(
      o.se_pool, static_cast<const T*>(o.w_se_reduce), static_cast<const T*>(o.b_se_reduce),
      static_cast<const T*>(o.w_se_expand), static_cast<const T*>(o.b_se_expand), o.se_gate_buf, p.Chid8,
      int(o.se_reduced), 1.f / float(int64_t(p.Ho) * p.Wo), o.se_act, o.se_gate);
  return cudaGetLastError();
}

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

bool valid_act(int a) { return a >= MNV2_ACT_RELU6 && a <= MNV2_ACT_NONE; }

// mnv2_ir_cuda_launch (opt == nullptr) and mnv2_ir_cuda_launch_ex.
cudaError_t launch_block(mnv2_dtype dtype, const void* x, const void* w_expand, const void* b_expand, const void* w_dw,
                         const void* b_dw, const void* w_project, const void* b_project, void* y, int64_t N,
                         int64_t Cin8, int64_t H, int64_t W, int64_t Chid8, int64_t chid_real, int64_t Cout8,
                         int stride, int residual, const mnv2_ir_ex_options* opt, cudaStream_t stream) {
  if (dtype != MNV2_DTYPE_FLOAT16 && dtype != MNV2_DTYPE_BFLOAT16) return cudaErrorInvalidValue;
  // in-kernel pixel indices within one image are int: H * W (and Ho * Wo) < 2^31
  if (N < 0 || H < 1 || W < 1 || H * W > int64_t(INT32_MAX)) return cudaErrorInvalidValue;
  if (Cin8 % 8 || Chid8 % 8 || Cout8 % 8 || Cin8 < 8 || Chid8 < 8 || Cout8 < 8 || chid_real < 1 ||
      chid_real > Chid8 || Cout8 > kMaxChannels)
    return cudaErrorInvalidValue;
  const bool has_expand = w_expand != nullptr;
  if (has_expand && b_expand == nullptr) return cudaErrorInvalidValue;
  if (!has_expand && Chid8 != Cin8) return cudaErrorInvalidValue;
  if (residual && (stride != 1 || Cin8 != Cout8)) return cudaErrorInvalidValue;
  const int K = opt ? opt->kernel : 3;
  const bool se = opt && opt->w_se_reduce != nullptr;
  if (opt) {
    if (K < 1 || K > kMaxK || K % 2 == 0 || opt->pad_t < 0 || opt->pad_t > K / 2 || opt->pad_l < 0 ||
        opt->pad_l > K / 2 || !valid_act(opt->act_expand) || !valid_act(opt->act_dw) || !valid_act(opt->act_project))
      return cudaErrorInvalidValue;
    if (se && (!opt->b_se_reduce || !opt->w_se_expand || !opt->b_se_expand || !opt->se_pool || !opt->se_gate_buf ||
               opt->se_reduced < 1 || !valid_act(opt->se_act) ||
               (opt->se_gate != MNV2_GATE_SIGMOID && opt->se_gate != MNV2_GATE_HARDSIGMOID) ||
               !aligned16(opt->se_gate_buf) || N > INT32_MAX || (Chid8 + opt->se_reduced) * 4 > 200 * 1024))
      return cudaErrorInvalidValue;
    if (opt->x_residual && !aligned16(opt->x_residual)) return cudaErrorInvalidValue;
  }
  if (N == 0) return cudaSuccess;
  const void* ptrs[] = {x, w_dw, b_dw, w_project, b_project, y};
  for (const void* ptr : ptrs)
    if (ptr == nullptr || !aligned16(ptr)) return cudaErrorInvalidValue;
  if (has_expand && (!aligned16(w_expand) || !aligned16(b_expand))) return cudaErrorInvalidValue;

  int device = 0, max_optin = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  mnv2_ir_plan plan;
  const int pad_t = opt ? opt->pad_t : 1;
  mnv2_ir_cuda_plan_ex(N, Cin8, Chid8, Cout8, H, W, stride, K, pad_t, has_expand ? 1 : 0, max_optin, sms, &plan);
  if (!plan.ok) return cudaErrorInvalidValue;
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const Layout L = make_layout(Cin8, Chid8, H, W, Wo, stride, plan.rows, plan.chunk, K);

  Params p;
  p.x = x;
  p.we = w_expand;
  p.be = b_expand;
  p.wdw = w_dw;
  p.bdw = b_dw;
  p.wp = w_project;
  p.bp = b_project;
  p.y = y;
  p.H = int(H);
  p.W = int(W);
  p.Ho = int(Ho);
  p.Wo = int(Wo);
  p.Cin8 = int(Cin8);
  p.Chid8 = int(Chid8);
  p.chid_real = int(chid_real);
  p.Cout8 = int(Cout8);
  p.residual = residual ? 1 : 0;
  p.has_expand = has_expand ? 1 : 0;
  p.R = plan.rows;
  p.HC = plan.chunk;
  p.nchunks = plan.nchunks;
  p.RR = plan.ring_rows;
  p.steps = plan.steps;
  p.bands = plan.bands;
  p.items = plan.items;
  p.LX = int(L.LX);
  p.LH = int(L.LH);
  p.LD2 = int(L.LD2);
  p.KP = int(L.KP);
  p.CinP = int(round_up(Cin8, 32));
  p.ChidP = int(round_up(Chid8, 32));
  p.off_ring = int(L.off_ring);
  p.off_dw = int(L.off_dw);
  p.off_wdw = int(L.off_wdw);
  p.off_bdw = int(L.off_bdw);
  p.div_xvec = make_fastdiv(uint32_t(p.CinP / 8));
  p.xv_pstep = kThreads / (p.CinP / 8);
  p.xv_cstep = (kThreads % (p.CinP / 8)) * 8;
  p.div_ncg = make_fastdiv(uint32_t(plan.chunk / 8));
  p.div_ns = make_fastdiv(uint32_t((Wo + kPX - 1) / kPX));
  p.div_hcv = make_fastdiv(uint32_t(plan.chunk / 8));
  p.div_ntp = make_fastdiv(uint32_t((Cout8 + 31) / 32));
  p.div_w = make_fastdiv(uint32_t(W));
  p.div_nte = make_fastdiv(uint32_t(plan.chunk / 32));
  p.xres = opt && opt->x_residual ? opt->x_residual : x;
  p.pad_t = pad_t;
  p.pad_l = opt ? opt->pad_l : 1;
  p.act_e = opt ? opt->act_expand : MNV2_ACT_RELU6;
  p.act_d = opt ? opt->act_dw : MNV2_ACT_RELU6;
  p.act_p = opt ? opt->act_project : MNV2_ACT_NONE;
  p.se_mode = 0;
  p.pool = se ? opt->se_pool : nullptr;
  p.gate = se ? opt->se_gate_buf : nullptr;
  p.stride = stride;
  p.ksize = K;
  p.zgap = ring_gap(K);
  if (plan.grid < 1 || plan.grid > INT32_MAX || (opt && plan.items > INT32_MAX)) return cudaErrorInvalidValue;

  const unsigned grid = unsigned(plan.grid);
  const size_t smem = size_t(plan.smem);
  const bool half = dtype == MNV2_DTYPE_FLOAT16;
  if (!opt)
    return half ? (stride == 1 ? launch_typed<__half, 1, 3, false>(p, grid, smem, device, stream)
                               : launch_typed<__half, 2, 3, false>(p, grid, smem, device, stream))
                : (stride == 1 ? launch_typed<__nv_bfloat16, 1, 3, false>(p, grid, smem, device, stream)
                               : launch_typed<__nv_bfloat16, 2, 3, false>(p, grid, smem, device, stream));
  auto run = [&](const Params& q) {
    return half ? launch_typed<__half, 0, 0, true>(q, grid, smem, device, stream)
                : launch_typed<__nv_bfloat16, 0, 0, true>(q, grid, smem, device, stream);
  };
  if (!se) return run(p);
  // squeeze-excite: pass 1 (pool), the excite MLP, pass 2 (gate, project)
  p.se_mode = 1;
  err = run(p);
  if (err != cudaSuccess) return err;
  err = half ? launch_se_excite<__half>(p, *opt, N, device, stream)
             : launch_se_excite<__nv_bfloat16>(p, *opt, N, device, stream);
  if (err != cudaSuccess) return err;
  p.se_mode = 2;
  return run(p);
}

}  // namespace

extern "C" cudaError_t mnv2_ir_cuda_launch(mnv2_dtype dtype, const void* x, const void* w_expand,
                                           const void* b_expand, const void* w_dw, const void* b_dw,
                                           const void* w_project, const void* b_project, void* y, int64_t N,
                                           int64_t Cin8, int64_t H, int64_t W, int64_t Chid8, int64_t chid_real,
                                           int64_t Cout8, int stride, int residual, cudaStream_t stream) {
  return launch_block(dtype, x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, y, N, Cin8, H, W, Chid8,
                      chid_real, Cout8, stride, residual, nullptr, stream);
}

extern "C" cudaError_t mnv2_ir_cuda_launch_ex(mnv2_dtype dtype, const void* x, const void* w_expand,
                                              const void* b_expand, const void* w_dw, const void* b_dw,
                                              const void* w_project, const void* b_project, void* y, int64_t N,
                                              int64_t Cin8, int64_t H, int64_t W, int64_t Chid8, int64_t chid_real,
                                              int64_t Cout8, int stride, int residual,
                                              const mnv2_ir_ex_options* opt, cudaStream_t stream) {
  if (opt == nullptr) return cudaErrorInvalidValue;
  return launch_block(dtype, x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, y, N, Cin8, H, W, Chid8,
                      chid_real, Cout8, stride, residual, opt, stream);
}

extern "C" cudaError_t mnv2_ir_cuda_dw_launch(mnv2_dtype dtype, const void* x, const void* w, const void* b, void* y,
                                              int64_t N, int64_t C8, int64_t H, int64_t W, int kernel, int stride,
                                              int pad_t, int pad_l, cudaStream_t stream) {
  if (dtype != MNV2_DTYPE_FLOAT16 && dtype != MNV2_DTYPE_BFLOAT16) return cudaErrorInvalidValue;
  if (N < 0 || H < 1 || W < 1 || C8 < 8 || C8 % 8 || C8 > kMaxChannels || kernel < 1 || kernel > kMaxK ||
      kernel % 2 == 0 || (stride != 1 && stride != 2) || pad_t < 0 || pad_l < 0 || pad_t > kernel / 2 ||
      pad_l > kernel / 2 || H * W > int64_t(INT32_MAX))
    return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  const void* ptrs[] = {x, w, b, y};
  for (const void* ptr : ptrs)
    if (ptr == nullptr || !aligned16(ptr)) return cudaErrorInvalidValue;
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const int64_t total = N * Ho * Wo * (C8 / 8);
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 16) blocks = 65535LL * 16;  // grid-stride loop beyond
  if (dtype == MNV2_DTYPE_FLOAT16)
    leading_dw_kernel<__half><<<unsigned(blocks), kThreads, 0, stream>>>(
        static_cast<const __half*>(x), static_cast<const __half*>(w), static_cast<const __half*>(b),
        static_cast<__half*>(y), total, int(C8), int(H), int(W), int(Ho), int(Wo), kernel, stride, pad_t, pad_l);
  else
    leading_dw_kernel<__nv_bfloat16><<<unsigned(blocks), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w),
        static_cast<const __nv_bfloat16*>(b), static_cast<__nv_bfloat16*>(y), total, int(C8), int(H), int(W),
        int(Ho), int(Wo), kernel, stride, pad_t, pad_l);
  return cudaGetLastError();
}
