// Fused CPU kernel of mnv2::inverted_residual (see docs/CONTRACT.md for the op's semantics).
//
//   h = x                                               [N, Cin, H, W]
//   h = relu6(conv1x1(h, w_expand) + b_expand)          [N, Chid, H, W]   (only if w_expand is given)
//   h = relu6(dw3x3(h, w_dw, stride, pad=1) + b_dw)     [N, Chid, Ho, Wo] (zero padding of the activated h)
//   y = conv1x1(h, w_project) + b_project (+ x)         [N, Cout, Ho, Wo]
//
// Layout: everything is NHWC (x.contiguous(channels_last)); the output is allocated channels_last and written
// row by row by the kernel. Arithmetic is fp32 for every dtype (bf16 tensors are converted on load/store).
//
// Work decomposition: units = (image, band of output rows), split over threads with at::parallel_for. A unit
// walks down its band in chunks of R output rows:
//   1. expand the input rows the chunk needs and has not computed yet (GEMM [pixels, Cin] x [Cin, Chid_p]
//      + bias + ReLU6) into a ring of S row slots; rows of the ring that the previous chunk already computed
//      (the 2 (stride 1) or 1 (stride 2) halo rows) are reused, not recomputed;
//   2. depthwise 3x3 + bias + ReLU6 of the chunk's output rows into dwbuf ([R*Wo, Chid_p]);
//   3. project GEMM [R*Wo, Chid_p] x [Chid_p, Cout] + bias (+ residual) straight into the output rows.
// Image rows outside [0, H) are a shared zero row; each ring row has one zero pixel on the left and right,
// so the padding of the depthwise is zeros of the *activated expanded* tensor, as the contract says.
//
// GEMMs use a hand-written AVX2/FMA register-blocked micro-kernel (MR rows x NV*8 columns, 12 accumulators)
// over weights packed once per call into 8-column strips; the A and C rows are addressed by per-row pointer
// arrays, so the expand writes straight into the padded ring slots and the project straight into the output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "checks.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#warning "mnv2: build csrc/cpu with -fopenmp (compile and link): without it at::parallel_for runs this kernel on one thread"
#endif

