// VMamba's four-direction cross scan as tiled line scans, forward and
// backward, read and written in the spatial layout (cross_scan_params.h).
//
// For direction k, channel d and state n, along the walk of direction k:
//   dt = delta + delta_bias (softplus of it if asked),
//   h = exp(dt A) h + dt B u,  y_k = sum_n C h + D u,
// and out = y_0 + y_1 + y_2 + y_3 at every pixel.
//
// Design, and why:
// - A walk is a chain of lines (rows or columns) whose state runs on from
//   one line into the next. The recurrence is linear, so each line is
//   scanned on its own and the lines are then joined: a line started from
//   zero ends at e, its step sizes sum to S, and the state entering the
//   next line is e + exp(A S) times the state entering this one. Forward:
//   (1) every line from zero (end states and step sums), (2) one thread per
//   (direction, channel, state) carries the entering states along the
//   lines, (3) every line again from its entering state, writing outputs.
//   Backward mirrors it for the adjoint g = C dy + a' g' (the adjoint
//   entering a line from the next is a g of that line's first step): (1)
//   every line's adjoint from zero, (2) the carry in reverse walk order,
//   (3) every line from its entering adjoint, its states recomputed chunk
//   by chunk from the states the forward pass saved at the chunk starts.
//   Sequences of 64 000 positions (1280 x 800, stride 4) thus run as
//   thousands of independent lines, and no (B, 4, D, H * W) copy is made.
// - A thread walks one (channel, line) pair with its states in registers;
//   a block is one warp per channel (4 channels) and one lane per line (32
//   lines) of one (batch, direction). Lines of any direction are read and
//   written through shared-memory tiles of kCrossChunk positions: the block
//   loads a chunk with its threads running along the contiguous axis of
//   the map (positions for rows, lines for columns), so every global access
//   is to whole sectors, and a lane reads its line from a tile row whose
//   odd stride puts the 32 lanes in 32 banks.
// - B and C are shared by the channels of a direction: staged once per
//   block. Their gradients are summed over the block's channels with
//   shared-memory atomics and added to global memory once per block and
//   pixel; the outputs of the four directions and the gradients of the
//   shared u are added into float maps with coalesced atomic adds.
// - The step size is computed once per element while staging; the
//   softplus derivative is recovered from it (sigmoid(x) = 1 - exp(-dt)).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "cross_band_kernel.cuh"
#include "cross_scan_params.h"
// AccumType, exp_acc, expm1_acc, softplus, to_acc and from_acc.
#include "selective_scan_kernel.cuh"

namespace mmssm {

constexpr int kCrossThreads = kCrossLines * kCrossChannels;
// An odd row stride puts the 32 lanes reading step j of their lines in 32
// different banks.
constexpr int kCrossTileStride = kCrossChunk + 1;
// One tile: the chunk of every line of the block for one channel or state.
constexpr int kCrossTile = kCrossLines * kCrossTileStride;
constexpr int kCrossTileElements = kCrossLines * kCrossChunk;
// Elements of a tile per thread.
constexpr int kCrossTileItems = kCrossTileElements / kCrossThreads;
static_assert(kCrossTileElements % kCrossThreads == 0,
              "a tile must split evenly over the block's threads");
// Blocks per SM the register allocation must allow: a thread's steps are
// one serial chain, so resident warps are what hides latency. With 4 (100
// to 115 registers) Nsight Compute measured 25% occupancy and the forward
// kernels at 20-25% of memory and 36% of SM throughput on the H100; 6
// leaves the one-state kernels 80 registers without spills.
constexpr int kCrossMinBlocks = 6;

// What one block owns and what its thread owns within it.
struct CrossBlock {
  int batch_index, direction;
  bool axis_col, reverse;
  int lines, length, num_chunks;
  int line_first, channel_first, channels_here;
  int lane, warp;      // line and channel within the block
  int line, channel;   // in the map (clamped for threads beyond it)
  bool valid;          // the thread owns a line and a channel of the map
  int width;
  long long pixels;
  long long sequence;  // (batch_index * 4 + direction) * dim + channel

