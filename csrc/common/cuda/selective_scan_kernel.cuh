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
// Backward, three kernels that recompute the states from the saved ones and
// run the adjoint recurrence backwards:
// - thread kernel (mamba layout, dstate <= kThreadBwdMaxStates): one thread
//   per (sequence, chunk of positions) walks its chunk's tiles from the last
//   one down, recomputing each tile's states from the state at its start;
//   chunks of one sequence are joined through the adjoint each carries out
//   from a zero start (used where there are very many sequences, or long
//   ones split into enough chunks);
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

// c0 + x (c1 + x (c2 + ...)), by Horner's rule.
__device__ __forceinline__ float horner(float, float c) { return c; }
template <typename... Rest>
__device__ __forceinline__ float horner(float x, float c, Rest... rest) {
  return fmaf(horner(x, rest...), x, c);
}

// expm1 in float without expm1f's 33 instructions and branches: within
// 0.5 of zero, where exp(x) - 1 cancels, the Taylor series to x^9 / 9!
// (the next term is 5e-10 of the sum), elsewhere exp(x) - 1, within 4e-7.
__device__ __forceinline__ float expm1_acc(float x) {
  const float series =
      horner(x, 1.f, 1.f / 2.f, 1.f / 6.f, 1.f / 24.f, 1.f / 120.f,
             1.f / 720.f, 1.f / 5040.f, 1.f / 40320.f, 1.f / 362880.f);
  return fabsf(x) < 0.5f ? x * series : __expf(x) - 1.f;
}

__device__ __forceinline__ double expm1_acc(double x) { return expm1(x); }

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

// Warps up to which a block scan joins the warp totals in a loop.
constexpr int kSerialScanWarps = 4;

// Block-wide exclusive scan of affine maps in thread order (kReverse: in
// reverse thread order) over the block's `num_warps` whole warps. Returns
// the composition of the maps of the threads before this one and, with
// kTotal, in `total` that of all threads (without, a warp reads only the
// totals of the warps before it). Contains two __syncthreads(), so every
// thread must call it.
template <typename acc_t, bool kReverse, bool kTotal = true>
__device__ __forceinline__ AffineMap<acc_t> block_exclusive_scan(
    AffineMap<acc_t> value, AffineMap<acc_t> &total,
    AffineMap<acc_t> *warp_totals, int num_warps) {
  const int warp = threadIdx.x >> 5;
  AffineMap<acc_t> warp_total;
  const AffineMap<acc_t> in_warp =
      warp_exclusive_scan<acc_t, kReverse>(value, warp_total);
  if ((threadIdx.x & 31) == 0) warp_totals[warp] = warp_total;
  __syncthreads();
  AffineMap<acc_t> prefix = identity_map<acc_t>();
  total = identity_map<acc_t>();
  if (num_warps > kSerialScanWarps) {
    // Many warps (the plane kernels' up to 16): every warp scans the warp
    // totals across its lanes, in five shuffle steps where a loop over the
    // warps took a dependent step per warp.
    const int lane = threadIdx.x & 31;
    const AffineMap<acc_t> lane_total =
        lane < num_warps ? warp_totals[lane] : identity_map<acc_t>();
    const AffineMap<acc_t> lane_prefix =
        warp_exclusive_scan<acc_t, kReverse>(lane_total, total);
    prefix.a = __shfl_sync(0xffffffffu, lane_prefix.a, warp);
    prefix.b = __shfl_sync(0xffffffffu, lane_prefix.b, warp);
    __syncthreads();
    return compose(prefix, in_warp);
  }
#pragma unroll
  for (int step = 0; step < num_warps; ++step) {
    const int w = kReverse ? num_warps - 1 - step : step;
    const bool before = kReverse ? w > warp : w < warp;
    if (!kTotal && !before) break;
    const AffineMap<acc_t> other = warp_totals[w];
    if (before) prefix = compose(prefix, other);
    if (kTotal) total = compose(total, other);
  }
  __syncthreads();
  return compose(prefix, in_warp);
}