namespace mnv2 {
namespace {

constexpr int64_t kVec = 8;  // floats per AVX2 register

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------------------
// Scratch memory: 64-byte aligned float buffers, one set per thread, reused across calls.
// ---------------------------------------------------------------------------------------------------------
struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
struct Scratch {
  std::unique_ptr<float, AlignedFree> mem;
  int64_t cap = 0;  // floats
  float* get(int64_t n) {
    if (n > cap) {
      const int64_t bytes = round_up(n * (int64_t)sizeof(float), 64);
      float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
      TORCH_CHECK(p != nullptr, "mnv2.inverted_residual: out of memory allocating ", bytes, " bytes of scratch");
      mem.reset(p);
      cap = n;
    }
    return mem.get();
  }
};
Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// GEMM micro-kernel: C[m, :] = epilogue(sum_k A[m][k] * B[k, :] + bias) for MR rows m and NV*8 columns.
//   a[i]    : pointer to row i of A (K contiguous floats), i < MR
//   b       : packed B, 8-column strips: strip j is [K][8] floats at b + j*K*8 (the first strip of this tile)
//   bias    : NV*8 floats (padded, zero beyond the valid columns)
//   c[i]    : pointer to row i of C (first column of this tile)
//   res[i]  : (RES only) pointer to row i of the residual, same columns as C
//   last_cols: valid columns in the last strip (1..8); stores/loads there are masked when < 8.
// ---------------------------------------------------------------------------------------------------------
// ReLU6 that propagates NaN as torch.clamp does: _mm256_max_ps(a, b) / _mm256_min_ps(a, b) return the second
// operand when either is NaN, so the value goes second in both (min(max(NaN, 0), 6) would give 0).
inline __m256 relu6_nan(__m256 v, __m256 zero, __m256 six) {
  return _mm256_min_ps(six, _mm256_max_ps(zero, v));
}

inline __m256i tail_mask(int n) {
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}

//   K-blocking: the tile covers k in [k0, k0+kc) of a K-long reduction (b is already offset to row k0 of
//   each strip, bstride = K*8 is the strip stride, a[i] is offset by k0 by the caller).
//   first: start from bias (else from the partial sums in C);  last: apply the epilogue (residual, ReLU6).
template <int MR, int NV, bool RELU6, bool RES>
inline void ukernel(int64_t kc, int64_t bstride, const float* const* a, const float* b, const float* bias,
                    float* const* c, const float* const* res, int last_cols, bool first, bool last_k) {
  __m256 acc[MR][NV];
  const __m256i mask = tail_mask(last_cols);
  if (first) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      const __m256 bj = _mm256_loadu_ps(bias + j * kVec);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[i][j] = bj;
    }
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        acc[i][j] = (j == NV - 1 && last_cols != kVec) ? _mm256_maskload_ps(c[i] + j * kVec, mask)
                                                       : _mm256_loadu_ps(c[i] + j * kVec);
      }
    }
  }
  const float* ap[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) ap[i] = a[i];
  for (int64_t k = 0; k < kc; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) bv[j] = _mm256_load_ps(b + j * bstride + k * kVec);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(ap[i] + k);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  if (!last_k) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        if (j == NV - 1 && last_cols != kVec) _mm256_maskstore_ps(c[i] + j * kVec, mask, acc[i][j]);
        else _mm256_storeu_ps(c[i] + j * kVec, acc[i][j]);
      }
    }
    return;
  }
  const __m256 zero = _mm256_setzero_ps();
  const __m256 six = _mm256_set1_ps(6.0f);
  if (last_cols == kVec) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        __m256 v = acc[i][j];
        if (RES) v = _mm256_add_ps(v, _mm256_loadu_ps(res[i] + j * kVec));
        if (RELU6) v = relu6_nan(v, zero, six);
        _mm256_storeu_ps(c[i] + j * kVec, v);
      }
    }
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        const bool last = (j == NV - 1);
        __m256 v = acc[i][j];
        if (RES) {
          v = _mm256_add_ps(v, last ? _mm256_maskload_ps(res[i] + j * kVec, mask)
                                    : _mm256_loadu_ps(res[i] + j * kVec));
        }
        if (RELU6) v = relu6_nan(v, zero, six);
        if (last) {
          _mm256_maskstore_ps(c[i] + j * kVec, mask, v);
        } else {
          _mm256_storeu_ps(c[i] + j * kVec, v);
        }
      }
    }
  }
}

// Runs a tile of mr (<= MRMAX) rows with the micro-kernel instantiated for exactly mr rows.
template <int MRMAX, int NV, bool RELU6, bool RES>
inline void run_tile(int mr, int64_t kc, int64_t bstride, const float* const* a, const float* b,
                     const float* bias, float* const* c, const float* const* res, int last_cols, bool first,
                     bool last_k) {
  static_assert(MRMAX <= 6, "MRMAX <= 6");
#define MNV2_UK(R) ukernel<R, NV, RELU6, RES>(kc, bstride, a, b, bias, c, res, last_cols, first, last_k)
  switch (mr) {
    case 6: if constexpr (MRMAX >= 6) { MNV2_UK(6); } break;
    case 5: if constexpr (MRMAX >= 5) { MNV2_UK(5); } break;
    case 4: if constexpr (MRMAX >= 4) { MNV2_UK(4); } break;
    case 3: MNV2_UK(3); break;
    case 2: MNV2_UK(2); break;
    default: MNV2_UK(1); break;
  }
#undef MNV2_UK
}

