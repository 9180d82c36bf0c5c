// The fused CPU kernel of mnv2::inverted_residual, written once for any vector width. Included by
// kernel_avx2.cpp (MNV2_VW 8, inside `#pragma GCC target("avx2,fma")`) and kernel_avx512.cpp (MNV2_VW 16,
// AVX-512 F/BW/VL/DQ), each inside its own namespace, so the same source is compiled for each instruction
// set and the binding picks one at run time (docs/CONTRACT.md for the op's semantics).
//
//   h = x                                               [N, Cin, H, W]
//   h = relu6(conv1x1(h, w_expand) + b_expand)          [N, Chid, H, W]   (only if w_expand is given)
//   h = relu6(dw3x3(h, w_dw, stride, pad=1) + b_dw)     [N, Chid, Ho, Wo] (zero padding of the activated h)
//   y = conv1x1(h, w_project) + b_project (+ x)         [N, Cout, Ho, Wo]
//
// Layout: everything is NHWC. Arithmetic is fp32 for every dtype (bf16 converted on load/store).
//
// Work decomposition: units = (image, band of output rows), shared by the calling thread and the pool's
// helpers (cpu_kernel.h, parallel_units). A unit walks down its band in chunks of R output rows:
//   1. expand the input rows the chunk needs and has not computed yet (GEMM [pixels, Cin] x [Cin, Chid]
//      + bias + ReLU6) into a ring of S row slots; the halo rows the previous chunk computed are reused;
//   2. depthwise 3x3 + bias + ReLU6 of the chunk's output rows into dwbuf ([R*Wo, Cp]);
//   3. project GEMM [R*Wo, Cp] x [Cp, Cout] + bias (+ residual) straight into the output rows.
// Image rows outside [0, H) are a shared zero row; each ring row has one zero pixel on the left and right,
// so the padding of the depthwise is zeros of the *activated expanded* tensor, as the contract says.
//
// NaN/Inf: they propagate as in the reference (ATen convolutions + clamp): ReLU6 passes NaN through; the
// padded channels Chid..Cp of the ring are never computed (0 * Inf would make a NaN there); when a depthwise
// weight is not finite, taps on the zero padding are skipped, not multiplied by 0 (dw_row_skip_pad).
//
// GEMMs: a register-blocked micro-kernel (MR rows x NV vectors of columns) over weights packed once into
// vector-wide column strips; A and C rows are addressed by per-row pointer arrays, so the expand writes
// straight into the padded ring slots and the project straight into the output.
//
// Expects (from the including file): <immintrin.h>, <algorithm>, <cmath>, <cstdint>, <cstdlib>, <cstring>,
// <numeric>, "cpu_kernel.h", MNV2_VW (8 or 16) and MNV2_ISA_NAME.

