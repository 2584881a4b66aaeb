// Fused LayerNorm / RMSNorm over channels, forward and backward, computed in
// float (double for double inputs) from the input's own dtype and stored in
// the output dtype, so that a float32 residual stream feeds a half-precision
// matrix product without a float32 output and a cast copy, as PyTorch's
// layer_norm under autocast makes.
//
// With xhat = (x - mean) * rstd (RMSNorm: mean = 0) and g = dout * weight:
//   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))  (RMSNorm: no
//   mean_c(g) term), dweight = sum_rows dout * xhat, dbias = sum_rows dout.
//
// Channel-last rows: one warp per row, lane l owning channels l + 32 i, so a
// row is read and written in whole sectors; statistics in two passes over
// registers (exact, no cancellation). Backward: each block walks its rows
// keeping the lanes' weight/bias gradient sums in registers, sums its warps
// in shared memory and adds the result to the weight/bias gradients.
//
// Channels-first maps (batch, channels, positions), e.g. a scan output: a
// block owns 32 consecutive positions, a lane one position and each warp
// every kNormWarps-th channel, so loads run along the contiguous positions;
// statistics in two passes whose reloads hit L1/L2. The channel-last output
// goes through a 32 x 32 shared tile so its stores run along the channels;
// the backward pass stages the channel-last output gradient the same way.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "norm_params.h"
#include "selective_scan_kernel.cuh"

namespace mmssm {

__device__ __forceinline__ float norm_rsqrt(float x) { return rsqrtf(x); }
__device__ __forceinline__ double norm_rsqrt(double x) {
  return 1.0 / sqrt(x);
}

template <typename acc_t>
__device__ __forceinline__ acc_t weight_at(const NormParams &p, int c) {
  return p.weight ? static_cast<const acc_t *>(p.weight)[c] : acc_t(1);
}

template <typename acc_t>
__device__ __forceinline__ acc_t bias_at(const NormParams &p, int c) {
  return p.bias ? static_cast<const acc_t *>(p.bias)[c] : acc_t(0);
}

// Channel-last forward; kItems >= channels / 32 values of a row per lane.
template <typename TIn, typename TOut, int kItems>
__global__ void __launch_bounds__(kNormThreads)
    norm_rows_forward_kernel(NormParams p) {
  using acc_t = typename AccumType<TIn>::type;
  const int lane = threadIdx.x & 31;
  const int channels = p.channels;
  const acc_t inv_channels = acc_t(1) / acc_t(channels);
  const TIn *x = static_cast<const TIn *>(p.x);
  TOut *out = static_cast<TOut *>(p.out);
  const int64_t num_warps = int64_t(gridDim.x) * kNormWarps;
  for (int64_t row = int64_t(blockIdx.x) * kNormWarps + (threadIdx.x >> 5);
       row < p.rows; row += num_warps) {
    const TIn *x_row = x + row * channels;
    acc_t values[kItems];
    acc_t sum = acc_t(0);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int c = lane + 32 * i;
      values[i] = c < channels ? to_acc<acc_t>(x_row[c]) : acc_t(0);
      sum += values[i];
    }
    const acc_t mean = p.rms ? acc_t(0) : warp_sum(sum) * inv_channels;
    acc_t squares = acc_t(0);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const acc_t centred = lane + 32 * i < channels ? values[i] - mean
                                                     : acc_t(0);
      squares += centred * centred;
    }
    const acc_t rstd = norm_rsqrt(warp_sum(squares) * inv_channels +
                                  static_cast<acc_t>(p.eps));
    TOut *out_row = out + row * channels;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int c = lane + 32 * i;
      if (c < channels)
        out_row[c] = from_acc<TOut>((values[i] - mean) * rstd *
                                        weight_at<acc_t>(p, c) +
                                    bias_at<acc_t>(p, c));
    }
    if (lane == 0) {
      if (!p.rms) static_cast<acc_t *>(p.mean)[row] = mean;
      static_cast<acc_t *>(p.rstd)[row] = rstd;
    }
  }
}

// The block's weight and bias gradient sums (dynamic shared memory, two rows
// of `channels`), zeroed.
template <typename acc_t>
__device__ __forceinline__ acc_t *zeroed_gradient_sums(const NormParams &p) {
  extern __shared__ __align__(16) unsigned char norm_shared_raw[];
  acc_t *sums = reinterpret_cast<acc_t *>(norm_shared_raw);
  for (int c = threadIdx.x; c < 2 * p.channels; c += kNormThreads)
    sums[c] = acc_t(0);
  __syncthreads();
  return sums;
}

