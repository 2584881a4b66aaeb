// Device-agnostic entry points of the cross scan's tiled and plane kernels
// (VMamba's four directions): argument checks, buffers and dispatch on the
// element type.
// See cross_scan_params.h for the layouts; mmssm/ops/cuda_ops.py is the
// Python side. Every check runs before the device guard is set.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <vector>

#include "cross_scan_params.h"
#include "grad_buffers.h"
#include "op_checks.h"

namespace mmssm {
namespace {

constexpr char kOpName[] = "cross scan";

// Checks every input and fills the shapes and input pointers of the params.
CrossScanParams make_cross_params(const at::Tensor &u, const at::Tensor &delta,
                                  const at::Tensor &A, const at::Tensor &B,
                                  const at::Tensor &C,
                                  const c10::optional<at::Tensor> &D,
                                  const c10::optional<at::Tensor> &delta_bias,
                                  bool delta_softplus, bool plane) {
  TORCH_CHECK(u.is_cuda(), "cross scan: u must be a CUDA tensor, got ",
              u.device());
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                  dtype == at::kBFloat16 || dtype == at::kDouble,
              "cross scan: u must be float32, float16, bfloat16 or float64, "
              "got ",
              dtype);
  TORCH_CHECK(u.dim() == 4, "cross scan: u must be (batch, D, H, W), got "
              "shape ", u.sizes());
  TORCH_CHECK(A.dim() == 2, "cross scan: A must be (4 * D, N), got shape ",
              A.sizes());
  const int64_t batch = u.size(0), dim = u.size(1), height = u.size(2),
                width = u.size(3), dstate = A.size(1);
  TORCH_CHECK(batch > 0 && dim > 0 && height > 0 && width > 0,
              "cross scan: u must be non-empty, got shape ", u.sizes());
  TORCH_CHECK(batch * 4 <= 65535, "cross scan: batch must be at most 16383, "
              "got ", batch);
  TORCH_CHECK(height * width < (int64_t{1} << 31), "cross scan: a map must "
              "have fewer than 2^31 pixels, got ", height, " x ", width);
  TORCH_CHECK(dstate >= 1 && dstate <= kCrossMaxStates, "cross scan: the "
              "state size N (A.size(1)) must be in [1, ", kCrossMaxStates,
              "], got ", dstate);
  TORCH_CHECK(!plane || dstate == 1, "cross scan: the plane kernels take "
              "one state (N = 1), got N = ", dstate);
  // Larger maps take the plane kernels in bands of whole rows or columns.
  TORCH_CHECK(!plane || height * width <= kCrossPlaneMaxPixels ||
                  (height <= kCrossPlaneMaxPixels &&
                   width <= kCrossPlaneMaxPixels),
              "cross scan: for the plane kernels the height and width must "
              "be at most ", kCrossPlaneMaxPixels, " (or the map at most ",
              kCrossPlaneMaxPixels, " pixels), got a ", height, " x ", width,
              " map");
  const auto acc = accum_type(dtype);
  check_op_tensor(kOpName, delta, "delta", u, dtype,
                  {batch, 4, dim, height, width});
  check_op_tensor(kOpName, A, "A", u, acc, {4 * dim, dstate});
  check_op_tensor(kOpName, B, "B", u, dtype, {batch, 4, dstate, height, width});
  check_op_tensor(kOpName, C, "C", u, dtype, {batch, 4, dstate, height, width});
  if (D.has_value()) check_op_tensor(kOpName, *D, "D", u, acc, {4 * dim});
  if (delta_bias.has_value())
    check_op_tensor(kOpName, *delta_bias, "delta_bias", u, acc, {4 * dim});

  CrossScanParams params;
  params.batch = batch;
  params.dim = dim;
  params.height = height;
  params.width = width;
  params.dstate = dstate;
  params.delta_softplus = delta_softplus;
  params.plane = plane;
  set_cross_bands(params);
  // The plane kernels on a whole map save nothing (empty line and chunk
  // buffers); in bands, the state entering each band (one chunk per line).
  params.max_lines = plane && !cross_banded(params) ? 0
                                                    : std::max(height, width);
  const int64_t chunks = (params.max_lines + kCrossChunk - 1) / kCrossChunk;
  params.max_chunks = cross_banded(params) ? 1 : chunks;
  params.u = u.data_ptr();
  params.delta = delta.data_ptr();
  params.A = A.data_ptr();
  params.B = B.data_ptr();
  params.C = C.data_ptr();
  params.D = D.has_value() ? D->data_ptr() : nullptr;
  params.delta_bias = delta_bias.has_value() ? delta_bias->data_ptr()
                                             : nullptr;
  return params;
}

std::vector<int64_t> line_shape(const CrossScanParams &params) {
  return {params.batch, 4, params.dim, params.dstate, params.max_lines};
}

// The tiled kernels' step sums of each line (none for the plane kernels).
std::vector<int64_t> line_dt_shape(const CrossScanParams &params) {
  return {params.batch, 4, params.dim,
          params.plane ? 0 : params.max_lines};
}

// The banded kernels' scratch (cross_scan_params.h): band_totals, two
// values per band, and band_sum; nothing for other calls.
std::vector<at::Tensor> band_scratch(CrossScanParams &params,
                                     const at::Tensor &u,
                                     const at::TensorOptions &acc_options) {
  if (!cross_banded(params)) return {};
  std::vector<at::Tensor> scratch = {
      at::empty({params.batch, 4, params.dim, params.max_lines, 2},
                acc_options),
      at::empty(u.sizes(), acc_options)};
  params.band_totals = scratch[0].data_ptr();
  params.band_sum = scratch[1].data_ptr();
  return scratch;
}

std::vector<int64_t> chunk_states_shape(const CrossScanParams &params) {
  return {params.batch,      4, params.dim, params.dstate,
          params.max_chunks, params.max_lines};
}

void launch_cross(const CrossScanParams &params, at::ScalarType dtype,
                  bool backward) {
  with_element_type(kOpName, dtype, [&](auto element) {
    cross_scan_launch<decltype(element)>(params, backward);
  });
}

}  // namespace

