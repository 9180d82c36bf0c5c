// CUDA kernel of mnv2::inverted_residual (schema defined in Python, mnv2_kernels/ops.py; docs/CONTRACT.md).
// Thin binding: validate, NHWC, allocate, launch (inverted_residual_cuda.cu), return in x's memory format.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "checks.h"
#include "inverted_residual_cuda.cuh"

namespace {

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    default: return c10::toString(t);
  }
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
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16,
              "mnv2.inverted_residual: the CUDA kernel supports float16 and bfloat16, got ", dtype_name(st),
              "; use backend='triton' for float32, or convert with .half() / .bfloat16()");
  TORCH_CHECK(d.Cin >= 1 && d.Chid >= 1,
              "mnv2.inverted_residual: the CUDA kernel needs at least one input and one hidden channel, got ",
              d.Cin, " input and ", d.Chid, " hidden channels");

  const c10::cuda::CUDAGuard guard(x.device());
  const auto out_format = mnv2::wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (d.N == 0 || d.Cout == 0)
    return at::empty({d.N, d.Cout, d.Ho, d.Wo}, x.options().memory_format(out_format));

  const size_t smem = mnv2_ir_cuda_smem_bytes(d.Cin, d.Chid, d.Cout, int(stride), d.has_expand ? 1 : 0);
  const int64_t smem_max = int64_t(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  TORCH_CHECK(smem != 0 && int64_t(smem) <= smem_max, "mnv2.inverted_residual: the CUDA kernel cannot run a block with ",
              d.Cin, " -> ", d.Chid, " -> ", d.Cout, " channels, stride ", stride, ": it needs ", smem,
              " bytes of shared memory per CTA but ", x.device(), " allows ", smem_max,
              "; use backend='triton' for this block");

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor we, be;
  if (d.has_expand) {
    we = w_expand->contiguous();
    be = b_expand->contiguous();
  }
  const at::Tensor wdw = w_dw.contiguous();
  const at::Tensor bdw = b_dw.contiguous();
  const at::Tensor wp = w_project.contiguous();
  const at::Tensor bp = b_project.contiguous();
  at::Tensor y = at::empty({d.N, d.Cout, d.Ho, d.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));

  const cudaError_t err = mnv2_ir_cuda_launch(
      st == at::kHalf ? MNV2_DTYPE_FLOAT16 : MNV2_DTYPE_BFLOAT16, xc.data_ptr(),
      d.has_expand ? we.data_ptr() : nullptr, d.has_expand ? be.data_ptr() : nullptr, wdw.data_ptr(),
      bdw.data_ptr(), wp.data_ptr(), bp.data_ptr(), y.data_ptr(), d.N, d.Cin, d.H, d.W, d.Chid, d.Cout,
      int(stride), residual ? 1 : 0, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "mnv2.inverted_residual: the CUDA kernel failed for a block with ", d.Cin, " -> ",
              d.Chid, " -> ", d.Cout, " channels, stride ", stride, ", input ", x.sizes(), " ", dtype_name(st),
              " on ", x.device(), ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  return out_format == at::MemoryFormat::ChannelsLast ? y : y.contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv2, CUDA, m) { m.impl("inverted_residual", &inverted_residual_cuda); }

// Importing the module runs the registration above; it exposes nothing to Python itself.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "mnv2_kernels CUDA kernel (registers mnv2::inverted_residual for CUDA)"; }
