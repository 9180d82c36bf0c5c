// Fused MobileNetV2 inverted-residual block, one launch (docs/CONTRACT.md; design: shared/NOTES.md section 3).
//
// One CTA (256 threads, 8 warps) per (image, 8x8 tile of output pixels, tile of <= 320 output channels).
//   1. The input halo tile, ((8-1)*s+3)^2 pixels x Cin channels, is loaded into shared memory once (NHWC
//      16-byte vectors when Cin % 8 == 0 and x is 16-byte aligned, else scalars), zero outside the image and
//      in the channel / pixel padding (channels padded to 16, halo pixels padded to 16 rows).
//   2. Loop over chunks of 32 expanded channels:
//        a. weights of the chunk -> shared memory (zero padded): expand [32 x CinP], depthwise taps and
//           biases (float), project [CoutP x 32];
//        b. expand GEMM [halo x CinP] x [CinP x 32] on tensor cores (WMMA 16x16x16, fp32 accumulate) -> float
//           shared buffer; + bias, ReLU6, and forced to 0 for halo pixels outside the image (the depthwise zero
//           padding lives in the expanded, activated space). Without an expand conv the chunk is a copy of the
//           input channels (already zero outside the image);
//        c. depthwise 3x3 (stride s) + bias + ReLU6 from the float buffer, rounded to the I/O dtype (as eager
//           PyTorch does before the project conv) into [64 x 32];
//        d. project GEMM [64 x 32] x [32 x CoutP] accumulated in WMMA fp32 fragments held in registers across
//           the chunk loop.
//   3. Epilogue per warp: fragment -> per-warp shared scratch -> + bias (+ residual from x) -> masked NHWC store.
//
// No torch headers here; the binding (inverted_residual_binding.cpp) validates and allocates.
#include "inverted_residual_cuda.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace {

using namespace nvcuda;

constexpr int kTH = 8;                // output tile rows
constexpr int kTW = 8;                // output tile columns
constexpr int kTP = kTH * kTW;        // 64 output pixels per CTA = 4 WMMA row tiles
constexpr int kCH = 32;               // expanded channels per chunk = 2 WMMA tiles
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kLDE = kCH + 4;         // leading dim (floats) of the expanded chunk buffer
constexpr int kLDK = kCH + 8;         // leading dim (elements) of the depthwise output and project weights
constexpr int kSmallNFW = 3;          // project fragments per warp: 3 -> 96 output channels per CTA
constexpr int kBigNFW = 10;           //                             10 -> 320 output channels per CTA
constexpr int64_t kMaxChannels = int64_t(1) << 24;

static_assert(kTP == 64, "the project GEMM maps 4 row tiles x 2 column groups onto 8 warps");
static_assert(kCH == 32, "the depthwise loop uses e >> 5 / e & 31");
static_assert(kWarps == 8, "warp -> (row tile, column group) mapping assumes 8 warps");

// ---------------------------------------------------------------------------------------------------------
// dtype traits

template <typename T>
struct Tr;

template <>
struct Tr<__half> {
  static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
};

template <>
struct Tr<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
};

// min(max(v, 0), 6) that keeps NaN (NaN compares false both ways), like torch.clamp.
__device__ __forceinline__ float relu6(float v) { return v < 0.f ? 0.f : (v > 6.f ? 6.f : v); }

// ---------------------------------------------------------------------------------------------------------
// Shared-memory layout, computed once on the host (same function for the size query and the launch).

struct Layout {
  int CinP;       // Cin rounded up to 16
  int LDI;        // leading dim (elements) of the input halo tile and the expand weights: CinP + 8
  int HH, HWd;    // halo tile rows, columns
  int HP, HPP;    // halo pixels, rounded up to 16
  int nfw;        // project fragments per warp (kSmallNFW or kBigNFW)
  int cout_tile;  // output channels per CTA: 32 * nfw
  int coutP;      // min(Cout, cout_tile) rounded up to 16
  size_t off_in, off_we, off_exp, off_dw, off_wp, off_wdw, off_bdw, off_be, off_scr, total;
};

