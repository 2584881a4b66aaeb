// Device-agnostic entry points of the selective scan: argument checks, output
// allocation and dispatch on the element type. See selective_scan_params.h
// for the layouts; mmssm/ops/cuda_ops.py is the Python side.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "grad_buffers.h"
#include "op_checks.h"
#include "selective_scan_params.h"

namespace mmssm {
namespace {

constexpr char kOpName[] = "selective scan";

const void *optional_data(const c10::optional<at::Tensor> &tensor) {
  return tensor.has_value() ? tensor->data_ptr() : nullptr;
}

// Checks every input, fills the shapes and input pointers of the params.
SelectiveScanParams make_params(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    int64_t num_dirs, int64_t height, int64_t width, bool reverse) {
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                  dtype == at::kBFloat16 || dtype == at::kDouble,
              "selective scan: u must be float32, float16, bfloat16 or "
              "float64, got ",
              dtype);
  TORCH_CHECK(at::cuda::getCurrentDeviceProperties()->major >= 7,
              "selective scan: needs a GPU of compute capability 7.0 or "
              "newer");
  TORCH_CHECK(u.dim() == 3, "selective scan: u must be (batch, dim, length), "
              "got shape ", u.sizes());
  TORCH_CHECK(num_dirs == 1 || num_dirs == 4,
              "selective scan: num_dirs must be 1 or 4, got ", num_dirs);
  const auto acc = accum_type(dtype);
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2);
  TORCH_CHECK(batch > 0 && dim > 0 && length > 0,
              "selective scan: u must be non-empty, got shape ", u.sizes());
  TORCH_CHECK(batch <= 65535, "selective scan: batch must be at most 65535, "
              "got ", batch);
  TORCH_CHECK(A.dim() == 2, "selective scan: A must be (num_dirs * dim, "
              "dstate), got shape ", A.sizes());
  const int64_t dstate = A.size(1);
  check_op_tensor(kOpName, u, "u", u, dtype, {batch, dim, length});
  check_op_tensor(kOpName, delta, "delta", u, dtype,
                  {batch, num_dirs * dim, length});
  check_op_tensor(kOpName, A, "A", u, acc, {num_dirs * dim, dstate});
  if (num_dirs > 1) {
    TORCH_CHECK(height * width == length, "selective scan: height * width (",
                height, " * ", width, ") must equal length ", length);
    TORCH_CHECK(!z.has_value(),
                "selective scan: z is not supported with num_dirs > 1");
    TORCH_CHECK(!reverse, "selective scan: reverse is only supported with "
                "num_dirs 1 (the cross layout fixes each direction's order), "
                "got num_dirs ", num_dirs);
  }

  SelectiveScanParams params;
  params.batch = batch;
  params.dim = dim;
  params.num_dirs = num_dirs;
  params.length = length;
  params.dstate = dstate;
  params.height = height;
  params.width = width;
  params.num_chunks = (length + kChunkStateStride - 1) / kChunkStateStride;
  params.delta_softplus = delta_softplus;
  params.reverse = reverse;

  auto check_bc = [&](const at::Tensor &x, const char *name, bool &variable,
                      int &num_groups) {
    variable = x.dim() == 4;
    if (variable) {
      TORCH_CHECK(x.size(1) % num_dirs == 0, "selective scan: ", name,
                  " must be (batch, num_dirs * groups, dstate, length), got "
                  "shape ", x.sizes());
      const int64_t groups = x.size(1) / num_dirs;
      TORCH_CHECK(groups > 0 && dim % groups == 0, "selective scan: the "
                  "groups of ", name, " (", groups, ") must divide dim ", dim);
      check_op_tensor(kOpName, x, name, u, dtype,
                      {batch, num_dirs * groups, dstate, length});
      num_groups = groups;
    } else {
      TORCH_CHECK(x.dim() == 2 && num_dirs == 1, "selective scan: ", name,
                  " must be (batch, groups, dstate, length), or (dim, dstate) "
                  "with num_dirs 1, got shape ", x.sizes());
      check_op_tensor(kOpName, x, name, u, acc, {dim, dstate});
    }
  };
  check_bc(B, "B", params.var_B, params.num_groups_B);
  check_bc(C, "C", params.var_C, params.num_groups_C);
  params.channels_per_segment =
      dim / std::lcm(params.var_B ? params.num_groups_B : 1,
                     params.var_C ? params.num_groups_C : 1);
  if (D.has_value())
    check_op_tensor(kOpName, *D, "D", u, acc, {num_dirs * dim});
  if (delta_bias.has_value())
    check_op_tensor(kOpName, *delta_bias, "delta_bias", u, acc,
                    {num_dirs * dim});
  if (z.has_value())
    check_op_tensor(kOpName, *z, "z", u, dtype, {batch, dim, length});

