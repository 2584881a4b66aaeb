// Plain-data description of one launch of V2M's corner scan (one pass along
// rows or columns from each of K corners), shared by the device-agnostic
// entry points (csrc/pytorch/v2m_corner_scan.cpp) and the CUDA kernels
// (csrc/common/cuda/v2m_corner_scan_kernel.cuh).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace mmssm {

// Layouts (spatial, as mmssm.ops.v2m_corner_scan):
//   u, z: (batch, K, dim, H, W), or (batch, dim, H, W) shared by the corners
//   delta, out, dout: (batch, K, dim, H, W); with merge_corners out and
//     dout are (batch, dim, H, W), the sum over the corners, in the
//     accumulation type
//   B, C: (batch, K, dstate, H, W) per pixel, or (K * dim, dstate) constant
//   A: (K * dim, dstate); D, delta_bias: (K * dim)
//
// A line is a row (axis row) or a column (axis col) of the map; corner k
// walks it backwards where bit k of `backwards_mask` is set. A block owns
// one (batch, corner), `block_channels` consecutive channels and
// `block_lines` consecutive lines; its thread c * block_lines + l owns
// channel c and line l of them with all their states. Grid: x = channel
// tiles, y = line tiles, z = batch * K.
//
// Pointers to weights (A, D, delta_bias, constant B/C), to chunk states and
// to gradients of weights, of u, of z and of B/C point to the accumulation
// type (float, or double for double inputs); all other pointers to the input
// element type. The plane kernels write du in the element type.
struct V2MScanParams {
  int batch = 0;
  int corners = 0;
  int dim = 0;
  int height = 0;
  int width = 0;
  int dstate = 0;
  int num_chunks = 1;  // ceil(length / kV2MChunk)
  int block_lines = 1;
  // ceil(2^32 / block_lines) for block_lines > 1 (v2m_line_magic): the
  // kernels divide by block_lines with a multiply-high.
  unsigned line_magic = 0;
  int block_channels = 1;
  int state_group = 1;  // states whose per-pixel B/C are staged at once
  bool axis_col = false;
  int64_t backwards_mask = 0;
  bool shared_u = false;
  bool shared_z = false;
  bool var_B = true;
  bool var_C = true;
  bool delta_softplus = false;
  // The corners' outputs are summed into one map, and all read the
  // gradient of that sum.
  bool merge_corners = false;
  // The pass runs on the plane kernels (v2m_plane_kernel.cuh): one block
  // per band of whole rows of a (batch element, channel) map, nothing
  // saved for the backward pass (chunk_states is empty) and the merged map
  // written whole. Chosen by v2m_corner_scan_planes.
  bool plane = false;
  // Rows per band and bands per map of a plane pass (set_v2m_bands: one
  // band on maps of up to kCrossPlaneMaxPixels pixels).
  int band_rows = 0;
  int bands = 0;

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
  // (batch, K, num_chunks - 1, dstate, dim, lines), lines innermost so that
  // neighbouring threads of a block touch neighbouring addresses. Empty
  // (no chunks) for the plane kernels.
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

// Positions per chunk: a block stages one chunk of every line it owns in
// shared memory at a time, and the backward pass recomputes one chunk's
// states in registers from the state saved at its start.
constexpr int kV2MChunk = 16;
// Row stride of a staged tile (one row per line and channel or state):
// odd, so that threads reading one position of different rows hit
// different banks.
constexpr int kV2MTileStride = kV2MChunk + 1;
constexpr int kV2MMaxLinesPerBlock = 16;
constexpr int kV2MMaxThreads = 128;
constexpr int kV2MMaxStateGroup = 4;
// States live in shared memory per thread (carried state, chunk start,
// weight gradients): the bound keeps a block of them within shared memory.
constexpr int kV2MMaxStates = 64;

// Offsets (in accumulation-type elements) of the arrays of a block's
// dynamic shared memory; absent arrays have size 0.
struct V2MSharedLayout {
  int u, delta, z, dout;  // per-channel tiles: threads rows
  int B, C;               // per-pixel B/C of state_group states
  int dB, dC;             // per-thread dB/dC of one state, summed later
  int carry;   // per state and thread: h (forward), a g (backward); N > 1
  int starts;  // per state and thread: h at the chunk start; N > 1
  int A, B_const, C_const;     // weights per block channel and state
  int dA, dB_const, dC_const;  // their gradients per state and thread
  int total;
};

MMSSM_HOST_DEVICE inline V2MSharedLayout v2m_shared_layout(
    const V2MScanParams &p, bool backward) {
  const int threads = p.block_channels * p.block_lines;
  const int tile = threads * kV2MTileStride;
  const int matrix_tile = p.state_group * p.block_lines * kV2MTileStride;
  const int per_channel_state = p.block_channels * p.dstate;
  const bool has_z = p.z != nullptr;
  // The kernels for one state keep the carried state and the chunk start in
  // registers, and write a step's dB over its dout, which only the same
  // thread reads, at the same step, just before.
  const bool one_state = p.dstate == 1;
  const int per_thread_state = one_state ? 0 : p.dstate * threads;
  V2MSharedLayout layout;
  int offset = 0;
  layout.u = offset;
  offset += tile;
  layout.delta = offset;
  offset += tile;
  layout.z = offset;
  offset += has_z ? tile : 0;
  layout.dout = offset;
  offset += backward ? tile : 0;
  layout.B = offset;
  offset += p.var_B ? matrix_tile : 0;
  layout.C = offset;
  offset += p.var_C ? matrix_tile : 0;
  layout.dB = one_state ? layout.dout : offset;
  offset += backward && p.var_B && !one_state ? tile : 0;
  layout.dC = offset;
  offset += backward && p.var_C ? tile : 0;
  layout.carry = offset;
  offset += per_thread_state;
  layout.starts = offset;
  offset += backward ? per_thread_state : 0;
  layout.A = offset;
  offset += per_channel_state;
  layout.B_const = offset;
  offset += p.var_B ? 0 : per_channel_state;
  layout.C_const = offset;
  offset += p.var_C ? 0 : per_channel_state;
  layout.dA = offset;
  offset += backward ? p.dstate * threads : 0;
  layout.dB_const = offset;
  offset += backward && !p.var_B ? p.dstate * threads : 0;
  layout.dC_const = offset;
  offset += backward && !p.var_C ? p.dstate * threads : 0;
  layout.total = offset;
  return layout;
}

// The multiplier of V2MScanParams::line_magic for `lines` > 1.
inline unsigned v2m_line_magic(int lines) {
  return static_cast<unsigned>(((uint64_t{1} << 32) + lines - 1) / lines);
}

// Launches the forward (or backward) kernel for element type T on the
// current CUDA stream; instantiated per type in
// csrc/pytorch/cuda/v2m_corner_scan_*.cu. The block shape fields of params
// (block_lines, block_channels, state_group) are chosen here.
template <typename T>
void v2m_corner_scan_launch(const V2MScanParams &params, bool backward);

// Whether a pass with element type T runs on the plane kernels: one state,
// no gate, and a map of at most kCrossPlaneMaxPixels pixels, or for the row
// pass rows of at most that many (in bands), whose shared maps fit the
// current GPU (v2m_uses_planes; mmssm/ops/cuda_ops.py mirrors it for its
// shapes). Instantiated with the launcher.
template <typename T>
bool v2m_corner_scan_planes(const V2MScanParams &params);

}  // namespace mmssm
