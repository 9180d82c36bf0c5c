// Torch binding of the fused CPU kernel of mnv2::inverted_residual (see docs/CONTRACT.md for the op).
//
// The kernel itself is ISA specific and has no torch dependency: kernel_impl.h, compiled once per instruction
// set (kernel_avx2.cpp: AVX2 + FMA, kernel_avx512.cpp: AVX-512 F/BW/VL/DQ) with `#pragma GCC target`, so the
// build needs no -m<isa> flag. This file picks the variant at the first call (the widest the CPU supports;
// MNV2_CPU_ISA=avx2|avx512 overrides), validates the arguments, packs the weights (cached, see PackCache) and
// runs the kernel on the calling thread plus the kernel's own pool threads (thread_pool.cpp), as many in all
// as at::get_num_threads().
//
// Python side: torch.ops.mnv2.inverted_residual (CPU); torch.ops.mnv2.cpu_isa() and mnv2_kernels._C.cpu_isa()
// -> "avx2" | "avx512"; mnv2_kernels._C.set_cpu_isa(name) ("auto", "avx2", "avx512"; for tests and
// benchmarks); mnv2_kernels._C.clear_pack_cache().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <string>

#include "checks.h"
#include "cpu_kernel.h"

namespace mnv2 {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Instruction set, chosen at run time.
// ---------------------------------------------------------------------------------------------------------
const cpu::KernelTable* kernel_for(const std::string& name) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if ((name == "avx512" || name == "auto") && has_avx512 && cpu::avx512_kernel()) return cpu::avx512_kernel();
  if (name == "avx512") return nullptr;
  if ((name == "avx2" || name == "auto") && has_avx2 && cpu::avx2_kernel()) return cpu::avx2_kernel();
#endif
  (void)name;
  return nullptr;
}

std::atomic<const cpu::KernelTable*> g_kernel{nullptr};

const cpu::KernelTable* kernel() {
  const cpu::KernelTable* k = g_kernel.load(std::memory_order_acquire);
  if (k != nullptr) return k;
  const char* env = std::getenv("MNV2_CPU_ISA");
  const std::string want = (env && *env) ? env : "auto";
  TORCH_CHECK(want == "auto" || want == "avx2" || want == "avx512",
              "mnv2.inverted_residual: MNV2_CPU_ISA must be auto, avx2 or avx512, got '", want,
              "'; unset it to use the widest instruction set the CPU supports");
  k = kernel_for(want);
  TORCH_CHECK(k != nullptr, "mnv2.inverted_residual: the CPU kernel needs ",
              want == "auto" ? std::string("AVX2 and FMA (x86-64)") : want, ", which this CPU or build lacks",
              want == "auto" ? "; use backend='reference' on this machine" : "; unset MNV2_CPU_ISA");
  g_kernel.store(k, std::memory_order_release);
  return k;
}

std::string cpu_isa() { return kernel()->isa; }

// Selects the kernel variant ("auto", "avx2", "avx512"); returns the previous one's name.
std::string set_cpu_isa(const std::string& name) {
  TORCH_CHECK_VALUE(name == "auto" || name == "avx2" || name == "avx512",
                    "mnv2_kernels._C.set_cpu_isa: expected 'auto', 'avx2' or 'avx512', got '", name, "'");
  const std::string prev = kernel()->isa;
  const cpu::KernelTable* k = kernel_for(name);
  TORCH_CHECK(k != nullptr, "mnv2_kernels._C.set_cpu_isa: this CPU (or build) has no ", name,
              " support; call it with 'auto' or 'avx2'");
  g_kernel.store(k, std::memory_order_release);
  return prev;
}

// ---------------------------------------------------------------------------------------------------------
// Packed-weight cache: packing converts and transposes every weight (~10% of a batch-1 MobileNetV2 forward
// on one thread), so it is done once per set of weights. Key: for each weight tensor its TensorImpl (held
// by a weak reference, so that address cannot be reused by another tensor while the entry lives), data
// address and version counter; plus the shapes, dtype and kernel variant. Every in-place change PyTorch
// records (copy_, optimiser steps, load_state_dict) bumps the version and misses the cache. Tensors without
// a version counter (inference tensors) are never cached: they can change in place without a trace. Like
// the modules' folded-weight cache, writes through `.data` or numpy are not seen: call
// mnv2_kernels._C.clear_pack_cache() after them (MNV2_CPU_PACK_CACHE=0 turns the cache off).
// ---------------------------------------------------------------------------------------------------------
using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct WeightKey {
  const c10::TensorImpl* impl = nullptr;
  const void* data = nullptr;
  int64_t version = 0;
  bool operator==(const WeightKey& o) const { return impl == o.impl && data == o.data && version == o.version; }
};

