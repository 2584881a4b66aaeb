// C entry point of the emulated selective-scan kernels
// (csrc/common/cuda/selective_scan_kernel.cuh through
// csrc/pytorch/cuda/selective_scan_launcher.cuh), for ctypes: the buffers
// and params that csrc/pytorch/selective_scan.cpp gives them, on host
// memory, with the launch choices given explicitly. Returns 0, or 1 with
// the error message in `error`.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "selective_scan_launcher.cuh"

namespace {

// The shape, options and launch choices of a call. groups_B (groups_C) is
// 0 for a constant (dim, dstate) matrix. chunk_length 0 runs the block
// forward kernel with num_threads x num_items, else the thread-per-chunk
// one; backward_kernel 0, 1, 2: thread (chunks of num_items positions),
// warp, block (num_threads x num_items).
struct ScanCall {
  int batch, dim, num_dirs, length, dstate, height, width;
  int groups_B, groups_C, delta_softplus, reverse;
  int num_threads, num_items, chunk_length, backward_kernel;
};

// tensors: u, delta, A, B, C, D, z, delta_bias, out, y_pregate,
// chunk_states, then backward dout, du, ddelta, dA, dB, dC, dD, dz,
// ddelta_bias (D, z, delta_bias, y_pregate and their gradients may be
// null; gradients that several sequences add into zeroed).
template <typename T>
void run(bool backward, const ScanCall &call, void *const *tensors) {
  using mmssm::ScanLayout;
  mmssm::SelectiveScanParams p;
  p.batch = call.batch;
  p.dim = call.dim;
  p.num_dirs = call.num_dirs;
  p.length = call.length;
  p.dstate = call.dstate;
  p.height = call.height;
  p.width = call.width;
  p.num_chunks = (call.length + mmssm::kChunkStateStride - 1) /
                 mmssm::kChunkStateStride;
  p.delta_softplus = call.delta_softplus;
  p.reverse = call.reverse;
  p.var_B = call.groups_B > 0;
  p.var_C = call.groups_C > 0;
  p.num_groups_B = std::max(call.groups_B, 1);
  p.num_groups_C = std::max(call.groups_C, 1);
  p.channels_per_segment =
      call.dim / std::lcm(p.num_groups_B, p.num_groups_C);
  void *const *t = tensors;
  p.u = t[0];
  p.delta = t[1];
  p.A = t[2];
  p.B = t[3];
  p.C = t[4];
  p.D = t[5];
  p.z = t[6];
  p.delta_bias = t[7];
  p.out = t[8];
  p.y_pregate = t[9];
  p.chunk_states = t[10];
  if (backward) {
    p.dout = t[11];
    p.du = t[12];
    p.ddelta = t[13];
    p.dA = t[14];
    p.dB = t[15];
    p.dC = t[16];
    p.dD = t[17];
    p.dz = t[18];
    p.ddelta_bias = t[19];
    const ScanLayout layouts[] = {ScanLayout::kThreadPerChunk,
                                  ScanLayout::kWarpPerSequence,
                                  ScanLayout::kBlockPerSequence};
    // The thread kernel's joins between chunks: scratch it must write
    // before it reads, filled with NaN.
    std::vector<T> adjoints, step_sums;
    if (call.backward_kernel == 0) {
      p.backward_chunk_length = call.num_items;
      p.num_backward_chunks =
          (call.length + call.num_items - 1) / call.num_items;
      const size_t joins = static_cast<size_t>(call.batch) * call.dim *
                           (p.num_backward_chunks - 1);
      const T nan = std::numeric_limits<T>::quiet_NaN();
      adjoints.assign(joins * call.dstate, nan);
      step_sums.assign(joins, nan);
      p.chunk_adjoints = adjoints.data();
      p.chunk_step_sums = step_sums.data();
    }
    mmssm::selective_scan_launch<T>(p, layouts[call.backward_kernel],
                                    call.num_threads, call.num_items, true);
    return;
  }
  if (call.chunk_length == 0) {
    mmssm::selective_scan_launch<T>(p, ScanLayout::kBlockPerSequence,
                                    call.num_threads, call.num_items, false);
    return;
  }
  p.forward_chunk_length = std::min(call.chunk_length, call.length);
  p.num_forward_chunks =
      (call.length + call.chunk_length - 1) / call.chunk_length;
  // Scratch the kernels must write before they read: filled with NaN.
  const size_t sequences =
      static_cast<size_t>(call.batch) * call.num_dirs * call.dim;
  const size_t joins = sequences * (p.num_forward_chunks - 1);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> end_states(joins * call.dstate, nan), step_sums(joins, nan);
  if (p.num_forward_chunks > 1) {
    p.chunk_end_states = end_states.data();
    p.chunk_step_sums = step_sums.data();
  }
  mmssm::selective_scan_launch<T>(p, ScanLayout::kThreadPerChunk, 0, 0,
                                  false);
}

}  // namespace

CUDA_EMULATOR_ENTRY_POINT(emulated_selective_scan, ScanCall)