// The same, without the total.
template <typename acc_t, bool kReverse>
__device__ __forceinline__ AffineMap<acc_t> block_exclusive_scan(
    AffineMap<acc_t> value, AffineMap<acc_t> *warp_totals, int num_warps) {
  AffineMap<acc_t> unused;
  return block_exclusive_scan<acc_t, kReverse, false>(value, unused,
                                                      warp_totals, num_warps);
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

// softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) <= 1, with
// log1p(e) = 2 atanh(s) = 2 (s + s^3 / 3 + ... + s^15 / 15), s = e / (2 + e)
// <= 1/3, where the next term is 1.4e-9 of the sum: as accurate as
// log1pf(expf(x)) in float, in half its instructions and without a branch.
// Above 20 it returns x, as x + e rounds to x there.
__device__ __forceinline__ float softplus(float x) {
  const float e = __expf(-fabsf(x));
  const float s = __fdividef(e, 2.f + e);
  const float series = horner(s * s, 1.f, 1.f / 3.f, 1.f / 5.f, 1.f / 7.f,
                              1.f / 9.f, 1.f / 11.f, 1.f / 13.f, 1.f / 15.f);
  return fmaxf(x, 0.f) + 2.f * s * series;
}
__device__ __forceinline__ double softplus(double x) {
  return x <= 20.0 ? log1p(exp(x)) : x;
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
          block_exclusive_scan<acc_t, false>(thread_map, chunk_map,
                                             warp_totals, kNThreads / 32);
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
// start state. Mamba layout only: the cross layout's column-major directions
// read one pixel per row, which these row tiles cannot coalesce (it keeps
// the block forward kernel).
constexpr int kThreadScanChannels = 64;  // threads (channels) per block
constexpr int kThreadScanTile = 16;  // positions staged at a time

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

// Joins a chunk onto what enters it: its affine map per state n is
// x -> exp(A_n * steps) x + carried[n] (steps: the chunk's sum of steps,
// carried: what it carries out from a zero start). Applied to a thread's
// states [first_n, first_n + kN) below dstate, A2 in base 2.
template <typename acc_t, int kN>
__device__ __forceinline__ void join_chunk(acc_t (&x)[kN],
                                           const acc_t (&A2)[kN],
                                           acc_t steps, const acc_t *carried,
                                           int first_n, int dstate) {
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    const int n = first_n + i;
    if (n < dstate) x[i] = exp2_acc(steps * A2[i]) * x[i] + carried[n];
  }
}

// Threads per channel of the thread-per-chunk forward: from 16 states a
// channel's states are split over two neighbouring lanes (a shuffle joins
// their output sums). One thread per channel left the GPU short of warps:
// Vim's 49152 sequences gave 11.6 warps per SM and the kernel 26% of its
// issue slots (Nsight Compute); two give twice the warps, each with half
// the serial work per position.
template <int kMaxN>
constexpr int thread_scan_split() {
  return kMaxN >= 16 ? 2 : 1;
}

// Blocks per SM the register allocation must allow: one thread per channel
// up to 16 states, the nine that the shared memory of float tiles allows;
// split channels, enough blocks for twice the threads of Vim-S's 49152
// sequences; more states need their registers.
template <int kMaxN>
constexpr int thread_scan_min_blocks() {
  if (thread_scan_split<kMaxN>() == 1) return 9;
  return kMaxN <= 16 ? 6 : kMaxN <= 32 ? 3 : 1;
}

template <typename T, int kMaxN, bool kLocalPass>
__global__ void __launch_bounds__(
    kThreadScanChannels * thread_scan_split<kMaxN>(),
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
  constexpr int kSplit = thread_scan_split<kMaxN>();
  constexpr int kThreads = kChannels * kSplit;
  // States of this thread: [part * kOwnN, (part + 1) * kOwnN).
  constexpr int kOwnN = kMaxN / kSplit;
  static_assert(kOwnN % kVec == 0, "a thread's states are whole vectors");
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

  // This thread's channel and part of its states; threads past the segment
  // alias the block's first channel, compute on zeros and store nothing.
  const int lane_channel = threadIdx.x / kSplit;
  const int part = threadIdx.x % kSplit;
  const int first_n = part * kOwnN;
  const bool active = lane_channel < num_channels;
  const size_t seq = seq0 + (active ? lane_channel : 0);
  const size_t state_row = size_t(batch_index) * p.num_dirs * dim + seq;
  const acc_t D = p.D ? static_cast<const acc_t *>(p.D)[seq] : acc_t(0);
  // A in base-2 exponent units: exp(dt * A) = exp2(dt * A * log2(e)).
  constexpr acc_t kLog2e = acc_t(1.4426950408889634);
  acc_t A2[kOwnN];
#pragma unroll
  for (int i = 0; i < kOwnN; ++i) {
    const int n = first_n + i;
    A2[i] = n < dstate ? static_cast<const acc_t *>(p.A)[seq * dstate + n] *
                             kLog2e
                       : acc_t(0);
  }

  acc_t h[kOwnN];
#pragma unroll
  for (int i = 0; i < kOwnN; ++i) h[i] = acc_t(0);
  if (!kLocalPass && chunk > 0) {
    // Compose the chunks before this one: h <- exp(A * steps) h + end state.
    const size_t num_saved = p.num_forward_chunks - 1;
    const acc_t *end_states = static_cast<const acc_t *>(p.chunk_end_states) +
                              state_row * num_saved * dstate;
    const acc_t *step_sums =
        static_cast<const acc_t *>(p.chunk_step_sums) + state_row * num_saved;
    for (int before = 0; before < chunk; ++before)
      join_chunk(h, A2, step_sums[before],
                 end_states + size_t(before) * dstate, first_n, dstate);
  }

  // Constant B/C: one row per channel, staged once.
  for (int i = threadIdx.x; i < kChannels * kMaxN; i += kThreads) {
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
  // and takes every (kThreads / kTile)-th channel row (or state vector).
  const int lane_position = threadIdx.x % kTile;
  const int first_row = threadIdx.x / kTile;
  constexpr int kRowStep = kThreads / kTile;
  for (int t0 = t_begin; t0 < t_end; t0 += kTile) {
    const int tile_length = min(kTile, t_end - t0);
    const bool valid_position = lane_position < tile_length;
    const int pos = valid_position
                        ? sequence_position<false>(direction,
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
      acc_t y = acc_t(0);
#pragma unroll
      for (int v = 0; v < kOwnN / kVec; ++v) {
        const Vector B_vals =
            *reinterpret_cast<const Vector *>(B_row + first_n + v * kVec);
        Vector C_vals;
        if (!kLocalPass)
          C_vals =
              *reinterpret_cast<const Vector *>(C_row + first_n + v * kVec);
#pragma unroll
        for (int q = 0; q < kVec; ++q) {
          const int i = v * kVec + q;
          h[i] = exp2_acc(dt * A2[i]) * h[i] + drive * B_vals.v[q];
          if (!kLocalPass) y += C_vals.v[q] * h[i];
        }
      }
      if (kLocalPass) {
        step_sum += dt;
      } else {
        // The parts of a channel are neighbouring lanes of one warp.
#pragma unroll
        for (int offset = 1; offset < kSplit; offset *= 2)
          y += __shfl_xor_sync(0xffffffffu, y, offset);
        // Read back by the output stores below; the other part of the
        // channel has read dt_row[j] and u_row[j] before the warp sync.
        if constexpr (kSplit > 1) __syncwarp();
        if (part == 0) dt_row[j] = y + D * u_val;
        // The backward pass restarts from the state after every
        // kChunkStateStride positions and after the last one.
        const int t = t0 + j;
        if (active && ((t + 1) % kChunkStateStride == 0 || t == length - 1)) {
#pragma unroll
          for (int i = 0; i < kOwnN; ++i)
            if (first_n + i < dstate)
              chunk_states[(t / kChunkStateStride) * dstate + first_n + i] =
                  h[i];
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
        static_cast<T *>(p.out)[at] = from_acc<T>(out);
      }
    }
  }

  if (kLocalPass && active) {
    const size_t num_saved = p.num_forward_chunks - 1;
    acc_t *end_states = static_cast<acc_t *>(p.chunk_end_states) +
                        (state_row * num_saved + chunk) * dstate;
#pragma unroll
    for (int i = 0; i < kOwnN; ++i)
      if (first_n + i < dstate) end_states[first_n + i] = h[i];
    if (part == 0)
      static_cast<acc_t *>(p.chunk_step_sums)[state_row * num_saved +
                                              chunk] = step_sum;
  }
}

// Backward, one thread per (sequence, chunk of backward_chunk_length
// positions) (mamba layout, dstate <= kThreadBwdMaxStates), for many
// sequences: a block's threads take consecutive channels of one segment,
// like the thread forward kernel, so B/C tiles are staged once and read as
// broadcasts. Each thread walks the stretches of kChunkStateStride
// positions of its chunk from the last one down. Per stretch, a forward walk
// from the saved state before it keeps the state at the start of every tile
// of kThreadBwdTile positions; then the tiles are walked from the last one
// down: per state, the tile's forward states are recomputed from the kept
// one and the adjoint is run back over them, summing the gradients of each
// position over the states in registers. Gradients of variable B/C are
// summed over a warp's channels by a transposing butterfly, then added with
// one atomic per warp, position and state. The kept tile states
// (kChunkStateStride / kThreadBwdTile * kMaxN per thread) live in local
// memory: in shared memory they would cost blocks.
// With several chunks per sequence a local pass (kLocalPass) first runs the
// adjoint alone over each chunk but the first, from zero at its end, and
// stores where it ends and the chunk's sum of steps: the adjoint is affine
// in the one entering a chunk, with the factor exp(A * sum of steps), so
// the final pass composes those of the chunks after its own into the
// adjoint entering it.
constexpr int kThreadBwdTile = 16;

// What a tile of the thread backward kernel stages: u, steps and variable B
// to recompute states; steps, the gated output gradient and variable C to
// run the adjoint alone; everything for the gradients (writing dz).
enum class ThreadBwdStage { kStates, kAdjoint, kGradients };

template <typename acc_t, int kMaxN>
struct ThreadBwdLayout {
  // Row stride of the per-channel tiles (odd: a warp's lanes read a column).
  static constexpr int kSeqStride = kThreadBwdTile + 1;
  static constexpr int kSeqElements = kThreadScanChannels * kSeqStride;
  // Row stride of the B/C tiles, odd against conflicts of constant rows.
  static constexpr int kRowStride = kMaxN | 1;
  // Rows of the B/C tiles: a position each for variable B/C, a channel
  // each for constant ones.
  static constexpr int kRows = kThreadScanChannels > kThreadBwdTile
                                   ? kThreadScanChannels
                                   : kThreadBwdTile;
  // A per-thread column of kMaxN states.
  static constexpr int kColumnElements = kMaxN * kThreadScanChannels;
  // u, step, gated output gradient and softplus-derivative tiles, the B and
  // C tiles, then the columns of the adjoint carry and of dA.
  static constexpr int kElements =
      4 * kSeqElements + 2 * kRows * kRowStride + 2 * kColumnElements;
  // The local pass keeps its adjoint in registers: no columns (at 16 float
  // states 26 KB instead of 34, eight blocks per SM instead of six).
  static constexpr int kLocalElements = kElements - 2 * kColumnElements;
};

// One step of warp_transpose_sum: lanes with bit kHalf set keep the upper
// kHalf of their first 2 * kHalf values and add their partner's, the others
// the lower ones. (Compile-time steps keep the values in registers.)
template <typename acc_t, int kHalf, int kValues>
__device__ __forceinline__ void transpose_sum_step(acc_t (&values)[kValues]) {
  const bool upper = (threadIdx.x & kHalf) != 0;
#pragma unroll
  for (int k = 0; k < kHalf; ++k) {
    const acc_t lower_value = values[k];
    const acc_t upper_value = values[k + kHalf];
    const acc_t send = upper ? lower_value : upper_value;
    const acc_t keep = upper ? upper_value : lower_value;
    values[k] = keep + __shfl_xor_sync(0xffffffffu, send, kHalf);
  }
  if constexpr (kHalf > 1) transpose_sum_step<acc_t, kHalf / 2>(values);
}

// Sums kValues values of every lane over the warp (transposing butterfly:
// kValues - 1 shuffles where a sum per value costs 5 each); lane l gets the
// sum of values[l % kValues]. Overwrites `values`.
template <typename acc_t, int kValues>
__device__ __forceinline__ acc_t warp_transpose_sum(acc_t (&values)[kValues]) {
  static_assert(kValues >= 2 && kValues <= 32 &&
                    (kValues & (kValues - 1)) == 0,
                "a power of two from 2 to 32 values");
  transpose_sum_step<acc_t, kValues / 2>(values);
  acc_t sum = values[0];
#pragma unroll
  for (int offset = kValues; offset < 32; offset <<= 1)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum;
}

// Blocks per SM the register allocation must allow: six for float sums
// (what their 34 KB of shared memory at 16 states allows; Vim-S at 224²,
// batch 64, then runs in one wave of 768 blocks on 132 SMs), three for
// double ones (twice the shared memory).
template <typename T>
constexpr int thread_bwd_min_blocks() {
  return sizeof(typename AccumType<T>::type) == 4 ? 6 : 3;
}

template <typename T, int kMaxN, bool kLocalPass>
__global__ void __launch_bounds__(kThreadScanChannels,
                                  thread_bwd_min_blocks<T>())
    selective_scan_bwd_thread_kernel(SelectiveScanParams p) {
  using acc_t = typename AccumType<T>::type;
  using Layout = ThreadBwdLayout<acc_t, kMaxN>;
  constexpr int kTile = kThreadBwdTile;
  constexpr int kChannels = kThreadScanChannels;
  constexpr int kSeqStride = Layout::kSeqStride;
  constexpr int kRowStride = Layout::kRowStride;
  constexpr int kTilesPerChunk = kChunkStateStride / kTile;
  static_assert(kChunkStateStride % kTile == 0,
                "saved states must fall on tile boundaries");
  static_assert(kChannels % kTile == 0, "lanes keep one position of a tile");
  static_assert(2 * kTile <= 32, "a lane receives one B or C gradient sum");
  extern __shared__ __align__(16) unsigned char thread_bwd_shared[];
  acc_t *u_tile = reinterpret_cast<acc_t *>(thread_bwd_shared);
  acc_t *dt_tile = u_tile + Layout::kSeqElements;
  acc_t *dy_tile = dt_tile + Layout::kSeqElements;
  acc_t *dsoftplus_tile = dy_tile + Layout::kSeqElements;
  acc_t *B_tile = dsoftplus_tile + Layout::kSeqElements;
  acc_t *C_tile = B_tile + Layout::kRows * kRowStride;
  acc_t *adjoint_column = C_tile + Layout::kRows * kRowStride;
  acc_t *dA_column = adjoint_column + Layout::kColumnElements;

  // This block: channels [first_channel, first_channel + num_channels) of
  // one segment, batch element blockIdx.y (num_dirs is 1), chunk
  // blockIdx.z (the local pass has no block for the first chunk).
  const int dim = p.dim;
  const int length = p.length;
  const int dstate = p.dstate;
  const int segment = p.channels_per_segment;
  const int tiles_per_segment = (segment + kChannels - 1) / kChannels;
  const int in_segment = (blockIdx.x % tiles_per_segment) * kChannels;
  const int first_channel =
      (blockIdx.x / tiles_per_segment) * segment + in_segment;
  const int num_channels = min(kChannels, segment - in_segment);
  const int batch_index = blockIdx.y;
  const int chunk = blockIdx.z + (kLocalPass ? 1 : 0);
  const int t_begin = chunk * p.backward_chunk_length;
  const int t_end = min(length, t_begin + p.backward_chunk_length);
  const size_t row_length = length;
  // Rows of this block's first channel; channel c of the block is c rows on.
  const size_t row0 = size_t(batch_index) * dim + first_channel;
  const T *u = static_cast<const T *>(p.u) + row0 * row_length;
  const T *delta = static_cast<const T *>(p.delta) + row0 * row_length;
  const T *dout = static_cast<const T *>(p.dout) + row0 * row_length;
  auto group_rows = [&](int num_groups) {
    const int group = first_channel / (dim / num_groups);
    return (size_t(batch_index) * num_groups + group) * dstate * row_length;
  };
  const size_t B_rows = group_rows(p.num_groups_B);
  const size_t C_rows = group_rows(p.num_groups_C);
  const T *B_var = static_cast<const T *>(p.B) + B_rows;
  const T *C_var = static_cast<const T *>(p.C) + C_rows;
  acc_t *dB_var = static_cast<acc_t *>(p.dB) + B_rows;
  acc_t *dC_var = static_cast<acc_t *>(p.dC) + C_rows;
  const acc_t *delta_bias = static_cast<const acc_t *>(p.delta_bias);

  // This thread's channel; threads past the segment alias the block's first
  // channel, compute on zero tiles (which leave every sum unchanged) and
  // store nothing.
  const int tid = threadIdx.x;
  const bool active = tid < num_channels;
  const size_t seq = size_t(first_channel) + (active ? tid : 0);
  const size_t state_row = size_t(batch_index) * dim + seq;
  const acc_t *A = static_cast<const acc_t *>(p.A) + seq * dstate;
  const acc_t D = p.D ? static_cast<const acc_t *>(p.D)[seq] : acc_t(0);
  const acc_t *chunk_states = static_cast<const acc_t *>(p.chunk_states) +
                              state_row * p.num_chunks * dstate;
  constexpr acc_t kLog2e = acc_t(1.4426950408889634);

  // Constant B/C: one row per channel, staged once; columns start at zero.
  for (int i = tid; i < kChannels * kMaxN; i += kChannels) {
    const int c = i / kMaxN, n = i % kMaxN;
    const bool valid = c < num_channels && n < dstate;
    const size_t at = (size_t(first_channel) + c) * dstate + n;
    if (!p.var_B)
      B_tile[c * kRowStride + n] =
          valid ? static_cast<const acc_t *>(p.B)[at] : acc_t(0);
    if (!p.var_C)
      C_tile[c * kRowStride + n] =
          valid ? static_cast<const acc_t *>(p.C)[at] : acc_t(0);
    if (!kLocalPass) {
      adjoint_column[i] = acc_t(0);
      dA_column[i] = acc_t(0);
    }
  }

  // Staging: every lane keeps one position of the tile and takes every
  // (kChannels / kTile)-th channel row (or state).
  const int lane_position = tid % kTile;
  const int first_row = tid / kTile;
  constexpr int kRowStep = kChannels / kTile;
  auto position_of = [&](int t) { return p.reverse ? length - 1 - t : t; };
  // The gate's rows of this block's channels (without a gate: none).
  const T *z =
      p.z ? static_cast<const T *>(p.z) + row0 * row_length : nullptr;
  const T *y_pregate =
      p.z ? static_cast<const T *>(p.y_pregate) + row0 * row_length : nullptr;
  T *dz = p.z ? static_cast<T *>(p.dz) + row0 * row_length : nullptr;
  // Stages the tile of positions [t0, t0 + tile_length): steps, and what
  // `what` names (for kGradients also the softplus derivative). Positions
  // past the tile get zeros, which make them identity steps.
  auto stage = [&](int t0, int tile_length, ThreadBwdStage what) {
    const bool full = what != ThreadBwdStage::kStates;
    const bool with_u = what != ThreadBwdStage::kAdjoint;
    const bool gradients = what == ThreadBwdStage::kGradients;
    const bool valid_position = lane_position < tile_length;
    const int pos = valid_position ? position_of(t0 + lane_position) : 0;
    const bool gated = full && p.z;
    // Groups of channel rows: a group's loads are all issued before any is
    // used (rows past the block's channels load its first row), where one
    // row's loads at a time left the warps waiting on memory.
    constexpr int kRows = kChannels / kRowStep, kGroup = 4;
    static_assert(kRows % kGroup == 0, "whole groups of rows");
#pragma unroll 1
    for (int k0 = 0; k0 < kRows; k0 += kGroup) {
      T raw_u[kGroup], raw_delta[kGroup], raw_dout[kGroup], raw_z[kGroup],
          raw_y[kGroup];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        const int c = first_row + (k0 + j) * kRowStep;
        const size_t at = size_t(c < num_channels ? c : 0) * row_length + pos;
        raw_u[j] = with_u ? u[at] : T(0);
        raw_delta[j] = delta[at];
        raw_dout[j] = full ? dout[at] : T(0);
        raw_z[j] = gated ? z[at] : T(0);
        raw_y[j] = gated && gradients ? y_pregate[at] : T(0);
      }
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        const int c = first_row + (k0 + j) * kRowStep;
        const bool valid = valid_position && c < num_channels;
        const size_t at = size_t(c) * row_length + pos;
        acc_t u_val = acc_t(0), dt = acc_t(0), dy = acc_t(0),
              dsoftplus = acc_t(0);
        if (valid) {
          u_val = to_acc<acc_t>(raw_u[j]);
          const acc_t raw =
              to_acc<acc_t>(raw_delta[j]) +
              (delta_bias ? delta_bias[first_channel + c] : acc_t(0));
          dt = p.delta_softplus ? softplus(raw) : raw;
          if (full) {
            dy = to_acc<acc_t>(raw_dout[j]);
            if (gated) {
              const acc_t z_val = to_acc<acc_t>(raw_z[j]);
              const acc_t sig = acc_t(1) / (acc_t(1) + exp_acc(-z_val));
              if (gradients) {
                const acc_t y_pre = to_acc<acc_t>(raw_y[j]);
                dz[at] = from_acc<T>(dy * y_pre * sig *
                                     (acc_t(1) + z_val * (acc_t(1) - sig)));
              }
              dy *= z_val * sig;
            }
            if (gradients)
              dsoftplus = p.delta_softplus && raw <= acc_t(20)
                              ? acc_t(1) / (acc_t(1) + exp_acc(-raw))
                              : acc_t(1);
          }
        }
        if (with_u) u_tile[c * kSeqStride + lane_position] = u_val;
        dt_tile[c * kSeqStride + lane_position] = dt;
        if (full) dy_tile[c * kSeqStride + lane_position] = dy;
        if (gradients)
          dsoftplus_tile[c * kSeqStride + lane_position] = dsoftplus;
      }
    }
    if ((with_u && p.var_B) || (full && p.var_C)) {
#pragma unroll
      for (int k = 0; k < (kMaxN + kRowStep - 1) / kRowStep; ++k) {
        const int n = first_row + k * kRowStep;
        if (kMaxN % kRowStep != 0 && n >= kMaxN) break;
        const bool valid = valid_position && n < dstate;
        const size_t at = size_t(n) * row_length + pos;
        if (with_u && p.var_B)
          B_tile[lane_position * kRowStride + n] =
              valid ? to_acc<acc_t>(B_var[at]) : acc_t(0);
        if (full && p.var_C)
          C_tile[lane_position * kRowStride + n] =
              valid ? to_acc<acc_t>(C_var[at]) : acc_t(0);
      }
    }
  };

  acc_t *u_row = u_tile + tid * kSeqStride;
  acc_t *dt_row = dt_tile + tid * kSeqStride;
  const acc_t *dy_row = dy_tile + tid * kSeqStride;
  const acc_t *dsoftplus_row = dsoftplus_tile + tid * kSeqStride;
  // Per sequence, chunk k >= 1 keeps its join at k - 1.
  const size_t join_row = state_row * (p.num_backward_chunks - 1);
  // A in base 2, loaded where it is used (kept across the gradient loop it
  // would hold registers there).
  auto load_A2 = [&](acc_t(&A2)[kMaxN]) {
#pragma unroll
    for (int n = 0; n < kMaxN; ++n)
      A2[n] = n < dstate ? A[n] * kLog2e : acc_t(0);
  };

  if constexpr (kLocalPass) {
    // The adjoint alone, from zero at the chunk's end, all states in
    // registers: r_t = a_t (C_t dy_t + r_{t+1}).
    acc_t A2[kMaxN], r[kMaxN];
    load_A2(A2);
#pragma unroll
    for (int n = 0; n < kMaxN; ++n) r[n] = acc_t(0);
    acc_t step_sum = acc_t(0);
    const int num_tiles = (t_end - t_begin + kTile - 1) / kTile;
    for (int tile = num_tiles - 1; tile >= 0; --tile) {
      const int t0 = t_begin + tile * kTile;
      __syncthreads();  // the previous tile has been read
      stage(t0, min(kTile, t_end - t0), ThreadBwdStage::kAdjoint);
      __syncthreads();
      for (int j = kTile - 1; j >= 0; --j) {
        const acc_t dt = dt_row[j];
        const acc_t dy = dy_row[j];
        const acc_t *C_row = C_tile + (p.var_C ? j : tid) * kRowStride;
        step_sum += dt;
#pragma unroll
        for (int n = 0; n < kMaxN; ++n)
          r[n] = exp2_acc(dt * A2[n]) * (C_row[n] * dy + r[n]);
      }
    }
    if (!active) return;
    acc_t *adjoints = static_cast<acc_t *>(p.chunk_adjoints) +
                      (join_row + chunk - 1) * dstate;
#pragma unroll
    for (int n = 0; n < kMaxN; ++n)
      if (n < dstate) adjoints[n] = r[n];
    static_cast<acc_t *>(p.chunk_step_sums)[join_row + chunk - 1] = step_sum;
    return;
  }

  if (active && chunk + 1 < p.num_backward_chunks) {
    // The adjoint entering this chunk: the chunks after it, composed from
    // the last one.
    acc_t A2[kMaxN], r[kMaxN];
    load_A2(A2);
#pragma unroll
    for (int n = 0; n < kMaxN; ++n) r[n] = acc_t(0);
    const acc_t *adjoints = static_cast<const acc_t *>(p.chunk_adjoints);
    const acc_t *step_sums = static_cast<const acc_t *>(p.chunk_step_sums);
    for (int k = p.num_backward_chunks - 1; k > chunk; --k)
      join_chunk(r, A2, step_sums[join_row + k - 1],
                 adjoints + (join_row + k - 1) * dstate, 0, dstate);
    // The thread's own column entries, which it zeroed above.
#pragma unroll
    for (int n = 0; n < kMaxN; ++n) adjoint_column[n * kChannels + tid] = r[n];
  }

  // The state at the start of every tile of the current stretch.
  acc_t tile_starts[kTilesPerChunk][kMaxN];
  // A thread sums a whole chunk: in double, as float sums over thousands of
  // positions that cancel lose digits.
  double dD_part = 0.0, dbias_part = 0.0;

  // Stretches of kChunkStateStride positions, each after a saved state.
  const int first_stretch = t_begin / kChunkStateStride;
  const int last_stretch = (t_end - 1) / kChunkStateStride;
  for (int stretch = last_stretch; stretch >= first_stretch; --stretch) {
    const int stretch_begin = stretch * kChunkStateStride;
    const int stretch_end = min(length, stretch_begin + kChunkStateStride);
    const int num_tiles = (stretch_end - stretch_begin + kTile - 1) / kTile;
    {
      acc_t A2[kMaxN], h[kMaxN];
      load_A2(A2);
#pragma unroll
      for (int n = 0; n < kMaxN; ++n)
        h[n] = stretch > 0 && n < dstate
                   ? chunk_states[size_t(stretch - 1) * dstate + n]
                   : acc_t(0);
      for (int tile = 0; tile < num_tiles; ++tile) {
#pragma unroll
        for (int n = 0; n < kMaxN; ++n) tile_starts[tile][n] = h[n];
        // The last tile's end state is not needed; the tiles before it are
        // full (stretches start on tile boundaries).
        if (tile == num_tiles - 1) break;
        __syncthreads();  // the previous tile has been read
        stage(stretch_begin + tile * kTile, kTile, ThreadBwdStage::kStates);
        __syncthreads();
        for (int j = 0; j < kTile; ++j) {
          const acc_t dt = dt_row[j];
          const acc_t drive = dt * u_row[j];
          const acc_t *B_row = B_tile + (p.var_B ? j : tid) * kRowStride;
#pragma unroll
          for (int n = 0; n < kMaxN; ++n)
            h[n] = exp2_acc(dt * A2[n]) * h[n] + drive * B_row[n];
        }
      }
    }

    for (int tile = num_tiles - 1; tile >= 0; --tile) {
      const int t0 = stretch_begin + tile * kTile;
      const int tile_length = min(kTile, stretch_end - t0);
      __syncthreads();  // the previous tile's outputs have been read out
      stage(t0, tile_length, ThreadBwdStage::kGradients);
      __syncthreads();
      acc_t ddt[kTile], du[kTile];
#pragma unroll
      for (int j = 0; j < kTile; ++j) ddt[j] = du[j] = acc_t(0);
#pragma unroll 1
      for (int n = 0; n < dstate; ++n) {
        const acc_t A_n = A[n];
        const acc_t A2_n = A_n * kLog2e;
        // Forward states of the tile; sums[kTile + j] = dC at position j.
        acc_t decay[kTile], decayed_prev[kTile], sums[2 * kTile];
        acc_t h = tile_starts[tile][n];
#pragma unroll
        for (int j = 0; j < kTile; ++j) {
          const acc_t dt = dt_row[j];
          const acc_t B_val = B_tile[(p.var_B ? j : tid) * kRowStride + n];
          decay[j] = exp2_acc(dt * A2_n);
          decayed_prev[j] = decay[j] * h;
          h = decayed_prev[j] + dt * u_row[j] * B_val;
          sums[kTile + j] = dy_row[j] * h;
        }
        // Adjoint r_t = a_t * g_t, g_t = C_t dy_t + r_{t+1} = dL/dh_t;
        // sums[j] = dB at position j.
        acc_t r = adjoint_column[n * kChannels + tid];
        acc_t dA_part = acc_t(0);
#pragma unroll
        for (int j = kTile - 1; j >= 0; --j) {
          const acc_t dt = dt_row[j];
          const acc_t u_val = u_row[j];
          const acc_t B_val = B_tile[(p.var_B ? j : tid) * kRowStride + n];
          const acc_t C_val = C_tile[(p.var_C ? j : tid) * kRowStride + n];
          const acc_t g = C_val * dy_row[j] + r;
          r = decay[j] * g;
          ddt[j] += g * (decayed_prev[j] * A_n + B_val * u_val);
          du[j] += g * dt * B_val;
          dA_part += g * decayed_prev[j] * dt;
          sums[j] = g * dt * u_val;
        }
        adjoint_column[n * kChannels + tid] = r;
        dA_column[n * kChannels + tid] += dA_part;
        if (active && (!p.var_B || !p.var_C)) {
          // Constant B/C (rare): one atomic per tile, channel and state.
          acc_t dB_part = acc_t(0), dC_part = acc_t(0);
#pragma unroll
          for (int j = 0; j < kTile; ++j) {
            dB_part += sums[j];
            dC_part += sums[kTile + j];
          }
          const size_t at = seq * dstate + n;
          if (!p.var_B) atomicAdd(static_cast<acc_t *>(p.dB) + at, dB_part);
          if (!p.var_C) atomicAdd(static_cast<acc_t *>(p.dC) + at, dC_part);
        }
        if (p.var_B || p.var_C) {
          // Lane l < kTile gets dB at position l, lane kTile + l dC there.
          const acc_t warp_total = warp_transpose_sum<acc_t, 2 * kTile>(sums);
          const int lane = tid & 31;
          const int j = lane % kTile;
          const bool is_B = lane < kTile;
          if (lane < 2 * kTile && j < tile_length &&
              (is_B ? p.var_B : p.var_C)) {
            const size_t at = size_t(n) * row_length + position_of(t0 + j);
            atomicAdd((is_B ? dB_var : dC_var) + at, warp_total);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        // Positions past the tile have zero u, dy and derivative.
        const acc_t dy = dy_row[j];
        const acc_t u_val = u_row[j];
        const acc_t ddelta = ddt[j] * dsoftplus_row[j];
        dD_part += dy * u_val;
        dbias_part += ddelta;
        // Each thread rewrites only its own rows, read back below.
        dt_row[j] = ddelta;
        u_row[j] = du[j] + D * dy;
      }
      __syncthreads();
      const bool valid_position = lane_position < tile_length;
      const int pos = valid_position ? position_of(t0 + lane_position) : 0;
#pragma unroll 4
      for (int k = 0; k < kChannels / kRowStep; ++k) {
        const int c = first_row + k * kRowStep;
        if (!valid_position || c >= num_channels) continue;
        const size_t at = (row0 + c) * row_length + pos;
        static_cast<T *>(p.ddelta)[at] =
            from_acc<T>(dt_tile[c * kSeqStride + lane_position]);
        static_cast<T *>(p.du)[at] =
            from_acc<T>(u_tile[c * kSeqStride + lane_position]);
      }
    }
  }

  if (!active) return;
  const size_t weight_row = seq * dstate;
  for (int n = 0; n < dstate; ++n)
    atomicAdd(static_cast<acc_t *>(p.dA) + weight_row + n,
              dA_column[n * kChannels + tid]);
  if (p.dD) atomicAdd(static_cast<acc_t *>(p.dD) + seq, acc_t(dD_part));
  if (p.ddelta_bias)
    atomicAdd(static_cast<acc_t *>(p.ddelta_bias) + seq, acc_t(dbias_part));
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
          block_exclusive_scan<acc_t, false>(thread_map, chunk_map,
                                             warp_totals, kNThreads / 32);
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
          block_exclusive_scan<acc_t, true>(thread_adjoint, chunk_adjoint,
                                            warp_totals, kNThreads / 32);
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
