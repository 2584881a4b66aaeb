// Kernel launches of the selective scan for one element type; each
// selective_scan_<dtype>.cu instantiates selective_scan_launch for its type so
// that the four types compile in parallel.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "selective_scan_kernel.cuh"
#include "selective_scan_params.h"

namespace mmssm {

template <typename Kernel>
void launch_with_shared_memory(Kernel kernel, dim3 grid, int num_threads,
                               size_t shared_bytes,
                               const SelectiveScanParams &params) {
  constexpr size_t kDefaultSharedLimit = 48 * 1024;
  if (shared_bytes > kDefaultSharedLimit) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(shared_bytes)));
  }
  kernel<<<grid, num_threads, shared_bytes,
           at::cuda::getCurrentCUDAStream()>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int kNThreads, int kNItems, bool kCross>
void launch_block_layout(const SelectiveScanParams &params, bool backward) {
  using acc_t = typename AccumType<T>::type;
  const dim3 grid(params.num_dirs * params.dim, params.batch);
  if (backward) {
    if constexpr ((kNThreads * kNItems) % kChunkStateStride == 0) {
      launch_with_shared_memory(
          selective_scan_bwd_block_kernel<T, kNThreads, kNItems, kCross>,
          grid, kNThreads, (4 * size_t(params.dstate) + 2) * sizeof(acc_t),
          params);
    } else {
      TORCH_CHECK(false, "selective scan: the block backward kernel needs "
                  "chunks of a multiple of ", kChunkStateStride, " positions");
    }
  } else {
    launch_with_shared_memory(
        selective_scan_fwd_kernel<T, kNThreads, kNItems, kCross>, grid,
        kNThreads, size_t(params.dstate) * sizeof(acc_t), params);
  }
}

template <typename T, int kMaxN>
void launch_thread_forward_states(const SelectiveScanParams &params) {
  using acc_t = typename AccumType<T>::type;
  const int segment = params.channels_per_segment;
  const int tiles_per_segment =
      (segment + kThreadScanChannels - 1) / kThreadScanChannels;
  const size_t shared_bytes =
      ThreadScanLayout<acc_t, kMaxN>::kElements * sizeof(acc_t);
  const int threads = kThreadScanChannels * thread_scan_split<kMaxN>();
  dim3 grid(params.num_dirs * (params.dim / segment) * tiles_per_segment,
            params.batch, params.num_forward_chunks);
  if (params.num_forward_chunks > 1) {
    // The last chunk's end state is never composed: no local pass for it.
    grid.z = params.num_forward_chunks - 1;
    launch_with_shared_memory(
        selective_scan_fwd_thread_kernel<T, kMaxN, true>, grid, threads,
        shared_bytes, params);
    grid.z = params.num_forward_chunks;
  }
  launch_with_shared_memory(
      selective_scan_fwd_thread_kernel<T, kMaxN, false>, grid, threads,
      shared_bytes, params);
}

// The thread-per-chunk forward for the smallest compiled number of register
// states that holds dstate.
template <typename T>
void launch_thread_forward(const SelectiveScanParams &params) {
  static_assert(kThreadScanMaxStates == 64, "compiled state counts below");
  const int dstate = params.dstate;
  if (dstate <= 1) {
    launch_thread_forward_states<T, 1>(params);
  } else if (dstate <= 2) {
    launch_thread_forward_states<T, 2>(params);
  } else if (dstate <= 4) {
    launch_thread_forward_states<T, 4>(params);
  } else if (dstate <= 8) {
    launch_thread_forward_states<T, 8>(params);
  } else if (dstate <= 16) {
    launch_thread_forward_states<T, 16>(params);
  } else if (dstate <= 32) {
    launch_thread_forward_states<T, 32>(params);
  } else if (dstate <= 64) {
    launch_thread_forward_states<T, 64>(params);
  } else {
    TORCH_CHECK(false, "selective scan: the thread-per-chunk forward kernel "
                "holds at most ", kThreadScanMaxStates, " states, got dstate ",
                dstate);
  }
}