std::vector<at::Tensor> cross_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool plane) {
  CrossScanParams params = make_cross_params(u, delta, A, B, C, D, delta_bias,
                                             delta_softplus, plane);
  const c10::cuda::CUDAGuard device_guard(u.device());
  const auto acc_options = u.options().dtype(accum_type(u.scalar_type()));
  // The tiled kernels add the four directions' outputs into one map; the
  // plane kernels write it whole, in u's dtype. The saved buffers are sized
  // for the longer axis; zeroed, their entries past the shorter axis's lines
  // and chunks are defined (the op's outputs are deterministic wherever no
  // atomic sum is involved).
  at::Tensor out = plane ? at::empty(u.sizes(), u.options())
                         : at::zeros(u.sizes(), acc_options);
  at::Tensor line_states = at::empty(line_shape(params), acc_options);
  const auto saved = carve({line_dt_shape(params), chunk_states_shape(params)},
                          acc_options, true);
  const at::Tensor &line_dt = saved[0], &chunk_states = saved[1];
  params.out = out.data_ptr();
  params.line_states = line_states.data_ptr();
  params.line_dt = line_dt.data_ptr();
  params.chunk_states = chunk_states.data_ptr();
  const auto scratch = band_scratch(params, u, acc_options);
  launch_cross(params, u.scalar_type(), false);
  return {out, chunk_states, line_dt};
}

std::vector<at::Tensor> cross_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const at::Tensor &chunk_states, const at::Tensor &line_dt,
    bool delta_softplus, bool plane) {
  CrossScanParams params = make_cross_params(u, delta, A, B, C, D, delta_bias,
                                             delta_softplus, plane);
  const auto dtype = u.scalar_type();
  const auto acc = accum_type(dtype);
  check_op_tensor(kOpName, dout, "dout", u, dtype, u.sizes());
  check_op_tensor(kOpName, chunk_states, "chunk_states", u, acc,
                  chunk_states_shape(params));
  check_op_tensor(kOpName, line_dt, "line_dt", u, acc, line_dt_shape(params));
  const c10::cuda::CUDAGuard device_guard(u.device());
  const auto acc_options = u.options().dtype(acc);
  // u (in the tiled kernels), B, C and the weights collect the gradients of
  // several directions, channels or blocks; the plane kernels write du
  // whole, in u's dtype.
  at::Tensor du = plane ? at::empty(u.sizes(), u.options())
                        : at::zeros(u.sizes(), acc_options);
  at::Tensor ddelta = at::empty_like(delta);
  // One allocation per group of gradients alike in dtype and lifetime.
  const ScanGrads grads = scan_grads(A, D, delta_bias, B, C, acc_options);
  const at::Tensor &dA = grads.dA, &dD = grads.dD;
  const at::Tensor &ddelta_bias = grads.ddelta_bias;
  const at::Tensor &dB = grads.dB, &dC = grads.dC;
  at::Tensor line_adjoint = at::empty(line_shape(params), acc_options);
  params.chunk_states = const_cast<void *>(chunk_states.data_ptr());
  params.line_dt = const_cast<void *>(line_dt.data_ptr());
  params.dout = dout.data_ptr();
  params.line_adjoint = line_adjoint.data_ptr();
  params.du = du.data_ptr();
  params.ddelta = ddelta.data_ptr();
  params.dA = dA.data_ptr();
  params.dB = dB.data_ptr();
  params.dC = dC.data_ptr();
  params.dD = D.has_value() ? dD.data_ptr() : nullptr;
  params.ddelta_bias = delta_bias.has_value() ? ddelta_bias.data_ptr()
                                              : nullptr;
  const auto scratch = band_scratch(params, u, acc_options);
  launch_cross(params, dtype, true);
  return {du, ddelta, dA, dB, dC, dD, ddelta_bias};
}

}  // namespace mmssm