inline size_t align128(size_t v) { return (v + 127) & ~size_t(127); }
inline int64_t roundup16(int64_t v) { return (v + 15) / 16 * 16; }

bool make_layout(int64_t Cin, int64_t Chid, int64_t Cout, int stride, bool has_expand, Layout* L) {
  if (Cin < 1 || Chid < 1 || Cout < 1 || Cin > kMaxChannels || Chid > kMaxChannels || Cout > kMaxChannels)
    return false;
  if (stride != 1 && stride != 2) return false;
  if (!has_expand && Chid != Cin) return false;
  L->CinP = int(roundup16(Cin));
  L->LDI = L->CinP + 8;
  L->HH = (kTH - 1) * stride + 3;
  L->HWd = (kTW - 1) * stride + 3;
  L->HP = L->HH * L->HWd;
  L->HPP = int(roundup16(L->HP));
  L->nfw = roundup16(Cout) <= 32 * kSmallNFW ? kSmallNFW : kBigNFW;
  L->cout_tile = 32 * L->nfw;
  L->coutP = int(roundup16(Cout < L->cout_tile ? Cout : L->cout_tile));
  const size_t e = 2;  // bytes per float16 / bfloat16 element
  size_t off = 0;
  L->off_in = off;  off = align128(off + size_t(L->HPP) * L->LDI * e);
  L->off_we = off;  off = align128(off + (has_expand ? size_t(kCH) * L->LDI * e : 0));
  L->off_exp = off; off = align128(off + size_t(L->HPP) * kLDE * sizeof(float));
  L->off_dw = off;  off = align128(off + size_t(kTP) * kLDK * e);
  L->off_wp = off;  off = align128(off + size_t(L->coutP) * kLDK * e);
  L->off_wdw = off; off = align128(off + size_t(kCH) * 9 * sizeof(float));
  L->off_bdw = off; off = align128(off + size_t(kCH) * sizeof(float));
  L->off_be = off;  off = align128(off + size_t(kCH) * sizeof(float));
  L->off_scr = off; off = align128(off + size_t(kWarps) * 256 * sizeof(float));
  L->total = off;
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// Kernel

struct Params {
  const void* x;
  const void* we;   // may be null (no expand conv)
  const void* be;
  const void* wdw;
  const void* bdw;
  const void* wp;
  const void* bp;
  void* y;
  int H, W, Cin, Chid, Cout, Ho, Wo;
  int stride, residual, has_expand;
  int tiles_x, tiles_per_img;
  int cout_tile;
  int CinP, LDI, HWd, HP, HPP, coutP;
  int vec_x, vec_we, vec_wp;  // 16-byte vector loads allowed
  int off_in, off_we, off_exp, off_dw, off_wp, off_wdw, off_bdw, off_be, off_scr;
};

template <typename T, int NFW>
__global__ void __launch_bounds__(kThreads, (NFW <= kSmallNFW) ? 2 : 1) inverted_residual_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* const sIn = reinterpret_cast<T*>(smem + p.off_in);        // [HPP][LDI]   input halo tile
  T* const sWe = reinterpret_cast<T*>(smem + p.off_we);        // [kCH][LDI]   expand weights (B, col-major)
  float* const sExp = reinterpret_cast<float*>(smem + p.off_exp);  // [HPP][kLDE] expanded chunk
  T* const sDw = reinterpret_cast<T*>(smem + p.off_dw);        // [kTP][kLDK]  depthwise output (A)
  T* const sWp = reinterpret_cast<T*>(smem + p.off_wp);        // [coutP][kLDK] project weights (B, col-major)
  float* const sWdw = reinterpret_cast<float*>(smem + p.off_wdw);  // [kCH][9]
  float* const sBdw = reinterpret_cast<float*>(smem + p.off_bdw);  // [kCH]
  float* const sBe = reinterpret_cast<float*>(smem + p.off_be);    // [kCH]
  float* const sScr = reinterpret_cast<float*>(smem + p.off_scr);  // [kWarps][256]

  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ we = static_cast<const T*>(p.we);
  const T* __restrict__ be = static_cast<const T*>(p.be);
  const T* __restrict__ wdw = static_cast<const T*>(p.wdw);
  const T* __restrict__ bdw = static_cast<const T*>(p.bdw);
  const T* __restrict__ wp = static_cast<const T*>(p.wp);
  const T* __restrict__ bp = static_cast<const T*>(p.bp);
  T* __restrict__ y = static_cast<T*>(p.y);

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int n = int(blockIdx.x / unsigned(p.tiles_per_img));
  const int tile = int(blockIdx.x % unsigned(p.tiles_per_img));
  const int oy0 = (tile / p.tiles_x) * kTH;
  const int ox0 = (tile % p.tiles_x) * kTW;
  const int s = p.stride;
  const int iy0 = oy0 * s - 1;  // image row of halo row 0
  const int ix0 = ox0 * s - 1;
  const int n0 = int(blockIdx.y) * p.cout_tile;  // first output channel of this CTA
  const int ncols = min(p.Cout - n0, p.cout_tile);
  const int NT = (ncols + 15) >> 4;  // 16-wide output-channel tiles of this CTA (<= 2 * NFW)
  const int H = p.H, W = p.W, Cin = p.Cin, CinP = p.CinP, LDI = p.LDI, HWd = p.HWd, HP = p.HP, HPP = p.HPP;
  const T zero = Tr<T>::from_f(0.f);

  // ---- 1. input halo tile -> sIn (zero outside the image, in padded pixels and padded channels)
  if (p.vec_x) {
    const int vpp = CinP >> 3;  // 8-element vectors per pixel row
    const int total = HPP * vpp;
    for (int v = tid; v < total; v += kThreads) {
      const int pix = v / vpp;
      const int c = (v - pix * vpp) << 3;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (pix < HP && c < Cin) {  // Cin % 8 == 0 here, so c + 8 <= Cin
        const int hy = pix / HWd;
        const int iy = iy0 + hy;
        const int ix = ix0 + (pix - hy * HWd);
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
          const int64_t off = ((int64_t(n) * H + iy) * W + ix) * Cin + c;
          val = __ldg(reinterpret_cast<const uint4*>(x + off));
        }
      }
      *reinterpret_cast<uint4*>(sIn + pix * LDI + c) = val;
    }
  } else {
    const int total = HPP * CinP;
    for (int v = tid; v < total; v += kThreads) {
      const int pix = v / CinP;
      const int c = v - pix * CinP;
      T val = zero;
      if (pix < HP && c < Cin) {
        const int hy = pix / HWd;
        const int iy = iy0 + hy;
        const int ix = ix0 + (pix - hy * HWd);
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) val = x[((int64_t(n) * H + iy) * W + ix) * Cin + c];
      }
      sIn[pix * LDI + c] = val;
    }
  }
  // (the first __syncthreads of the chunk loop publishes sIn)

  // Project accumulators. Warp w owns row tile (w & 3) and column tiles (w >> 2) + 2 * i, i < NFW.
  const int mt_p = warp & 3;
  const int nt_base = warp >> 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NFW];
