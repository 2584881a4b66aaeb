// Plain-data description of one selective-scan launch, shared by the
// device-agnostic entry points (csrc/pytorch/*.cpp) and the CUDA launchers.
#pragma once

namespace mmssm {

// One launch scans `num_dirs * dim` sequences per batch element.
//
// num_dirs == 1: the mamba layout. u, delta, z, out: (batch, dim, length);
//   B/C variable: (batch, groups, dstate, length), constant: (dim, dstate).
// num_dirs == 4: VMamba's fused four-direction scan over a height x width map
//   (length = height * width). u, out: (batch, dim, length) shared by all
//   directions; delta: (batch, 4 * dim, length); B/C: (batch, 4, dstate,
//   length); A: (4 * dim, dstate); D, delta_bias: (4 * dim). Every
//   per-direction input sits at its pixel's row-major position and direction
//   k visits the pixels in cross-scan order k.
//
// Pointers to weights (A, D, delta_bias, constant B/C), to chunk states and to
// gradients of weights point to the accumulation type (float, or double for
// double inputs); all other pointers to the input element type, except the
// four-direction output and input gradient and the gradients of variable B/C,
// which are accumulated with atomics in the accumulation type.
struct SelectiveScanParams {
  int batch = 0;
  int dim = 0;
  int num_dirs = 1;
  int num_groups_B = 1;  // groups of variable B (channel d uses d / (dim / G))
  int num_groups_C = 1;
  int length = 0;
  int dstate = 0;
  int height = 1;
  int width = 1;
  int num_chunks = 0;  // saved states per sequence (see kChunkStateStride)
  // Thread-per-chunk forward: positions each thread walks, and the number of
  // such chunks per sequence (ceil(length / forward_chunk_length)).
  int forward_chunk_length = 0;
  int num_forward_chunks = 1;
  // Thread backward: positions each thread walks (a multiple of
  // kChunkStateStride), and the number of such chunks per sequence.
  int backward_chunk_length = 0;
  int num_backward_chunks = 1;
  // Channels that share their groups of B and of C: dim / lcm(groups of B,
  // groups of C), a constant B/C counting as one group.
  int channels_per_segment = 1;

  bool var_B = true;
  bool var_C = true;
  bool delta_softplus = false;
  // Mamba layout only: sequence position t sits at memory position
  // length - 1 - t, so the recurrence runs from the end of the rows.
  bool reverse = false;

  const void *u = nullptr;
  const void *delta = nullptr;
  const void *A = nullptr;
  const void *B = nullptr;
  const void *C = nullptr;
  const void *D = nullptr;
  const void *z = nullptr;
  const void *delta_bias = nullptr;

  // Forward outputs; backward reads y_pregate and chunk_states.
  void *out = nullptr;
  void *y_pregate = nullptr;
  void *chunk_states = nullptr;
  // Thread-per-chunk forward with num_forward_chunks > 1, accumulation type:
  // each chunk's end state when started from zero, (batch, num_dirs * dim,
  // num_forward_chunks - 1, dstate), and the sum of its step sizes, (batch,
  // num_dirs * dim, num_forward_chunks - 1). The last chunk needs neither.
  void *chunk_end_states = nullptr;
  void *chunk_step_sums = nullptr;
  // Thread backward with num_backward_chunks > 1, accumulation type: the
  // adjoint each chunk but the first carries out of its first position when
  // entered with zero, (batch, dim, num_backward_chunks - 1, dstate), chunk
  // k at k - 1; chunk_step_sums holds their sums of steps, (batch, dim,
  // num_backward_chunks - 1). The first chunk needs neither.
  void *chunk_adjoints = nullptr;

  // Backward.
  const void *dout = nullptr;
  void *du = nullptr;
  void *ddelta = nullptr;
  void *dA = nullptr;
  void *dB = nullptr;
  void *dC = nullptr;
  void *dD = nullptr;
  void *dz = nullptr;
  void *ddelta_bias = nullptr;
};

// The forward pass saves the state after every kChunkStateStride positions
// (and after the last one) in chunk_states: (batch, num_dirs * dim,
// num_chunks = ceil(length / kChunkStateStride), dstate).
constexpr int kChunkStateStride = 256;

// How a launch splits the work:
// - kThreadPerChunk: forward (dstate <= kThreadScanMaxStates), one thread
//   per (sequence, chunk of forward_chunk_length positions) walks its chunk
//   with every state in registers; backward (mamba layout, dstate <=
//   kThreadBwdMaxStates), one thread per (sequence, chunk of
//   backward_chunk_length = num_items positions) walks its chunk from the
//   last position down (num_threads unused);
// - kBlockPerSequence: the block forward (any dstate) and the block backward
//   kernel run one block of num_threads threads per sequence, each thread
//   owning num_items consecutive positions;
// - kWarpPerSequence (backward only): one warp per sequence (num_threads = 32
//   * warps per block, num_items = 8).
enum class ScanLayout { kThreadPerChunk, kBlockPerSequence, kWarpPerSequence };

// Largest state size of the thread-per-chunk forward kernel.
constexpr int kThreadScanMaxStates = 64;
// Largest state size of the thread-per-sequence backward kernel (its
// per-thread shared columns and kept tile states grow with it).
constexpr int kThreadBwdMaxStates = 16;

// The configurations the kernels are compiled for; mmssm/ops/cuda_ops.py
// picks one per sequence length and sequence count.
inline bool is_compiled_scan_config(ScanLayout layout, bool backward,
                                    int num_threads, int num_items) {
  if (layout == ScanLayout::kThreadPerChunk) return true;
  if (layout == ScanLayout::kWarpPerSequence)
    return backward && num_threads == 256 && num_items == 8;
  // (32, 4) chunks are too short for the backward pass: its chunks must
  // start where the forward pass saved a state.
  return (!backward && num_threads == 32 && num_items == 4) ||
         (num_threads == 64 && num_items == 4) ||
         (num_threads == 128 && (num_items == 4 || num_items == 8));
}

// Launches the forward (or backward) kernel for element type T on the
// current CUDA stream; instantiated per type in csrc/pytorch/cuda/*.cu.
template <typename T>
void selective_scan_launch(const SelectiveScanParams &params,
                           ScanLayout layout, int num_threads, int num_items,
                           bool backward);

}  // namespace mmssm
