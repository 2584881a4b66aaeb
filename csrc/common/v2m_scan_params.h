// Plain-data description of one launch of V2M's corner scan (one pass along
// rows or columns from each of K corners), shared by the device-agnostic
// entry points (csrc/pytorch/v2m_corner_scan.cpp) and the CUDA kernels
// (csrc/common/cuda/v2m_corner_scan_kernel.cuh).
#pragma once

#include <cstdint>

namespace mmssm {

// Layouts (spatial, as mmssm.ops.v2m_corner_scan):
//   u, z: (batch, K, dim, H, W), or (batch, dim, H, W) shared by the corners
//   delta, out, dout: (batch, K, dim, H, W)
//   B, C: (batch, K, dstate, H, W) per pixel, or (K * dim, dstate) constant
//   A: (K * dim, dstate); D, delta_bias: (K * dim)
//
// A line is a row (axis row) or a column (axis col) of the map; corner k
// walks it backwards where bit k of `backwards_mask` is set. A thread owns
// one (channel, state) pair of one line of one corner and batch element and
// walks the line sequentially; the 32 lanes of a warp hold consecutive
// channels, `lanes_per_channel` (dstate rounded up to a power of two) lanes
// each. Grid: x = channel groups of kV2MWarps warps, y = lines,
// z = batch * K.
//
// Pointers to weights (A, D, delta_bias, constant B/C), to chunk states and
// to gradients of weights, of u, of z and of B/C point to the accumulation
// type (float, or double for double inputs); all other pointers to the input
// element type.
struct V2MScanParams {
  int batch = 0;
  int corners = 0;
  int dim = 0;
  int height = 0;
  int width = 0;
  int dstate = 0;
  int lanes_per_channel = 1;
  int num_chunks = 1;  // ceil(length / kV2MChunk)
  bool axis_col = false;
  int64_t backwards_mask = 0;
  bool shared_u = false;
  bool shared_z = false;
  bool var_B = true;
  bool var_C = true;
  bool delta_softplus = false;

  const void *u = nullptr;
  const void *delta = nullptr;
  const void *A = nullptr;
  const void *B = nullptr;
  const void *C = nullptr;
  const void *D = nullptr;
  const void *z = nullptr;
  const void *delta_bias = nullptr;

  void *out = nullptr;
  // State at the start of every chunk but the first:
  // (batch, K, lines, num_chunks - 1, dim, dstate).
  void *chunk_states = nullptr;

  // Backward.
  const void *dout = nullptr;
  void *du = nullptr;
  void *ddelta = nullptr;
  void *dA = nullptr;
  void *dB = nullptr;
  void *dC = nullptr;
  void *dD = nullptr;
  void *dz = nullptr;
  void *ddelta_bias = nullptr;
};

// Positions per chunk: the backward pass recomputes one chunk's states in
// registers from the state saved at its start.
constexpr int kV2MChunk = 16;
constexpr int kV2MWarps = 4;

// Launches the forward (or backward) kernel for element type T on the
// current CUDA stream; instantiated per type in
// csrc/pytorch/cuda/v2m_corner_scan_*.cu.
template <typename T>
void v2m_corner_scan_launch(const V2MScanParams &params, bool backward);

}  // namespace mmssm
