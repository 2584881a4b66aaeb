// Mamba2D's 2D wavefront scan (forward and backward), channel-last.
//
// Per channel e and state n, with gates a_X = exp(dt_X A_X) and inputs
// u_X = dt_X B_X x at the destination pixel (X = t for the top neighbour,
// l for the left one):
//   h(0,0) = u_l; h(0,j) = a_l h(0,j-1) + u_l; h(i,0) = a_t h(i-1,0) + u_t;
//   h(i,j) = 1/2 [a_l h(i,j-1) + u_l + a_t h(i-1,j) + u_t] inside;
//   y = sum_n C h + D x.
// 'br' runs the same recurrence from the bottom-right corner by mapping
// logical (i, j) to the pixel (H-1-i, W-1-j); nothing is flipped in memory.
//
// Pixel (i, j) needs (i, j-1) and (i-1, j), so a block owns a set of
// (channel, state) pairs of one batch element, one warp per column of a
// tile of columns, and walks the tile's anti-diagonals: at step t warp c
// handles row t - c, gets the left neighbour's state from warp c - 1 through
// shared memory and keeps its own previous row's state in a register. One
// launch covers the whole map: the tiles run left to right, the last column
// of a tile handing its states to the next tile through global memory (the
// forward pass keeps them for the backward pass).
//
// A warp's pixel at the next step is known in advance (the next row of its
// column), so each step can issue the loads of the next one before it
// computes: their latency then overlaps the step's work and its barrier
// instead of stalling the whole block once per step. The backward pass, the
// forward pass of wide tiles and that of tiles in flight do; the forward
// pass of narrow tiles in turn (many blocks) hides the latency with other
// blocks and keeps its registers.
//
// Backward, one launch: the tiles run right to left; each tile's states are
// recomputed from its saved left boundary into a tile-sized scratch, then the
// adjoint recurrence runs along the reversed anti-diagonals:
//   g(i,j) = C dy + s(i,j+1) a_l(i,j+1) g(i,j+1) + s(i+1,j) a_t(i+1,j)
//            g(i+1,j),
// with s the 1/2 of interior pixels.
//
// With few sequences (batch x channel groups) one block per sequence leaves
// most SMs idle and each block walks its tiles one after the other. Tiles in
// flight (wavefront_scan_params.h) give each tile its own block instead: a
// tile starts as soon as its neighbour has handed over the first rows of
// their shared column, so the tiles of a row run a few rows apart. The
// backward pass recomputes every tile's states at once (they only need the
// saved boundaries), then its adjoints follow each other right to left.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "selective_scan_kernel.cuh"
#include "wavefront_scan_params.h"

