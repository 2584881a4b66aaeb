// C entry point of the emulated wavefront-scan kernels of Mamba2D
// (csrc/common/cuda/wavefront_scan_kernel.cuh), for ctypes: the buffers
// and params that csrc/pytorch/wavefront_scan.cpp gives them, on host
// memory. Returns 0, or 1 with the error message in `error`.
#include <algorithm>
#include <limits>
#include <vector>

#include "wavefront_scan_kernel.cuh"

namespace {

// The shape and options of a call, as the C++ entry point reads them.
// tiles_in_flight: one block per tile (wavefront_scan_params.h), with
// num_slots backward scratch slots.
struct WavefrontCall {
  int batch, height, width, channels, dstate, tile_width;
  int delta_softplus, origin_br, tiles_in_flight, num_slots;
};

// tensors: x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
// delta_bias_l, out, boundary, then backward dout, dx, ddelta_t, ddelta_l,
// dA_t, dA_l, dB_t, dB_l, dC, dD, ddelta_bias_t, ddelta_bias_l (D, the
// biases and their gradients may be null; weight and projection gradients
// zeroed).
template <typename T>
void run(bool backward, const WavefrontCall &call, void *const *tensors) {
  mmssm::WavefrontScanParams p;
  p.batch = call.batch;
  p.height = call.height;
  p.width = call.width;
  p.channels = call.channels;
  p.dstate = call.dstate;
  p.lanes_per_channel = 1;
  while (p.lanes_per_channel < call.dstate) p.lanes_per_channel *= 2;
  const int channels_per_warp = 32 / p.lanes_per_channel;
  p.num_groups = (call.channels + channels_per_warp - 1) / channels_per_warp;
  p.tile_width = std::min(call.tile_width, call.width);
  p.num_tiles = (call.width + p.tile_width - 1) / p.tile_width;
  p.delta_softplus = call.delta_softplus;
  p.origin_br = call.origin_br;
  void *const *t = tensors;
  p.x = t[0];
  p.delta_t = t[1];
  p.delta_l = t[2];
  p.A_t = t[3];
  p.A_l = t[4];
  p.B_t = t[5];
  p.B_l = t[6];
  p.C = t[7];
  p.D = t[8];
  p.delta_bias_t = t[9];
  p.delta_bias_l = t[10];
  p.out = t[11];
  p.boundary = t[12];
  // Scratch the kernels must write before they read: filled with NaN.
  const size_t sequences = static_cast<size_t>(call.batch) * p.num_groups;
  size_t scratch_blocks = sequences, adjoint_columns = 1;
  std::vector<int> tile_sync;
  if (call.tiles_in_flight && p.num_tiles > 1) {  // as wavefront_scan.cpp
    p.num_slots = backward ? call.num_slots : 0;
    scratch_blocks = call.num_slots;
    adjoint_columns = p.num_tiles - 1;
    tile_sync.assign(mmssm::TileSyncLayout(p).size(p.num_slots), 0);
    p.tile_sync = tile_sync.data();
  }
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> scratch(scratch_blocks * call.height * p.tile_width * 32,
                         nan);
  std::vector<T> right_adjoint(
      adjoint_columns * sequences * call.height * 32, nan);
  if (backward) {
    p.dout = t[13];
    p.dx = t[14];
    p.ddelta_t = t[15];
    p.ddelta_l = t[16];
    p.dA_t = t[17];
    p.dA_l = t[18];
    p.dB_t = t[19];
    p.dB_l = t[20];
    p.dC = t[21];
    p.dD = t[22];
    p.ddelta_bias_t = t[23];
    p.ddelta_bias_l = t[24];
    p.scratch = scratch.data();
    p.right_adjoint = right_adjoint.data();
  }
  mmssm::wavefront_scan_launch<T>(p, backward);
}

}  // namespace

CUDA_EMULATOR_ENTRY_POINT(emulated_wavefront_scan, WavefrontCall)