  __device__ explicit CrossBlock(const CrossScanParams &p) {
    batch_index = blockIdx.z >> 2;
    direction = blockIdx.z & 3;
    axis_col = direction & 1;
    reverse = direction >= 2;
    lines = axis_col ? p.width : p.height;
    length = axis_col ? p.height : p.width;
    num_chunks = (length + kCrossChunk - 1) / kCrossChunk;
    line_first = blockIdx.y * kCrossLines;
    channel_first = blockIdx.x * kCrossChannels;
    channels_here = min(kCrossChannels, p.dim - channel_first);
    lane = threadIdx.x % kCrossLines;
    warp = threadIdx.x / kCrossLines;
    valid = line_first + lane < lines && warp < channels_here;
    // Threads beyond the map compute on zeros; nothing of theirs is stored.
    line = min(line_first + lane, lines - 1);
    channel = channel_first + min(warp, channels_here - 1);
    width = p.width;
    pixels = static_cast<long long>(p.height) * p.width;
    sequence = (static_cast<long long>(batch_index) * 4 + direction) * p.dim +
               channel;
  }

  // The block's blocks past the last line of its axis have nothing to do.
  __device__ bool idle() const { return line_first >= lines; }

  // Offset within a plane of step s of block line l, or -1 outside the map.
  __device__ __forceinline__ int pixel(int l, int s) const {
    if (line_first + l >= lines || s >= length) return -1;
    const int position = reverse ? length - 1 - s : s;
    const int map_line = line_first + l;
    return axis_col ? position * width + map_line
                    : map_line * width + position;
  }

  // Offset of the first of this thread's per-line or per-chunk values for
  // state n in a (batch, 4, dim, dstate, ...) buffer of `per_state` values.
  __device__ __forceinline__ long long state_offset(int dstate, int n,
                                                    long long per_state)
      const {
    return (sequence * dstate + n) * per_state;
  }
};

// This thread's elements of every tile of a chunk: element q of tile t
// sits at slot(t, q) of the tiles and at pixel[q] of the tile's plane (-1
// outside the map). Consecutive threads run along the contiguous axis of
// the map (positions of a row, or lines for columns), so that a warp's
// loads and stores cover whole sectors.
struct CrossChunk {
  int index;  // chunk number along the lines
  int steps;  // positions of every line in this chunk
  int pixel[kCrossTileItems];
  int first_slot, slot_step;

  __device__ CrossChunk(const CrossBlock &block, int chunk) {
    index = chunk;
    steps = min(kCrossChunk, block.length - chunk * kCrossChunk);
    const int me = threadIdx.x;
    int line, step, line_step, step_step;
    if (block.axis_col) {
      line = me % kCrossLines;
      step = me / kCrossLines;
      line_step = 0;
      step_step = kCrossThreads / kCrossLines;
    } else {
      step = me % kCrossChunk;
      line = me / kCrossChunk;
      line_step = kCrossThreads / kCrossChunk;
      step_step = 0;
    }
    first_slot = line * kCrossTileStride + step;
    slot_step = line_step * kCrossTileStride + step_step;
#pragma unroll
    for (int q = 0; q < kCrossTileItems; ++q)
      pixel[q] = block.pixel(line + q * line_step,
                             chunk * kCrossChunk + step + q * step_step);
  }

  __device__ __forceinline__ int slot(int tile, int q) const {
    return tile * kCrossTile + first_slot + q * slot_step;
  }
};

// Stages tiles t < kTiles of a chunk from planes + t * pixels:
// transform(t, value) inside the map and for t < tiles_here, zero
// elsewhere. All loads are issued before the shared-memory stores.
template <int kTiles, typename acc_t, typename T, typename Transform>
__device__ __forceinline__ void cross_stage(const CrossChunk &chunk,
                                            const T *planes,
                                            long long pixels, int tiles_here,
                                            acc_t *tiles,
                                            Transform transform) {
  acc_t values[kTiles][kCrossTileItems];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int q = 0; q < kCrossTileItems; ++q) {
      values[t][q] =
          t < tiles_here && chunk.pixel[q] >= 0
              ? transform(t, to_acc<acc_t>(planes[t * pixels + chunk.pixel[q]]))
              : acc_t(0);
    }
  }
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int q = 0; q < kCrossTileItems; ++q)
      tiles[chunk.slot(t, q)] = values[t][q];
  }
}

// Calls visit(tile, slot, pixel) for this thread's elements of the tiles
// t < tiles_here of a chunk that lie inside the map.
template <int kTiles, typename Visit>
__device__ __forceinline__ void cross_for_each(const CrossChunk &chunk,
                                               int tiles_here, Visit visit) {
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int q = 0; q < kCrossTileItems; ++q) {
      if (t < tiles_here && chunk.pixel[q] >= 0)
        visit(t, chunk.slot(t, q), chunk.pixel[q]);
    }
  }
}

