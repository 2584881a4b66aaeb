// Plain-data description of one launch of Mamba2D's 2D wavefront scan, shared
// by the device-agnostic entry points (csrc/pytorch/wavefront_scan.cpp) and
// the CUDA kernels (csrc/common/cuda/wavefront_scan_kernel.cuh).
#pragma once

#include "host_device.h"

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
// Tiles in flight (`tile_sync` set; few sequences, where one block per
// sequence would leave most SMs idle): a block walks one tile of one
// sequence instead, tiles of a sequence running side by side a few rows
// apart. Blocks take their (tile, sequence) from a ticket, tile by tile
// (left to right forwards, right to left backwards), so a block only waits
// for blocks that got their ticket before it and are therefore running. A
// tile publishes how many rows of its hand-over column (the boundary states
// forwards, the adjoint entering the tile on its left backwards) are in
// memory every kWavefrontProgressRows rows; its neighbour waits for them.
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
  // Tiles in flight: zeroed ints laid out as TileSyncLayout says. Null: a
  // block walks every tile of its sequence.
  int *tile_sync = nullptr;
  // Backward with tiles in flight: tile-sized scratch slots, taken by
  // ticket modulo num_slots; a block waits until the slot's previous
  // holder (ticket - num_slots) has finished.
  int num_slots = 0;

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
  // States of one tile: (batch, num_groups, height, tile_width, 32), or
  // (num_slots, height, tile_width, 32) with tiles in flight.
  void *scratch = nullptr;
  // Adjoint entering a tile from the one on its right: (1, batch,
  // num_groups, height, 32), or (num_tiles - 1, ...) with tiles in flight.
  void *right_adjoint = nullptr;
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

// Rows of a hand-over column between two publications of its progress.
constexpr int kWavefrontProgressRows = 8;

// Indices of the ints of tile_sync (tiles in flight): the ticket counter,
// then the progress of the hand-over column after every tile but the last
// (forwards; before every tile but the first backwards) of every sequence,
// (num_tiles - 1, batch, num_groups), then the generation of every backward
// scratch slot (how many holders released it).
struct TileSyncLayout {
  long long sequences, handovers;

  MMSSM_HOST_DEVICE explicit TileSyncLayout(const WavefrontScanParams &p)
      : sequences(static_cast<long long>(p.batch) * p.num_groups),
        handovers((p.num_tiles - 1) * sequences) {}

  static constexpr long long kTicket = 0;

  // Progress of the hand-over column between tiles `column` and
  // `column + 1` of sequence `sequence`.
  MMSSM_HOST_DEVICE long long progress(int column, int sequence) const {
    return 1 + column * sequences + sequence;
  }

  MMSSM_HOST_DEVICE long long slot_generation(int slot) const {
    return 1 + handovers + slot;
  }

  // Ints of the buffer with `slots` scratch slots (none forwards).
  MMSSM_HOST_DEVICE long long size(int slots) const {
    return 1 + handovers + slots;
  }
};

// Launches the forward (or backward) kernel for element type T on the
// current CUDA stream; instantiated per type in
// csrc/pytorch/cuda/wavefront_scan_*.cu.
template <typename T>
void wavefront_scan_launch(const WavefrontScanParams &params, bool backward);

// Blocks of the backward kernel for element type T that the current device
// runs at once (its SMs times the blocks per SM), for the scratch slots.
template <typename T>
int wavefront_backward_resident_blocks(const WavefrontScanParams &params);

}  // namespace mmssm
