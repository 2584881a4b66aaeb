// Fused causal depthwise conv1d + optional SiLU (forward and backward).
//
// With lag s = K - 1 - k and direction d = +1 (causal) or -1 (reverse):
//   p[t] = bias + sum_s w[K-1-s] x[t - d s],   out[t] = act(p[t]);
//   g[t] = dout[t] act'(p[t])  (SiLU' recomputed from x, p is not stored);
//   dx[t] = sum_s w[K-1-s] g[t + d s];
//   dw[K-1-s] = sum_{batch, t} g[t] x[t - d s];  dbias = sum_{batch, t} g[t];
// every position outside [0, length) of its own row reading zero.
//
// The (batch, channels, length) tensor is walked as one flat array of
// `numel` elements, so short rows (L = 197) leave no thread idle. A block
// owns a tile of kTile consecutive elements (possibly spanning several rows)
// and stages x over the tile plus a K - 1 halo on both sides in shared
// memory (one coalesced read of x from DRAM, 16-byte loads where x is
// aligned; the halo is re-read from L2).
// An element's row, position and channel come from one division per
// element; a halo element of another row is never used because every tap
// checks that its position lies inside the element's own row.
//
// Backward, one kernel: the block first computes g over its tile plus the
// K - 1 positions the dx sums reach beyond it (recomputing p from the staged
// x), then dx of its own elements. Weight and bias gradients are summed per
// (row of the tile, tap) in shared memory (a warp-shuffle sum where a warp's
// 32 elements share a row, else shared atomics) and added with one float
// (double for double inputs) atomicAdd per (block, row, tap) into dweight
// and dbias; the order of those global adds is not deterministic.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "causal_conv1d_params.h"
#include "selective_scan_kernel.cuh"

namespace mmssm {

constexpr int kCausalConv1dMaxHalo = kCausalConv1dMaxKernel - 1;

template <typename acc_t>
__device__ __forceinline__ acc_t conv_sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_acc(-x));
}

// Row (batch * channels + channel) and position of flat element `index`.
struct ConvElement {
  int64_t row;
  int position;
  int channel;
};

__device__ __forceinline__ ConvElement conv_element(
    int64_t index, const CausalConv1dParams &p) {
  ConvElement element;
  if (p.narrow_index) {
    // 64-bit divisions cost several times the 32-bit ones.
    const uint32_t narrow = static_cast<uint32_t>(index);
    const uint32_t length = static_cast<uint32_t>(p.length);
    const uint32_t row = narrow / length;
    element.row = row;
    element.position = static_cast<int>(narrow - row * length);
    element.channel =
        static_cast<int>(row % static_cast<uint32_t>(p.channels));
  } else {
    element.row = index / p.length;
    element.position = static_cast<int>(index - element.row * p.length);
    element.channel = static_cast<int>(element.row % p.channels);
  }
  return element;
}

template <typename T, typename acc_t>
__device__ __forceinline__ acc_t load_or_zero(const T *x, int64_t index,
                                              int64_t numel) {
  return index >= 0 && index < numel ? to_acc<acc_t>(x[index]) : acc_t(0);
}

// Stages x[base - H, base + kTile + H) of the flat array (zero outside it):
// a full tile of an aligned x with 16-byte loads and its halos element by
// element, else every element on its own.
template <typename T, typename acc_t, int H>
__device__ __forceinline__ void stage_x(const CausalConv1dParams &p,
                                        int64_t base, acc_t *xs) {
  const T *x = static_cast<const T *>(p.x);
  if (p.aligned_x && base + kCausalConv1dTile <= p.numel) {
    // base is a multiple of kTile elements, so x + base stays aligned.
    constexpr int kVector = 16 / sizeof(T);
    static_assert(kCausalConv1dTile % kVector == 0, "tile of whole vectors");
    const uint4 *vectors = reinterpret_cast<const uint4 *>(x + base);
    for (int v = threadIdx.x; v < kCausalConv1dTile / kVector;
         v += kCausalConv1dThreads) {
      const uint4 packed = vectors[v];
      const T *values = reinterpret_cast<const T *>(&packed);
#pragma unroll
      for (int j = 0; j < kVector; ++j)
        xs[H + v * kVector + j] = to_acc<acc_t>(values[j]);
    }
    // Left halo at [0, H), right halo at [kTile + H, kTile + 2H).
    for (int i = threadIdx.x; i < 2 * H; i += kCausalConv1dThreads) {
      const int local = i < H ? i : kCausalConv1dTile + i;
      xs[local] = load_or_zero<T, acc_t>(x, base - H + local, p.numel);
    }
  } else {
    for (int i = threadIdx.x; i < kCausalConv1dTile + 2 * H;
         i += kCausalConv1dThreads)
      xs[i] = load_or_zero<T, acc_t>(x, base - H + i, p.numel);
  }
}