// The planes of a block's first channel and first state, and the step-size
// transform: delta + delta_bias, through softplus if asked.
template <typename T, typename acc_t>
struct CrossPlanes {
  const T *u, *delta, *dout, *B, *C;
  long long channel_first, delta_first, state_first;  // plane indices
  const acc_t *bias;  // the block's first channel's delta_bias, or null
  bool softplus_steps;

  __device__ CrossPlanes(const CrossScanParams &p, const CrossBlock &block,
                         int dstate) {
    const long long direction_index =
        static_cast<long long>(block.batch_index) * 4 + block.direction;
    channel_first =
        static_cast<long long>(block.batch_index) * p.dim + block.channel_first;
    delta_first = direction_index * p.dim + block.channel_first;
    state_first = direction_index * dstate;
    u = static_cast<const T *>(p.u) + channel_first * block.pixels;
    dout = p.dout ? static_cast<const T *>(p.dout) + channel_first * block.pixels
                  : nullptr;
    delta = static_cast<const T *>(p.delta) + delta_first * block.pixels;
    B = static_cast<const T *>(p.B) + state_first * block.pixels;
    C = static_cast<const T *>(p.C) + state_first * block.pixels;
    bias = p.delta_bias ? static_cast<const acc_t *>(p.delta_bias) +
                              block.direction * p.dim + block.channel_first
                        : nullptr;
    softplus_steps = p.delta_softplus;
  }

  __device__ __forceinline__ acc_t step(int tile, acc_t raw) const {
    const acc_t biased = raw + (bias ? bias[tile] : acc_t(0));
    return softplus_steps ? softplus(biased) : biased;
  }
};

template <typename acc_t>
struct CrossIdentity {
  __device__ __forceinline__ acc_t operator()(int, acc_t value) const {
    return value;
  }
};

// Forward stages (1) and (3): one (channel, line) pair per thread. Stage 1
// (kOutput false) starts every line from zero and stores its end state and
// step sum; stage 3 starts it from line_states, saves the state before
// every chunk and adds its outputs to `out`.
template <typename T, int N, bool kOutput>
__global__ void __launch_bounds__(kCrossThreads, kCrossMinBlocks)
    cross_scan_fwd_kernel(CrossScanParams p) {
  using acc_t = typename AccumType<T>::type;
  const CrossBlock block(p);
  if (block.idle()) return;
  extern __shared__ __align__(16) unsigned char cross_fwd_shared[];
  acc_t *u_tiles = reinterpret_cast<acc_t *>(cross_fwd_shared);
  acc_t *dt_tiles = u_tiles + kCrossChannels * kCrossTile;
  acc_t *B_tiles = dt_tiles + kCrossChannels * kCrossTile;
  acc_t *C_tiles = B_tiles + N * kCrossTile;  // stage 3 only
  acc_t *y_tiles = C_tiles + N * kCrossTile;  // stage 3 only

  const int weight = block.direction * p.dim + block.channel;
  acc_t A[N], h[N];
  acc_t *line_states = static_cast<acc_t *>(p.line_states);
#pragma unroll
  for (int n = 0; n < N; ++n) {
    A[n] = static_cast<const acc_t *>(p.A)[weight * N + n];
    h[n] = kOutput && block.valid
               ? line_states[block.state_offset(N, n, p.max_lines) +
                             block.line]
               : acc_t(0);
  }
  const acc_t D =
      kOutput && p.D ? static_cast<const acc_t *>(p.D)[weight] : acc_t(0);
  acc_t step_sum = 0;
  const int row = (block.warp * kCrossLines + block.lane) * kCrossTileStride;
  const int state_row = block.lane * kCrossTileStride;
  const CrossPlanes<T, acc_t> planes(p, block, N);
  const CrossIdentity<acc_t> identity;
  const auto step_size = [&planes](int tile, acc_t raw) {
    return planes.step(tile, raw);
  };
  acc_t *out_planes =
      static_cast<acc_t *>(p.out) + planes.channel_first * block.pixels;

  for (int chunk = 0; chunk < block.num_chunks; ++chunk) {
    const CrossChunk tiles(block, chunk);
    cross_stage<kCrossChannels>(tiles, planes.u, block.pixels,
                                block.channels_here, u_tiles, identity);
    cross_stage<kCrossChannels>(tiles, planes.delta, block.pixels,
                                block.channels_here, dt_tiles, step_size);
    cross_stage<N>(tiles, planes.B, block.pixels, N, B_tiles, identity);
    if (kOutput)
      cross_stage<N>(tiles, planes.C, block.pixels, N, C_tiles, identity);
    __syncthreads();
    if (kOutput && block.valid) {
      acc_t *chunk_states = static_cast<acc_t *>(p.chunk_states);
#pragma unroll
      for (int n = 0; n < N; ++n)
        chunk_states[block.state_offset(
                         N, n, static_cast<long long>(p.max_chunks) *
                                   p.max_lines) +
                     static_cast<long long>(chunk) * p.max_lines +
                     block.line] = h[n];
    }
#pragma unroll
    for (int j = 0; j < kCrossChunk; ++j) {
      if (j < tiles.steps) {
        const acc_t dt = dt_tiles[row + j];
        const acc_t u = u_tiles[row + j];
        acc_t y = D * u;
#pragma unroll
        for (int n = 0; n < N; ++n) {
          const int at = n * kCrossTile + state_row + j;
          h[n] = exp_acc(dt * A[n]) * h[n] + dt * B_tiles[at] * u;
          if (kOutput) y += C_tiles[at] * h[n];
        }
        if (kOutput) {
          y_tiles[row + j] = y;
        } else {
          step_sum += dt;
        }
      }
    }
    if (kOutput) {
      __syncthreads();
      cross_for_each<kCrossChannels>(
          tiles, block.channels_here, [&](int tile, int slot, int pixel) {
            atomicAdd(out_planes + tile * block.pixels + pixel,
                      y_tiles[slot]);
          });
    }
    __syncthreads();
  }
  if (!kOutput && block.valid) {
#pragma unroll
    for (int n = 0; n < N; ++n)
      line_states[block.state_offset(N, n, p.max_lines) + block.line] = h[n];
    static_cast<acc_t *>(p.line_dt)[block.sequence * p.max_lines +
                                    block.line] = step_sum;
  }
}

