// Selective-scan kernels (forward and backward) for the mamba layout and for
// VMamba's fused four-direction cross scan.
//
// For every state n the recurrence h_t = a_t h_{t-1} + b_t is an affine map
// per position, so a stretch of positions is solved by a parallel scan of
// affine maps, and the state after it is carried to the next stretch.
//
// Forward, two kernels that save the state every kChunkStateStride
// positions (nothing of size L * N is stored):
// - thread kernel (dstate <= kThreadScanMaxStates): one thread per
//   (sequence, chunk of positions) walks the recurrence with every state in
//   registers, one exp per position and state; chunks of one sequence are
//   joined through their end states from a zero start;
// - block kernel (any dstate): one block per sequence (batch element,
//   direction, channel), each thread owning kNItems consecutive positions
//   of a chunk of kNThreads * kNItems, solved by a block scan.
//
// Backward, two kernels that recompute the states from the saved ones and
// run the adjoint recurrence as a reverse scan:
// - warp kernel: one warp per sequence, a block's warps taking consecutive
//   channels that share their B/C groups, so that the block sums the
//   gradients of shared B/C over its channels before one atomic add per
//   position (used where there are many sequences);
// - block kernel: one block per sequence, like the forward pass (used for
//   few long sequences, where one warp per sequence leaves the GPU idle).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "selective_scan_params.h"

namespace mmssm {

template <typename T>
struct AccumType {
  using type = float;
};
template <>
struct AccumType<double> {
  using type = double;
};

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log1p_acc(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_acc(double x) { return log1p(x); }

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T x) {
  return static_cast<acc_t>(x);
}

template <typename T, typename acc_t>
__device__ __forceinline__ T from_acc(acc_t x) {
  return static_cast<T>(x);
}

// h -> a * h + b.
template <typename acc_t>
struct AffineMap {
  acc_t a;
  acc_t b;
};

template <typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> identity_map() {
  return {acc_t(1), acc_t(0)};
}

// The map that applies `first`, then `second`.
template <typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> compose(AffineMap<acc_t> first,
                                                   AffineMap<acc_t> second) {
  return {first.a * second.a, second.a * first.b + second.b};
}

// Row-major position of the t-th element of cross-scan direction k of an
// height x width map: 0 row-major, 1 column-major, 2 and 3 their reverses.
__device__ __forceinline__ int cross_position(int direction, int t, int height,
                                              int width, int length) {
  if (direction >= 2) t = length - 1 - t;
  if (direction & 1) return (t % height) * width + t / height;
  return t;
}

// Warp-wide exclusive scan of affine maps in lane order (kReverse: in
// reverse lane order, for the adjoint recurrence). Returns the composition of
// the maps of the lanes before this one and, in `total`, of all lanes.
template <typename acc_t, bool kReverse>
__device__ __forceinline__ AffineMap<acc_t> warp_exclusive_scan(
    AffineMap<acc_t> value, AffineMap<acc_t> &total) {
  constexpr unsigned kFullMask = 0xffffffffu;
  const int lane = threadIdx.x & 31;
  AffineMap<acc_t> inclusive = value;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    AffineMap<acc_t> before;
    if (kReverse) {
      before.a = __shfl_down_sync(kFullMask, inclusive.a, offset);
      before.b = __shfl_down_sync(kFullMask, inclusive.b, offset);
      if (lane + offset < 32) inclusive = compose(before, inclusive);
    } else {
      before.a = __shfl_up_sync(kFullMask, inclusive.a, offset);
      before.b = __shfl_up_sync(kFullMask, inclusive.b, offset);
      if (lane >= offset) inclusive = compose(before, inclusive);
    }
  }
  const int last_lane = kReverse ? 0 : 31;
  total.a = __shfl_sync(kFullMask, inclusive.a, last_lane);
  total.b = __shfl_sync(kFullMask, inclusive.b, last_lane);
  AffineMap<acc_t> exclusive;
  if (kReverse) {
    exclusive.a = __shfl_down_sync(kFullMask, inclusive.a, 1);
    exclusive.b = __shfl_down_sync(kFullMask, inclusive.b, 1);
  } else {
    exclusive.a = __shfl_up_sync(kFullMask, inclusive.a, 1);
    exclusive.b = __shfl_up_sync(kFullMask, inclusive.b, 1);
  }
  if (lane == (kReverse ? 31 : 0)) exclusive = identity_map<acc_t>();
  return exclusive;
}