// Adds a block's weight/bias gradient sums (dynamic shared memory, two rows
// of `channels`) to the gradients in global memory.
template <typename acc_t>
__device__ __forceinline__ void add_norm_gradients(const NormParams &p,
                                                   const acc_t *dweight,
                                                   const acc_t *dbias) {
  __syncthreads();
  for (int c = threadIdx.x; c < p.channels; c += kNormThreads) {
    if (p.dweight) atomicAdd(static_cast<acc_t *>(p.dweight) + c, dweight[c]);
    if (p.dbias) atomicAdd(static_cast<acc_t *>(p.dbias) + c, dbias[c]);
  }
}

// Channel-last backward; rows of a block walked by its warps, gradients of
// the weight and bias summed per lane, then per block.
template <typename TIn, typename TOut, int kItems>
__global__ void __launch_bounds__(kNormThreads)
    norm_rows_backward_kernel(NormParams p) {
  using acc_t = typename AccumType<TIn>::type;
  acc_t *dweight_block = zeroed_gradient_sums<acc_t>(p);
  acc_t *dbias_block = dweight_block + p.channels;

  const int lane = threadIdx.x & 31;
  const int channels = p.channels;
  const acc_t inv_channels = acc_t(1) / acc_t(channels);
  const TIn *x = static_cast<const TIn *>(p.x);
  const TOut *dout = static_cast<const TOut *>(p.dout);
  TIn *dx = static_cast<TIn *>(p.dx);
  acc_t dweight[kItems], dbias[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) dweight[i] = dbias[i] = acc_t(0);
  const int64_t num_warps = int64_t(gridDim.x) * kNormWarps;
  for (int64_t row = int64_t(blockIdx.x) * kNormWarps + (threadIdx.x >> 5);
       row < p.rows; row += num_warps) {
    const size_t offset = size_t(row) * channels;
    const acc_t mean = p.rms ? acc_t(0) : static_cast<const acc_t *>(p.mean)[row];
    const acc_t rstd = static_cast<const acc_t *>(p.rstd)[row];
    // The second pass reloads the row (from L1) instead of keeping it:
    // registers hold the gradient sums of up to 64 channels a lane.
    acc_t sum_g = acc_t(0), sum_gx = acc_t(0);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int c = lane + 32 * i;
      if (c >= channels) continue;
      const acc_t dy = to_acc<acc_t>(dout[offset + c]);
      const acc_t xhat = (to_acc<acc_t>(x[offset + c]) - mean) * rstd;
      const acc_t g = dy * weight_at<acc_t>(p, c);
      sum_g += g;
      sum_gx += g * xhat;
      dweight[i] += dy * xhat;
      dbias[i] += dy;
    }
    const acc_t mean_g = p.rms ? acc_t(0) : warp_sum(sum_g) * inv_channels;
    const acc_t mean_gx = warp_sum(sum_gx) * inv_channels;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int c = lane + 32 * i;
      if (c >= channels) continue;
      const acc_t xhat = (to_acc<acc_t>(x[offset + c]) - mean) * rstd;
      const acc_t g = to_acc<acc_t>(dout[offset + c]) * weight_at<acc_t>(p, c);
      dx[offset + c] = from_acc<TIn>(rstd * (g - mean_g - xhat * mean_gx));
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int c = lane + 32 * i;
    if (c < channels) {
      atomicAdd(dweight_block + c, dweight[i]);
      atomicAdd(dbias_block + c, dbias[i]);
    }
  }
  add_norm_gradients(p, dweight_block, dbias_block);
}

// Sum over the block's warps of one value per lane (position); every thread
// must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t norm_column_sum(
    acc_t value, acc_t (&partial)[kNormWarps][kNormTile]) {
  const int lane = threadIdx.x & 31;
  partial[threadIdx.x >> 5][lane] = value;
  __syncthreads();
  acc_t total = acc_t(0);
#pragma unroll
  for (int w = 0; w < kNormWarps; ++w) total += partial[w][lane];
  __syncthreads();
  return total;
}

// Where a channels-first tile lies: its batch element and first position.
struct NormTile {
  int64_t batch;
  int64_t first;
};

__device__ __forceinline__ NormTile norm_tile(const NormParams &p,
                                              int64_t index) {
  const int64_t tiles_per_batch = (p.positions + kNormTile - 1) / kNormTile;
  return {index / tiles_per_batch, (index % tiles_per_batch) * kNormTile};
}