namespace {

using ::mnv2::cpu::Dims;
using ::mnv2::cpu::DType;
using ::mnv2::cpu::WeightPtrs;

constexpr int64_t kVec = MNV2_VW;  // floats per vector register

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------------------
// Vector layer
// ---------------------------------------------------------------------------------------------------------
#if MNV2_VW == 16
using vf = __m512;
using vmask = __mmask16;
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vloada(const float* p) { return _mm512_load_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline void vstorea(float* p, vf v) { _mm512_store_ps(p, v); }
inline vf vbcast(const float* p) { return _mm512_set1_ps(*p); }
inline vf vset1(float f) { return _mm512_set1_ps(f); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vmask tail_mask(int n) { return (vmask)((1u << n) - 1u); }
inline vf vload_m(const float* p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void vstore_m(float* p, vmask m, vf v) { _mm512_mask_storeu_ps(p, m, v); }
#else
using vf = __m256;
using vmask = __m256i;
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vloada(const float* p) { return _mm256_load_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline void vstorea(float* p, vf v) { _mm256_store_ps(p, v); }
inline vf vbcast(const float* p) { return _mm256_broadcast_ss(p); }
inline vf vset1(float f) { return _mm256_set1_ps(f); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vmask tail_mask(int n) {
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}
inline vf vload_m(const float* p, vmask m) { return _mm256_maskload_ps(p, m); }
inline void vstore_m(float* p, vmask m, vf v) { _mm256_maskstore_ps(p, m, v); }
#endif

// ReLU6 that propagates NaN as torch.clamp does: max/min return their second operand when either is NaN,
// so the value goes second in both (min(max(NaN, 0), 6) would give 0).
inline vf relu6_nan(vf v, vf zero, vf six) { return vmin(six, vmax(zero, v)); }

// More vector ops for the activations of the generalised block (issue 13).
#if MNV2_VW == 16
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vabs(vf a) { return _mm512_abs_ps(a); }
inline vf vround(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// 2^n for integral n in [-126, 127] (a NaN n gives some finite value: callers multiply it by a NaN anyway)
inline vf vpow2i(vf n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
inline vf vselect_ge0(vf x, vf a, vf b) {  // x >= 0 ? a : b (b where x is NaN)
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
}
inline vf vselect_gt(vf x, vf lim, vf a, vf b) {  // x > lim ? a : b (b where x is NaN)
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lim, _CMP_GT_OQ), b, a);
}
#else
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vabs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
inline vf vround(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vpow2i(vf n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline vf vselect_ge0(vf x, vf a, vf b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ)); }
inline vf vselect_gt(vf x, vf lim, vf a, vf b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, lim, _CMP_GT_OQ)); }
#endif

// exp(x), ~1 ulp on [-87, 88] (Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-7 polynomial); below -87 it
// gives exp(-87) (callers only add it to 1 or divide by 1 + it), above 88 +Inf, NaN stays NaN (the clamps
// keep a NaN, see relu6_nan).
inline vf vexp(vf x) {
  const vf xc = vmin(vset1(88.0f), vmax(vset1(-87.0f), x));
  const vf n = vround(vmul(xc, vset1(1.44269504088896341f)));
  vf r = vfma(n, vset1(-0.693359375f), xc);
  r = vfma(n, vset1(2.12194440e-4f), r);
  vf p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  p = vadd(vfma(p, vmul(r, r), r), vset1(1.0f));
  const vf e = vmul(p, vpow2i(n));
  return vselect_gt(x, vset1(88.0f), vset1(INFINITY), e);
}

// Activations (docs/CONTRACT.md, "The generalised block"). kActNone = 0 and kActRelu6 = 1, so a bool
// template argument (true: ReLU6) still names the MobileNetV2 epilogue. Each one propagates NaN as PyTorch's.
enum ActKind : int {
  kActNone = 0, kActRelu6 = 1, kActRelu = 2, kActHardswish = 3, kActSilu = 4, kActGelu = 5, kActGeluTanh = 6,
  kActSigmoid = 7, kActHardsigmoid = 8, kActCount = 9
};

// erfc(z) for z >= 0 with relative error < 1.2e-7 (Numerical Recipes' erfcc, a Chebyshev fit of
// erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2)); relative, so GELU's tail x * erfc(-x/sqrt2) / 2 keeps it.
// 0 beyond z = 9 (erfc(9) = 4e-37): the products there would be subnormal, ~100x slower on x86 for a value
// that is 0 to float32 precision in GELU (|x * erfc| < 1e-35).
inline vf verfc_pos(vf z_in) {
  const vf z = vmin(vset1(9.0f), z_in);  // beyond 9 the result is 0 (below); vmin second: a NaN stays NaN
  const vf t = vdiv(vset1(1.0f), vfma(z, vset1(0.5f), vset1(1.0f)));
  vf p = vset1(0.17087277f);
  p = vfma(p, t, vset1(-0.82215223f));
  p = vfma(p, t, vset1(1.48851587f));
  p = vfma(p, t, vset1(-1.13520398f));
  p = vfma(p, t, vset1(0.27886807f));
  p = vfma(p, t, vset1(-0.18628806f));
  p = vfma(p, t, vset1(0.09678418f));
  p = vfma(p, t, vset1(0.37409196f));
  p = vfma(p, t, vset1(1.00002368f));
  p = vfma(p, t, vset1(-1.26551223f));
  // z <= 9: exp's argument >= -82.3 and t >= 0.18, so t * exp(.) >= 4e-37 stays normal
  const vf e = vexp(vsub(p, vmul(z, z)));
  return vselect_gt(z_in, vset1(9.0f), vzero(), vmul(t, e));
}

template <int ACT>
inline vf act(vf v) {
  if constexpr (ACT == kActNone) {
    return v;
  } else if constexpr (ACT == kActRelu6) {
    return relu6_nan(v, vzero(), vset1(6.0f));
  } else if constexpr (ACT == kActRelu) {
    return vmax(vzero(), v);
  } else if constexpr (ACT == kActHardswish) {  // x * relu6(x + 3) / 6
    return vmul(v, vmul(relu6_nan(vadd(v, vset1(3.0f)), vzero(), vset1(6.0f)), vset1(1.0f / 6.0f)));
  } else if constexpr (ACT == kActSilu) {  // x / (1 + exp(-x))
    return vdiv(v, vadd(vset1(1.0f), vexp(vsub(vzero(), v))));
  } else if constexpr (ACT == kActGelu) {  // x * (1 + erf(x / sqrt2)) / 2 = x * erfc(-x / sqrt2) / 2
    const vf e = verfc_pos(vmul(vabs(v), vset1(0.70710678118654752f)));
    const vf h = vmul(v, vset1(0.5f));
    return vselect_ge0(v, vsub(v, vmul(h, e)), vmul(h, e));
  } else if constexpr (ACT == kActGeluTanh) {  // x (1 + tanh(u)) / 2 = x / (1 + exp(-2u))
    const vf u = vmul(vfma(vmul(vmul(v, v), v), vset1(0.044715f), v), vset1(-1.5957691216057308f));
    return vdiv(v, vadd(vset1(1.0f), vexp(u)));
  } else if constexpr (ACT == kActSigmoid) {
    return vdiv(vset1(1.0f), vadd(vset1(1.0f), vexp(vsub(vzero(), v))));
  } else {
    static_assert(ACT == kActHardsigmoid, "unknown activation");
    return vmul(relu6_nan(vadd(v, vset1(3.0f)), vzero(), vset1(6.0f)), vset1(1.0f / 6.0f));
  }
}

// bf16 <-> fp32 (round to nearest even, NaN kept a quiet NaN), as c10::BFloat16 converts.
inline float bf16_to_f(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f_to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (uint16_t)((u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16);
}
template <typename T> inline float to_f(T v);
template <> inline float to_f<float>(float v) { return v; }
template <> inline float to_f<uint16_t>(uint16_t v) { return bf16_to_f(v); }
template <typename T> inline T from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
template <> inline uint16_t from_f<uint16_t>(float v) { return f_to_bf16(v); }

// ---------------------------------------------------------------------------------------------------------
// Scratch memory: 64-byte aligned float buffers, one per thread, reused across calls.
// ---------------------------------------------------------------------------------------------------------
struct Scratch {
  float* mem = nullptr;
  int64_t cap = 0;  // floats
  ~Scratch() { std::free(mem); }
  float* get(int64_t n) {  // nullptr when out of memory
    if (n > cap) {
      std::free(mem);
      mem = static_cast<float*>(std::aligned_alloc(64, round_up(n * (int64_t)sizeof(float), 64)));
      cap = mem ? n : 0;
    }
    return mem;
  }
};
Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// GEMM micro-kernel: C[m, :] = epilogue(sum_k A[m][k] * B[k, :] + bias) for MR rows m and NV*kVec columns.
//   a[i]    : pointer to row i of A (K contiguous floats), i < MR (offset by k0 by the caller)
//   b       : packed B, kVec-column strips: strip j is [K][kVec] floats at b + j*bstride (row k0 onwards)
//   bias    : NV*kVec floats (padded, zero beyond the valid columns)
//   c[i]    : pointer to row i of C (first column of this tile)
//   res[i]  : (RES only) pointer to row i of the residual, same columns as C
//   last_cols: valid columns in the last strip (1..kVec); stores/loads there are masked when < kVec.
//   first: start from bias (else from the partial sums in C); last_k: apply the epilogue: the activation
//   ACT (ActKind; 0 none, 1 ReLU6), then the residual (y = act(acc) + res, the contract's order).
// ---------------------------------------------------------------------------------------------------------
template <int MR, int NV, int ACT, bool RES>
inline void ukernel(int64_t kc, int64_t bstride, const float* const* a, const float* b, const float* bias,
                    float* const* c, const float* const* res, int last_cols, bool first, bool last_k) {
  vf acc[MR][NV];
  const vmask mask = tail_mask(last_cols);
  const bool full = last_cols == kVec;
  if (first) {
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) {
      const vf bj = vload(bias + j * kVec);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[i][j] = bj;
    }
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) {
        acc[i][j] = (j == NV - 1 && !full) ? vload_m(c[i] + j * kVec, mask) : vload(c[i] + j * kVec);
      }
    }
  }
  const float* ap[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) ap[i] = a[i];
  for (int64_t k = 0; k < kc; ++k) {
    vf bv[NV];
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) bv[j] = vloada(b + j * bstride + k * kVec);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf av = vbcast(ap[i] + k);
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) acc[i][j] = vfma(av, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) {
      const bool masked = (j == NV - 1) && !full;
      vf v = acc[i][j];
      if (last_k) {
        v = act<ACT>(v);
        if (RES) v = vadd(v, masked ? vload_m(res[i] + j * kVec, mask) : vload(res[i] + j * kVec));
      }
      if (masked) vstore_m(c[i] + j * kVec, mask, v);
      else vstore(c[i] + j * kVec, v);
    }
  }
}

// Per-ISA tile shapes: rows per tile for 3, 2 and 1 column vectors (accumulators <= 12 for 16 ymm registers,
// <= 24 for 32 zmm registers).
#if MNV2_VW == 16
constexpr int kMR3 = 8, kMR2 = 12, kMR1 = 12;
#else
constexpr int kMR3 = 4, kMR2 = 6, kMR1 = 6;
#endif
constexpr int kMRMax = kMR2 > kMR3 ? kMR2 : kMR3;

