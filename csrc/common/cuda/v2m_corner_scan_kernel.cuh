// V2M's corner scan (one pass along rows or columns from each of K corners),
// forward and backward, read and written in the spatial layout.
//
// For corner k, channel d and state n, along each line in the corner's walk
// order (h = 0 before the first pixel):
//   dt = delta + delta_bias (softplus of it if asked),
//   h = exp(dt A) h + dt B u,  y = (sum_n C h + D u) * silu(z).
// The walk order is pure indexing (see v2m_scan_params.h): no rotated or
// transposed copy is made.
//
// Design, and why:
// - The lines are short (a row or column of a feature map, 7 to 56 long)
//   and there are many of them, so a thread walks one (channel, line) pair
//   sequentially with all its states: the sum over states needs no shuffle,
//   and a block (one batch element and corner, up to 128 / lines channels of
//   up to 16 lines) holds enough independent lines to fill the GPU.
// - Walking lines thread by thread reads memory in the worst order for one
//   of the two axes (a row pass steps along W inside each thread; with one
//   thread per channel, every warp load touched 32 channel planes). So a
//   block stages one chunk of kV2MChunk positions of all its lines through
//   shared memory: it loads the (lines x positions) box of each channel
//   plane with the threads running along the contiguous axis of the map
//   (positions for rows, lines for columns), computes from shared memory,
//   and writes its outputs back the same way. Every global access is then
//   to whole sectors whatever the axis. Each thread issues its loads in
//   batches before storing any (kV2MStageBatch), so a chunk costs a couple
//   of memory latencies, and staged values are kept in the accumulation
//   type so they are converted once.
// - The kernels are bound by instructions and latency, not by bandwidth
//   (the bytes move in a tenth of their time), so the per-element work is
//   kept small: the staged box always has kV2MChunk columns, so splitting
//   an element index costs shifts, masks and one multiply-high instead of
//   integer divisions; offsets within a plane are 32-bit; tiles hold a
//   chunk in walk order, so the compute loops address step s at a constant
//   offset whichever way a corner walks; the decay is one ex2 instruction
//   in float; the outputs of a chunk share one index split. Per-step
//   values that a thread only needs again in its own tile row (dt u in the
//   forward; dt, the gated dy and the factor of dz in the backward) live
//   there rather than in registers, and __launch_bounds__ keeps 5 forward
//   or 3 backward blocks per SM resident, 8 and 4 in the kernels for one
//   state (a thread's steps are one serial chain, so resident warps are
//   what hides latency).
// - Per-pixel B and C are shared by all channels of a (batch, corner): a
//   block stages them once for its channels, state_group states at a time
//   (tiles for all states at once would not fit).
// - The states of a chunk run state by state (outer loop over states, inner
//   loop over positions, unrolled): per-position partial sums (y, and in the
//   backward ddelta, du) stay in registers while the state carried from one
//   chunk to the next lives in shared memory, so the state count is a
//   runtime value and registers do not grow with it.
// - Backward: the chunks are walked in reverse; for each state the chunk's
//   states are recomputed in registers from the state the forward pass saved
//   at the chunk start (chunk_states, lines innermost so the save and the
//   reload are coalesced), then the adjoint g = C dy + a' g' runs backwards
//   over them. The per-pixel dB and dC (sums over channels) are summed over
//   the block's channels in shared memory first and added to global memory
//   once per block and state: no per-step, per-channel atomics. Gradients of
//   weights are summed per thread in shared memory, then over the block's
//   lines, and added once per block. du and dz are plain stores where u and
//   z belong to one corner, and (coalesced) atomic adds where the corners
//   share them.
// - One state (N = 1: V2M-S*, the V2M pyramid) has its own pair of kernels
//   on the same staging: the carried state, the chunk start and the weight
//   gradient sums stay in registers, and every step is finished where it
//   is computed (the forward writes the gated output, the reverse walk of
//   the backward writes ddelta, du, dz and the per-pixel dB and dC into the
//   thread's tile rows, dB over the step's dout), so no per-step arrays of
//   sums over states are live (61 forward, 128 backward registers in bf16
//   on sm_90 against 89 and 168) and the channel sums of dB and dC share
//   the store pass: three barriers per chunk in both directions. (The
//   general kernels need 2 G + 1 forward and, with per-pixel B or C,
//   G + 2 N + 1 backward for G state groups of N states: 4 and 6 at N = 1
//   before these kernels.)
// - Merged corners (V2M's column pass, whose corners are summed next): the
//   blocks of a pixel's corners add their outputs into one float32 map
//   with atomic adds (four per pixel, from different blocks, so they
//   rarely contend), and read the gradient of that sum in the backward.
//   The (batch, K, dim, H, W) outputs and the sum over them are never
//   written, nor a broadcast copy of the gradient.
// - Threads of a block past the map's last line or channel run the same
//   barriers on zeros; only owned pixels and channels are written.
// - One state without a gate takes the plane kernels instead
//   (v2m_plane_kernel.cuh, params.plane) on maps of up to
//   kCrossPlaneMaxPixels pixels (V2M-S* and V2M-B* at 224²) and, in bands
//   of rows, in the row pass of larger maps; these kernels serve the column
//   pass of larger maps and every other pass.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "v2m_plane_kernel.cuh"
#include "v2m_scan_params.h"
// sigmoid_acc, and through selective_scan_kernel.cuh AccumType,
// softplus, to_acc and from_acc.
#include "wavefront_scan_kernel.cuh"

namespace mmssm {

// What one block owns and what its thread owns within it.
template <typename acc_t>
struct V2MBlock {
  int threads;        // block_channels * block_lines
  int me;             // thread index: local_channel * block_lines + local_line
  int lines, length;  // lines of the map, positions per line
  int line_first, channel_first;
  int lines_here, channels_here;  // lines and channels of the map it owns
  int local_line, local_channel, line, channel;
  bool valid;  // this thread owns a line and a channel of the map
  bool backwards;
  int corner;
  long long corner_index;  // batch * corners + corner
  long long pixels;        // height * width
  // Offsets of the block's first channel's map in a tensor with a map per
  // (corner, channel) (delta, unshared u and z, out and their gradients)
  // and in one with a map per (batch element, channel), shared by the
  // corners (shared u and z, the corner sum).
  long long feature_plane, shared_plane;
  int channel_index;       // corner * dim + channel
  acc_t D, bias;

