// CUDA kernel of mnv2::inverted_residual (schema defined in Python, mnv2_kernels/ops.py; docs/CONTRACT.md).
// Thin binding: validate, NHWC, allocate, launch (inverted_residual_cuda.cu), return in x's memory format.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/python.h>  // at::Tensor <-> Python for _pack_k32

#include <cstdint>
#include <string>

#include "checks.h"
#include "inverted_residual_cuda.cuh"

namespace {

int64_t round8(int64_t c) { return (c + 7) / 8 * 8; }

// t itself when its data is 16-byte aligned (the kernel's vector loads), else an aligned copy.
at::Tensor aligned(const at::Tensor& t, at::MemoryFormat fmt = at::MemoryFormat::Contiguous) {
  if ((reinterpret_cast<uintptr_t>(t.data_ptr()) & 15u) == 0) return t;
  return t.clone(fmt);
}

// w [R, C] -> [R, C32] (C32 = C rounded up to 32, zero columns appended), each 32-column block permuted so that
// column 8q + 4s + 2h + e holds old column 16s + 8h + 2q + e: thread q of an mma quad then finds its B fragments
// of both k16 steps of the block (k = 2q, 2q+1, 2q+8, 2q+9, each + 16s) in one 16-byte vector. Mirrored by
// mnv2_kernels/cuda_plan.pack_k32.
at::Tensor pack_k32(const at::Tensor& w) {
  const int64_t rows = w.size(0), cols = w.size(1), c32 = (cols + 31) / 32 * 32;
  at::Tensor p = cols == c32 ? w.contiguous() : at::constant_pad_nd(w.contiguous(), {0, c32 - cols});
  return p.view({rows, c32 / 32, 2, 2, 4, 2}).permute({0, 1, 4, 2, 3, 5}).contiguous().view({rows, c32});
}

at::Tensor inverted_residual_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& w_expand,
                                  const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                  const at::Tensor& b_dw, const at::Tensor& w_project, const at::Tensor& b_project,
                                  int64_t stride, bool residual) {
  const mnv2::BlockDims d =
      mnv2::check_inverted_residual_args(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual);
  TORCH_CHECK(x.is_cuda(), "mnv2.inverted_residual: the CUDA kernel needs x on a CUDA device, got x on ",
              x.device());
  const at::ScalarType st = x.scalar_type();
  // The dtypes this kernel serves; mnv2_kernels/backends.py (the "cuda" row) lists the same ones.
  mnv2::check_kernel_dtype("CUDA", x, {at::kHalf, at::kBFloat16});
  TORCH_CHECK_VALUE(d.Cin >= 1 && d.Chid >= 1,
                    "mnv2.inverted_residual: the CUDA kernel needs at least one input and one hidden channel, got ",
                    d.Cin, " input and ", d.Chid, " hidden channels");

  const c10::cuda::CUDAGuard guard(x.device());
  const auto out_format = mnv2::wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (d.N == 0 || d.Cout == 0)
    return at::empty({d.N, d.Cout, d.Ho, d.Wo}, x.options().memory_format(out_format));

  // The kernel takes channel counts that are multiples of 8 (16-byte vectors): odd counts are zero-padded here
  // (the kernel forces padded hidden channels to 0, so a NaN cannot leak through them) and the output sliced.
  const int64_t cin8 = round8(d.Cin), chid8 = d.has_expand ? round8(d.Chid) : cin8, cout8 = round8(d.Cout);
  TORCH_CHECK(d.H * d.W <= int64_t(INT32_MAX), "mnv2.inverted_residual: the CUDA kernel indexes the pixels of one ",
              "image with 32-bit integers, got a ", d.H, "x", d.W, " image (more than 2^31 - 1 pixels); use ",
              "backend='triton' or split the image");
  const auto* props = at::cuda::getCurrentDeviceProperties();
  mnv2_ir_plan plan;
  mnv2_ir_cuda_plan(d.N, cin8, chid8, cout8, d.H, d.W, int(stride), d.has_expand ? 1 : 0,
                    int64_t(props->sharedMemPerBlockOptin), props->multiProcessorCount, &plan);
  TORCH_CHECK(plan.ok, "mnv2.inverted_residual: the CUDA kernel cannot run a block with ", d.Cin, " -> ", d.Chid,
              " -> ", d.Cout, " channels, stride ", stride, ", on ", d.H, "x", d.W, " images: even one image row of ",
              d.W, " pixels needs more than the ", props->sharedMemPerBlockOptin, " bytes of shared memory per CTA of ",
              x.device(), "; use backend='triton' for this block");

  at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  if (cin8 != d.Cin)
    xc = at::constant_pad_nd(xc, {0, 0, 0, 0, 0, cin8 - d.Cin}).contiguous(at::MemoryFormat::ChannelsLast);
  xc = aligned(xc, at::MemoryFormat::ChannelsLast);
  at::Tensor we, be;
  if (d.has_expand) {
    we = aligned(pack_k32(at::constant_pad_nd(w_expand->contiguous(), {0, cin8 - d.Cin, 0, chid8 - d.Chid})));
    be = aligned(at::constant_pad_nd(b_expand->contiguous(), {0, chid8 - d.Chid}));
  }
  const at::Tensor wdw = aligned(at::constant_pad_nd(w_dw.reshape({d.Chid, 9}), {0, 0, 0, chid8 - d.Chid}));
  const at::Tensor bdw = aligned(at::constant_pad_nd(b_dw.contiguous(), {0, chid8 - d.Chid}));
  const at::Tensor wp =
      aligned(pack_k32(at::constant_pad_nd(w_project.contiguous(), {0, chid8 - d.Chid, 0, cout8 - d.Cout})));
  const at::Tensor bp = aligned(at::constant_pad_nd(b_project.contiguous(), {0, cout8 - d.Cout}));
  at::Tensor y = at::empty({d.N, cout8, d.Ho, d.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));

  const cudaError_t err = mnv2_ir_cuda_launch(
      st == at::kHalf ? MNV2_DTYPE_FLOAT16 : MNV2_DTYPE_BFLOAT16, xc.data_ptr(),
      d.has_expand ? we.data_ptr() : nullptr, d.has_expand ? be.data_ptr() : nullptr, wdw.data_ptr(),
      bdw.data_ptr(), wp.data_ptr(), bp.data_ptr(), y.data_ptr(), d.N, cin8, d.H, d.W, chid8, d.Chid, cout8,
      int(stride), residual ? 1 : 0, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "mnv2.inverted_residual: the CUDA kernel failed for a block with ", d.Cin, " -> ",
              d.Chid, " -> ", d.Cout, " channels, stride ", stride, ", input ", x.sizes(), " ",
              mnv2::py_dtype_name(st), " on ", x.device(), ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
              ")");
  if (cout8 != d.Cout) y = y.narrow(1, 0, d.Cout);
  return y.contiguous(out_format);
}