template <int NV, int ACT, bool RES, int R = 1>
inline void run_tile(int mr, int64_t kc, int64_t bstride, const float* const* a, const float* b,
                     const float* bias, float* const* c, const float* const* res, int last_cols, bool first,
                     bool last_k) {
  constexpr int MRMAX = NV == 3 ? kMR3 : (NV == 2 ? kMR2 : kMR1);
  if constexpr (R < MRMAX) {
    if (mr != R) {
      run_tile<NV, ACT, RES, R + 1>(mr, kc, bstride, a, b, bias, c, res, last_cols, first, last_k);
      return;
    }
  }
  ukernel<R, NV, ACT, RES>(kc, bstride, a, b, bias, c, res, last_cols, first, last_k);
}

// C[m, 0:Ncols] = epilogue(A[m, 0:K] . Bpacked + bias) for m < M.
//   a[m], c[m], res[m]: row pointers (M of each; res only if RES)
//   bpack: [Np/kVec][K][kVec] floats, Np = round_up(Ncols, kVec), zero-padded columns; bias: [Np] floats.
// K is split in blocks of <= kKc so that a B block and an A tile stay in L1; partial sums live in C.
constexpr int64_t kKc = MNV2_VW == 16 ? 128 : 192;
template <int ACT, bool RES>
void gemm_rows(int64_t M, int64_t K, int64_t Ncols, const float* const* a, const float* bpack, const float* bias,
               float* const* c, const float* const* res) {
  const int64_t strips = round_up(Ncols, kVec) / kVec;
  const int last_valid = (int)(Ncols - (strips - 1) * kVec);  // 1..kVec
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
      const int mrmax = nv == 3 ? kMR3 : (nv == 2 ? kMR2 : kMR1);
      for (int64_t m0 = 0; m0 < M; m0 += mrmax) {
        const int mr = (int)std::min<int64_t>(mrmax, M - m0);
        const float* ap[kMRMax];
        float* cp[kMRMax];
        const float* rp[kMRMax];
        for (int i = 0; i < mr; ++i) {
          ap[i] = a[m0 + i] + k0;
          cp[i] = c[m0 + i] + coff;
          if (RES) rp[i] = res[m0 + i] + coff;
        }
        if (nv == 3) run_tile<3, ACT, RES>(mr, kc, K * kVec, ap, bj, biasj, cp, rp, lc, first, last_k);
        else if (nv == 2) run_tile<2, ACT, RES>(mr, kc, K * kVec, ap, bj, biasj, cp, rp, lc, first, last_k);
        else run_tile<1, ACT, RES>(mr, kc, K * kVec, ap, bj, biasj, cp, rp, lc, first, last_k);
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
// Channels are vectorised (Cp % kVec == 0); 4 output pixels at a time for independent FMA chains.
// ---------------------------------------------------------------------------------------------------------
// General strides (the two-phase split, run_block_split): C channels (C % kVec == 0) computed, rows' pixels ldi
// floats apart, out's pixels ldo apart, taps ldw apart in wdw.
template <int S>
void dw_row(const float* const rows[3], const float* wdw, const float* bdw, float* out, int64_t Wo, int64_t C,
            int64_t ldi, int64_t ldo, int64_t ldw) {
  const vf zero = vzero();
  const vf six = vset1(6.0f);
  const float* r0 = rows[0];
  const float* r1 = rows[1];
  const float* r2 = rows[2];
  for (int64_t cc = 0; cc < C; cc += kVec) {
    const vf w00 = vloada(wdw + 0 * ldw + cc), w01 = vloada(wdw + 1 * ldw + cc), w02 = vloada(wdw + 2 * ldw + cc),
             w10 = vloada(wdw + 3 * ldw + cc), w11 = vloada(wdw + 4 * ldw + cc), w12 = vloada(wdw + 5 * ldw + cc),
             w20 = vloada(wdw + 6 * ldw + cc), w21 = vloada(wdw + 7 * ldw + cc), w22 = vloada(wdw + 8 * ldw + cc);
    const vf bb = vloada(bdw + cc);
    auto one = [&](int64_t wo) -> vf {
      const int64_t p = (wo * S) * ldi + cc;  // padded pixel wo*S is input column wo*S-1
      vf acc = vfma(vloada(r0 + p), w00, bb);
      acc = vfma(vloada(r0 + p + ldi), w01, acc);
      acc = vfma(vloada(r0 + p + 2 * ldi), w02, acc);
      acc = vfma(vloada(r1 + p), w10, acc);
      acc = vfma(vloada(r1 + p + ldi), w11, acc);
      acc = vfma(vloada(r1 + p + 2 * ldi), w12, acc);
      acc = vfma(vloada(r2 + p), w20, acc);
      acc = vfma(vloada(r2 + p + ldi), w21, acc);
      acc = vfma(vloada(r2 + p + 2 * ldi), w22, acc);
      return relu6_nan(acc, zero, six);
    };
    int64_t wo = 0;
    for (; wo + 4 <= Wo; wo += 4) {
      const vf v0 = one(wo), v1 = one(wo + 1), v2 = one(wo + 2), v3 = one(wo + 3);
      vstorea(out + (wo + 0) * ldo + cc, v0);
      vstorea(out + (wo + 1) * ldo + cc, v1);
      vstorea(out + (wo + 2) * ldo + cc, v2);
      vstorea(out + (wo + 3) * ldo + cc, v3);
    }
    for (; wo < Wo; ++wo) vstorea(out + wo * ldo + cc, one(wo));
  }
}
template <int S>
inline void dw_row(const float* const rows[3], const float* wdw, const float* bdw, float* out, int64_t Wo, int64_t Cp) {
  dw_row<S>(rows, wdw, bdw, out, Wo, Cp, Cp, Cp, Cp);
}

// The same as dw_row, for depthwise weights that are not all finite: taps on the zero padding are skipped
// (as ATen's convolution does), not multiplied by 0, so that a NaN/Inf weight does not turn 0 * w into NaN at
// the image border.  rows[ky] == nullptr: image row outside [0, H);  W: image width (valid padded pixels
// 1..W of each row).  Slow (one output pixel at a time); only used when a weight is NaN or +-Inf.
template <int S>
void dw_row_skip_pad(const float* const rows[3], const float* wdw, const float* bdw, float* out, int64_t Wo,
                     int64_t Cp, int64_t W) {
  const vf zero = vzero();
  const vf six = vset1(6.0f);
  for (int64_t wo = 0; wo < Wo; ++wo) {
    for (int64_t cc = 0; cc < Cp; cc += kVec) {
      vf acc = vloada(bdw + cc);
      for (int ky = 0; ky < 3; ++ky) {
        if (rows[ky] == nullptr) continue;
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t col = wo * S - 1 + kx;  // image column
          if (col < 0 || col >= W) continue;
          acc = vfma(vloada(rows[ky] + (col + 1) * Cp + cc), vloada(wdw + (ky * 3 + kx) * Cp + cc), acc);
        }
      }
      vstorea(out + wo * Cp + cc, relu6_nan(acc, zero, six));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Packed weights: one 64-byte aligned float buffer, packed once per set of weights (the binding caches it).
//   [0, 16)  header: [0] = 1 if every depthwise weight is finite, else 0
//   wexp  [Cp/kVec][Cin][kVec]     w_expand^T in column strips (only with expand)
//   bexp  [Cp]                     (only with expand)
//   wdw   [9][Cp]                  tap-major depthwise weights, tap = ky*3+kx
//   bdw   [Cp]
//   wproj [Coutp/kVec][Cp][kVec]   w_project^T in column strips (rows Chid..Cp zero)
//   bproj [Coutp]
// Cp = round_up(Chid, kVec), Coutp = round_up(Cout, kVec); every piece starts on a 64-byte boundary.
// ---------------------------------------------------------------------------------------------------------
struct Layout {
  int64_t Cp, Coutp;
  int64_t o_wexp, o_bexp, o_wdw, o_bdw, o_wproj, o_bproj, total;  // offsets in floats
};
Layout layout(const Dims& d) {
  Layout l{};
  l.Cp = round_up(d.Chid, kVec);
  l.Coutp = round_up(d.Cout, kVec);
  int64_t o = 16;
  auto take = [&](int64_t n) { const int64_t at = o; o += round_up(n, 16); return at; };
  l.o_wexp = take(d.has_expand ? l.Cp * d.Cin : 0);
  l.o_bexp = take(d.has_expand ? l.Cp : 0);
  l.o_wdw = take(9 * l.Cp);
  l.o_bdw = take(l.Cp);
  l.o_wproj = take(l.Coutp * l.Cp);
  l.o_bproj = take(l.Coutp);
  l.total = o;
  return l;
}

int64_t packed_floats(const Dims& d) { return layout(d).total; }

// The pieces of a packed buffer (see Layout).
struct PackedPtrs {
  const float *wexp, *bexp, *wdw, *bdw, *wproj, *bproj;
};
PackedPtrs packed_ptrs(const Layout& l, const float* packed) {
  return {packed + l.o_wexp, packed + l.o_bexp, packed + l.o_wdw, packed + l.o_bdw, packed + l.o_wproj,
          packed + l.o_bproj};
}

// w: [Nc, K] row-major (row n = output column n) -> dst [round_up(Nc,kVec)/kVec][Kp][kVec], zero padded.
template <typename T>
void pack_strips(float* dst, const T* w, int64_t Nc, int64_t K, int64_t Kp) {
  const int64_t strips = round_up(Nc, kVec) / kVec;
  for (int64_t j = 0; j < strips; ++j) {
    float* dstj = dst + j * Kp * kVec;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t c = 0; c < kVec; ++c) {
        const int64_t n = j * kVec + c;
        dstj[k * kVec + c] = n < Nc ? to_f<T>(w[n * K + k]) : 0.f;
      }
    }
    std::memset(dstj + K * kVec, 0, (size_t)((Kp - K) * kVec) * sizeof(float));
  }
}

template <typename T>
void pad_vec(float* dst, const T* b, int64_t n, int64_t np) {
  for (int64_t i = 0; i < np; ++i) dst[i] = i < n ? to_f<T>(b[i]) : 0.f;
}

template <typename T>
void pack_t(float* p, const Dims& d, const WeightPtrs& w) {
  const Layout l = layout(d);
  std::memset(p, 0, 16 * sizeof(float));
  if (d.has_expand) {
    pack_strips(p + l.o_wexp, static_cast<const T*>(w.w_expand), d.Chid, d.Cin, d.Cin);
    pad_vec(p + l.o_bexp, static_cast<const T*>(w.b_expand), d.Chid, l.Cp);
  }
  const T* wdp = static_cast<const T*>(w.w_dw);  // [Chid, 3, 3]
  float* wdw = p + l.o_wdw;
  bool finite = true;
  for (int64_t t = 0; t < 9; ++t) {
    for (int64_t c = 0; c < l.Cp; ++c) {
      wdw[t * l.Cp + c] = c < d.Chid ? to_f<T>(wdp[c * 9 + t]) : 0.f;
      finite = finite && std::isfinite(wdw[t * l.Cp + c]);
    }
  }
  p[0] = finite ? 1.f : 0.f;
  pad_vec(p + l.o_bdw, static_cast<const T*>(w.b_dw), d.Chid, l.Cp);
  pack_strips(p + l.o_wproj, static_cast<const T*>(w.w_project), d.Cout, d.Chid, l.Cp);
  pad_vec(p + l.o_bproj, static_cast<const T*>(w.b_project), d.Cout, l.Coutp);
}

void pack(float* dst, const Dims& d, DType dt, const WeightPtrs& w) {
  if (dt == DType::F32) pack_t<float>(dst, d, w);
  else pack_t<uint16_t>(dst, d, w);
}

// ---------------------------------------------------------------------------------------------------------
// The fused block over NHWC buffers. T = float or uint16_t (bf16 bits).
//   x   : [N, H, W, Cin]   (NHWC, contiguous)
//   out : [N, Ho, Wo, Cout] (NHWC, contiguous)
// ---------------------------------------------------------------------------------------------------------
// One row of a stem convolution (dense 3x3, padding 1, + bias + ReLU6) computed into the ring: defined with the
// stem helpers below. ximg: the image [H, W, Cin] of StemArgs; r: the output row; dst: its pixel 0, ldo floats
// between pixels (channels Cout..ldo untouched).
void stem_row(const StemArgs& st, const float* ximg, int64_t r, int64_t Cout, float* dst, int64_t ldo);

// stem == nullptr: x is the block input [N, H, W, Cin]. stem != nullptr (f32, no expand conv; issue 14): x is
// the image [N, stem->H, stem->W, stem->Cin] and the block input (d.H x d.W x d.Cin) is the stem convolution's
// output, computed row by row into the ring and never written to memory; the residual (if any) reads it there.
template <typename T>
bool run_block(const T* x, T* out, const Dims& d, const float* packed, int nthreads,
               const StemArgs* stem = nullptr) {
  constexpr bool kF32 = std::is_same<T, float>::value;
  const Layout l = layout(d);
  const int64_t N = d.N, H = d.H, W = d.W, Cin = d.Cin, Cout = d.Cout, Ho = d.Ho, Wo = d.Wo, s = d.stride;
  const int64_t Cp = l.Cp, Coutp = l.Coutp;
  const bool has_expand = d.has_expand, residual = d.residual;
  const bool dw_finite = packed[0] != 0.f;
  const int64_t Wp = W + 2;  // padded row width (pixels)
  const auto [wexp, bexp, wdw, bdw, wproj, bproj] = packed_ptrs(l, packed);

  // Chunk of R output rows: ring of S = (R-1)*s + 3 expanded rows + dwbuf of R*Wo pixels; keep them in L2.
  const int64_t row_floats = Wp * Cp;
  const int64_t budget = (int64_t)(448 * 1024) / (int64_t)sizeof(float);
  int64_t R = 1;
  while (R < Ho && ((R * s + 2) * row_floats + (R + 1) * Wo * Cp) <= budget) ++R;

  // Units = (image, band of output rows). Bands only when there are too few images for the threads: with
  // N < 4*threads and N not a multiple of the thread count, split each image into T/gcd(N, T) bands so that
  // the unit count is a multiple of T (each band recomputes its 1-2 halo rows of the expand).
  const int64_t nth = std::max(1, nthreads);
  int64_t bands = 1;
  if (N < 4 * nth && N % nth != 0) {
    bands = nth / std::gcd(N, nth);
    bands = std::min<int64_t>(bands, std::max<int64_t>(1, Ho / 2));  // at least ~2 rows per band
  }
  const int64_t band_rows = (Ho + bands - 1) / bands;
  bands = (Ho + band_rows - 1) / band_rows;
  R = std::min(R, band_rows);
  const int64_t S = (R - 1) * s + 3;  // ring slots

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
  const int64_t n_scratch = n_zrow + n_ring + n_dw + n_xf + n_of + n_ptr;
  std::atomic<bool> oom{false};

  static std::atomic<uint64_t> calls{0};
  const uint64_t call_id = calls.fetch_add(1) + 1;
  auto unit_fn = [&](int64_t u) {
    // The scratch of the thread running this unit. Zeroed by the first unit of this call on this thread
    // (zero row, ring padding pixels and channels: nothing writes them afterwards).
    static thread_local uint64_t zeroed_for = 0;
    float* base = thread_scratch().get(n_scratch);
    if (base == nullptr) {
      oom.store(true);
      return;
    }
    float* zrow = base;
    float* ring = zrow + n_zrow;
    float* dwbuf = ring + n_ring;
    float* xf = dwbuf + n_dw;
    float* of = xf + n_xf;
    const float** pa = reinterpret_cast<const float**>(of + n_of);
    float** pc = reinterpret_cast<float**>(of + n_of + 2 * mmax);
    const float** pr = reinterpret_cast<const float**>(of + n_of + 4 * mmax);
    if (zeroed_for != call_id) {
      if (d.Chid == Cp) {
        // every channel of ring pixels 1..W is written before it is read: zero only the zero row and each
        // slot's padding pixels 0 and W+1 (the whole ring was ~0.3 MB per block and thread, ~4% of a batch-1
        // forward)
        std::memset(zrow, 0, (size_t)n_zrow * sizeof(float));
        for (int64_t r = 0; r < S; ++r) {
          std::memset(ring + r * row_floats, 0, (size_t)Cp * sizeof(float));
          std::memset(ring + r * row_floats + (W + 1) * Cp, 0, (size_t)Cp * sizeof(float));
        }
      } else {
        std::memset(zrow, 0, (size_t)(n_zrow + n_ring) * sizeof(float));
      }
      zeroed_for = call_id;
    }

    const int64_t n = u / bands;
    const int64_t ho_beg = (u % bands) * band_rows;
    const int64_t ho_end = std::min(Ho, ho_beg + band_rows);
    const T* ximg = x + n * H * W * Cin;  // (unused with a stem)
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
              for (int64_t i = 0; i < W * Cin; ++i) dst[i] = to_f<T>(src[i]);
              arow = dst;
            }
            for (int64_t w = 0; w < W; ++w, ++m) {
              pa[m] = arow + w * Cin;
              pc[m] = slot + (w + 1) * Cp;
            }
          }
          // Ncols = Chid, not Cp: the padded channels Chid..Cp of the ring stay the memset zeros (computing
          // them would give relu6(Inf * 0) = NaN for an Inf input pixel, which the project would then spread).
          gemm_rows<kActRelu6, false>(nr * W, Cin, d.Chid, pa, wexp, bexp, pc, nullptr);
        } else if (stem != nullptr) {
          // the stem convolution's rows (channels Cin..Cp and pixels 0, W+1 stay zero)
          const float* img = reinterpret_cast<const float*>(x) + n * stem->H * stem->W * stem->Cin;
          for (int64_t r = r_beg; r < hi; ++r) stem_row(*stem, img, r, Cin, ring + (r % S) * row_floats + Cp, Cp);
        } else {
          // no expand conv: the "expanded" row is x itself (channels Cin..Cp stay zero)
          for (int64_t r = r_beg; r < hi; ++r) {
            float* slot = ring + (r % S) * row_floats;
            const T* src = ximg + r * W * Cin;
            for (int64_t w = 0; w < W; ++w) {
              float* dst = slot + (w + 1) * Cp;
              for (int64_t ci = 0; ci < Cin; ++ci) dst[ci] = to_f<T>(src[w * Cin + ci]);
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
          rows[ky] = (r < 0 || r >= H) ? (dw_finite ? zrow : nullptr) : ring + (r % S) * row_floats;
        }
        float* dwo = dwbuf + i * Wo * Cp;
        if (dw_finite) {
          if (s == 1) dw_row<1>(rows, wdw, bdw, dwo, Wo, Cp);
          else dw_row<2>(rows, wdw, bdw, dwo, Wo, Cp);
        } else {
          if (s == 1) dw_row_skip_pad<1>(rows, wdw, bdw, dwo, Wo, Cp, W);
          else dw_row_skip_pad<2>(rows, wdw, bdw, dwo, Wo, Cp, W);
        }
      }
      // 3. project into the output rows (+ residual)
      const int64_t M = r_n * Wo;
      for (int64_t m = 0; m < M; ++m) pa[m] = dwbuf + m * Cp;
      if constexpr (kF32) {
        float* orow = reinterpret_cast<float*>(oimg) + h0 * Wo * Cout;
        for (int64_t m = 0; m < M; ++m) pc[m] = orow + m * Cout;
        if (residual) {
          // stride 1 and Cin == Cout: output pixel (h, w) adds input pixel (h, w) (with a stem: its ring row,
          // which the depthwise of output row h needed too, so it is still there)
          if (stem != nullptr) {
            for (int64_t m = 0; m < M; ++m) pr[m] = ring + ((h0 + m / Wo) % S) * row_floats + (m % Wo + 1) * Cp;
          } else {
            const float* xrow = reinterpret_cast<const float*>(ximg) + h0 * W * Cin;
            for (int64_t m = 0; m < M; ++m) pr[m] = xrow + m * Cin;
          }
          gemm_rows<kActNone, true>(M, Cp, Cout, pa, wproj, bproj, pc, pr);
        } else {
          gemm_rows<kActNone, false>(M, Cp, Cout, pa, wproj, bproj, pc, nullptr);
        }
      } else {
        for (int64_t m = 0; m < M; ++m) pc[m] = of + m * Coutp;
        gemm_rows<kActNone, false>(M, Cp, Coutp, pa, wproj, bproj, pc, nullptr);
        T* orow = oimg + h0 * Wo * Cout;
        const T* xrow = ximg + h0 * W * Cin;
        for (int64_t m = 0; m < M; ++m) {
          const float* src = of + m * Coutp;
          T* dst = orow + m * Cout;
          if (residual) {
            const T* xr = xrow + m * Cin;
            for (int64_t co = 0; co < Cout; ++co) dst[co] = from_f<T>(src[co] + to_f<T>(xr[co]));
          } else {
            for (int64_t co = 0; co < Cout; ++co) dst[co] = from_f<T>(src[co]);
          }
        }
      }
    }
  };
  ::mnv2::cpu::parallel_units(N * bands, (int)nth, unit_fn);
  return !oom.load();
}