  params.u = u.data_ptr();
  params.delta = delta.data_ptr();
  params.A = A.data_ptr();
  params.B = B.data_ptr();
  params.C = C.data_ptr();
  params.D = optional_data(D);
  params.z = optional_data(z);
  params.delta_bias = optional_data(delta_bias);
  return params;
}

void launch(const SelectiveScanParams &params, at::ScalarType dtype,
            ScanLayout layout, int64_t num_threads, int64_t num_items,
            bool backward) {
  with_element_type(kOpName, dtype, [&](auto element) {
    selective_scan_launch<decltype(element)>(params, layout, num_threads,
                                             num_items, backward);
  });
}

}  // namespace

std::vector<at::Tensor> selective_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    int64_t num_dirs, int64_t height, int64_t width, bool reverse,
    int64_t num_threads, int64_t num_items, int64_t chunk_length) {
  TORCH_CHECK(u.is_cuda(), "selective scan: u must be a CUDA tensor, got ",
              u.device());
  const c10::cuda::CUDAGuard device_guard(u.device());
  SelectiveScanParams params =
      make_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                  num_dirs, height, width, reverse);
  const auto acc = accum_type(u.scalar_type());
  // The four directions add into one output, so it starts at zero.
  at::Tensor out = num_dirs > 1 ? at::zeros(u.sizes(), u.options().dtype(acc))
                                : at::empty_like(u);
  at::Tensor y_pregate = z.has_value() ? at::empty_like(u) : u.new_empty({0});
  at::Tensor chunk_states = at::empty(
      {params.batch, num_dirs * params.dim, params.num_chunks, params.dstate},
      u.options().dtype(acc));
  params.out = out.data_ptr();
  params.y_pregate = y_pregate.numel() ? y_pregate.data_ptr() : nullptr;
  params.chunk_states = chunk_states.data_ptr();
  if (chunk_length == 0) {
    launch(params, u.scalar_type(), ScanLayout::kBlockPerSequence,
           num_threads, num_items, false);
    return {out, y_pregate, chunk_states};
  }
  TORCH_CHECK(chunk_length > 0, "selective scan: chunk_length must be "
              "positive (or 0 for the block forward kernel), got ",
              chunk_length);
  TORCH_CHECK(params.dstate <= kThreadScanMaxStates, "selective scan: the "
              "thread-per-chunk forward kernel holds at most ",
              kThreadScanMaxStates, " states, got dstate ", params.dstate);
  const int64_t num_forward_chunks =
      (params.length + chunk_length - 1) / chunk_length;
  TORCH_CHECK(num_forward_chunks <= 65535, "selective scan: at most 65535 "
              "chunks per sequence, got ", num_forward_chunks,
              " (chunk_length ", chunk_length, ")");
  params.forward_chunk_length = std::min<int64_t>(chunk_length, params.length);
  params.num_forward_chunks = num_forward_chunks;
  at::Tensor chunk_end_states, chunk_step_sums;
  if (num_forward_chunks > 1) {
    chunk_end_states = at::empty({params.batch, num_dirs * params.dim,
                                  num_forward_chunks - 1, params.dstate},
                                 u.options().dtype(acc));
    chunk_step_sums = at::empty(
        {params.batch, num_dirs * params.dim, num_forward_chunks - 1},
        u.options().dtype(acc));
    params.chunk_end_states = chunk_end_states.data_ptr();
    params.chunk_step_sums = chunk_step_sums.data_ptr();
  }
  launch(params, u.scalar_type(), ScanLayout::kThreadPerChunk, 0, 0, false);
  return {out, y_pregate, chunk_states};
}

