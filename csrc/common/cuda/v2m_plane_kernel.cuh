// V2M's corner scan with one state (V2M-S*, V2M-B*), one block per
// (batch element, channel) map of up to kCrossPlaneMaxPixels pixels, or per
// band of whole rows of a larger map in the row pass, holding all K
// corners, forward and backward.
//
// For corner k along each line of its walk (h = 0 before the line):
//   dt = delta + delta_bias (softplus of it if asked),
//   h = exp(dt A) h + dt B u,  y_k = C h + D u,
// with B and C per pixel or constant per (corner, channel).
//
// Design, and why:
// - These are the cross scan's plane kernels (cross_plane_kernel.cuh) with
//   a reset at every line's start. A corner's walk over all its lines is
//   one of the cross scan's four walks (rows or columns, forwards or from
//   the last pixel), and a line starts where the step index is a multiple
//   of the line length. Its first step gets the decay 0, so the state
//   entering it is dropped. The block's scan of affine maps over the whole
//   walk then scans every line at once, and the adjoint, which runs through
//   the same decays, stops at line ends too. The thread-per-line kernels of
//   v2m_corner_scan_kernel.cuh walked 56 steps in one dependent chain per
//   thread and staged chunks through tiles; here a thread owns
//   kCrossPlaneItems steps and every global access is a coalesced run.
// - The map is staged once per block: u where the corners share it (the
//   row pass), and the merged output's gradient. Each corner then stages
//   its step sizes, per-pixel B or C, and its own u or dout.
// - Per-corner outputs (and du, ddelta) go through a shared map and are
//   stored as whole runs; merged corners are summed in a shared float map
//   and stored once, so the merged output needs neither atomics nor a
//   zeroed buffer. du, summed over the corners of a shared u the same way,
//   is written once in u's dtype (no float map and cast after). Per-pixel
//   dB and dC (sums over channels) are added with atomics, as in the cross
//   scan; the weights' gradients one atomic per warp.
// - The backward pass recomputes the states with the same block scan, so
//   the forward pass saves nothing.
// - The row pass on larger maps (detection sizes) runs in bands of whole
//   rows. V2M's lines are independent, so a band is walked on its own: no
//   carry between bands as in the cross scan's bands.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "v2m_scan_params.h"
// PlaneMaps, PlaneRun, plane_load/store/atomic_add, plane_for_each_step,
// plane_walk_slots, cross_plane_threads, cross_plane_shared_bytes,
// warp_sum_add, and through selective_scan_kernel.cuh the affine maps and
// their block scan.
#include "cross_plane_kernel.cuh"

namespace mmssm {

// The band of a (batch element, channel) map that a block walks, and where
// its corners' data lie. A band holds whole rows: the whole map (either
// pass) or, for the row pass on maps of more than kCrossPlaneMaxPixels
// pixels, as many rows as that budget holds. Its lines are whole, so it is
// walked on its own. Consecutive blocks take consecutive batch elements of
// a channel, so that blocks running at once add per-pixel dB and dC into
// different maps.
struct V2MPlaneView {
  static constexpr bool kTransposed = false;
  int height, width, pixels;  // the band's
  int map_pixels, origin, dim, corners, channel;
  long long batch_index;

  __device__ explicit V2MPlaneView(const V2MScanParams &p) {
    map_pixels = p.height * p.width;
    dim = p.dim;
    corners = p.corners;
    channel = blockIdx.x / p.batch;
    batch_index = blockIdx.x % p.batch;
    const int first_row = blockIdx.y * p.band_rows;
    height = min(p.band_rows, p.height - first_row);
    width = p.width;
    origin = first_row * p.width;
    pixels = height * width;
  }

  // Offset in the map of the band's pixel q.
  __device__ __forceinline__ int offset(int q) const { return origin + q; }

  // The slots of this thread's steps (from step `first`) of walk `walk`.
  __device__ __forceinline__ void walk_slots(
      int walk, int first, int (&slot)[kCrossPlaneItems]) const {
    plane_walk_slots(walk, first, height, width, slot);
  }