namespace mmssm {

// Sum over the lanes of one channel (aligned groups of `lanes` lanes).
template <typename acc_t>
__device__ __forceinline__ acc_t sum_over_states(acc_t value, int lanes) {
  for (int offset = lanes >> 1; offset > 0; offset >>= 1)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Sums a, b and c over the lanes of one channel (lanes >= 4, a power of
// two) in five shuffles rather than twelve (at 16 lanes), leaving them
// scattered: the lanes of states [0, lanes / 4) get the sum of a, those of
// [lanes / 4, lanes / 2) that of b, those of [lanes / 2, 3 lanes / 4) that
// of c. Each step halves what a lane holds: the lower half of the lanes
// keeps (a, b) and sends (c, 0), then the lower quarter of each half keeps
// the first value, then the rest is a plain butterfly.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_three_over_states(acc_t a, acc_t b,
                                                       acc_t c, int lanes,
                                                       int state) {
  const int half = lanes >> 1, quarter = lanes >> 2;
  const bool upper_half = state & half;
  acc_t first = upper_half ? c : a, second = upper_half ? acc_t(0) : b;
  first += __shfl_xor_sync(0xffffffffu, upper_half ? a : c, half);
  second += __shfl_xor_sync(0xffffffffu, upper_half ? b : acc_t(0), half);
  const bool upper_quarter = state & quarter;
  acc_t value = upper_quarter ? second : first;
  value += __shfl_xor_sync(0xffffffffu, upper_quarter ? first : second,
                           quarter);
  for (int offset = quarter >> 1; offset > 0; offset >>= 1)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Sum over the channels of a warp: afterwards lane n (< lanes) holds the
// sum of state n over the warp's channels.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_over_channels(acc_t value, int lanes) {
  for (int offset = lanes; offset < 32; offset <<= 1)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid_acc(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_acc(-x));
}

// The sequence (batch element, channel group) and the tiles of a block.
template <bool kInFlight>
struct WavefrontTask {
  int group, batch, first_tile, last_tile;
  int ticket;  // with tiles in flight, else -1

  __device__ WavefrontTask(const WavefrontScanParams &p, bool backward) {
    if (!kInFlight) {
      group = blockIdx.x;
      batch = blockIdx.y;
      first_tile = 0;
      last_tile = p.num_tiles - 1;
      ticket = -1;
      return;
    }
    __shared__ int taken;
    if (threadIdx.x == 0 && threadIdx.y == 0)
      taken = atomicAdd(p.tile_sync + TileSyncLayout::kTicket, 1);
    __syncthreads();
    ticket = taken;
    const int sequences = p.batch * p.num_groups;
    const int order = ticket / sequences, sequence = ticket % sequences;
    group = sequence % p.num_groups;
    batch = sequence / p.num_groups;
    first_tile = last_tile = backward ? p.num_tiles - 1 - order : order;
  }
};

// Progress of the hand-over column between tiles `column` and `column + 1`
// of a sequence (tiles in flight).
__device__ __forceinline__ int *handover_progress(
    const WavefrontScanParams &p, int column, int sequence) {
  return p.tile_sync + TileSyncLayout(p).progress(column, sequence);
}

// Generation of a backward scratch slot: how many holders released it.
__device__ __forceinline__ int *slot_generation(const WavefrontScanParams &p,
                                                int slot) {
  return p.tile_sync + TileSyncLayout(p).slot_generation(slot);
}

// A whole warp, after its lanes stored rows of a hand-over column: makes
// them visible to other blocks, then publishes their count.
__device__ __forceinline__ void publish_rows(int *progress, int rows) {
  __threadfence();
  __syncwarp();
  if (threadIdx.x == 0) atomicExch(progress, rows);
}

// One thread: spins until another block has raised `counter` to `value`.
__device__ __forceinline__ void spin_until_at_least(const int *counter,
                                                    int value) {
  while (*reinterpret_cast<const volatile int *>(counter) < value) {
  }
}

// A whole warp, before it loads rows of a hand-over column: waits until
// `rows` of them are published (loads go through L2, __ldcg).
__device__ __forceinline__ void wait_for_rows(const int *progress, int rows) {
  if (threadIdx.x == 0) spin_until_at_least(progress, rows);
  __syncwarp();
  __threadfence();
}

// Loads a value of a hand-over column: through L2 where another block may
// have written it while this one runs (L1 is not coherent between SMs),
// else as any load (through L2 the tiles-in-turn backward kernel spilled).
template <bool kFromRunningBlock, typename acc_t>
__device__ __forceinline__ acc_t load_handover(const acc_t *address) {
  if (kFromRunningBlock) return __ldcg(address);
  return *address;
}

// The (channel, state) pair of this thread and its weights.
template <typename acc_t>
struct WavefrontLane {
  int lane, batch, channel, state;
  int sequence;       // batch * num_groups + channel group
  int scratch_block;  // the backward's tile scratch of this block
  bool valid;  // channel < channels and state < dstate
  acc_t A_t, A_l, D, bias_t, bias_l;

  template <bool kInFlight>
  __device__ WavefrontLane(const WavefrontScanParams &p,
                           const WavefrontTask<kInFlight> &task) {
    lane = threadIdx.x;
    batch = task.batch;
    sequence = batch * p.num_groups + task.group;
    scratch_block =
        kInFlight && p.num_slots > 0 ? task.ticket % p.num_slots : sequence;
    state = lane % p.lanes_per_channel;
    channel =
        task.group * (32 / p.lanes_per_channel) + lane / p.lanes_per_channel;
    valid = channel < p.channels && state < p.dstate;
    const int weight = channel * p.dstate + state;
    A_t = valid ? static_cast<const acc_t *>(p.A_t)[weight] : acc_t(0);
    A_l = valid ? static_cast<const acc_t *>(p.A_l)[weight] : acc_t(0);
    const bool has_channel = channel < p.channels;
    D = has_channel && p.D ? static_cast<const acc_t *>(p.D)[channel]
                           : acc_t(0);
    bias_t = has_channel && p.delta_bias_t
                 ? static_cast<const acc_t *>(p.delta_bias_t)[channel]
                 : acc_t(0);
    bias_l = has_channel && p.delta_bias_l
                 ? static_cast<const acc_t *>(p.delta_bias_l)[channel]
                 : acc_t(0);
  }
};

// (batch, row, column) index of the logical pixel (i, j).
template <typename acc_t>
__device__ __forceinline__ long long wavefront_pixel(
    const WavefrontScanParams &p, const WavefrontLane<acc_t> &lane, int i,
    int j) {
  const int row = p.origin_br ? p.height - 1 - i : i;
  const int col = p.origin_br ? p.width - 1 - j : j;
  return (static_cast<long long>(lane.batch) * p.height + row) * p.width + col;
}

// One lane's raw inputs at one pixel (with kGradient also the output
// gradient), as loaded: issued a step before they are used.
template <typename T, bool kGradient>
struct WavefrontLoads {
  T x, delta_t, delta_l, b_t, b_l, c, dout;

  template <typename acc_t>
  __device__ __forceinline__ void fetch(const WavefrontScanParams &p,
                                        const WavefrontLane<acc_t> &lane,
                                        int i, int j) {
    if (!lane.valid) return;
    const long long pixel = wavefront_pixel(p, lane, i, j);
    const long long feature = pixel * p.channels + lane.channel;
    const long long state = pixel * p.dstate + lane.state;
    x = static_cast<const T *>(p.x)[feature];
    delta_t = static_cast<const T *>(p.delta_t)[feature];
    delta_l = static_cast<const T *>(p.delta_l)[feature];
    b_t = static_cast<const T *>(p.B_t)[state];
    b_l = static_cast<const T *>(p.B_l)[state];
    c = static_cast<const T *>(p.C)[state];
    if (kGradient) dout = static_cast<const T *>(p.dout)[feature];
  }
};

// Inputs of one pixel for one lane, and its gates.
template <typename acc_t>
struct WavefrontPixel {
  long long pixel;  // (batch, row, column) index of the logical (i, j)
  bool has_top, has_left, use_left;
  acc_t scale;  // 1/2 inside the map, 1 on its first row and column
  acc_t x, dt, dl, pre_t, pre_l, b_t, b_l, c, a_t, a_l;

  // From the loads of pixel (i, j) (ignored on lanes without a pair).
  template <typename T, bool kGradient>
  __device__ __forceinline__ void prepare(
      const WavefrontScanParams &p, const WavefrontLane<acc_t> &lane,
      const WavefrontLoads<T, kGradient> &loads, int i, int j) {
    pixel = wavefront_pixel(p, lane, i, j);
    has_top = i > 0;
    has_left = j > 0;
    use_left = has_left || !has_top;
    scale = has_top && has_left ? acc_t(0.5) : acc_t(1);
    x = pre_t = pre_l = b_t = b_l = c = acc_t(0);
    if (lane.valid) {
      x = to_acc<acc_t>(loads.x);
      pre_t = to_acc<acc_t>(loads.delta_t) + lane.bias_t;
      pre_l = to_acc<acc_t>(loads.delta_l) + lane.bias_l;
      b_t = to_acc<acc_t>(loads.b_t);
      b_l = to_acc<acc_t>(loads.b_l);
      c = to_acc<acc_t>(loads.c);
    }
    dt = p.delta_softplus ? softplus(pre_t) : pre_t;
    dl = p.delta_softplus ? softplus(pre_l) : pre_l;
    a_t = exp_acc(dt * lane.A_t);
    a_l = exp_acc(dl * lane.A_l);
  }

  // h of this pixel from its left and top neighbours' states.
  __device__ __forceinline__ acc_t state(acc_t left, acc_t top) const {
    acc_t sum = use_left ? dl * b_l * x : acc_t(0);
    if (has_left) sum += a_l * left;
    if (has_top) sum += a_t * top + dt * b_t * x;
    return scale * sum;
  }
};

template <typename acc_t>
__device__ __forceinline__ size_t boundary_index(const WavefrontScanParams &p,
                                                 const WavefrontLane<acc_t> &l,
                                                 int tile, int row) {
  return (static_cast<size_t>(l.sequence) * (p.num_tiles - 1) + tile) *
             p.height * 32 +
         static_cast<size_t>(row) * 32 + l.lane;
}

// The adjoint entering tile `column` from tile `column + 1`, at `row`.
template <bool kInFlight, typename acc_t>
__device__ __forceinline__ size_t right_adjoint_index(
    const WavefrontScanParams &p, const WavefrontLane<acc_t> &l, int column,
    int row) {
  const size_t handover = kInFlight ? column : 0;
  return ((handover * p.batch * p.num_groups + l.sequence) * p.height + row) *
             32 +
         l.lane;
}

// Sweeps the anti-diagonals of one tile forwards. kWriteOutput: write y (and
// the tile's last column to the boundary); else store every state of the
// tile in the scratch (the backward pass's recomputation). kPrefetch: load
// each step's inputs at the step before. kInFlight: tiles in flight (with
// kWriteOutput, wait for the tile on the left and publish to the right).
template <typename T, typename acc_t, bool kWriteOutput, bool kPrefetch,
          bool kInFlight>
__device__ void wavefront_forward_tile(const WavefrontScanParams &p,
                                       const WavefrontLane<acc_t> &lane,
                                       int tile,
                                       acc_t (*exchange)[kWavefrontMaxTileWidth]
                                                        [32]) {
  const int column = threadIdx.y;
  const int first_column = tile * p.tile_width;
  const int columns = min(p.tile_width, p.width - first_column);
  const int j = first_column + column;
  acc_t top = acc_t(0);
  const int steps = p.height + columns - 1;
  // This warp's rows are i = step - column; with kPrefetch row i is fetched
  // at the step before (row 0 of column 0 before the first).
  WavefrontLoads<T, false> next;
  acc_t next_left = acc_t(0);
  auto fetch = [&](int i) {
    if (column >= columns || i < 0 || i >= p.height) return;
    next.fetch(p, lane, i, j);
    if (column == 0 && tile > 0) {
      if (kWriteOutput && kInFlight && i % kWavefrontProgressRows == 0) {
        wait_for_rows(handover_progress(p, tile - 1, lane.sequence),
                      min(i + kWavefrontProgressRows, p.height));
      }
      next_left = load_handover<kWriteOutput && kInFlight>(
          static_cast<const acc_t *>(p.boundary) +
          boundary_index(p, lane, tile - 1, i));
    }
  };
  if (kPrefetch) fetch(-column);
  for (int step = 0; step < steps; ++step) {
    const int i = step - column;
    if (!kPrefetch) fetch(i);
    const WavefrontLoads<T, false> loads = next;
    const acc_t boundary_left = next_left;
    if (kPrefetch) fetch(i + 1);
    // Uniform over the warp, so the shuffles below see all 32 lanes.
    const bool active = column < columns && i >= 0 && i < p.height;
    if (active) {
      const acc_t left = column > 0
                             ? exchange[(step - 1) & 1][column - 1][lane.lane]
                             : boundary_left;
      WavefrontPixel<acc_t> px;
      px.prepare(p, lane, loads, i, j);
      const acc_t h = px.state(left, top);
      top = h;
      exchange[step & 1][column][lane.lane] = h;
      if (kWriteOutput) {
        const acc_t y = sum_over_states(px.c * h, p.lanes_per_channel);
        if (lane.valid && lane.state == 0) {
          static_cast<T *>(p.out)[px.pixel * p.channels + lane.channel] =
              from_acc<T>(y + lane.D * px.x);
        }
        if (column == columns - 1 && tile + 1 < p.num_tiles) {
          static_cast<acc_t *>(p.boundary)[boundary_index(p, lane, tile, i)] =
              h;
          if (kInFlight &&
              ((i + 1) % kWavefrontProgressRows == 0 || i + 1 == p.height))
            publish_rows(handover_progress(p, tile, lane.sequence), i + 1);
        }
      } else {
        static_cast<acc_t *>(p.scratch)
            [((static_cast<size_t>(lane.scratch_block) * p.height + i) *
                  p.tile_width +
              column) * 32 +
             lane.lane] = h;
      }
    }
    __syncthreads();
  }
}

// Narrow tiles in turn (many blocks) load each step's inputs when it comes
// and run four blocks per SM (with loads in flight they took 42 registers,
// ran three blocks per SM and were 11% slower at Mamba2D-T stage 1 224²,
// batch 64); wide tiles (one block per SM) prefetch. kInFlight: one tile
// per block (params.tile_sync set); narrow tiles in flight prefetch at two
// blocks per SM (15% faster at Mamba2D-T stage 1 1280x800, batch 2, whose
// time is the chain of tiles).
template <typename T, bool kNarrowTiles, bool kInFlight>
__global__ void __launch_bounds__(
    (kNarrowTiles ? kWavefrontNarrowTileWidth : kWavefrontMaxTileWidth) * 32,
    kNarrowTiles ? (kInFlight ? 2 : 4) : 1)
    wavefront_fwd_kernel(WavefrontScanParams p) {
  using acc_t = typename AccumType<T>::type;
  __shared__ acc_t exchange[2][kWavefrontMaxTileWidth][32];
  const WavefrontTask<kInFlight> task(p, false);
  const WavefrontLane<acc_t> lane(p, task);
  for (int tile = task.first_tile; tile <= task.last_tile; ++tile)
    wavefront_forward_tile<T, acc_t, true, !kNarrowTiles || kInFlight,
                           kInFlight>(p, lane, tile, exchange);
}

template <typename T, bool kInFlight>
__global__ void __launch_bounds__(kWavefrontMaxTileWidth * 32)
    wavefront_bwd_kernel(WavefrontScanParams p) {
  using acc_t = typename AccumType<T>::type;
  __shared__ acc_t exchange[2][kWavefrontMaxTileWidth][32];
  const WavefrontTask<kInFlight> task(p, true);
  const WavefrontLane<acc_t> lane(p, task);
  const acc_t *scratch = static_cast<const acc_t *>(p.scratch);
  acc_t *right_adjoint = static_cast<acc_t *>(p.right_adjoint);
  const int column = threadIdx.y;
  const bool first_thread = threadIdx.x == 0 && threadIdx.y == 0;
  if (kInFlight) {
    // The slot's previous holder got its ticket earlier, so it is running
    // or done; it releases the slot when it has read its last state.
    if (first_thread)
      spin_until_at_least(slot_generation(p, lane.scratch_block),
                          task.ticket / p.num_slots);
    __syncthreads();
  }
  acc_t dA_t = acc_t(0), dA_l = acc_t(0), dD = acc_t(0);
  acc_t dbias_t = acc_t(0), dbias_l = acc_t(0);
  // With four or more lanes per channel the per-channel sums of a pixel are
  // scattered (sum_three_over_states): the first lane of each quarter of
  // the channel's lanes, of role 0, 1 and 2, stores the gradient of
  // delta_l, delta_t and x (role 3 holds nothing).
  const bool scattered = p.lanes_per_channel >= 4;
  const int quarter = p.lanes_per_channel >> 2;
  const int role = scattered ? lane.state / quarter : 0;
  const bool stores =
      scattered && lane.valid && role < 3 && lane.state % quarter == 0;

  for (int tile = task.last_tile; tile >= task.first_tile; --tile) {
    wavefront_forward_tile<T, acc_t, false, true, kInFlight>(p, lane, tile,
                                                             exchange);
    const int first_column = tile * p.tile_width;
    const int columns = min(p.tile_width, p.width - first_column);
    const int j = first_column + column;
    const int lag = columns - 1 - column;  // the rightmost column goes first
    auto saved_state = [&](int row, int col) {
      return scratch[((static_cast<size_t>(lane.scratch_block) * p.height +
                        row) * p.tile_width +
                       col) * 32 +
                     lane.lane];
    };
    acc_t from_below = acc_t(0);  // s a_t g of the pixel below
    const int steps = p.height + columns - 1;
    // This warp's rows are i = height - 1 - (step - lag), from the bottom;
    // row i's inputs, saved states and (rightmost column) adjoint from the
    // tile on the right are fetched at the step before.
    WavefrontLoads<T, true> next;
    acc_t next_h = acc_t(0), next_left = acc_t(0), next_top = acc_t(0);
    acc_t next_right = acc_t(0);
    auto fetch = [&](int i) {
      if (column >= columns || i < 0 || i >= p.height) return;
      next.fetch(p, lane, i, j);
      next_h = saved_state(i, column);
      if (column > 0) {
        next_left = saved_state(i, column - 1);
      } else if (tile > 0) {
        next_left = static_cast<const acc_t *>(
            p.boundary)[boundary_index(p, lane, tile - 1, i)];
      }
      next_top = i > 0 ? saved_state(i - 1, column) : acc_t(0);
      if (column + 1 == columns && j + 1 < p.width) {
        if (kInFlight && (p.height - 1 - i) % kWavefrontProgressRows == 0) {
          wait_for_rows(handover_progress(p, tile, lane.sequence),
                        min(p.height - i - 1 + kWavefrontProgressRows,
                            p.height));
        }
        next_right =
            load_handover<kInFlight>(right_adjoint +
                                     right_adjoint_index<kInFlight>(
                                         p, lane, tile, i));
      }
    };
    fetch(p.height - 1 + lag);
    for (int step = 0; step < steps; ++step) {
      const int i = p.height - 1 - (step - lag);
      const WavefrontLoads<T, true> loads = next;
      const acc_t h = next_h, left = next_left, top = next_top;
      const acc_t right_tile_adjoint = next_right;
      fetch(i - 1);
      const bool active = column < columns && i >= 0 && i < p.height;
      if (active) {
        acc_t from_right = acc_t(0);
        if (j + 1 < p.width) {
          from_right = column + 1 < columns
                           ? exchange[(step - 1) & 1][column + 1][lane.lane]
                           : right_tile_adjoint;
        }
        WavefrontPixel<acc_t> px;
        px.prepare(p, lane, loads, i, j);
        const acc_t dy = lane.valid ? to_acc<acc_t>(loads.dout) : acc_t(0);

        const acc_t g = px.c * dy + from_right + from_below;
        const acc_t scaled = px.scale * g;
        const acc_t to_left = px.has_left ? scaled * px.a_l : acc_t(0);
        from_below = px.has_top ? scaled * px.a_t : acc_t(0);
        exchange[step & 1][column][lane.lane] = to_left;
        if (column == 0 && tile > 0) {
          right_adjoint[right_adjoint_index<kInFlight>(p, lane, tile - 1, i)] =
              to_left;
          const int rows = p.height - i;
          if (kInFlight && (rows % kWavefrontProgressRows == 0 || i == 0))
            publish_rows(handover_progress(p, tile - 1, lane.sequence), rows);
        }

        // Gradients of the gates (a_X) and of the inputs (u_X).
        const acc_t da_l = px.has_left ? scaled * left : acc_t(0);
        const acc_t da_t = px.has_top ? scaled * top : acc_t(0);
        const acc_t du_l = px.use_left ? scaled : acc_t(0);
        const acc_t du_t = px.has_top ? scaled : acc_t(0);
        dA_l += da_l * px.a_l * px.dl;
        dA_t += da_t * px.a_t * px.dt;
        const acc_t ddl_part = da_l * px.a_l * lane.A_l + du_l * px.b_l * px.x;
        const acc_t ddt_part = da_t * px.a_t * lane.A_t + du_t * px.b_t * px.x;
        const acc_t dx_part = du_l * px.dl * px.b_l + du_t * px.dt * px.b_t;
        const acc_t dB_l = sum_over_channels(du_l * px.dl * px.x,
                                             p.lanes_per_channel);
        const acc_t dB_t = sum_over_channels(du_t * px.dt * px.x,
                                             p.lanes_per_channel);
        const acc_t dC = sum_over_channels(dy * h, p.lanes_per_channel);
        if (lane.lane < p.dstate) {
          const long long state = px.pixel * p.dstate + lane.lane;
          atomicAdd(static_cast<acc_t *>(p.dB_l) + state, dB_l);
          atomicAdd(static_cast<acc_t *>(p.dB_t) + state, dB_t);
          atomicAdd(static_cast<acc_t *>(p.dC) + state, dC);
        }
        const long long feature = px.pixel * p.channels + lane.channel;
        if (scattered) {
          const acc_t sum = sum_three_over_states(
              ddl_part, ddt_part, dx_part, p.lanes_per_channel, lane.state);
          if (stores) {
            acc_t grad = sum;
            if (role == 2) {
              grad += lane.D * dy;
              dD += dy * px.x;
            } else if (p.delta_softplus) {
              grad *= sigmoid_acc(role == 0 ? px.pre_l : px.pre_t);
            }
            if (role == 0) dbias_l += grad;
            if (role == 1) dbias_t += grad;
            void *out = role == 0 ? p.ddelta_l
                                  : (role == 1 ? p.ddelta_t : p.dx);
            static_cast<T *>(out)[feature] = from_acc<T>(grad);
          }
        } else {
          const acc_t ddl = sum_over_states(ddl_part, p.lanes_per_channel);
          const acc_t ddt = sum_over_states(ddt_part, p.lanes_per_channel);
          const acc_t dx = sum_over_states(dx_part, p.lanes_per_channel);
          if (lane.valid && lane.state == 0) {
            const acc_t grad_l =
                p.delta_softplus ? ddl * sigmoid_acc(px.pre_l) : ddl;
            const acc_t grad_t =
                p.delta_softplus ? ddt * sigmoid_acc(px.pre_t) : ddt;
            static_cast<T *>(p.dx)[feature] = from_acc<T>(dx + lane.D * dy);
            static_cast<T *>(p.ddelta_l)[feature] = from_acc<T>(grad_l);
            static_cast<T *>(p.ddelta_t)[feature] = from_acc<T>(grad_t);
            dD += dy * px.x;
            dbias_l += grad_l;
            dbias_t += grad_t;
          }
        }
      }
      __syncthreads();
    }
  }
  if (kInFlight && first_thread) {
    __threadfence();
    atomicAdd(slot_generation(p, lane.scratch_block), 1);
  }
  // The per-channel sums sit in the lanes of their roles.
  dD = sum_over_states(dD, p.lanes_per_channel);
  dbias_l = sum_over_states(dbias_l, p.lanes_per_channel);
  dbias_t = sum_over_states(dbias_t, p.lanes_per_channel);
  if (lane.valid) {
    const int weight = lane.channel * p.dstate + lane.state;
    atomicAdd(static_cast<acc_t *>(p.dA_t) + weight, dA_t);
    atomicAdd(static_cast<acc_t *>(p.dA_l) + weight, dA_l);
    if (lane.state == 0) {
      if (p.dD) atomicAdd(static_cast<acc_t *>(p.dD) + lane.channel, dD);
      if (p.ddelta_bias_t)
        atomicAdd(static_cast<acc_t *>(p.ddelta_bias_t) + lane.channel,
                  dbias_t);
      if (p.ddelta_bias_l)
        atomicAdd(static_cast<acc_t *>(p.ddelta_bias_l) + lane.channel,
                  dbias_l);
    }
  }
}

template <typename T>
void wavefront_scan_launch(const WavefrontScanParams &params, bool backward) {
  const dim3 grid = params.tile_sync
                        ? dim3(params.num_groups * params.batch *
                               params.num_tiles)
                        : dim3(params.num_groups, params.batch);
  const dim3 block(32, params.tile_width);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const bool narrow = params.tile_width <= kWavefrontNarrowTileWidth;
  if (params.tile_sync) {
    if (backward) {
      wavefront_bwd_kernel<T, true><<<grid, block, 0, stream>>>(params);
    } else if (narrow) {
      wavefront_fwd_kernel<T, true, true><<<grid, block, 0, stream>>>(params);
    } else {
      wavefront_fwd_kernel<T, false, true><<<grid, block, 0, stream>>>(params);
    }
  } else if (backward) {
    wavefront_bwd_kernel<T, false><<<grid, block, 0, stream>>>(params);
  } else if (narrow) {
    wavefront_fwd_kernel<T, true, false><<<grid, block, 0, stream>>>(params);
  } else {
    wavefront_fwd_kernel<T, false, false><<<grid, block, 0, stream>>>(params);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
int wavefront_backward_resident_blocks(const WavefrontScanParams &params) {
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks_per_sm, wavefront_bwd_kernel<T, true>, 32 * params.tile_width,
      0));
  return blocks_per_sm *
         at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

}  // namespace mmssm