// ---------------------------------------------------------------------------------------------------------
// Small images with fewer images than threads (batch 1): run_block's bands recompute 1-2 halo rows of the
// expand each (at 7x7 with two bands ~40% more expand work, at 14x14 ~15%), and two static bands leave one
// thread waiting when the other starts late (a busy core). Here the block runs in two phases, each cut into
// many small units that the threads claim as they come (parallel_units), with no recomputation:
//   A. unit (image n, group of hidden-channel strips [j0, j1)): expand [H*W, Cin] x [Cin, G] + bias + ReLU6
//      into a zero-bordered [H+2][W+2][G] buffer in thread scratch, then the depthwise + bias + ReLU6 of
//      those channels into D[n] ([Ho*Wo][Cp], shared, in the calling thread's second scratch);
//   B. unit (image n, chunk of output pixels, group of output strips): project D x [Cp, Cout] + bias (+ x).
// Only for f32, with an expand conv and finite depthwise weights (else run_block). NaN/Inf: as run_block (the
// padded channels Chid..Cp are never computed; they stay zeros in the buffer and in D).
// ---------------------------------------------------------------------------------------------------------
Scratch& shared_scratch() {  // the calling thread's D (helpers write into it through the unit closure)
  static thread_local Scratch s;
  return s;
}

