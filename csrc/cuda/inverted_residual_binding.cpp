// CUDA kernel of mnv2::inverted_residual (schema defined in Python, mnv2_kernels/ops.py; docs/CONTRACT.md).
// Thin binding: validate, NHWC, allocate, launch (inverted_residual_cuda.cu), return in x's memory format.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/python.h>  // at::Tensor <-> Python for _pack_k32

#include <cstdint>

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

// The launch plan for a shape (kernel channel counts), for tests/test_cuda_emulation.py to compare with
// mnv2_kernels/cuda_plan.py. No GPU needed.
pybind11::dict plan_py(int64_t N, int64_t cin8, int64_t chid8, int64_t cout8, int64_t H, int64_t W, int stride,
                       int has_expand, int64_t smem_limit, int num_sms) {
  mnv2_ir_plan p;
  mnv2_ir_cuda_plan(N, cin8, chid8, cout8, H, W, stride, has_expand, smem_limit, num_sms, &p);
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

TORCH_LIBRARY_IMPL(mnv2, CUDA, m) { m.impl("inverted_residual", &inverted_residual_cuda); }

// Importing the module runs the registration above; _plan is for tests only.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mnv2_kernels CUDA kernel (registers mnv2::inverted_residual for CUDA)";
  m.def("_plan", &plan_py, "the CUDA kernel's launch plan (see mnv2_kernels/cuda_plan.py)");
  m.def("_pack_k32", &pack_k32, "the kernel's weight packing (see mnv2_kernels/cuda_plan.pack_k32)");
}