// Stage (2) of both passes, one thread per (batch, direction, channel,
// state). Forward: replaces each line's end state (from zero) in
// line_states by the state entering the line, in walk order. Backward:
// replaces each line's a g of its first step (from zero) in line_adjoint by
// the adjoint entering the line from the next, in reverse walk order.
template <typename acc_t, bool kAdjoint>
__global__ void cross_scan_carry_kernel(CrossScanParams p) {
  const long long index =
      static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= static_cast<long long>(p.batch) * 4 * p.dim * p.dstate)
    return;
  const int n = index % p.dstate;
  const long long sequence = index / p.dstate;
  const int channel = sequence % p.dim;
  const int direction = (sequence / p.dim) % 4;
  const int lines = direction & 1 ? p.width : p.height;
  // Forward directions 0 and 1 walk lines upwards; the carry of the adjoint
  // runs against the walk.
  const bool downwards = (direction >= 2) != kAdjoint;
  const acc_t A = static_cast<const acc_t *>(
      p.A)[(direction * p.dim + channel) * p.dstate + n];
  acc_t *values =
      static_cast<acc_t *>(kAdjoint ? p.line_adjoint : p.line_states) +
      index * p.max_lines;
  const acc_t *step_sums =
      static_cast<const acc_t *>(p.line_dt) + sequence * p.max_lines;
  // Lines are read kCarryBatch at a time before any is written, so a batch
  // costs one memory latency rather than one per line.
  constexpr int kCarryBatch = 16;
  acc_t carry = 0;
  for (int first = 0; first < lines; first += kCarryBatch) {
    acc_t own[kCarryBatch], decay[kCarryBatch];
#pragma unroll
    for (int q = 0; q < kCarryBatch; ++q) {
      const int i = min(first + q, lines - 1);
      const int line = downwards ? lines - 1 - i : i;
      own[q] = values[line];
      decay[q] = step_sums[line];
    }
#pragma unroll
    for (int q = 0; q < kCarryBatch; ++q) {
      if (first + q < lines) {
        const int i = first + q;
        const int line = downwards ? lines - 1 - i : i;
        values[line] = carry;
        carry = own[q] + exp_acc(A * decay[q]) * carry;
      }
    }
  }
}

