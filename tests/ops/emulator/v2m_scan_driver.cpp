// C entry point of the emulated V2M corner-scan kernels
// (csrc/common/cuda/v2m_corner_scan_kernel.cuh), for ctypes: the buffers
// and params that csrc/pytorch/v2m_corner_scan.cpp gives them, on host
// memory. Returns 0, or 1 with the error message in `error`.
#include <cstdint>

#include "v2m_corner_scan_kernel.cuh"

namespace {

// The shape and options of one pass, as the C++ entry point reads them.
struct V2MCall {
  int batch, corners, dim, height, width, dstate;
  int shared_u, var_B, var_C, shared_z, axis_col, delta_softplus;
  int merge_corners;
  int plane;  // the plane kernels (one state, no gate)
  int64_t backwards_mask;
};

// tensors: u, delta, A, B, C, D, z, delta_bias, out (accumulation type and
// zeroed where the corners merge), chunk_states (unused by the plane
// kernels), then backward dout, du,
// ddelta, dA, dB, dC, dD, dz, ddelta_bias (D, z, delta_bias and their
// gradients may be null; gradients that collect several corners zeroed).
template <typename T>
void run(bool backward, const V2MCall &call, void *const *tensors) {
  mmssm::V2MScanParams p;
  p.batch = call.batch;
  p.corners = call.corners;
  p.dim = call.dim;
  p.height = call.height;
  p.width = call.width;
  p.dstate = call.dstate;
  const int length = call.axis_col ? call.height : call.width;
  p.num_chunks = (length + mmssm::kV2MChunk - 1) / mmssm::kV2MChunk;
  p.axis_col = call.axis_col;
  p.backwards_mask = call.backwards_mask;
  p.shared_u = call.shared_u;
  p.shared_z = call.shared_z;
  p.var_B = call.var_B;
  p.var_C = call.var_C;
  p.delta_softplus = call.delta_softplus;
  p.merge_corners = call.merge_corners;
  p.plane = call.plane;
  p.u = tensors[0];
  p.delta = tensors[1];
  p.A = tensors[2];
  p.B = tensors[3];
  p.C = tensors[4];
  p.D = tensors[5];
  p.z = tensors[6];
  p.delta_bias = tensors[7];
  p.out = tensors[8];
  p.chunk_states = tensors[9];
  if (backward) {
    p.dout = tensors[10];
    p.du = tensors[11];
    p.ddelta = tensors[12];
    p.dA = tensors[13];
    p.dB = tensors[14];
    p.dC = tensors[15];
    p.dD = tensors[16];
    p.dz = tensors[17];
    p.ddelta_bias = tensors[18];
  }
  mmssm::v2m_corner_scan_launch<T>(p, backward);
}

}  // namespace

CUDA_EMULATOR_ENTRY_POINT(emulated_v2m_corner_scan, V2MCall)
