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
#include "inverted_residual_cuda.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
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

// ---------------------------------------------------------------------------------------------------------
// Plan (host). Mirrored by mnv2_kernels/cuda_plan.py.

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t align128(int64_t v) { return round_up(v, 128); }
// Leading dimension (elements, 2-byte) of a shared row of `elems` (a multiple of 8) channels: an odd number of
// 16-byte units, so the 8 rows one ldmatrix phase reads fall in 8 different bank groups.
inline int64_t pad_ld(int64_t elems) { return (elems / 8) % 2 == 1 ? elems : elems + 8; }

// Ring of expanded rows: row r holds image columns 0 .. W-1 at pixels r*(W+1) + 1 .. r*(W+1) + W; pixels r*(W+1)
// (r = 0 .. RR) are zero, so column -1 of a row and column W (the next row's zero pixel) read as zero padding
// without a check. A few slack pixels after the last row absorb the reads of a partial depthwise strip (outputs
// past Wo, which are discarded).
inline int64_t ring_pixels(int64_t RR, int64_t W) { return RR * (W + 1) + 1 + 2 * kPX + 2; }

struct Layout {
  int64_t LX, MXP, LH, LD2, MOP, KP, RR;
  int64_t off_x, off_ring, off_dw, off_wdw, off_bdw, total;
};

Layout make_layout(int64_t Cin8, int64_t Chid8, int64_t H, int64_t W, int64_t Wo, int S, int64_t R, int64_t HC) {
  Layout L;
  L.RR = (R - 1) * S + 3;
  if (L.RR > H) L.RR = H;
  L.LX = pad_ld(round_up(Cin8, 32));
  L.MXP = round_up(L.RR * W, 32);
  L.LH = pad_ld(HC);
  L.KP = round_up(Chid8, HC);
  L.LD2 = pad_ld(L.KP);
  L.MOP = round_up(R * Wo, 32);
  int64_t off = 0;
  L.off_x = off;    off = align128(off + L.MXP * L.LX * 2);
  L.off_ring = off; off = align128(off + ring_pixels(L.RR, W) * L.LH * 2);
  L.off_dw = off;   off = align128(off + L.MOP * L.LD2 * 2);
  L.off_wdw = off;  off = align128(off + 9 * HC * 4);
  L.off_bdw = off;  off = align128(off + HC * 4);
  L.total = off;
  return L;
}

// Largest R in [1, Ho] with R*Wo <= kMaxStepPixels (R = 1 always allowed) whose layout fits `budget`; 0 if none.
int64_t best_rows(int64_t Cin8, int64_t Chid8, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int S, int64_t HC,
                  int64_t budget) {
  int64_t rmax = kMaxStepPixels / Wo;
  if (rmax < 1) rmax = 1;
  if (rmax > Ho) rmax = Ho;
  for (int64_t R = rmax; R >= 1; --R)
    if (make_layout(Cin8, Chid8, H, W, Wo, S, R, HC).total <= budget) return R;
  return 0;
}

// Expanded pixel slots (32-pixel warp tiles x 32) of one image when every band is one step of R output rows (chunk
// mode: each band expands its own halo rows).
int64_t chunk_mode_slots(int64_t H, int64_t W, int64_t Ho, int S, int64_t R) {
  int64_t slots = 0;
  for (int64_t oy0 = 0; oy0 < Ho; oy0 += R) {
    const int64_t r1 = oy0 + R < Ho ? oy0 + R : Ho;
    const int64_t e0 = oy0 * S - 1 > 0 ? oy0 * S - 1 : 0;
    const int64_t e1 = (r1 - 1) * S + 2 < H ? (r1 - 1) * S + 2 : H;
    slots += round_up((e1 - e0) * W, 32);
  }
  return slots;
}

}  // namespace

