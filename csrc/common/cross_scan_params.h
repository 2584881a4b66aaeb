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
// Maps of more than kCrossPlaneMaxPixels pixels (and sides of at most that)
// take the plane kernels in bands (csrc/common/cuda/cross_band_kernel.cuh):
// row bands of band_rows rows for directions 0 and 2, column bands of
// band_cols columns for 1 and 3, each of at most kCrossPlaneMaxPixels
// pixels. Their buffers, bands innermost (max_lines = max(H, W) bounds the
// band counts):
//   chunk_states: (batch, 4, dim, 1, 1, max_lines), the state entering each
//     band of a direction's walk (saved for the backward pass)
//   line_adjoint: (batch, 4, dim, 1, max_lines), the adjoint entering each
//     band (scratch)
//   band_totals: (batch, 4, dim, max_lines) affine maps of the accumulation
//     type, each band's walk (scratch)
//   band_sum: (batch, dim, H, W) in the accumulation type, the row bands'
//     sum of out (du) that the column bands add to (scratch)
// and line_dt is empty.
//
// Per-line and per-chunk buffers, lines innermost (a warp's lanes own
// consecutive lines), sized for the longer axis:
//   line_states, line_adjoint: (batch, 4, dim, dstate, max_lines)
//   line_dt: (batch, 4, dim, max_lines), sum of a line's step sizes
//   chunk_states: (batch, 4, dim, dstate, max_chunks, max_lines), the state
//     before each chunk of kCrossChunk positions of a line
// The plane kernels recompute every state in the backward pass: on a whole
// map they save nothing (max_lines and max_chunks are 0), in bands the
// states entering the bands (above); they write out and du whole, in the
// input element type (the tiled kernels add directions into them, in the
// accumulation type).
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

  // Banded plane kernels (set_cross_bands); zero counts for other calls.
  int band_rows = 0;
  int band_cols = 0;
  int row_bands = 0;
  int col_bands = 0;
  void *band_totals = nullptr;
  void *band_sum = nullptr;
};

// Sets the band geometry of a plane call whose map has more than
// kCrossPlaneMaxPixels pixels: as many whole rows (columns) per band as the
// budget holds; whole multiples of kCrossPlaneItems columns where a band
// holds that many, so that a thread's run of pixels lies in one row.
inline void set_cross_bands(CrossScanParams &p) {
  if (!p.plane || p.height * p.width <= kCrossPlaneMaxPixels) return;
  p.band_rows = kCrossPlaneMaxPixels / p.width;
  p.row_bands = (p.height + p.band_rows - 1) / p.band_rows;
  int columns = kCrossPlaneMaxPixels / p.height;
  if (columns >= kCrossPlaneItems) columns -= columns % kCrossPlaneItems;
  p.band_cols = columns;
  p.col_bands = (p.width + columns - 1) / columns;
}

// Whether a call runs on the banded plane kernels.
inline bool cross_banded(const CrossScanParams &p) {
  return p.plane && p.row_bands > 0;
}

// Runs the forward pass (fills out, line_dt and chunk_states, using
// line_states as scratch) or the backward pass (fills the gradients, using
// line_adjoint as scratch) for element type T, on the plane kernels where
// `plane` is set.
template <typename T>
void cross_scan_launch(const CrossScanParams &params, bool backward);

}  // namespace mmssm
