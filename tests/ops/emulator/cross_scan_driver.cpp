// C entry points of the emulated kernels of VMamba's cross scan
// (csrc/common/cuda/cross_plane_kernel.cuh, cross_band_kernel.cuh,
// cross_scan_kernel.cuh), for ctypes: the buffers and params that
// csrc/pytorch/cross_scan.cpp gives them, on host memory. Each returns 0, or 1 with the error message in
// `error`.
#include <algorithm>
#include <limits>
#include <vector>

#include "cross_scan_kernel.cuh"

namespace {

// The params of a call: tensors u, delta, A, B, C, D, delta_bias, out, and
// from index `grads` on, backward, dout, du, ddelta, dA, dB, dC, dD,
// ddelta_bias (D, delta_bias and their gradients may be null).
mmssm::CrossScanParams make_params(bool backward, int batch, int dim,
                                   int height, int width, int dstate,
                                   bool delta_softplus,
                                   void *const *tensors, int grads) {
  mmssm::CrossScanParams p;
  p.batch = batch;
  p.dim = dim;
  p.height = height;
  p.width = width;
  p.dstate = dstate;
  p.delta_softplus = delta_softplus;
  p.u = tensors[0];
  p.delta = tensors[1];
  p.A = tensors[2];
  p.B = tensors[3];
  p.C = tensors[4];
  p.D = tensors[5];
  p.delta_bias = tensors[6];
  p.out = tensors[7];
  if (backward) {
    p.dout = tensors[grads];
    p.du = tensors[grads + 1];
    p.ddelta = tensors[grads + 2];
    p.dA = tensors[grads + 3];
    p.dB = tensors[grads + 4];
    p.dC = tensors[grads + 5];
    p.dD = tensors[grads + 6];
    p.ddelta_bias = tensors[grads + 7];
  }
  return p;
}

// The plane kernels, on the whole map or in bands: out and du in T; index 8
// is chunk_states, the states entering the bands (zeroed, kept from forward
// to backward; null for a whole map), the gradients from index 9.
template <typename T>
void run_plane(bool backward, int batch, int dim, int height, int width,
               bool delta_softplus, void *const *tensors) {
  mmssm::CrossScanParams p = make_params(backward, batch, dim, height, width,
                                         1, delta_softplus, tensors, 9);
  p.plane = true;
  mmssm::set_cross_bands(p);
  if (!mmssm::cross_banded(p)) {
    mmssm::cross_plane_launch<T>(p, backward);
    return;
  }
  p.max_lines = std::max(height, width);
  p.max_chunks = 1;
  p.chunk_states = tensors[8];
  // Scratch the kernels must write before they read: filled with NaN.
  const size_t walks = static_cast<size_t>(batch) * 4 * dim;
  std::vector<T> adjoint(walks * p.max_lines,
                         std::numeric_limits<T>::quiet_NaN());
  std::vector<T> totals(walks * p.max_lines * 2,
                        std::numeric_limits<T>::quiet_NaN());
  std::vector<T> band_sum(static_cast<size_t>(batch) * dim * height * width,
                          std::numeric_limits<T>::quiet_NaN());
  p.line_adjoint = adjoint.data();
  p.band_totals = totals.data();
  p.band_sum = band_sum.data();
  mmssm::cross_scan_launch<T>(p, backward);
}

// The tiled kernels: out and du in the accumulation type, zeroed; index 8
// and 9 are chunk_states and line_dt (zeroed, kept from forward to
// backward), the gradients from index 10.
template <typename T>
void run_tiled(bool backward, int batch, int dim, int height, int width,
               int dstate, bool delta_softplus, void *const *tensors) {
  mmssm::CrossScanParams p = make_params(backward, batch, dim, height, width,
                                         dstate, delta_softplus, tensors, 10);
  p.max_lines = std::max(height, width);
  p.max_chunks = (p.max_lines + mmssm::kCrossChunk - 1) / mmssm::kCrossChunk;
  p.chunk_states = tensors[8];
  p.line_dt = tensors[9];
  // Scratch the kernels must write before they read: filled with NaN.
  std::vector<T> line_scratch(
      static_cast<size_t>(batch) * 4 * dim * dstate * p.max_lines,
      std::numeric_limits<T>::quiet_NaN());
  p.line_states = line_scratch.data();
  p.line_adjoint = line_scratch.data();
  mmssm::cross_scan_launch<T>(p, backward);
}

}  // namespace

extern "C" int emulated_cross_plane(int is_double, int backward, int batch,
                                    int dim, int height, int width,
                                    int delta_softplus, int shared_memory,
                                    void *const *tensors, char *error,
                                    int error_size) {
  cuda_emulator::device_properties.sharedMemPerBlockOptin = shared_memory;
  return cuda_emulator::run_guarded(
      is_double,
      [&](auto type) {
        run_plane<decltype(type)>(backward, batch, dim, height, width,
                                  delta_softplus, tensors);
      },
      error, error_size);
}

extern "C" int emulated_cross_tiled(int is_double, int backward, int batch,
                                    int dim, int height, int width,
                                    int dstate, int delta_softplus,
                                    void *const *tensors, char *error,
                                    int error_size) {
  return cuda_emulator::run_guarded(
      is_double,
      [&](auto type) {
        run_tiled<decltype(type)>(backward, batch, dim, height, width,
                                  dstate, delta_softplus, tensors);
      },
      error, error_size);
}