  // Index of corner k's weights of this channel (A, D, delta_bias, B, C).
  __device__ int weight(int k) const { return k * dim + channel; }

  // Offset of corner k's map of this channel in a (batch, K, dim, H, W)
  // tensor: delta, per-corner u, out and their gradients.
  __device__ long long corner_offset(int k) const {
    return ((batch_index * corners + k) * dim + channel) * map_pixels;
  }

  // Offset of the map in a (batch, dim, H, W) tensor: shared u, the merged
  // output and their gradients.
  __device__ long long shared_offset() const {
    return (batch_index * dim + channel) * map_pixels;
  }

  // Offset of corner k's map in per-pixel B, C, dB and dC (one state).
  __device__ long long matrix_offset(int k) const {
    return (batch_index * corners + k) * map_pixels;
  }
};

// Corner k's walk: one of the cross scan's four (plane_walk_slots), along
// columns for the column pass, from the last pixel where it walks its lines
// backwards.
__device__ __forceinline__ int v2m_plane_walk(const V2MScanParams &p,
                                              int k) {
  return (p.axis_col ? 1 : 0) + (((p.backwards_mask >> k) & 1) ? 2 : 0);
}

// Bit i set where this thread's step i starts a line: step t of every walk
// is position t % length of its line.
__device__ __forceinline__ unsigned v2m_plane_line_starts(
    const V2MScanParams &p) {
  const int length = p.axis_col ? p.height : p.width;
  int position = static_cast<int>(threadIdx.x) * kCrossPlaneItems % length;
  unsigned starts = 0;
#pragma unroll
  for (int i = 0; i < kCrossPlaneItems; ++i) {
    starts |= (position == 0 ? 1u : 0u) << i;
    if (++position == length) position = 0;
  }
  return starts;
}

// Corner k's weights of a block's channel, at index `index`: A, D (zero
// without a skip), and constant B and C (zero where they are per pixel).
template <typename acc_t>
struct V2MPlaneWeights {
  int index;
  acc_t A, D, B, C;