extern "C" void mnv2_ir_cuda_plan(int64_t N, int64_t Cin8, int64_t Chid8, int64_t Cout8, int64_t H, int64_t W,
                                  int stride, int has_expand, int64_t smem_limit, int num_sms, mnv2_ir_plan* plan) {
  mnv2_ir_plan P = {};
  (void)has_expand;
  (void)Cout8;
  if (N < 0 || H < 1 || W < 1 || Cin8 < 8 || Chid8 < 8 || Cin8 > kMaxChannels || Chid8 > kMaxChannels ||
      (stride != 1 && stride != 2) || num_sms < 1) {
    *plan = P;
    return;
  }
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const int64_t ChidP = round_up(Chid8, 32);
  const int64_t hc_chunk = ChidP < kChunk ? ChidP : kChunk;
  const int64_t budgets[2] = {kBudget2 < smem_limit ? kBudget2 : smem_limit, smem_limit};
  int64_t R = 0, HC = 0;
  for (int b = 0; b < 2 && R == 0; ++b) {
    const int64_t r = best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, ChidP, budgets[b]);
    if (r > 0 && (r == Ho || r * Wo >= kMinRingPixels)) {
      R = r;
      HC = ChidP;
      break;
    }
    int64_t rc = best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, hc_chunk, budgets[b]);
    if (rc > 0 && b == 0) {  // one CTA per SM with taller bands when that expands far fewer halo pixels
      const int64_t rl = best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, hc_chunk, budgets[1]);
      if (rl > rc && 10 * chunk_mode_slots(H, W, Ho, stride, rl) < 7 * chunk_mode_slots(H, W, Ho, stride, rc))
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
  const Layout L = make_layout(Cin8, Chid8, H, W, Wo, stride, R, HC);
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

template <typename T>
struct Tr;