// p of flat element `index` (row/position in `element`), reading x from the
// tile staged at `base`.
template <typename acc_t, int K>
__device__ __forceinline__ acc_t conv_preactivation(
    const CausalConv1dParams &p, const ConvElement &element, int64_t index,
    int64_t base, const acc_t *xs) {
  constexpr int H = K - 1;
  const int direction = p.reverse ? -1 : 1;
  const acc_t *w = static_cast<const acc_t *>(p.weight) +
                   static_cast<int64_t>(element.channel) * K;
  acc_t sum = p.bias ? static_cast<const acc_t *>(p.bias)[element.channel]
                     : acc_t(0);
  const int local = static_cast<int>(index - base) + H;
#pragma unroll
  for (int s = 0; s < K; ++s) {
    const int position = element.position - direction * s;
    if (position >= 0 && position < p.length)
      sum += w[K - 1 - s] * xs[local - direction * s];
  }
  return sum;
}

template <typename T, int K>
__global__ void __launch_bounds__(kCausalConv1dThreads)
    causal_conv1d_fwd_kernel(CausalConv1dParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int H = K - 1;
  __shared__ acc_t xs[kCausalConv1dTile + 2 * kCausalConv1dMaxHalo];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kCausalConv1dTile;
  stage_x<T, acc_t, H>(p, base, xs);
  __syncthreads();
  T *out = static_cast<T *>(p.out);
#pragma unroll
  for (int item = 0; item < kCausalConv1dItems; ++item) {
    const int64_t index =
        base + threadIdx.x + item * kCausalConv1dThreads;
    if (index >= p.numel) break;
    const ConvElement element = conv_element(index, p);
    const acc_t pre = conv_preactivation<acc_t, K>(p, element, index, base, xs);
    out[index] = from_acc<T>(p.silu ? pre * conv_sigmoid(pre) : pre);
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(kCausalConv1dThreads)
    causal_conv1d_bwd_kernel(CausalConv1dParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int H = K - 1;
  constexpr int kSums = K + 1;  // K taps, then the bias
  constexpr unsigned kFullMask = 0xffffffffu;
  __shared__ acc_t xs[kCausalConv1dTile + 2 * kCausalConv1dMaxHalo];
  __shared__ acc_t gs[kCausalConv1dTile + kCausalConv1dMaxHalo];
  __shared__ acc_t sums[kCausalConv1dTile * (kCausalConv1dMaxKernel + 1)];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kCausalConv1dTile;
  const int64_t last =
      min(base + kCausalConv1dTile, static_cast<int64_t>(p.numel)) - 1;
  const int64_t first_row = base / p.length;
  const int num_rows = static_cast<int>(last / p.length - first_row) + 1;
  for (int i = threadIdx.x; i < num_rows * kSums; i += kCausalConv1dThreads)
    sums[i] = acc_t(0);
  stage_x<T, acc_t, H>(p, base, xs);
  __syncthreads();

  // g over [g_base, g_base + kTile + H): the dx sums reach H positions past
  // the tile's end (causal) or before its start (reverse).
  const int direction = p.reverse ? -1 : 1;
  const int64_t g_base = p.reverse ? base - H : base;
  const T *dout = static_cast<const T *>(p.dout);
  for (int i = threadIdx.x; i < kCausalConv1dTile + H;
       i += kCausalConv1dThreads) {
    const int64_t index = g_base + i;
    acc_t g = acc_t(0);
    if (index >= 0 && index < p.numel) {
      const ConvElement element = conv_element(index, p);
      const acc_t dy = to_acc<acc_t>(dout[index]);
      if (p.silu) {
        const acc_t pre =
            conv_preactivation<acc_t, K>(p, element, index, base, xs);
        const acc_t sig = conv_sigmoid(pre);
        g = dy * sig * (acc_t(1) + pre * (acc_t(1) - sig));
      } else {
        g = dy;
      }
    }
    gs[i] = g;
  }
  __syncthreads();

  T *dx = static_cast<T *>(p.dx);
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int item = 0; item < kCausalConv1dItems; ++item) {
    const int local = threadIdx.x + item * kCausalConv1dThreads;
    const int64_t index = base + local;
    const bool valid = index < p.numel;
    acc_t contribution[kSums];
#pragma unroll
    for (int k = 0; k < kSums; ++k) contribution[k] = acc_t(0);
    int tile_row = -1;
    if (valid) {
      const ConvElement element = conv_element(index, p);
      tile_row = static_cast<int>(element.row - first_row);
      const acc_t *w = static_cast<const acc_t *>(p.weight) +
                       static_cast<int64_t>(element.channel) * K;
      const int g_local = static_cast<int>(index - g_base);
      const int x_local = local + H;
      const acc_t g = gs[g_local];
      acc_t grad = acc_t(0);
#pragma unroll
      for (int s = 0; s < K; ++s) {
        const int later = element.position + direction * s;
        if (later >= 0 && later < p.length)
          grad += w[K - 1 - s] * gs[g_local + direction * s];
        const int earlier = element.position - direction * s;
        if (earlier >= 0 && earlier < p.length)
          contribution[K - 1 - s] = g * xs[x_local - direction * s];
      }
      contribution[K] = g;
      dx[index] = from_acc<T>(grad);
    }
    // Every lane reaches this point: the shuffles need the whole warp.
    const int lane0_row = __shfl_sync(kFullMask, tile_row, 0);
    if (__all_sync(kFullMask, tile_row == lane0_row)) {
      if (lane0_row >= 0) {
#pragma unroll
        for (int k = 0; k < kSums; ++k) {
          acc_t value = contribution[k];
#pragma unroll
          for (int offset = 16; offset > 0; offset >>= 1)
            value += __shfl_xor_sync(kFullMask, value, offset);
          if (lane == 0) atomicAdd(&sums[lane0_row * kSums + k], value);
        }
      }
    } else if (valid) {
#pragma unroll
      for (int k = 0; k < kSums; ++k)
        atomicAdd(&sums[tile_row * kSums + k], contribution[k]);
    }
  }
  __syncthreads();

  acc_t *dweight = static_cast<acc_t *>(p.dweight);
  acc_t *dbias = static_cast<acc_t *>(p.dbias);
  for (int i = threadIdx.x; i < num_rows * kSums; i += kCausalConv1dThreads) {
    const int tile_row = i / kSums, k = i % kSums;
    const int64_t channel = (first_row + tile_row) % p.channels;
    if (k < K)
      atomicAdd(dweight + channel * K + k, sums[i]);
    else if (dbias)
      atomicAdd(dbias + channel, sums[i]);
  }
}

template <typename T, int K>
void causal_conv1d_launch_kernel(const CausalConv1dParams &params,
                                 bool backward) {
  // causal_conv1d.cpp checks that the tiles fit a 32-bit grid.
  const unsigned int blocks = static_cast<unsigned int>(
      (params.numel + kCausalConv1dTile - 1) / kCausalConv1dTile);
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (backward) {
    causal_conv1d_bwd_kernel<T, K>
        <<<blocks, kCausalConv1dThreads, 0, stream>>>(params);
  } else {
    causal_conv1d_fwd_kernel<T, K>
        <<<blocks, kCausalConv1dThreads, 0, stream>>>(params);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void causal_conv1d_launch(const CausalConv1dParams &params, bool backward) {
  switch (params.kernel) {
    case 1: causal_conv1d_launch_kernel<T, 1>(params, backward); break;
    case 2: causal_conv1d_launch_kernel<T, 2>(params, backward); break;
    case 3: causal_conv1d_launch_kernel<T, 3>(params, backward); break;
    case 4: causal_conv1d_launch_kernel<T, 4>(params, backward); break;
    case 5: causal_conv1d_launch_kernel<T, 5>(params, backward); break;
    case 6: causal_conv1d_launch_kernel<T, 6>(params, backward); break;
    case 7: causal_conv1d_launch_kernel<T, 7>(params, backward); break;
    case 8: causal_conv1d_launch_kernel<T, 8>(params, backward); break;
    default:
      TORCH_CHECK(false, "causal conv1d: kernel size must be in [1, ",
                  kCausalConv1dMaxKernel, "], got ", params.kernel);
  }
}

}  // namespace mmssm
