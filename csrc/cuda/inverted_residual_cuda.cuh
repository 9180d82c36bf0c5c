// Launcher of the fused CUDA inverted-residual kernel (docs/CONTRACT.md). C-style, no torch headers.
//
// Layouts: x and y NHWC (channels_last memory, logical [N, C, H, W]); w_expand [Chid, Cin] (or NULL: no expand
// conv, then b_expand is NULL and Chid == Cin); b_expand [Chid]; w_dw [Chid, 3, 3]; b_dw [Chid];
// w_project [Cout, Chid]; b_project [Cout]; all row-major contiguous, all in `dtype`, all on the current device.
// float16 and bfloat16 only (tensor cores, float32 accumulation).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mnv2_dtype {
  MNV2_DTYPE_FLOAT16 = 0,
  MNV2_DTYPE_BFLOAT16 = 1,
} mnv2_dtype;

// Bytes of dynamic shared memory the kernel needs for this block shape (0 if the shape is invalid or too
// large to describe). Compare with cudaDevAttrMaxSharedMemoryPerBlockOptin.
size_t mnv2_ir_cuda_smem_bytes(int64_t Cin, int64_t Chid, int64_t Cout, int stride, int has_expand);

// Runs the block on `stream`. Returns cudaSuccess, cudaErrorInvalidValue for bad arguments or a shape whose
// shared memory exceeds the device's opt-in limit, or the error of a CUDA call (launch errors included,
// via cudaGetLastError). Does nothing when N == 0.
cudaError_t mnv2_ir_cuda_launch(mnv2_dtype dtype, const void* x, const void* w_expand, const void* b_expand,
                                const void* w_dw, const void* b_dw, const void* w_project, const void* b_project,
                                void* y, int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Chid, int64_t Cout,
                                int stride, int residual, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
