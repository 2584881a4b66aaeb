// C entry point of the emulated causal conv1d kernels
// (csrc/common/cuda/causal_conv1d_kernel.cuh), for ctypes: the buffers and
// params that csrc/pytorch/causal_conv1d.cpp gives them, on host memory.
// Returns 0, or 1 with the error message in `error`.
#include "causal_conv1d_kernel.cuh"

namespace {

// The shape and options of a call, as the C++ entry point reads them.
struct ConvCall {
  int batch, channels, length, kernel, reverse, silu;
};

// tensors: x, weight (channels, kernel), bias, out, then backward dout, dx,
// dweight, dbias (bias and dbias may be null; dweight and dbias zeroed).
template <typename T>
void run(bool backward, const ConvCall &call, void *const *tensors) {
  mmssm::CausalConv1dParams p;
  p.batch = call.batch;
  p.channels = call.channels;
  p.length = call.length;
  p.kernel = call.kernel;
  p.reverse = call.reverse;
  p.silu = call.silu;
  p.x = tensors[0];
  p.weight = tensors[1];
  p.bias = tensors[2];
  p.out = tensors[3];
  if (backward) {
    p.dout = tensors[4];
    p.dx = tensors[5];
    p.dweight = tensors[6];
    p.dbias = tensors[7];
  }
  mmssm::causal_conv1d_launch<T>(p, backward);
}

}  // namespace

CUDA_EMULATOR_ENTRY_POINT(emulated_causal_conv1d, ConvCall)
