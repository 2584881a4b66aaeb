// Device-agnostic entry points of the fused LayerNorm / RMSNorm: argument
// checks, output allocation and dispatch on the input and output element
// types. See
// norm_params.h for the layouts; mmssm/ops/cuda_ops.py is the Python side.
// Every check runs before the device guard is constructed.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "norm_params.h"
#include "op_checks.h"

namespace mmssm {
namespace {

constexpr char kOpName[] = "norm";

// Checks x, weight and bias and fills the shapes and input pointers.
NormParams make_norm_params(const at::Tensor &x,
                            const c10::optional<at::Tensor> &weight,
                            const c10::optional<at::Tensor> &bias, double eps,
                            bool rms, bool channels_first) {
  TORCH_CHECK(x.is_cuda(), "norm: x must be a CUDA tensor, got ", x.device());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                  dtype == at::kBFloat16 || dtype == at::kDouble,
              "norm: x must be float32, float16, bfloat16 or float64, got ",
              dtype);
  TORCH_CHECK(!(rms && bias.has_value()), "norm: RMSNorm takes no bias");
  TORCH_CHECK(eps >= 0, "norm: eps must be non-negative, got ", eps);
  if (channels_first) {
    TORCH_CHECK(x.dim() == 3,
                "norm: a channels-first x must be (B, C, positions), got "
                "shape ",
                x.sizes());
  } else {
    TORCH_CHECK(x.dim() == 2, "norm: a channel-last x must be (rows, C), "
                "got shape ", x.sizes());
    TORCH_CHECK(x.size(1) <= kNormMaxChannels, "norm: channel-last rows "
                "take at most ", kNormMaxChannels, " channels, got ",
                x.size(1));
  }
  // Checked before the channel count is narrowed to int.
  TORCH_CHECK(x.size(1) <= (1 << 30), "norm: too many channels (", x.size(1),
              ")");
  NormParams params;
  params.channels = static_cast<int>(x.size(1));
  params.positions = channels_first ? x.size(2) : 0;
  params.rows = channels_first ? x.size(0) * x.size(2) : x.size(0);
  TORCH_CHECK(x.numel() > 0, "norm: x must be non-empty, got shape ",
              x.sizes());
  const auto acc = accum_type(dtype);
  check_op_tensor(kOpName, x, "x", x, dtype, x.sizes());
  if (weight.has_value())
    check_op_tensor(kOpName, *weight, "weight", x, acc, {params.channels});
  if (bias.has_value())
    check_op_tensor(kOpName, *bias, "bias", x, acc, {params.channels});
  params.channels_first = channels_first;
  params.rms = rms;
  params.eps = eps;
  params.x = x.data_ptr();
  params.weight = weight.has_value() ? weight->data_ptr() : nullptr;
  params.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  return params;
}

template <typename TIn>
void launch_norm_output(const NormParams &params, at::ScalarType out_dtype,
                        bool backward) {
  switch (out_dtype) {
    case at::kHalf:
      norm_launch<TIn, c10::Half>(params, backward);
      break;
    case at::kBFloat16:
      norm_launch<TIn, c10::BFloat16>(params, backward);
      break;
    default:
      norm_launch<TIn, TIn>(params, backward);
  }
}

// Dispatch on (input, output) types: the output type is the input's, or
// float16/bfloat16 for a float32 input.
void launch_norm(const NormParams &params, at::ScalarType dtype,
                 at::ScalarType out_dtype, bool backward) {
  switch (dtype) {
    case at::kFloat:
      launch_norm_output<float>(params, out_dtype, backward);
      break;
    case at::kHalf:
      norm_launch<c10::Half, c10::Half>(params, backward);
      break;
    case at::kBFloat16:
      norm_launch<c10::BFloat16, c10::BFloat16>(params, backward);
      break;
    case at::kDouble:
      norm_launch<double, double>(params, backward);
      break;
    default:
      TORCH_CHECK(false, "norm: unsupported dtype ", dtype);
  }
}

void check_out_dtype(at::ScalarType dtype, at::ScalarType out_dtype) {
  TORCH_CHECK(out_dtype == dtype ||
                  (dtype == at::kFloat &&
                   (out_dtype == at::kHalf || out_dtype == at::kBFloat16)),
              "norm: the output dtype must be x's (", dtype,
              ") or, for a float32 x, float16 or bfloat16; got ", out_dtype);
}

}  // namespace

