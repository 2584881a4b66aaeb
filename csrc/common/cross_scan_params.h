// Plain-data description of VMamba's four-direction cross scan for the
// tiled and the plane kernels, shared by the device-agnostic entry points
// (csrc/pytorch/cross_scan.cpp) and the CUDA kernels
// (csrc/common/cuda/cross_scan_kernel.cuh).
#pragma once

#include <cstdint>

namespace mmssm {

// Positions of a line staged per step of a block, lines per block (a warp's
// lanes) and channels per block (one warp each).
constexpr int kCrossChunk = 16;
constexpr int kCrossLines = 32;
constexpr int kCrossChannels = 4;
// States a thread holds in registers; larger states take the selective-scan
// kernels' cross layout.
constexpr int kCrossMaxStates = 4;
// The plane kernels (csrc/common/cuda/cross_plane_kernel.cuh): one block per
// (batch element, channel) map of up to kCrossPlaneMaxPixels pixels and one
// state, each thread owning kCrossPlaneItems steps of a walk.
constexpr int kCrossPlaneMaxPixels = 4096;
constexpr int kCrossPlaneItems = 8;
constexpr int kCrossPlaneMaxThreads = 512;

// Layouts (spatial, as mmssm.ops.cross_selective_scan):
//   u, out, dout, du: (batch, dim, H, W)
//   delta, ddelta: (batch, 4, dim, H, W)
//   B, C, dB, dC: (batch, 4, dstate, H, W)
//   A, dA: (4 * dim, dstate); D, delta_bias and their gradients: (4 * dim)
//
// Direction k walks the map as mmssm.ops.cross_scan's path k: rows for even
// k, columns for odd k (its lines), forwards for k < 2 and from the last
// pixel for k >= 2 (lines and positions in reverse). The state runs on
// from the end of one line into the next line of the walk.
//
// Per-line and per-chunk buffers, lines innermost (a warp's lanes own
// consecutive lines), sized for the longer axis:
//   line_states, line_adjoint: (batch, 4, dim, dstate, max_lines)
//   line_dt: (batch, 4, dim, max_lines), sum of a line's step sizes
//   chunk_states: (batch, 4, dim, dstate, max_chunks, max_lines), the state
//     before each chunk of kCrossChunk positions of a line
// The plane kernels recompute every state in the backward pass: they save
// nothing (max_lines and max_chunks are 0) and write out and du whole, in
// the input element type (the tiled kernels add directions into them, in
// the accumulation type).
//
// Pointers to weights, per-line and per-chunk buffers, dB and dC, and the
// tiled kernels' out and du, point to the accumulation type (float, or
// double for double inputs); the others to the input element type.
struct CrossScanParams {
  int batch = 0;
  int dim = 0;
  int height = 0;
  int width = 0;
  int dstate = 0;
  int max_lines = 0;
  int max_chunks = 0;
  bool delta_softplus = false;
  bool plane = false;  // the plane kernels, else the tiled ones

  const void *u = nullptr;
  const void *delta = nullptr;
  const void *A = nullptr;
  const void *B = nullptr;
  const void *C = nullptr;
  const void *D = nullptr;
  const void *delta_bias = nullptr;

  void *out = nullptr;
  void *line_states = nullptr;
  void *line_dt = nullptr;
  void *chunk_states = nullptr;

  // Backward.
  const void *dout = nullptr;
  void *line_adjoint = nullptr;
  void *du = nullptr;
  void *ddelta = nullptr;
  void *dA = nullptr;
  void *dB = nullptr;
  void *dC = nullptr;
  void *dD = nullptr;
  void *ddelta_bias = nullptr;
};

// Runs the forward pass (fills out, line_dt and chunk_states, using
// line_states as scratch) or the backward pass (fills the gradients, using
// line_adjoint as scratch) for element type T, on the plane kernels where
// `plane` is set.
template <typename T>
void cross_scan_launch(const CrossScanParams &params, bool backward);

}  // namespace mmssm
