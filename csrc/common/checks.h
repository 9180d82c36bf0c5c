// Input validation shared by the C++ bindings of mnv2::inverted_residual (CPU and CUDA).
// Mirrors mnv2_kernels/_validate.py word for word; see docs/CONTRACT.md.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

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

inline std::string dims_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

inline void check_same_place(const char* name, const at::Tensor& w, const at::Tensor& x) {
  TORCH_CHECK(w.device() == x.device(), "mnv2.inverted_residual: ", name, " is on ", w.device(),
              " but x is on ", x.device(), "; move the module with .to(x.device)");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "mnv2.inverted_residual: ", name, " is ",
              w.scalar_type(), " but x is ", x.scalar_type(), "; call .to(", x.scalar_type(),
              ") on the module");
}

inline void check_shape(const char* name, const at::Tensor& w, at::IntArrayRef expected) {
  TORCH_CHECK(w.sizes() == expected, "mnv2.inverted_residual: ", name, " must have shape ", expected,
              ", got ", w.sizes());
}

// Validates every argument before anything is allocated; returns the block's dimensions.
inline BlockDims check_inverted_residual_args(const at::Tensor& x, const c10::optional<at::Tensor>& w_expand,
                                              const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                              const at::Tensor& b_dw, const at::Tensor& w_project,
                                              const at::Tensor& b_project, int64_t stride, bool residual) {
  TORCH_CHECK(x.dim() == 4, "mnv2.inverted_residual: x must be a 4-D (N, C, H, W) tensor, got ", x.dim(), "-D");
  BlockDims d{};
  d.N = x.size(0);
  d.Cin = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  d.stride = stride;
  d.residual = residual;
  d.has_expand = w_expand.has_value() && w_expand->defined();
  TORCH_CHECK(stride == 1 || stride == 2, "mnv2.inverted_residual: stride must be 1 or 2, got ", stride);
  TORCH_CHECK(d.H >= 1 && d.W >= 1, "mnv2.inverted_residual: x must have H, W >= 1, got ", x.sizes());
  TORCH_CHECK(w_dw.dim() == 3 && w_dw.size(1) == 3 && w_dw.size(2) == 3,
              "mnv2.inverted_residual: w_dw must have shape [Chid, 3, 3], got ", w_dw.sizes());
  d.Chid = w_dw.size(0);
  TORCH_CHECK(w_project.dim() == 2, "mnv2.inverted_residual: w_project must have shape [Cout, Chid], got ",
              w_project.sizes());
  d.Cout = w_project.size(0);
  if (d.has_expand) {
    const at::Tensor& we = *w_expand;
    TORCH_CHECK(we.dim() == 2, "mnv2.inverted_residual: w_expand must have shape [Chid, Cin], got ", we.sizes());
    TORCH_CHECK(we.size(1) == d.Cin, "mnv2.inverted_residual: block expects ", we.size(1),
                " input channels, got ", d.Cin);
    check_shape("w_expand", we, {d.Chid, d.Cin});
    TORCH_CHECK(b_expand.has_value() && b_expand->defined(),
                "mnv2.inverted_residual: b_expand is required when w_expand is given");
    check_shape("b_expand", *b_expand, {d.Chid});
    check_same_place("w_expand", we, x);
    check_same_place("b_expand", *b_expand, x);
  } else {
    TORCH_CHECK(!(b_expand.has_value() && b_expand->defined()),
                "mnv2.inverted_residual: b_expand given without w_expand");
    TORCH_CHECK(d.Chid == d.Cin, "mnv2.inverted_residual: block expects ", d.Chid, " input channels, got ", d.Cin);
  }
  check_shape("b_dw", b_dw, {d.Chid});
  check_shape("w_project", w_project, {d.Cout, d.Chid});
  check_shape("b_project", b_project, {d.Cout});
  check_same_place("w_dw", w_dw, x);
  check_same_place("b_dw", b_dw, x);
  check_same_place("w_project", w_project, x);
  check_same_place("b_project", b_project, x);
  TORCH_CHECK(!residual || (stride == 1 && d.Cin == d.Cout),
              "mnv2.inverted_residual: residual needs stride 1 and equal input and output channels, got stride ",
              stride, ", ", d.Cin, " -> ", d.Cout, " channels");
  d.Ho = (d.H - 1) / stride + 1;
  d.Wo = (d.W - 1) / stride + 1;
  return d;
}

// Output in x's memory format (as nn.Conv2d does): channels_last if x is, else contiguous NCHW.
inline bool wants_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

}  // namespace mnv2