  __device__ V2MPlaneWeights(const V2MScanParams &p, int index)
      : index(index) {
    A = static_cast<const acc_t *>(p.A)[index];
    D = p.D ? static_cast<const acc_t *>(p.D)[index] : acc_t(0);
    B = p.var_B ? acc_t(0) : static_cast<const acc_t *>(p.B)[index];
    C = p.var_C ? acc_t(0) : static_cast<const acc_t *>(p.C)[index];
  }
};

// Stages corner k: its step sizes (zero past the map), its per-pixel B and
// C, and, where asked, its own u (per-corner u) and dy (dout of unmerged
// corners). All loads are issued before any is used.
template <typename T, bool kVector, typename acc_t>
__device__ __forceinline__ void v2m_plane_stage(
    const V2MScanParams &p, const V2MPlaneView &view, int k,
    const PlaneMaps<acc_t> &maps, bool stage_u, bool stage_dy) {
  const acc_t bias =
      p.delta_bias ? static_cast<const acc_t *>(p.delta_bias)[view.weight(k)]
                   : acc_t(0);
  T raw_delta[kCrossPlaneItems], raw_B[kCrossPlaneItems],
      raw_C[kCrossPlaneItems], raw_u[kCrossPlaneItems],
      raw_dy[kCrossPlaneItems];
  const long long corner = view.corner_offset(k);
  plane_load<kVector>(static_cast<const T *>(p.delta) + corner, view,
                      raw_delta);
  if (p.var_B)
    plane_load<kVector>(static_cast<const T *>(p.B) + view.matrix_offset(k),
                        view, raw_B);
  if (p.var_C)
    plane_load<kVector>(static_cast<const T *>(p.C) + view.matrix_offset(k),
                        view, raw_C);
  if (stage_u)
    plane_load<kVector>(static_cast<const T *>(p.u) + corner, view, raw_u);
  if (stage_dy)
    plane_load<kVector>(static_cast<const T *>(p.dout) + corner, view,
                        raw_dy);
  plane_for_each_step<kVector>(view, [&](int i, int q, int slot) {
    const acc_t raw = to_acc<acc_t>(raw_delta[i]) + bias;
    const acc_t dt = p.delta_softplus ? softplus(raw) : raw;
    maps.dt[slot] = q < view.pixels ? dt : acc_t(0);
    if (p.var_B) maps.B[slot] = to_acc<acc_t>(raw_B[i]);
    if (p.var_C) maps.C[slot] = to_acc<acc_t>(raw_C[i]);
    if (stage_u) maps.u[slot] = to_acc<acc_t>(raw_u[i]);
    if (stage_dy) maps.dy[slot] = to_acc<acc_t>(raw_dy[i]);
  });
}

// Stages a map shared by the corners (u, or the merged dout in the
// accumulation type) into `target`.
template <bool kVector, typename Elem, typename acc_t>
__device__ __forceinline__ void v2m_plane_stage_shared(
    const Elem *source, const V2MPlaneView &view, acc_t *target) {
  Elem raw[kCrossPlaneItems];
  plane_load<kVector>(source + view.shared_offset(), view, raw);
  plane_for_each_step<kVector>(view, [&](int i, int, int slot) {
    target[slot] = to_acc<acc_t>(raw[i]);
  });
}

// Stores a shared map (acc_t) as Elem into `target`, the pixels of the
// band.
template <bool kVector, typename Elem, typename acc_t>
__device__ __forceinline__ void v2m_plane_store(const acc_t *map,
                                                const V2MPlaneView &view,
                                                Elem *target) {
  Elem values[kCrossPlaneItems];
  plane_for_each_step<kVector>(view, [&](int i, int, int slot) {
    values[i] = from_acc<Elem>(map[slot]);
  });
  plane_store<kVector>(target, view, values);
}

// Corner k's steps of this thread: their slots, decays (0 at a line's
// start) and drives dt B u, and the affine map of all of them.
template <typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> v2m_plane_steps(
    const V2MScanParams &p, const V2MPlaneView &view,
    const PlaneMaps<acc_t> &maps, int k, const V2MPlaneWeights<acc_t> &w,
    unsigned starts, int (&slot)[kCrossPlaneItems],
    acc_t (&decay)[kCrossPlaneItems], acc_t (&drive)[kCrossPlaneItems]) {
  view.walk_slots(v2m_plane_walk(p, k), threadIdx.x * kCrossPlaneItems,
                  slot);
  AffineMap<acc_t> own = identity_map<acc_t>();
#pragma unroll
  for (int i = 0; i < kCrossPlaneItems; ++i) {
    const acc_t dt = maps.dt[slot[i]];
    const acc_t B = p.var_B ? maps.B[slot[i]] : w.B;
    decay[i] = (starts >> i) & 1 ? acc_t(0) : exp_acc(dt * w.A);
    drive[i] = dt * B * maps.u[slot[i]];
    own = compose(own, {decay[i], drive[i]});
  }
  return own;
}

// Sets the band geometry of a plane pass: the whole map where it has at
// most kCrossPlaneMaxPixels pixels, else (the row pass) as many whole rows
// per band as that budget holds.
inline void set_v2m_bands(V2MScanParams &p) {
  p.band_rows = p.height * p.width <= kCrossPlaneMaxPixels
                    ? p.height
                    : kCrossPlaneMaxPixels / p.width;
  p.bands = (p.height + p.band_rows - 1) / p.band_rows;
}

// Whether the passes take vector accesses (plane_pass_step): every run of
// kCrossPlaneItems pixels of a band lies in consecutive, 16-byte aligned
// pixels of the map (the map and its bands of a multiple of
// kCrossPlaneItems pixels; a run may span two rows, whose line starts
// v2m_plane_line_starts marks), and every per-pixel tensor is 16-byte
// aligned. The row pass at 1333 x 800 (200 x 334: bands of 12 rows, 4008
// pixels) thus takes vector runs.
inline bool v2m_plane_vector(const V2MScanParams &p) {
  // A band starts every band_rows rows (the whole map is one band).
  if (p.height * p.width % kCrossPlaneItems != 0 ||
      p.band_rows * p.width % kCrossPlaneItems != 0)
    return false;
  for (const void *tensor :
       {p.u, p.delta, p.var_B ? p.B : nullptr, p.var_C ? p.C : nullptr,
        p.dout, static_cast<const void *>(p.out),
        static_cast<const void *>(p.du), static_cast<const void *>(p.ddelta),
        static_cast<const void *>(p.var_B ? p.dB : nullptr),
        static_cast<const void *>(p.var_C ? p.dC : nullptr)}) {
    if (reinterpret_cast<std::uintptr_t>(tensor) % 16 != 0) return false;
  }
  return true;
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kCrossPlaneMaxThreads, kCrossPlaneMinBlocks)
    v2m_plane_fwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kItems = kCrossPlaneItems;
  __shared__ AffineMap<acc_t> warp_totals[kCrossPlaneMaxWarps];
  extern __shared__ __align__(16) unsigned char v2m_plane_fwd_shared[];
  const V2MPlaneView view(p);
  const int num_warps = blockDim.x >> 5;
  const PlaneMaps<acc_t> maps(v2m_plane_fwd_shared);
  // The corners' outputs: their sum where they merge, else one at a time.
  acc_t *out_map = maps.sum;
  if (p.shared_u)
    v2m_plane_stage_shared<kVector>(static_cast<const T *>(p.u), view,
                                    maps.u);
  if (p.merge_corners) {
    plane_for_each_step<kVector>(
        view, [&](int, int, int slot) { out_map[slot] = acc_t(0); });
  }
  const unsigned starts = v2m_plane_line_starts(p);
  int slot[kItems];
  for (int k = 0; k < p.corners; ++k) {
    const V2MPlaneWeights<acc_t> w(p, view.weight(k));
    // Every thread has read the previous corner's maps (and stored its
    // output).
    __syncthreads();
    v2m_plane_stage<T, kVector>(p, view, k, maps, !p.shared_u, false);
    __syncthreads();
    acc_t decay[kItems], drive[kItems];
    const AffineMap<acc_t> own =
        v2m_plane_steps(p, view, maps, k, w, starts, slot, decay, drive);
    const AffineMap<acc_t> before =
        block_exclusive_scan<acc_t, false>(own, warp_totals, num_warps);
    acc_t h = before.b;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      h = decay[i] * h + drive[i];
      const acc_t C = p.var_C ? maps.C[slot[i]] : w.C;
      const acc_t y = C * h + w.D * maps.u[slot[i]];
      if (p.merge_corners) {
        out_map[slot[i]] += y;
      } else {
        out_map[slot[i]] = y;
      }
    }
    if (!p.merge_corners) {
      __syncthreads();
      v2m_plane_store<kVector>(
          out_map, view, static_cast<T *>(p.out) + view.corner_offset(k));
    }
  }
  if (p.merge_corners) {
    __syncthreads();
    v2m_plane_store<kVector>(
        out_map, view, static_cast<acc_t *>(p.out) + view.shared_offset());
  }
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kCrossPlaneMaxThreads, kCrossPlaneMinBlocks)
    v2m_plane_bwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kItems = kCrossPlaneItems;
  __shared__ AffineMap<acc_t> warp_totals[kCrossPlaneMaxWarps];
  extern __shared__ __align__(16) unsigned char v2m_plane_bwd_shared[];
  const V2MPlaneView view(p);
  const int num_warps = blockDim.x >> 5;
  const PlaneMaps<acc_t> maps(v2m_plane_bwd_shared);
  // du: the sum over corners where they share u, else one corner's.
  acc_t *du_map = maps.sum;
  if (p.shared_u) {
    v2m_plane_stage_shared<kVector>(static_cast<const T *>(p.u), view,
                                    maps.u);
    plane_for_each_step<kVector>(
        view, [&](int, int, int slot) { du_map[slot] = acc_t(0); });
  }
  if (p.merge_corners)
    v2m_plane_stage_shared<kVector>(static_cast<const acc_t *>(p.dout), view,
                                    maps.dy);
  const unsigned starts = v2m_plane_line_starts(p);
  int slot[kItems];
  for (int k = 0; k < p.corners; ++k) {
    const V2MPlaneWeights<acc_t> w(p, view.weight(k));
    __syncthreads();
    v2m_plane_stage<T, kVector>(p, view, k, maps, !p.shared_u,
                                !p.merge_corners);
    __syncthreads();
    // decayed_prev holds the drives until the states are known, then the
    // state before each step times its decay.
    acc_t decay[kItems], decayed_prev[kItems];
    const AffineMap<acc_t> own = v2m_plane_steps(
        p, view, maps, k, w, starts, slot, decay, decayed_prev);
    const AffineMap<acc_t> before =
        block_exclusive_scan<acc_t, false>(own, warp_totals, num_warps);
    plane_decayed_states(before.b, decay, decayed_prev);
    // Adjoint r_t = a_t g_t, g_t = C_t dy_t + r_{t+1} = dL/dh_t: zero after
    // a line's last step, as the next line's first decay is 0.
    AffineMap<acc_t> own_adjoint = identity_map<acc_t>();
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const acc_t C = p.var_C ? maps.C[slot[i]] : w.C;
      own_adjoint =
          compose(own_adjoint, {decay[i], decay[i] * C * maps.dy[slot[i]]});
    }
    const AffineMap<acc_t> after = block_exclusive_scan<acc_t, true>(
        own_adjoint, warp_totals, num_warps);
    acc_t r = after.b;
    acc_t dA_part = acc_t(0), dbias_part = acc_t(0), dD_part = acc_t(0);
    acc_t dB_part = acc_t(0), dC_part = acc_t(0);
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int at = slot[i];
      const acc_t dt = maps.dt[at];
      const acc_t u_val = maps.u[at];
      const acc_t B = p.var_B ? maps.B[at] : w.B;
      const acc_t C = p.var_C ? maps.C[at] : w.C;
      const acc_t dy = maps.dy[at];
      const acc_t g = C * dy + r;
      // Recomputing the decay costs less than holding it in registers
      // through the block scan above.
      r = (starts >> i) & 1 ? acc_t(0) : exp_acc(dt * w.A) * g;
      const acc_t prev = decayed_prev[i];
      const acc_t state = prev + dt * B * u_val;
      const acc_t ddt = g * (w.A * prev + B * u_val);
      // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)).
      const acc_t ddelta = p.delta_softplus ? -expm1_acc(-dt) * ddt : ddt;
      dA_part += g * dt * prev;
      dbias_part += ddelta;
      dD_part += dy * u_val;
      const acc_t du = g * dt * B + w.D * dy;
      if (p.shared_u) {
        du_map[at] += du;
      } else {
        du_map[at] = du;
      }
      // Only this thread reads or writes these slots for this corner.
      maps.dt[at] = ddelta;
      if (p.var_B) {
        maps.B[at] = g * dt * u_val;
      } else {
        dB_part += g * dt * u_val;
      }
      if (p.var_C) {
        maps.C[at] = dy * state;
      } else {
        dC_part += dy * state;
      }
    }
    warp_sum_add(static_cast<acc_t *>(p.dA) + w.index, dA_part);
    if (p.ddelta_bias)
      warp_sum_add(static_cast<acc_t *>(p.ddelta_bias) + w.index, dbias_part);
    if (p.dD) warp_sum_add(static_cast<acc_t *>(p.dD) + w.index, dD_part);
    if (!p.var_B) warp_sum_add(static_cast<acc_t *>(p.dB) + w.index, dB_part);
    if (!p.var_C) warp_sum_add(static_cast<acc_t *>(p.dC) + w.index, dC_part);
    // The stores below read slots that other threads wrote.
    __syncthreads();
    v2m_plane_store<kVector>(
        maps.dt, view, static_cast<T *>(p.ddelta) + view.corner_offset(k));
    if (!p.shared_u) {
      v2m_plane_store<kVector>(
          du_map, view, static_cast<T *>(p.du) + view.corner_offset(k));
    }
    acc_t values[kItems];
    if (p.var_B) {
      plane_for_each_step<kVector>(
          view, [&](int i, int, int slot) { values[i] = maps.B[slot]; });
      plane_atomic_add<kVector>(
          static_cast<acc_t *>(p.dB) + view.matrix_offset(k), view, values);
    }
    if (p.var_C) {
      plane_for_each_step<kVector>(
          view, [&](int i, int, int slot) { values[i] = maps.C[slot]; });
      plane_atomic_add<kVector>(
          static_cast<acc_t *>(p.dC) + view.matrix_offset(k), view, values);
    }
  }
  if (p.shared_u) {
    __syncthreads();
    v2m_plane_store<kVector>(
        du_map, view, static_cast<T *>(p.du) + view.shared_offset());
  }
}

