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

// ---------------------------------------------------------------------------------------------------------
// The generalised block (mnv2::inverted_residual_ex, docs/CONTRACT.md "The generalised block").

// Activation / gate codes (the binding maps the op's strings to these).
typedef enum mnv2_act {
  MNV2_ACT_RELU6 = 0,
  MNV2_ACT_RELU = 1,
  MNV2_ACT_HARDSWISH = 2,
  MNV2_ACT_SILU = 3,
  MNV2_ACT_GELU = 4,       // erf form
  MNV2_ACT_GELU_TANH = 5,
  MNV2_ACT_NONE = 6,
  MNV2_GATE_SIGMOID = 7,
  MNV2_GATE_HARDSIGMOID = 8,
} mnv2_act;

// mnv2_ir_cuda_plan for a K x K depthwise (K in 1, 3, 5, 7, 9) with `pad_t` padding rows before the image (0 ..
// K / 2; symmetric: K / 2, TF "same": reference.tf_same_pads). mnv2_ir_cuda_plan is this with K = 3, pad_t = 1.
void mnv2_ir_cuda_plan_ex(int64_t N, int64_t Cin8, int64_t Chid8, int64_t Cout8, int64_t H, int64_t W, int stride,
                          int kernel, int pad_t, int has_expand, int64_t smem_limit, int num_sms, mnv2_ir_plan* plan);

// Options of the generalised block. Layouts as for mnv2_ir_cuda_launch, with w_dw [Chid8, K * K].
typedef struct mnv2_ir_ex_options {
  int kernel;                  // K: 1, 3, 5, 7, 9
  int pad_t, pad_l;            // padding rows / columns before the image (after: implicit, up to K / 2)
  int act_expand, act_dw, act_project;  // mnv2_act codes (act_expand unused without an expand conv)
  // squeeze-excite (all null: none): w_se_reduce [Crd, Chid8], b_se_reduce [Crd], w_se_expand [Chid8, Crd],
  // b_se_expand [Chid8] (zero-padded rows / columns for the padded hidden channels), in `dtype`
  const void* w_se_reduce;
  const void* b_se_reduce;
  const void* w_se_expand;
  const void* b_se_expand;
  int64_t se_reduced;          // Crd
  int se_act, se_gate;         // mnv2_act codes (gate: MNV2_GATE_*)
  float* se_pool;              // workspace [N, Chid8] float32, ZEROED by the caller (pass 1 adds into it)
  float* se_gate_buf;          // workspace [N, Chid8] float32 (the gate)
  // the residual's source when it is not x (leading depthwise: x is its output, x_residual the block input,
  // [N, H, W, Cin8]); null: x
  const void* x_residual;
} mnv2_ir_ex_options;

// Runs the generalised block without the leading depthwise (run mnv2_ir_cuda_dw_launch first). Same errors as
// mnv2_ir_cuda_launch. With squeeze-excite: three launches (pass 1, the excite MLP, pass 2) on `stream`.
cudaError_t mnv2_ir_cuda_launch_ex(mnv2_dtype dtype, const void* x, const void* w_expand, const void* b_expand,
                                   const void* w_dw, const void* b_dw, const void* w_project, const void* b_project,
                                   void* y, int64_t N, int64_t Cin8, int64_t H, int64_t W, int64_t Chid8,
                                   int64_t chid_real, int64_t Cout8, int stride, int residual,
                                   const mnv2_ir_ex_options* opt, cudaStream_t stream);

// The leading depthwise of MobileNetV4's UIB ExtraDW block (no activation): x [N, H, W, C8] -> y [N, Ho, Wo, C8]
// (Ho = (H - 1) / stride + 1), w [C8, K * K], b [C8], `pad_t` / `pad_l` padding before; float32 accumulation,
// rounded to `dtype`. 16-byte aligned pointers.
cudaError_t mnv2_ir_cuda_dw_launch(mnv2_dtype dtype, const void* x, const void* w, const void* b, void* y, int64_t N,
                                   int64_t C8, int64_t H, int64_t W, int kernel, int stride, int pad_t, int pad_l,
                                   cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