// ---------------------------------------------------------------------------------------------------------
// mnv2::inverted_residual_ex (docs/CONTRACT.md "The generalised block"): validation as ops.py's
// check_inverted_residual_ex_args (same words, same exception types), then the leading depthwise (if any) and the
// ring kernel with its options (inverted_residual_cuda.cuh, mnv2_ir_cuda_launch_ex).

#define EX_PREFIX "mnv2.inverted_residual_ex: "

int act_code(c10::string_view name, const char* arg, bool gate) {
  static const char* const acts[] = {"relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none"};
  const std::string s(name.data(), name.size());
  if (gate) {
    if (s == "sigmoid") return MNV2_GATE_SIGMOID;
    if (s == "hardsigmoid") return MNV2_GATE_HARDSIGMOID;
    TORCH_CHECK_VALUE(false, EX_PREFIX, arg, " must be one of sigmoid, hardsigmoid, got '", s, "'");
  }
  for (int i = 0; i < 7; ++i)
    if (s == acts[i]) return i;  // the order of mnv2_act
  TORCH_CHECK_VALUE(false, EX_PREFIX, arg, " must be one of relu6, relu, hardswish, silu, gelu, gelu_tanh, none, got '",
                    s, "'");
  return 0;
}

bool odd_kernel(int64_t k) { return k == 1 || k == 3 || k == 5 || k == 7 || k == 9; }

