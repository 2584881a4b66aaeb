// Device-agnostic entry points of V2M's corner scan: argument checks, output
// allocation and dispatch on the element type. See v2m_scan_params.h for the
// layouts; mmssm/ops/cuda_ops.py is the Python side.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "grad_buffers.h"
#include "op_checks.h"
#include "v2m_scan_params.h"

namespace mmssm {
namespace {

constexpr char kOpName[] = "v2m corner scan";

// Checks every input and fills the shapes and input pointers of the params.
V2MScanParams make_v2m_params(const at::Tensor &u, const at::Tensor &delta,
                              const at::Tensor &A, const at::Tensor &B,
                              const at::Tensor &C,
                              const c10::optional<at::Tensor> &D,
                              const c10::optional<at::Tensor> &z,
                              const c10::optional<at::Tensor> &delta_bias,
                              bool delta_softplus, bool axis_col,
                              int64_t backwards_mask, bool merge_corners) {
  TORCH_CHECK(u.is_cuda(), "v2m corner scan: u must be a CUDA tensor, got ",
              u.device());
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                  dtype == at::kBFloat16 || dtype == at::kDouble,
              "v2m corner scan: u must be float32, float16, bfloat16 or "
              "float64, got ",
              dtype);
  TORCH_CHECK(delta.dim() == 5, "v2m corner scan: delta must be (batch, K, "
              "D, H, W), got shape ", delta.sizes());
  TORCH_CHECK(A.dim() == 2, "v2m corner scan: A must be (K * D, N), got "
              "shape ", A.sizes());
  const int64_t batch = delta.size(0), corners = delta.size(1),
                dim = delta.size(2), height = delta.size(3),
                width = delta.size(4), dstate = A.size(1);
  TORCH_CHECK(batch > 0 && corners > 0 && dim > 0 && height > 0 && width > 0,
              "v2m corner scan: delta must be non-empty, got shape ",
              delta.sizes());
  TORCH_CHECK(corners < 63, "v2m corner scan: at most 62 corners, got ",
              corners);
  TORCH_CHECK(batch * corners <= 65535, "v2m corner scan: batch * K must be "
              "at most 65535, got ", batch * corners);
  TORCH_CHECK((axis_col ? width : height) <= 65535, "v2m corner scan: at "
              "most 65535 lines, got ", axis_col ? width : height);
  TORCH_CHECK(height * width < (int64_t{1} << 31), "v2m corner scan: a map "
              "must have fewer than 2^31 pixels (32-bit offsets within a "
              "plane), got ", height, " x ", width);
  TORCH_CHECK(dstate >= 1 && dstate <= kV2MMaxStates, "v2m corner scan: the "
              "state size N (A.size(1)) must be in [1, ", kV2MMaxStates,
              "], got ", dstate);
  const auto acc = accum_type(dtype);
  const std::vector<int64_t> per_corner{batch, corners, dim, height, width};
  const std::vector<int64_t> shared{batch, dim, height, width};
  V2MScanParams params;
  params.shared_u = u.dim() == 4;
  check_op_tensor(kOpName, u, "u", u, dtype,
                  params.shared_u ? shared : per_corner);
  check_op_tensor(kOpName, delta, "delta", u, dtype, per_corner);
  check_op_tensor(kOpName, A, "A", u, acc, {corners * dim, dstate});
  params.var_B = B.dim() == 5;
  params.var_C = C.dim() == 5;
  const std::vector<int64_t> matrix{batch, corners, dstate, height, width};
  if (params.var_B) {
    check_op_tensor(kOpName, B, "B", u, dtype, matrix);
  } else {
    check_op_tensor(kOpName, B, "B", u, acc, {corners * dim, dstate});
  }
  if (params.var_C) {
    check_op_tensor(kOpName, C, "C", u, dtype, matrix);
  } else {
    check_op_tensor(kOpName, C, "C", u, acc, {corners * dim, dstate});
  }
  if (D.has_value()) check_op_tensor(kOpName, *D, "D", u, acc, {corners * dim});
  if (delta_bias.has_value())
    check_op_tensor(kOpName, *delta_bias, "delta_bias", u, acc,
                    {corners * dim});
  if (z.has_value()) {
    params.shared_z = z->dim() == 4;
    check_op_tensor(kOpName, *z, "z", u, dtype,
                    params.shared_z ? shared : per_corner);
  }

