// Device-agnostic entry points of the fused causal depthwise conv1d: argument
// checks, output allocation and dispatch on the element type. See
// causal_conv1d_params.h for the layouts; mmssm/ops/cuda_ops.py is the Python
// side. Every check runs before the device guard is constructed.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "causal_conv1d_params.h"
#include "grad_buffers.h"
#include "op_checks.h"

namespace mmssm {
namespace {

constexpr char kOpName[] = "causal conv1d";

// Checks x, weight and bias and fills the shapes and input pointers.
CausalConv1dParams make_conv_params(const at::Tensor &x,
                                    const at::Tensor &weight,
                                    const c10::optional<at::Tensor> &bias,
                                    bool reverse, bool silu) {
  TORCH_CHECK(x.is_cuda(), "causal conv1d: x must be a CUDA tensor, got ",
              x.device());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                  dtype == at::kBFloat16 || dtype == at::kDouble,
              "causal conv1d: x must be float32, float16, bfloat16 or "
              "float64, got ",
              dtype);
  TORCH_CHECK(x.dim() == 3, "causal conv1d: x must be (B, E, L), got shape ",
              x.sizes());
  TORCH_CHECK(weight.dim() == 2, "causal conv1d: weight must be (E, K), got "
              "shape ", weight.sizes());
  const int64_t batch = x.size(0), channels = x.size(1), length = x.size(2),
                kernel = weight.size(1);
  TORCH_CHECK(batch > 0 && channels > 0 && length > 0,
              "causal conv1d: x must be non-empty, got shape ", x.sizes());
  TORCH_CHECK(kernel >= 1 && kernel <= kCausalConv1dMaxKernel,
              "causal conv1d: the kernel size K (weight.size(1)) must be in "
              "[1, ", kCausalConv1dMaxKernel, "], got ", kernel);
  // The grid: a block per channel and group of batch elements; positions
  // are 32-bit.
  TORCH_CHECK(channels <= std::numeric_limits<int32_t>::max() &&
                  (batch + kCausalConv1dWarps - 1) / kCausalConv1dWarps <=
                      65535 &&
                  length < std::numeric_limits<int32_t>::max() - 32,
              "causal conv1d: x of shape ", x.sizes(), " exceeds the "
              "kernels' grid (at most 2^31 - 1 channels, ",
              65535 * kCausalConv1dWarps, " batch elements, 2^31 - 33 "
              "positions)");
  const auto acc = accum_type(dtype);
  check_op_tensor(kOpName, x, "x", x, dtype, {batch, channels, length});
  check_op_tensor(kOpName, weight, "weight", x, acc, {channels, kernel});
  if (bias.has_value())
    check_op_tensor(kOpName, *bias, "bias", x, acc, {channels});

  CausalConv1dParams params;
  params.batch = batch;
  params.channels = channels;
  params.length = length;
  params.kernel = static_cast<int>(kernel);
  params.reverse = reverse;
  params.silu = silu;
  params.x = x.data_ptr();
  params.weight = weight.data_ptr();
  params.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  return params;
}

void launch_conv(const CausalConv1dParams &params, at::ScalarType dtype,
                 bool backward) {
  with_element_type(kOpName, dtype, [&](auto element) {
    causal_conv1d_launch<decltype(element)>(params, backward);
  });
}

}  // namespace

at::Tensor causal_conv1d_forward(const at::Tensor &x, const at::Tensor &weight,
                                 const c10::optional<at::Tensor> &bias,
                                 bool reverse, bool silu) {
  CausalConv1dParams params =
      make_conv_params(x, weight, bias, reverse, silu);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty_like(x);
  params.out = out.data_ptr();
  launch_conv(params, x.scalar_type(), false);
  return out;
}

std::vector<at::Tensor> causal_conv1d_backward(
    const at::Tensor &x, const at::Tensor &weight,
    const c10::optional<at::Tensor> &bias, const at::Tensor &dout,
    bool reverse, bool silu) {
  CausalConv1dParams params =
      make_conv_params(x, weight, bias, reverse, silu);
  const auto dtype = x.scalar_type();
  check_op_tensor(kOpName, dout, "dout", x, dtype, x.sizes());
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto acc_options = x.options().dtype(accum_type(dtype));
  at::Tensor dx = at::empty_like(x);
  const auto weight_grads =
      carve({weight.sizes(), shape_or_empty(bias)}, acc_options, true);
  const at::Tensor &dweight = weight_grads[0], &dbias = weight_grads[1];
  params.dout = dout.data_ptr();
  params.dx = dx.data_ptr();
  params.dweight = dweight.data_ptr();
  params.dbias = bias.has_value() ? dbias.data_ptr() : nullptr;
  launch_conv(params, dtype, true);
  return {dx, dweight, dbias};
}

}  // namespace mmssm