// One cache per op family: NW weight tensors (undefined ones allowed) and ND integers describing the packing
// (kind, shapes, dtype, kernel variant). PackCache serves the MobileNetV2 block, the stem, head and dense
// layers (6 tensors); ExPackCache the generalised block (12 tensors).
template <size_t NW, size_t ND>
class PackCacheT {
 public:
  static constexpr size_t kNW = NW, kMaxEntries = 128;
  using Keys = std::array<WeightKey, NW>;
  using Dims = std::array<int64_t, ND>;

  // The packed form of the weight tensors ws (undefined ones allowed) for the packing described by dims,
  // from the cache or made by pack() (returns a 64-byte aligned float tensor).
  template <typename PackFn>
  at::Tensor get(const std::array<const at::Tensor*, NW>& ws, const Dims& dims, PackFn&& pack) {
    static const bool enabled = [] {
      const char* e = std::getenv("MNV2_CPU_PACK_CACHE");
      return !(e && std::strcmp(e, "0") == 0);
    }();
    bool cacheable = enabled;
    Keys keys{};
    for (size_t i = 0; i < NW && cacheable; ++i) {
      if (ws[i] == nullptr || !ws[i]->defined()) continue;
      const at::Tensor& t = *ws[i];
      if (t.is_inference()) {
        cacheable = false;
        break;
      }
      keys[i] = WeightKey{t.unsafeGetTensorImpl(), t.data_ptr(), (int64_t)t._version()};
    }
    if (cacheable) {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->keys == keys && it->dims == dims && alive(*it)) {
          entries_.splice(entries_.begin(), entries_, it);  // most recently used first
          return entries_.front().packed;
        }
      }
    }
    at::Tensor packed = pack();
    TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(packed.data_ptr()) % 64 == 0);
    if (cacheable) {
      Entry e;
      e.keys = keys;
      for (size_t i = 0; i < NW; ++i) {
        if (ws[i] != nullptr && ws[i]->defined()) e.refs[i].emplace(ws[i]->getIntrusivePtr());
      }
      e.dims = dims;
      e.packed = packed;
      std::lock_guard<std::mutex> lk(mu_);
      // Drop entries whose tensors are gone (e.g. refolded weights), then the least recently used.
      entries_.remove_if([](const Entry& x) { return !alive(x); });
      entries_.push_front(std::move(e));
      while (entries_.size() > kMaxEntries) entries_.pop_back();
    }
    return packed;
  }

  void clear() {
    std::lock_guard<std::mutex> lk(mu_);
    entries_.clear();
  }

 private:
  struct Entry {
    Keys keys;
    std::array<std::optional<WeakImpl>, NW> refs;
    Dims dims;
    at::Tensor packed;
  };
  static bool alive(const Entry& e) {
    for (const auto& r : e.refs) {
      if (r.has_value() && r->expired()) return false;
    }
    return true;
  }

  std::mutex mu_;
  std::list<Entry> entries_;
};
using PackCache = PackCacheT<6, 8>;
using ExPackCache = PackCacheT<12, 10>;

// A float buffer for packed weights (at::empty's CPU allocations are 64-byte aligned).
at::Tensor packed_buffer(int64_t floats) { return at::empty({floats}, at::TensorOptions().dtype(at::kFloat)); }

PackCache& pack_cache() {
  static PackCache* c = new PackCache();  // never destroyed (static destruction order vs. live tensors)
  return *c;
}

void clear_pack_cache() { pack_cache().clear(); }

// The packed weights of a block (w_expand, b_expand may be null), cached: the same entry serves
// inverted_residual and stem_inverted_residual.
at::Tensor block_packed(const cpu::KernelTable* k, const cpu::Dims& cd, cpu::DType dt,
                        const std::array<const at::Tensor*, 6>& ws) {
  return pack_cache().get(
      ws, {0, cd.Cin, cd.Chid, cd.Cout, cd.has_expand, (int64_t)dt, (int64_t)(intptr_t)k, 0}, [&] {
        std::array<at::Tensor, 6> c;
        for (int i = 0; i < 6; ++i) {
          if (ws[i] != nullptr && ws[i]->defined()) c[i] = ws[i]->contiguous();
        }
        at::Tensor p = packed_buffer(k->packed_floats(cd));
        const cpu::WeightPtrs w{c[0].defined() ? c[0].data_ptr() : nullptr,
                                c[1].defined() ? c[1].data_ptr() : nullptr, c[2].data_ptr(), c[3].data_ptr(),
                                c[4].data_ptr(), c[5].data_ptr()};
        k->pack(p.data_ptr<float>(), cd, dt, w);
        return p;
      });
}