bool run_block_split(const float* x, float* out, const Dims& d, const float* packed, int nthreads) {
  const Layout l = layout(d);
  const int64_t N = d.N, H = d.H, W = d.W, Cin = d.Cin, Cout = d.Cout, Ho = d.Ho, Wo = d.Wo, s = d.stride;
  const int64_t Cp = l.Cp, HW = H * W, HWo = Ho * Wo;
  const auto [wexp, bexp, wdw, bdw, wproj, bproj] = packed_ptrs(l, packed);
  const int64_t nth = std::max(1, nthreads);
  float* D = shared_scratch().get(N * HWo * Cp);
  if (D == nullptr) return false;
  std::atomic<bool> oom{false};

  // Phase A: groups of 3 strips (the GEMM's widest tile), at least ~4 units per thread when there are enough.
  const int64_t hstrips = Cp / kVec;
  int64_t gs = 3;
  while (gs > 1 && N * ((hstrips + gs - 1) / gs) < 4 * nth) --gs;
  const int64_t hgroups = (hstrips + gs - 1) / gs;
  const int64_t Wp = W + 2;
  auto unit_a = [&](int64_t u) {
    const int64_t n = u / hgroups, j0 = (u % hgroups) * gs, j1 = std::min(hstrips, j0 + gs);
    const int64_t c0 = j0 * kVec, G = (j1 - j0) * kVec, valid = std::min(d.Chid, j1 * kVec) - c0;
    const int64_t n_e = round_up((H + 2) * Wp * G, 16);
    const int64_t n_p = round_up(2 * HW * (int64_t)(sizeof(void*) / sizeof(float)), 16);
    float* E = thread_scratch().get(n_e + n_p);
    if (E == nullptr) {
      oom.store(true);
      return;
    }
    const float** pa = reinterpret_cast<const float**>(E + n_e);
    float** pc = reinterpret_cast<float**>(E + n_e) + HW;
    // zero borders (rows 0 and H+1, pixels 0 and W+1); channels valid..G of every pixel when the group has
    // padded channels (the GEMM writes only the valid ones)
    if (valid < G) {
      std::memset(E, 0, (size_t)((H + 2) * Wp * G) * sizeof(float));
    } else {
      std::memset(E, 0, (size_t)(Wp * G) * sizeof(float));
      std::memset(E + (H + 1) * Wp * G, 0, (size_t)(Wp * G) * sizeof(float));
      for (int64_t h = 1; h <= H; ++h) {
        std::memset(E + h * Wp * G, 0, (size_t)G * sizeof(float));
        std::memset(E + (h * Wp + W + 1) * G, 0, (size_t)G * sizeof(float));
      }
    }
    const float* ximg = x + n * HW * Cin;
    for (int64_t m = 0; m < HW; ++m) {
      pa[m] = ximg + m * Cin;
      pc[m] = E + ((m / W + 1) * Wp + (m % W) + 1) * G;
    }
    gemm_rows<kActRelu6, false>(HW, Cin, valid, pa, wexp + j0 * Cin * kVec, bexp + c0, pc, nullptr);
    float* Dn = D + n * HWo * Cp + c0;
    for (int64_t ho = 0; ho < Ho; ++ho) {
      const float* rows[3];
      for (int ky = 0; ky < 3; ++ky) rows[ky] = E + (ho * s + ky) * Wp * G;
      if (s == 1) dw_row<1>(rows, wdw + c0, bdw + c0, Dn + ho * Wo * Cp, Wo, G, G, Cp, Cp);
      else dw_row<2>(rows, wdw + c0, bdw + c0, Dn + ho * Wo * Cp, Wo, G, G, Cp, Cp);
    }
  };
  ::mnv2::cpu::parallel_units(N * hgroups, (int)nth, unit_a);
  if (oom.load()) return false;

  // Phase B: output strips in even groups of <= 3, pixel chunks (>= 8 pixels) for >= ~4 units per thread.
  const int64_t ostrips = round_up(Cout, kVec) / kVec;
  const int64_t og = (ostrips + (ostrips + 2) / 3 - 1) / ((ostrips + 2) / 3);
  const int64_t ogroups = (ostrips + og - 1) / og;
  int64_t pchunks = std::max<int64_t>(1, (4 * nth + N * ogroups - 1) / (N * ogroups));
  pchunks = std::min(pchunks, std::max<int64_t>(1, HWo / 8));
  const int64_t prow = (HWo + pchunks - 1) / pchunks;
  pchunks = (HWo + prow - 1) / prow;
  auto unit_b = [&](int64_t u) {
    const int64_t n = u / (pchunks * ogroups), rest = u % (pchunks * ogroups);
    const int64_t m0 = (rest / ogroups) * prow, m1 = std::min(HWo, m0 + prow);
    const int64_t j0 = (rest % ogroups) * og, j1 = std::min(ostrips, j0 + og);
    const int64_t c0 = j0 * kVec, ncols = std::min(Cout, j1 * kVec) - c0;
    const int64_t M = m1 - m0;
    float* t = thread_scratch().get(round_up(3 * M * (int64_t)(sizeof(void*) / sizeof(float)), 16));
    if (t == nullptr) {
      oom.store(true);
      return;
    }
    const float** pa = reinterpret_cast<const float**>(t);
    float** pc = reinterpret_cast<float**>(t) + M;
    const float** pr = reinterpret_cast<const float**>(t) + 2 * M;
    for (int64_t m = 0; m < M; ++m) {
      const int64_t px = n * HWo + m0 + m;
      pa[m] = D + px * Cp;
      pc[m] = out + px * Cout + c0;
      if (d.residual) pr[m] = x + px * Cin + c0;  // stride 1, Cin == Cout: output pixel px adds input pixel px
    }
    if (d.residual) gemm_rows<kActNone, true>(M, Cp, ncols, pa, wproj + j0 * Cp * kVec, bproj + c0, pc, pr);
    else gemm_rows<kActNone, false>(M, Cp, ncols, pa, wproj + j0 * Cp * kVec, bproj + c0, pc, nullptr);
  };
  ::mnv2::cpu::parallel_units(N * pchunks * ogroups, (int)nth, unit_b);
  return !oom.load();
}