// Stages the channel-last (rows, channels) gradient of tile rows [first,
// first + 32) and channels [c0, c0 + 32) into tile[position][channel].
template <typename acc_t, typename TOut>
__device__ __forceinline__ void stage_norm_dout(
    const NormParams &p, const NormTile &t, int c0,
    acc_t (&tile)[kNormTile][kNormTile + 1]) {
  const int lane = threadIdx.x & 31;
  const TOut *dout = static_cast<const TOut *>(p.dout);
  for (int r = threadIdx.x >> 5; r < kNormTile; r += kNormWarps) {
    const int64_t position = t.first + r;
    const int c = c0 + lane;
    tile[r][lane] =
        position < p.positions && c < p.channels
            ? to_acc<acc_t>(
                  dout[(t.batch * p.positions + position) * p.channels + c])
            : acc_t(0);
  }
}

template <typename TIn, typename TOut>
__global__ void __launch_bounds__(kNormThreads)
    norm_channels_first_forward_kernel(NormParams p) {
  using acc_t = typename AccumType<TIn>::type;
  __shared__ acc_t tile[kNormTile][kNormTile + 1];
  __shared__ acc_t partial[kNormWarps][kNormTile];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int channels = p.channels;
  const int64_t positions = p.positions;
  const acc_t inv_channels = acc_t(1) / acc_t(channels);
  TOut *out = static_cast<TOut *>(p.out);
  const int64_t num_tiles = norm_num_tiles(p);
  for (int64_t index = blockIdx.x; index < num_tiles; index += gridDim.x) {
    const NormTile t = norm_tile(p, index);
    const int64_t position = t.first + lane;
    const bool valid = position < positions;
    const TIn *x = static_cast<const TIn *>(p.x) +
                   t.batch * channels * positions + position;
    acc_t mean = acc_t(0);
    if (!p.rms) {
      acc_t sum = acc_t(0);
      for (int c = warp; c < channels; c += kNormWarps)
        if (valid) sum += to_acc<acc_t>(x[c * positions]);
      mean = norm_column_sum(sum, partial) * inv_channels;
    }
    acc_t squares = acc_t(0);
    for (int c = warp; c < channels; c += kNormWarps) {
      if (!valid) continue;
      const acc_t centred = to_acc<acc_t>(x[c * positions]) - mean;
      squares += centred * centred;
    }
    const acc_t rstd = norm_rsqrt(norm_column_sum(squares, partial) *
                                      inv_channels +
                                  static_cast<acc_t>(p.eps));
    if (warp == 0 && valid) {
      const int64_t row = t.batch * positions + position;
      if (!p.rms) static_cast<acc_t *>(p.mean)[row] = mean;
      static_cast<acc_t *>(p.rstd)[row] = rstd;
    }
    for (int c0 = 0; c0 < channels; c0 += kNormTile) {
      for (int k = warp; k < kNormTile; k += kNormWarps) {
        const int c = c0 + k;
        tile[lane][k] = valid && c < channels
                            ? (to_acc<acc_t>(x[c * positions]) - mean) *
                                      rstd * weight_at<acc_t>(p, c) +
                                  bias_at<acc_t>(p, c)
                            : acc_t(0);
      }
      __syncthreads();
      for (int r = warp; r < kNormTile; r += kNormWarps) {
        const int c = c0 + lane;
        if (t.first + r < positions && c < channels)
          out[(t.batch * positions + t.first + r) * channels + c] =
              from_acc<TOut>(tile[r][lane]);
      }
      __syncthreads();
    }
  }
}