std::vector<at::Tensor> norm_forward(const at::Tensor &x,
                                     const c10::optional<at::Tensor> &weight,
                                     const c10::optional<at::Tensor> &bias,
                                     double eps, bool rms, bool channels_first,
                                     at::ScalarType out_dtype) {
  NormParams params =
      make_norm_params(x, weight, bias, eps, rms, channels_first);
  const auto dtype = x.scalar_type();
  check_out_dtype(dtype, out_dtype);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto acc_options = x.options().dtype(accum_type(dtype));
  at::Tensor out =
      at::empty({params.rows, params.channels}, x.options().dtype(out_dtype));
  at::Tensor mean = at::empty({rms ? 0 : params.rows}, acc_options);
  at::Tensor rstd = at::empty({params.rows}, acc_options);
  params.out = out.data_ptr();
  params.mean = rms ? nullptr : mean.data_ptr();
  params.rstd = rstd.data_ptr();
  launch_norm(params, dtype, out_dtype, false);
  return {out, mean, rstd};
}

std::vector<at::Tensor> norm_backward(const at::Tensor &dout,
                                      const at::Tensor &x,
                                      const c10::optional<at::Tensor> &weight,
                                      const c10::optional<at::Tensor> &bias,
                                      const at::Tensor &mean,
                                      const at::Tensor &rstd, bool rms,
                                      bool channels_first) {
  NormParams params = make_norm_params(x, weight, bias, 0.0, rms,
                                       channels_first);
  const auto dtype = x.scalar_type();
  const auto out_dtype = dout.scalar_type();
  check_out_dtype(dtype, out_dtype);
  const auto acc = accum_type(dtype);
  check_op_tensor(kOpName, dout, "dout", x, out_dtype,
                  {params.rows, params.channels});
  check_op_tensor(kOpName, mean, "mean", x, acc, {rms ? 0 : params.rows});
  check_op_tensor(kOpName, rstd, "rstd", x, acc, {params.rows});
  const c10::cuda::CUDAGuard device_guard(x.device());
  // Enough blocks to fill the GPU (8 of 256 threads per SM), no more: each
  // adds its sums of the weight and bias gradients with atomics.
  const int64_t units = channels_first
                            ? norm_num_tiles(params)
                            : (params.rows + kNormWarps - 1) / kNormWarps;
  const int64_t sms =
      at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  params.grid = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(units, 8 * sms)));
  at::Tensor dx = at::empty_like(x);
  // The weight and bias gradients as the rows of one zeroed buffer: one
  // memset.
  at::Tensor dweight_dbias =
      at::empty({2, params.channels}, x.options().dtype(acc));
  C10_CUDA_CHECK(cudaMemsetAsync(dweight_dbias.data_ptr(), 0,
                                 dweight_dbias.nbytes(),
                                 at::cuda::getCurrentCUDAStream()));
  params.dout = dout.data_ptr();
  params.mean = rms ? nullptr : mean.data_ptr();
  params.rstd = rstd.data_ptr();
  params.dx = dx.data_ptr();
  params.dweight = weight.has_value() ? dweight_dbias[0].data_ptr() : nullptr;
  params.dbias = bias.has_value() ? dweight_dbias[1].data_ptr() : nullptr;
  launch_norm(params, dtype, out_dtype, true);
  return {dx, dweight_dbias};
}

}  // namespace mmssm
