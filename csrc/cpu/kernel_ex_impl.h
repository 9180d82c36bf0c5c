// The fused CPU kernel of the generalised block mnv2::inverted_residual_ex (issue 13; docs/CONTRACT.md,
// "The generalised block"), written once for any vector width. Included after kernel_impl.h (its vector
// layer, activations, GEMM micro-kernel, scratch and packing helpers) by kernel_ex_avx2.cpp and
// kernel_ex_avx512.cpp, each inside its own namespace and `#pragma GCC target` region.
//
//   h = x                                                        [N, Cin, H, W]
//   h = dw_k0(h, w_dw_start, stride0, pads) + b                  [N, Cin, H1, W1]   (optional, no activation)
//   h = act_expand(conv1x1(h, w_expand) + b_expand)              [N, Chid, H1, W1]  (optional)
//   h = act_dw(dw_k(h, w_dw, stride, pads) + b_dw)               [N, Chid, Ho, Wo]
//   h = h * se_gate(W_e se_act(W_r mean_hw(h) + b_r) + b_e)       (optional squeeze-excite)
//   y = act_project(conv1x1(h, w_project) + b_project) (+ x)     [N, Cout, Ho, Wo]
//
// Layout: NHWC; fp32 arithmetic for every dtype (bf16 converted on load/store).
//
// The leading depthwise (MobileNetV4 UIB "ExtraDW") is a separate pass into a float buffer x1 [N, H1, W1, Cin]:
// a narrow tensor (Cin channels), not the expanded one. The rest is the MobileNetV2 kernel's scheme
// (kernel_impl.h, run_block), generalised: units = (image, band of output rows); a unit walks down its band
// in chunks of R output rows: (1) expand (GEMM + bias + act_expand) the input rows the chunk needs and has
// not computed into a ring of S = (R-1)*stride + k row slots, each row with its zero padding pixels around it
// (pl on the left, what the taps need on the right); (2) depthwise k x k + bias + act_dw of the chunk's output
// rows into dwbuf; (3) project GEMM + bias + act_project (+ residual) straight into the output rows. Image
// rows outside [0, H1) are a shared zero row, so the padding is zeros of the *activated expanded* tensor.
//
// Squeeze-excite needs the whole image's channel means before the project. The expanded tensor is never
// written to memory as a whole map:
//   - single pass ("in scratch"), when every unit is a whole image (no bands) and one image's depthwise output
//     [Ho*Wo, Cp] fits d.se_scratch_bytes: expand + depthwise of the whole image into the thread's scratch,
//     sum, the excite MLP, gate, project from scratch;
//   - banded ("shared"), when images are split into bands (few images, several threads) and the images'
//     depthwise outputs fit d.se_scratch_bytes together: pass 1 (bands in parallel) writes each band's
//     depthwise output into one shared buffer and sums it; the MLP per image; pass 2 (bands in parallel)
//     gates and projects from the buffer: no recomputation, both threads busy at batch 1;
//   - two passes otherwise: pass 1 computes expand + depthwise only to accumulate per-(image, band) channel
//     sums (bands: batch 1 on 2 threads still uses both); the MLP per image; pass 2 recomputes expand +
//     depthwise, gates and projects.
//
// NaN/Inf: activations propagate NaN as PyTorch's (kernel_impl.h, act<>); the padded channels Chid..Cp of the
// ring are never computed by the expand (0 * Inf); non-finite depthwise weights are the binding's business
// (packed[0] == 0: it runs the reference, whose zero padding multiplies them).
//
// Expects (from the including file): everything kernel_impl.h expects, and kernel_impl.h itself.