// The packed weights of a dense 3x3 convolution (w [Cout, Cin, 3, 3], b [Cout] fp32), cached; element 0 is 0
// when a weight is not finite.
at::Tensor conv3x3_packed(const cpu::KernelTable* k, const at::Tensor& w, const at::Tensor& b, int64_t Cin,
                          int64_t Cout) {
  return pack_cache().get({&w, &b, nullptr, nullptr, nullptr, nullptr},
                          {1, Cin, Cout, 0, 0, 0, (int64_t)(intptr_t)k, 0}, [&] {
    const at::Tensor wc = w.contiguous(), bc = b.contiguous();
    at::Tensor p = packed_buffer(k->conv3x3_packed_floats(Cin, Cout));
    k->conv3x3_pack(p.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), Cin, Cout);
    return p;
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
  const cpu::KernelTable* k = kernel();
  const cpu::Dims cd{d.N, d.Cin, d.H, d.W, d.Chid, d.Cout, d.Ho, d.Wo, d.stride, d.has_expand, d.residual};
  const cpu::DType dt = x.scalar_type() == at::kFloat ? cpu::DType::F32 : cpu::DType::BF16;
  const at::Tensor packed = block_packed(k, cd, dt, {w_expand.has_value() ? &*w_expand : nullptr,
                                                      b_expand.has_value() ? &*b_expand : nullptr, &w_dw, &b_dw,
                                                      &w_project, &b_project});
  const bool ok = k->run(xc.data_ptr(), out.data_ptr(), dt, cd, packed.data_ptr<float>(), at::get_num_threads());
  TORCH_CHECK(ok, "mnv2.inverted_residual: out of memory allocating the CPU kernel's scratch buffers (about "
              "(stride*R+2)*(W+2)*Chid floats per thread); free memory or run fewer threads");
  return out_cl ? out : out.contiguous();
}


namespace {
void check_f32_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "mnv2.", op, ": ", name, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "mnv2.", op, ": ", name, " must be torch.float32, got ",
                   py_dtype_name(t.scalar_type()), "; use F.conv2d / F.linear for other dtypes");
}
}  // namespace

namespace {
// The arguments of a dense 3x3 convolution (padding 1) the kernel serves: x [N, Cin, H, W], w [Cout, Cin, 3, 3],
// b [Cout], float32 CPU, stride 1 or 2, conv3x3_supported(Cin, Cout). wn, bn, sn: the argument names in op.
void check_conv3x3_args(const char* op, const cpu::KernelTable* k, const at::Tensor& x, const at::Tensor& w,
                        const at::Tensor& b, int64_t stride, const char* wn, const char* bn, const char* sn) {
  check_f32_cpu(op, "x", x);
  check_f32_cpu(op, wn, w);
  check_f32_cpu(op, bn, b);
  TORCH_CHECK_VALUE(x.dim() == 4, "mnv2.", op, ": x must be [N, Cin, H, W], got ", x.sizes());
  const int64_t Cin = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(1) == Cin && w.size(2) == 3 && w.size(3) == 3, "mnv2.", op,
                    ": ", wn, " must be [Cout, ", Cin, ", 3, 3], got ", w.sizes());
  const int64_t Cout = w.size(0);
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == Cout, "mnv2.", op, ": ", bn, " must be [", Cout, "], got ",
                    b.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, "mnv2.", op, ": ", sn, " must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(H >= 1 && W >= 1, "mnv2.", op, ": x must have H, W >= 1, got ", x.sizes());
  TORCH_CHECK_VALUE(k->conv3x3_supported(Cin, Cout), "mnv2.", op, ": supports Cin <= 64 and Cout <= ",
                    8 * k->vec, " on ", k->isa, ", got ", Cin, " -> ", Cout, "; use F.conv2d");
}
}  // namespace