#pragma unroll
  for (int i = 0; i < NFW; ++i) wmma::fill_fragment(acc[i], 0.f);

  const int coutP = p.coutP;
  for (int c0 = 0; c0 < p.Chid; c0 += kCH) {
    const int cvalid = min(kCH, p.Chid - c0);  // valid channels in this chunk

    // ---- 2a. chunk weights -> shared memory (zero padded)
    if (p.has_expand) {
      if (p.vec_we) {  // Cin % 8 == 0
        const int vpr = CinP >> 3;
        const int total = kCH * vpr;
        for (int v = tid; v < total; v += kThreads) {
          const int r = v / vpr;
          const int k = (v - r * vpr) << 3;
          uint4 val = make_uint4(0u, 0u, 0u, 0u);
          if (r < cvalid && k < Cin)
            val = __ldg(reinterpret_cast<const uint4*>(we + (int64_t(c0) + r) * Cin + k));
          *reinterpret_cast<uint4*>(sWe + r * LDI + k) = val;
        }
      } else {
        const int total = kCH * CinP;
        for (int v = tid; v < total; v += kThreads) {
          const int r = v / CinP;
          const int k = v - r * CinP;
          sWe[r * LDI + k] = (r < cvalid && k < Cin) ? we[(int64_t(c0) + r) * Cin + k] : zero;
        }
      }
      if (tid < kCH) sBe[tid] = tid < cvalid ? Tr<T>::to_f(be[c0 + tid]) : 0.f;
    }
    if (p.vec_wp) {  // Chid % 8 == 0, so cvalid % 8 == 0
      const int total = coutP * (kCH >> 3);
      for (int v = tid; v < total; v += kThreads) {
        const int r = v >> 2;
        const int k = (v & 3) << 3;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (r < ncols && k < cvalid)
          val = __ldg(reinterpret_cast<const uint4*>(wp + (int64_t(n0) + r) * p.Chid + c0 + k));
        *reinterpret_cast<uint4*>(sWp + r * kLDK + k) = val;
      }
    } else {
      const int total = coutP * kCH;
      for (int v = tid; v < total; v += kThreads) {
        const int r = v >> 5;
        const int k = v & 31;
        sWp[r * kLDK + k] = (r < ncols && k < cvalid) ? wp[(int64_t(n0) + r) * p.Chid + c0 + k] : zero;
      }
    }
    for (int v = tid; v < kCH * 9; v += kThreads)
      sWdw[v] = (v / 9 < cvalid) ? Tr<T>::to_f(wdw[int64_t(c0) * 9 + v]) : 0.f;
    if (tid < kCH) sBdw[tid] = tid < cvalid ? Tr<T>::to_f(bdw[c0 + tid]) : 0.f;
    __syncthreads();

    // ---- 2b. expanded chunk -> sExp (float): relu6(x W_e^T + b_e), 0 outside the image
    if (p.has_expand) {
      const int MT = HPP >> 4;
      const int KT = CinP >> 4;
      for (int t = warp; t < MT * 2; t += kWarps) {  // warp-uniform loop
        const int mt = t >> 1;
        const int nt = t & 1;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        wmma::fill_fragment(c, 0.f);
        for (int kk = 0; kk < KT; ++kk) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
          wmma::load_matrix_sync(a, sIn + mt * 16 * LDI + kk * 16, LDI);
          wmma::load_matrix_sync(b, sWe + nt * 16 * LDI + kk * 16, LDI);
          wmma::mma_sync(c, a, b, c);
        }
        float* const dst = sExp + mt * 16 * kLDE + nt * 16;
        wmma::store_matrix_sync(dst, c, kLDE, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int e = j * 32 + lane;
          const int r = e >> 4;
          const int cc = e & 15;
          const int pix = mt * 16 + r;
          const int ch = nt * 16 + cc;
          const int hy = pix / HWd;
          const int iy = iy0 + hy;
          const int ix = ix0 + (pix - hy * HWd);
          const bool inside = pix < HP && iy >= 0 && iy < H && ix >= 0 && ix < W && ch < cvalid;
          const float v = dst[r * kLDE + cc];
          dst[r * kLDE + cc] = inside ? relu6(v + sBe[ch]) : 0.f;
        }
        __syncwarp();
      }
    } else {  // no expand conv: the chunk is input channels c0 .. c0 + 31 (Chid == Cin)
      for (int v = tid; v < HPP * kCH; v += kThreads) {
        const int pix = v >> 5;
        const int ch = v & 31;
        sExp[pix * kLDE + ch] = ch < cvalid ? Tr<T>::to_f(sIn[pix * LDI + c0 + ch]) : 0.f;
      }
    }
    __syncthreads();

    // ---- 2c. depthwise 3x3, stride s, + bias, ReLU6 -> sDw (I/O dtype)
    for (int v = tid; v < kTP * kCH; v += kThreads) {
      const int q = v >> 5;   // output pixel in the tile
      const int ch = v & 31;  // channel in the chunk
      const int ty = q / kTW;
      const int tx = q - ty * kTW;
      const float* src = sExp + ((ty * s) * HWd + tx * s) * kLDE + ch;
      const float* wk = sWdw + ch * 9;
      float a = sBdw[ch];
#pragma unroll
      for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) a = fmaf(wk[ky * 3 + kx], src[(ky * HWd + kx) * kLDE], a);
      }
      sDw[q * kLDK + ch] = Tr<T>::from_f(ch < cvalid ? relu6(a) : 0.f);
    }
    __syncthreads();

    // ---- 2d. project GEMM, accumulate in registers
