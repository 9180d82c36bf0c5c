// Launcher of the fused CUDA inverted-residual kernel (docs/CONTRACT.md). C-style, no torch headers.
//
// Layouts: x NHWC [N, H, W, Cin8] and y NHWC [N, Ho, Wo, Cout8], where Cin8 / Cout8 are the channel counts
// rounded up to a multiple of 8 (the binding pads odd channel counts with zeros and slices the output);
// w_expand [Chid8, CinP] (or NULL: no expand conv, then b_expand is NULL and Chid8 == Cin8); b_expand [Chid8];
// w_dw [Chid8, 9]; b_dw [Chid8]; w_project [Cout8, ChidP] (CinP / ChidP: Cin8 / Chid8 rounded up to 32, zero
// columns appended, each 32-column block permuted as the binding's pack_k32 describes); b_project [Cout8];
// all row-major contiguous, all in
// `dtype`, all 16-byte aligned, on the current device. `chid_real` is the block's real hidden channel count
// (<= Chid8): hidden channels at or above it are forced to 0 (select, so a NaN input cannot leak through a
// padded channel). float16 and bfloat16 (tensor cores, float32 accumulation).
//
// The launch configuration (rows per step, hidden-channel chunks, bands per image, persistent grid) is chosen
// by mnv2_ir_cuda_plan(); mnv2_kernels/cuda_plan.py mirrors it in Python (keep both in step; a CPU test
// compares them through the binding's _plan function).
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

// The kernel's configuration for one block shape (see inverted_residual_cuda.cu, "Plan").
typedef struct mnv2_ir_plan {
  int ok;            // 1 when the shape can run (shared memory fits `smem_limit`)
  int rows;          // R: output rows per step
  int chunk;         // HC: hidden channels per chunk (multiple of 32)
  int nchunks;       // chunks per step (1 = ring mode: expanded rows are carried between steps)
  int ring_rows;     // RR: expanded rows the shared ring holds
  int steps;         // steps per image: ceil(Ho / R)
  int bands;         // bands per image (each band is one CTA work item; a band's first step expands its halo)
  int ctas_per_sm;   // 1 or 2 (from the shared memory of one CTA)
  int64_t items;     // N * bands
  int64_t grid;      // persistent CTAs launched: min(items, ctas_per_sm * num_sms)
  int64_t smem;      // dynamic shared memory bytes per CTA
} mnv2_ir_plan;

// Fills *plan for a block shape (channel counts as the kernel sees them: Cin8, Chid8, Cout8). `smem_limit` is
// the device's opt-in shared memory per CTA, `num_sms` its SM count. Pure host code (no CUDA calls).
void mnv2_ir_cuda_plan(int64_t N, int64_t Cin8, int64_t Chid8, int64_t Cout8, int64_t H, int64_t W, int stride,
                       int has_expand, int64_t smem_limit, int num_sms, mnv2_ir_plan* plan);

// Runs the block on `stream`. Returns cudaSuccess, cudaErrorInvalidValue for bad arguments or a shape whose
// shared memory exceeds the device's opt-in limit, or the error of a CUDA call (launch errors included,
// via cudaGetLastError). Does nothing when N == 0.
cudaError_t mnv2_ir_cuda_launch(mnv2_dtype dtype, const void* x, const void* w_expand, const void* b_expand,
                                const void* w_dw, const void* b_dw, const void* w_project, const void* b_project,
                                void* y, int64_t N, int64_t Cin8, int64_t H, int64_t W, int64_t Chid8,
                                int64_t chid_real, int64_t Cout8, int stride, int residual, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
