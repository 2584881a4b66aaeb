// Plain-data description of one launch of the fused LayerNorm / RMSNorm,
// shared by the device-agnostic entry points (csrc/pytorch/norm.cpp) and the
// CUDA kernels (csrc/common/cuda/norm_kernel.cuh).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace mmssm {

// Layouts (made contiguous by the Python side, mmssm/ops/cuda_ops.py):
//   channel-last x, dx: (rows, channels) in the input element type TIn;
//   channels-first x, dx: (batch, channels, positions), rows = batch *
//     positions, row r = (r / positions, r % positions);
//   out, dout: (rows, channels) in the output element type TOut, whatever
//     the layout of x (a channels-first norm is also a transpose);
//   weight, bias, dweight, dbias: (channels) in the accumulation type
//     (float, or double for double inputs);
//   mean, rstd: (rows) in the accumulation type (mean unused by RMSNorm).
// LayerNorm: out = (x - mean) * rstd * weight + bias over each row's
// channels, rstd = 1 / sqrt(var + eps) with the biased variance; RMSNorm:
// out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
struct NormParams {
  int64_t rows = 0;
  int channels = 0;
  int64_t positions = 0;  // channels-first only
  bool channels_first = false;
  bool rms = false;
  double eps = 0.0;

  const void *x = nullptr;
  const void *weight = nullptr;  // nullptr: weight 1
  const void *bias = nullptr;    // nullptr: bias 0 (always for RMSNorm)
  void *out = nullptr;
  void *mean = nullptr;
  void *rstd = nullptr;

  // Backward. dweight and dbias are zeroed by the caller; each block sums
  // its rows' gradients in shared memory, then adds them with one atomic per
  // channel (the order of those adds is not deterministic).
  const void *dout = nullptr;
  void *dx = nullptr;
  void *dweight = nullptr;  // nullptr: no weight
  void *dbias = nullptr;    // nullptr: no bias
  int grid = 0;             // blocks of the backward launch
};

// Threads of every norm block: kNormWarps warps of 32.
constexpr int kNormWarps = 8;
constexpr int kNormThreads = 32 * kNormWarps;
// Largest number of channels of the channel-last kernels, which keep a row
// in the registers of one warp (64 per lane).
constexpr int kNormMaxChannels = 2048;
// Positions of a channels-first tile (one block of the forward kernel).
constexpr int kNormTile = 32;

// Tiles of a channels-first launch: kNormTile positions of one batch
// element each.
MMSSM_HOST_DEVICE inline int64_t norm_num_tiles(const NormParams &p) {
  return p.rows / p.positions * ((p.positions + kNormTile - 1) / kNormTile);
}

// Launches the forward (or backward) kernel for input element type TIn and
// output element type TOut on the current CUDA stream; instantiated in
// csrc/pytorch/cuda/norm_*.cu, one file per input type.
template <typename TIn, typename TOut>
void norm_launch(const NormParams &params, bool backward);

}  // namespace mmssm