  __device__ V2MBlock(const V2MScanParams &p) {
    threads = p.block_channels * p.block_lines;
    me = threadIdx.x;
    lines = p.axis_col ? p.width : p.height;
    length = p.axis_col ? p.height : p.width;
    line_first = blockIdx.y * p.block_lines;
    channel_first = blockIdx.x * p.block_channels;
    lines_here = min(p.block_lines, lines - line_first);
    channels_here = min(p.block_channels, p.dim - channel_first);
    local_line = me % p.block_lines;
    local_channel = me / p.block_lines;
    valid = local_line < lines_here && local_channel < channels_here;
    // Threads beyond the map compute on zeros (staged inputs and weights);
    // nothing they compute is stored or summed.
    line = line_first + (local_line < lines_here ? local_line : 0);
    channel = channel_first + (local_channel < channels_here ? local_channel
                                                             : 0);
    corner = blockIdx.z % p.corners;
    backwards = (p.backwards_mask >> corner) & 1;
    corner_index = blockIdx.z;
    pixels = static_cast<long long>(p.height) * p.width;
    feature_plane = (corner_index * p.dim + channel_first) * pixels;
    shared_plane = (corner_index / p.corners * p.dim + channel_first) * pixels;
    channel_index = corner * p.dim + channel;
    D = valid && p.D ? static_cast<const acc_t *>(p.D)[channel_index]
                     : acc_t(0);
    bias = valid && p.delta_bias
               ? static_cast<const acc_t *>(p.delta_bias)[channel_index]
               : acc_t(0);
  }

  // Row-major index within the map of the pixel at `column` of a staged
  // tile and block line `local`: 32-bit, as the launcher checks that a map
  // has fewer than 2^31 pixels.
  __device__ __forceinline__ int pixel(const V2MScanParams &p, int local,
                                       int column, int start) const {
    return p.axis_col ? (start + column) * p.width + line_first + local
                      : (line_first + local) * p.width + start + column;
  }

  __device__ __forceinline__ size_t chunk_state_index(const V2MScanParams &p,
                                                      int chunk,
                                                      int n) const {
    return (((static_cast<size_t>(corner_index) * (p.num_chunks - 1) +
              chunk - 1) * p.dstate + n) * p.dim + channel) * lines + line;
  }
};

// The positions of one chunk: walk positions first .. first + size - 1,
// which lie at spatial positions start .. start + size - 1 of every line.
// Tiles hold a chunk in walk order (column s: walk step s), so that the
// compute loops address step s at a constant offset from the thread's row
// whichever way the corner walks.
struct V2MChunkBox {
  int size;
  int start;
  bool backwards;

  __device__ V2MChunkBox(int chunk, int length, bool backwards_)
      : backwards(backwards_) {
    const int first = chunk * kV2MChunk;
    size = min(kV2MChunk, length - first);
    start = backwards ? length - first - size : first;
  }

  // Tile column (walk step) of spatial column c (0 .. kV2MChunk - 1) of
  // the box. Backwards it is size - 1 - c modulo kV2MChunk: a bijection of
  // 0 .. kV2MChunk - 1 that sends the columns past a short chunk's size to
  // steps past it, which the compute loops never read.
  __device__ __forceinline__ int step(int c) const {
    return backwards ? (size - 1 - c) & (kV2MChunk - 1) : c;
  }
};

// Quotient n / p.block_lines without a division instruction (a runtime
// division costs about twenty instructions, and every staged element
// needs one): p.line_magic = ceil(2^32 / block_lines) makes the high word
// of n * line_magic exact for every n below 2^32 / block_lines, far beyond
// the box indices (below kV2MMaxThreads * kV2MChunk).
__device__ __forceinline__ int v2m_div_lines(int n, const V2MScanParams &p) {
  return p.block_lines == 1
             ? n
             : static_cast<int>(__umulhi(static_cast<unsigned>(n),
                                         p.line_magic));
}

// Element i of a box of planes x block lines x kV2MChunk columns, numbered
// so that consecutive i are consecutive in memory: columns run fastest for
// a row pass (rows are contiguous), lines for a column pass. The box always
// has kV2MChunk columns (those at or past a short last chunk's size are
// skipped by the callers), so its split is the same for every chunk and
// costs shifts, masks and one v2m_div_lines.
struct V2MBoxElement {
  int plane, line, column;

  __device__ __forceinline__ V2MBoxElement(int i, const V2MScanParams &p) {
    static_assert((kV2MChunk & (kV2MChunk - 1)) == 0,
                  "kV2MChunk must be a power of two");
    // i >= 0: unsigned so that / and % by kV2MChunk are a shift and a mask.
    const unsigned index = static_cast<unsigned>(i);
    if (p.axis_col) {
      // rest = plane * kV2MChunk + column
      const unsigned rest = static_cast<unsigned>(v2m_div_lines(i, p));
      line = static_cast<int>(index - rest * p.block_lines);
      plane = static_cast<int>(rest / kV2MChunk);
      column = static_cast<int>(rest % kV2MChunk);
    } else {
      const unsigned rest = index / kV2MChunk;  // plane * block_lines + line
      column = static_cast<int>(index % kV2MChunk);
      plane = v2m_div_lines(static_cast<int>(rest), p);
      line = static_cast<int>(rest) - plane * p.block_lines;
    }
  }