// C[m, 0:Ncols] = epilogue(A[m, 0:K] . Bpacked + bias) for m < M.
//   a[m], c[m], res[m]: row pointers (M of each; res only if RES)
//   bpack: [Np/8][K][8] floats, Np = round_up(Ncols, 8), zero-padded columns; bias: [Np] floats.
// Column tiles of 24 (4 rows) when the strip count divides by 3, else tiles of 16 (6 rows) + one of 8.
// K is split in blocks of <= kKc so that a B block (kKc x 24 floats) and an A tile stay in L1; partial sums
// live in C between K blocks.
constexpr int64_t kKc = 192;
template <bool RELU6, bool RES>
void gemm_rows(int64_t M, int64_t K, int64_t Ncols, const float* const* a, const float* bpack, const float* bias,
               float* const* c, const float* const* res) {
  const int64_t strips = round_up(Ncols, kVec) / kVec;
  const int last_valid = (int)(Ncols - (strips - 1) * kVec);  // 1..8
  const bool use3 = strips % 3 == 0;
  const int64_t nkb = (K + kKc - 1) / kKc;
  const int64_t kcb = (K + nkb - 1) / nkb;  // balanced K blocks
  for (int64_t k0 = 0; k0 < K; k0 += kcb) {
    const int64_t kc = std::min(kcb, K - k0);
    const bool first = k0 == 0, last_k = k0 + kc == K;
    int64_t j = 0;
    while (j < strips) {
      const int nv = use3 ? 3 : ((strips - j >= 2) ? 2 : 1);
      const bool has_last = (j + nv == strips);
      const int lc = has_last ? last_valid : (int)kVec;
      const float* bj = bpack + j * K * kVec + k0 * kVec;
      const float* biasj = bias + j * kVec;
      const int64_t coff = j * kVec;
      const int mrmax = nv == 3 ? 4 : 6;
      for (int64_t m0 = 0; m0 < M; m0 += mrmax) {
        const int mr = (int)std::min<int64_t>(mrmax, M - m0);
        const float* ap[6];
        float* cp[6];
        const float* rp[6];
        for (int i = 0; i < mr; ++i) {
          ap[i] = a[m0 + i] + k0;
          cp[i] = c[m0 + i] + coff;
          if (RES) rp[i] = res[m0 + i] + coff;
        }
        if (nv == 3) run_tile<4, 3, RELU6, RES>(mr, kc, K * kVec, ap, bj, biasj, cp, rp, lc, first, last_k);
        else if (nv == 2) run_tile<6, 2, RELU6, RES>(mr, kc, K * kVec, ap, bj, biasj, cp, rp, lc, first, last_k);
        else run_tile<6, 1, RELU6, RES>(mr, kc, K * kVec, ap, bj, biasj, cp, rp, lc, first, last_k);
      }
      j += nv;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Depthwise 3x3 (stride S) + bias + ReLU6 of one output row.
//   rows[ky]: padded input row ky (ky = 0..2): (W+2) pixels x Cp floats, pixel 0 and W+1 are zeros
//   wdw     : [9][Cp] floats, tap t = ky*3+kx;  bdw: [Cp]
//   out     : [Wo][Cp] floats
// Channels are vectorised (Cp % 8 == 0); 4 output pixels at a time for independent FMA chains.
// ---------------------------------------------------------------------------------------------------------
template <int S>
void dw_row(const float* const rows[3], const float* wdw, const float* bdw, float* out, int64_t Wo, int64_t Cp) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 six = _mm256_set1_ps(6.0f);
  const float* r0 = rows[0];
  const float* r1 = rows[1];
  const float* r2 = rows[2];
  for (int64_t cc = 0; cc < Cp; cc += kVec) {
    const __m256 w00 = _mm256_load_ps(wdw + 0 * Cp + cc), w01 = _mm256_load_ps(wdw + 1 * Cp + cc),
                 w02 = _mm256_load_ps(wdw + 2 * Cp + cc), w10 = _mm256_load_ps(wdw + 3 * Cp + cc),
                 w11 = _mm256_load_ps(wdw + 4 * Cp + cc), w12 = _mm256_load_ps(wdw + 5 * Cp + cc),
                 w20 = _mm256_load_ps(wdw + 6 * Cp + cc), w21 = _mm256_load_ps(wdw + 7 * Cp + cc),
                 w22 = _mm256_load_ps(wdw + 8 * Cp + cc);
    const __m256 bb = _mm256_load_ps(bdw + cc);
    auto one = [&](int64_t wo) -> __m256 {
      const int64_t p = (wo * S) * Cp + cc;  // padded pixel wo*S is input column wo*S-1
      __m256 acc = _mm256_fmadd_ps(_mm256_load_ps(r0 + p), w00, bb);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r0 + p + Cp), w01, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r0 + p + 2 * Cp), w02, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r1 + p), w10, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r1 + p + Cp), w11, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r1 + p + 2 * Cp), w12, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r2 + p), w20, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r2 + p + Cp), w21, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(r2 + p + 2 * Cp), w22, acc);
      return relu6_nan(acc, zero, six);
    };
    int64_t wo = 0;
    for (; wo + 4 <= Wo; wo += 4) {
      const __m256 v0 = one(wo), v1 = one(wo + 1), v2 = one(wo + 2), v3 = one(wo + 3);
      _mm256_store_ps(out + (wo + 0) * Cp + cc, v0);
      _mm256_store_ps(out + (wo + 1) * Cp + cc, v1);
      _mm256_store_ps(out + (wo + 2) * Cp + cc, v2);
      _mm256_store_ps(out + (wo + 3) * Cp + cc, v3);
    }
    for (; wo < Wo; ++wo) _mm256_store_ps(out + wo * Cp + cc, one(wo));
  }
}

