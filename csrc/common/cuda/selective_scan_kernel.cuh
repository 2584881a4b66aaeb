// Selective-scan kernels (forward and backward) for the mamba layout and for
// VMamba's fused four-direction cross scan.
//
// For every state n the recurrence h_t = a_t h_{t-1} + b_t is an affine map
// per position, so a stretch of positions is solved by a parallel scan of
// affine maps, and the state after it is carried to the next stretch.
//
// Forward: one block per sequence (batch element, direction, channel), each
// thread owning kNItems consecutive positions of a chunk of
// kNThreads * kNItems, solved by a block scan. It saves the state every
// kChunkStateStride positions; nothing of size L * N is stored.
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
  return kCross ? cross_position(direction, t, p.height, p.width, p.length)
                : t;
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
      pos[i] = !valid[i] ? 0
               : kCross  ? cross_position(view.direction, t, p.height,
                                          p.width, length)
                         : t;
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