  __device__ __forceinline__ int tile_index(const V2MScanParams &p,
                                            const V2MChunkBox &box) const {
    return (plane * p.block_lines + line) * kV2MTileStride + box.step(column);
  }
};

// Loads per thread and tensor issued before the first of them is stored,
// so that they are in flight together. A thread stages kV2MChunk elements
// of each per-channel tensor per chunk: two batches, each one memory
// latency (a batch of all 16 costs the registers of a block per SM). B and
// C are staged while a chunk's per-step registers are live, and a thread
// has few of their elements (kV2MChunk * state_group / block_channels).
constexpr int kV2MStageBatch = 8;
constexpr int kV2MMatrixStageBatch = 4;

// Stages the chunk box of kTensors tensors of one geometry, `planes` planes
// each (plane j at sources[t] + j * pixels), into tiles[t], row plane *
// block_lines + line; zeros where a plane or a line lies beyond the map. A
// null source is skipped.
template <int kBatch, int kTensors, typename acc_t, typename T>
__device__ __forceinline__ void v2m_stage(
    acc_t *const (&tiles)[kTensors], const T *const (&sources)[kTensors],
    int planes, int valid_planes, const V2MScanParams &p,
    const V2MBlock<acc_t> &block, const V2MChunkBox &box) {
  const int total = planes * p.block_lines * kV2MChunk;
  for (int first = block.me; first < total;
       first += kBatch * block.threads) {
    acc_t values[kBatch][kTensors];
    int slots[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * block.threads;
      slots[b] = -1;
#pragma unroll
      for (int t = 0; t < kTensors; ++t) values[b][t] = acc_t(0);
      if (i < total) {
        const V2MBoxElement e(i, p);
        // Columns past a short chunk get zeros, which nothing reads.
        slots[b] = e.tile_index(p, box);
        if (e.plane < valid_planes && e.line < block.lines_here &&
            e.column < box.size) {
          const long long offset =
              e.plane * block.pixels +
              block.pixel(p, e.line, e.column, box.start);
#pragma unroll
          for (int t = 0; t < kTensors; ++t)
            if (sources[t]) values[b][t] = to_acc<acc_t>(sources[t][offset]);
        }
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (slots[b] < 0) continue;
#pragma unroll
      for (int t = 0; t < kTensors; ++t)
        if (sources[t]) tiles[t][slots[b]] = values[b][t];
    }
  }
}

// Stages the per-pixel B and/or C planes of one state group (`group`
// states from `offset`) of the chunk box into tiles[0] / tiles[1].
template <typename T, typename acc_t>
__device__ __forceinline__ void v2m_stage_matrices(
    acc_t *const (&tiles)[2], long long offset, int group,
    const V2MScanParams &p, const V2MBlock<acc_t> &block,
    const V2MChunkBox &box) {
  if (!p.var_B && !p.var_C) return;
  const T *const sources[2] = {
      p.var_B ? static_cast<const T *>(p.B) + offset : nullptr,
      p.var_C ? static_cast<const T *>(p.C) + offset : nullptr};
  v2m_stage<kV2MMatrixStageBatch>(tiles, sources, p.state_group, group, p,
                                  block, box);
}

// Copies the block's weights (A, and B and C where constant) to shared
// memory, row local_channel, zeros beyond the map's channels.
template <typename acc_t>
__device__ __forceinline__ void v2m_stage_weights(
    acc_t *A, acc_t *B, acc_t *C, const V2MScanParams &p,
    const V2MBlock<acc_t> &block) {
  const int first_weight =
      (block.corner * p.dim + block.channel_first) * p.dstate;
  const int valid = block.channels_here * p.dstate;
  for (int i = block.me; i < p.block_channels * p.dstate;
       i += block.threads) {
    const bool inside = i < valid;
    A[i] = inside ? static_cast<const acc_t *>(p.A)[first_weight + i]
                  : acc_t(0);
    if (!p.var_B)
      B[i] = inside ? static_cast<const acc_t *>(p.B)[first_weight + i]
                    : acc_t(0);
    if (!p.var_C)
      C[i] = inside ? static_cast<const acc_t *>(p.C)[first_weight + i]
                    : acc_t(0);
  }
}

// Calls store(offset, slot) for every pixel of the block's channels and
// lines in the chunk box: offset from the block's first channel plane,
// slot in a staged tile. One index split serves all outputs of a chunk.
template <typename acc_t, typename Store>
__device__ __forceinline__ void v2m_for_each_output(
    const V2MScanParams &p, const V2MBlock<acc_t> &block,
    const V2MChunkBox &box, Store &&store) {
  const int total = block.channels_here * p.block_lines * kV2MChunk;
  for (int i = block.me; i < total; i += block.threads) {
    const V2MBoxElement e(i, p);
    if (e.line >= block.lines_here || e.column >= box.size) continue;
    store(e.plane * block.pixels + block.pixel(p, e.line, e.column, box.start),
          e.tile_index(p, box));
  }
}

// Where a block's outputs go: its own corner's planes in the input type,
// or, where the corners merge, atomic adds into the accumulation-type
// planes of the corner sum (laid out as a shared u).
template <typename T, typename acc_t>
struct V2MOutput {
  T *own = nullptr;
  acc_t *merged = nullptr;

  __device__ V2MOutput(const V2MScanParams &p, long long feature_plane,
                       long long shared_plane) {
    if (p.merge_corners) {
      merged = static_cast<acc_t *>(p.out) + shared_plane;
    } else {
      own = static_cast<T *>(p.out) + feature_plane;
    }
  }

  __device__ __forceinline__ void store(long long offset, acc_t value) const {
    if (merged) {
      atomicAdd(merged + offset, value);
    } else {
      own[offset] = from_acc<T>(value);
    }
  }
};

// Stages the chunk box of the backward's per-channel inputs (u, delta, z
// and dout, in tiles and sources in that order). Where the corners merge,
// sources[3] is null and dout comes from the gradient of the corner sum,
// merged_dout (accumulation type, laid out as a shared u).
template <typename T, typename acc_t>
__device__ __forceinline__ void v2m_stage_backward_inputs(
    acc_t *const (&tiles)[4], const T *const (&sources)[4],
    const acc_t *merged_dout, const V2MScanParams &p,
    const V2MBlock<acc_t> &block, const V2MChunkBox &box) {
  v2m_stage<kV2MStageBatch>(tiles, sources, p.block_channels,
                            block.channels_here, p, block, box);
  if (merged_dout) {
    acc_t *const dout_tile[1] = {tiles[3]};
    const acc_t *const dout_source[1] = {merged_dout};
    v2m_stage<kV2MStageBatch>(dout_tile, dout_source, p.block_channels,
                              block.channels_here, p, block, box);
  }
}

// What a backward block (general or one-state) reads and writes: the
// planes of its channels' u, delta, z and dout, staged into the feature
// tiles in that order (the tiles are overwritten with du, ddelta and dz),
// the offset of its corner's state planes in B, C, dB and dC, staged into
// the matrix tiles, and where ddelta, du and dz go.
template <typename T, typename acc_t>
struct V2MBackwardPlanes {
  acc_t *feature_tiles[4];
  const T *feature_sources[4];
  const acc_t *merged_dout;  // the corner sum's gradient, or null
  acc_t *matrix_tiles[2];
  long long matrix_plane;
  const T *z;  // null without a gate
  T *ddelta;
  acc_t *du, *dz;

  __device__ V2MBackwardPlanes(const V2MScanParams &p,
                              const V2MBlock<acc_t> &block, acc_t *shared,
                              const V2MSharedLayout &layout) {
    const long long u_plane =
        p.shared_u ? block.shared_plane : block.feature_plane;
    const long long z_plane =
        p.shared_z ? block.shared_plane : block.feature_plane;
    z = p.z ? static_cast<const T *>(p.z) + z_plane : nullptr;
    feature_tiles[0] = shared + layout.u;
    feature_tiles[1] = shared + layout.delta;
    feature_tiles[2] = shared + layout.z;
    feature_tiles[3] = shared + layout.dout;
    feature_sources[0] = static_cast<const T *>(p.u) + u_plane;
    feature_sources[1] = static_cast<const T *>(p.delta) + block.feature_plane;
    feature_sources[2] = z;
    feature_sources[3] =
        p.merge_corners ? nullptr
                        : static_cast<const T *>(p.dout) + block.feature_plane;
    merged_dout = p.merge_corners
                      ? static_cast<const acc_t *>(p.dout) + block.shared_plane
                      : nullptr;
    matrix_tiles[0] = shared + layout.B;
    matrix_tiles[1] = shared + layout.C;
    matrix_plane = block.corner_index * p.dstate * block.pixels;
    ddelta = static_cast<T *>(p.ddelta) + block.feature_plane;
    du = static_cast<acc_t *>(p.du) + u_plane;
    dz = z ? static_cast<acc_t *>(p.dz) + z_plane : nullptr;
  }

  // Stages the chunk box of the per-channel inputs.
  __device__ void stage_inputs(const V2MScanParams &p,
                               const V2MBlock<acc_t> &block,
                               const V2MChunkBox &box) const {
    v2m_stage_backward_inputs(feature_tiles, feature_sources, merged_dout, p,
                              block, box);
  }

  // Stores the chunk box's ddelta, du and dz from the feature tiles. Shared
  // u and z collect every corner's gradient: atomic adds.
  __device__ void store_gradients(const V2MScanParams &p,
                                  const V2MBlock<acc_t> &block,
                                  const V2MChunkBox &box) const {
    const acc_t *tile_u = feature_tiles[0], *tile_delta = feature_tiles[1],
                *tile_z = feature_tiles[2];
    v2m_for_each_output(p, block, box, [&](long long offset, int slot) {
      ddelta[offset] = from_acc<T>(tile_delta[slot]);
      if (p.shared_u) {
        atomicAdd(du + offset, tile_u[slot]);
      } else {
        du[offset] = tile_u[slot];
      }
      if (dz) {
        if (p.shared_z) {
          atomicAdd(dz + offset, tile_z[slot]);
        } else {
          dz[offset] = tile_z[slot];
        }
      }
    });
  }
};

// Adds the sums over the block's channels of per-thread tiles (one state's
// dB and dC at every pixel of the chunk box) to that state's planes; a null
// plane is skipped. One index split serves both.
template <typename acc_t>
__device__ __forceinline__ void v2m_add_channel_sums(
    acc_t *dB_plane, const acc_t *dB_tile, acc_t *dC_plane,
    const acc_t *dC_tile, const V2MScanParams &p,
    const V2MBlock<acc_t> &block, const V2MChunkBox &box) {
  const int total = p.block_lines * kV2MChunk;
  for (int i = block.me; i < total; i += block.threads) {
    const V2MBoxElement e(i, p);  // plane 0: a (line, column) pair
    if (e.line >= block.lines_here || e.column >= box.size) continue;
    const int first = e.line * kV2MTileStride + box.step(e.column);
    const int stride = p.block_lines * kV2MTileStride;
    const int pixel = block.pixel(p, e.line, e.column, box.start);
    if (dB_plane) {
      acc_t sum = acc_t(0);
      for (int c = 0; c < block.channels_here; ++c)
        sum += dB_tile[first + c * stride];
      atomicAdd(dB_plane + pixel, sum);
    }
    if (dC_plane) {
      acc_t sum = acc_t(0);
      for (int c = 0; c < block.channels_here; ++c)
        sum += dC_tile[first + c * stride];
      atomicAdd(dC_plane + pixel, sum);
    }
  }
}

// Adds the gradients of the block's weights (A, and B and C where
// constant), held per state and thread in sum_* (entry n * threads + thread),
// summed over the lines of each channel. The caller orders the per-thread
// writes before this with a barrier.
template <typename acc_t>
__device__ __forceinline__ void v2m_add_weight_sums(
    const acc_t *sum_dA, const acc_t *sum_dB, const acc_t *sum_dC,
    const V2MScanParams &p, const V2MBlock<acc_t> &block) {
  const int first_weight =
      (block.corner * p.dim + block.channel_first) * p.dstate;
  // Weight i = c * dstate + n of the block's channels.
  for (int i = block.me; i < block.channels_here * p.dstate;
       i += block.threads) {
    const int first = (i % p.dstate) * block.threads +
                      (i / p.dstate) * p.block_lines;
    acc_t dA = acc_t(0), dB = acc_t(0), dC = acc_t(0);
    for (int l = 0; l < block.lines_here; ++l) {
      dA += sum_dA[first + l];
      if (!p.var_B) dB += sum_dB[first + l];
      if (!p.var_C) dC += sum_dC[first + l];
    }
    atomicAdd(static_cast<acc_t *>(p.dA) + first_weight + i, dA);
    if (!p.var_B)
      atomicAdd(static_cast<acc_t *>(p.dB) + first_weight + i, dB);
    if (!p.var_C)
      atomicAdd(static_cast<acc_t *>(p.dC) + first_weight + i, dC);
  }
}

// The decay exp(dt A) is v2m_decay(dt * A * kV2MDecayScale<acc_t>): in
// float one ex2 instruction, A being scaled once per state and block.
template <typename acc_t>
constexpr acc_t kV2MDecayScale = acc_t(1);
template <>
constexpr float kV2MDecayScale<float> = 1.4426950408889634f;  // log2(e)
__device__ __forceinline__ float v2m_decay(float x) { return exp2f(x); }
__device__ __forceinline__ double v2m_decay(double x) { return exp(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t v2m_step_size(const V2MScanParams &p,
                                               acc_t pre) {
  return p.delta_softplus ? softplus(pre) : pre;
}

// Blocks per SM the register allocation must allow (__launch_bounds__):
// a thread's steps are one serial chain, so the kernels need many resident
// warps to hide latency, more than ptxas leaves without a bound. The
// largest counts without spills for float accumulation (89 and 168
// registers on sm_90); double needs about twice the registers. One state:
// see below.
template <typename T>
struct V2MMinBlocks {
  static constexpr bool kDouble =
      sizeof(typename AccumType<T>::type) == sizeof(double);
  static constexpr int forward = kDouble ? 3 : 5;
  static constexpr int backward = kDouble ? 2 : 3;
  // One state (no per-step arrays of sums over states). Forward: as many
  // blocks as the shared memory of V2M-S*'s passes (56 x 56, gate,
  // per-pixel B or C: 26 KiB a block in float) leaves on an H100, at 61
  // registers (bf16, sm_90) without spills. Backward: 128 registers (a
  // 4-byte spill in bf16 and fp16; 5 blocks would spill 16 bytes), where
  // the shared memory (35 KiB a block for per-pixel B, 44 KiB for C)
  // would allow 6 or 5.
  static constexpr int one_state_forward = kDouble ? 4 : 8;
  static constexpr int one_state_backward = kDouble ? 2 : 4;
};

template <typename T>
__global__ void __launch_bounds__(kV2MMaxThreads, V2MMinBlocks<T>::forward)
    v2m_corner_scan_fwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  extern __shared__ __align__(16) unsigned char v2m_shared[];
  acc_t *shared = reinterpret_cast<acc_t *>(v2m_shared);
  const V2MSharedLayout layout = v2m_shared_layout(p, false);
  const V2MBlock<acc_t> block(p);
  acc_t *tile_u = shared + layout.u;          // u, then dt u
  acc_t *tile_delta = shared + layout.delta;  // delta, then y
  acc_t *tile_z = shared + layout.z;
  acc_t *carry = shared + layout.carry;  // h at the end of the last chunk
  const acc_t *weight_A = shared + layout.A;
  const acc_t *weight_B = shared + layout.B_const;
  const acc_t *weight_C = shared + layout.C_const;
  v2m_stage_weights(shared + layout.A, shared + layout.B_const,
                    shared + layout.C_const, p, block);

  const long long pixels = block.pixels;
  const T *z = p.z ? static_cast<const T *>(p.z) +
                         (p.shared_z ? block.shared_plane : block.feature_plane)
                   : nullptr;
  acc_t *const feature_tiles[3] = {tile_u, tile_delta, tile_z};
  const T *const feature_sources[3] = {
      static_cast<const T *>(p.u) +
          (p.shared_u ? block.shared_plane : block.feature_plane),
      static_cast<const T *>(p.delta) + block.feature_plane, z};
  const long long matrix_plane = block.corner_index * p.dstate * pixels;
  acc_t *const matrix_tiles[2] = {shared + layout.B, shared + layout.C};
  const acc_t *tile_B = matrix_tiles[0];
  const acc_t *tile_C = matrix_tiles[1];
  const V2MOutput<T, acc_t> out(p, block.feature_plane, block.shared_plane);
  const int row = block.me * kV2MTileStride;
  const int weights = block.local_channel * p.dstate;

  for (int chunk = 0; chunk < p.num_chunks; ++chunk) {
    const V2MChunkBox box(chunk, block.length, block.backwards);
    v2m_stage<kV2MStageBatch>(feature_tiles, feature_sources,
                              p.block_channels, block.channels_here, p,
                              block, box);
    // Per walk step: dt and the partial sum of y over the states; dt u
    // replaces u in the thread's own tile row (registers for it would cost
    // a block per SM).
    acc_t dt[kV2MChunk], y[kV2MChunk];
    for (int group_first = 0; group_first < p.dstate;
         group_first += p.state_group) {
      const int group = min(p.state_group, p.dstate - group_first);
      v2m_stage_matrices<T>(matrix_tiles, matrix_plane + group_first * pixels,
                            group, p, block, box);
      __syncthreads();
      if (group_first == 0) {
#pragma unroll
        for (int s = 0; s < kV2MChunk; ++s) {
          if (s < box.size) {
            const int column = row + s;
            const acc_t u = tile_u[column];
            dt[s] = v2m_step_size(p, tile_delta[column] + block.bias);
            tile_u[column] = dt[s] * u;
            y[s] = block.D * u;
          }
        }
      }
      for (int j = 0; j < group; ++j) {
        const int n = group_first + j;
        const acc_t A_n = weight_A[weights + n] * kV2MDecayScale<acc_t>;
        const acc_t B_n = p.var_B ? acc_t(0) : weight_B[weights + n];
        const acc_t C_n = p.var_C ? acc_t(0) : weight_C[weights + n];
        const int matrix_row =
            (j * p.block_lines + block.local_line) * kV2MTileStride;
        acc_t h = acc_t(0);
        if (chunk > 0) {
          h = carry[n * block.threads + block.me];
          if (block.valid)
            static_cast<acc_t *>(
                p.chunk_states)[block.chunk_state_index(p, chunk, n)] = h;
        }
#pragma unroll
        for (int s = 0; s < kV2MChunk; ++s) {
          if (s < box.size) {
            const acc_t b = p.var_B ? tile_B[matrix_row + s] : B_n;
            const acc_t c = p.var_C ? tile_C[matrix_row + s] : C_n;
            h = v2m_decay(dt[s] * A_n) * h + tile_u[row + s] * b;
            y[s] += c * h;
          }
        }
        carry[n * block.threads + block.me] = h;
      }
      // The next group restages B and C; after the last one, the barrier
      // before the stores orders the tiles.
      if (group_first + group < p.dstate) __syncthreads();
    }
#pragma unroll
    for (int s = 0; s < kV2MChunk; ++s) {
      if (s < box.size) {
        const int column = row + s;
        acc_t value = y[s];
        if (z) {
          const acc_t gate = tile_z[column];
          value *= gate * sigmoid_acc(gate);
        }
        tile_delta[column] = value;
      }
    }
    __syncthreads();
    v2m_for_each_output(p, block, box, [&](long long offset, int slot) {
      out.store(offset, tile_delta[slot]);
    });
    __syncthreads();  // the next chunk restages the tiles
  }
}

template <typename T>
__global__ void __launch_bounds__(kV2MMaxThreads, V2MMinBlocks<T>::backward)
    v2m_corner_scan_bwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  extern __shared__ __align__(16) unsigned char v2m_shared[];
  acc_t *shared = reinterpret_cast<acc_t *>(v2m_shared);
  const V2MSharedLayout layout = v2m_shared_layout(p, true);
  const V2MBlock<acc_t> block(p);
  acc_t *tile_u = shared + layout.u;          // u, then du
  acc_t *tile_delta = shared + layout.delta;  // delta, dt, then ddelta
  acc_t *tile_z = shared + layout.z;          // z, then dz
  acc_t *tile_dout = shared + layout.dout;
  acc_t *tile_dB = shared + layout.dB;
  acc_t *tile_dC = shared + layout.dC;
  acc_t *carry = shared + layout.carry;  // a g at the start of the next chunk
  acc_t *starts = shared + layout.starts;
  const acc_t *weight_A = shared + layout.A;
  const acc_t *weight_B = shared + layout.B_const;
  const acc_t *weight_C = shared + layout.C_const;
  acc_t *sum_dA = shared + layout.dA;
  acc_t *sum_dB = shared + layout.dB_const;
  acc_t *sum_dC = shared + layout.dC_const;
  v2m_stage_weights(shared + layout.A, shared + layout.B_const,
                    shared + layout.C_const, p, block);
  // Per state and thread: each thread updates only its own entries (no
  // shared-memory atomics, which the lines of a channel would contend on);
  // the lines are summed once at the end.
  for (int n = 0; n < p.dstate; ++n) {
    const int own = n * block.threads + block.me;
    carry[own] = acc_t(0);
    sum_dA[own] = acc_t(0);
    if (!p.var_B) sum_dB[own] = acc_t(0);
    if (!p.var_C) sum_dC[own] = acc_t(0);
  }

  const long long pixels = block.pixels;
  const V2MBackwardPlanes<T, acc_t> planes(p, block, shared, layout);
  const T *z = planes.z;
  const acc_t *tile_B = planes.matrix_tiles[0];
  const acc_t *tile_C = planes.matrix_tiles[1];
  const int row = block.me * kV2MTileStride;
  const int weights = block.local_channel * p.dstate;
  acc_t dD = acc_t(0), dbias = acc_t(0);

  for (int chunk = p.num_chunks - 1; chunk >= 0; --chunk) {
    const V2MChunkBox box(chunk, block.length, block.backwards);
    planes.stage_inputs(p, block, box);
    if (chunk > 0) {
      // All states' chunk starts at once: one memory latency, not dstate.
#pragma unroll 4
      for (int n = 0; n < p.dstate; ++n) {
        starts[n * block.threads + block.me] =
            block.valid ? static_cast<const acc_t *>(
                              p.chunk_states)[block.chunk_state_index(
                              p, chunk, n)]
                        : acc_t(0);
      }
    }
    // Per walk step: sums over the states. In the thread's own tile rows
    // (registers for them would cost blocks per SM), dt replaces delta, the
    // gradient dy of y before the gate replaces dout, and the factor of dz
    // (dz = factor (y + D u)) replaces z.
    acc_t ddt[kV2MChunk], du[kV2MChunk], y[kV2MChunk];
    for (int group_first = 0; group_first < p.dstate;
         group_first += p.state_group) {
      const int group = min(p.state_group, p.dstate - group_first);
      v2m_stage_matrices<T>(planes.matrix_tiles,
                            planes.matrix_plane + group_first * pixels, group,
                            p, block, box);
      __syncthreads();
      if (group_first == 0) {
#pragma unroll
        for (int s = 0; s < kV2MChunk; ++s) {
          if (s < box.size) {
            const int column = row + s;
            tile_delta[column] =
                v2m_step_size(p, tile_delta[column] + block.bias);
            acc_t dy = tile_dout[column];
            if (z) {
              const acc_t gate_input = tile_z[column];
              const acc_t gate = sigmoid_acc(gate_input);
              tile_z[column] =
                  dy * gate * (acc_t(1) + gate_input * (acc_t(1) - gate));
              dy *= gate_input * gate;
            }
            tile_dout[column] = dy;
            ddt[s] = du[s] = y[s] = acc_t(0);
          }
        }
      }
      for (int j = 0; j < group; ++j) {
        const int n = group_first + j;
        const acc_t A_n = weight_A[weights + n];
        const acc_t scaled_A = A_n * kV2MDecayScale<acc_t>;
        const acc_t B_n = p.var_B ? acc_t(0) : weight_B[weights + n];
        const acc_t C_n = p.var_C ? acc_t(0) : weight_C[weights + n];
        const int matrix_row =
            (j * p.block_lines + block.local_line) * kV2MTileStride;
        const acc_t start =
            chunk > 0 ? starts[n * block.threads + block.me] : acc_t(0);
        acc_t h[kV2MChunk];
        acc_t state = start;
#pragma unroll
        for (int s = 0; s < kV2MChunk; ++s) {
          if (s < box.size) {
            const acc_t b = p.var_B ? tile_B[matrix_row + s] : B_n;
            const acc_t dt = tile_delta[row + s];
            state = v2m_decay(dt * scaled_A) * state + dt * b * tile_u[row + s];
            h[s] = state;
          }
        }
        acc_t carried = carry[n * block.threads + block.me];
        acc_t dA = acc_t(0), dB_sum = acc_t(0), dC_sum = acc_t(0);
#pragma unroll
        for (int s = kV2MChunk - 1; s >= 0; --s) {
          if (s < box.size) {
            const acc_t u = tile_u[row + s];
            const acc_t b = p.var_B ? tile_B[matrix_row + s] : B_n;
            const acc_t c = p.var_C ? tile_C[matrix_row + s] : C_n;
            const acc_t dt = tile_delta[row + s];
            // Recomputed, not kept from the loop above: 16 registers less.
            const acc_t a = v2m_decay(dt * scaled_A);
            const acc_t before = s > 0 ? h[s - 1] : start;
            const acc_t dy = tile_dout[row + s];
            const acc_t g = c * dy + carried;
            carried = g * a;
            dA += g * before * a * dt;
            ddt[s] += g * (before * a * A_n + b * u);
            du[s] += g * dt * b;
            y[s] += c * h[s];
            const acc_t dB = g * dt * u;
            const acc_t dC = dy * h[s];
            if (p.var_B) {
              tile_dB[row + s] = block.valid ? dB : acc_t(0);
            } else {
              dB_sum += dB;
            }
            if (p.var_C) {
              tile_dC[row + s] = block.valid ? dC : acc_t(0);
            } else {
              dC_sum += dC;
            }
          }
        }
        const int own = n * block.threads + block.me;
        carry[own] = carried;
        if (block.valid) {
          sum_dA[own] += dA;
          if (!p.var_B) sum_dB[own] += dB_sum;
          if (!p.var_C) sum_dC[own] += dC_sum;
        }
        if (p.var_B || p.var_C) {
          __syncthreads();
          v2m_add_channel_sums(
              p.var_B ? static_cast<acc_t *>(p.dB) + planes.matrix_plane +
                            n * pixels
                      : nullptr,
              tile_dB,
              p.var_C ? static_cast<acc_t *>(p.dC) + planes.matrix_plane +
                            n * pixels
                      : nullptr,
              tile_dC, p, block, box);
          // The next state rewrites the dB / dC tiles and the next group
          // restages B and C (without per-pixel B and C nothing is staged
          // and no barrier is needed between groups). After the last state
          // only a thread's own rows of the other tiles are written before
          // the barrier ahead of the stores.
          if (n + 1 < p.dstate) __syncthreads();
        }
      }
    }
#pragma unroll
    for (int s = 0; s < kV2MChunk; ++s) {
      if (s < box.size) {
        const int column = row + s;
        const acc_t u = tile_u[column];
        // The tile holds dt = softplus(pre), whose slope sigmoid(pre) is
        // 1 - exp(-dt) (expm1: exact also where dt is tiny).
        const acc_t ddelta =
            p.delta_softplus ? -ddt[s] * expm1(-tile_delta[column]) : ddt[s];
        const acc_t dy = tile_dout[column];
        dbias += ddelta;
        dD += dy * u;
        if (z) tile_z[column] *= y[s] + block.D * u;
        tile_delta[column] = ddelta;
        tile_u[column] = du[s] + block.D * dy;
      }
    }
    __syncthreads();
    planes.store_gradients(p, block, box);
    __syncthreads();  // the next chunk restages the tiles
  }
  if (block.valid) {
    if (p.dD) atomicAdd(static_cast<acc_t *>(p.dD) + block.channel_index, dD);
    if (p.ddelta_bias)
      atomicAdd(static_cast<acc_t *>(p.ddelta_bias) + block.channel_index,
                dbias);
  }
  // The last chunk's __syncthreads ordered the per-thread sums.
  v2m_add_weight_sums(sum_dA, sum_dB, sum_dC, p, block);
}

// The weights of the thread's channel for one state (N = 1): A (scaled
// for v2m_decay as scaled_A), and B and C where constant; zeros for a
// thread beyond the map.
template <typename acc_t>
struct V2MOneStateWeights {
  acc_t A, scaled_A, B, C;

  __device__ V2MOneStateWeights(const V2MScanParams &p,
                                const V2MBlock<acc_t> &block) {
    auto weight = [&](const void *source) {
      return block.valid
                 ? static_cast<const acc_t *>(source)[block.channel_index]
                 : acc_t(0);
    };
    A = weight(p.A);
    scaled_A = A * kV2MDecayScale<acc_t>;
    B = p.var_B ? acc_t(0) : weight(p.B);
    C = p.var_C ? acc_t(0) : weight(p.C);
  }
};

// Forward for one state (V2M-S*, the V2M pyramid): the carried state stays
// in a register, every step is finished where it is computed (no per-step
// arrays), and a chunk costs three barriers.
template <typename T>
__global__ void __launch_bounds__(kV2MMaxThreads,
                                  V2MMinBlocks<T>::one_state_forward)
    v2m_corner_scan_one_state_fwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  extern __shared__ __align__(16) unsigned char v2m_shared[];
  acc_t *shared = reinterpret_cast<acc_t *>(v2m_shared);
  const V2MSharedLayout layout = v2m_shared_layout(p, false);
  const V2MBlock<acc_t> block(p);
  const V2MOneStateWeights<acc_t> weights(p, block);
  acc_t *tile_u = shared + layout.u;
  acc_t *tile_delta = shared + layout.delta;  // delta, then the output
  acc_t *tile_z = shared + layout.z;

  const long long pixels = block.pixels;
  const T *z = p.z ? static_cast<const T *>(p.z) +
                         (p.shared_z ? block.shared_plane : block.feature_plane)
                   : nullptr;
  acc_t *const feature_tiles[3] = {tile_u, tile_delta, tile_z};
  const T *const feature_sources[3] = {
      static_cast<const T *>(p.u) +
          (p.shared_u ? block.shared_plane : block.feature_plane),
      static_cast<const T *>(p.delta) + block.feature_plane, z};
  const long long matrix_plane = block.corner_index * pixels;
  acc_t *const matrix_tiles[2] = {shared + layout.B, shared + layout.C};
  const acc_t *tile_B = matrix_tiles[0];
  const acc_t *tile_C = matrix_tiles[1];
  const V2MOutput<T, acc_t> out(p, block.feature_plane, block.shared_plane);
  const int row = block.me * kV2MTileStride;
  const int matrix_row = block.local_line * kV2MTileStride;

  acc_t h = acc_t(0);
  for (int chunk = 0; chunk < p.num_chunks; ++chunk) {
    const V2MChunkBox box(chunk, block.length, block.backwards);
    if (chunk > 0 && block.valid)
      static_cast<acc_t *>(
          p.chunk_states)[block.chunk_state_index(p, chunk, 0)] = h;
    v2m_stage<kV2MStageBatch>(feature_tiles, feature_sources,
                              p.block_channels, block.channels_here, p,
                              block, box);
    v2m_stage_matrices<T>(matrix_tiles, matrix_plane, 1, p, block, box);
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kV2MChunk; ++s) {
      if (s < box.size) {
        const int column = row + s;
        const acc_t u = tile_u[column];
        const acc_t dt = v2m_step_size(p, tile_delta[column] + block.bias);
        const acc_t b = p.var_B ? tile_B[matrix_row + s] : weights.B;
        const acc_t c = p.var_C ? tile_C[matrix_row + s] : weights.C;
        h = v2m_decay(dt * weights.scaled_A) * h + dt * u * b;
        acc_t value = c * h + block.D * u;
        if (z) {
          const acc_t gate = tile_z[column];
          value *= gate * sigmoid_acc(gate);
        }
        tile_delta[column] = value;
      }
    }
    __syncthreads();
    v2m_for_each_output(p, block, box, [&](long long offset, int slot) {
      out.store(offset, tile_delta[slot]);
    });
    __syncthreads();  // the next chunk restages the tiles
  }
}

