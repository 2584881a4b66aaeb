// VMamba's four-direction cross scan with one state (every VMamba v2
// model) on maps of up to kCrossPlaneMaxPixels pixels, one block per
// (batch element, channel) map, forward and backward.
//
// For direction k, channel d, along the walk of direction k:
//   dt = delta + delta_bias (softplus of it if asked),
//   h = exp(dt A) h + dt B u,  y_k = C h + D u,  out = y_0 + ... + y_3.
//
// Design, and why:
// - A block holds its whole map in shared memory (u, and per direction the
//   step sizes, B and C), staged along the rows: a thread loads a run of
//   kCrossPlaneItems consecutive pixels with one vector load where the
//   map's size and alignment allow, else single coalesced loads. Each
//   thread then owns kCrossPlaneItems consecutive steps of a direction's
//   walk, reads them from shared memory in that direction's order (rows or
//   columns, forwards or backwards: direction by indexing, nothing
//   transposed in memory), and a block scan of affine maps joins the
//   threads. The whole walk of 3136 steps (56 x 56) is thus one block scan,
//   without the line-carry passes and saved states of the tiled kernels.
// - The four outputs are summed in a shared float map that each direction's
//   owners add to between barriers, then stored once: no atomics and no
//   (B, 4, D, H * W) copy. The backward pass sums du the same way and
//   writes ddelta, dB and dC through shared memory, as the loads (dB and
//   dC with atomics, float4 ones on sm_90: every channel of a batch
//   element adds into them).
// - Steps past the map keep zeros in shared memory, so no step of a walk
//   needs a branch (plane_cover).
// - The backward pass recomputes the states with the same block scan, so
//   the forward pass saves nothing.
// - The kernels see their map through a view (PlaneView here): larger maps
//   run them band by band, from carried states (cross_band_kernel.cuh).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <type_traits>

#include "cross_scan_params.h"
// AccumType, AffineMap, block_exclusive_scan, compose, exp_acc,
// expm1_acc, softplus, to_acc, from_acc and warp_sum.
#include "selective_scan_kernel.cuh"

namespace mmssm {

constexpr int kCrossPlaneMaxWarps = kCrossPlaneMaxThreads / 32;
static_assert(kCrossPlaneMaxThreads * kCrossPlaneItems >=
                  kCrossPlaneMaxPixels,
              "a block's threads must cover the largest map");

// Shared-memory slot of a pixel: one padding slot per 32 pixels, so that
// the column walks (threads kCrossPlaneItems rows apart) spread over banks.
__device__ __forceinline__ int plane_slot(int pixel) {
  return pixel + (pixel >> 5);
}

// Slots of one shared map of `pixels` pixels.
__host__ __device__ constexpr int plane_slots(int pixels) {
  return pixels + (pixels >> 5) + 1;
}

// Threads of a block for a map of `pixels` pixels: whole warps, each
// thread owning up to kCrossPlaneItems steps of a walk.
inline int cross_plane_threads(int pixels) {
  const int owners = (pixels + kCrossPlaneItems - 1) / kCrossPlaneItems;
  return (owners + 31) / 32 * 32;
}

// Steps a block of `threads` threads covers: kCrossPlaneItems each, at
// least the map's pixels. Steps t past the map (pixels <= t < cover) keep
// zeros at slot plane_slot(t) of every map, so that they pass a walk's
// state on unchanged, and each belongs to one thread: every step of a walk,
// those included, has a slot of its own, and no step needs a branch.
__host__ __device__ constexpr int plane_cover(int threads) {
  return threads * kCrossPlaneItems;
}

// The slots of this thread's steps of direction k's walk: rows for even k,
// columns for odd k, from the last pixel for k >= 2 (the order of
// cross_position), without a division per step.
__device__ __forceinline__ void plane_walk_slots(
    int direction, int first, int height, int width,
    int (&slot)[kCrossPlaneItems]) {
  const int pixels = height * width;
  const bool reverse = direction >= 2;
  if (first >= pixels || direction == 0) {
    // Past the map, and along the rows forwards, step t is at slot(t);
    // first is a multiple of kCrossPlaneItems, which divides 32, so the
    // steps share one padding count.
    static_assert(32 % kCrossPlaneItems == 0, "steps must share a padding");
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) slot[i] = plane_slot(first) + i;
    return;
  }
  if (direction == 2) {
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) {
      const int t = first + i;
      slot[i] = plane_slot(t < pixels ? pixels - 1 - t : t);
    }
    return;
  }
  // Column-major index s of the first step, then one row on (or back).
  const int s = reverse ? pixels - 1 - first : first;
  int row = s % height, col = s / height;
