// Input validation shared by the C++ bindings of mnv2::inverted_residual (CPU and CUDA).
//
// Mirrors mnv2_kernels/_validate.py: the same checks in the same order, the same words and the same
// exception types (tests/test_errors.py compares the two paths for every mistake):
//   TORCH_CHECK_VALUE -> ValueError   shapes, devices, stride, residual
//   TORCH_CHECK_TYPE  -> TypeError    x not floating point, a weight in another dtype, a dtype a kernel lacks
//   TORCH_CHECK       -> RuntimeError what the machine cannot do (out of memory, a launch that failed)
// dtypes are named as Python spells them ("torch.float16", not "Half"). See docs/CONTRACT.md.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cctype>
#include <initializer_list>
#include <sstream>
#include <string>

namespace mnv2 {

struct BlockDims {
  int64_t N, Cin, H, W;   // input, logical NCHW
  int64_t Chid;           // expanded (hidden) channels
  int64_t Cout, Ho, Wo;   // output, logical NCHW
  int64_t stride;         // 1 or 2
  bool has_expand;
  bool residual;
};

// A dtype as Python spells it: "torch.float16", "torch.int64", "torch.complex64" (str(dtype) in Python).
inline std::string py_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: {  // Bool, UInt16, Float8_e4m3fn, QInt8, ...: Python's name is c10's, lower-cased
      std::string s = c10::toString(t);
      for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return "torch." + s;
    }
  }
}

// "torch.float32", "torch.float32 and torch.bfloat16", "a, b and c" ("or" with last = "or");
// _validate.dtype_list.
inline std::string dtype_list(std::initializer_list<at::ScalarType> ts, const char* last = "and") {
  std::string s;
  size_t i = 0;
  for (at::ScalarType t : ts) {
    if (i > 0) s += (i + 1 == ts.size()) ? std::string(" ") + last + " " : std::string(", ");
    s += py_dtype_name(t);
    ++i;
  }
  return s;
}

// The dtypes an input may have at all (_validate.FLOATING_DTYPES); which kernel computes which is written
// in mnv2_kernels/backends.py and checked by each binding with check_kernel_dtype.
inline void check_x_dtype(const at::Tensor& x) {
  const at::ScalarType t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble,
                   "mnv2.inverted_residual: x must be a floating-point tensor (",
                   dtype_list({at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}, "or"), "), got ", py_dtype_name(t),
                   "; convert the input with x.to(torch.float32)");
}

// A kernel that computes only `served` (first = the one to suggest); kernel = "CPU", "CUDA".
// Same words as _validate.kernel_dtype_message.
inline void check_kernel_dtype(const char* kernel, const at::Tensor& x,
                               std::initializer_list<at::ScalarType> served) {
  for (at::ScalarType t : served)
    if (x.scalar_type() == t) return;
  TORCH_CHECK_TYPE(false, "mnv2.inverted_residual: the ", kernel, " kernel supports ", dtype_list(served), ", got ",
                   py_dtype_name(x.scalar_type()), "; convert the input and the module with .to(",
                   py_dtype_name(*served.begin()), ")");
}

inline void check_same_place(const char* name, const at::Tensor& w, const at::Tensor& x) {
  TORCH_CHECK_VALUE(w.device() == x.device(), "mnv2.inverted_residual: ", name, " is on ", w.device(),
                    " but x is on ", x.device(), "; move the module with .to(x.device)");
  TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), "mnv2.inverted_residual: ", name, " is ",
                   py_dtype_name(w.scalar_type()), " but x is ", py_dtype_name(x.scalar_type()), "; call .to(",
                   py_dtype_name(x.scalar_type()), ") on the module");
}

inline void check_shape(const char* name, const at::Tensor& w, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(w.sizes() == expected, "mnv2.inverted_residual: ", name, " must have shape ", expected,
                    ", got ", w.sizes());
}

// Validates every argument before anything is allocated; returns the block's dimensions.
inline BlockDims check_inverted_residual_args(const at::Tensor& x, const c10::optional<at::Tensor>& w_expand,
                                              const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                              const at::Tensor& b_dw, const at::Tensor& w_project,
                                              const at::Tensor& b_project, int64_t stride, bool residual) {
  TORCH_CHECK_VALUE(x.dim() == 4, "mnv2.inverted_residual: x must be a 4-D (N, C, H, W) tensor, got ", x.dim(),
                    "-D; add a batch dimension with x.unsqueeze(0) for a single image");
  check_x_dtype(x);
  BlockDims d{};
  d.N = x.size(0);
  d.Cin = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  d.stride = stride;
  d.residual = residual;
  d.has_expand = w_expand.has_value() && w_expand->defined();
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, "mnv2.inverted_residual: stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(d.H >= 1 && d.W >= 1, "mnv2.inverted_residual: x must have H, W >= 1, got ", x.sizes());
  TORCH_CHECK_VALUE(w_dw.dim() == 3 && w_dw.size(1) == 3 && w_dw.size(2) == 3,
                    "mnv2.inverted_residual: w_dw must have shape [Chid, 3, 3], got ", w_dw.sizes());
  d.Chid = w_dw.size(0);
  TORCH_CHECK_VALUE(w_project.dim() == 2, "mnv2.inverted_residual: w_project must have shape [Cout, Chid], got ",
                    w_project.sizes());
  d.Cout = w_project.size(0);
  if (d.has_expand) {
    const at::Tensor& we = *w_expand;
    TORCH_CHECK_VALUE(we.dim() == 2, "mnv2.inverted_residual: w_expand must have shape [Chid, Cin], got ",
                      we.sizes());
    TORCH_CHECK_VALUE(we.size(1) == d.Cin, "mnv2.inverted_residual: block expects ", we.size(1),
                      " input channels, got ", d.Cin);
    check_shape("w_expand", we, {d.Chid, d.Cin});
    TORCH_CHECK_VALUE(b_expand.has_value() && b_expand->defined(),
                      "mnv2.inverted_residual: b_expand is required when w_expand is given");
    check_shape("b_expand", *b_expand, {d.Chid});
    check_same_place("w_expand", we, x);
    check_same_place("b_expand", *b_expand, x);
  } else {
    TORCH_CHECK_VALUE(!(b_expand.has_value() && b_expand->defined()),
                      "mnv2.inverted_residual: b_expand given without w_expand");
    TORCH_CHECK_VALUE(d.Chid == d.Cin, "mnv2.inverted_residual: block expects ", d.Chid, " input channels, got ",
                      d.Cin);
  }
  check_shape("b_dw", b_dw, {d.Chid});
  check_shape("w_project", w_project, {d.Cout, d.Chid});
  check_shape("b_project", b_project, {d.Cout});
  check_same_place("w_dw", w_dw, x);
  check_same_place("b_dw", b_dw, x);
  check_same_place("w_project", w_project, x);
  check_same_place("b_project", b_project, x);
  TORCH_CHECK_VALUE(!residual || (stride == 1 && d.Cin == d.Cout),
                    "mnv2.inverted_residual: residual needs stride 1 and equal input and output channels, got "
                    "stride ", stride, ", ", d.Cin, " -> ", d.Cout, " channels");
  d.Ho = (d.H - 1) / stride + 1;
  d.Wo = (d.W - 1) / stride + 1;
  return d;
}

// Output in x's memory format (as nn.Conv2d does): channels_last if x is, else contiguous NCHW.
inline bool wants_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

}  // namespace mnv2