// mnv2::conv3x3_bias_act: y = act(conv2d(x, w, b, stride, padding=1)), act = ReLU6 or none (the stem of
// MobileNetV2). x [N, Cin, H, W] float32 CPU, w [Cout, Cin, 3, 3], b [Cout]; Cin <= 64, Cout <= 8 vectors
// (64 on AVX2, 128 on AVX-512). Returns [N, Cout, Ho, Wo] in x's memory format.
at::Tensor conv3x3_bias_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                                bool relu6) {
  const char* op = "conv3x3_bias_act";
  const cpu::KernelTable* k = kernel();
  check_conv3x3_args(op, k, x, w, b, stride, "w", "b", "stride");
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), Cout = w.size(0);
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const bool out_cl = wants_channels_last(x);
  at::Tensor out = at::empty({N, Cout, Ho, Wo}, x.options(), at::MemoryFormat::ChannelsLast);
  if (N == 0) return out_cl ? out : out.contiguous();
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor packed = conv3x3_packed(k, w, b, Cin, Cout);
  if (packed.data_ptr<float>()[0] == 0.f) {
    // A NaN/Inf weight: ATen's dense convolution multiplies the zero padding by the weights (0 * Inf = NaN)
    // where the kernel skips padding taps; let ATen compute it so that NaN/Inf come out where they would.
    at::Tensor y = at::conv2d(x, w, b, {stride, stride}, {1, 1});
    if (relu6) y.clamp_(0.0, 6.0);
    return y;
  }
  k->conv3x3_run(xc.data_ptr<float>(), out.data_ptr<float>(), N, H, W, Cin, Cout, stride, relu6,
                 packed.data_ptr<float>(), at::get_num_threads());
  return out_cl ? out : out.contiguous();
}

// mnv2::stem_inverted_residual: the stem convolution and the first block as one pass (issue 14),
//   h = act(conv2d(x, w_stem, b_stem, stem_stride, padding=1)), act = ReLU6 or none   [N, C1, H1, W1]
//   y = inverted_residual(h, None, None, w_dw, b_dw, w_project, b_project, stride, residual)
// without h ever in memory (the kernel computes its rows into the block's ring). x [N, Cin, H, W], w_stem
// [C1, Cin, 3, 3], b_stem [C1], w_dw [C1, 3, 3], b_dw [C1], w_project [Cout, C1], b_project [Cout]: float32 CPU
// tensors; the stem as conv3x3_bias_act allows. Returns [N, Cout, Ho, Wo] in x's memory format. With a
// non-finite stem weight the stem runs on ATen (as conv3x3_bias_act does) and the block on its own.
at::Tensor stem_inverted_residual_cpu(const at::Tensor& x, const at::Tensor& w_stem, const at::Tensor& b_stem,
                                      int64_t stem_stride, bool stem_relu6, const at::Tensor& w_dw,
                                      const at::Tensor& b_dw, const at::Tensor& w_project,
                                      const at::Tensor& b_project, int64_t stride, bool residual) {
  const char* op = "stem_inverted_residual";
  const cpu::KernelTable* k = kernel();
  check_conv3x3_args(op, k, x, w_stem, b_stem, stem_stride, "w_stem", "b_stem", "stem_stride");
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), C1 = w_stem.size(0);
  const int64_t H1 = (H - 1) / stem_stride + 1, W1 = (W - 1) / stem_stride + 1;
  TORCH_CHECK_VALUE(w_dw.dim() == 3 && w_dw.size(0) == C1, "mnv2.", op, ": w_dw must be [", C1,
                    ", 3, 3] (one depthwise filter per stem output channel; the block has no expand conv), got ",
                    w_dw.sizes());
  // The block's checks (the same errors as inverted_residual's, weights' device and dtype included), on the
  // shape of the stem's output (a float32 CPU tensor, as x is).
  const at::Tensor h_shape = at::empty({1}, x.options()).as_strided({N, C1, H1, W1}, {0, 0, 0, 0});
  const BlockDims d = check_inverted_residual_args(h_shape, c10::nullopt, c10::nullopt, w_dw, b_dw, w_project,
                                                   b_project, stride, residual);
  const at::Tensor ps = conv3x3_packed(k, w_stem, b_stem, Cin, C1);
  if (ps.data_ptr<float>()[0] == 0.f) {  // a NaN/Inf stem weight: see conv3x3_bias_act_cpu
    return inverted_residual_cpu(conv3x3_bias_act_cpu(x, w_stem, b_stem, stem_stride, stem_relu6), c10::nullopt,
                                 c10::nullopt, w_dw, b_dw, w_project, b_project, stride, residual);
  }
  const bool out_cl = wants_channels_last(x);
  at::Tensor out = at::empty({d.N, d.Cout, d.Ho, d.Wo}, x.options(), at::MemoryFormat::ChannelsLast);
  if (N == 0) return out_cl ? out : out.contiguous();
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);  // NHWC [N, H, W, Cin]
  const cpu::Dims cd{d.N, d.Cin, d.H, d.W, d.Chid, d.Cout, d.Ho, d.Wo, d.stride, false, d.residual};
  const at::Tensor pb = block_packed(k, cd, cpu::DType::F32, {nullptr, nullptr, &w_dw, &b_dw, &w_project,
                                                              &b_project});
  const cpu::StemArgs st{ps.data_ptr<float>(), H, W, Cin, stem_stride, stem_relu6};
  const bool ok = k->run_stem(xc.data_ptr<float>(), out.data_ptr<float>(), cd, pb.data_ptr<float>(), st,
                              at::get_num_threads());
  TORCH_CHECK(ok, "mnv2.", op, ": out of memory allocating the CPU kernel's scratch buffers (about "
              "(stride*R+2)*(W1+2)*C1 floats per thread); free memory or run fewer threads");
  return out_cl ? out : out.contiguous();
}