bool run(const void* x, void* out, DType dt, const Dims& d, const float* packed, int nthreads) {
  if (dt == DType::F32) {
    if (d.has_expand && packed[0] != 0.f && nthreads > 1 && d.N < nthreads && d.H * d.W <= split_max_pixels()) {
      return run_block_split(static_cast<const float*>(x), static_cast<float*>(out), d, packed, nthreads);
    }
    return run_block<float>(static_cast<const float*>(x), static_cast<float*>(out), d, packed, nthreads);
  }
  return run_block<uint16_t>(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(out), d, packed, nthreads);
}

}  // namespace

// =========================================================================================================
// Stem and head helpers (float32 only): a dense 3x3 convolution (pad 1) and a dense layer (1x1 convolution
// or nn.Linear), each + bias (+ ReLU6), on the same pool, so that a fused MobileNetV2 forward runs no
// OpenMP region but the global average pool.
// =========================================================================================================
namespace {

// --- dense 3x3 conv, padding 1 ------------------------------------------------------------------------------
// packed: [0,16) header ([0] = 1 if every weight is finite) | w [9][Cin][Coutp] (tap-major, zero for co >= Cout) | b [Coutp]
constexpr int64_t kConvMaxNV = 8;  // Coutp <= 8 vectors
int64_t conv3x3_packed_floats(int64_t Cin, int64_t Cout) {
  const int64_t Coutp = round_up(Cout, kVec);
  return 16 + round_up(9 * Cin * Coutp, 16) + round_up(Coutp, 16);
}
bool conv3x3_supported(int64_t Cin, int64_t Cout) { return round_up(Cout, kVec) <= kConvMaxNV * kVec && Cin <= 64; }

// w: [Cout, Cin, 3, 3] (contiguous fp32), b: [Cout]
void conv3x3_pack(float* p, const float* w, const float* b, int64_t Cin, int64_t Cout) {
  const int64_t Coutp = round_up(Cout, kVec);
  std::memset(p, 0, 16 * sizeof(float));
  float* pw = p + 16;
  for (int64_t t = 0; t < 9; ++t)
    for (int64_t ci = 0; ci < Cin; ++ci)
      for (int64_t co = 0; co < Coutp; ++co)
        pw[(t * Cin + ci) * Coutp + co] = co < Cout ? w[(co * Cin + ci) * 9 + t] : 0.f;
  float* pb = pw + round_up(9 * Cin * Coutp, 16);
  for (int64_t co = 0; co < Coutp; ++co) pb[co] = co < Cout ? b[co] : 0.f;
  bool finite = true;
  for (int64_t i = 0; i < Cout * Cin * 9; ++i) finite = finite && std::isfinite(w[i]);
  p[0] = finite ? 1.f : 0.f;  // header: every weight finite (else the binding lets ATen compute it)
}

// One output pixel group: PX pixels at columns wo0 + i (all taps horizontally inside the image when
// INTERIOR; else taps outside the image are skipped, as ATen's convolution skips padding).
template <int NV, int PX, bool INTERIOR>
inline void conv3x3_px(const float* const rows[3], int64_t W, int64_t Cin, int64_t s, int64_t wo0, const float* pw,
                       const float* pb, int64_t Coutp, int64_t Cout, bool relu6, float* out, int64_t ldo) {
  vf acc[PX][NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    const vf bj = vload(pb + j * kVec);
#pragma GCC unroll 8
    for (int i = 0; i < PX; ++i) acc[i][j] = bj;
  }
  for (int ky = 0; ky < 3; ++ky) {
    const float* r = rows[ky];
    if (r == nullptr) continue;
    for (int kx = 0; kx < 3; ++kx) {
      const float* wt = pw + (ky * 3 + kx) * Cin * Coutp;
      if (INTERIOR) {
        for (int64_t ci = 0; ci < Cin; ++ci) {
          vf wv[NV];
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) wv[j] = vloada(wt + ci * Coutp + j * kVec);
#pragma GCC unroll 8
          for (int i = 0; i < PX; ++i) {
            const vf a = vbcast(r + ((wo0 + i) * s - 1 + kx) * Cin + ci);
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) acc[i][j] = vfma(a, wv[j], acc[i][j]);
          }
        }
      } else {
        static_assert(INTERIOR || PX == 1, "edge pixels one at a time");
        const int64_t col = wo0 * s - 1 + kx;
        if (col < 0 || col >= W) continue;
        for (int64_t ci = 0; ci < Cin; ++ci) {
          const vf a = vbcast(r + col * Cin + ci);
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) acc[0][j] = vfma(a, vloada(wt + ci * Coutp + j * kVec), acc[0][j]);
        }
      }
    }
  }
  const vf zero = vzero(), six = vset1(6.0f);
  const int last = (int)(Cout - (NV - 1) * kVec);
  const vmask m = tail_mask(last);