// The same as dw_row, for depthwise weights that are not all finite: taps on the zero padding are skipped
// (as ATen's convolution does), not multiplied by 0, so that a NaN/Inf weight does not turn 0 * w into NaN at
// the image border.  rows[ky] == nullptr: image row outside [0, H);  W: image width (valid padded pixels
// 1..W of each row).  Slow (one output pixel at a time); only used when a weight is NaN or +-Inf.
template <int S>
void dw_row_skip_pad(const float* const rows[3], const float* wdw, const float* bdw, float* out, int64_t Wo,
                     int64_t Cp, int64_t W) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 six = _mm256_set1_ps(6.0f);
  for (int64_t wo = 0; wo < Wo; ++wo) {
    for (int64_t cc = 0; cc < Cp; cc += kVec) {
      __m256 acc = _mm256_load_ps(bdw + cc);
      for (int ky = 0; ky < 3; ++ky) {
        if (rows[ky] == nullptr) continue;
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t col = wo * S - 1 + kx;  // image column
          if (col < 0 || col >= W) continue;
          acc = _mm256_fmadd_ps(_mm256_load_ps(rows[ky] + (col + 1) * Cp + cc),
                                _mm256_load_ps(wdw + (ky * 3 + kx) * Cp + cc), acc);
        }
      }
      _mm256_store_ps(out + wo * Cp + cc, relu6_nan(acc, zero, six));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Weights packed to fp32 once per call, into a persistent buffer of the calling thread (no fresh allocation,
// hence no page faults, per call). All pointers are 64-byte aligned.
// ---------------------------------------------------------------------------------------------------------
struct Packed {
  int64_t Cp;     // Chid rounded up to 8
  int64_t Coutp;  // Cout rounded up to 8
  const float* wexp;   // [Cp/8][Cin][8]    w_expand^T in 8-column strips (nullptr if no expand)
  const float* bexp;   // [Cp]              (nullptr if no expand)
  const float* wdw;    // [9][Cp]           tap-major depthwise weights, tap = ky*3+kx
  const float* bdw;    // [Cp]
  const float* wproj;  // [Coutp/8][Cp][8]  w_project^T in 8-column strips
  const float* bproj;  // [Coutp]
  bool dw_finite;      // every depthwise weight is finite (else the depthwise skips padding taps)
};

Scratch& pack_scratch() {  // separate from thread_scratch(): the calling thread is also a worker
  static thread_local Scratch s;
  return s;
}

// Parallel packing only in chunks of >= kPackGrain floats: a parallel region costs more than packing a small
// matrix (and on a busy machine a region can wait a scheduler tick for a descheduled worker).
constexpr int64_t kPackGrain = 1 << 17;
// w: [Nc, K] row-major (row n = output column n) -> dst [round_up(Nc,8)/8][Kp][8], zero for n >= Nc, k >= K.
template <typename T>
void pack_strips(float* dst, const T* w, int64_t Nc, int64_t K, int64_t Kp) {
  const int64_t strips = round_up(Nc, kVec) / kVec;
  at::parallel_for(0, strips, std::max<int64_t>(1, kPackGrain / std::max<int64_t>(1, Kp * kVec)),
                   [&](int64_t jb, int64_t je) {
    for (int64_t j = jb; j < je; ++j) {
      float* d = dst + j * Kp * kVec;
      const int64_t nv = std::min<int64_t>(kVec, Nc - j * kVec);  // valid columns of this strip
      const T* src[kVec];
      for (int64_t c = 0; c < kVec; ++c) src[c] = w + (j * kVec + std::min(c, nv - 1)) * K;
      if (nv == kVec) {
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t c = 0; c < kVec; ++c) d[k * kVec + c] = static_cast<float>(src[c][k]);
        }
      } else {
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t c = 0; c < kVec; ++c) d[k * kVec + c] = c < nv ? static_cast<float>(src[c][k]) : 0.f;
        }
      }
      std::memset(d + K * kVec, 0, (size_t)((Kp - K) * kVec) * sizeof(float));
    }
  });
}