// mnv2::dense_bias_act: y = act(x . w^T + b), act = ReLU6 or none: a 1x1 convolution when x is
// [N, K, H, W] (returns [N, Ncols, H, W] in x's memory format), nn.Linear when x is [M, K] (returns
// [M, Ncols]). w [Ncols, K] (or [Ncols, K, 1, 1]), b [Ncols]; float32 CPU tensors.
at::Tensor dense_bias_act_cpu(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b, bool relu6) {
  const char* op = "dense_bias_act";
  check_f32_cpu(op, "x", x);
  check_f32_cpu(op, "w", w_in);
  check_f32_cpu(op, "b", b);
  TORCH_CHECK_VALUE(x.dim() == 4 || x.dim() == 2, "mnv2.", op, ": x must be [N, K, H, W] or [M, K], got ",
                    x.sizes());
  const int64_t K = x.size(1);
  TORCH_CHECK_VALUE((w_in.dim() == 2 || (w_in.dim() == 4 && w_in.size(2) == 1 && w_in.size(3) == 1)) &&
                        w_in.size(1) == K,
                    "mnv2.", op, ": w must be [Ncols, ", K, "] (or [Ncols, ", K, ", 1, 1]), got ", w_in.sizes());
  const at::Tensor& w = w_in;
  const int64_t Ncols = w.size(0);
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == Ncols, "mnv2.", op, ": b must be [", Ncols, "], got ",
                    b.sizes());
  const cpu::KernelTable* k = kernel();
  at::Tensor out, xc;
  int64_t M;
  bool out_cl = false;
  if (x.dim() == 4) {
    out_cl = wants_channels_last(x);
    out = at::empty({x.size(0), Ncols, x.size(2), x.size(3)}, x.options(), at::MemoryFormat::ChannelsLast);
    xc = x.contiguous(at::MemoryFormat::ChannelsLast);
    M = x.size(0) * x.size(2) * x.size(3);
  } else {
    out = at::empty({x.size(0), Ncols}, x.options());
    xc = x.contiguous();
    M = x.size(0);
  }
  if (M == 0) return out_cl || x.dim() == 2 ? out : out.contiguous();
  const at::Tensor packed = pack_cache().get({&w, &b, nullptr, nullptr, nullptr, nullptr},
                                             {2, K, Ncols, 0, 0, 0, (int64_t)(intptr_t)k, 0}, [&] {
    const at::Tensor wc = w.contiguous(), bc = b.contiguous();
    at::Tensor p = packed_buffer(k->dense_packed_floats(K, Ncols));
    k->dense_pack(p.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), K, Ncols);
    return p;
  });
  k->dense_run(xc.data_ptr<float>(), out.data_ptr<float>(), M, K, Ncols, relu6, packed.data_ptr<float>(),
               at::get_num_threads());
  return out_cl || x.dim() == 2 ? out : out.contiguous();
}