// Padding before / after along one axis (reference.tf_same_pads for TF "same"; k / 2 each side otherwise).
std::pair<int, int> axis_pads(int64_t size, int64_t k, int64_t s, bool tf_same) {
  if (!tf_same) return {int(k / 2), int(k / 2)};
  int64_t total = ((size + s - 1) / s - 1) * s + k - size;
  if (total < 0) total = 0;
  return {int(total / 2), int(total - total / 2)};
}

void ex_check(const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == shape, EX_PREFIX, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == x.device(), EX_PREFIX, name, " is on ", t.device(), " but x is on ", x.device(),
                    "; move the module with .to(x.device)");
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), EX_PREFIX, name, " is ", mnv2::py_dtype_name(t.scalar_type()),
                   " but x is ", mnv2::py_dtype_name(x.scalar_type()), "; call .to(",
                   mnv2::py_dtype_name(x.scalar_type()), ") on the module");
}

bool given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// [C, k, k] -> [C8, k*k] (zero rows for the padded channels), 16-byte aligned.
at::Tensor dw_weights(const at::Tensor& w, int64_t c8) {
  const int64_t c = w.size(0), kk = w.size(1) * w.size(2);
  return aligned(at::constant_pad_nd(w.reshape({c, kk}).contiguous(), {0, 0, 0, c8 - c}));
}

at::Tensor pad_vec(const at::Tensor& b, int64_t n8) {
  return aligned(at::constant_pad_nd(b.contiguous(), {0, n8 - b.size(0)}));
}

at::Tensor ex_act(const at::Tensor& t, int code) {
  switch (code) {
    case MNV2_ACT_RELU6: return at::clamp(t, 0.0, 6.0);
    case MNV2_ACT_RELU: return at::relu(t);
    case MNV2_ACT_HARDSWISH: return at::hardswish(t);
    case MNV2_ACT_SILU: return at::silu(t);
    case MNV2_ACT_GELU: return at::gelu(t);
    case MNV2_ACT_GELU_TANH: return at::gelu(t, "tanh");
    case MNV2_GATE_SIGMOID: return at::sigmoid(t);
    case MNV2_GATE_HARDSIGMOID: return at::hardsigmoid(t);
    default: return t;
  }
}

at::Tensor ex_depthwise(const at::Tensor& h, const at::Tensor& w, const at::Tensor& b, int64_t s, bool tf) {
  const int64_t k = w.size(-1);
  const auto ph = axis_pads(h.size(2), k, s, tf), pw = axis_pads(h.size(3), k, s, tf);
  const at::Tensor hp = at::constant_pad_nd(h, {pw.first, pw.second, ph.first, ph.second});
  const int64_t st[2] = {s, s}, zero[2] = {0, 0}, one[2] = {1, 1};
  return at::conv2d(hp, w.unsqueeze(1), b, at::IntArrayRef(st, 2), at::IntArrayRef(zero, 2), at::IntArrayRef(one, 2),
                    w.size(0));
}