#pragma GCC unroll 8
  for (int i = 0; i < PX; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      vf v = acc[i][j];
      if (relu6) v = relu6_nan(v, zero, six);
      float* o = out + (wo0 + i) * ldo + j * kVec;
      if (j == NV - 1 && last != kVec) vstore_m(o, m, v);
      else vstore(o, v);
    }
  }
}

// out: [Wo] pixels ldo floats apart (Cout channels written; ldo >= Cout)
template <int NV>
void conv3x3_row(const float* const rows[3], int64_t W, int64_t Wo, int64_t Cin, int64_t s, const float* pw,
                 const float* pb, int64_t Coutp, int64_t Cout, bool relu6, float* out, int64_t ldo) {
  // interior columns: wo*s - 1 >= 0 and wo*s + 1 <= W - 1
  const int64_t lo = 1, hi = W >= 2 ? std::min<int64_t>(Wo, (W - 2) / s + 1) : 0;  // [lo, hi) interior
  int64_t wo = 0;
  for (; wo < std::min(lo, Wo); ++wo) {
    conv3x3_px<NV, 1, false>(rows, W, Cin, s, wo, pw, pb, Coutp, Cout, relu6, out, ldo);
  }
  for (; wo + 4 <= hi; wo += 4) conv3x3_px<NV, 4, true>(rows, W, Cin, s, wo, pw, pb, Coutp, Cout, relu6, out, ldo);
  for (; wo < hi; ++wo) conv3x3_px<NV, 1, true>(rows, W, Cin, s, wo, pw, pb, Coutp, Cout, relu6, out, ldo);
  for (; wo < Wo; ++wo) conv3x3_px<NV, 1, false>(rows, W, Cin, s, wo, pw, pb, Coutp, Cout, relu6, out, ldo);
}

// x: [N, H, W, Cin] fp32, out: [N, Ho, Wo, Cout] fp32 (NHWC). Units: (image, output row).
bool conv3x3_run(const float* x, float* out, int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t Cout,
                 int64_t s, bool relu6, const float* packed, int nthreads) {
  const int64_t Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1, Coutp = round_up(Cout, kVec);
  const float* pw = packed + 16;
  const float* pb = pw + round_up(9 * Cin * Coutp, 16);
  const int64_t nv = Coutp / kVec;
  // Row groups of >= ~16 output pixels' worth of work per unit.
  const int64_t rows_per_unit = std::max<int64_t>(1, 64 / std::max<int64_t>(1, Wo));
  const int64_t units_per_img = (Ho + rows_per_unit - 1) / rows_per_unit;
  auto unit_fn = [&](int64_t u) {
    const int64_t n = u / units_per_img;
    const int64_t ho_beg = (u % units_per_img) * rows_per_unit, ho_end = std::min(Ho, ho_beg + rows_per_unit);
    for (int64_t ho = ho_beg; ho < ho_end; ++ho) {
      const float* rows[3];
      for (int ky = 0; ky < 3; ++ky) {
        const int64_t r = ho * s - 1 + ky;
        rows[ky] = (r < 0 || r >= H) ? nullptr : x + (n * H + r) * W * Cin;
      }
      float* o = out + (n * Ho + ho) * Wo * Cout;
      switch (nv) {
#define MNV2_C(NVV) case NVV: conv3x3_row<NVV>(rows, W, Wo, Cin, s, pw, pb, Coutp, Cout, relu6, o, Cout); break;
        MNV2_C(1) MNV2_C(2) MNV2_C(3) MNV2_C(4) MNV2_C(5) MNV2_C(6) MNV2_C(7) MNV2_C(8)
#undef MNV2_C
        default: break;
      }
    }
  };
  ::mnv2::cpu::parallel_units(N * units_per_img, nthreads, unit_fn);
  return true;
}