#pragma unroll
  for (int i = 0; i < kCrossPlaneItems; ++i) {
    const int t = first + i;
    slot[i] = plane_slot(t < pixels ? row * width + col : t);
    if (reverse) {
      if (--row < 0) {
        row = height - 1;
        --col;
      }
    } else if (++row == height) {
      row = 0;
      ++col;
    }
  }
}

// Adds this thread's value, summed over its warp, into *target: one atomic
// per warp, where a block sum cost two barriers and a serial loop.
template <typename acc_t>
__device__ __forceinline__ void warp_sum_add(acc_t *target, acc_t value) {
  value = warp_sum(value);
  if ((threadIdx.x & 31) == 0) atomicAdd(target, value);
}

// The (batch element, channel) map of a block, whole or in bands. Consecutive
// blocks take consecutive batch elements of a channel: blocks running at
// once then add their dB and dC into different maps, where the channels of
// one batch element all at once contended for the same addresses.
struct PlaneMapIndex {
  int map_pixels, dim, channel;
  long long batch_index;

  // The map of block `block` (blockIdx.x unless the view numbers blocks
  // otherwise).
  __device__ PlaneMapIndex(const CrossScanParams &p, unsigned block) {
    map_pixels = p.height * p.width;
    dim = p.dim;
    channel = block / p.batch;
    batch_index = block % p.batch;
  }

  __device__ explicit PlaneMapIndex(const CrossScanParams &p)
      : PlaneMapIndex(p, blockIdx.x) {}

  // Offset of the map in u, out, dout, du and band_sum.
  __device__ long long map_offset() const {
    return (batch_index * dim + channel) * map_pixels;
  }

  // Index of the channel's weights of direction k in A, D, delta_bias.
  __device__ int weight(int k) const { return k * dim + channel; }

  // Offset of direction k's map of this channel in delta and ddelta.
  __device__ long long delta_offset(int k) const {
    return ((batch_index * 4 + k) * dim + channel) * map_pixels;
  }

  // Offset of direction k's map in B, C, dB and dC (one state).
  __device__ long long state_offset(int k) const {
    return (batch_index * 4 + k) * map_pixels;
  }
};

// A block walking its whole map, in the four directions, from zero states.
// A view gives the walked part's height, width and pixels, offset(q) of its
// pixel q in the map, its directions and the slots of a walk; the flags say
// whether the walks enter with carried states (kCarried), whether the sum
// over directions starts from band_sum (kAddsSum) or ends there
// (kStoresSum) instead of in out (du), whether the block sums D's gradient
// (kSumsDD), whether the shared maps hold the pixels in column-major slots
// (kTransposed), and whether the backward pass takes single accesses where
// vector runs are possible (kSingleAccessBackward).
struct PlaneView : PlaneMapIndex {
  static constexpr int kDirections = 4;
  static constexpr bool kCarried = false, kAddsSum = false,
                        kStoresSum = false, kSumsDD = true,
                        kTransposed = false, kSingleAccessBackward = false;
  int height, width, pixels;

  __device__ explicit PlaneView(const CrossScanParams &p)
      : PlaneMapIndex(p) {
    height = p.height;
    width = p.width;
    pixels = map_pixels;
  }

  __device__ __forceinline__ int offset(int q) const { return q; }
  __device__ __forceinline__ int direction(int j) const { return j; }

  // The slots of this thread's steps (from step `first`) of direction k.
  __device__ __forceinline__ void walk_slots(
      int k, int first, int (&slot)[kCrossPlaneItems]) const {
    plane_walk_slots(k, first, height, width, slot);
  }
};

// A thread's run of kCrossPlaneItems consecutive elements of a map, read
// or written with vector accesses (16 to 64 bytes, 16-byte aligned).
template <typename T>
struct alignas(16) PlaneRun {
  T values[kCrossPlaneItems];
};