#pragma unroll 1
    for (int kk = 0; kk < kCH / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, sDw + mt_p * 16 * kLDK + kk * 16, kLDK);
#pragma unroll
      for (int i = 0; i < NFW; ++i) {
        const int nt = nt_base + 2 * i;
        if (nt < NT) {  // warp-uniform
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
          wmma::load_matrix_sync(b, sWp + nt * 16 * kLDK + kk * 16, kLDK);
          wmma::mma_sync(acc[i], a, b, acc[i]);
        }
      }
    }
    __syncthreads();  // before the next chunk overwrites the weights, sExp and sDw
  }

  // ---- 3. epilogue: + bias (+ residual), masked NHWC store
  float* const scr = sScr + warp * 256;
  const int Ho = p.Ho, Wo = p.Wo, Cout = p.Cout;
#pragma unroll
  for (int i = 0; i < NFW; ++i) {
    const int nt = nt_base + 2 * i;
    if (nt < NT) {  // warp-uniform
      wmma::store_matrix_sync(scr, acc[i], 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = j * 32 + lane;
        const int q = mt_p * 16 + (e >> 4);
        const int oy = oy0 + q / kTW;
        const int ox = ox0 + q % kTW;
        const int co = n0 + nt * 16 + (e & 15);
        if (oy < Ho && ox < Wo && co < Cout) {
          float v = scr[e] + Tr<T>::to_f(bp[co]);
          if (p.residual)  // stride 1 and Cin == Cout: the input pixel is (oy, ox), channel co
            v += Tr<T>::to_f(x[((int64_t(n) * H + oy) * W + ox) * Cin + co]);
          y[((int64_t(n) * Ho + oy) * Wo + ox) * Cout + co] = Tr<T>::from_f(v);
        }
      }
      __syncwarp();
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host side

constexpr int kMaxDevices = 64;

// Raises the kernel's dynamic shared-memory limit once per (kernel, device) to at least `bytes`.
template <typename T, int NFW>
cudaError_t ensure_smem_limit(int device, size_t bytes) {
  static std::atomic<size_t> configured[kMaxDevices];
  if (bytes <= 48 * 1024) return cudaSuccess;
  if (device >= 0 && device < kMaxDevices && configured[device].load(std::memory_order_relaxed) >= bytes)
    return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(inverted_residual_kernel<T, NFW>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kMaxDevices) {
    size_t cur = configured[device].load(std::memory_order_relaxed);
    while (cur < bytes && !configured[device].compare_exchange_weak(cur, bytes)) {
    }
  }
  return cudaSuccess;
}

template <typename T, int NFW>
cudaError_t launch_typed(const Params& p, dim3 grid, size_t smem, int device, cudaStream_t stream) {
  cudaError_t err = ensure_smem_limit<T, NFW>(device, smem);
  if (err != cudaSuccess) return err;
  inverted_residual_kernel<T, NFW><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

extern "C" size_t mnv2_ir_cuda_smem_bytes(int64_t Cin, int64_t Chid, int64_t Cout, int stride, int has_expand) {
  Layout L;
  if (!make_layout(Cin, Chid, Cout, stride, has_expand != 0, &L)) return 0;
  return L.total;
}

extern "C" cudaError_t mnv2_ir_cuda_launch(mnv2_dtype dtype, const void* x, const void* w_expand,
                                           const void* b_expand, const void* w_dw, const void* b_dw,
                                           const void* w_project, const void* b_project, void* y, int64_t N,
                                           int64_t Cin, int64_t H, int64_t W, int64_t Chid, int64_t Cout,
                                           int stride, int residual, cudaStream_t stream) {
  if (dtype != MNV2_DTYPE_FLOAT16 && dtype != MNV2_DTYPE_BFLOAT16) return cudaErrorInvalidValue;
  // H, W <= 2^30 keeps the in-kernel int arithmetic (tile origin * stride, halo coordinates) in range.
  if (N < 0 || H < 1 || W < 1 || H > (int64_t(1) << 30) || W > (int64_t(1) << 30)) return cudaErrorInvalidValue;
  const bool has_expand = w_expand != nullptr;
  if (has_expand && b_expand == nullptr) return cudaErrorInvalidValue;
  if (residual && (stride != 1 || Cin != Cout)) return cudaErrorInvalidValue;
  Layout L;
  if (!make_layout(Cin, Chid, Cout, stride, has_expand, &L)) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  if (x == nullptr || w_dw == nullptr || b_dw == nullptr || w_project == nullptr || b_project == nullptr ||
      y == nullptr)
    return cudaErrorInvalidValue;

  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int max_optin = 0;
  err = cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (L.total > size_t(max_optin)) return cudaErrorInvalidValue;

  const int64_t Ho = (H - 1) / stride + 1;
  const int64_t Wo = (W - 1) / stride + 1;
  const int64_t tiles_x = (Wo + kTW - 1) / kTW;
  const int64_t tiles_y = (Ho + kTH - 1) / kTH;
  const int64_t tiles_per_img = tiles_x * tiles_y;
  if (tiles_per_img > INT32_MAX || N > INT32_MAX / tiles_per_img) return cudaErrorInvalidValue;
  const int64_t blocks_x = N * tiles_per_img;
  const int64_t blocks_y = (Cout + L.cout_tile - 1) / L.cout_tile;
  if (blocks_y > 65535) return cudaErrorInvalidValue;

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
  p.Cin = int(Cin);
  p.Chid = int(Chid);
  p.Cout = int(Cout);
  p.Ho = int(Ho);
  p.Wo = int(Wo);
  p.stride = stride;
  p.residual = residual ? 1 : 0;
  p.has_expand = has_expand ? 1 : 0;
  p.tiles_x = int(tiles_x);
  p.tiles_per_img = int(tiles_per_img);
  p.cout_tile = L.cout_tile;
  p.CinP = L.CinP;
  p.LDI = L.LDI;
  p.HWd = L.HWd;
  p.HP = L.HP;
  p.HPP = L.HPP;
  p.coutP = L.coutP;
  p.vec_x = (Cin % 8 == 0 && aligned16(x)) ? 1 : 0;
  p.vec_we = (has_expand && Cin % 8 == 0 && aligned16(w_expand)) ? 1 : 0;
  p.vec_wp = (Chid % 8 == 0 && aligned16(w_project)) ? 1 : 0;
  p.off_in = int(L.off_in);
  p.off_we = int(L.off_we);
  p.off_exp = int(L.off_exp);
  p.off_dw = int(L.off_dw);
  p.off_wp = int(L.off_wp);
  p.off_wdw = int(L.off_wdw);
  p.off_bdw = int(L.off_bdw);
  p.off_be = int(L.off_be);
  p.off_scr = int(L.off_scr);

  const dim3 grid(unsigned(blocks_x), unsigned(blocks_y), 1u);
  const bool big = L.nfw == kBigNFW;
  if (dtype == MNV2_DTYPE_FLOAT16) {
    return big ? launch_typed<__half, kBigNFW>(p, grid, L.total, device, stream)
               : launch_typed<__half, kSmallNFW>(p, grid, L.total, device, stream);
  }
  return big ? launch_typed<__nv_bfloat16, kBigNFW>(p, grid, L.total, device, stream)
             : launch_typed<__nv_bfloat16, kSmallNFW>(p, grid, L.total, device, stream);
}