// The block with ATen ops (reference.inverted_residual_ex_reference, op for op) for what the kernel does not serve:
// float32 / float64 CUDA tensors, shapes whose image row does not fit shared memory. Inputs validated.
at::Tensor ex_reference_aten(const at::Tensor& x, const c10::optional<at::Tensor>& w_expand,
                             const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                             const c10::optional<at::Tensor>& w_se_reduce, const c10::optional<at::Tensor>& b_se_reduce,
                             const c10::optional<at::Tensor>& w_se_expand, const c10::optional<at::Tensor>& b_se_expand,
                             const at::Tensor& w_project, const at::Tensor& b_project, int64_t stride, bool residual,
                             int a_exp, int a_dw, bool tf, int a_se, int a_gate, int a_proj,
                             const c10::optional<at::Tensor>& w_dw_start, const c10::optional<at::Tensor>& b_dw_start,
                             int64_t stride_start) {
  at::Tensor h = x;
  if (given(w_dw_start)) h = ex_depthwise(h, *w_dw_start, *b_dw_start, stride_start, tf);
  if (given(w_expand)) h = ex_act(at::conv2d(h, w_expand->unsqueeze(-1).unsqueeze(-1), *b_expand), a_exp);
  h = ex_act(ex_depthwise(h, w_dw, b_dw, stride, tf), a_dw);
  if (given(w_se_reduce)) {
    at::Tensor sq = h.mean({2, 3}, true);
    sq = ex_act(at::conv2d(sq, w_se_reduce->unsqueeze(-1).unsqueeze(-1), *b_se_reduce), a_se);
    sq = ex_act(at::conv2d(sq, w_se_expand->unsqueeze(-1).unsqueeze(-1), *b_se_expand), a_gate);
    h = h * sq;
  }
  at::Tensor y = ex_act(at::conv2d(h, w_project.unsqueeze(-1).unsqueeze(-1), b_project), a_proj);
  if (residual) y = y + x;
  return y.contiguous(mnv2::wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

at::Tensor inverted_residual_ex_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& w_expand,
                                     const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                     const at::Tensor& b_dw, const c10::optional<at::Tensor>& w_se_reduce,
                                     const c10::optional<at::Tensor>& b_se_reduce,
                                     const c10::optional<at::Tensor>& w_se_expand,
                                     const c10::optional<at::Tensor>& b_se_expand, const at::Tensor& w_project,
                                     const at::Tensor& b_project, int64_t stride, bool residual,
                                     c10::string_view act_expand, c10::string_view act_dw, c10::string_view padding,
                                     c10::string_view se_act, c10::string_view se_gate, c10::string_view act_project,
                                     const c10::optional<at::Tensor>& w_dw_start,
                                     const c10::optional<at::Tensor>& b_dw_start, int64_t stride_start) {
  // ---- validation (ops.check_inverted_residual_ex_args, in its order)
  TORCH_CHECK_VALUE(x.dim() == 4, EX_PREFIX, "x must be a 4-D (N, C, H, W) tensor, got ", x.dim(), "-D");
  mnv2::check_x_dtype(x);
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(w_dw.dim() == 3 && w_dw.size(1) == w_dw.size(2) && odd_kernel(w_dw.size(1)), EX_PREFIX,
                    "w_dw must be [Chid, k, k] with k in (1, 3, 5, 7, 9), got ", w_dw.sizes());
  const int64_t Chid = w_dw.size(0), K = w_dw.size(1);
  TORCH_CHECK_VALUE(w_project.dim() == 2, EX_PREFIX, "w_project must have shape [Cout, ", Chid, "], got ",
                    w_project.sizes());
  const int64_t Cout = w_project.size(0);
  const bool has_expand = given(w_expand);
  TORCH_CHECK_VALUE(has_expand == given(b_expand), EX_PREFIX, "w_expand and b_expand must both be given or both be None");
  TORCH_CHECK_VALUE(has_expand || Chid == Cin, EX_PREFIX, "block expects ", Chid, " input channels (no expand conv), got ",
                    Cin);
  const int n_se = int(given(w_se_reduce)) + int(given(b_se_reduce)) + int(given(w_se_expand)) + int(given(b_se_expand));
  TORCH_CHECK_VALUE(n_se == 0 || n_se == 4, EX_PREFIX,
                    "the squeeze-excite tensors (w_se_reduce, b_se_reduce, w_se_expand, b_se_expand) must all be given "
                    "or all be None");
  const bool se = n_se == 4;
  const bool has_start = given(w_dw_start);
  TORCH_CHECK_VALUE(has_start == given(b_dw_start), EX_PREFIX,
                    "w_dw_start and b_dw_start must both be given or both be None");
  int64_t H1 = H, W1 = W, K0 = 0;
  if (has_start) {
    K0 = w_dw_start->size(-1);
    TORCH_CHECK_VALUE(odd_kernel(K0), EX_PREFIX, "w_dw_start must be [Cin, k, k] with k in (1, 3, 5, 7, 9), got ",
                      w_dw_start->sizes());
    TORCH_CHECK_VALUE(stride_start == 1 || stride_start == 2, EX_PREFIX, "stride_start must be 1 or 2, got ",
                      stride_start);
    H1 = (H - 1) / stride_start + 1;
    W1 = (W - 1) / stride_start + 1;
  } else {
    TORCH_CHECK_VALUE(stride_start == 1, EX_PREFIX, "stride_start is ", stride_start,
                      " but there is no leading depthwise (w_dw_start)");
  }
  ex_check("w_dw", w_dw, {Chid, K, K}, x);
  ex_check("b_dw", b_dw, {Chid}, x);
  ex_check("w_project", w_project, {Cout, Chid}, x);
  ex_check("b_project", b_project, {Cout}, x);
  if (has_expand) {
    ex_check("w_expand", *w_expand, {Chid, Cin}, x);
    ex_check("b_expand", *b_expand, {Chid}, x);
  }
  int64_t Crd = 0;
  if (se) {
    Crd = w_se_reduce->size(0);
    ex_check("w_se_reduce", *w_se_reduce, {Crd, Chid}, x);
    ex_check("b_se_reduce", *b_se_reduce, {Crd}, x);
    ex_check("w_se_expand", *w_se_expand, {Chid, Crd}, x);
    ex_check("b_se_expand", *b_se_expand, {Chid}, x);
  }
  if (has_start) {
    ex_check("w_dw_start", *w_dw_start, {Cin, K0, K0}, x);
    ex_check("b_dw_start", *b_dw_start, {Cin}, x);
  }
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, EX_PREFIX, "stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(!residual || (stride == 1 && stride_start == 1 && Cin == Cout), EX_PREFIX,
                    "residual needs stride 1 and Cin == Cout, got stride ", stride, " (leading ", stride_start, "), ",
                    Cin, " -> ", Cout);
  const int a_exp = act_code(act_expand, "act_expand", false);
  const int a_dw = act_code(act_dw, "act_dw", false);
  const int a_se = act_code(se_act, "se_act", false);
  const int a_gate = act_code(se_gate, "se_gate", true);
  const int a_proj = act_code(act_project, "act_project", false);
  const std::string pad(padding.data(), padding.size());
  TORCH_CHECK_VALUE(pad == "symmetric" || pad == "tf_same", EX_PREFIX,
                    "padding must be one of symmetric, tf_same, got '", pad, "'");
  const bool tf = pad == "tf_same";
  TORCH_CHECK(x.is_cuda(), EX_PREFIX, "the CUDA kernel needs x on a CUDA device, got x on ", x.device());
  const int64_t Ho = (H1 - 1) / stride + 1, Wo = (W1 - 1) / stride + 1;
  const c10::cuda::CUDAGuard guard0(x.device());
  // What the kernel does not serve still computes (as ops.py's reference would for these tensors): float32 /
  // float64, no channels, an image row too wide for shared memory (below). backends.EX_SUPPORT["cuda"] never
  // routes such calls here; this is for direct torch.ops calls (and torch.compile's traced graphs).
  auto reference = [&]() {
    return ex_reference_aten(x, w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand,
                             w_project, b_project, stride, residual, a_exp, a_dw, tf, a_se, a_gate, a_proj,
                             w_dw_start, b_dw_start, stride_start);
  };
  if (x.scalar_type() != at::kHalf && x.scalar_type() != at::kBFloat16) return reference();
  if (Cin < 1 || Chid < 1) return reference();

  const auto out_format = mnv2::wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (N == 0 || Cout == 0) return at::empty({N, Cout, Ho, Wo}, x.options().memory_format(out_format));
  if (H * W > int64_t(INT32_MAX)) return reference();  // the kernel indexes one image's pixels with int

  const at::ScalarType st = x.scalar_type();
  const mnv2_dtype dt = st == at::kHalf ? MNV2_DTYPE_FLOAT16 : MNV2_DTYPE_BFLOAT16;
  const int64_t cin8 = round8(Cin), chid8 = has_expand ? round8(Chid) : cin8, cout8 = round8(Cout);
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const auto ph = axis_pads(H1, K, stride, tf), pw = axis_pads(W1, K, stride, tf);
  mnv2_ir_plan plan;
  mnv2_ir_cuda_plan_ex(N, cin8, chid8, cout8, H1, W1, int(stride), int(K), ph.first, has_expand ? 1 : 0,
                       int64_t(props->sharedMemPerBlockOptin), props->multiProcessorCount, &plan);
  if (!plan.ok || (se && (chid8 + Crd) * 4 > 200 * 1024)) return reference();  // a row / the excite MLP too wide

  at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  if (cin8 != Cin)
    xc = at::constant_pad_nd(xc, {0, 0, 0, 0, 0, cin8 - Cin}).contiguous(at::MemoryFormat::ChannelsLast);
  xc = aligned(xc, at::MemoryFormat::ChannelsLast);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  auto fail = [&](cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, EX_PREFIX, "the CUDA ", what, " failed for a block with ", Cin, " -> ", Chid,
                " -> ", Cout, " channels, ", K, "x", K, " depthwise, stride ", stride, ", input ", x.sizes(), " ",
                mnv2::py_dtype_name(st), " on ", x.device(), ": ", cudaGetErrorName(err), " (",
                cudaGetErrorString(err), ")");
  };
  at::Tensor xin = xc;  // what the ring kernel reads
  if (has_start) {      // leading depthwise (no activation) into the narrow [N, H1, W1, Cin8] buffer
    const auto sh = axis_pads(H, K0, stride_start, tf), sw = axis_pads(W, K0, stride_start, tf);
    const at::Tensor w0 = dw_weights(*w_dw_start, cin8), b0 = pad_vec(*b_dw_start, cin8);
    xin = at::empty({N, cin8, H1, W1}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    fail(mnv2_ir_cuda_dw_launch(dt, xc.data_ptr(), w0.data_ptr(), b0.data_ptr(), xin.data_ptr(), N, cin8, H, W,
                                int(K0), int(stride_start), sh.first, sw.first, stream),
         "leading depthwise kernel");
  }
  at::Tensor we, be;
  if (has_expand) {
    we = aligned(pack_k32(at::constant_pad_nd(w_expand->contiguous(), {0, cin8 - Cin, 0, chid8 - Chid})));
    be = pad_vec(*b_expand, chid8);
  }
  const at::Tensor wdw = dw_weights(w_dw, chid8), bdw = pad_vec(b_dw, chid8);
  const at::Tensor wp =
      aligned(pack_k32(at::constant_pad_nd(w_project.contiguous(), {0, chid8 - Chid, 0, cout8 - Cout})));
  const at::Tensor bp = pad_vec(b_project, cout8);
  at::Tensor y = at::empty({N, cout8, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));

  mnv2_ir_ex_options o = {};
  o.kernel = int(K);
  o.pad_t = ph.first;
  o.pad_l = pw.first;
  o.act_expand = a_exp;
  o.act_dw = a_dw;
  o.act_project = a_proj;
  o.se_act = a_se;
  o.se_gate = a_gate;
  o.x_residual = has_start ? xc.data_ptr() : nullptr;
  at::Tensor wr, br, wx, bx, pool, gate;
  if (se) {  // padded hidden channels: zero columns of w_se_reduce, zero rows of w_se_expand
    wr = at::constant_pad_nd(w_se_reduce->contiguous(), {0, chid8 - Chid}).contiguous();
    br = b_se_reduce->contiguous();
    wx = at::constant_pad_nd(w_se_expand->contiguous(), {0, 0, 0, chid8 - Chid}).contiguous();
    bx = pad_vec(*b_se_expand, chid8);
    pool = at::zeros({N, chid8}, x.options().dtype(at::kFloat));
    gate = at::empty({N, chid8}, x.options().dtype(at::kFloat));
    o.w_se_reduce = wr.data_ptr();
    o.b_se_reduce = br.data_ptr();
    o.w_se_expand = wx.data_ptr();
    o.b_se_expand = bx.data_ptr();
    o.se_reduced = Crd;
    o.se_pool = pool.data_ptr<float>();
    o.se_gate_buf = gate.data_ptr<float>();
  }
  fail(mnv2_ir_cuda_launch_ex(dt, xin.data_ptr(), has_expand ? we.data_ptr() : nullptr,
                              has_expand ? be.data_ptr() : nullptr, wdw.data_ptr(), bdw.data_ptr(), wp.data_ptr(),
                              bp.data_ptr(), y.data_ptr(), N, cin8, H1, W1, chid8, Chid, cout8, int(stride),
                              residual ? 1 : 0, &o, stream),
       "kernel");
  if (cout8 != Cout) y = y.narrow(1, 0, Cout);
  return y.contiguous(out_format);
}