// Passes over a map (staging inputs, storing outputs) give a thread
// kCrossPlaneItems steps q. With kVector, its run of consecutive pixels
// from threadIdx.x * kCrossPlaneItems, read or written with one vector
// access: for maps of a multiple of kCrossPlaneItems pixels whose tensors
// are 16-byte aligned (cross_plane_vector). Else q = threadIdx.x + i *
// blockDim.x, for coalesced single accesses. Either way the block's steps
// cover its cover once.
template <bool kVector>
__device__ __forceinline__ int plane_pass_step(int i) {
  return kVector ? static_cast<int>(threadIdx.x) * kCrossPlaneItems + i
                 : static_cast<int>(threadIdx.x + i * blockDim.x);
}

// Calls visit(i, q, offset, row, col) for step i of this thread's share of
// a single-access pass over a transposed view (q = threadIdx.x + i *
// blockDim.x): the pixel's row and column in the band and its offset in the
// map (meaningless past the band, q >= view.pixels). Stepping row and column
// by blockDim.x costs two divisions a call; dividing q by the band's width
// at every step made the column bands' single-access kernels (widths not a
// multiple of kCrossPlaneItems) spend most of their instructions there.
template <typename View, typename Visit>
__device__ __forceinline__ void transposed_scalar_steps(const View &view,
                                                        Visit visit) {
  const int width = view.width;
  const int threads = static_cast<int>(blockDim.x);
  const int rows_per_step = threads / width;
  const int cols_per_step = threads - rows_per_step * width;
  int row = static_cast<int>(threadIdx.x) / width;
  int col = static_cast<int>(threadIdx.x) - row * width;
#pragma unroll
  for (int i = 0; i < kCrossPlaneItems; ++i) {
    visit(i, plane_pass_step<false>(i),
          row * view.map_width + view.origin + col, row, col);
    row += rows_per_step;
    col += cols_per_step;
    if (col >= width) {
      col -= width;
      ++row;
    }
  }
}

// Calls visit(i, q, slot) for step i of this thread's share of a pass, at
// pixel (or step past the map) q and its shared-memory slot. A run's steps
// share one padding count (see plane_walk_slots). A transposed view keeps
// its pixels in column-major slots (BandView).
template <bool kVector, typename View, typename Visit>
__device__ __forceinline__ void plane_for_each_step(const View &view,
                                                    Visit visit) {
  if constexpr (View::kTransposed && !kVector) {
    transposed_scalar_steps(view, [&](int i, int q, int, int row, int col) {
      visit(i, q,
            plane_slot(q < view.pixels ? col * view.height + row : q));
    });
    return;
  }
  const int first = plane_pass_step<true>(0);
  // A run's row and column, for a transposed view with vector runs.
  const int run_row = View::kTransposed && kVector ? first / view.width : 0;
  const int run_col = first - run_row * view.width;
#pragma unroll
  for (int i = 0; i < kCrossPlaneItems; ++i) {
    const int q = plane_pass_step<kVector>(i);
    int slot;
    if constexpr (!View::kTransposed) {
      slot = kVector ? plane_slot(first) + i : plane_slot(q);
    } else {
      slot = first < view.pixels
                 ? plane_slot((run_col + i) * view.height + run_row)
                 : plane_slot(q);
    }
    visit(i, q, slot);
  }
}

// Loads this thread's elements of a pass over a map, all issued before any
// is used: with one load in flight per thread the staging waited a memory
// latency per pixel. Past the map a thread loads zero.
template <bool kVector, typename T, typename View>
__device__ __forceinline__ void plane_load(const T *map, const View &view,
                                           T (&values)[kCrossPlaneItems]) {
  if constexpr (kVector) {
    // A run lies wholly inside the walked part or wholly past it, and in
    // consecutive pixels of the map (cross_plane_vector).
    const int first = plane_pass_step<true>(0);
    PlaneRun<T> run{};
    if (first < view.pixels)
      run = *reinterpret_cast<const PlaneRun<T> *>(map + view.offset(first));
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) values[i] = run.values[i];
  } else if constexpr (View::kTransposed) {
    transposed_scalar_steps(view, [&](int i, int q, int offset, int, int) {
      values[i] = q < view.pixels ? map[offset] : T(0);
    });
  } else {
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) {
      const int q = plane_pass_step<false>(i);
      values[i] = q < view.pixels ? map[view.offset(q)] : T(0);
    }
  }
}