template <>
struct Tr<__half> {
  static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ float2 to_f2(uint32_t v) {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
  }
  static __device__ __forceinline__ uint32_t from_f2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  // relu6 of (a, b) rounded to a packed pair: round, then clamp in half2 with the NaN-propagating min / max
  // (rounding is monotonic and 0, 6 are exact, so this equals rounding the float clamp).
  static __device__ __forceinline__ uint32_t relu6_f2(float a, float b) {
    const __half2 h = __hmin2_nan(__hmax2_nan(__floats2half2_rn(a, b), __float2half2_rn(0.f)), __float2half2_rn(6.f));
    return *reinterpret_cast<const uint32_t*>(&h);
  }
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
struct Tr<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ float2 to_f2(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
  }
  static __device__ __forceinline__ uint32_t from_f2(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static __device__ __forceinline__ uint32_t relu6_f2(float a, float b) {
    const __nv_bfloat162 h = __hmin2_nan(__hmax2_nan(__floats2bfloat162_rn(a, b), __float2bfloat162_rn(0.f)),
                                         __float2bfloat162_rn(6.f));
    return *reinterpret_cast<const uint32_t*>(&h);
  }
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
};

// Ring pixel of pixel `pix` (row-major over W columns) of the rows starting at ring row `ring_row0`.
__device__ __forceinline__ int ring_pos(const Params& p, int ring_row0, int pix) {
  const int r = int(fdiv(uint32_t(pix), p.div_w));
  int slot = ring_row0 + r;
  if (slot >= p.RR) slot -= p.RR;
  return slot * (p.W + 1) + 1 + (pix - r * p.W);
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
template <typename T>
__device__ __forceinline__ void expand_chunk(const Params& p, const T* sX, T* sRing, float* sWdw, float* sBdw,
                                             int npix, int ring_row0, int c0, bool stage_dw) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  if (stage_dw) {
    const T* wdw = static_cast<const T*>(p.wdw);
    const T* bdw = static_cast<const T*>(p.bdw);
#pragma unroll 1
    for (int c = threadIdx.x; c < p.HC; c += kThreads) {  // sWdw[tap][c] from w_dw[c][tap], sBdw[c] from b_dw[c]
      const int ch = c0 + c;
      const bool ok = ch < p.Chid8;
      const T* src = wdw + int64_t(ok ? ch : 0) * 9;
#pragma unroll
      for (int tap = 0; tap < 9; ++tap) sWdw[tap * p.HC + c] = ok ? Tr<T>::to_f(src[tap]) : 0.f;
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
      sts16(sRing + ring_pos(p, ring_row0, pix) * p.LH + c,
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
    // epilogue: ReLU6, round, hidden channels >= chid_real forced to exactly 0 (a mask, so NaN cannot leak)
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
        o.x = Tr<T>::relu6_f2(acc[i][0][2 * h], acc[i][0][2 * h + 1]) & keep[0];
        o.y = Tr<T>::relu6_f2(acc[i][1][2 * h], acc[i][1][2 * h + 1]) & keep[1];
        o.z = Tr<T>::relu6_f2(acc[i][2][2 * h], acc[i][2][2 * h + 1]) & keep[2];
        o.w = Tr<T>::relu6_f2(acc[i][3][2 * h], acc[i][3][2 * h + 1]) & keep[3];
        if (px0 + g + d < npix) sts16(dst + ring_pos(p, ring_row0, px0 + g + d) * p.LH, o);
      }
  }
}

// Depthwise 3x3 for output rows oy0 .. oy0 + nrows of the chunk -> sDW[:, c0 .. c0 + HC). `slot0` is the ring row of
// input row oy0 * S - 1 (may be -1 when that row is -1).
template <typename T, int S>
__device__ __forceinline__ void depthwise_chunk(const Params& p, const T* sRing, const float* sWdw,
                                                const float* sBdw, T* sDW, int oy0, int nrows, int slot0, int c0) {
  constexpr int NCOL = (kPX - 1) * S + 3;
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
    const int ix0 = ox0 * S - 1;
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
#pragma unroll
    for (int ky = 0; ky < 3; ++ky) {
      const int iy = oy * S - 1 + ky;
      if (iy < 0 || iy >= p.H) continue;  // a zero-padding row: contributes nothing (mostly warp-uniform)
      int slot = slot0 + i * S + ky;
      if (slot >= p.RR) slot -= p.RR;
      const T* rowp = sRing + (slot * (p.W + 1) + 1) * p.LH + c;  // column 0 of the row
      float w[3][8];
#pragma unroll
      for (int kx = 0; kx < 3; ++kx) {
        const float4 w0 = *reinterpret_cast<const float4*>(sWdw + (ky * 3 + kx) * p.HC + c);
        const float4 w1 = *reinterpret_cast<const float4*>(sWdw + (ky * 3 + kx) * p.HC + c + 4);
        w[kx][0] = w0.x; w[kx][1] = w0.y; w[kx][2] = w0.z; w[kx][3] = w0.w;
        w[kx][4] = w1.x; w[kx][5] = w1.y; w[kx][6] = w1.z; w[kx][7] = w1.w;
      }
#pragma unroll
      for (int t = 0; t < NCOL; ++t) {
        const int ix = ix0 + t;
        const uint4 v = lds16(rowp + ix * p.LH);  // columns -1 and W are the ring's zero pixels
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
          if (kx >= 0 && kx < 3) {
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[px][e] = fmaf(w[kx][e], f[e], acc[px][e]);
          }
        }
      }
    }
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

// Project GEMM of output pixels [0, npix) of the step (global output pixel opix0 + pixel of image n) -> y.
template <typename T>
__device__ __forceinline__ void project(const Params& p, const T* sDW, int64_t n, int opix0, int npix) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  const T* wp = static_cast<const T*>(p.wp);
  const T* bp = static_cast<const T*>(p.bp);
  const T* x = static_cast<const T*>(p.x);
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

template <typename T, int S>
__global__ void __launch_bounds__(kThreads, MNV2_MIN_CTAS(S)) mnv2_ir_ring_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* const sX = reinterpret_cast<T*>(smem);                         // [MXP][LX]      input rows of a step
  T* const sRing = reinterpret_cast<T*>(smem + p.off_ring);         // [ring_pixels][LH] expanded rows (ring)
  T* const sDW = reinterpret_cast<T*>(smem + p.off_dw);             // [MOP][LD2]     depthwise output
  float* const sWdw = reinterpret_cast<float*>(smem + p.off_wdw);   // [9][HC]        depthwise taps
  float* const sBdw = reinterpret_cast<float*>(smem + p.off_bdw);   // [HC]           depthwise bias

  // the ring's zero pixels (column -1 of every row, column W of the last), once: the expand never writes them
  for (int v = threadIdx.x; v < (p.RR + 1) * (p.LH >> 3); v += kThreads) {
    const int r = v / (p.LH >> 3);  // once per CTA
    sts16(sRing + (r * (p.W + 1)) * p.LH + ((v - r * (p.LH >> 3)) << 3), make_uint4(0, 0, 0, 0));
  }
  bool dw_staged = false;  // ring mode: the depthwise weights stay in shared memory for the whole CTA
  for (int64_t item = blockIdx.x; item < p.items; item += gridDim.x) {
    // item -> (image n, band b); band b covers steps [b*steps/bands, (b+1)*steps/bands)
    const int64_t n = item / p.bands;  // once per work item
    const int b = int(item - n * p.bands);
    const int k0 = int(int64_t(b) * p.steps / p.bands);
    const int k1 = int(int64_t(b + 1) * p.steps / p.bands);
    int oy0 = k0 * p.R;
    int e0 = oy0 * S - 1;
    if (e0 < 0) e0 = 0;
    int origin = e0;  // image row held in ring row 0 (advanced by RR as the band moves down)
    int e1 = 0;
    {
      const int r1 = min(p.Ho, oy0 + p.R);
      e1 = min(p.H, (r1 - 1) * S + 2);
      __syncthreads();  // the previous item's expand phase no longer reads sX
      load_rows<T>(p, sX, n, e0, e1);
    }
    for (int k = k0; k < k1; ++k) {
      const int nrows = min(p.R, p.Ho - oy0);
      const int fr = oy0 * S - 1;  // first input row the step reads
      if (fr - origin >= p.RR) origin += p.RR;
      const int npix_in = (e1 - e0) * p.W;
      int ring_row0 = e0 - origin;  // ring row of e0
      if (ring_row0 >= p.RR) ring_row0 -= p.RR;
      const int slot0 = fr - origin;  // ring row of fr (-1 only when fr == -1)
      cp_async_wait_all();
      __syncthreads();  // sX ready; the previous step's project no longer reads sDW
      for (int ch = 0; ch < p.nchunks; ++ch) {
        const int c0 = ch * p.HC;
        const bool stage = p.nchunks > 1 || !dw_staged;
        expand_chunk<T>(p, sX, sRing, sWdw, sBdw, npix_in, ring_row0, c0, stage);
        dw_staged = true;
        __syncthreads();  // ring rows and depthwise weights ready; sX free after the last chunk
        if (ch == p.nchunks - 1 && k + 1 < k1) {  // prefetch the next step's new rows
          const int r1 = min(p.Ho, oy0 + 2 * p.R);
          const int ne1 = min(p.H, (r1 - 1) * S + 2);
          load_rows<T>(p, sX, n, e1, ne1);
          e0 = e1;
          e1 = ne1;
        }
        depthwise_chunk<T, S>(p, sRing, sWdw, sBdw, sDW, oy0, nrows, slot0, c0);
        __syncthreads();  // sDW chunk ready; the ring and the depthwise weights are free again
      }
      project<T>(p, sDW, n, oy0 * p.Wo, nrows * p.Wo);
      oy0 += p.R;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host side

constexpr int kMaxDevices = 64;

template <typename T, int S>
cudaError_t ensure_smem_limit(int device, size_t bytes) {
  static std::atomic<size_t> configured[kMaxDevices];
  if (bytes <= 48 * 1024) return cudaSuccess;
  if (device >= 0 && device < kMaxDevices && configured[device].load(std::memory_order_relaxed) >= bytes)
    return cudaSuccess;
  cudaError_t err =
      cudaFuncSetAttribute(mnv2_ir_ring_kernel<T, S>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kMaxDevices) {
    size_t cur = configured[device].load(std::memory_order_relaxed);
    while (cur < bytes && !configured[device].compare_exchange_weak(cur, bytes)) {
    }
  }
  return cudaSuccess;
}

template <typename T, int S>
cudaError_t launch_typed(const Params& p, unsigned grid, size_t smem, int device, cudaStream_t stream) {
  cudaError_t err = ensure_smem_limit<T, S>(device, smem);
  if (err != cudaSuccess) return err;
  mnv2_ir_ring_kernel<T, S><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

extern "C" cudaError_t mnv2_ir_cuda_launch(mnv2_dtype dtype, const void* x, const void* w_expand,
                                           const void* b_expand, const void* w_dw, const void* b_dw,
                                           const void* w_project, const void* b_project, void* y, int64_t N,
                                           int64_t Cin8, int64_t H, int64_t W, int64_t Chid8, int64_t chid_real,
                                           int64_t Cout8, int stride, int residual, cudaStream_t stream) {
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
  mnv2_ir_cuda_plan(N, Cin8, Chid8, Cout8, H, W, stride, has_expand ? 1 : 0, max_optin, sms, &plan);
  if (!plan.ok) return cudaErrorInvalidValue;
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const Layout L = make_layout(Cin8, Chid8, H, W, Wo, stride, plan.rows, plan.chunk);

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
  if (plan.grid < 1 || plan.grid > INT32_MAX) return cudaErrorInvalidValue;

  const unsigned grid = unsigned(plan.grid);
  const size_t smem = size_t(plan.smem);
  if (dtype == MNV2_DTYPE_FLOAT16)
    return stride == 1 ? launch_typed<__half, 1>(p, grid, smem, device, stream)
                       : launch_typed<__half, 2>(p, grid, smem, device, stream);
  return stride == 1 ? launch_typed<__nv_bfloat16, 1>(p, grid, smem, device, stream)
                     : launch_typed<__nv_bfloat16, 2>(p, grid, smem, device, stream);
}
