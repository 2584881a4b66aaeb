// Plain-data description of one launch of Mamba2D's 2D wavefront scan, shared
// by the device-agnostic entry points (csrc/pytorch/wavefront_scan.cpp) and
// the CUDA kernels (csrc/common/cuda/wavefront_scan_kernel.cuh).
#pragma once

namespace mmssm {

// Layouts (channel-last, as mmssm.ops.wavefront_scan_2d):
//   x, delta_t, delta_l, out, dout: (batch, height, width, channels)
//   B_t, B_l, C: (batch, height, width, dstate)
//   A_t, A_l: (channels, dstate); D, delta_bias_t, delta_bias_l: (channels)
//
// A thread owns one (channel, state) pair of one batch element and one
// column of a tile of `tile_width` consecutive columns; the 32 lanes of a
// warp hold `32 / lanes_per_channel` channels, `lanes_per_channel` (dstate
// rounded up to a power of two) lanes each. A block (blockIdx.x: channel
// group, blockIdx.y: batch element) has one warp per column of a tile and
// walks the tile's anti-diagonals; the tiles are visited left to right.
//
// Pointers to weights, boundary/scratch states and weight gradients point to
// the accumulation type (float, or double for double inputs); the gradients
// of B_t, B_l and C are accumulated with atomics in it too. All other
// pointers point to the input element type.
struct WavefrontScanParams {
  int batch = 0;
  int height = 0;
  int width = 0;
  int channels = 0;
  int dstate = 0;
  int lanes_per_channel = 1;
  int num_groups = 0;  // channel groups of one warp, gridDim.x
  int tile_width = 1;  // columns per tile = warps per block
  int num_tiles = 1;
  bool delta_softplus = false;
  bool origin_br = false;  // scan from the bottom-right corner

  const void *x = nullptr;
  const void *delta_t = nullptr;
  const void *delta_l = nullptr;
  const void *A_t = nullptr;
  const void *A_l = nullptr;
  const void *B_t = nullptr;
  const void *B_l = nullptr;
  const void *C = nullptr;
  const void *D = nullptr;
  const void *delta_bias_t = nullptr;
  const void *delta_bias_l = nullptr;

  void *out = nullptr;
  // States of the last column of every tile but the last:
  // (batch, num_groups, num_tiles - 1, height, 32). Written by the forward
  // pass, read by the backward pass.
  void *boundary = nullptr;

  // Backward.
  const void *dout = nullptr;
  void *scratch = nullptr;      // states of one tile: (batch, num_groups,
                                // height, tile_width, 32)
  void *right_adjoint = nullptr;  // (batch, num_groups, height, 32)
  void *dx = nullptr;
  void *ddelta_t = nullptr;
  void *ddelta_l = nullptr;
  void *dA_t = nullptr;
  void *dA_l = nullptr;
  void *dB_t = nullptr;
  void *dB_l = nullptr;
  void *dC = nullptr;
  void *dD = nullptr;
  void *ddelta_bias_t = nullptr;
  void *ddelta_bias_l = nullptr;
};

// Largest tile width (warps per block) the kernels are compiled for, and
// the width up to which the forward kernel runs four blocks per SM.
constexpr int kWavefrontMaxTileWidth = 32;
constexpr int kWavefrontNarrowTileWidth = 16;

// Launches the forward (or backward) kernel for element type T on the
// current CUDA stream; instantiated per type in
// csrc/pytorch/cuda/wavefront_scan_*.cu.
template <typename T>
void wavefront_scan_launch(const WavefrontScanParams &params, bool backward);

}  // namespace mmssm