// Stores this thread's elements of a pass over a map, those in the map.
template <bool kVector, typename T, typename View>
__device__ __forceinline__ void plane_store(
    T *map, const View &view, const T (&values)[kCrossPlaneItems]) {
  if constexpr (kVector) {
    const int first = plane_pass_step<true>(0);
    if (first >= view.pixels) return;
    PlaneRun<T> run;
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) run.values[i] = values[i];
    *reinterpret_cast<PlaneRun<T> *>(map + view.offset(first)) = run;
  } else if constexpr (View::kTransposed) {
    transposed_scalar_steps(view, [&](int i, int q, int offset, int, int) {
      if (q < view.pixels) map[offset] = values[i];
    });
  } else {
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) {
      const int q = plane_pass_step<false>(i);
      if (q < view.pixels) map[view.offset(q)] = values[i];
    }
  }
}

// Adds this thread's elements of a pass into a map (dB, dC: every channel
// of a batch element adds into them), those in the map; a run of floats
// with float4 atomics where the GPU has them (sm_90).
template <bool kVector, typename acc_t, typename View>
__device__ __forceinline__ void plane_atomic_add(
    acc_t *map, const View &view, const acc_t (&values)[kCrossPlaneItems]) {
  constexpr bool kVectorAtomics =
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      kVector && std::is_same_v<acc_t, float>;
#else
      false;
#endif
  if constexpr (kVectorAtomics) {
    const int first = plane_pass_step<true>(0);
    if (first >= view.pixels) return;
    float4 *run = reinterpret_cast<float4 *>(map + view.offset(first));
#pragma unroll
    for (int j = 0; j < kCrossPlaneItems / 4; ++j)
      atomicAdd(run + j, make_float4(values[4 * j], values[4 * j + 1],
                                     values[4 * j + 2], values[4 * j + 3]));
  } else if constexpr (View::kTransposed && !kVector) {
    transposed_scalar_steps(view, [&](int i, int q, int offset, int, int) {
      if (q < view.pixels) atomicAdd(map + offset, values[i]);
    });
  } else {
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) {
      const int q = plane_pass_step<kVector>(i);
      if (q < view.pixels) atomicAdd(map + view.offset(q), values[i]);
    }
  }
}

// Direction k's delta bias of a channel, at index `weight` (zero without
// one).
template <typename acc_t>
__device__ __forceinline__ acc_t plane_delta_bias(const CrossScanParams &p,
                                                  int weight) {
  return p.delta_bias ? static_cast<const acc_t *>(p.delta_bias)[weight]
                      : acc_t(0);
}

// Stages direction k's step sizes, B and C into shared maps.
template <typename T, bool kVector, typename acc_t, typename View>
__device__ __forceinline__ void plane_stage_direction(
    const CrossScanParams &p, const View &view, int k, acc_t *dt_map,
    acc_t *B_map, acc_t *C_map) {
  const T *delta = static_cast<const T *>(p.delta) + view.delta_offset(k);
  const T *B = static_cast<const T *>(p.B) + view.state_offset(k);
  const T *C = static_cast<const T *>(p.C) + view.state_offset(k);
  const acc_t bias = plane_delta_bias<acc_t>(p, view.weight(k));
  T raw_delta[kCrossPlaneItems], raw_B[kCrossPlaneItems],
      raw_C[kCrossPlaneItems];
  plane_load<kVector>(delta, view, raw_delta);
  plane_load<kVector>(B, view, raw_B);
  plane_load<kVector>(C, view, raw_C);
  plane_for_each_step<kVector>(view, [&](int i, int q, int slot) {
    const acc_t raw = to_acc<acc_t>(raw_delta[i]) + bias;
    const acc_t dt = p.delta_softplus ? softplus(raw) : raw;
    dt_map[slot] = q < view.pixels ? dt : acc_t(0);
    B_map[slot] = to_acc<acc_t>(raw_B[i]);
    C_map[slot] = to_acc<acc_t>(raw_C[i]);
  });
}