// mnv2::dense_relu6_mean: y[n, c] = mean_{h,w} relu6(conv1x1(x, w, b))[n, c, h, w], the head of MobileNetV2
// and its global average pool in one pass (the [N, Ncols, H, W] map is never stored). x [N, K, H, W],
// w [Ncols, K] (or [Ncols, K, 1, 1]), b [Ncols]; float32 CPU. Returns [N, Ncols].
at::Tensor dense_relu6_mean_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const char* op = "dense_relu6_mean";
  check_f32_cpu(op, "x", x);
  check_f32_cpu(op, "w", w);
  check_f32_cpu(op, "b", b);
  TORCH_CHECK_VALUE(x.dim() == 4, "mnv2.", op, ": x must be [N, K, H, W], got ", x.sizes());
  const int64_t N = x.size(0), K = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK_VALUE((w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) && w.size(1) == K,
                    "mnv2.", op, ": w must be [Ncols, ", K, "] (or [Ncols, ", K, ", 1, 1]), got ", w.sizes());
  const int64_t Ncols = w.size(0);
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == Ncols, "mnv2.", op, ": b must be [", Ncols, "], got ",
                    b.sizes());
  TORCH_CHECK_VALUE(HW >= 1, "mnv2.", op, ": x must have H, W >= 1, got ", x.sizes());
  at::Tensor out = at::empty({N, Ncols}, x.options());
  if (N == 0) return out;
  const cpu::KernelTable* k = kernel();
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor packed = pack_cache().get({&w, &b, nullptr, nullptr, nullptr, nullptr},
                                             {2, K, Ncols, 0, 0, 0, (int64_t)(intptr_t)k, 0}, [&] {
    const at::Tensor wc = w.contiguous(), bc = b.contiguous();
    at::Tensor p = packed_buffer(k->dense_packed_floats(K, Ncols));
    k->dense_pack(p.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), K, Ncols);
    return p;
  });
  const bool ok = k->dense_relu6_mean_run(xc.data_ptr<float>(), out.data_ptr<float>(), N, HW, K, Ncols,
                                          packed.data_ptr<float>(), at::get_num_threads());
  TORCH_CHECK(ok, "mnv2.", op, ": out of memory allocating scratch (H*W*96 floats per thread)");
  return out;
}


// =========================================================================================================
// The generalised block (issue 13): mnv2_kernels._C.inverted_residual_ex_cpu, called by the Python CPU
// implementation of torch.ops.mnv2.inverted_residual_ex (mnv2_kernels/cpu_ex.py, which validates the arguments
// with ops.check_inverted_residual_ex_args first, so the errors are the op's own). The kernel:
// csrc/cpu/kernel_ex_impl.h.
// =========================================================================================================
namespace {

// Squeeze-excite: one image's depthwise output stays in thread scratch (single pass) up to this many bytes,
// else two passes (recomputing expand + depthwise costs more than a scratch that spills from L2 to L3: on
// a Xeon with 2 MiB L2 per core, EfficientNet-B0's 56x56x144 block (1.8 MB) ran 2.1 ms single-pass vs
// 3.2 ms two-pass, one thread). MNV2_CPU_SE_SCRATCH_BYTES sets it at the first call; set_se_scratch_bytes for tests.
std::atomic<int64_t> g_se_scratch_bytes{-1};
int64_t se_scratch_bytes() {
  int64_t v = g_se_scratch_bytes.load();
  if (v < 0) {
    const char* e = std::getenv("MNV2_CPU_SE_SCRATCH_BYTES");
    v = (e && *e) ? std::atoll(e) : (int64_t)4 << 20;  // 4 MiB: measured (docs/cpu_runtime.md, issue 13)
    g_se_scratch_bytes.store(v);
  }
  return v;
}
int64_t set_se_scratch_bytes(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "mnv2_kernels._C.set_se_scratch_bytes: expected bytes >= 0, got ", bytes);
  const int64_t prev = se_scratch_bytes();
  g_se_scratch_bytes.store(bytes);
  return prev;
}

const cpu::ExKernelTable* ex_kernel() {
  const cpu::KernelTable* k = kernel();
  const cpu::ExKernelTable* e = std::strcmp(k->isa, "avx512") == 0 ? cpu::avx512_ex_kernel() : cpu::avx2_ex_kernel();
  TORCH_CHECK(e != nullptr, "mnv2.inverted_residual_ex: the CPU kernel for ", k->isa, " is not built");
  return e;
}

ExPackCache& ex_pack_cache() {
  static ExPackCache* c = new ExPackCache();
  return *c;
}

void clear_ex_pack_cache() { ex_pack_cache().clear(); }

// TensorFlow "SAME" padding before the data along an axis of size n (reference.tf_same_pads).
int64_t tf_same_before(int64_t n, int64_t k, int64_t s) {
  const int64_t total = std::max<int64_t>(((n + s - 1) / s - 1) * s + k - n, 0);
  return total / 2;
}

const at::Tensor* opt_ptr(const c10::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

}  // namespace

