// C entry point of the emulated plane kernels of VMamba's cross scan
// (csrc/common/cuda/cross_plane_kernel.cuh), for ctypes: the buffers and
// params that csrc/pytorch/cross_scan.cpp gives them, on host memory.
#include <cstdio>

#include "cross_plane_kernel.cuh"

namespace {

// tensors: u, delta, A, B, C, D, delta_bias, out, dout, du, ddelta, dA, dB,
// dC, dD, ddelta_bias (D, delta_bias and their gradients may be null).
template <typename T>
void run(bool backward, int batch, int dim, int height, int width,
         bool delta_softplus, void *const *tensors) {
  mmssm::CrossScanParams p;
  p.batch = batch;
  p.dim = dim;
  p.height = height;
  p.width = width;
  p.dstate = 1;
  p.delta_softplus = delta_softplus;
  p.plane = true;
  p.u = tensors[0];
  p.delta = tensors[1];
  p.A = tensors[2];
  p.B = tensors[3];
  p.C = tensors[4];
  p.D = tensors[5];
  p.delta_bias = tensors[6];
  p.out = tensors[7];
  if (backward) {
    p.dout = tensors[8];
    p.du = tensors[9];
    p.ddelta = tensors[10];
    p.dA = tensors[11];
    p.dB = tensors[12];
    p.dC = tensors[13];
    p.dD = tensors[14];
    p.ddelta_bias = tensors[15];
  }
  mmssm::cross_plane_launch<T>(p, backward);
}

}  // namespace

// Returns 0, or 1 with the error message in `error`.
extern "C" int emulated_cross_plane(int is_double, int backward, int batch,
                                    int dim, int height, int width,
                                    int delta_softplus, int shared_memory,
                                    void *const *tensors, char *error,
                                    int error_size) {
  cuda_emulator::device_properties.sharedMemPerBlockOptin = shared_memory;
  try {
    if (is_double) {
      run<double>(backward, batch, dim, height, width, delta_softplus,
                  tensors);
    } else {
      run<float>(backward, batch, dim, height, width, delta_softplus,
                 tensors);
    }
  } catch (const std::exception &e) {
    std::snprintf(error, error_size, "%s", e.what());
    return 1;
  }
  return 0;
}