// Two blocks per SM must fit the registers: the shared memory of a 56 x 56
// map (65 KB forward, 78 KB backward in float) allows two to three.
constexpr int kCrossPlaneMinBlocks = 2;

// The block's shared maps, plane_slots of the block's cover apart: u, the
// step sizes, B, C, the sum over directions (out forward, du backward) and,
// backward only, dy. Backward, the step-size, B and C maps are overwritten
// with ddelta, dB and dC. (mmssm/ops/cuda_ops.py mirrors the backward count
// for its float64 dispatch.)
template <typename acc_t>
struct PlaneMaps {
  static constexpr int kForwardMaps = 5, kBackwardMaps = 6;
  acc_t *u, *dt, *B, *C, *sum, *dy;

  __device__ explicit PlaneMaps(unsigned char *shared) {
    const int slots = plane_slots(plane_cover(blockDim.x));
    u = reinterpret_cast<acc_t *>(shared);
    dt = u + slots;
    B = dt + slots;
    C = B + slots;
    sum = C + slots;
    dy = sum + slots;
  }
};

// Stages direction k, once every thread has read the previous direction's
// maps, and returns the map of this thread's steps of its walk with their
// slots, decays exp(dt A) and drives dt B u (identity steps past the walk,
// whose step sizes and u are zero).
template <typename T, bool kVector, typename acc_t, typename View>
__device__ __forceinline__ AffineMap<acc_t> plane_direction_steps(
    const CrossScanParams &p, const View &view,
    const PlaneMaps<acc_t> &maps, int k, acc_t A,
    int (&slot)[kCrossPlaneItems], acc_t (&decay)[kCrossPlaneItems],
    acc_t (&drive)[kCrossPlaneItems]) {
  __syncthreads();
  plane_stage_direction<T, kVector>(p, view, k, maps.dt, maps.B, maps.C);
  __syncthreads();
  view.walk_slots(k, threadIdx.x * kCrossPlaneItems, slot);
  AffineMap<acc_t> own = identity_map<acc_t>();
#pragma unroll
  for (int i = 0; i < kCrossPlaneItems; ++i) {
    const acc_t dt = maps.dt[slot[i]];
    decay[i] = exp_acc(dt * A);
    drive[i] = dt * maps.B[slot[i]] * maps.u[slot[i]];
    own = compose(own, {decay[i], drive[i]});
  }
  return own;
}

// Replaces the drives of a thread's steps by the state before each step
// times its decay, from the state h entering its first step.
template <typename acc_t>
__device__ __forceinline__ void plane_decayed_states(
    acc_t h, const acc_t (&decay)[kCrossPlaneItems],
    acc_t (&decayed_prev)[kCrossPlaneItems]) {
#pragma unroll
  for (int i = 0; i < kCrossPlaneItems; ++i) {
    const acc_t drive = decayed_prev[i];
    decayed_prev[i] = decay[i] * h;
    h = decayed_prev[i] + drive;
  }
}

// The sum over directions starts from band_sum where the view adds to it
// (the column bands, after the row bands), else from zero.
template <bool kVector, typename acc_t, typename View>
__device__ __forceinline__ void plane_start_sum(const CrossScanParams &p,
                                                const View &view,
                                                acc_t *sum_map) {
  acc_t start[kCrossPlaneItems] = {};
  if constexpr (View::kAddsSum) {
    plane_load<kVector>(
        static_cast<const acc_t *>(p.band_sum) + view.map_offset(), view,
        start);
  }
  plane_for_each_step<kVector>(
      view, [&](int i, int, int slot) { sum_map[slot] = start[i]; });
}

// The sum of D over the four directions (zero without D).
template <typename acc_t>
__device__ __forceinline__ acc_t plane_D_sum(const CrossScanParams &p,
                                             const PlaneMapIndex &view) {
  acc_t D_sum = acc_t(0);
  if (p.D) {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      D_sum += static_cast<const acc_t *>(p.D)[view.weight(k)];
  }
  return D_sum;
}