template <typename T, int kMaxN>
void launch_thread_backward_states(const SelectiveScanParams &params) {
  using acc_t = typename AccumType<T>::type;
  const int segment = params.channels_per_segment;
  const int tiles_per_segment =
      (segment + kThreadScanChannels - 1) / kThreadScanChannels;
  using Layout = ThreadBwdLayout<acc_t, kMaxN>;
  dim3 grid((params.dim / segment) * tiles_per_segment, params.batch,
            params.num_backward_chunks);
  if (params.num_backward_chunks > 1) {
    // The first chunk's adjoint is never composed: no local pass for it.
    grid.z = params.num_backward_chunks - 1;
    launch_with_shared_memory(
        selective_scan_bwd_thread_kernel<T, kMaxN, true>, grid,
        kThreadScanChannels, Layout::kLocalElements * sizeof(acc_t), params);
    grid.z = params.num_backward_chunks;
  }
  launch_with_shared_memory(
      selective_scan_bwd_thread_kernel<T, kMaxN, false>, grid,
      kThreadScanChannels, Layout::kElements * sizeof(acc_t), params);
}

// The thread-per-chunk backward (mamba layout only) for the smallest
// compiled number of register states that holds dstate.
template <typename T>
void launch_thread_backward(const SelectiveScanParams &params) {
  static_assert(kThreadBwdMaxStates == 16, "compiled state counts below");
  TORCH_CHECK(params.num_dirs == 1, "selective scan: the thread-per-chunk "
              "backward kernel needs num_dirs 1, got ", params.num_dirs);
  const int dstate = params.dstate;
  if (dstate <= 1) {
    launch_thread_backward_states<T, 1>(params);
  } else if (dstate <= 2) {
    launch_thread_backward_states<T, 2>(params);
  } else if (dstate <= 4) {
    launch_thread_backward_states<T, 4>(params);
  } else if (dstate <= 8) {
    launch_thread_backward_states<T, 8>(params);
  } else if (dstate <= 16) {
    launch_thread_backward_states<T, 16>(params);
  } else {
    TORCH_CHECK(false, "selective scan: the thread-per-chunk backward "
                "kernel holds at most ", kThreadBwdMaxStates,
                " states, got dstate ", dstate);
  }
}

template <typename T, bool kCross>
void launch_warp_backward(const SelectiveScanParams &params) {
  using acc_t = typename AccumType<T>::type;
  constexpr int kNWarps = 8;
  const int segment = params.channels_per_segment;
  const int tiles_per_segment = (segment + kNWarps - 1) / kNWarps;
  const dim3 grid(params.num_dirs * (params.dim / segment) * tiles_per_segment,
                  params.batch);
  launch_with_shared_memory(
      selective_scan_bwd_warp_kernel<T, kNWarps, kCross>, grid, kNWarps * 32,
      warp_bwd_shared_elements<kNWarps>(params.dstate) * sizeof(acc_t),
      params);
}

template <typename T, bool kCross>
void launch_scan(const SelectiveScanParams &params, ScanLayout layout,
                 int num_threads, int num_items, bool backward) {
  TORCH_CHECK(is_compiled_scan_config(layout, backward, num_threads, num_items),
              "selective scan: no kernel compiled for ", num_threads,
              " threads x ", num_items, " items per thread");
  if (layout == ScanLayout::kThreadPerChunk && backward) {
    if constexpr (kCross) {
      TORCH_CHECK(false, "selective scan: the thread-per-chunk backward "
                  "kernel needs num_dirs 1, got ", params.num_dirs);
    } else {
      launch_thread_backward<T>(params);
    }
  } else if (layout == ScanLayout::kThreadPerChunk) {
    if constexpr (kCross) {
      TORCH_CHECK(false, "selective scan: the thread-per-chunk forward "
                  "kernel needs num_dirs 1 (the cross layout takes the block "
                  "kernel, chunk_length 0), got ", params.num_dirs);
    } else {
      launch_thread_forward<T>(params);
    }
  } else if (layout == ScanLayout::kWarpPerSequence) {
    launch_warp_backward<T, kCross>(params);
  } else if (num_threads == 32) {
    launch_block_layout<T, 32, 4, kCross>(params, backward);
  } else if (num_threads == 64) {
    launch_block_layout<T, 64, 4, kCross>(params, backward);
  } else if (num_items == 4) {
    launch_block_layout<T, 128, 4, kCross>(params, backward);
  } else {
    launch_block_layout<T, 128, 8, kCross>(params, backward);
  }
}

template <typename T>
void selective_scan_launch(const SelectiveScanParams &params,
                           ScanLayout layout, int num_threads, int num_items,
                           bool backward) {
  if (params.num_dirs > 1) {
    launch_scan<T, true>(params, layout, num_threads, num_items, backward);
  } else {
    launch_scan<T, false>(params, layout, num_threads, num_items, backward);
  }
}

}  // namespace mmssm