namespace {

using ::mnv2::cpu::ExDims;
using ::mnv2::cpu::ExWeightPtrs;
using ::mnv2::cpu::ExAct;

static_assert((int)ExAct::None == kActNone && (int)ExAct::Relu6 == kActRelu6 && (int)ExAct::Relu == kActRelu &&
                  (int)ExAct::Hardswish == kActHardswish && (int)ExAct::Silu == kActSilu &&
                  (int)ExAct::Gelu == kActGelu && (int)ExAct::GeluTanh == kActGeluTanh &&
                  (int)ExAct::Sigmoid == kActSigmoid && (int)ExAct::Hardsigmoid == kActHardsigmoid,
              "cpu_kernel.h ExAct and kernel_impl.h ActKind must agree");

// ---------------------------------------------------------------------------------------------------------
// Run-time activation choice for the GEMMs and the depthwise (compile-time inside each).
// ---------------------------------------------------------------------------------------------------------
// C[m, 0:Ncols] = act(A . B + bias) (+ res when res != nullptr and act is none, else no residual)
inline void gemm_act(int a, int64_t M, int64_t K, int64_t Ncols, const float* const* pa, const float* b,
                     const float* bias, float* const* pc) {
  switch (a) {
    case kActRelu6: gemm_rows<kActRelu6, false>(M, K, Ncols, pa, b, bias, pc, nullptr); break;
    case kActRelu: gemm_rows<kActRelu, false>(M, K, Ncols, pa, b, bias, pc, nullptr); break;
    case kActHardswish: gemm_rows<kActHardswish, false>(M, K, Ncols, pa, b, bias, pc, nullptr); break;
    case kActSilu: gemm_rows<kActSilu, false>(M, K, Ncols, pa, b, bias, pc, nullptr); break;
    case kActGelu: gemm_rows<kActGelu, false>(M, K, Ncols, pa, b, bias, pc, nullptr); break;
    case kActGeluTanh: gemm_rows<kActGeluTanh, false>(M, K, Ncols, pa, b, bias, pc, nullptr); break;
    default: gemm_rows<kActNone, false>(M, K, Ncols, pa, b, bias, pc, nullptr); break;
  }
}

inline vf act_rt(int a, vf v) {
  switch (a) {
    case kActRelu6: return act<kActRelu6>(v);
    case kActRelu: return act<kActRelu>(v);
    case kActHardswish: return act<kActHardswish>(v);
    case kActSilu: return act<kActSilu>(v);
    case kActGelu: return act<kActGelu>(v);
    case kActGeluTanh: return act<kActGeluTanh>(v);
    case kActSigmoid: return act<kActSigmoid>(v);
    case kActHardsigmoid: return act<kActHardsigmoid>(v);
    default: return v;
  }
}

// Scalar activation in double (the excite MLP's hidden layer: Crd values per image).
inline double act_scalar(int a, double v) {
  switch (a) {
    case kActRelu6: return std::isnan(v) ? v : std::min(6.0, std::max(0.0, v));
    case kActRelu: return std::isnan(v) ? v : std::max(0.0, v);
    case kActHardswish: return std::isnan(v) ? v : v * std::min(6.0, std::max(0.0, v + 3.0)) / 6.0;
    case kActSilu: return v / (1.0 + std::exp(-v));
    case kActGelu: return 0.5 * v * std::erfc(-v * 0.70710678118654752440);
    case kActGeluTanh: return 0.5 * v * (1.0 + std::tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v)));
    case kActSigmoid: return 1.0 / (1.0 + std::exp(-v));
    case kActHardsigmoid: return std::isnan(v) ? v : std::min(6.0, std::max(0.0, v + 3.0)) / 6.0;
    default: return v;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Depthwise K x K (stride S) + bias + ACT of one output row.
//   rows[ky]: padded input row ky (ky < K): pixels x Cp floats, padded pixel wo*S + kx is tap kx of output wo
//   wdw     : [K*K][Cp] floats, tap t = ky*K + kx;  bdw: [Cp]
//   out     : [Wo][Cp] floats
// Channels vectorised (Cp % kVec == 0); 4 output pixels at a time for independent FMA chains.
// ---------------------------------------------------------------------------------------------------------
template <int K, int S, int ACT>
void dwk_row(const float* const* rows, const float* wdw, const float* bdw, float* out, int64_t Wo, int64_t Cp) {
  for (int64_t cc = 0; cc < Cp; cc += kVec) {
    const vf bb = vloada(bdw + cc);
    const float* w = wdw + cc;
    int64_t wo = 0;
    for (; wo + 4 <= Wo; wo += 4) {
      vf a0 = bb, a1 = bb, a2 = bb, a3 = bb;
#pragma GCC unroll 9
      for (int ky = 0; ky < K; ++ky) {
        const float* r = rows[ky] + (wo * S) * Cp + cc;
#pragma GCC unroll 9
        for (int kx = 0; kx < K; ++kx) {
          const vf wv = vloada(w + (ky * K + kx) * Cp);
          a0 = vfma(vloada(r + (0 * S + kx) * Cp), wv, a0);
          a1 = vfma(vloada(r + (1 * S + kx) * Cp), wv, a1);
          a2 = vfma(vloada(r + (2 * S + kx) * Cp), wv, a2);
          a3 = vfma(vloada(r + (3 * S + kx) * Cp), wv, a3);
        }
      }
      vstorea(out + (wo + 0) * Cp + cc, act<ACT>(a0));
      vstorea(out + (wo + 1) * Cp + cc, act<ACT>(a1));
      vstorea(out + (wo + 2) * Cp + cc, act<ACT>(a2));
      vstorea(out + (wo + 3) * Cp + cc, act<ACT>(a3));
    }
    for (; wo < Wo; ++wo) {
      vf a0 = bb;
#pragma GCC unroll 9
      for (int ky = 0; ky < K; ++ky) {
        const float* r = rows[ky] + (wo * S) * Cp + cc;
#pragma GCC unroll 9
        for (int kx = 0; kx < K; ++kx) a0 = vfma(vloada(r + kx * Cp), vloada(w + (ky * K + kx) * Cp), a0);
      }
      vstorea(out + wo * Cp + cc, act<ACT>(a0));
    }
  }
}

using DwRowFn = void (*)(const float* const*, const float*, const float*, float*, int64_t, int64_t);

template <int K, int S>
DwRowFn dw_pick_act(int a) {
  switch (a) {
    case kActRelu6: return &dwk_row<K, S, kActRelu6>;
    case kActRelu: return &dwk_row<K, S, kActRelu>;
    case kActHardswish: return &dwk_row<K, S, kActHardswish>;
    case kActSilu: return &dwk_row<K, S, kActSilu>;
    case kActGelu: return &dwk_row<K, S, kActGelu>;
    case kActGeluTanh: return &dwk_row<K, S, kActGeluTanh>;
    default: return &dwk_row<K, S, kActNone>;
  }
}
template <int K>
DwRowFn dw_pick_stride(int64_t s, int a) { return s == 1 ? dw_pick_act<K, 1>(a) : dw_pick_act<K, 2>(a); }
DwRowFn dw_pick(int64_t k, int64_t s, int a) {
  switch (k) {
    case 1: return dw_pick_stride<1>(s, a);
    case 3: return dw_pick_stride<3>(s, a);
    case 5: return dw_pick_stride<5>(s, a);
    case 7: return dw_pick_stride<7>(s, a);
    default: return dw_pick_stride<9>(s, a);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Packed weights (one 64-byte aligned float buffer; the binding caches it per set of weights):
//   [0, 16)  header: [0] = 1 if every weight of both depthwise convs is finite, else 0
//   wexp  [Cp/kVec][Cin][kVec], bexp [Cp]         (only with expand)
//   wdw   [k*k][Cp] tap-major, bdw [Cp]
//   wser  [Crd][Cp] (SE reduce, rows zero-padded), bser [Crdp]; weseT [Crd][Cp] (SE expand transposed), bsee [Cp]
//   wproj [Coutp/kVec][Cp][kVec], bproj [Coutp]
//   wdw0  [k0*k0][Cinp] tap-major, bdw0 [Cinp]    (only with a leading depthwise)
// Cp = round_up(Chid, kVec), Coutp = round_up(Cout, kVec), Cinp = round_up(Cin, kVec), Crdp = round_up(Crd, kVec).
// ---------------------------------------------------------------------------------------------------------
struct ExLayout {
  int64_t Cp, Coutp, Cinp, Crdp;
  int64_t o_wexp, o_bexp, o_wdw, o_bdw, o_wser, o_bser, o_wsee, o_bsee, o_wproj, o_bproj, o_wdw0, o_bdw0, total;
};
ExLayout ex_layout(const ExDims& d) {
  ExLayout l{};
  l.Cp = round_up(d.Chid, kVec);
  l.Coutp = round_up(d.Cout, kVec);
  l.Cinp = round_up(d.Cin, kVec);
  l.Crdp = round_up(d.Crd, kVec);
  int64_t o = 16;
  auto take = [&](int64_t n) { const int64_t at = o; o += round_up(n, 16); return at; };
  l.o_wexp = take(d.has_expand ? l.Cp * d.Cin : 0);
  l.o_bexp = take(d.has_expand ? l.Cp : 0);
  l.o_wdw = take(d.k * d.k * l.Cp);
  l.o_bdw = take(l.Cp);
  l.o_wser = take(d.Crd * l.Cp);
  l.o_bser = take(d.Crd ? l.Crdp : 0);
  l.o_wsee = take(d.Crd * l.Cp);
  l.o_bsee = take(d.Crd ? l.Cp : 0);
  l.o_wproj = take(l.Coutp * l.Cp);
  l.o_bproj = take(l.Coutp);
  l.o_wdw0 = take(d.k0 * d.k0 * l.Cinp);
  l.o_bdw0 = take(d.k0 ? l.Cinp : 0);
  l.total = o;
  return l;
}

int64_t ex_packed_floats(const ExDims& d) { return ex_layout(d).total; }

// w [C, k, k] -> dst [k*k][Cpad] tap-major (zero for c >= C); returns whether every weight is finite.
template <typename T>
bool pack_dw(float* dst, const T* w, int64_t C, int64_t k, int64_t Cpad) {
  bool finite = true;
  for (int64_t t = 0; t < k * k; ++t) {
    for (int64_t c = 0; c < Cpad; ++c) {
      const float v = c < C ? to_f<T>(w[c * k * k + t]) : 0.f;
      dst[t * Cpad + c] = v;
      finite = finite && std::isfinite(v);
    }
  }
  return finite;
}

template <typename T>
void ex_pack_t(float* p, const ExDims& d, const ExWeightPtrs& w) {
  const ExLayout l = ex_layout(d);
  std::memset(p, 0, (size_t)l.total * sizeof(float));
  if (d.has_expand) {
    pack_strips(p + l.o_wexp, static_cast<const T*>(w.w_expand), d.Chid, d.Cin, d.Cin);
    pad_vec(p + l.o_bexp, static_cast<const T*>(w.b_expand), d.Chid, l.Cp);
  }
  bool finite = pack_dw(p + l.o_wdw, static_cast<const T*>(w.w_dw), d.Chid, d.k, l.Cp);
  pad_vec(p + l.o_bdw, static_cast<const T*>(w.b_dw), d.Chid, l.Cp);
  if (d.Crd) {
    const T* wr = static_cast<const T*>(w.w_se_reduce);  // [Crd, Chid]
    const T* we = static_cast<const T*>(w.w_se_expand);  // [Chid, Crd]
    for (int64_t j = 0; j < d.Crd; ++j) {
      for (int64_t c = 0; c < d.Chid; ++c) {
        p[l.o_wser + j * l.Cp + c] = to_f<T>(wr[j * d.Chid + c]);
        p[l.o_wsee + j * l.Cp + c] = to_f<T>(we[c * d.Crd + j]);
      }
    }
    pad_vec(p + l.o_bser, static_cast<const T*>(w.b_se_reduce), d.Crd, l.Crdp);
    pad_vec(p + l.o_bsee, static_cast<const T*>(w.b_se_expand), d.Chid, l.Cp);
  }
  pack_strips(p + l.o_wproj, static_cast<const T*>(w.w_project), d.Cout, d.Chid, l.Cp);
  pad_vec(p + l.o_bproj, static_cast<const T*>(w.b_project), d.Cout, l.Coutp);
  if (d.k0) {
    finite = pack_dw(p + l.o_wdw0, static_cast<const T*>(w.w_dw_start), d.Cin, d.k0, l.Cinp) && finite;
    pad_vec(p + l.o_bdw0, static_cast<const T*>(w.b_dw_start), d.Cin, l.Cinp);
  }
  p[0] = finite ? 1.f : 0.f;
}

void ex_pack(float* dst, const ExDims& d, DType dt, const ExWeightPtrs& w) {
  if (dt == DType::F32) ex_pack_t<float>(dst, d, w);
  else ex_pack_t<uint16_t>(dst, d, w);
}

// ---------------------------------------------------------------------------------------------------------
// Leading depthwise (no activation): x [N, H, W, Cin] float -> x1 [N, H1, W1, Cin] float. Taps outside the
// image are skipped (the zero padding; only finite weights come here). Units: (image, output row).
// ---------------------------------------------------------------------------------------------------------
void dw_start_run(const float* x, float* x1, const ExDims& d, const ExLayout& l, const float* packed, int nthreads) {
  const int64_t H = d.H, W = d.W, C = d.Cin, k = d.k0, s = d.stride0, H1 = d.H1, W1 = d.W1;
  const float* w = packed + l.o_wdw0;
  const float* b = packed + l.o_bdw0;
  const int64_t Cinp = l.Cinp;
  const int last = (int)(C - (Cinp - kVec));  // valid channels of the last vector
  const vmask mask = tail_mask(last);
  auto unit_fn = [&](int64_t u) {
    const int64_t n = u / H1, ho = u % H1;
    const int64_t top = ho * s - d.pt0;
    const float* ximg = x + n * H * W * C;
    float* orow = x1 + (n * H1 + ho) * W1 * C;
    for (int64_t wo = 0; wo < W1; ++wo) {
      const int64_t left = wo * s - d.pl0;
      for (int64_t cc = 0; cc < Cinp; cc += kVec) {
        const bool tail = cc + kVec > C;
        vf acc = vloada(b + cc);
        for (int64_t ky = 0; ky < k; ++ky) {
          const int64_t r = top + ky;
          if (r < 0 || r >= H) continue;
          for (int64_t kx = 0; kx < k; ++kx) {
            const int64_t c = left + kx;
            if (c < 0 || c >= W) continue;
            const float* src = ximg + (r * W + c) * C + cc;
            acc = vfma(tail ? vload_m(src, mask) : vload(src), vloada(w + (ky * k + kx) * Cinp + cc), acc);
          }
        }
        if (tail) vstore_m(orow + wo * C + cc, mask, acc);
        else vstore(orow + wo * C + cc, acc);
      }
    }
  };
  ::mnv2::cpu::parallel_units(d.N * H1, nthreads, unit_fn);
}

// ---------------------------------------------------------------------------------------------------------
// The block over NHWC buffers.
//   TI: the type of the block's input xin ([N, H1, W1, Cin]: x itself, or the leading depthwise's float x1)
//   T : the op's dtype (x, out; the residual adds x)
// ---------------------------------------------------------------------------------------------------------
template <typename TI, typename T>
bool run_block_ex(const TI* xin, const T* x, T* out, const ExDims& d, const float* packed, int nthreads) {
  constexpr bool kInF32 = std::is_same<TI, float>::value;
  constexpr bool kOutF32 = std::is_same<T, float>::value;
  const ExLayout l = ex_layout(d);
  const int64_t N = d.N, H = d.H1, W = d.W1, Cin = d.Cin, Cout = d.Cout, Ho = d.Ho, Wo = d.Wo, s = d.stride;
  const int64_t k = d.k, pt = d.pt, pl = d.pl;
  const int64_t Cp = l.Cp, Coutp = l.Coutp, Chid = d.Chid, Crd = d.Crd;
  const bool has_expand = d.has_expand, residual = d.residual, has_se = Crd > 0;
  const int act_e = d.act_expand, act_p = d.act_project;
  // padded row: pixel pl + w is image column w; every tap wo*s + kx (wo < Wo, kx < k) inside
  const int64_t Wp = std::max(pl + W, (Wo - 1) * s + k);
  const float* wexp = packed + l.o_wexp;
  const float* bexp = packed + l.o_bexp;
  const float* wdw = packed + l.o_wdw;
  const float* bdw = packed + l.o_bdw;
  const float* wproj = packed + l.o_wproj;
  const float* bproj = packed + l.o_bproj;
  const DwRowFn dw_fn = dw_pick(k, s, d.act_dw);

  // Chunk of R output rows: ring of S = (R-1)*s + k expanded rows + dwbuf of R*Wo pixels; keep them in L2.
  const int64_t row_floats = Wp * Cp;
  const int64_t budget = (int64_t)(448 * 1024) / (int64_t)sizeof(float);
  int64_t R = 1;
  while (R < Ho && (((R)*s + k) * row_floats + (R + 1) * Wo * Cp) <= budget) ++R;

  // Bands (as run_block): only when there are too few images for the threads.
  const int64_t nth = std::max(1, nthreads);
  int64_t bands = 1;
  if (N < 4 * nth && N % nth != 0) {
    bands = nth / std::gcd(N, nth);
    bands = std::min<int64_t>(bands, std::max<int64_t>(1, Ho / 2));
  }
  const int64_t band_rows = (Ho + bands - 1) / bands;
  bands = (Ho + band_rows - 1) / band_rows;
  R = std::min(R, band_rows);
  const int64_t S = (R - 1) * s + k;  // ring slots

  // Squeeze-excite mode: single pass with the image's depthwise output in scratch, or two passes.
  const bool se_single = has_se && bands == 1 && Ho * Wo * Cp * (int64_t)sizeof(float) <= d.se_scratch_bytes;
  // Banded SE (few images, several threads) whose images' depthwise outputs fit the budget together: pass 1
  // stores each band's depthwise output into one shared buffer [N][Ho*Wo][Cp] and sums it, pass 2 gates and
  // projects from there (no recomputation; the pool's return between the passes is the barrier).
  const bool se_shared = has_se && !se_single && N * Ho * Wo * Cp * (int64_t)sizeof(float) <= d.se_scratch_bytes;
  const int64_t dw_rows = se_single ? Ho : R;  // rows of dwbuf

  // Per-thread scratch (floats, each piece 64-byte aligned):
  //   zrow [Wp][Cp] | ring [S][Wp][Cp] | dwbuf [dw_rows*Wo][Cp] | xf [S*W][Cin] (bf16 input) |
  //   of [R*Wo][Coutp] (bf16 output, or f32 with an activated project + residual) | se [4*Cp + Crdp] | ptrs
  const bool need_of = !kOutF32 || (residual && act_p != kActNone);
  const int64_t mmax = std::max(S * W, R * Wo);
  const int64_t n_zrow = round_up(row_floats, 16);
  const int64_t n_ring = round_up(S * row_floats, 16);
  const int64_t n_dw = round_up(dw_rows * Wo * Cp, 16);
  const int64_t n_xf = kInF32 ? 0 : round_up(S * W * Cin, 16);
  const int64_t n_of = need_of ? round_up(R * Wo * Coutp, 16) : 0;
  const int64_t n_se = has_se ? round_up(4 * Cp + l.Crdp, 16) : 0;
  const int64_t n_ptr = round_up(3 * mmax * (int64_t)(sizeof(void*) / sizeof(float)), 16);
  const int64_t n_scratch = n_zrow + n_ring + n_dw + n_xf + n_of + n_se + n_ptr;
  std::atomic<bool> oom{false};

  // Two-pass SE: partial channel sums per (image, band) and the gates per image (heap, tiny).
  std::vector<double> psum;
  std::vector<float> gates;
  if (has_se && !se_single) {
    psum.assign((size_t)(N * bands * Cp), 0.0);
    gates.assign((size_t)(N * Cp), 0.f);
  }

  static std::atomic<uint64_t> calls{0};
  // The excite MLP: mean [Cp] (double) -> gate [Cp] (float, zero beyond Chid is irrelevant: project rows 0).
  auto excite = [&](const double* sum, float* gate, float* tmp) {
    const float* wser = packed + l.o_wser;
    const float* bser = packed + l.o_bser;
    const float* wsee = packed + l.o_wsee;
    const float* bsee = packed + l.o_bsee;
    float* mean = tmp;          // [Cp]
    float* hid = tmp + Cp;      // [Crdp]
    const double inv = 1.0 / (double)(Ho * Wo);
    for (int64_t c = 0; c < Cp; ++c) mean[c] = (float)(sum[c] * inv);
    for (int64_t j = 0; j < Crd; ++j) {
      vf acc = vzero();
      for (int64_t c = 0; c < Cp; c += kVec) acc = vfma(vloada(mean + c), vloada(wser + j * Cp + c), acc);
      alignas(64) float part[kVec];
      vstorea(part, acc);
      double sj = bser[j];
      for (int64_t i = 0; i < kVec; ++i) sj += part[i];
      hid[j] = (float)act_scalar(d.se_act, sj);
    }
    for (int64_t c = 0; c < Cp; c += kVec) {
      vf acc = vloada(bsee + c);
      for (int64_t j = 0; j < Crd; ++j) acc = vfma(vbcast(hid + j), vloada(wsee + j * Cp + c), acc);
      vstore(gate + c, act_rt(d.se_gate, acc));  // gate: maybe a std::vector's (16-byte aligned)
    }
  };

  // mode 0: no SE (project per chunk); 1: SE pass 1 (sums only); 2: SE pass 2 (gate + project);
  // 3: SE single pass (whole image in scratch); 4: SE pass 1 into the shared buffer (+ sums);
  // 5: SE pass 2 from the shared buffer (gate + project, no expand / depthwise).
  float* shared = nullptr;  // [N][Ho*Wo][Cp] (se_shared only)
  auto make_unit = [&](int mode, uint64_t call_id) {
    return [&, mode, call_id](int64_t u) {
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
      float* se = of + n_of;  // gate [Cp] | tmp [Cp + Crdp] | sums (double) [Cp]
      float* se_gate = se;
      float* se_tmp = se + Cp;
      double* se_sum = reinterpret_cast<double*>(se + 2 * Cp + l.Crdp);  // 8-byte aligned: Cp, Crdp % 8 == 0
      const float** pa = reinterpret_cast<const float**>(of + n_of + n_se);
      float** pc = reinterpret_cast<float**>(of + n_of + n_se + 2 * mmax);
      const float** pr = reinterpret_cast<const float**>(of + n_of + n_se + 4 * mmax);
      (void)se_tmp;
      if (zeroed_for != call_id) {
        std::memset(zrow, 0, (size_t)(n_zrow + n_ring) * sizeof(float));
        zeroed_for = call_id;
      }

      const int64_t n = u / bands;
      const int64_t band = u % bands;
      const int64_t ho_beg = band * band_rows;
      const int64_t ho_end = std::min(Ho, ho_beg + band_rows);
      const TI* ximg = xin + n * H * W * Cin;
      const T* xres = x + n * Ho * Wo * Cout;  // residual: stride 1, same sizes, Cin == Cout
      T* oimg = out + n * Ho * Wo * Cout;
      int64_t next_row = std::max<int64_t>(0, ho_beg * s - pt);  // first image row not yet in the ring
      if (mode == 1 || mode == 3 || mode == 4) std::fill(se_sum, se_sum + Cp, 0.0);
      const float* gate = (mode == 2 || mode == 5) ? gates.data() + n * Cp : se_gate;

      // project rows [h0, h0 + r_n) from dwsrc ([r_n*Wo][Cp]) into the output
      auto project = [&](int64_t h0, int64_t r_n, const float* dwsrc) {
        const int64_t M = r_n * Wo;
        for (int64_t m = 0; m < M; ++m) pa[m] = dwsrc + m * Cp;
        if constexpr (kOutF32) {
          float* orow = reinterpret_cast<float*>(oimg) + h0 * Wo * Cout;
          if (residual && act_p == kActNone) {
            for (int64_t m = 0; m < M; ++m) pc[m] = orow + m * Cout;
            const float* xrow = reinterpret_cast<const float*>(xres) + h0 * Wo * Cout;
            for (int64_t m = 0; m < M; ++m) pr[m] = xrow + m * Cout;
            gemm_rows<kActNone, true>(M, Cp, Cout, pa, wproj, bproj, pc, pr);
            return;
          }
          if (!residual) {
            for (int64_t m = 0; m < M; ++m) pc[m] = orow + m * Cout;
            gemm_act(act_p, M, Cp, Cout, pa, wproj, bproj, pc);
            return;
          }
        }
        // into `of` (fp32), then + residual and the conversion
        for (int64_t m = 0; m < M; ++m) pc[m] = of + m * Coutp;
        gemm_act(act_p, M, Cp, Coutp, pa, wproj, bproj, pc);
        T* orow = oimg + h0 * Wo * Cout;
        const T* xrow = xres + h0 * Wo * Cout;
        for (int64_t m = 0; m < M; ++m) {
          const float* src = of + m * Coutp;
          T* dst = orow + m * Cout;
          if (residual) {
            const T* xr = xrow + m * Cout;
            for (int64_t co = 0; co < Cout; ++co) dst[co] = from_f<T>(src[co] + to_f<T>(xr[co]));
          } else {
            for (int64_t co = 0; co < Cout; ++co) dst[co] = from_f<T>(src[co]);
          }
        }
      };
      auto accumulate = [&](const float* src, int64_t npx) {  // se_sum[c] += sum over npx pixels
        for (int64_t cc = 0; cc < Cp; cc += kVec) {
          vf a0 = vzero(), a1 = vzero();
          int64_t p = 0;
          for (; p + 2 <= npx; p += 2) {
            a0 = vadd(a0, vloada(src + p * Cp + cc));
            a1 = vadd(a1, vloada(src + (p + 1) * Cp + cc));
          }
          if (p < npx) a0 = vadd(a0, vloada(src + p * Cp + cc));
          alignas(64) float part[kVec];
          vstorea(part, vadd(a0, a1));
          for (int64_t i = 0; i < kVec; ++i) se_sum[cc + i] += part[i];
        }
      };
      auto apply_gate = [&](float* buf, int64_t npx) {
        for (int64_t p = 0; p < npx; ++p)
          for (int64_t cc = 0; cc < Cp; cc += kVec)
            vstorea(buf + p * Cp + cc, vmul(vloada(buf + p * Cp + cc), vload(gate + cc)));
      };

      if (mode == 5) {
        for (int64_t h0 = ho_beg; h0 < ho_end; h0 += R) {
          const int64_t r_n = std::min(R, ho_end - h0);
          float* src = shared + (n * Ho + h0) * Wo * Cp;
          apply_gate(src, r_n * Wo);
          project(h0, r_n, src);
        }
        return;
      }
      for (int64_t h0 = ho_beg; h0 < ho_end; h0 += R) {
        const int64_t r_n = std::min(R, ho_end - h0);  // output rows in this chunk
        const int64_t lo = h0 * s - pt;                 // input rows [lo, hi) are needed
        const int64_t hi = std::min(H, (h0 + r_n - 1) * s - pt + k);
        // 1. expand the rows not yet computed: [r_beg, hi)
        const int64_t r_beg = std::max(next_row, std::max<int64_t>(lo, 0));
        if (r_beg < hi) {
          const int64_t nr = hi - r_beg;
          if (has_expand) {
            int64_t m = 0;
            for (int64_t r = r_beg; r < hi; ++r) {
              float* slot = ring + (r % S) * row_floats;
              const float* arow;
              if constexpr (kInF32) {
                arow = reinterpret_cast<const float*>(ximg) + r * W * Cin;
              } else {
                float* dst = xf + (r - r_beg) * W * Cin;
                const TI* src = ximg + r * W * Cin;
                for (int64_t i = 0; i < W * Cin; ++i) dst[i] = to_f<TI>(src[i]);
                arow = dst;
              }
              for (int64_t w = 0; w < W; ++w, ++m) {
                pa[m] = arow + w * Cin;
                pc[m] = slot + (pl + w) * Cp;
              }
            }
            // Ncols = Chid: the padded channels of the ring stay zero (see kernel_impl.h, run_block)
            gemm_act(act_e, nr * W, Cin, Chid, pa, wexp, bexp, pc);
          } else {
            for (int64_t r = r_beg; r < hi; ++r) {
              float* slot = ring + (r % S) * row_floats;
              const TI* src = ximg + r * W * Cin;
              for (int64_t w = 0; w < W; ++w) {
                float* dst = slot + (pl + w) * Cp;
                for (int64_t ci = 0; ci < Cin; ++ci) dst[ci] = to_f<TI>(src[w * Cin + ci]);
              }
            }
          }
          next_row = hi;
        }
        // 2. depthwise + act_dw of the chunk's output rows
        float* dwc = mode == 3 ? dwbuf + h0 * Wo * Cp : (mode == 4 ? shared + (n * Ho + h0) * Wo * Cp : dwbuf);
        for (int64_t i = 0; i < r_n; ++i) {
          const int64_t top = (h0 + i) * s - pt;
          const float* rows[9];
          for (int64_t ky = 0; ky < k; ++ky) {
            const int64_t r = top + ky;
            rows[ky] = (r < 0 || r >= H) ? zrow : ring + (r % S) * row_floats;
          }
          dw_fn(rows, wdw, bdw, dwc + i * Wo * Cp, Wo, Cp);
        }
        // 3. by mode
        if (mode == 0) {
          project(h0, r_n, dwc);
        } else if (mode == 1 || mode == 3 || mode == 4) {
          accumulate(dwc, r_n * Wo);
        } else {
          apply_gate(dwc, r_n * Wo);
          project(h0, r_n, dwc);
        }
      }
      if (mode == 1 || mode == 4) {
        std::copy(se_sum, se_sum + Cp, psum.begin() + (n * bands + band) * Cp);
      } else if (mode == 3) {
        excite(se_sum, se_gate, se_tmp);
        apply_gate(dwbuf, Ho * Wo);
        for (int64_t h0 = 0; h0 < Ho; h0 += R) project(h0, std::min(R, Ho - h0), dwbuf + h0 * Wo * Cp);
      }
    };
  };

  if (!has_se) {
    auto f = make_unit(0, calls.fetch_add(1) + 1);
    ::mnv2::cpu::parallel_units(N * bands, (int)nth, f);
  } else if (se_single) {
    auto f = make_unit(3, calls.fetch_add(1) + 1);
    ::mnv2::cpu::parallel_units(N, (int)nth, f);
  } else {
    struct FreeOnExit {
      float* p = nullptr;
      ~FreeOnExit() { std::free(p); }
    } shared_mem;
    if (se_shared) {
      shared_mem.p = static_cast<float*>(
          std::aligned_alloc(64, (size_t)round_up(N * Ho * Wo * Cp * (int64_t)sizeof(float), 64)));
      shared = shared_mem.p;  // nullptr (out of memory): the two passes below recompute instead
    }
    auto f1 = make_unit(shared ? 4 : 1, calls.fetch_add(1) + 1);
    ::mnv2::cpu::parallel_units(N * bands, (int)nth, f1);
    if (oom.load()) return false;
    // reduce the bands' partial sums; the excite MLP per image (tiny: 2 * Crd * Chid multiply-adds)
    float* tmp = static_cast<float*>(std::aligned_alloc(64, (size_t)round_up((Cp + l.Crdp) * 4, 64)));
    double* sum = static_cast<double*>(std::aligned_alloc(64, (size_t)round_up(Cp * 8, 64)));
    if (tmp == nullptr || sum == nullptr) {
      std::free(tmp);
      std::free(sum);
      return false;
    }
    for (int64_t n = 0; n < N; ++n) {
      std::fill(sum, sum + Cp, 0.0);
      for (int64_t b = 0; b < bands; ++b)
        for (int64_t c = 0; c < Cp; ++c) sum[c] += psum[(n * bands + b) * Cp + c];
      excite(sum, gates.data() + n * Cp, tmp);
    }
    std::free(tmp);
    std::free(sum);
    auto f2 = make_unit(shared ? 5 : 2, calls.fetch_add(1) + 1);
    ::mnv2::cpu::parallel_units(N * bands, (int)nth, f2);
  }
  return !oom.load();
}

bool ex_run(const void* x, const float* xf32, float* x1, void* out, DType dt, const ExDims& d, const float* packed,
            int nthreads) {
  const ExLayout l = ex_layout(d);
  if (d.k0) {
    const float* xs = dt == DType::F32 ? static_cast<const float*>(x) : xf32;
    dw_start_run(xs, x1, d, l, packed, nthreads);
    if (dt == DType::F32)
      return run_block_ex<float, float>(x1, static_cast<const float*>(x), static_cast<float*>(out), d, packed,
                                        nthreads);
    return run_block_ex<float, uint16_t>(x1, static_cast<const uint16_t*>(x), static_cast<uint16_t*>(out), d,
                                         packed, nthreads);
  }
  if (dt == DType::F32)
    return run_block_ex<float, float>(static_cast<const float*>(x), static_cast<const float*>(x),
                                      static_cast<float*>(out), d, packed, nthreads);
  return run_block_ex<uint16_t, uint16_t>(static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(x),
                                          static_cast<uint16_t*>(out), d, packed, nthreads);
}

}  // namespace