// Ends a block's sum over directions: the view's part of the sum map, or
// that plus D_sum times `skip` (u forward, dy backward), into `target` (out,
// du), or the sum alone into band_sum where the view stores it there.
template <typename T, bool kVector, typename acc_t, typename View>
__device__ __forceinline__ void plane_store_sum(const CrossScanParams &p,
                                                const View &view,
                                                const acc_t *sum_map,
                                                const acc_t *skip_map,
                                                acc_t D_sum, void *target) {
  __syncthreads();
  if constexpr (View::kStoresSum) {
    acc_t sum[kCrossPlaneItems];
    plane_for_each_step<kVector>(
        view, [&](int i, int, int slot) { sum[i] = sum_map[slot]; });
    plane_store<kVector>(static_cast<acc_t *>(p.band_sum) + view.map_offset(),
                         view, sum);
  } else {
    T values[kCrossPlaneItems];
    plane_for_each_step<kVector>(view, [&](int i, int, int slot) {
      values[i] = from_acc<T>(sum_map[slot] + D_sum * skip_map[slot]);
    });
    plane_store<kVector>(static_cast<T *>(target) + view.map_offset(), view,
                         values);
  }
}

template <typename T, bool kVector, typename View>
__global__ void __launch_bounds__(kCrossPlaneMaxThreads, kCrossPlaneMinBlocks)
    cross_plane_fwd_kernel(CrossScanParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kItems = kCrossPlaneItems;
  __shared__ AffineMap<acc_t> warp_totals[kCrossPlaneMaxWarps];
  extern __shared__ __align__(16) unsigned char cross_plane_fwd_shared[];
  const View view(p);
  const int num_warps = blockDim.x >> 5;
  const PlaneMaps<acc_t> maps(cross_plane_fwd_shared);
  acc_t *u_map = maps.u, *C_map = maps.C, *out_map = maps.sum;

  const T *u = static_cast<const T *>(p.u) + view.map_offset();
  T raw_u[kItems];
  plane_load<kVector>(u, view, raw_u);
  plane_for_each_step<kVector>(view, [&](int i, int, int slot) {
    u_map[slot] = to_acc<acc_t>(raw_u[i]);
  });
  plane_start_sum<kVector>(p, view, out_map);
  int slot[kItems];
  for (int j = 0; j < View::kDirections; ++j) {
    const int k = view.direction(j);
    const acc_t A = static_cast<const acc_t *>(p.A)[view.weight(k)];
    acc_t decay[kItems], drive[kItems];
    const AffineMap<acc_t> own =
        plane_direction_steps<T, kVector>(p, view, maps, k, A, slot, decay,
                                          drive);
    const AffineMap<acc_t> before =
        block_exclusive_scan<acc_t, false>(own, warp_totals, num_warps);
    // The state entering this thread's steps: the walk's state entering
    // the view's part (zero for a whole map) taken through the maps of the
    // threads before.
    acc_t h = before.b;
    if constexpr (View::kCarried)
      h += before.a * view.template entering<acc_t>(p.chunk_states, k);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      h = decay[i] * h + drive[i];
      out_map[slot[i]] += C_map[slot[i]] * h;
    }
  }
  plane_store_sum<T, kVector>(p, view, out_map, u_map,
                              plane_D_sum<acc_t>(p, view), p.out);
}

