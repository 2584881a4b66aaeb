// C entry point of the emulated LayerNorm / RMSNorm kernels
// (csrc/common/cuda/norm_kernel.cuh), for ctypes: the buffers and params
// that csrc/pytorch/norm.cpp gives them, on host memory, the output in the
// input type and the backward grid given explicitly. Returns 0, or 1 with
// the error message in `error`.
#include "norm_kernel.cuh"

namespace {

// The shape and options of a call; grid: blocks of the backward launch.
struct NormCall {
  long long rows, positions;
  int channels, channels_first, rms, grid;
  double eps;
};

// tensors: x, weight, bias, out, mean, rstd, then backward dout, dx,
// dweight, dbias (weight, bias, mean for RMSNorm and the gradients of
// absent ones null; dweight and dbias zeroed).
template <typename T>
void run(bool backward, const NormCall &call, void *const *tensors) {
  mmssm::NormParams p;
  p.rows = call.rows;
  p.channels = call.channels;
  p.positions = call.positions;
  p.channels_first = call.channels_first;
  p.rms = call.rms;
  p.eps = call.eps;
  p.grid = call.grid;
  p.x = tensors[0];
  p.weight = tensors[1];
  p.bias = tensors[2];
  p.out = tensors[3];
  p.mean = tensors[4];
  p.rstd = tensors[5];
  if (backward) {
    p.dout = tensors[6];
    p.dx = tensors[7];
    p.dweight = tensors[8];
    p.dbias = tensors[9];
  }
  mmssm::norm_launch<T, T>(p, backward);
}

}  // namespace

CUDA_EMULATOR_ENTRY_POINT(emulated_norm, NormCall)