// b: [n] -> dst [np], zero padded
template <typename T>
void pad_vec(float* dst, const T* b, int64_t n, int64_t np) {
  for (int64_t i = 0; i < np; ++i) dst[i] = i < n ? static_cast<float>(b[i]) : 0.f;
}

template <typename T>
Packed pack_weights(const BlockDims& d, const c10::optional<at::Tensor>& w_expand,
                    const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                    const at::Tensor& w_project, const at::Tensor& b_project) {
  Packed pk{};
  pk.Cp = round_up(d.Chid, kVec);
  pk.Coutp = round_up(d.Cout, kVec);
  const int64_t Cp = pk.Cp, Coutp = pk.Coutp;
  const int64_t n_wexp = d.has_expand ? round_up(Cp * d.Cin, 16) : 0, n_bexp = d.has_expand ? round_up(Cp, 16) : 0;
  const int64_t n_wdw = round_up(9 * Cp, 16), n_bdw = round_up(Cp, 16);
  const int64_t n_wproj = round_up(Coutp * Cp, 16), n_bproj = round_up(Coutp, 16);
  float* p = pack_scratch().get(n_wexp + n_bexp + n_wdw + n_bdw + n_wproj + n_bproj);
  float* wexp = p;
  float* bexp = wexp + n_wexp;
  float* wdw = bexp + n_bexp;
  float* bdw = wdw + n_wdw;
  float* wproj = bdw + n_bdw;
  float* bproj = wproj + n_wproj;
  if (d.has_expand) {
    const at::Tensor we = w_expand->contiguous(), be = b_expand->contiguous();
    pack_strips(wexp, we.data_ptr<T>(), d.Chid, d.Cin, d.Cin);
    pad_vec(bexp, be.data_ptr<T>(), d.Chid, Cp);
    pk.wexp = wexp;
    pk.bexp = bexp;
  }
  const at::Tensor wd = w_dw.contiguous(), bd = b_dw.contiguous();  // wd: [Chid, 3, 3]
  const T* wdp = wd.data_ptr<T>();
  bool dw_finite = true;
  for (int64_t t = 0; t < 9; ++t) {
    for (int64_t c = 0; c < Cp; ++c) {
      wdw[t * Cp + c] = c < d.Chid ? static_cast<float>(wdp[c * 9 + t]) : 0.f;
      dw_finite = dw_finite && std::isfinite(wdw[t * Cp + c]);
    }
  }
  pk.dw_finite = dw_finite;
  pad_vec(bdw, bd.data_ptr<T>(), d.Chid, Cp);
  const at::Tensor wp = w_project.contiguous(), bp = b_project.contiguous();
  pack_strips(wproj, wp.data_ptr<T>(), d.Cout, d.Chid, Cp);
  pad_vec(bproj, bp.data_ptr<T>(), d.Cout, Coutp);
  pk.wdw = wdw;
  pk.bdw = bdw;
  pk.wproj = wproj;
  pk.bproj = bproj;
  return pk;
}