template <typename T, bool kVector, typename View>
__global__ void __launch_bounds__(kCrossPlaneMaxThreads, kCrossPlaneMinBlocks)
    cross_plane_bwd_kernel(CrossScanParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kItems = kCrossPlaneItems;
  __shared__ AffineMap<acc_t> warp_totals[kCrossPlaneMaxWarps];
  extern __shared__ __align__(16) unsigned char cross_plane_bwd_shared[];
  const View view(p);
  const int num_warps = blockDim.x >> 5;
  const PlaneMaps<acc_t> maps(cross_plane_bwd_shared);
  acc_t *u_map = maps.u, *dt_map = maps.dt, *B_map = maps.B, *C_map = maps.C;
  acc_t *du_map = maps.sum, *dy_map = maps.dy;

  const long long map_offset = view.map_offset();
  const T *u = static_cast<const T *>(p.u) + map_offset;
  const T *dout = static_cast<const T *>(p.dout) + map_offset;
  // D's gradient, the same for every direction: sum of dy * u.
  acc_t dD_part = acc_t(0);
  {
    T raw_u[kItems], raw_dy[kItems];
    plane_load<kVector>(u, view, raw_u);
    plane_load<kVector>(dout, view, raw_dy);
    plane_for_each_step<kVector>(view, [&](int i, int, int slot) {
      const acc_t u_val = to_acc<acc_t>(raw_u[i]);
      const acc_t dy = to_acc<acc_t>(raw_dy[i]);
      u_map[slot] = u_val;
      dy_map[slot] = dy;
      dD_part += dy * u_val;
    });
  }
  plane_start_sum<kVector>(p, view, du_map);
  int slot[kItems];
  for (int j = 0; j < View::kDirections; ++j) {
    const int k = view.direction(j);
    const int weight = view.weight(k);
    const acc_t A = static_cast<const acc_t *>(p.A)[weight];
    // decayed_prev holds the drives until the states are known, then the
    // state before each step times its decay.
    acc_t decay[kItems], decayed_prev[kItems];
    const AffineMap<acc_t> own = plane_direction_steps<T, kVector>(
        p, view, maps, k, A, slot, decay, decayed_prev);
    const AffineMap<acc_t> before =
        block_exclusive_scan<acc_t, false>(own, warp_totals, num_warps);
    acc_t h = before.b;
    if constexpr (View::kCarried)
      h += before.a * view.template entering<acc_t>(p.chunk_states, k);
    plane_decayed_states(h, decay, decayed_prev);
    // Adjoint r_t = a_t g_t, g_t = C_t dy_t + r_{t+1} = dL/dh_t, zero after
    // the walk's last step; a thread's map takes the r entering its last
    // step to the r leaving its first.
    AffineMap<acc_t> own_adjoint = identity_map<acc_t>();
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const acc_t Cdy = C_map[slot[i]] * dy_map[slot[i]];
      own_adjoint = compose(own_adjoint, {decay[i], decay[i] * Cdy});
    }
    const AffineMap<acc_t> after = block_exclusive_scan<acc_t, true>(
        own_adjoint, warp_totals, num_warps);
    acc_t r = after.b;
    if constexpr (View::kCarried)
      r += after.a * view.template entering<acc_t>(p.line_adjoint, k);
    acc_t dA_part = acc_t(0), dbias_part = acc_t(0);
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int at = slot[i];
      const acc_t dt = dt_map[at];
      const acc_t u_val = u_map[at];
      const acc_t B = B_map[at];
      const acc_t dy = dy_map[at];
      const acc_t g = C_map[at] * dy + r;
      // Recomputing the decay costs less than holding it in registers
      // through the block scan above.
      r = exp_acc(dt * A) * g;
      const acc_t prev = decayed_prev[i];
      const acc_t ddt = g * (A * prev + B * u_val);
      // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)).
      const acc_t ddelta = p.delta_softplus ? -expm1_acc(-dt) * ddt : ddt;
      dA_part += g * dt * prev;
      // Steps past a band's pixels carry the adjoint entering it: their
      // zero step sizes would still give the bias a gradient without
      // softplus.
      if (!View::kCarried ||
          static_cast<int>(threadIdx.x) * kItems + i < view.pixels)
        dbias_part += ddelta;
      du_map[at] += g * dt * B;
      // Only this thread reads or writes these slots in this direction.
      dt_map[at] = ddelta;
      B_map[at] = g * dt * u_val;
      C_map[at] = dy * (prev + dt * B * u_val);
    }
    warp_sum_add(static_cast<acc_t *>(p.dA) + weight, dA_part);
    if (p.ddelta_bias)
      warp_sum_add(static_cast<acc_t *>(p.ddelta_bias) + weight, dbias_part);
    // The stores below read slots that other threads wrote.
    __syncthreads();
    T ddelta[kItems];
    acc_t dB[kItems], dC[kItems];
    plane_for_each_step<kVector>(view, [&](int i, int, int slot) {
      ddelta[i] = from_acc<T>(dt_map[slot]);
      dB[i] = B_map[slot];
      dC[i] = C_map[slot];
    });
    plane_store<kVector>(static_cast<T *>(p.ddelta) + view.delta_offset(k),
                         view, ddelta);
    plane_atomic_add<kVector>(
        static_cast<acc_t *>(p.dB) + view.state_offset(k), view, dB);
    plane_atomic_add<kVector>(
        static_cast<acc_t *>(p.dC) + view.state_offset(k), view, dC);
  }
  plane_store_sum<T, kVector>(p, view, du_map, dy_map,
                              plane_D_sum<acc_t>(p, view), p.du);
  if (View::kSumsDD && p.dD) {
    const acc_t dD_warp = warp_sum(dD_part);
    if ((threadIdx.x & 31) == 0) {
      for (int k = 0; k < 4; ++k)
        atomicAdd(static_cast<acc_t *>(p.dD) + view.weight(k), dD_warp);
    }
  }
}

