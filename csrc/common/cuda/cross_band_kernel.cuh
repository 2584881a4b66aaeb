// VMamba's four-direction cross scan with one state on maps larger than a
// block's shared memory holds (detection and segmentation maps: 200 x 320
// at 1280 x 800), on the plane kernels, band by band.
//
// Design, and why:
// - Directions 0 and 2 walk the map by rows, so a walk is the chain of its
//   row bands (set_cross_bands: whole rows, at most kCrossPlaneMaxPixels
//   pixels); directions 1 and 3 walk it by columns, the chain of its column
//   bands. Within a band a walk is exactly the plane kernels' walk of a
//   smaller map (BandView), so the plane kernels run each band as one block,
//   with their block scans, shared maps and vector accesses.
// - The recurrence is linear: a band's walk from zero is an affine map of
//   the state entering it. The totals kernels reduce every band (one block
//   each) to that map, cross_band_carry_kernel chains the maps of a
//   walk (a few dozen bands: one thread per walk), and the plane kernels
//   then walk every band from its entering state. The backward pass does
//   the same for the adjoint, against the walk, and recomputes the states
//   from the entering states the forward pass saved: nothing per pixel is
//   saved.
// - The row bands' blocks sum their two directions' out (du) into a float
//   map, band_sum, that the column bands' blocks start from; those add their
//   two directions and D u (D dy) and store out (du) once, in the input
//   type, and sum D's gradient.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cross_plane_kernel.cuh"
#include "cross_scan_params.h"
// AccumType, AffineMap, block_exclusive_scan, compose, exp_acc, softplus
// and to_acc.
#include "selective_scan_kernel.cuh"

namespace mmssm {

// A band of the block's map: row bands (directions 0 and 2) or, with
// kColumns, column bands (1 and 3). Row band blockIdx.y of map blockIdx.x;
// the column bands of a map take consecutive blocks (blockIdx.x = map *
// col_bands + band), so that the blocks running at once read neighbouring
// columns of a row, the other sectors of its cache lines. Pixel q of a band
// is its q-th pixel in row-major order. A column band keeps its pixels in
// column-major slots, so that its walks read consecutive slots, free of
// bank conflicts (in row-major slots, threads 8 rows of 16 columns apart
// hit 8 banks), and walks as a row band of the transposed band.
template <bool kColumns>
struct BandView : PlaneMapIndex {
  static constexpr int kDirections = 2;
  // The column bands' backward takes single accesses even where vector
  // runs would do: at 200 x 320 (1280 x 800) it took 391 us a call against
  // 551 us with vector runs, whose warps' loads, stores and float4 atomics
  // each span 16 rows of a band. Their forward and totals kernels keep
  // vector runs (175 and 118 us there, against 186 and 127 us with single
  // accesses on bands of 20 columns).
  static constexpr bool kCarried = true, kAddsSum = kColumns,
                        kStoresSum = !kColumns, kSumsDD = kColumns,
                        kTransposed = kColumns,
                        kSingleAccessBackward = kColumns;
  int height, width, pixels;
  int band, origin, map_width, entering_stride;

  __device__ explicit BandView(const CrossScanParams &p)
      : PlaneMapIndex(p, kColumns ? blockIdx.x / p.col_bands : blockIdx.x) {
    band = kColumns ? blockIdx.x % p.col_bands : blockIdx.y;
    map_width = p.width;
    if (kColumns) {
      origin = band * p.band_cols;
      height = p.height;
      width = min(p.band_cols, p.width - origin);
    } else {
      const int first_row = band * p.band_rows;
      height = min(p.band_rows, p.height - first_row);
      width = p.width;
      origin = first_row * p.width;
    }
    pixels = height * width;
    entering_stride = p.max_lines;
  }

  __device__ __forceinline__ int offset(int q) const {
    return kColumns ? (q / width) * map_width + origin + q % width
                    : origin + q;
  }

  __device__ __forceinline__ int direction(int j) const {
    return kColumns + 2 * j;
  }

  // The slots of this thread's steps (from step `first`) of direction k.
  __device__ __forceinline__ void walk_slots(
      int k, int first, int (&slot)[kCrossPlaneItems]) const {
    if (kColumns) {
      plane_walk_slots(k - 1, first, width, height, slot);
    } else {
      plane_walk_slots(k, first, height, width, slot);
    }
  }

  // Index of this band of direction k's walk in the per-band buffers.
  __device__ __forceinline__ long long band_index(int k) const {
    return ((batch_index * 4 + k) * dim + channel) * entering_stride + band;
  }