template <typename TIn, typename TOut>
__global__ void __launch_bounds__(kNormThreads)
    norm_channels_first_backward_kernel(NormParams p) {
  using acc_t = typename AccumType<TIn>::type;
  __shared__ acc_t tile[kNormTile][kNormTile + 1];
  __shared__ acc_t partial[kNormWarps][kNormTile];
  acc_t *dweight_block = zeroed_gradient_sums<acc_t>(p);
  acc_t *dbias_block = dweight_block + p.channels;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int channels = p.channels;
  const int64_t positions = p.positions;
  const acc_t inv_channels = acc_t(1) / acc_t(channels);
  const int64_t num_tiles = norm_num_tiles(p);
  for (int64_t index = blockIdx.x; index < num_tiles; index += gridDim.x) {
    const NormTile t = norm_tile(p, index);
    const int64_t position = t.first + lane;
    const bool valid = position < positions;
    const int64_t row = t.batch * positions + position;
    const int64_t offset = t.batch * channels * positions + position;
    const TIn *x = static_cast<const TIn *>(p.x) + offset;
    // Positions past the map get rstd 0, hence xhat 0, and dout 0.
    const acc_t mean =
        valid && !p.rms ? static_cast<const acc_t *>(p.mean)[row] : acc_t(0);
    const acc_t rstd =
        valid ? static_cast<const acc_t *>(p.rstd)[row] : acc_t(0);
    acc_t sum_g = acc_t(0), sum_gx = acc_t(0);
    for (int c0 = 0; c0 < channels; c0 += kNormTile) {
      stage_norm_dout<acc_t, TOut>(p, t, c0, tile);
      __syncthreads();
      for (int k = warp; k < kNormTile && c0 + k < channels;
           k += kNormWarps) {
        // Channel c0 + k is always this warp's (k = c % 32): no races on
        // its shared gradient sums.
        const int c = c0 + k;
        const acc_t dy = tile[lane][k];
        const acc_t xhat =
            valid ? (to_acc<acc_t>(x[c * positions]) - mean) * rstd
                  : acc_t(0);
        const acc_t g = dy * weight_at<acc_t>(p, c);
        sum_g += g;
        sum_gx += g * xhat;
        const acc_t dweight = warp_sum(dy * xhat);
        const acc_t dbias = warp_sum(dy);
        if (lane == 0) {
          dweight_block[c] += dweight;
          dbias_block[c] += dbias;
        }
      }
      __syncthreads();
    }
    const acc_t mean_g =
        p.rms ? acc_t(0) : norm_column_sum(sum_g, partial) * inv_channels;
    const acc_t mean_gx = norm_column_sum(sum_gx, partial) * inv_channels;
    TIn *dx = static_cast<TIn *>(p.dx) + offset;
    for (int c0 = 0; c0 < channels; c0 += kNormTile) {
      stage_norm_dout<acc_t, TOut>(p, t, c0, tile);
      __syncthreads();
      for (int k = warp; k < kNormTile && c0 + k < channels;
           k += kNormWarps) {
        const int c = c0 + k;
        if (!valid) continue;
        const acc_t xhat = (to_acc<acc_t>(x[c * positions]) - mean) * rstd;
        const acc_t g = tile[lane][k] * weight_at<acc_t>(p, c);
        dx[c * positions] =
            from_acc<TIn>(rstd * (g - mean_g - xhat * mean_gx));
      }
      __syncthreads();
    }
  }
  add_norm_gradients(p, dweight_block, dbias_block);
}

template <int kItems, typename TIn, typename TOut>
void launch_norm_rows(const NormParams &params, bool backward,
                      cudaStream_t stream) {
  using acc_t = typename AccumType<TIn>::type;
  if (backward) {
    norm_rows_backward_kernel<TIn, TOut, kItems>
        <<<params.grid, kNormThreads, 2 * params.channels * sizeof(acc_t),
           stream>>>(params);
  } else {
    const int64_t blocks = (params.rows + kNormWarps - 1) / kNormWarps;
    norm_rows_forward_kernel<TIn, TOut, kItems>
        <<<static_cast<unsigned>(std::min<int64_t>(blocks, 1 << 30)),
           kNormThreads, 0, stream>>>(params);
  }
}

template <typename TIn, typename TOut>
void norm_launch(const NormParams &params, bool backward) {
  using acc_t = typename AccumType<TIn>::type;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (params.channels_first) {
    if (backward) {
      norm_channels_first_backward_kernel<TIn, TOut>
          <<<params.grid, kNormThreads, 2 * params.channels * sizeof(acc_t),
             stream>>>(params);
    } else {
      norm_channels_first_forward_kernel<TIn, TOut>
          <<<static_cast<unsigned>(
                 std::min<int64_t>(norm_num_tiles(params), 1 << 30)),
             kNormThreads, 0, stream>>>(params);
    }
  } else if (params.channels <= 4 * 32) {
    launch_norm_rows<4, TIn, TOut>(params, backward, stream);
  } else if (params.channels <= 16 * 32) {
    launch_norm_rows<16, TIn, TOut>(params, backward, stream);
  } else if (params.channels <= 32 * 32) {
    launch_norm_rows<32, TIn, TOut>(params, backward, stream);
  } else {
    // make_norm_params (csrc/pytorch/norm.cpp) checked the channel limit.
    launch_norm_rows<kNormMaxChannels / 32, TIn, TOut>(params, backward,
                                                       stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mmssm
