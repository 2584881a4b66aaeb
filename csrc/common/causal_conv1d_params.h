// Plain-data description of one launch of the fused causal depthwise conv1d
// (+ optional SiLU), shared by the device-agnostic entry points
// (csrc/pytorch/causal_conv1d.cpp) and the CUDA kernels
// (csrc/common/cuda/causal_conv1d_kernel.cuh).
#pragma once

#include <cstdint>

namespace mmssm {

// Layouts (as mmssm.ops.causal_conv1d, made contiguous by the Python side):
//   x, out, dout, dx: (batch, channels, length) in the input element type;
//   weight, dweight: (channels, kernel); bias, dbias: (channels) in the
//   accumulation type (float, or double for double inputs).
// out[t] = act(bias + sum_k weight[k] x[t - (K - 1 - k)]) (reverse: x[t + K -
// 1 - k]), positions outside [0, length) reading zero.
struct CausalConv1dParams {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t length = 0;
  int kernel = 0;
  bool reverse = false;
  bool silu = false;

  const void *x = nullptr;
  const void *weight = nullptr;
  const void *bias = nullptr;  // nullptr: no bias
  void *out = nullptr;

  // Backward. dweight and dbias are zeroed by the caller and accumulated
  // with atomics (one per block and tap).
  const void *dout = nullptr;
  void *dx = nullptr;
  void *dweight = nullptr;
  void *dbias = nullptr;  // nullptr: no bias
};

// Largest kernel size (taps) the kernels are compiled for.
constexpr int kCausalConv1dMaxKernel = 8;
// The kernels' blocks: this many batch elements (a warp each) of one
// channel.
constexpr int kCausalConv1dWarps = 8;

// Launches the forward (or backward) kernel for element type T on the
// current CUDA stream; instantiated per type in
// csrc/pytorch/cuda/causal_conv1d_*.cu.
template <typename T>
void causal_conv1d_launch(const CausalConv1dParams &params, bool backward);

}  // namespace mmssm