// The CPU kernel of mnv2::inverted_residual_ex for float32 / bfloat16 CPU tensors whose arguments the caller
// has validated (ops.check_inverted_residual_ex_args). Activation arguments are ExAct codes (cpu_kernel.h).
// Returns None (c10::nullopt) when a depthwise weight is not finite: the caller then runs the reference, whose
// zero padding multiplies those weights (0 * Inf = NaN at the borders) where the kernel's padding would not.
c10::optional<at::Tensor> inverted_residual_ex_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& w_expand, const c10::optional<at::Tensor>& b_expand,
    const at::Tensor& w_dw, const at::Tensor& b_dw, const c10::optional<at::Tensor>& w_se_reduce,
    const c10::optional<at::Tensor>& b_se_reduce, const c10::optional<at::Tensor>& w_se_expand,
    const c10::optional<at::Tensor>& b_se_expand, const at::Tensor& w_project, const at::Tensor& b_project,
    int64_t stride, bool residual, int64_t act_expand, int64_t act_dw, bool tf_same, int64_t se_act,
    int64_t se_gate, int64_t act_project, const c10::optional<at::Tensor>& w_dw_start,
    const c10::optional<at::Tensor>& b_dw_start, int64_t stride_start) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "mnv2.inverted_residual_ex: the CPU kernel takes a 4-D float32 or bfloat16 CPU x (validate with "
              "ops.check_inverted_residual_ex_args first), got ", x.sizes(), " ", x.scalar_type(), " on ", x.device());
  cpu::ExDims d{};
  d.N = x.size(0);
  d.Cin = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  d.k0 = w_dw_start.has_value() ? w_dw_start->size(-1) : 0;
  d.stride0 = d.k0 ? stride_start : 1;
  d.pt0 = d.k0 ? (tf_same ? tf_same_before(d.H, d.k0, d.stride0) : d.k0 / 2) : 0;
  d.pl0 = d.k0 ? (tf_same ? tf_same_before(d.W, d.k0, d.stride0) : d.k0 / 2) : 0;
  d.H1 = d.k0 ? (d.H - 1) / d.stride0 + 1 : d.H;
  d.W1 = d.k0 ? (d.W - 1) / d.stride0 + 1 : d.W;
  d.Chid = w_dw.size(0);
  d.k = w_dw.size(-1);
  d.Crd = w_se_reduce.has_value() ? w_se_reduce->size(0) : 0;
  d.Cout = w_project.size(0);
  d.stride = stride;
  d.Ho = (d.H1 - 1) / stride + 1;
  d.Wo = (d.W1 - 1) / stride + 1;
  d.pt = tf_same ? tf_same_before(d.H1, d.k, stride) : d.k / 2;
  d.pl = tf_same ? tf_same_before(d.W1, d.k, stride) : d.k / 2;
  d.has_expand = w_expand.has_value();
  d.residual = residual;
  d.act_expand = (int)act_expand;
  d.act_dw = (int)act_dw;
  d.se_act = (int)se_act;
  d.se_gate = (int)se_gate;
  d.act_project = (int)act_project;
  d.se_scratch_bytes = se_scratch_bytes();

  const bool out_cl = wants_channels_last(x);
  at::Tensor out = at::empty({d.N, d.Cout, d.Ho, d.Wo}, x.options(), at::MemoryFormat::ChannelsLast);
  if (d.N == 0) return out_cl ? out : out.contiguous();

  const cpu::ExKernelTable* k = ex_kernel();
  const cpu::DType dt = x.scalar_type() == at::kFloat ? cpu::DType::F32 : cpu::DType::BF16;
  const std::array<const at::Tensor*, ExPackCache::kNW> ws{
      opt_ptr(w_expand), opt_ptr(b_expand), &w_dw, &b_dw, opt_ptr(w_se_reduce), opt_ptr(b_se_reduce),
      opt_ptr(w_se_expand), opt_ptr(b_se_expand), &w_project, &b_project, opt_ptr(w_dw_start), opt_ptr(b_dw_start)};
  const at::Tensor packed = ex_pack_cache().get(
      ws, {d.Cin, d.Chid, d.Crd, d.Cout, d.k, d.k0, d.has_expand, (int64_t)dt, (int64_t)(intptr_t)k, 0}, [&] {
        std::array<at::Tensor, ExPackCache::kNW> c;
        std::array<const void*, ExPackCache::kNW> p{};
        for (size_t i = 0; i < ExPackCache::kNW; ++i) {
          if (ws[i] != nullptr && ws[i]->defined()) {
            c[i] = ws[i]->contiguous();
            p[i] = c[i].data_ptr();
          }
        }
        at::Tensor buf = packed_buffer(k->packed_floats(d));
        const cpu::ExWeightPtrs w{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]};
        k->pack(buf.data_ptr<float>(), d, dt, w);
        return buf;
      });
  if (packed.data_ptr<float>()[0] == 0.f) return c10::nullopt;  // a non-finite depthwise weight

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);  // NHWC buffer [N, H, W, Cin]
  at::Tensor xf32, x1;
  if (d.k0) {
    x1 = at::empty({d.N * d.H1 * d.W1 * d.Cin}, x.options().dtype(at::kFloat));
    if (dt == cpu::DType::BF16) xf32 = xc.to(at::kFloat);
  }
  const bool ok = k->run(xc.data_ptr(), xf32.defined() ? xf32.data_ptr<float>() : nullptr,
                         x1.defined() ? x1.data_ptr<float>() : nullptr, out.data_ptr(), dt, d,
                         packed.data_ptr<float>(), at::get_num_threads());
  TORCH_CHECK(ok, "mnv2.inverted_residual_ex: out of memory allocating the CPU kernel's scratch buffers (about "
              "(stride*R+k)*(W+k)*Chid floats per thread, plus Ho*Wo*Chid with squeeze-excite in scratch); free "
              "memory, run fewer threads or lower mnv2_kernels._C.set_se_scratch_bytes");
  return out_cl ? out : out.contiguous();
}

}  // namespace mnv2