  params.batch = batch;
  params.corners = corners;
  params.dim = dim;
  params.height = height;
  params.width = width;
  params.dstate = dstate;
  const int64_t length = axis_col ? height : width;
  params.num_chunks = (length + kV2MChunk - 1) / kV2MChunk;
  params.axis_col = axis_col;
  params.backwards_mask = backwards_mask;
  params.delta_softplus = delta_softplus;
  params.merge_corners = merge_corners;
  params.u = u.data_ptr();
  params.delta = delta.data_ptr();
  params.A = A.data_ptr();
  params.B = B.data_ptr();
  params.C = C.data_ptr();
  params.D = D.has_value() ? D->data_ptr() : nullptr;
  params.z = z.has_value() ? z->data_ptr() : nullptr;
  params.delta_bias = delta_bias.has_value() ? delta_bias->data_ptr()
                                             : nullptr;
  params.plane = with_element_type(kOpName, dtype, [&](auto element) {
    return v2m_corner_scan_planes<decltype(element)>(params);
  });
  return params;
}

// (batch, K, dim, H, W), or (batch, dim, H, W) where the corners merge.
std::vector<int64_t> out_shape(const V2MScanParams &params) {
  if (params.merge_corners)
    return {params.batch, params.dim, params.height, params.width};
  return {params.batch, params.corners, params.dim, params.height,
          params.width};
}

std::vector<int64_t> chunk_states_shape(const V2MScanParams &params) {
  return {params.batch, params.corners,
          params.plane ? 0 : params.num_chunks - 1,
          params.dstate, params.dim,
          params.axis_col ? params.width : params.height};
}

void launch_v2m(const V2MScanParams &params, at::ScalarType dtype,
                bool backward) {
  with_element_type(kOpName, dtype, [&](auto element) {
    v2m_corner_scan_launch<decltype(element)>(params, backward);
  });
}

}  // namespace

std::vector<at::Tensor> v2m_corner_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool axis_col, int64_t backwards_mask, bool merge_corners) {
  V2MScanParams params =
      make_v2m_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                      axis_col, backwards_mask, merge_corners);
  const c10::cuda::CUDAGuard device_guard(u.device());
  const auto acc_options = u.options().dtype(accum_type(u.scalar_type()));
  // The thread-per-line kernels add the corners into a merged map; the
  // plane kernels write it whole.
  at::Tensor out = !merge_corners ? at::empty_like(delta)
                   : params.plane ? at::empty(out_shape(params), acc_options)
                                  : at::zeros(out_shape(params), acc_options);
  at::Tensor chunk_states =
      at::empty(chunk_states_shape(params), acc_options);
  params.out = out.data_ptr();
  params.chunk_states = chunk_states.data_ptr();
  launch_v2m(params, u.scalar_type(), false);
  return {out, chunk_states};
}

std::vector<at::Tensor> v2m_corner_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const at::Tensor &chunk_states, bool delta_softplus, bool axis_col,
    int64_t backwards_mask, bool merge_corners) {
  V2MScanParams params =
      make_v2m_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                      axis_col, backwards_mask, merge_corners);
  const c10::cuda::CUDAGuard device_guard(u.device());
  const auto dtype = u.scalar_type();
  const auto acc = accum_type(dtype);
  const auto acc_options = u.options().dtype(acc);
  check_op_tensor(kOpName, dout, "dout", u, merge_corners ? acc : dtype,
                  out_shape(params));
  check_op_tensor(kOpName, chunk_states, "chunk_states", u, acc,
                  chunk_states_shape(params));
  // Shared u and z collect the gradients of all corners (atomics); the
  // plane kernels sum a map's corners in shared memory and write du once,
  // in u's dtype.
  at::Tensor du = params.plane      ? at::empty(u.sizes(), u.options())
                  : params.shared_u ? at::zeros(u.sizes(), acc_options)
                                    : at::empty(u.sizes(), acc_options);
  at::Tensor ddelta = at::empty_like(delta);
  // One allocation per group of gradients alike in dtype and lifetime.
  const ScanGrads grads = scan_grads(A, D, delta_bias, B, C, acc_options);
  const at::Tensor &dA = grads.dA, &dD = grads.dD;
  const at::Tensor &ddelta_bias = grads.ddelta_bias;
  const at::Tensor &dB = grads.dB, &dC = grads.dC;
  at::Tensor dz = !z.has_value()  ? at::empty({0}, acc_options)
                  : params.shared_z ? at::zeros(z->sizes(), acc_options)
                                    : at::empty(z->sizes(), acc_options);
  params.chunk_states = const_cast<void *>(chunk_states.data_ptr());
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
  launch_v2m(params, dtype, true);
  return {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias};
}

}  // namespace mmssm