// ---------------------------------------------------------------------------------------------------------
// The fused block over NHWC buffers. T = float or c10::BFloat16.
//   x   : [N, H, W, Cin]   (NHWC, contiguous)
//   out : [N, Ho, Wo, Cout] (NHWC, contiguous)
// ---------------------------------------------------------------------------------------------------------
template <typename T>
void run_block(const T* x, T* out, const BlockDims& d, const Packed& pk) {
  constexpr bool kF32 = std::is_same<T, float>::value;
  const int64_t N = d.N, H = d.H, W = d.W, Cin = d.Cin, Cout = d.Cout, Ho = d.Ho, Wo = d.Wo, s = d.stride;
  const int64_t Cp = pk.Cp, Coutp = pk.Coutp;
  const bool has_expand = d.has_expand, residual = d.residual;
  const int64_t Wp = W + 2;  // padded row width (pixels)

  // Chunk of R output rows: ring of S = (R-1)*s + 3 expanded rows + dwbuf of R*Wo pixels; keep them in L2.
  const int64_t row_floats = Wp * Cp;
  // (448 KiB of the 1 MiB L2 of the target machine; 300..800 KiB measured the same within noise.)
  const int64_t budget = (int64_t)(448 * 1024) / (int64_t)sizeof(float);
  int64_t R = 1;
  while (R < Ho && ((R * s + 2) * row_floats + (R + 1) * Wo * Cp) <= budget) ++R;

  // Units = (image, band of output rows). Bands only when there are too few images for the threads.
  const int64_t nthreads = at::get_num_threads();
  // With N < 4*threads and N not a multiple of the thread count, split each image into T/gcd(N, T) bands so
  // that the unit count is a multiple of T (each band recomputes its 1-2 halo rows of the expand).
  int64_t bands = 1;
  if (N < 4 * nthreads && N % nthreads != 0) {
    bands = nthreads / std::gcd(N, nthreads);
    bands = std::min<int64_t>(bands, std::max<int64_t>(1, Ho / 2));  // at least ~2 rows per band
  }
  const int64_t band_rows = (Ho + bands - 1) / bands;
  bands = (Ho + band_rows - 1) / band_rows;
  R = std::min(R, band_rows);
  const int64_t S = (R - 1) * s + 3;  // ring slots

  const float* wexp = pk.wexp;
  const float* bexp = pk.bexp;
  const float* wdw = pk.wdw;
  const float* bdw = pk.bdw;
  const float* wproj = pk.wproj;
  const float* bproj = pk.bproj;

  at::parallel_for(0, N * bands, 1, [&](int64_t ubeg, int64_t uend) {
    // Per-thread scratch layout (floats, every piece 64-byte aligned):
    //   zrow  : [Wp][Cp]        zero row (image rows outside [0, H))
    //   ring  : [S][Wp][Cp]     expanded + ReLU6'ed rows, slot r % S holds image row r; pixels 0, W+1 zero
    //   dwbuf : [R*Wo][Cp]      depthwise output of the chunk
    //   xf    : [S*W][Cin]      (bf16 only) input rows converted to fp32
    //   of    : [R*Wo][Coutp]   (bf16 only) project output in fp32
    //   ptrs  : row pointer arrays for the GEMMs (max(S*W, R*Wo) each of a, c, res)
    const int64_t mmax = std::max(S * W, R * Wo);
    const int64_t n_zrow = round_up(row_floats, 16);
    const int64_t n_ring = round_up(S * row_floats, 16);
    const int64_t n_dw = round_up(R * Wo * Cp, 16);
    const int64_t n_xf = kF32 ? 0 : round_up(S * W * Cin, 16);
    const int64_t n_of = kF32 ? 0 : round_up(R * Wo * Coutp, 16);
    const int64_t n_ptr = round_up(3 * mmax * (int64_t)(sizeof(void*) / sizeof(float)), 16);
    float* base = thread_scratch().get(n_zrow + n_ring + n_dw + n_xf + n_of + n_ptr);
    float* zrow = base;
    float* ring = zrow + n_zrow;
    float* dwbuf = ring + n_ring;
    float* xf = dwbuf + n_dw;
    float* of = xf + n_xf;
    const float** pa = reinterpret_cast<const float**>(of + n_of);
    float** pc = reinterpret_cast<float**>(of + n_of + 2 * mmax);
    const float** pr = reinterpret_cast<const float**>(of + n_of + 4 * mmax);
    std::memset(zrow, 0, (size_t)(n_zrow + n_ring) * sizeof(float));  // zero row, ring padding pixels/channels

    for (int64_t u = ubeg; u < uend; ++u) {
      const int64_t n = u / bands;
      const int64_t ho_beg = (u % bands) * band_rows;
      const int64_t ho_end = std::min(Ho, ho_beg + band_rows);
      const T* ximg = x + n * H * W * Cin;
      T* oimg = out + n * Ho * Wo * Cout;
      int64_t next_row = std::max<int64_t>(0, ho_beg * s - 1);  // first image row not yet in the ring

      for (int64_t h0 = ho_beg; h0 < ho_end; h0 += R) {
        const int64_t r_n = std::min(R, ho_end - h0);  // output rows in this chunk
        const int64_t lo = h0 * s - 1;                  // input rows [lo, hi) are needed
        const int64_t hi = std::min(H, (h0 + r_n - 1) * s + 2);
        // 1. expand the rows not yet computed: [next_row, hi)
        const int64_t r_beg = std::max(next_row, std::max<int64_t>(lo, 0));
        if (r_beg < hi) {
          const int64_t nr = hi - r_beg;
          if (has_expand) {
            int64_t m = 0;
            for (int64_t r = r_beg; r < hi; ++r) {
              float* slot = ring + (r % S) * row_floats;
              const float* arow;
              if constexpr (kF32) {
                arow = reinterpret_cast<const float*>(ximg) + r * W * Cin;
              } else {
                float* dst = xf + (r - r_beg) * W * Cin;
                const T* src = ximg + r * W * Cin;
                for (int64_t i = 0; i < W * Cin; ++i) dst[i] = static_cast<float>(src[i]);
                arow = dst;
              }
              for (int64_t w = 0; w < W; ++w, ++m) {
                pa[m] = arow + w * Cin;
                pc[m] = slot + (w + 1) * Cp;
              }
            }
            // Ncols = Chid, not Cp: the padded channels Chid..Cp of the ring stay the memset zeros (computing
            // them would give relu6(Inf * 0) = NaN for an Inf input pixel, which the project would then spread).
            gemm_rows<true, false>(nr * W, Cin, d.Chid, pa, wexp, bexp, pc, nullptr);
          } else {
            // no expand conv: the "expanded" row is x itself (channels Cin..Cp stay zero)
            for (int64_t r = r_beg; r < hi; ++r) {
              float* slot = ring + (r % S) * row_floats;
              const T* src = ximg + r * W * Cin;
              for (int64_t w = 0; w < W; ++w) {
                float* dst = slot + (w + 1) * Cp;
                for (int64_t ci = 0; ci < Cin; ++ci) dst[ci] = static_cast<float>(src[w * Cin + ci]);
              }
            }
          }
          next_row = hi;
        }
        // 2. depthwise for the chunk's output rows
        for (int64_t i = 0; i < r_n; ++i) {
          const int64_t top = (h0 + i) * s - 1;
          const float* rows[3];
          for (int ky = 0; ky < 3; ++ky) {
            const int64_t r = top + ky;
            rows[ky] = (r < 0 || r >= H) ? zrow : ring + (r % S) * row_floats;
          }
          if (pk.dw_finite) {
            if (s == 1) dw_row<1>(rows, wdw, bdw, dwbuf + i * Wo * Cp, Wo, Cp);
            else dw_row<2>(rows, wdw, bdw, dwbuf + i * Wo * Cp, Wo, Cp);
          } else {
            const float* rs[3];
            for (int ky = 0; ky < 3; ++ky) rs[ky] = rows[ky] == zrow ? nullptr : rows[ky];
            if (s == 1) dw_row_skip_pad<1>(rs, wdw, bdw, dwbuf + i * Wo * Cp, Wo, Cp, W);
            else dw_row_skip_pad<2>(rs, wdw, bdw, dwbuf + i * Wo * Cp, Wo, Cp, W);
          }
        }
        // 3. project into the output rows (+ residual)
        const int64_t M = r_n * Wo;
        for (int64_t m = 0; m < M; ++m) pa[m] = dwbuf + m * Cp;
        if constexpr (kF32) {
          float* orow = reinterpret_cast<float*>(oimg) + h0 * Wo * Cout;
          for (int64_t m = 0; m < M; ++m) pc[m] = orow + m * Cout;
          if (residual) {
            // stride 1 and Cin == Cout: output pixel (h, w) adds input pixel (h, w)
            const float* xrow = reinterpret_cast<const float*>(ximg) + h0 * W * Cin;
            for (int64_t m = 0; m < M; ++m) pr[m] = xrow + m * Cin;
            gemm_rows<false, true>(M, Cp, Cout, pa, wproj, bproj, pc, pr);
          } else {
            gemm_rows<false, false>(M, Cp, Cout, pa, wproj, bproj, pc, nullptr);
          }
        } else {
          for (int64_t m = 0; m < M; ++m) pc[m] = of + m * Coutp;
          gemm_rows<false, false>(M, Cp, Coutp, pa, wproj, bproj, pc, nullptr);
          T* orow = oimg + h0 * Wo * Cout;
          const T* xrow = ximg + h0 * W * Cin;
          for (int64_t m = 0; m < M; ++m) {
            const float* src = of + m * Coutp;
            T* dst = orow + m * Cout;
            if (residual) {
              const T* xr = xrow + m * Cin;
              for (int64_t co = 0; co < Cout; ++co) dst[co] = static_cast<T>(src[co] + static_cast<float>(xr[co]));
            } else {
              for (int64_t co = 0; co < Cout; ++co) dst[co] = static_cast<T>(src[co]);
            }
          }
        }
      }
    }
  });
}

}  // namespace