// Backward stage (1): every line's adjoint from zero at its last step,
// stored as a g of its first step.
template <typename T, int N>
__global__ void __launch_bounds__(kCrossThreads, kCrossMinBlocks)
    cross_scan_adjoint_kernel(CrossScanParams p) {
  using acc_t = typename AccumType<T>::type;
  const CrossBlock block(p);
  if (block.idle()) return;
  extern __shared__ __align__(16) unsigned char cross_adjoint_shared[];
  acc_t *dt_tiles = reinterpret_cast<acc_t *>(cross_adjoint_shared);
  acc_t *dy_tiles = dt_tiles + kCrossChannels * kCrossTile;
  acc_t *C_tiles = dy_tiles + kCrossChannels * kCrossTile;

  const int weight = block.direction * p.dim + block.channel;
  acc_t A[N], adjoint[N];
#pragma unroll
  for (int n = 0; n < N; ++n) {
    A[n] = static_cast<const acc_t *>(p.A)[weight * N + n];
    adjoint[n] = 0;
  }
  const int row = (block.warp * kCrossLines + block.lane) * kCrossTileStride;
  const int state_row = block.lane * kCrossTileStride;
  const CrossPlanes<T, acc_t> planes(p, block, N);
  const CrossIdentity<acc_t> identity;
  const auto step_size = [&planes](int tile, acc_t raw) {
    return planes.step(tile, raw);
  };
  for (int chunk = block.num_chunks - 1; chunk >= 0; --chunk) {
    const CrossChunk tiles(block, chunk);
    cross_stage<kCrossChannels>(tiles, planes.delta, block.pixels,
                                block.channels_here, dt_tiles, step_size);
    cross_stage<kCrossChannels>(tiles, planes.dout, block.pixels,
                                block.channels_here, dy_tiles, identity);
    cross_stage<N>(tiles, planes.C, block.pixels, N, C_tiles, identity);
    __syncthreads();
#pragma unroll
    for (int j = kCrossChunk - 1; j >= 0; --j) {
      if (j < tiles.steps) {
        const acc_t dt = dt_tiles[row + j];
        const acc_t dy = dy_tiles[row + j];
#pragma unroll
        for (int n = 0; n < N; ++n) {
          const acc_t g = C_tiles[n * kCrossTile + state_row + j] * dy +
                          adjoint[n];
          adjoint[n] = exp_acc(dt * A[n]) * g;
        }
      }
    }
    __syncthreads();
  }
  if (block.valid) {
    acc_t *line_adjoint = static_cast<acc_t *>(p.line_adjoint);
#pragma unroll
    for (int n = 0; n < N; ++n)
      line_adjoint[block.state_offset(N, n, p.max_lines) + block.line] =
          adjoint[n];
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t cross_warp_sum(acc_t value) {
#pragma unroll
  for (int offset = kCrossLines / 2; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// Backward stage (3): chunks from the last, the states of a chunk
// recomputed in registers from the saved chunk start, then the adjoint run
// backwards over them from the adjoint entering the line.
template <typename T, int N>
__global__ void __launch_bounds__(kCrossThreads, kCrossMinBlocks)
    cross_scan_bwd_kernel(CrossScanParams p) {
  using acc_t = typename AccumType<T>::type;
  const CrossBlock block(p);
  if (block.idle()) return;
  extern __shared__ __align__(16) unsigned char cross_bwd_shared[];
  // u and dt tiles are overwritten with du and ddelta step by step.
  acc_t *u_tiles = reinterpret_cast<acc_t *>(cross_bwd_shared);
  acc_t *dt_tiles = u_tiles + kCrossChannels * kCrossTile;
  acc_t *dy_tiles = dt_tiles + kCrossChannels * kCrossTile;
  acc_t *B_tiles = dy_tiles + kCrossChannels * kCrossTile;
  acc_t *C_tiles = B_tiles + N * kCrossTile;
  acc_t *dB_tiles = C_tiles + N * kCrossTile;
  acc_t *dC_tiles = dB_tiles + N * kCrossTile;

  const int weight = block.direction * p.dim + block.channel;
  const acc_t D = p.D ? static_cast<const acc_t *>(p.D)[weight] : acc_t(0);
  const acc_t *line_adjoint = static_cast<const acc_t *>(p.line_adjoint);
  const acc_t *chunk_states = static_cast<const acc_t *>(p.chunk_states);
  const long long chunk_values =
      static_cast<long long>(p.max_chunks) * p.max_lines;
  // Weight gradients sum a whole line per thread: in double, so that their
  // cancellations keep float32 accuracy.
  using sum_t = double;
  acc_t A[N], adjoint[N];
  sum_t dA_sum[N];
#pragma unroll
  for (int n = 0; n < N; ++n) {
    A[n] = static_cast<const acc_t *>(p.A)[weight * N + n];
    adjoint[n] = block.valid
                     ? line_adjoint[block.state_offset(N, n, p.max_lines) +
                                    block.line]
                     : acc_t(0);
    dA_sum[n] = 0;
  }
  sum_t dD_sum = 0, dbias_sum = 0;
  const int row = (block.warp * kCrossLines + block.lane) * kCrossTileStride;
  const int state_row = block.lane * kCrossTileStride;
  const CrossPlanes<T, acc_t> planes(p, block, N);
  const CrossIdentity<acc_t> identity;
  const auto step_size = [&planes](int tile, acc_t raw) {
    return planes.step(tile, raw);
  };
  T *ddelta_planes =
      static_cast<T *>(p.ddelta) + planes.delta_first * block.pixels;
  acc_t *du_planes =
      static_cast<acc_t *>(p.du) + planes.channel_first * block.pixels;
  acc_t *dB_planes =
      static_cast<acc_t *>(p.dB) + planes.state_first * block.pixels;
  acc_t *dC_planes =
      static_cast<acc_t *>(p.dC) + planes.state_first * block.pixels;

  for (int chunk = block.num_chunks - 1; chunk >= 0; --chunk) {
    const CrossChunk tiles(block, chunk);
    cross_stage<kCrossChannels>(tiles, planes.u, block.pixels,
                                block.channels_here, u_tiles, identity);
    cross_stage<kCrossChannels>(tiles, planes.delta, block.pixels,
                                block.channels_here, dt_tiles, step_size);
    cross_stage<kCrossChannels>(tiles, planes.dout, block.pixels,
                                block.channels_here, dy_tiles, identity);
    cross_stage<N>(tiles, planes.B, block.pixels, N, B_tiles, identity);
    cross_stage<N>(tiles, planes.C, block.pixels, N, C_tiles, identity);
    for (int e = threadIdx.x; e < N * kCrossTile; e += kCrossThreads) {
      dB_tiles[e] = 0;
      dC_tiles[e] = 0;
    }
    acc_t start[N];
#pragma unroll
    for (int n = 0; n < N; ++n)
      start[n] = block.valid
                     ? chunk_states[block.state_offset(N, n, chunk_values) +
                                    static_cast<long long>(chunk) *
                                        p.max_lines +
                                    block.line]
                     : acc_t(0);
    __syncthreads();
    const int steps = tiles.steps;
    // states[j][n]: the state after step j.
    acc_t states[kCrossChunk][N];
#pragma unroll
    for (int j = 0; j < kCrossChunk; ++j) {
#pragma unroll
      for (int n = 0; n < N; ++n) {
        const acc_t before = j > 0 ? states[j - 1][n] : start[n];
        if (j < steps) {
          const acc_t dt = dt_tiles[row + j];
          states[j][n] =
              exp_acc(dt * A[n]) * before +
              dt * B_tiles[n * kCrossTile + state_row + j] * u_tiles[row + j];
        } else {
          states[j][n] = before;
        }
      }
    }
#pragma unroll
    for (int j = kCrossChunk - 1; j >= 0; --j) {
      if (j < steps) {
        const acc_t dt = dt_tiles[row + j];
        const acc_t u = u_tiles[row + j];
        const acc_t dy = dy_tiles[row + j];
        acc_t ddt = 0;
        acc_t du = D * dy;
        dD_sum += static_cast<sum_t>(dy * u);
#pragma unroll
        for (int n = 0; n < N; ++n) {
          const int at = n * kCrossTile + state_row + j;
          const acc_t before = j > 0 ? states[j - 1][n] : start[n];
          const acc_t a = exp_acc(dt * A[n]);
          const acc_t B = B_tiles[at];
          const acc_t g = C_tiles[at] * dy + adjoint[n];
          const acc_t g_dt = g * dt;
          atomicAdd(dC_tiles + at, dy * states[j][n]);
          atomicAdd(dB_tiles + at, g_dt * u);
          ddt += g * (A[n] * a * before + B * u);
          dA_sum[n] += static_cast<sum_t>(g_dt * a * before);
          du += g_dt * B;
          adjoint[n] = a * g;
        }
        // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)).
        const acc_t ddelta =
            p.delta_softplus ? -expm1_acc(-dt) * ddt : ddt;
        dbias_sum += static_cast<sum_t>(ddelta);
        dt_tiles[row + j] = ddelta;
        u_tiles[row + j] = du;
      }
    }
    __syncthreads();
    cross_for_each<kCrossChannels>(
        tiles, block.channels_here, [&](int tile, int slot, int pixel) {
          ddelta_planes[tile * block.pixels + pixel] =
              from_acc<T>(dt_tiles[slot]);
          atomicAdd(du_planes + tile * block.pixels + pixel, u_tiles[slot]);
        });
    cross_for_each<N>(tiles, N, [&](int tile, int slot, int pixel) {
      atomicAdd(dB_planes + tile * block.pixels + pixel, dB_tiles[slot]);
      atomicAdd(dC_planes + tile * block.pixels + pixel, dC_tiles[slot]);
    });
    __syncthreads();
  }
  // Lanes beyond the map summed zeros, so whole warps can be summed.
#pragma unroll
  for (int n = 0; n < N; ++n) dA_sum[n] = cross_warp_sum(dA_sum[n]);
  dD_sum = cross_warp_sum(dD_sum);
  dbias_sum = cross_warp_sum(dbias_sum);
  if (block.lane == 0 && block.warp < block.channels_here) {
#pragma unroll
    for (int n = 0; n < N; ++n)
      atomicAdd(static_cast<acc_t *>(p.dA) + weight * N + n,
                static_cast<acc_t>(dA_sum[n]));
    if (p.dD)
      atomicAdd(static_cast<acc_t *>(p.dD) + weight,
                static_cast<acc_t>(dD_sum));
    if (p.ddelta_bias)
      atomicAdd(static_cast<acc_t *>(p.ddelta_bias) + weight,
                static_cast<acc_t>(dbias_sum));
  }
}

template <typename T, int N>
void cross_scan_launch_states(const CrossScanParams &p, bool backward) {
  using acc_t = typename AccumType<T>::type;
  const dim3 grid((p.dim + kCrossChannels - 1) / kCrossChannels,
                  (p.max_lines + kCrossLines - 1) / kCrossLines,
                  p.batch * 4);
  const dim3 block(kCrossThreads);
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto launch_tiled = [&](auto kernel, int tiles) {
    const int bytes = tiles * kCrossTile * static_cast<int>(sizeof(acc_t));
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    // Shared memory, not L1, bounds the resident blocks.
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
        cudaSharedmemCarveoutMaxShared));
    kernel<<<grid, block, bytes, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  constexpr int kCarryThreads = 256;
  const long long carries = static_cast<long long>(p.batch) * 4 * p.dim * N;
  const dim3 carry_grid(
      static_cast<unsigned>((carries + kCarryThreads - 1) / kCarryThreads));
  if (!backward) {
    launch_tiled(cross_scan_fwd_kernel<T, N, false>,
                 2 * kCrossChannels + N);
    cross_scan_carry_kernel<acc_t, false>
        <<<carry_grid, kCarryThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_tiled(cross_scan_fwd_kernel<T, N, true>,
                 3 * kCrossChannels + 2 * N);
  } else {
    launch_tiled(cross_scan_adjoint_kernel<T, N>, 2 * kCrossChannels + N);
    cross_scan_carry_kernel<acc_t, true>
        <<<carry_grid, kCarryThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_tiled(cross_scan_bwd_kernel<T, N>, 3 * kCrossChannels + 4 * N);
  }
}

template <typename T>
void cross_scan_launch(const CrossScanParams &params, bool backward) {
  if (cross_banded(params)) {
    cross_band_launch<T>(params, backward);
    return;
  }
  if (params.plane) {
    cross_plane_launch<T>(params, backward);
    return;
  }
  switch (params.dstate) {
    case 1:
      cross_scan_launch_states<T, 1>(params, backward);
      break;
    case 2:
      cross_scan_launch_states<T, 2>(params, backward);
      break;
    case 3:
      cross_scan_launch_states<T, 3>(params, backward);
      break;
    case 4:
      cross_scan_launch_states<T, 4>(params, backward);
      break;
    default:
      TORCH_CHECK(false, "cross scan: the tiled kernels hold 1 to ",
                  kCrossMaxStates, " states, got ", params.dstate);
  }
}

}  // namespace mmssm