// Shared memory of the plane kernels, in bytes: their maps (PlaneMaps),
// each covering the steps of the block's threads.
template <typename acc_t>
int cross_plane_shared_bytes(int pixels, bool backward) {
  return (backward ? PlaneMaps<acc_t>::kBackwardMaps
                   : PlaneMaps<acc_t>::kForwardMaps) *
         plane_slots(plane_cover(cross_plane_threads(pixels))) *
         static_cast<int>(sizeof(acc_t));
}

// Whether the plane kernels' passes take vector accesses (see
// plane_pass_step): maps of a multiple of kCrossPlaneItems pixels, every
// tensor 16-byte aligned (each map then starts at a multiple of 16 bytes).
inline bool cross_plane_vector(const CrossScanParams &p) {
  if (p.height * p.width % kCrossPlaneItems != 0) return false;
  for (const void *tensor : {p.u, p.delta, p.B, p.C, p.dout,
                             static_cast<const void *>(p.out),
                             static_cast<const void *>(p.du),
                             static_cast<const void *>(p.ddelta),
                             static_cast<const void *>(p.dB),
                             static_cast<const void *>(p.dC)}) {
    if (reinterpret_cast<std::uintptr_t>(tensor) % 16 != 0) return false;
  }
  return true;
}

// Sets a kernel's dynamic shared memory to `bytes`, after checking that the
// GPU allows it for this map.
template <typename Kernel>
void cross_plane_allow_shared(const CrossScanParams &p, Kernel kernel,
                              int bytes) {
  const int limit = static_cast<int>(
      at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  TORCH_CHECK(bytes <= limit, "cross scan: the plane kernels need ", bytes,
              " bytes of shared memory for a ", p.height, " x ", p.width,
              " map of this dtype, and this GPU allows ", limit);
  C10_CUDA_CHECK(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// Runs the plane kernel of a pass over `grid` blocks of View, each with the
// threads for `pixels` pixels (the most a block walks).
template <typename T, typename View>
void cross_plane_launch_view(const CrossScanParams &p, bool backward,
                             bool vector, dim3 grid, int pixels) {
  using acc_t = typename AccumType<T>::type;
  const dim3 block(cross_plane_threads(pixels));
  const int bytes = cross_plane_shared_bytes<acc_t>(pixels, backward);
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel) {
    cross_plane_allow_shared(p, kernel, bytes);
    kernel<<<grid, block, bytes, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (backward) {
    if constexpr (View::kSingleAccessBackward) {
      launch(cross_plane_bwd_kernel<T, false, View>);
    } else {
      launch(vector ? cross_plane_bwd_kernel<T, true, View>
                    : cross_plane_bwd_kernel<T, false, View>);
    }
  } else {
    launch(vector ? cross_plane_fwd_kernel<T, true, View>
                  : cross_plane_fwd_kernel<T, false, View>);
  }
}

template <typename T>
void cross_plane_launch(const CrossScanParams &p, bool backward) {
  // make_cross_params (csrc/pytorch/cross_scan.cpp) has checked the state
  // size and the map size of a plane call.
  cross_plane_launch_view<T, PlaneView>(
      p, backward, cross_plane_vector(p),
      dim3(static_cast<unsigned>(p.dim) * p.batch), p.height * p.width);
}

}  // namespace mmssm