// The launch plan for a shape (kernel channel counts), for tests/test_cuda_emulation.py to compare with
// mnv2_kernels/cuda_plan.py. No GPU needed. kernel / pad_t: the generalised block's depthwise (3 / 1: MobileNetV2).
pybind11::dict plan_py(int64_t N, int64_t cin8, int64_t chid8, int64_t cout8, int64_t H, int64_t W, int stride,
                       int has_expand, int64_t smem_limit, int num_sms, int kernel, int pad_t) {
  mnv2_ir_plan p;
  mnv2_ir_cuda_plan_ex(N, cin8, chid8, cout8, H, W, stride, kernel, pad_t, has_expand, smem_limit, num_sms, &p);
  pybind11::dict r;
  r["ok"] = p.ok;
  r["rows"] = p.rows;
  r["chunk"] = p.chunk;
  r["nchunks"] = p.nchunks;
  r["ring_rows"] = p.ring_rows;
  r["steps"] = p.steps;
  r["bands"] = p.bands;
  r["ctas_per_sm"] = p.ctas_per_sm;
  r["items"] = p.items;
  r["grid"] = p.grid;
  r["smem"] = p.smem;
  return r;
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv2, CUDA, m) {
  m.impl("inverted_residual", &inverted_residual_cuda);
  m.impl("inverted_residual_ex", &inverted_residual_ex_cuda);
}

// Importing the module runs the registration above; _plan is for tests only.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mnv2_kernels CUDA kernel (registers mnv2::inverted_residual for CUDA)";
  m.def("_plan", &plan_py, "the CUDA kernel's launch plan (see mnv2_kernels/cuda_plan.py)", pybind11::arg("N"),
        pybind11::arg("cin8"), pybind11::arg("chid8"), pybind11::arg("cout8"), pybind11::arg("H"), pybind11::arg("W"),
        pybind11::arg("stride"), pybind11::arg("has_expand"), pybind11::arg("smem_limit"), pybind11::arg("num_sms"),
        pybind11::arg("kernel") = 3, pybind11::arg("pad_t") = 1);
  m.def("_pack_k32", &pack_k32, "the kernel's weight packing (see mnv2_kernels/cuda_plan.pack_k32)");
}