std::vector<at::Tensor> selective_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const c10::optional<at::Tensor> &y_pregate,
    const at::Tensor &chunk_states, bool delta_softplus, int64_t num_dirs,
    int64_t height, int64_t width, bool reverse, int64_t num_threads,
    int64_t num_items, const std::string &kernel) {
  TORCH_CHECK(u.is_cuda(), "selective scan: u must be a CUDA tensor, got ",
              u.device());
  const c10::cuda::CUDAGuard device_guard(u.device());
  SelectiveScanParams params =
      make_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                  num_dirs, height, width, reverse);
  const auto dtype = u.scalar_type();
  const auto acc = accum_type(dtype);
  check_op_tensor(kOpName, dout, "dout", u, dtype, u.sizes());
  check_op_tensor(
      kOpName, chunk_states, "chunk_states", u, acc,
      {params.batch, num_dirs * params.dim, params.num_chunks, params.dstate});
  TORCH_CHECK(z.has_value() == y_pregate.has_value(),
              "selective scan: y_pregate must be given exactly when z is");
  if (y_pregate.has_value())
    check_op_tensor(kOpName, *y_pregate, "y_pregate", u, dtype, u.sizes());
  TORCH_CHECK(kernel == "thread" || kernel == "warp" || kernel == "block",
              "selective scan: kernel must be 'thread', 'warp' or 'block', "
              "got '", kernel, "'");
  if (kernel == "thread") {
    TORCH_CHECK(num_dirs == 1, "selective scan: the thread backward kernel "
                "needs num_dirs 1, got ", num_dirs);
    TORCH_CHECK(params.dstate <= kThreadBwdMaxStates, "selective scan: the "
                "thread backward kernel holds at most ", kThreadBwdMaxStates,
                " states, got dstate ", params.dstate);
    TORCH_CHECK(num_items > 0 && num_items % kChunkStateStride == 0,
                "selective scan: the thread backward kernel's chunks "
                "(num_items positions) must be a positive multiple of ",
                kChunkStateStride, " positions, got ", num_items);
    // A chunk longer than the sequence's saved stretches is one chunk (and
    // its length then fits the kernels' int).
    const int chunk_length = static_cast<int>(std::min<int64_t>(
        num_items, int64_t(params.num_chunks) * kChunkStateStride));
    const int64_t num_backward_chunks =
        (params.length + chunk_length - 1) / chunk_length;
    TORCH_CHECK(num_backward_chunks <= 65535, "selective scan: at most 65535 "
                "backward chunks per sequence, got ", num_backward_chunks,
                " (num_items ", num_items, ")");
    params.backward_chunk_length = chunk_length;
    params.num_backward_chunks = num_backward_chunks;
  }

  const auto acc_options = u.options().dtype(acc);
  at::Tensor du = num_dirs > 1 ? at::zeros(u.sizes(), acc_options)
                               : at::empty_like(u);
  // One allocation per group of gradients alike in dtype and lifetime.
  const ScanGrads grads = scan_grads(A, D, delta_bias, B, C, acc_options);
  const at::Tensor &dA = grads.dA, &dD = grads.dD;
  const at::Tensor &ddelta_bias = grads.ddelta_bias;
  const at::Tensor &dB = grads.dB, &dC = grads.dC;
  const auto position_grads =
      carve({delta.sizes(), shape_or_empty(z)}, delta.options(), false);
  const at::Tensor &ddelta = position_grads[0], &dz = position_grads[1];
  params.chunk_states = const_cast<void *>(chunk_states.data_ptr());
  params.y_pregate = y_pregate.has_value()
                         ? const_cast<void *>(y_pregate->data_ptr())
                         : nullptr;
  params.dout = dout.data_ptr();
  params.du = du.data_ptr();
  params.ddelta = ddelta.data_ptr();
  params.dA = dA.data_ptr();
  params.dB = dB.data_ptr();
  params.dC = dC.data_ptr();
  params.dD = D.has_value() ? dD.data_ptr() : nullptr;
  params.dz = z.has_value() ? dz.data_ptr() : nullptr;
  params.ddelta_bias = delta_bias.has_value() ? ddelta_bias.data_ptr()
                                              : nullptr;
  at::Tensor chunk_joins;
  if (params.num_backward_chunks > 1) {
    // Per join: the adjoint carried out of the chunk, then its step sum.
    const int64_t joins = int64_t(params.batch) * params.dim *
                          (params.num_backward_chunks - 1);
    chunk_joins = at::empty({joins * (params.dstate + 1)}, acc_options);
    params.chunk_adjoints = chunk_joins.data_ptr();
    params.chunk_step_sums = chunk_joins.narrow(0, joins * params.dstate,
                                                joins).data_ptr();
  }
  const ScanLayout layout = kernel == "thread" ? ScanLayout::kThreadPerChunk
                            : kernel == "warp"  ? ScanLayout::kWarpPerSequence
                                                : ScanLayout::kBlockPerSequence;
  launch(params, dtype, layout, num_threads, num_items, true);
  return {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias};
}

}  // namespace mmssm