void stem_row(const StemArgs& st, const float* ximg, int64_t r, int64_t Cout, float* dst, int64_t ldo) {
  const int64_t H = st.H, W = st.W, Cin = st.Cin, s = st.stride;
  const int64_t Wo = (W - 1) / s + 1, Coutp = round_up(Cout, kVec);
  const float* pw = st.packed + 16;
  const float* pb = pw + round_up(9 * Cin * Coutp, 16);
  const float* rows[3];
  for (int ky = 0; ky < 3; ++ky) {
    const int64_t rr = r * s - 1 + ky;
    rows[ky] = (rr < 0 || rr >= H) ? nullptr : ximg + rr * W * Cin;
  }
  switch (Coutp / kVec) {
#define MNV2_C(NVV) case NVV: conv3x3_row<NVV>(rows, W, Wo, Cin, s, pw, pb, Coutp, Cout, st.relu6, dst, ldo); break;
    MNV2_C(1) MNV2_C(2) MNV2_C(3) MNV2_C(4) MNV2_C(5) MNV2_C(6) MNV2_C(7) MNV2_C(8)
#undef MNV2_C
    default: break;
  }
}

// The stem convolution + the block as one pass (KernelTable::run_stem): x [N, stem.H, stem.W, stem.Cin] fp32,
// out [N, Ho, Wo, Cout]; d: the block, its input being the stem's output (d.H, d.W, d.Cin = stem Cout).
bool run_stem(const float* x, float* out, const Dims& d, const float* packed, const StemArgs& stem, int nthreads) {
  if (d.has_expand) return false;  // the binding never asks (the stem feeds the depthwise directly)
  return run_block<float>(x, out, d, packed, nthreads, &stem);
}

// --- dense layer: out[m, :] = act(x[m, :] . W^T + b) ----------------------------------------------------------
// packed: [0,16) header | w [Np/kVec][K][kVec] strips | b [Np]
int64_t dense_packed_floats(int64_t K, int64_t Ncols) {
  const int64_t Np = round_up(Ncols, kVec);
  return 16 + round_up(Np * K, 16) + round_up(Np, 16);
}
void dense_pack(float* p, const float* w, const float* b, int64_t K, int64_t Ncols) {
  std::memset(p, 0, 16 * sizeof(float));
  pack_strips<float>(p + 16, w, Ncols, K, K);
  pad_vec<float>(p + 16 + round_up(round_up(Ncols, kVec) * K, 16), b, Ncols, round_up(Ncols, kVec));
}
// x: [M, K] fp32 rows (contiguous), out: [M, Ncols]. Units: (block of rows, block of 6 column strips).
bool dense_run(const float* x, float* out, int64_t M, int64_t K, int64_t Ncols, bool relu6, const float* packed,
               int nthreads) {
  const int64_t Np = round_up(Ncols, kVec), strips = Np / kVec;
  const float* pw = packed + 16;
  const float* pb = pw + round_up(Np * K, 16);
  constexpr int64_t kRowBlock = 48, kStripBlock = 6;
  const int64_t rb = (M + kRowBlock - 1) / kRowBlock, cb = (strips + kStripBlock - 1) / kStripBlock;
  auto unit_fn = [&](int64_t u) {
    const int64_t m0 = (u / cb) * kRowBlock, m1 = std::min(M, m0 + kRowBlock);
    const int64_t j0 = (u % cb) * kStripBlock, j1 = std::min(strips, j0 + kStripBlock);
    const int64_t c0 = j0 * kVec, ncols = std::min(Ncols, j1 * kVec) - c0;
    const float* pa[kRowBlock];
    float* pc[kRowBlock];
    for (int64_t m = m0; m < m1; ++m) {
      pa[m - m0] = x + m * K;
      pc[m - m0] = out + m * Ncols + c0;
    }
    if (relu6) gemm_rows<true, false>(m1 - m0, K, ncols, pa, pw + j0 * K * kVec, pb + c0, pc, nullptr);
    else gemm_rows<false, false>(m1 - m0, K, ncols, pa, pw + j0 * K * kVec, pb + c0, pc, nullptr);
  };
  ::mnv2::cpu::parallel_units(rb * cb, nthreads, unit_fn);
  return true;
}

// Head + global average pool: out[n, c] = mean over the HW pixels of relu6(x[n, p, :] . W[c, :] + b[c]).
// x: [N, HW, K] fp32 (NHWC pixels), out: [N, Ncols]; packed as dense_pack. Units: (image, 6 column strips);
// the [HW, 6*kVec] block of activations lives in the thread's scratch only (never in memory as a map).
bool dense_relu6_mean_run(const float* x, float* out, int64_t N, int64_t HW, int64_t K, int64_t Ncols,
                          const float* packed, int nthreads) {
  const int64_t Np = round_up(Ncols, kVec), strips = Np / kVec;
  const float* pw = packed + 16;
  const float* pb = pw + round_up(Np * K, 16);
  constexpr int64_t kStripBlock = 6;
  const int64_t cb = (strips + kStripBlock - 1) / kStripBlock;
  const int64_t ldt = kStripBlock * kVec;  // row stride of the activation block
  std::atomic<bool> oom{false};
  auto unit_fn = [&](int64_t u) {
    const int64_t n = u / cb;
    const int64_t j0 = (u % cb) * kStripBlock, j1 = std::min(strips, j0 + kStripBlock);
    const int64_t c0 = j0 * kVec, ncols = std::min(Ncols, j1 * kVec) - c0;
    const int64_t n_t = round_up(HW * ldt, 16);
    float* t = thread_scratch().get(n_t + round_up(2 * HW * (int64_t)(sizeof(void*) / sizeof(float)), 16));
    if (t == nullptr) {
      oom.store(true);
      return;
    }
    const float** pa = reinterpret_cast<const float**>(t + n_t);
    float** pc = reinterpret_cast<float**>(t + n_t) + HW;
    for (int64_t p = 0; p < HW; ++p) {
      pa[p] = x + (n * HW + p) * K;
      pc[p] = t + p * ldt;
    }
    gemm_rows<true, false>(HW, K, ncols, pa, pw + j0 * K * kVec, pb + c0, pc, nullptr);
    for (int64_t c = 0; c < ncols; ++c) {
      float acc = 0.f;
      for (int64_t p = 0; p < HW; ++p) acc += t[p * ldt + c];
      out[n * Ncols + c0 + c] = acc / (float)HW;
    }
  };
  ::mnv2::cpu::parallel_units(N * cb, nthreads, unit_fn);
  return !oom.load();
}

}  // namespace