// Backward for one state: the chunk start is loaded into a register, the
// chunk's states are recomputed into registers, and the reverse walk
// finishes every step where it reaches it (ddelta, du, the dz of the gate
// and the per-pixel dB and dC go straight to the thread's tile rows), so
// that the channel sums of dB and dC and the stores of the other gradients
// share one pass between two barriers: three barriers per chunk.
template <typename T>
__global__ void __launch_bounds__(kV2MMaxThreads,
                                  V2MMinBlocks<T>::one_state_backward)
    v2m_corner_scan_one_state_bwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  extern __shared__ __align__(16) unsigned char v2m_shared[];
  acc_t *shared = reinterpret_cast<acc_t *>(v2m_shared);
  const V2MSharedLayout layout = v2m_shared_layout(p, true);
  const V2MBlock<acc_t> block(p);
  const V2MOneStateWeights<acc_t> weights(p, block);
  acc_t *tile_u = shared + layout.u;          // u, then du
  acc_t *tile_delta = shared + layout.delta;  // delta, dt, then ddelta
  acc_t *tile_z = shared + layout.z;          // z, then dz
  acc_t *tile_dout = shared + layout.dout;    // dout, then per-pixel dB
  acc_t *tile_dB = shared + layout.dB;        // tile_dout (the layout)
  acc_t *tile_dC = shared + layout.dC;

  const V2MBackwardPlanes<T, acc_t> planes(p, block, shared, layout);
  const T *z = planes.z;
  const acc_t *tile_B = planes.matrix_tiles[0];
  const acc_t *tile_C = planes.matrix_tiles[1];
  acc_t *dB_plane =
      p.var_B ? static_cast<acc_t *>(p.dB) + planes.matrix_plane : nullptr;
  acc_t *dC_plane =
      p.var_C ? static_cast<acc_t *>(p.dC) + planes.matrix_plane : nullptr;
  const int row = block.me * kV2MTileStride;
  const int matrix_row = block.local_line * kV2MTileStride;
  // carried: a g at the start of the chunk after the current one.
  acc_t carried = acc_t(0), dD = acc_t(0), dbias = acc_t(0);
  acc_t sum_dA = acc_t(0), sum_dB = acc_t(0), sum_dC = acc_t(0);

  for (int chunk = p.num_chunks - 1; chunk >= 0; --chunk) {
    const V2MChunkBox box(chunk, block.length, block.backwards);
    // Issued before the staging loads, so that their latencies overlap.
    const acc_t start =
        chunk > 0 && block.valid
            ? static_cast<const acc_t *>(
                  p.chunk_states)[block.chunk_state_index(p, chunk, 0)]
            : acc_t(0);
    planes.stage_inputs(p, block, box);
    v2m_stage_matrices<T>(planes.matrix_tiles, planes.matrix_plane, 1, p,
                          block, box);
    __syncthreads();
    acc_t h[kV2MChunk];
    acc_t state = start;
#pragma unroll
    for (int s = 0; s < kV2MChunk; ++s) {
      if (s < box.size) {
        const int column = row + s;
        const acc_t dt = v2m_step_size(p, tile_delta[column] + block.bias);
        const acc_t b = p.var_B ? tile_B[matrix_row + s] : weights.B;
        tile_delta[column] = dt;
        state = v2m_decay(dt * weights.scaled_A) * state +
                dt * b * tile_u[column];
        h[s] = state;
      }
    }
#pragma unroll
    for (int s = kV2MChunk - 1; s >= 0; --s) {
      if (s < box.size) {
        const int column = row + s;
        const acc_t u = tile_u[column];
        const acc_t b = p.var_B ? tile_B[matrix_row + s] : weights.B;
        const acc_t c = p.var_C ? tile_C[matrix_row + s] : weights.C;
        const acc_t dt = tile_delta[column];
        // Recomputed, not kept from the loop above: 16 registers less.
        const acc_t a = v2m_decay(dt * weights.scaled_A);
        const acc_t before = s > 0 ? h[s - 1] : start;
        acc_t dy = tile_dout[column];
        if (z) {
          const acc_t gate_input = tile_z[column];
          const acc_t gate = sigmoid_acc(gate_input);
          // dz = factor (y + D u) with y = C h.
          tile_z[column] = dy * gate *
                           (acc_t(1) + gate_input * (acc_t(1) - gate)) *
                           (c * h[s] + block.D * u);
          dy *= gate_input * gate;
        }
        const acc_t g = c * dy + carried;
        carried = g * a;
        sum_dA += g * before * a * dt;
        const acc_t ddt = g * (before * a * weights.A + b * u);
        // dt = softplus(pre) has the slope sigmoid(pre) = 1 - exp(-dt)
        // (expm1: exact also where dt is tiny).
        const acc_t ddelta =
            p.delta_softplus ? -ddt * expm1(-dt) : ddt;
        dbias += ddelta;
        dD += dy * u;
        tile_delta[column] = ddelta;
        tile_u[column] = g * dt * b + block.D * dy;
        const acc_t dB = g * dt * u;
        const acc_t dC = dy * h[s];
        // dout of this step is read above: its slot takes dB.
        if (p.var_B) {
          tile_dB[column] = block.valid ? dB : acc_t(0);
        } else {
          sum_dB += dB;
        }
        if (p.var_C) {
          tile_dC[column] = block.valid ? dC : acc_t(0);
        } else {
          sum_dC += dC;
        }
      }
    }
    __syncthreads();
    planes.store_gradients(p, block, box);
    if (p.var_B || p.var_C)
      v2m_add_channel_sums(dB_plane, tile_dB, dC_plane, tile_dC, p, block,
                           box);
    __syncthreads();  // the next chunk restages the tiles
  }
  if (block.valid) {
    if (p.dD) atomicAdd(static_cast<acc_t *>(p.dD) + block.channel_index, dD);
    if (p.ddelta_bias)
      atomicAdd(static_cast<acc_t *>(p.ddelta_bias) + block.channel_index,
                dbias);
  }
  // The per-thread weight sums go through the (free) tiles of the weight
  // gradients to be summed over each channel's lines.
  acc_t *weight_sums_A = shared + layout.dA;
  acc_t *weight_sums_B = shared + layout.dB_const;
  acc_t *weight_sums_C = shared + layout.dC_const;
  weight_sums_A[block.me] = sum_dA;
  if (!p.var_B) weight_sums_B[block.me] = sum_dB;
  if (!p.var_C) weight_sums_C[block.me] = sum_dC;
  __syncthreads();
  v2m_add_weight_sums(weight_sums_A, weight_sums_B, weight_sums_C, p, block);
}

