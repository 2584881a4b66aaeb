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
// Backward, one kernel with a warp per row (see causal_conv1d_bwd_kernel):
// g is recomputed from x (SiLU' of p), dx summed from the g of later
// positions, and the weight and bias gradients added with one float (double
// for double inputs) atomicAdd per (block, tap) into dweight and dbias; the
// order of those global adds is not deterministic.
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

// Backward, one warp per row (batch element, channel); the warps of a block
// take kCausalConv1dBwdWarps batch elements of one channel. A warp walks its
// row in chunks of 32 positions in the convolution's own order (logical
// position q: t, or length - 1 - t for a reverse convolution, so that both
// are causal in q), a position per lane, one chunk ahead: the taps x[q - s]
// come from lanes before (shuffles of this chunk and the previous one) and
// the dx sums' g[q + s] from lanes after (this chunk and the next). The
// weights sit in registers, each lane sums its tap and bias gradients over
// its positions, and the block adds one warp- and block-reduced sum per tap
// to dweight and dbias. The earlier tile kernel (a flat tile per block,
// index divisions per element, a shuffle reduction per 32 elements and a
// global atomic per block, row and tap) spent 0.33 ms per Vim-S layer
// (224², batch 64) on instructions that this layout does not need.
template <typename T, int K>
__global__ void __launch_bounds__(kCausalConv1dBwdWarps * 32)
    causal_conv1d_bwd_kernel(CausalConv1dParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kSums = K + 1;  // K taps, then the bias
  constexpr unsigned kFullMask = 0xffffffffu;
  __shared__ acc_t warp_sums[kCausalConv1dBwdWarps][kSums];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t channel = blockIdx.x;
  const int64_t batch_index =
      static_cast<int64_t>(blockIdx.y) * kCausalConv1dBwdWarps + warp;
  acc_t sums[kSums];
#pragma unroll
  for (int k = 0; k < kSums; ++k) sums[k] = acc_t(0);
  if (batch_index < p.batch) {
    const int length = static_cast<int>(p.length);
    const int64_t row_start = (batch_index * p.channels + channel) * length;
    const T *x = static_cast<const T *>(p.x) + row_start;
    const T *dout = static_cast<const T *>(p.dout) + row_start;
    T *dx = static_cast<T *>(p.dx) + row_start;
    // w[K - 1 - s] multiplies x[q - s].
    acc_t w[K];
#pragma unroll
    for (int k = 0; k < K; ++k)
      w[k] = static_cast<const acc_t *>(p.weight)[channel * K + k];
    const acc_t bias =
        p.bias ? static_cast<const acc_t *>(p.bias)[channel] : acc_t(0);
    auto load = [&](const T *source, int q) {
      return q < length
                 ? to_acc<acc_t>(source[p.reverse ? length - 1 - q : q])
                 : acc_t(0);
    };
    // g at logical position q, with the taps x[q - s] it reads (zero
    // before the row's start: chunk -1 is zeros, and past its end: dout is
    // zero there).
    auto gradient = [&](int q, acc_t x_here, acc_t x_before,
                        acc_t (&taps)[K]) {
      taps[0] = x_here;
#pragma unroll
      for (int s = 1; s < K; ++s) {
        const int source = (lane - s) & 31;
        const acc_t here = __shfl_sync(kFullMask, x_here, source);
        const acc_t before = __shfl_sync(kFullMask, x_before, source);
        taps[s] = lane >= s ? here : before;
      }
      const acc_t dy = load(dout, q);
      if (!p.silu) return dy;
      acc_t pre = bias;
#pragma unroll
      for (int s = 0; s < K; ++s) pre += w[K - 1 - s] * taps[s];
      const acc_t sig = conv_sigmoid(pre);
      return dy * sig * (acc_t(1) + pre * (acc_t(1) - sig));
    };
    acc_t x_before = acc_t(0), x_here = load(x, lane);
    acc_t taps[K];
    acc_t g = gradient(lane, x_here, x_before, taps);
    for (int first = 0; first < length; first += 32) {
      const int q = first + lane;
      // The next chunk (zeros past the row's end), a chunk ahead.
      const acc_t x_next = load(x, q + 32);
      acc_t taps_next[K];
      const acc_t g_next = first + 32 < length
                               ? gradient(q + 32, x_next, x_here, taps_next)
                               : acc_t(0);
      acc_t grad = w[K - 1] * g;
#pragma unroll
      for (int s = 1; s < K; ++s) {
        const int source = (lane + s) & 31;
        const acc_t here = __shfl_sync(kFullMask, g, source);
        const acc_t after = __shfl_sync(kFullMask, g_next, source);
        grad += w[K - 1 - s] * (lane + s < 32 ? here : after);
      }
      if (q < length) dx[p.reverse ? length - 1 - q : q] = from_acc<T>(grad);
#pragma unroll
      for (int s = 0; s < K; ++s) sums[K - 1 - s] += g * taps[s];
      sums[K] += g;
      x_before = x_here;
      x_here = x_next;
      g = g_next;
#pragma unroll
      for (int s = 0; s < K; ++s) taps[s] = taps_next[s];
    }
  }
#pragma unroll
  for (int k = 0; k < kSums; ++k) {
    acc_t value = sums[k];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
      value += __shfl_xor_sync(kFullMask, value, offset);
    if (lane == 0) warp_sums[warp][k] = value;
  }
  __syncthreads();
  if (threadIdx.x < kSums) {
    const int k = threadIdx.x;
    acc_t total = acc_t(0);
#pragma unroll
    for (int other = 0; other < kCausalConv1dBwdWarps; ++other)
      total += warp_sums[other][k];
    if (k < K) {
      atomicAdd(static_cast<acc_t *>(p.dweight) + channel * K + k, total);
    } else if (p.dbias) {
      atomicAdd(static_cast<acc_t *>(p.dbias) + channel, total);
    }
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
    // causal_conv1d.cpp checks that the batch groups fit the grid.
    const dim3 grid(static_cast<unsigned int>(params.channels),
                    static_cast<unsigned int>(
                        (params.batch + kCausalConv1dBwdWarps - 1) /
                        kCausalConv1dBwdWarps));
    causal_conv1d_bwd_kernel<T, K>
        <<<grid, kCausalConv1dBwdWarps * 32, 0, stream>>>(params);
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