// Block-wide exclusive scan of affine maps in thread order (kReverse: in
// reverse thread order). Returns the composition of the maps of the threads
// before this one and, in `total`, of all threads. Contains two
// __syncthreads(), so every thread must call it.
template <typename acc_t, int kNThreads, bool kReverse>
__device__ __forceinline__ AffineMap<acc_t> block_exclusive_scan(
    AffineMap<acc_t> value, AffineMap<acc_t> &total,
    AffineMap<acc_t> *warp_totals) {
  constexpr int kNWarps = kNThreads / 32;
  const int warp = threadIdx.x >> 5;
  AffineMap<acc_t> warp_total;
  const AffineMap<acc_t> in_warp =
      warp_exclusive_scan<acc_t, kReverse>(value, warp_total);
  if ((threadIdx.x & 31) == 0) warp_totals[warp] = warp_total;
  __syncthreads();
  AffineMap<acc_t> prefix = identity_map<acc_t>();
  total = identity_map<acc_t>();
#pragma unroll
  for (int step = 0; step < kNWarps; ++step) {
    const int w = kReverse ? kNWarps - 1 - step : step;
    const AffineMap<acc_t> other = warp_totals[w];
    if (kReverse ? w > warp : w < warp) prefix = compose(prefix, other);
    total = compose(total, other);
  }
  __syncthreads();
  return compose(prefix, in_warp);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Where the pointers of one sequence (row `seq` = direction * dim + channel
// of A, D, delta_bias) of batch element blockIdx.y start.
struct SequenceView {
  int direction;
  int channel;
  int seq;
  size_t uz_offset;     // start in u, z, out, y_pregate, du, dz, dout
  size_t delta_offset;  // start in delta, ddelta
  size_t B_offset;      // start of variable B, dB (dstate rows of length)
  size_t C_offset;      // start of variable C, dC
  size_t state_offset;  // start in chunk_states

  __device__ size_t group_offset(const SelectiveScanParams &p,
                                 int batch_index, int num_groups) const {
    const int group = direction * num_groups + channel / (p.dim / num_groups);
    return (size_t(batch_index) * p.num_dirs * num_groups + group) *
           p.dstate * size_t(p.length);
  }

  __device__ SequenceView(const SelectiveScanParams &p, int sequence) {
    const int batch_index = blockIdx.y;
    seq = sequence;
    direction = seq / p.dim;
    channel = seq % p.dim;
    const size_t length = p.length;
    uz_offset = (size_t(batch_index) * p.dim + channel) * length;
    delta_offset = (size_t(batch_index) * p.num_dirs * p.dim + seq) * length;
    B_offset = group_offset(p, batch_index, p.num_groups_B);
    C_offset = group_offset(p, batch_index, p.num_groups_C);
    state_offset = (size_t(batch_index) * p.num_dirs * p.dim + seq) *
                   p.num_chunks * p.dstate;
  }
};

// The sequence of this warp in the warp-per-sequence layout: a block's warps
// take consecutive channels of one segment (channels sharing their groups of
// B and of C). Warps past the segment's end are inactive and alias its first
// channel.
template <int kNWarps>
__device__ __forceinline__ int warp_sequence(const SelectiveScanParams &p,
                                             bool &active) {
  const int segment_size = p.channels_per_segment;
  const int tiles_per_segment = (segment_size + kNWarps - 1) / kNWarps;
  const int tiles_per_direction = (p.dim / segment_size) * tiles_per_segment;
  const int direction = blockIdx.x / tiles_per_direction;
  const int tile = blockIdx.x % tiles_per_direction;
  const int in_segment =
      (tile % tiles_per_segment) * kNWarps + (threadIdx.x >> 5);
  active = in_segment < segment_size;
  return direction * p.dim + (tile / tiles_per_segment) * segment_size +
         (active ? in_segment : 0);
}

template <typename acc_t>
__device__ __forceinline__ acc_t softplus(acc_t x) {
  return x <= acc_t(20) ? log1p_acc(exp_acc(x)) : x;
}

// Position in memory of sequence element t.
template <bool kCross>
__device__ __forceinline__ int sequence_position(int direction, int t,
                                                 const SelectiveScanParams &p) {
  if (kCross) return cross_position(direction, t, p.height, p.width, p.length);
  return p.reverse ? p.length - 1 - t : t;
}

// Forward: one block per sequence; each thread owns kNItems consecutive
// positions of a chunk of kNThreads * kNItems.
template <typename T, int kNThreads, int kNItems, bool kCross>
__global__ void __launch_bounds__(kNThreads)
    selective_scan_fwd_kernel(SelectiveScanParams p) {
  static_assert(kChunkStateStride % kNItems == 0,
                "saved states must fall on thread boundaries");
  using acc_t = typename AccumType<T>::type;
  constexpr int kChunk = kNThreads * kNItems;
  __shared__ AffineMap<acc_t> warp_totals[kNThreads / 32];
  extern __shared__ unsigned char shared_raw[];
  acc_t *carry = reinterpret_cast<acc_t *>(shared_raw);  // (dstate,)

  const SequenceView view(p, blockIdx.x);
  const int length = p.length;
  const int dstate = p.dstate;
  const T *u = static_cast<const T *>(p.u) + view.uz_offset;
  const T *delta = static_cast<const T *>(p.delta) + view.delta_offset;
  const T *B_var = static_cast<const T *>(p.B) + view.B_offset;
  const T *C_var = static_cast<const T *>(p.C) + view.C_offset;
  const acc_t *B_const = static_cast<const acc_t *>(p.B) + view.seq * dstate;
  const acc_t *C_const = static_cast<const acc_t *>(p.C) + view.seq * dstate;
  const acc_t *A = static_cast<const acc_t *>(p.A) + view.seq * dstate;
  const acc_t D =
      p.D ? static_cast<const acc_t *>(p.D)[view.seq] : acc_t(0);
  const acc_t delta_bias =
      p.delta_bias ? static_cast<const acc_t *>(p.delta_bias)[view.seq]
                   : acc_t(0);
  acc_t *chunk_states = static_cast<acc_t *>(p.chunk_states) + view.state_offset;

  for (int n = threadIdx.x; n < dstate; n += kNThreads) carry[n] = acc_t(0);

  const int num_chunks = (length + kChunk - 1) / kChunk;
  for (int chunk = 0; chunk < num_chunks; ++chunk) {
    // Thread 0 wrote the carried states after the last scan of the previous
    // chunk (and the first chunk's zeros).
    __syncthreads();
    const int t0 = chunk * kChunk + threadIdx.x * kNItems;
    // This thread ends a stretch of kChunkStateStride positions (or the
    // sequence): it saves the state there for the backward pass.
    const int end = min(t0 + kNItems, length);
    const bool saves_state =
        t0 < length && (end % kChunkStateStride == 0 || end == length);
    const int saved_index = (end + kChunkStateStride - 1) / kChunkStateStride - 1;
    int pos[kNItems];
    bool valid[kNItems];
    acc_t u_val[kNItems], dt[kNItems], y[kNItems];
#pragma unroll
    for (int i = 0; i < kNItems; ++i) {
      const int t = t0 + i;
      valid[i] = t < length;
      pos[i] = valid[i] ? sequence_position<kCross>(view.direction, t, p) : 0;
      u_val[i] = valid[i] ? to_acc<acc_t>(u[pos[i]]) : acc_t(0);
      const acc_t raw =
          valid[i] ? to_acc<acc_t>(delta[pos[i]]) + delta_bias : acc_t(0);
      // A zero step makes padding positions the identity map.
      dt[i] = !valid[i] ? acc_t(0) : p.delta_softplus ? softplus(raw) : raw;
      y[i] = acc_t(0);
    }
    for (int n = 0; n < dstate; ++n) {
      const acc_t A_n = A[n];
      acc_t decay[kNItems], drive[kNItems];
      AffineMap<acc_t> thread_map = identity_map<acc_t>();
#pragma unroll
      for (int i = 0; i < kNItems; ++i) {
        const acc_t B_val =
            p.var_B ? (valid[i] ? to_acc<acc_t>(B_var[n * length + pos[i]])
                                : acc_t(0))
                    : B_const[n];
        decay[i] = exp_acc(dt[i] * A_n);
        drive[i] = dt[i] * B_val * u_val[i];
        thread_map = compose(thread_map, {decay[i], drive[i]});
      }
      const acc_t state_in = carry[n];
      AffineMap<acc_t> chunk_map;
      const AffineMap<acc_t> before =
          block_exclusive_scan<acc_t, kNThreads, false>(thread_map, chunk_map,
                                                        warp_totals);
      acc_t h = before.a * state_in + before.b;
#pragma unroll
      for (int i = 0; i < kNItems; ++i) {
        h = decay[i] * h + drive[i];
        const acc_t C_val =
            p.var_C ? (valid[i] ? to_acc<acc_t>(C_var[n * length + pos[i]])
                                : acc_t(0))
                    : C_const[n];
        y[i] += C_val * h;
      }
      if (saves_state) chunk_states[saved_index * dstate + n] = h;
      if (threadIdx.x == 0) carry[n] = chunk_map.a * state_in + chunk_map.b;
    }
#pragma unroll
    for (int i = 0; i < kNItems; ++i) {
      if (!valid[i]) continue;
      acc_t out = y[i] + D * u_val[i];
      if (p.z) {
        const acc_t z =
            to_acc<acc_t>(static_cast<const T *>(p.z)[view.uz_offset + pos[i]]);
        static_cast<T *>(p.y_pregate)[view.uz_offset + pos[i]] =
            from_acc<T>(out);
        out *= z / (acc_t(1) + exp_acc(-z));
      }
      if (kCross) {
        atomicAdd(static_cast<acc_t *>(p.out) + view.uz_offset + pos[i], out);
      } else {
        static_cast<T *>(p.out)[view.uz_offset + pos[i]] = from_acc<T>(out);
      }
    }
  }
}

// Forward, one thread per (sequence, chunk of forward_chunk_length
// positions): the thread walks its chunk position by position with all
// states in registers (one exp per position and state, no scans). A block's
// threads take consecutive channels of one segment (channels sharing their
// groups of B and of C), so each tile of B/C is staged once in shared memory
// and read as broadcasts; u, delta and z tiles are staged, and outputs
// written back, with loads and stores along the rows of the (batch, dim,
// length) layout. With several chunks per sequence a local pass first
// stores each chunk's end state from a zero start and the sum of its steps;
// the final pass composes those of the chunks before its own into its
// start state.
constexpr int kThreadScanChannels = 64;  // threads (channels) per block
constexpr int kThreadScanTile = 32;      // positions staged at a time

// Shared-memory layout of the thread-per-chunk forward kernel for kMaxN
// register states (a power of two, at least dstate).
template <typename acc_t, int kMaxN>
struct ThreadScanLayout {
  // States per vector load from shared memory (16 bytes at most).
  static constexpr int kVec =
      kMaxN < int(16 / sizeof(acc_t)) ? kMaxN : int(16 / sizeof(acc_t));
  // Row stride of the B/C tiles: an odd number of vectors, so that the
  // vector stores of a warp's lanes (one row each) hit distinct banks.
  static constexpr int kRowStride =
      (kMaxN / kVec) % 2 == 1 ? kMaxN : kMaxN + kVec;
  // Rows of the B/C tiles: a position each for variable B/C, a channel each
  // for constant ones.
  static constexpr int kRows = kThreadScanTile > kThreadScanChannels
                                   ? kThreadScanTile
                                   : kThreadScanChannels;
  // Row stride of the u/delta tiles (odd: a warp's lanes read one column).
  static constexpr int kSeqStride = kThreadScanTile + 1;
  static constexpr int kSeqElements = kThreadScanChannels * kSeqStride;
  // u, step-size (overwritten with the output before the gate) and z tiles,
  // then the B and C tiles.
  static constexpr int kElements = 3 * kSeqElements + 2 * kRows * kRowStride;
};

template <typename acc_t, int kVec>
struct alignas(sizeof(acc_t) * kVec) StateVector {
  acc_t v[kVec];
};

__device__ __forceinline__ float exp2_acc(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_acc(double x) { return exp2(x); }

// Blocks per SM the register allocation must allow: up to 16 states, the
// six that the shared memory of float tiles allows (so that a unrolled tile
// load does not take registers that would cost blocks); more states need
// their registers.
template <int kMaxN>
constexpr int thread_scan_min_blocks() {
  return kMaxN <= 16 ? 6 : kMaxN <= 32 ? 4 : 1;
}

template <typename T, int kMaxN, bool kCross, bool kLocalPass>
__global__ void __launch_bounds__(kThreadScanChannels,
                                  thread_scan_min_blocks<kMaxN>())
    selective_scan_fwd_thread_kernel(SelectiveScanParams p) {
  using acc_t = typename AccumType<T>::type;
  using Layout = ThreadScanLayout<acc_t, kMaxN>;
  using Vector = StateVector<acc_t, Layout::kVec>;
  constexpr int kVec = Layout::kVec;
  constexpr int kRowStride = Layout::kRowStride;
  constexpr int kSeqStride = Layout::kSeqStride;
  constexpr int kTile = kThreadScanTile;
  constexpr int kChannels = kThreadScanChannels;
  static_assert(kChannels % kTile == 0, "lanes keep one position of a tile");
  extern __shared__ __align__(16) unsigned char thread_scan_shared[];
  acc_t *u_tile = reinterpret_cast<acc_t *>(thread_scan_shared);
  acc_t *dt_tile = u_tile + Layout::kSeqElements;
  acc_t *z_tile = dt_tile + Layout::kSeqElements;
  acc_t *B_tile = z_tile + Layout::kSeqElements;
  acc_t *C_tile = B_tile + Layout::kRows * kRowStride;

  // This block: channels [first_channel, first_channel + num_channels) of
  // one segment of direction `direction`, batch element blockIdx.y, chunk
  // blockIdx.z.
  const int dim = p.dim;
  const int length = p.length;
  const int dstate = p.dstate;
  const int segment = p.channels_per_segment;
  const int tiles_per_segment = (segment + kChannels - 1) / kChannels;
  const int tiles_per_direction = (dim / segment) * tiles_per_segment;
  const int direction = blockIdx.x / tiles_per_direction;
  const int tile_index = blockIdx.x % tiles_per_direction;
  const int in_segment = (tile_index % tiles_per_segment) * kChannels;
  const int first_channel =
      (tile_index / tiles_per_segment) * segment + in_segment;
  const int num_channels = min(kChannels, segment - in_segment);
  const int batch_index = blockIdx.y;
  const int chunk = blockIdx.z;
  const int t_begin = chunk * p.forward_chunk_length;
  const int t_end = min(length, t_begin + p.forward_chunk_length);
  const size_t row_length = length;
  // Rows of this block's first channel; channel c of the block is c rows on.
  const size_t uz_row0 = size_t(batch_index) * dim + first_channel;
  const size_t seq0 = size_t(direction) * dim + first_channel;
  const size_t delta_row0 = size_t(batch_index) * p.num_dirs * dim + seq0;
  const T *u = static_cast<const T *>(p.u) + uz_row0 * row_length;
  const T *delta = static_cast<const T *>(p.delta) + delta_row0 * row_length;
  auto group_rows = [&](int num_groups) {
    const int group =
        direction * num_groups + first_channel / (dim / num_groups);
    return (size_t(batch_index) * p.num_dirs * num_groups + group) * dstate *
           row_length;
  };
  const T *B_var = static_cast<const T *>(p.B) + group_rows(p.num_groups_B);
  const T *C_var = static_cast<const T *>(p.C) + group_rows(p.num_groups_C);
  const acc_t *delta_bias = static_cast<const acc_t *>(p.delta_bias);

  // This thread's channel; threads past the segment alias the block's first
  // channel, compute on zeros and store nothing.
  const int lane_channel = threadIdx.x;
  const bool active = lane_channel < num_channels;
  const size_t seq = seq0 + (active ? lane_channel : 0);
  const size_t state_row = size_t(batch_index) * p.num_dirs * dim + seq;
  const acc_t D = p.D ? static_cast<const acc_t *>(p.D)[seq] : acc_t(0);
  // A in base-2 exponent units: exp(dt * A) = exp2(dt * A * log2(e)).
  constexpr acc_t kLog2e = acc_t(1.4426950408889634);
  acc_t A2[kMaxN];
#pragma unroll
  for (int n = 0; n < kMaxN; ++n)
    A2[n] = n < dstate ? static_cast<const acc_t *>(p.A)[seq * dstate + n] *
                             kLog2e
                       : acc_t(0);

  acc_t h[kMaxN];
#pragma unroll
  for (int n = 0; n < kMaxN; ++n) h[n] = acc_t(0);
  if (!kLocalPass && chunk > 0) {
    // Compose the chunks before this one: h <- exp(A * steps) h + end state.
    const size_t num_saved = p.num_forward_chunks - 1;
    const acc_t *end_states = static_cast<const acc_t *>(p.chunk_end_states) +
                              state_row * num_saved * dstate;
    const acc_t *step_sums =
        static_cast<const acc_t *>(p.chunk_step_sums) + state_row * num_saved;
    for (int before = 0; before < chunk; ++before) {
      const acc_t steps = step_sums[before];
#pragma unroll
      for (int n = 0; n < kMaxN; ++n) {
        if (n < dstate)
          h[n] = exp2_acc(steps * A2[n]) * h[n] +
                 end_states[size_t(before) * dstate + n];
      }
    }
  }

  // Constant B/C: one row per channel, staged once.
  for (int i = threadIdx.x; i < kChannels * kMaxN; i += kChannels) {
    const int c = i / kMaxN, n = i % kMaxN;
    const bool valid = c < num_channels && n < dstate;
    if (!p.var_B)
      B_tile[c * kRowStride + n] =
          valid ? static_cast<const acc_t *>(p.B)[(seq0 + c) * dstate + n]
                : acc_t(0);
    if (!p.var_C && !kLocalPass)
      C_tile[c * kRowStride + n] =
          valid ? static_cast<const acc_t *>(p.C)[(seq0 + c) * dstate + n]
                : acc_t(0);
  }

  acc_t step_sum = acc_t(0);
  acc_t *chunk_states = static_cast<acc_t *>(p.chunk_states) +
                        state_row * p.num_chunks * dstate;
  const acc_t *u_row = u_tile + lane_channel * kSeqStride;
  acc_t *dt_row = dt_tile + lane_channel * kSeqStride;
  // Staging and output stores: every lane keeps one position j of the tile
  // and takes every (kChannels / kTile)-th channel row (or state vector).
  const int lane_position = threadIdx.x % kTile;
  const int first_row = threadIdx.x / kTile;
  constexpr int kRowStep = kChannels / kTile;
  for (int t0 = t_begin; t0 < t_end; t0 += kTile) {
    const int tile_length = min(kTile, t_end - t0);
    const bool valid_position = lane_position < tile_length;
    const int pos = valid_position
                        ? sequence_position<kCross>(direction,
                                                    t0 + lane_position, p)
                        : 0;
    // The previous tile's outputs have been read out of the tiles.
    __syncthreads();
    // Unrolled so that many loads of a tile are in flight at once.
#pragma unroll 16
    for (int k = 0; k < kChannels / kRowStep; ++k) {
      const int c = first_row + k * kRowStep;
      const bool valid = valid_position && c < num_channels;
      acc_t u_val = acc_t(0), dt = acc_t(0), z = acc_t(0);
      if (valid) {
        u_val = to_acc<acc_t>(u[c * row_length + pos]);
        const acc_t raw = to_acc<acc_t>(delta[c * row_length + pos]) +
                          (delta_bias ? delta_bias[seq0 + c] : acc_t(0));
        dt = p.delta_softplus ? softplus(raw) : raw;
        if (!kLocalPass && p.z)
          z = to_acc<acc_t>(static_cast<const T *>(p.z)[(uz_row0 + c) *
                                                           row_length + pos]);
      }
      u_tile[c * kSeqStride + lane_position] = u_val;
      dt_tile[c * kSeqStride + lane_position] = dt;
      if (!kLocalPass) z_tile[c * kSeqStride + lane_position] = z;
    }
    if (p.var_B || (p.var_C && !kLocalPass)) {
      // Coalesced along the rows of B/C; kVec states of one position each.
      constexpr int kVectors = kMaxN / kVec;
#pragma unroll
      for (int k = 0; k < (kVectors + kRowStep - 1) / kRowStep; ++k) {
        const int v = first_row + k * kRowStep;
        if (kVectors % kRowStep != 0 && v >= kVectors) break;
        const int first_state = v * kVec;
        Vector B_vals, C_vals;
#pragma unroll
        for (int q = 0; q < kVec; ++q) {
          const int n = first_state + q;
          const bool valid = valid_position && n < dstate;
          const size_t at = size_t(n) * row_length + pos;
          B_vals.v[q] = valid && p.var_B ? to_acc<acc_t>(B_var[at]) : acc_t(0);
          C_vals.v[q] = valid && p.var_C && !kLocalPass
                            ? to_acc<acc_t>(C_var[at])
                            : acc_t(0);
        }
        if (p.var_B)
          *reinterpret_cast<Vector *>(B_tile + lane_position * kRowStride +
                                      first_state) = B_vals;
        if (p.var_C && !kLocalPass)
          *reinterpret_cast<Vector *>(C_tile + lane_position * kRowStride +
                                      first_state) = C_vals;
      }
    }
    __syncthreads();

    for (int j = 0; j < tile_length; ++j) {
      const acc_t dt = dt_row[j];
      const acc_t u_val = u_row[j];
      const acc_t drive = dt * u_val;
      const acc_t *B_row =
          B_tile + (p.var_B ? j : lane_channel) * kRowStride;
      const acc_t *C_row =
          C_tile + (p.var_C ? j : lane_channel) * kRowStride;
      acc_t y = D * u_val;
#pragma unroll
      for (int v = 0; v < kMaxN / kVec; ++v) {
        const Vector B_vals =
            *reinterpret_cast<const Vector *>(B_row + v * kVec);
        Vector C_vals;
        if (!kLocalPass)
          C_vals = *reinterpret_cast<const Vector *>(C_row + v * kVec);
#pragma unroll
        for (int q = 0; q < kVec; ++q) {
          const int n = v * kVec + q;
          h[n] = exp2_acc(dt * A2[n]) * h[n] + drive * B_vals.v[q];
          if (!kLocalPass) y += C_vals.v[q] * h[n];
        }
      }
      if (kLocalPass) {
        step_sum += dt;
      } else {
        dt_row[j] = y;  // read back by the output stores below
        // The backward pass restarts from the state after every
        // kChunkStateStride positions and after the last one.
        const int t = t0 + j;
        if (active && ((t + 1) % kChunkStateStride == 0 || t == length - 1)) {
#pragma unroll
          for (int n = 0; n < kMaxN; ++n)
            if (n < dstate)
              chunk_states[(t / kChunkStateStride) * dstate + n] = h[n];
        }
      }
    }

    if (!kLocalPass) {
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < kChannels / kRowStep; ++k) {
        const int c = first_row + k * kRowStep;
        if (!valid_position || c >= num_channels) continue;
        acc_t out = dt_tile[c * kSeqStride + lane_position];
        const size_t at = (uz_row0 + c) * row_length + pos;
        if (p.z) {
          const acc_t z = z_tile[c * kSeqStride + lane_position];
          static_cast<T *>(p.y_pregate)[at] = from_acc<T>(out);
          out *= z / (acc_t(1) + exp_acc(-z));
        }
        if (kCross) {
          atomicAdd(static_cast<acc_t *>(p.out) + at, out);
        } else {
          static_cast<T *>(p.out)[at] = from_acc<T>(out);
        }
      }
    }
  }

  if (kLocalPass && active) {
    const size_t num_saved = p.num_forward_chunks - 1;
    acc_t *end_states = static_cast<acc_t *>(p.chunk_end_states) +
                        (state_row * num_saved + chunk) * dstate;
#pragma unroll
    for (int n = 0; n < kMaxN; ++n)
      if (n < dstate) end_states[n] = h[n];
    static_cast<acc_t *>(p.chunk_step_sums)[state_row * num_saved + chunk] =
        step_sum;
  }
}

// Positions per lane of the warp backward kernel: one chunk per saved state.
constexpr int kWarpBwdItems = kChunkStateStride / 32;

// Shared memory of the warp backward kernel, in acc_t elements.
template <int kNItems>
__host__ __device__ constexpr int bwd_reduction_stride() {
  return 32 * (kNItems + 1);  // one padding slot per lane against conflicts
}

template <int kNWarps>
__host__ __device__ inline size_t warp_bwd_shared_elements(int dstate) {
  // Per warp: adjoint carry, dA, constant dB, constant dC (dstate each),
  // then per-warp B and C gradient slots of one chunk for the reduction.
  return size_t(kNWarps) *
         (4 * dstate + 2 * bwd_reduction_stride<kWarpBwdItems>());
}

// Backward, one warp per sequence; chunks of kChunkStateStride positions.
template <typename T, int kNWarps, bool kCross>
__global__ void __launch_bounds__(kNWarps * 32)
    selective_scan_bwd_warp_kernel(SelectiveScanParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kNItems = kWarpBwdItems;
  constexpr int kChunk = kChunkStateStride;
  constexpr int kStride = bwd_reduction_stride<kNItems>();
  bool active;
  const SequenceView view(p, warp_sequence<kNWarps>(p, active));
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int length = p.length;
  const int dstate = p.dstate;
  extern __shared__ unsigned char shared_raw[];
  acc_t *shared = reinterpret_cast<acc_t *>(shared_raw);
  acc_t *adjoint_carry = shared + warp * 4 * dstate;
  acc_t *dA_sum = adjoint_carry + dstate;
  acc_t *dB_sum = dA_sum + dstate;
  acc_t *dC_sum = dB_sum + dstate;
  acc_t *dB_slots = shared + kNWarps * 4 * dstate;
  acc_t *dC_slots = dB_slots + kNWarps * kStride;

  const T *u = static_cast<const T *>(p.u) + view.uz_offset;
  const T *delta = static_cast<const T *>(p.delta) + view.delta_offset;
  const T *dout = static_cast<const T *>(p.dout) + view.uz_offset;
  const T *B_var = static_cast<const T *>(p.B) + view.B_offset;
  const T *C_var = static_cast<const T *>(p.C) + view.C_offset;
  // All warps of the block share these (one segment).
  acc_t *dB_var = static_cast<acc_t *>(p.dB) + view.B_offset;
  acc_t *dC_var = static_cast<acc_t *>(p.dC) + view.C_offset;
  const acc_t *B_const = static_cast<const acc_t *>(p.B) + view.seq * dstate;
  const acc_t *C_const = static_cast<const acc_t *>(p.C) + view.seq * dstate;
  const acc_t *A = static_cast<const acc_t *>(p.A) + view.seq * dstate;
  const acc_t D =
      p.D ? static_cast<const acc_t *>(p.D)[view.seq] : acc_t(0);
  const acc_t delta_bias =
      p.delta_bias ? static_cast<const acc_t *>(p.delta_bias)[view.seq]
                   : acc_t(0);
  const acc_t *chunk_states =
      static_cast<const acc_t *>(p.chunk_states) + view.state_offset;

  for (int n = lane; n < 4 * dstate; n += 32) adjoint_carry[n] = acc_t(0);
  acc_t dD_part = acc_t(0), dbias_part = acc_t(0);

  for (int chunk = p.num_chunks - 1; chunk >= 0; --chunk) {
    // Makes lane 0's adjoint_carry writes of the previous chunk visible.
    __syncwarp();
    const int t0 = chunk * kChunk + lane * kNItems;
    int pos[kNItems];
    bool valid[kNItems];
    acc_t u_val[kNItems], raw[kNItems], dt[kNItems], dy[kNItems];
    acc_t ddt[kNItems], du[kNItems];
#pragma unroll
    for (int i = 0; i < kNItems; ++i) {
      const int t = t0 + i;
      valid[i] = active && t < length;
      pos[i] = valid[i] ? sequence_position<kCross>(view.direction, t, p) : 0;
      u_val[i] = valid[i] ? to_acc<acc_t>(u[pos[i]]) : acc_t(0);
      raw[i] = valid[i] ? to_acc<acc_t>(delta[pos[i]]) + delta_bias : acc_t(0);
      dt[i] = !valid[i] ? acc_t(0) : p.delta_softplus ? softplus(raw[i]) : raw[i];
      dy[i] = valid[i] ? to_acc<acc_t>(dout[pos[i]]) : acc_t(0);
      if (p.z && valid[i]) {
        const acc_t z =
            to_acc<acc_t>(static_cast<const T *>(p.z)[view.uz_offset + pos[i]]);
        const acc_t y_pre = to_acc<acc_t>(
            static_cast<const T *>(p.y_pregate)[view.uz_offset + pos[i]]);
        const acc_t sig = acc_t(1) / (acc_t(1) + exp_acc(-z));
        static_cast<T *>(p.dz)[view.uz_offset + pos[i]] = from_acc<T>(
            dy[i] * y_pre * sig * (acc_t(1) + z * (acc_t(1) - sig)));
        dy[i] *= z * sig;
      }
      ddt[i] = acc_t(0);
      du[i] = acc_t(0);
    }
    for (int n = 0; n < dstate; ++n) {
      const acc_t A_n = A[n];
      acc_t decay[kNItems], B_val[kNItems], C_val[kNItems], h_prev[kNItems];
      AffineMap<acc_t> lane_map = identity_map<acc_t>();
#pragma unroll
      for (int i = 0; i < kNItems; ++i) {
        B_val[i] = p.var_B ? (valid[i] ? to_acc<acc_t>(B_var[n * length + pos[i]])
                                       : acc_t(0))
                           : B_const[n];
        C_val[i] = p.var_C ? (valid[i] ? to_acc<acc_t>(C_var[n * length + pos[i]])
                                       : acc_t(0))
                           : C_const[n];
        decay[i] = exp_acc(dt[i] * A_n);
        lane_map = compose(lane_map, {decay[i], dt[i] * B_val[i] * u_val[i]});
      }
      const acc_t state_in = chunk > 0 && active
                                 ? chunk_states[(chunk - 1) * dstate + n]
                                 : acc_t(0);
      AffineMap<acc_t> chunk_map;
      const AffineMap<acc_t> before =
          warp_exclusive_scan<acc_t, false>(lane_map, chunk_map);
      acc_t h = before.a * state_in + before.b;
#pragma unroll
      for (int i = 0; i < kNItems; ++i) {
        h_prev[i] = h;
        h = decay[i] * h + dt[i] * B_val[i] * u_val[i];
      }
      // Adjoint r_t = a_t * g_t, g_t = C_t dy_t + r_{t+1} = dL/dh_t.
      AffineMap<acc_t> lane_adjoint = identity_map<acc_t>();
#pragma unroll
      for (int i = kNItems - 1; i >= 0; --i)
        lane_adjoint = compose(lane_adjoint,
                               {decay[i], decay[i] * C_val[i] * dy[i]});
      const acc_t adjoint_in = adjoint_carry[n];
      AffineMap<acc_t> chunk_adjoint;
      const AffineMap<acc_t> after =
          warp_exclusive_scan<acc_t, true>(lane_adjoint, chunk_adjoint);
      acc_t r_next = after.a * adjoint_in + after.b;
      acc_t dA_part = acc_t(0), dB_part = acc_t(0), dC_part = acc_t(0);
#pragma unroll
      for (int i = kNItems - 1; i >= 0; --i) {
        const acc_t g = C_val[i] * dy[i] + r_next;
        r_next = decay[i] * g;
        const acc_t decayed_prev = decay[i] * h_prev[i];
        ddt[i] += g * (decayed_prev * A_n + B_val[i] * u_val[i]);
        du[i] += g * dt[i] * B_val[i];
        dA_part += g * decayed_prev * dt[i];
        const acc_t dB_val = g * dt[i] * u_val[i];
        const acc_t dC_val =
            dy[i] * (decayed_prev + dt[i] * B_val[i] * u_val[i]);
        if (p.var_B) {
          dB_slots[warp * kStride + lane * (kNItems + 1) + i] = dB_val;
        } else {
          dB_part += dB_val;
        }
        if (p.var_C) {
          dC_slots[warp * kStride + lane * (kNItems + 1) + i] = dC_val;
        } else {
          dC_part += dC_val;
        }
      }
      dA_part = warp_sum(dA_part);
      if (!p.var_B) dB_part = warp_sum(dB_part);
      if (!p.var_C) dC_part = warp_sum(dC_part);
      __syncwarp();  // every lane has read adjoint_carry[n]
      if (lane == 0) {
        adjoint_carry[n] = chunk_adjoint.a * adjoint_in + chunk_adjoint.b;
        dA_sum[n] += dA_part;
        if (!p.var_B) dB_sum[n] += dB_part;
        if (!p.var_C) dC_sum[n] += dC_part;
      }
      if (p.var_B || p.var_C) {
        // Sum the variable B/C gradients of the block's channels per
        // position, then add them to global memory once.
        __syncthreads();
        for (int j = threadIdx.x; j < kChunk; j += kNWarps * 32) {
          const int t = chunk * kChunk + j;
          if (t >= length) break;
          const int slot = (j / kNItems) * (kNItems + 1) + j % kNItems;
          const int position = sequence_position<kCross>(view.direction, t, p);
          acc_t dB_total = acc_t(0), dC_total = acc_t(0);
#pragma unroll
          for (int w = 0; w < kNWarps; ++w) {
            dB_total += dB_slots[w * kStride + slot];
            dC_total += dC_slots[w * kStride + slot];
          }
          if (p.var_B) atomicAdd(dB_var + n * length + position, dB_total);
          if (p.var_C) atomicAdd(dC_var + n * length + position, dC_total);
        }
        __syncthreads();
      }
    }
#pragma unroll
    for (int i = 0; i < kNItems; ++i) {
      if (!valid[i]) continue;
      dD_part += dy[i] * u_val[i];
      du[i] += D * dy[i];
      if (p.delta_softplus && raw[i] <= acc_t(20))
        ddt[i] *= acc_t(1) / (acc_t(1) + exp_acc(-raw[i]));
      dbias_part += ddt[i];
      static_cast<T *>(p.ddelta)[view.delta_offset + pos[i]] =
          from_acc<T>(ddt[i]);
      if (kCross) {
        atomicAdd(static_cast<acc_t *>(p.du) + view.uz_offset + pos[i], du[i]);
      } else {
        static_cast<T *>(p.du)[view.uz_offset + pos[i]] = from_acc<T>(du[i]);
      }
    }
  }
  if (!active) return;
  dD_part = warp_sum(dD_part);
  dbias_part = warp_sum(dbias_part);
  __syncwarp();
  const size_t weight_row = size_t(view.seq) * dstate;
  for (int n = lane; n < dstate; n += 32) {
    atomicAdd(static_cast<acc_t *>(p.dA) + weight_row + n, dA_sum[n]);
    if (!p.var_B)
      atomicAdd(static_cast<acc_t *>(p.dB) + weight_row + n, dB_sum[n]);
    if (!p.var_C)
      atomicAdd(static_cast<acc_t *>(p.dC) + weight_row + n, dC_sum[n]);
  }
  if (lane == 0) {
    if (p.dD) atomicAdd(static_cast<acc_t *>(p.dD) + view.seq, dD_part);
    if (p.ddelta_bias)
      atomicAdd(static_cast<acc_t *>(p.ddelta_bias) + view.seq, dbias_part);
  }
}

// Backward, one block per sequence, chunks as in the forward kernel.
template <typename T, int kNThreads, int kNItems, bool kCross>
__global__ void __launch_bounds__(kNThreads)
    selective_scan_bwd_block_kernel(SelectiveScanParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kChunk = kNThreads * kNItems;
  static_assert(kChunk % kChunkStateStride == 0,
                "chunks must start where the forward pass saved states");
  __shared__ AffineMap<acc_t> warp_totals[kNThreads / 32];
  extern __shared__ unsigned char shared_raw[];
  const int dstate = p.dstate;
  // Adjoint carry, and per-state block sums of dA and of constant dB/dC,
  // then dD and d(delta_bias).
  acc_t *adjoint_carry = reinterpret_cast<acc_t *>(shared_raw);
  acc_t *dA_sum = adjoint_carry + dstate;
  acc_t *dB_sum = dA_sum + dstate;
  acc_t *dC_sum = dB_sum + dstate;
  acc_t *dD_dbias_sum = dC_sum + dstate;

  const SequenceView view(p, blockIdx.x);
  const int length = p.length;
  const T *u = static_cast<const T *>(p.u) + view.uz_offset;
  const T *delta = static_cast<const T *>(p.delta) + view.delta_offset;
  const T *dout = static_cast<const T *>(p.dout) + view.uz_offset;
  const T *B_var = static_cast<const T *>(p.B) + view.B_offset;
  const T *C_var = static_cast<const T *>(p.C) + view.C_offset;
  acc_t *dB_var = static_cast<acc_t *>(p.dB) + view.B_offset;
  acc_t *dC_var = static_cast<acc_t *>(p.dC) + view.C_offset;
  const acc_t *B_const = static_cast<const acc_t *>(p.B) + view.seq * dstate;
  const acc_t *C_const = static_cast<const acc_t *>(p.C) + view.seq * dstate;
  const acc_t *A = static_cast<const acc_t *>(p.A) + view.seq * dstate;
  const acc_t D =
      p.D ? static_cast<const acc_t *>(p.D)[view.seq] : acc_t(0);
  const acc_t delta_bias =
      p.delta_bias ? static_cast<const acc_t *>(p.delta_bias)[view.seq]
                   : acc_t(0);
  const acc_t *chunk_states =
      static_cast<const acc_t *>(p.chunk_states) + view.state_offset;

  for (int n = threadIdx.x; n < 4 * dstate + 2; n += kNThreads)
    adjoint_carry[n] = acc_t(0);
  __syncthreads();
  acc_t dD_part = acc_t(0), dbias_part = acc_t(0);

  const int num_chunks = (length + kChunk - 1) / kChunk;
  for (int chunk = num_chunks - 1; chunk >= 0; --chunk) {
    __syncthreads();  // as in the forward kernel, for adjoint_carry
    const int t0 = chunk * kChunk + threadIdx.x * kNItems;
    int pos[kNItems];
    bool valid[kNItems];
    acc_t u_val[kNItems], raw[kNItems], dt[kNItems], dy[kNItems];
    acc_t ddt[kNItems], du[kNItems];
#pragma unroll
    for (int i = 0; i < kNItems; ++i) {
      const int t = t0 + i;
      valid[i] = t < length;
      pos[i] = valid[i] ? sequence_position<kCross>(view.direction, t, p) : 0;
      u_val[i] = valid[i] ? to_acc<acc_t>(u[pos[i]]) : acc_t(0);
      raw[i] = valid[i] ? to_acc<acc_t>(delta[pos[i]]) + delta_bias : acc_t(0);
      dt[i] = !valid[i] ? acc_t(0) : p.delta_softplus ? softplus(raw[i]) : raw[i];
      dy[i] = valid[i] ? to_acc<acc_t>(dout[pos[i]]) : acc_t(0);
      if (p.z && valid[i]) {
        const acc_t z =
            to_acc<acc_t>(static_cast<const T *>(p.z)[view.uz_offset + pos[i]]);
        const acc_t y_pre = to_acc<acc_t>(
            static_cast<const T *>(p.y_pregate)[view.uz_offset + pos[i]]);
        const acc_t sig = acc_t(1) / (acc_t(1) + exp_acc(-z));
        static_cast<T *>(p.dz)[view.uz_offset + pos[i]] = from_acc<T>(
            dy[i] * y_pre * sig * (acc_t(1) + z * (acc_t(1) - sig)));
        dy[i] *= z * sig;
      }
      ddt[i] = acc_t(0);
      du[i] = acc_t(0);
    }
    for (int n = 0; n < dstate; ++n) {
      const acc_t A_n = A[n];
      acc_t decay[kNItems], B_val[kNItems], C_val[kNItems], h_prev[kNItems];
      AffineMap<acc_t> thread_map = identity_map<acc_t>();
#pragma unroll
      for (int i = 0; i < kNItems; ++i) {
        B_val[i] = p.var_B ? (valid[i] ? to_acc<acc_t>(B_var[n * length + pos[i]])
                                       : acc_t(0))
                           : B_const[n];
        C_val[i] = p.var_C ? (valid[i] ? to_acc<acc_t>(C_var[n * length + pos[i]])
                                       : acc_t(0))
                           : C_const[n];
        decay[i] = exp_acc(dt[i] * A_n);
        thread_map = compose(thread_map, {decay[i], dt[i] * B_val[i] * u_val[i]});
      }
      const acc_t state_in =
          chunk > 0 ? chunk_states[(chunk * (kChunk / kChunkStateStride) - 1) *
                                       dstate + n]
                    : acc_t(0);
      AffineMap<acc_t> chunk_map;
      const AffineMap<acc_t> before =
          block_exclusive_scan<acc_t, kNThreads, false>(thread_map, chunk_map,
                                                        warp_totals);
      acc_t h = before.a * state_in + before.b;
      // Adjoint r_t = a_t * g_t, g_t = C_t dy_t + r_{t+1} = dL/dh_t.
      AffineMap<acc_t> thread_adjoint = identity_map<acc_t>();
#pragma unroll
      for (int i = 0; i < kNItems; ++i) {
        h_prev[i] = h;
        h = decay[i] * h + dt[i] * B_val[i] * u_val[i];
      }
#pragma unroll
      for (int i = kNItems - 1; i >= 0; --i)
        thread_adjoint = compose(thread_adjoint,
                                 {decay[i], decay[i] * C_val[i] * dy[i]});
      const acc_t adjoint_in = adjoint_carry[n];
      AffineMap<acc_t> chunk_adjoint;
      const AffineMap<acc_t> after =
          block_exclusive_scan<acc_t, kNThreads, true>(
              thread_adjoint, chunk_adjoint, warp_totals);
      acc_t r_next = after.a * adjoint_in + after.b;
      acc_t dA_part = acc_t(0), dB_part = acc_t(0), dC_part = acc_t(0);
#pragma unroll
      for (int i = kNItems - 1; i >= 0; --i) {
        const acc_t g = C_val[i] * dy[i] + r_next;
        r_next = decay[i] * g;
        const acc_t decayed_prev = decay[i] * h_prev[i];
        ddt[i] += g * (decayed_prev * A_n + B_val[i] * u_val[i]);
        du[i] += g * dt[i] * B_val[i];
        dA_part += g * decayed_prev * dt[i];
        const acc_t dB_val = g * dt[i] * u_val[i];
        const acc_t dC_val =
            dy[i] * (decayed_prev + dt[i] * B_val[i] * u_val[i]);
        if (p.var_B) {
          if (valid[i]) atomicAdd(dB_var + n * length + pos[i], dB_val);
        } else {
          dB_part += dB_val;
        }
        if (p.var_C) {
          if (valid[i]) atomicAdd(dC_var + n * length + pos[i], dC_val);
        } else {
          dC_part += dC_val;
        }
      }
      if (threadIdx.x == 0)
        adjoint_carry[n] = chunk_adjoint.a * adjoint_in + chunk_adjoint.b;
      dA_part = warp_sum(dA_part);
      if (!p.var_B) dB_part = warp_sum(dB_part);
      if (!p.var_C) dC_part = warp_sum(dC_part);
      if ((threadIdx.x & 31) == 0) {
        atomicAdd(dA_sum + n, dA_part);
        if (!p.var_B) atomicAdd(dB_sum + n, dB_part);
        if (!p.var_C) atomicAdd(dC_sum + n, dC_part);
      }
    }
#pragma unroll
    for (int i = 0; i < kNItems; ++i) {
      if (!valid[i]) continue;
      dD_part += dy[i] * u_val[i];
      du[i] += D * dy[i];
      if (p.delta_softplus && raw[i] <= acc_t(20))
        ddt[i] *= acc_t(1) / (acc_t(1) + exp_acc(-raw[i]));
      dbias_part += ddt[i];
      static_cast<T *>(p.ddelta)[view.delta_offset + pos[i]] =
          from_acc<T>(ddt[i]);
      if (kCross) {
        atomicAdd(static_cast<acc_t *>(p.du) + view.uz_offset + pos[i], du[i]);
      } else {
        static_cast<T *>(p.du)[view.uz_offset + pos[i]] = from_acc<T>(du[i]);
      }
    }
  }
  dD_part = warp_sum(dD_part);
  dbias_part = warp_sum(dbias_part);
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(dD_dbias_sum, dD_part);
    atomicAdd(dD_dbias_sum + 1, dbias_part);
  }
  __syncthreads();
  const size_t weight_row = size_t(view.seq) * dstate;
  for (int n = threadIdx.x; n < dstate; n += kNThreads) {
    atomicAdd(static_cast<acc_t *>(p.dA) + weight_row + n, dA_sum[n]);
    if (!p.var_B)
      atomicAdd(static_cast<acc_t *>(p.dB) + weight_row + n, dB_sum[n]);
    if (!p.var_C)
      atomicAdd(static_cast<acc_t *>(p.dC) + weight_row + n, dC_sum[n]);
  }
  if (threadIdx.x == 0) {
    if (p.dD) atomicAdd(static_cast<acc_t *>(p.dD) + view.seq, dD_dbias_sum[0]);
    if (p.ddelta_bias)
      atomicAdd(static_cast<acc_t *>(p.ddelta_bias) + view.seq,
                dD_dbias_sum[1]);
  }
}

}  // namespace mmssm