template <typename T>
bool v2m_corner_scan_planes(const V2MScanParams &params) {
  return v2m_uses_planes<T>(
      params,
      static_cast<int>(
          at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin));
}

template <typename T>
void v2m_corner_scan_launch(const V2MScanParams &params, bool backward) {
  if (params.plane) {
    v2m_plane_launch<T>(params, backward);
    return;
  }
  using acc_t = typename AccumType<T>::type;
  V2MScanParams p = params;
  const int lines = p.axis_col ? p.width : p.height;
  // Tiles of at most kV2MMaxLinesPerBlock lines, as even as possible (a
  // 56-line map gets 4 tiles of 14, not 16 + 16 + 16 + 8).
  const int line_tiles =
      (lines + kV2MMaxLinesPerBlock - 1) / kV2MMaxLinesPerBlock;
  p.block_lines = (lines + line_tiles - 1) / line_tiles;
  p.line_magic = p.block_lines > 1 ? v2m_line_magic(p.block_lines) : 0u;
  p.block_channels = std::min(kV2MMaxThreads / p.block_lines, p.dim);
  p.state_group = std::min(p.dstate, kV2MMaxStateGroup);
  const int device = at::cuda::current_device();
  int max_bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(
      &max_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  auto shared_bytes = [&p, backward]() {
    return static_cast<long long>(v2m_shared_layout(p, backward).total) *
           static_cast<long long>(sizeof(acc_t));
  };
  // Fewer channels per block where the tiles of many states in double
  // precision would not fit.
  while (shared_bytes() > max_bytes && p.block_channels > 1)
    --p.block_channels;
  TORCH_CHECK(shared_bytes() <= max_bytes, "v2m corner scan: ",
              shared_bytes(), " bytes of shared memory needed for ",
              p.block_lines, " lines and ", p.dstate,
              " states per block, the device allows ", max_bytes);
  const dim3 grid((p.dim + p.block_channels - 1) / p.block_channels,
                  (lines + p.block_lines - 1) / p.block_lines,
                  p.batch * p.corners);
  const dim3 block(p.block_channels * p.block_lines);
  const int bytes = static_cast<int>(shared_bytes());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const bool one_state = p.dstate == 1;
  auto kernel =
      backward ? (one_state ? v2m_corner_scan_one_state_bwd_kernel<T>
                            : v2m_corner_scan_bwd_kernel<T>)
               : (one_state ? v2m_corner_scan_one_state_fwd_kernel<T>
                            : v2m_corner_scan_fwd_kernel<T>);
  C10_CUDA_CHECK(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  kernel<<<grid, block, bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mmssm