TORCH_LIBRARY_IMPL(mnv2, CPU, m) {
  m.impl("inverted_residual", &mnv2::inverted_residual_cpu);
  m.impl("conv3x3_bias_act", &mnv2::conv3x3_bias_act_cpu);
  m.impl("dense_bias_act", &mnv2::dense_bias_act_cpu);
  m.impl("dense_relu6_mean", &mnv2::dense_relu6_mean_cpu);
  m.impl("stem_inverted_residual", &mnv2::stem_inverted_residual_cpu);
}

// torch.ops.mnv2.cpu_isa() -> str: the same as mnv2_kernels._C.cpu_isa().
// The stem / head ops of mnv2_kernels/stem_head.py (CPU only; fakes registered there).
TORCH_LIBRARY_FRAGMENT(mnv2, m) {
  m.def("cpu_isa() -> str", &mnv2::cpu_isa);
  m.def("conv3x3_bias_act(Tensor x, Tensor w, Tensor b, int stride, bool relu6) -> Tensor");
  m.def("dense_bias_act(Tensor x, Tensor w, Tensor b, bool relu6) -> Tensor");
  m.def("dense_relu6_mean(Tensor x, Tensor w, Tensor b) -> Tensor");
  m.def("stem_inverted_residual(Tensor x, Tensor w_stem, Tensor b_stem, int stem_stride, bool stem_relu6, "
        "Tensor w_dw, Tensor b_dw, Tensor w_project, Tensor b_project, int stride, bool residual) -> Tensor");
}

// `import mnv2_kernels._C` loads the library (and the registrations above); it also exposes the ISA choice.
namespace mnv2 {
void register_fast_path(pybind11::module& m);  // fast_path.cpp: the fused modules' per-call fast path
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  mnv2::register_fast_path(m);
  m.def("cpu_isa", &mnv2::cpu_isa, "The instruction set the CPU kernel runs with: 'avx2' or 'avx512'.");
  m.def("set_cpu_isa", &mnv2::set_cpu_isa, pybind11::arg("name"),
        "Selects the CPU kernel variant ('auto', 'avx2', 'avx512'); returns the previous one's name. Raises "
        "RuntimeError when the CPU or the build lacks it.");
  m.def("inverted_residual_ex_cpu", &mnv2::inverted_residual_ex_cpu,
        "The generalised block's CPU kernel on validated float32/bfloat16 arguments (mnv2_kernels/cpu_ex.py); "
        "None when a depthwise weight is not finite (the caller runs the reference).");
  m.def("set_se_scratch_bytes", &mnv2::set_se_scratch_bytes, pybind11::arg("bytes"),
        "Squeeze-excite blocks: one image's depthwise output stays in thread scratch (single pass) up to this many "
        "bytes (default 4 MiB, MNV2_CPU_SE_SCRATCH_BYTES), else two passes; returns the previous value.");
  m.def("set_split_max_pixels", &mnv2::cpu::set_split_max_pixels, pybind11::arg("pixels"),
        "Blocks whose input has at most this many pixels (H*W), with fewer images than threads, run split by "
        "channels in two phases instead of row bands (default 49, MNV2_CPU_SPLIT_PIXELS; 0: never); returns the "
        "previous value.");
  m.def("clear_ex_pack_cache", &mnv2::clear_ex_pack_cache,
        "Drops the generalised block's cached packed weights (clear_pack_cache drops them too).");
  m.def("clear_pack_cache", [] { mnv2::clear_pack_cache(); mnv2::clear_ex_pack_cache(); },
        "Drops the CPU kernel's cached packed weights (after weight writes PyTorch does not record: .data, numpy).");
}