  // The state (adjoint) entering the band in direction k's walk, from
  // chunk_states (line_adjoint).
  template <typename acc_t>
  __device__ __forceinline__ acc_t entering(const void *buffer,
                                            int k) const {
    return static_cast<const acc_t *>(buffer)[band_index(k)];
  }
};

// Step t's map of a band's walk, forward (the state: h -> a h + dt B u) or
// with kAdjoint backward (the adjoint: r -> a r + a C dy), from its step
// size, A, B (C) and u (dy).
template <bool kAdjoint, typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> band_step(acc_t dt, acc_t A,
                                                      acc_t factor,
                                                      acc_t value) {
  const acc_t decay = exp_acc(dt * A);
  return {decay, (kAdjoint ? decay : dt) * factor * value};
}

// The step size of a staged delta, zero past the band.
template <typename acc_t>
__device__ __forceinline__ acc_t band_step_size(const CrossScanParams &p,
                                                acc_t raw_delta, acc_t bias,
                                                bool inside) {
  const acc_t raw = raw_delta + bias;
  return inside ? (p.delta_softplus ? softplus(raw) : raw) : acc_t(0);
}

// Loads this thread's run of kCrossPlaneItems consecutive pixels of a band
// (zeros past it): one vector load, or single loads where the map does not
// allow it.
template <bool kVector, typename T, typename View>
__device__ __forceinline__ void band_load_run(const T *map, const View &view,
                                              T (&values)[kCrossPlaneItems]) {
  if constexpr (kVector) {
    plane_load<true>(map, view, values);
  } else {
    const int first = plane_pass_step<true>(0);
#pragma unroll
    for (int i = 0; i < kCrossPlaneItems; ++i) {
      const int q = first + i;
      values[i] = q < view.pixels ? map[view.offset(q)] : T(0);
    }
  }
}

// A row band's map of direction k's walk (kDescending: its pixels are
// composed against memory order, as direction 2's walk and direction 0's
// adjoint run) from each thread's run of pixels, straight from registers.
template <bool kDescending, bool kAdjoint, bool kVector, typename T,
          typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> row_band_total(
    const CrossScanParams &p, const BandView<false> &view, int k,
    const T (&raw_value)[kCrossPlaneItems],
    AffineMap<acc_t> *warp_totals) {
  constexpr int kItems = kCrossPlaneItems;
  const int weight = view.weight(k);
  const acc_t A = static_cast<const acc_t *>(p.A)[weight];
  const acc_t bias = plane_delta_bias<acc_t>(p, weight);
  T raw_delta[kItems], raw_factor[kItems];
  band_load_run<kVector>(
      static_cast<const T *>(p.delta) + view.delta_offset(k), view,
      raw_delta);
  band_load_run<kVector>(static_cast<const T *>(kAdjoint ? p.C : p.B) +
                             view.state_offset(k),
                         view, raw_factor);
  const int first = plane_pass_step<true>(0);
  AffineMap<acc_t> own = identity_map<acc_t>();
#pragma unroll
  for (int s = 0; s < kItems; ++s) {
    const int i = kDescending ? kItems - 1 - s : s;
    const acc_t dt = band_step_size(p, to_acc<acc_t>(raw_delta[i]), bias,
                                    first + i < view.pixels);
    own = compose(own, band_step<kAdjoint>(dt, A, to_acc<acc_t>(raw_factor[i]),
                                           to_acc<acc_t>(raw_value[i])));
  }
  AffineMap<acc_t> total;
  block_exclusive_scan<acc_t, kDescending, true>(own, total, warp_totals,
                                                 blockDim.x >> 5);
  return total;
}

// Reduces each row band's walk in directions 0 and 2 to the affine map
// from the state entering it to the state leaving it (forward), or with
// kAdjoint from the adjoint entering its last step to the adjoint leaving
// its first (backward), into band_totals. A row band's walks run through
// its pixels in memory order or against it, so each thread composes its own
// run of pixels without shared maps.
template <typename T, bool kVector, bool kAdjoint>
__global__ void __launch_bounds__(kCrossPlaneMaxThreads, kCrossPlaneMinBlocks)
    cross_band_row_totals_kernel(CrossScanParams p) {
  using acc_t = typename AccumType<T>::type;
  __shared__ AffineMap<acc_t> warp_totals[kCrossPlaneMaxWarps];
  const BandView<false> view(p);
  T raw_value[kCrossPlaneItems];
  band_load_run<kVector>(
      static_cast<const T *>(kAdjoint ? p.dout : p.u) + view.map_offset(),
      view, raw_value);
  auto *totals = static_cast<AffineMap<acc_t> *>(p.band_totals);
  const AffineMap<acc_t> forwards =
      row_band_total<kAdjoint, kAdjoint, kVector, T, acc_t>(
          p, view, 0, raw_value, warp_totals);
  if (threadIdx.x == 0) totals[view.band_index(0)] = forwards;
  const AffineMap<acc_t> backwards =
      row_band_total<!kAdjoint, kAdjoint, kVector, T, acc_t>(
          p, view, 2, raw_value, warp_totals);
  if (threadIdx.x == 0) totals[view.band_index(2)] = backwards;
}

// The same for the column bands (directions 1 and 3), whose walks run down
// the columns: through shared maps of u (dy), the step sizes and B (C), in
// the column-major slots of BandView<true>.
template <typename T, bool kVector, bool kAdjoint>
__global__ void __launch_bounds__(kCrossPlaneMaxThreads, kCrossPlaneMinBlocks)
    cross_band_column_totals_kernel(CrossScanParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kItems = kCrossPlaneItems;
  __shared__ AffineMap<acc_t> warp_totals[kCrossPlaneMaxWarps];
  extern __shared__ __align__(16) unsigned char cross_band_totals_shared[];
  const BandView<true> view(p);
  const int num_warps = blockDim.x >> 5;
  const int slots = plane_slots(plane_cover(blockDim.x));
  acc_t *value_map = reinterpret_cast<acc_t *>(cross_band_totals_shared);
  acc_t *dt_map = value_map + slots, *factor_map = dt_map + slots;

  {
    T raw[kItems];
    plane_load<kVector>(
        static_cast<const T *>(kAdjoint ? p.dout : p.u) + view.map_offset(),
        view, raw);
    plane_for_each_step<kVector>(view, [&](int i, int, int slot) {
      value_map[slot] = to_acc<acc_t>(raw[i]);
    });
  }
  for (int j = 0; j < 2; ++j) {
    const int k = view.direction(j);
    const int weight = view.weight(k);
    const acc_t A = static_cast<const acc_t *>(p.A)[weight];
    const acc_t bias = plane_delta_bias<acc_t>(p, weight);
    // Every thread has read the previous direction's maps.
    __syncthreads();
    {
      T raw_delta[kItems], raw_factor[kItems];
      plane_load<kVector>(static_cast<const T *>(p.delta) +
                              view.delta_offset(k),
                          view, raw_delta);
      plane_load<kVector>(static_cast<const T *>(kAdjoint ? p.C : p.B) +
                              view.state_offset(k),
                          view, raw_factor);
      plane_for_each_step<kVector>(view, [&](int i, int q, int slot) {
        dt_map[slot] = band_step_size(p, to_acc<acc_t>(raw_delta[i]), bias,
                                      q < view.pixels);
        factor_map[slot] = to_acc<acc_t>(raw_factor[i]);
      });
    }
    __syncthreads();
    int slot[kItems];
    view.walk_slots(k, threadIdx.x * kItems, slot);
    AffineMap<acc_t> own = identity_map<acc_t>();
#pragma unroll
    for (int s = 0; s < kItems; ++s) {
      // The adjoint composes the steps from the last.
      const int i = kAdjoint ? kItems - 1 - s : s;
      own = compose(own, band_step<kAdjoint>(dt_map[slot[i]], A,
                                             factor_map[slot[i]],
                                             value_map[slot[i]]));
    }
    AffineMap<acc_t> total;
    block_exclusive_scan<acc_t, kAdjoint, true>(own, total, warp_totals,
                                                num_warps);
    if (threadIdx.x == 0)
      static_cast<AffineMap<acc_t> *>(p.band_totals)[view.band_index(k)] =
          total;
  }
}

// Chains the band maps of each walk (one thread per batch element,
// direction and channel): the state entering each band into chunk_states,
// or with kAdjoint, against the walk, the adjoint entering each band into
// line_adjoint.
template <typename acc_t, bool kAdjoint>
__global__ void cross_band_carry_kernel(CrossScanParams p) {
  const long long walk =
      static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (walk >= static_cast<long long>(p.batch) * 4 * p.dim) return;
  const int k = static_cast<int>(walk / p.dim % 4);
  const int bands = k & 1 ? p.col_bands : p.row_bands;
  const AffineMap<acc_t> *totals =
      static_cast<const AffineMap<acc_t> *>(p.band_totals) +
      walk * p.max_lines;
  acc_t *entering = static_cast<acc_t *>(kAdjoint ? p.line_adjoint
                                                  : p.chunk_states) +
                    walk * p.max_lines;
  // Directions 2 and 3 walk the bands from the last; the adjoint runs
  // against the walk.
  const bool from_first = (k < 2) != kAdjoint;
  acc_t value = acc_t(0);
  for (int i = 0; i < bands; ++i) {
    const int band = from_first ? i : bands - 1 - i;
    entering[band] = value;
    value = totals[band].a * value + totals[band].b;
  }
}

// Whether the row bands' kernels take vector accesses: as
// cross_plane_vector, and every row band starting 16-byte aligned (its
// first pixel, band_rows * width times its index, a multiple of
// kCrossPlaneItems). A row band's walks run through its pixels in memory
// order, so a run may span two rows: maps whose width is not a multiple of
// kCrossPlaneItems (200 x 334 at 1333 x 800: bands of 12 rows, 4008 pixels)
// keep vector rows.
inline bool cross_band_row_vector(const CrossScanParams &p) {
  return cross_plane_vector(p) &&
         p.band_rows * p.width % kCrossPlaneItems == 0 &&
         reinterpret_cast<std::uintptr_t>(p.band_sum) % 16 == 0;
}

// Whether the column bands' kernels take vector accesses: as the row bands,
// and every run of kCrossPlaneItems pixels in one row of the map, starting
// 16-byte aligned (the width and the bands' columns multiples of
// kCrossPlaneItems).
inline bool cross_band_column_vector(const CrossScanParams &p) {
  return cross_band_row_vector(p) && p.width % kCrossPlaneItems == 0 &&
         p.band_cols % kCrossPlaneItems == 0;
}

// The totals kernels of a pass (kAdjoint: backward), each band's map into
// band_totals.
template <typename T, bool kAdjoint>
void cross_band_totals_launch(const CrossScanParams &p, bool row_vector,
                              bool column_vector) {
  using acc_t = typename AccumType<T>::type;
  const unsigned maps = static_cast<unsigned>(p.dim) * p.batch;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto row_kernel =
      row_vector ? cross_band_row_totals_kernel<T, true, kAdjoint>
                 : cross_band_row_totals_kernel<T, false, kAdjoint>;
  row_kernel<<<dim3(maps, p.row_bands),
               cross_plane_threads(p.band_rows * p.width), 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int col_pixels = p.height * p.band_cols;
  const int col_bytes =
      3 * plane_slots(plane_cover(cross_plane_threads(col_pixels))) *
      static_cast<int>(sizeof(acc_t));
  const auto column_kernel =
      column_vector ? cross_band_column_totals_kernel<T, true, kAdjoint>
                    : cross_band_column_totals_kernel<T, false, kAdjoint>;
  cross_plane_allow_shared(p, column_kernel, col_bytes);
  column_kernel<<<dim3(maps * p.col_bands), cross_plane_threads(col_pixels),
                  col_bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void cross_band_launch(const CrossScanParams &p, bool backward) {
  using acc_t = typename AccumType<T>::type;
  const bool row_vector = cross_band_row_vector(p);
  const bool column_vector = cross_band_column_vector(p);
  const unsigned maps = static_cast<unsigned>(p.dim) * p.batch;
  const auto stream = at::cuda::getCurrentCUDAStream();
  constexpr int kCarryThreads = 128;
  const long long walks = static_cast<long long>(p.batch) * 4 * p.dim;
  const dim3 carry_grid(
      static_cast<unsigned>((walks + kCarryThreads - 1) / kCarryThreads));
  if (!backward) {
    cross_band_totals_launch<T, false>(p, row_vector, column_vector);
    cross_band_carry_kernel<acc_t, false>
        <<<carry_grid, kCarryThreads, 0, stream>>>(p);
  } else {
    cross_band_totals_launch<T, true>(p, row_vector, column_vector);
    cross_band_carry_kernel<acc_t, true>
        <<<carry_grid, kCarryThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The row bands first: the column bands start from their band_sum.
  cross_plane_launch_view<T, BandView<false>>(p, backward, row_vector,
                                              dim3(maps, p.row_bands),
                                              p.band_rows * p.width);
  cross_plane_launch_view<T, BandView<true>>(p, backward, column_vector,
                                             dim3(maps * p.col_bands),
                                             p.height * p.band_cols);
}

}  // namespace mmssm