// The CPU kernel of mnv2::inverted_residual. Shapes: see the header comment and docs/CONTRACT.md.
at::Tensor inverted_residual_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& w_expand,
                                 const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                 const at::Tensor& b_dw, const at::Tensor& w_project, const at::Tensor& b_project,
                                 int64_t stride, bool residual) {
  const BlockDims d = check_inverted_residual_args(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride,
                                                   residual);
  TORCH_CHECK(x.device().is_cpu(), "mnv2.inverted_residual: the CPU kernel got x on ", x.device());
  // The dtypes this kernel serves; mnv2_kernels/backends.py (the "cpu" row) lists the same ones.
  check_kernel_dtype("CPU", x, {at::kFloat, at::kBFloat16});
  const bool out_cl = wants_channels_last(x);
  at::Tensor out = at::empty({d.N, d.Cout, d.Ho, d.Wo}, x.options(), at::MemoryFormat::ChannelsLast);
  if (d.N == 0) return out_cl ? out : out.contiguous();

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);  // NHWC buffer [N, H, W, Cin]
  if (x.scalar_type() == at::kFloat) {
    const Packed pk = pack_weights<float>(d, w_expand, b_expand, w_dw, b_dw, w_project, b_project);
    run_block<float>(xc.data_ptr<float>(), out.data_ptr<float>(), d, pk);
  } else {
    const Packed pk = pack_weights<c10::BFloat16>(d, w_expand, b_expand, w_dw, b_dw, w_project, b_project);
    run_block<c10::BFloat16>(xc.data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>(), d, pk);
  }
  return out_cl ? out : out.contiguous();
}

}  // namespace mnv2

TORCH_LIBRARY_IMPL(mnv2, CPU, m) { m.impl("inverted_residual", &mnv2::inverted_residual_cpu); }

// Minimal Python module so that `import mnv2_kernels._C` loads the library (and the registration above).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