// Whether a pass runs on the plane kernels: one state, no gate, and a map
// of at most kCrossPlaneMaxPixels pixels, or for the row pass rows of at
// most that many, whose shared maps fit the GPU. (Column bands, walked in
// column-major slots as the cross scan's, were measured on V2M-S*'s column
// pass at 200 x 320 to 200 x 344: 0.85-1.09x the thread-per-line kernels in
// forward + backward, so the column pass keeps those on larger maps.)
template <typename T>
bool v2m_uses_planes(const V2MScanParams &p, int shared_bytes_allowed) {
  using acc_t = typename AccumType<T>::type;
  const int pixels = p.height * p.width;
  const bool fits = pixels <= kCrossPlaneMaxPixels ||
                    (!p.axis_col && p.width <= kCrossPlaneMaxPixels);
  return p.dstate == 1 && p.z == nullptr && fits &&
         cross_plane_shared_bytes<acc_t>(
             std::min(pixels, kCrossPlaneMaxPixels), true) <=
             shared_bytes_allowed;
}

template <typename T>
void v2m_plane_launch(const V2MScanParams &params, bool backward) {
  using acc_t = typename AccumType<T>::type;
  V2MScanParams p = params;
  set_v2m_bands(p);
  const int band_pixels = p.band_rows * p.width;
  const dim3 grid(static_cast<unsigned>(p.batch) * p.dim, p.bands);
  const dim3 block(cross_plane_threads(band_pixels));
  const int bytes = cross_plane_shared_bytes<acc_t>(band_pixels, backward);
  const int allowed = static_cast<int>(
      at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  TORCH_CHECK(p.dstate == 1 && p.z == nullptr && !(p.axis_col && p.bands > 1) &&
                  band_pixels <= kCrossPlaneMaxPixels && bytes <= allowed,
              "v2m corner scan: the plane kernels take one state, no gate "
              "and bands of whole rows of at most ", kCrossPlaneMaxPixels,
              " pixels (whole maps for the column pass) within ", allowed,
              " bytes of shared memory; got N = ", p.dstate,
              p.z ? ", a gate" : "", " and a ", p.height, " x ", p.width,
              p.axis_col ? " column pass" : " row pass", " needing ", bytes,
              " bytes");
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    kernel<<<grid, block, bytes, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (backward) {
    launch(v2m_plane_vector(p) ? v2m_plane_bwd_kernel<T, true>
                               : v2m_plane_bwd_kernel<T, false>);
  } else {
    launch(v2m_plane_vector(p) ? v2m_plane_fwd_kernel<T, true>
                               : v2m_plane_fwd_kernel<T, false>);
  }
}

}  // namespace mmssm
