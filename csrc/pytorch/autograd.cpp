// C++ autograd Functions of mmssm's compiled ops, for eager training.
//
// Each Function calls an op's forward entry point, saves what its backward
// needs and, in backward, calls the op's backward entry point and returns
// every gradient in its input's dtype. The autograd engine so runs the
// backward pass of an op without entering Python: a Python
// autograd.Function costs tens of microseconds of host time per call, and
// a training step makes a hundred or more of these calls. The formulas are
// those registered with torch.library in mmssm/ops/cuda_ops.py, which
// torch.compile uses. While a Function runs, the entry points may return
// several tensors carved out of one allocation (grad_buffers.h).
#include <torch/autograd.h>

#include <string>
#include <vector>

#include "grad_buffers.h"
#include "op_checks.h"
#include "ops.h"

namespace mmssm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// t in dtype and contiguous, without a copy where it already is.
at::Tensor dense(const at::Tensor &t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype && t.is_contiguous()) return t;
  return t.to(dtype).contiguous();
}

// A saved slot of an optional input: undefined where it is absent.
at::Tensor saved_slot(const c10::optional<at::Tensor> &t) {
  return t.has_value() ? *t : at::Tensor();
}

c10::optional<at::Tensor> optional_input(const at::Tensor &t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// The gradient of an optional input: undefined where the input was absent
// (the backward entry points return empty tensors there).
at::Tensor optional_grad(const at::Tensor &grad, const at::Tensor &input) {
  return input.defined() ? grad : at::Tensor();
}

// Entries 0-5 of a scan's gradients (u, delta, A, B, C, D, the first six
// of its backward entry point's) in their inputs' dtypes: those of u, B and
// C come in the accumulation dtype.
void scan_input_grads(const std::vector<at::Tensor> &g, const at::Tensor &u,
                      const at::Tensor &B, const at::Tensor &C,
                      const at::Tensor &D, variable_list &result) {
  result[0] = dense(g[0], u.scalar_type());
  result[1] = g[1];
  result[2] = g[2];
  result[3] = dense(g[3], B.scalar_type());
  result[4] = dense(g[4], C.scalar_type());
  result[5] = optional_grad(g[5], D);
}

// Saves the op's tensors, marks its outputs other than the first as
// non-differentiable and leaves their gradients undefined (no zero fill).
void save(AutogradContext *ctx, const variable_list &tensors,
          const std::vector<at::Tensor> &outputs) {
  ctx->save_for_backward(tensors);
  ctx->mark_non_differentiable(
      variable_list(outputs.begin() + 1, outputs.end()));
  ctx->set_materialize_grads(false);
}

struct SelectiveScanFunction
    : public torch::autograd::Function<SelectiveScanFunction> {
  static variable_list forward(
      AutogradContext *ctx, const at::Tensor &u, const at::Tensor &delta,
      const at::Tensor &A, const at::Tensor &B, const at::Tensor &C,
      const c10::optional<at::Tensor> &D,
      const c10::optional<at::Tensor> &z,
      const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
      int64_t num_dirs, int64_t height, int64_t width, bool reverse,
      int64_t num_threads, int64_t num_items, int64_t chunk_length,
      int64_t backward_threads, int64_t backward_items,
      const std::string &backward_kernel) {
    const SharedBuffersScope shared_buffers;
    auto outputs = selective_scan_forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_dirs,
        height, width, reverse, num_threads, num_items, chunk_length);
    // outputs: (out, y before the gate, chunk states).
    save(ctx,
         {u, delta, A, B, C, saved_slot(D), saved_slot(z),
          saved_slot(delta_bias), outputs[1], outputs[2]},
         outputs);
    auto &data = ctx->saved_data;
    data["delta_softplus"] = delta_softplus;
    data["num_dirs"] = num_dirs;
    data["height"] = height;
    data["width"] = width;
    data["reverse"] = reverse;
    data["backward_threads"] = backward_threads;
    data["backward_items"] = backward_items;
    data["backward_kernel"] = backward_kernel;
    return outputs;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const SharedBuffersScope shared_buffers;
    variable_list result(19);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &u = saved[0], &B = saved[3], &C = saved[4];
    const at::Tensor &D = saved[5], &z = saved[6], &delta_bias = saved[7];
    const auto &data = ctx->saved_data;
    auto g = selective_scan_backward(
        u, saved[1], saved[2], B, C, optional_input(D), optional_input(z),
        optional_input(delta_bias), dense(grads[0], u.scalar_type()),
        z.defined() ? c10::optional<at::Tensor>(saved[8]) : c10::nullopt,
        saved[9], data.at("delta_softplus").toBool(),
        data.at("num_dirs").toInt(), data.at("height").toInt(),
        data.at("width").toInt(), data.at("reverse").toBool(),
        data.at("backward_threads").toInt(),
        data.at("backward_items").toInt(),
        data.at("backward_kernel").toStringRef());
    scan_input_grads(g, u, B, C, D, result);
    result[6] = optional_grad(g[6], z);
    result[7] = optional_grad(g[7], delta_bias);
    return result;
  }
};

struct CrossScanFunction
    : public torch::autograd::Function<CrossScanFunction> {
  static variable_list forward(AutogradContext *ctx, const at::Tensor &u,
                               const at::Tensor &delta, const at::Tensor &A,
                               const at::Tensor &B, const at::Tensor &C,
                               const c10::optional<at::Tensor> &D,
                               const c10::optional<at::Tensor> &delta_bias,
                               bool delta_softplus, bool plane) {
    const SharedBuffersScope shared_buffers;
    auto outputs = cross_scan_forward(u, delta, A, B, C, D, delta_bias,
                                      delta_softplus, plane);
    // outputs: (out, chunk states, line step sums).
    save(ctx,
         {u, delta, A, B, C, saved_slot(D), saved_slot(delta_bias),
          outputs[1], outputs[2]},
         outputs);
    ctx->saved_data["delta_softplus"] = delta_softplus;
    ctx->saved_data["plane"] = plane;
    return outputs;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const SharedBuffersScope shared_buffers;
    variable_list result(9);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &u = saved[0], &B = saved[3], &C = saved[4];
    const at::Tensor &D = saved[5], &delta_bias = saved[6];
    auto g = cross_scan_backward(
        u, saved[1], saved[2], B, C, optional_input(D),
        optional_input(delta_bias), dense(grads[0], u.scalar_type()),
        saved[7], saved[8], ctx->saved_data.at("delta_softplus").toBool(),
        ctx->saved_data.at("plane").toBool());
    scan_input_grads(g, u, B, C, D, result);
    result[6] = optional_grad(g[6], delta_bias);
    return result;
  }
};

struct WavefrontScanFunction
    : public torch::autograd::Function<WavefrontScanFunction> {
  static variable_list forward(
      AutogradContext *ctx, const at::Tensor &x, const at::Tensor &delta_t,
      const at::Tensor &delta_l, const at::Tensor &A_t, const at::Tensor &A_l,
      const at::Tensor &B_t, const at::Tensor &B_l, const at::Tensor &C,
      const c10::optional<at::Tensor> &D,
      const c10::optional<at::Tensor> &delta_bias_t,
      const c10::optional<at::Tensor> &delta_bias_l, bool delta_softplus,
      bool origin_br, int64_t tile_width, bool tiles_in_flight) {
    const SharedBuffersScope shared_buffers;
    auto outputs = wavefront_scan_forward(
        x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
        delta_bias_l, delta_softplus, origin_br, tile_width, tiles_in_flight);
    // outputs: (out, states of the tiles' last columns).
    save(ctx,
         {x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, saved_slot(D),
          saved_slot(delta_bias_t), saved_slot(delta_bias_l), outputs[1]},
         outputs);
    auto &data = ctx->saved_data;
    data["delta_softplus"] = delta_softplus;
    data["origin_br"] = origin_br;
    data["tile_width"] = tile_width;
    data["tiles_in_flight"] = tiles_in_flight;
    return outputs;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const SharedBuffersScope shared_buffers;
    variable_list result(15);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &B_t = saved[5], &B_l = saved[6];
    const at::Tensor &C = saved[7], &D = saved[8];
    const at::Tensor &delta_bias_t = saved[9], &delta_bias_l = saved[10];
    const auto &data = ctx->saved_data;
    auto g = wavefront_scan_backward(
        x, saved[1], saved[2], saved[3], saved[4], B_t, B_l, C,
        optional_input(D), optional_input(delta_bias_t),
        optional_input(delta_bias_l), dense(grads[0], x.scalar_type()),
        saved[11], data.at("delta_softplus").toBool(),
        data.at("origin_br").toBool(), data.at("tile_width").toInt(),
        data.at("tiles_in_flight").toBool());
    for (int i = 0; i < 5; ++i) result[i] = g[i];
    result[5] = dense(g[5], B_t.scalar_type());
    result[6] = dense(g[6], B_l.scalar_type());
    result[7] = dense(g[7], C.scalar_type());
    result[8] = optional_grad(g[8], D);
    result[9] = optional_grad(g[9], delta_bias_t);
    result[10] = optional_grad(g[10], delta_bias_l);
    return result;
  }
};

struct V2MCornerScanFunction
    : public torch::autograd::Function<V2MCornerScanFunction> {
  static variable_list forward(
      AutogradContext *ctx, const at::Tensor &u, const at::Tensor &delta,
      const at::Tensor &A, const at::Tensor &B, const at::Tensor &C,
      const c10::optional<at::Tensor> &D,
      const c10::optional<at::Tensor> &z,
      const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
      bool axis_col, int64_t backwards_mask, bool merge_corners) {
    const SharedBuffersScope shared_buffers;
    auto outputs = v2m_corner_scan_forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, axis_col,
        backwards_mask, merge_corners);
    // outputs: (out, chunk states).
    save(ctx,
         {u, delta, A, B, C, saved_slot(D), saved_slot(z),
          saved_slot(delta_bias), outputs[1]},
         outputs);
    auto &data = ctx->saved_data;
    data["delta_softplus"] = delta_softplus;
    data["axis_col"] = axis_col;
    data["backwards_mask"] = backwards_mask;
    data["merge_corners"] = merge_corners;
    return outputs;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const SharedBuffersScope shared_buffers;
    variable_list result(12);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &u = saved[0], &B = saved[3], &C = saved[4];
    const at::Tensor &D = saved[5], &z = saved[6], &delta_bias = saved[7];
    const auto &data = ctx->saved_data;
    const bool merge_corners = data.at("merge_corners").toBool();
    // A merged output is in the accumulation type, and so is its gradient.
    const auto out_type =
        merge_corners ? accum_type(u.scalar_type()) : u.scalar_type();
    auto g = v2m_corner_scan_backward(
        u, saved[1], saved[2], B, C, optional_input(D), optional_input(z),
        optional_input(delta_bias), dense(grads[0], out_type), saved[8],
        data.at("delta_softplus").toBool(), data.at("axis_col").toBool(),
        data.at("backwards_mask").toInt(), merge_corners);
    scan_input_grads(g, u, B, C, D, result);
    result[6] = z.defined() ? dense(g[6], z.scalar_type()) : at::Tensor();
    result[7] = optional_grad(g[7], delta_bias);
    return result;
  }
};

struct CausalConv1dFunction
    : public torch::autograd::Function<CausalConv1dFunction> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x,
                            const at::Tensor &weight,
                            const c10::optional<at::Tensor> &bias,
                            bool reverse, bool silu) {
    const SharedBuffersScope shared_buffers;
    ctx->save_for_backward({x, weight, saved_slot(bias)});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["silu"] = silu;
    return causal_conv1d_forward(x, weight, bias, reverse, silu);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const SharedBuffersScope shared_buffers;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &bias = saved[2];
    auto g = causal_conv1d_backward(
        x, saved[1], optional_input(bias), dense(grads[0], x.scalar_type()),
        ctx->saved_data.at("reverse").toBool(),
        ctx->saved_data.at("silu").toBool());
    return {g[0], g[1], optional_grad(g[2], bias), at::Tensor(),
            at::Tensor()};
  }
};

struct NormFunction : public torch::autograd::Function<NormFunction> {
  static variable_list forward(AutogradContext *ctx, const at::Tensor &x,
                               const c10::optional<at::Tensor> &weight,
                               const c10::optional<at::Tensor> &bias,
                               double eps, bool rms, bool channels_first,
                               at::ScalarType out_dtype) {
    const SharedBuffersScope shared_buffers;
    auto outputs =
        norm_forward(x, weight, bias, eps, rms, channels_first, out_dtype);
    // outputs: (out, mean, rstd).
    save(ctx,
         {x, saved_slot(weight), saved_slot(bias), outputs[1], outputs[2]},
         outputs);
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["channels_first"] = channels_first;
    ctx->saved_data["out_dtype"] = out_dtype;
    return outputs;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const SharedBuffersScope shared_buffers;
    variable_list result(7);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &weight = saved[1], &bias = saved[2];
    const auto &data = ctx->saved_data;
    auto g = norm_backward(
        dense(grads[0], data.at("out_dtype").toScalarType()), saved[0],
        optional_input(weight), optional_input(bias), saved[3], saved[4],
        data.at("rms").toBool(), data.at("channels_first").toBool());
    // g: (dx, the weight and bias gradients as the rows of one tensor).
    result[0] = g[0];
    if (weight.defined()) result[1] = g[1][0];
    if (bias.defined()) result[2] = g[1][1];
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> selective_scan_autograd(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    int64_t num_dirs, int64_t height, int64_t width, bool reverse,
    int64_t num_threads, int64_t num_items, int64_t chunk_length,
    int64_t backward_threads, int64_t backward_items,
    const std::string &backward_kernel) {
  return SelectiveScanFunction::apply(
      u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_dirs, height,
      width, reverse, num_threads, num_items, chunk_length, backward_threads,
      backward_items, backward_kernel);
}

std::vector<at::Tensor> cross_scan_autograd(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool plane) {
  return CrossScanFunction::apply(u, delta, A, B, C, D, delta_bias,
                                  delta_softplus, plane);
}

std::vector<at::Tensor> wavefront_scan_autograd(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, bool delta_softplus,
    bool origin_br, int64_t tile_width, bool tiles_in_flight) {
  return WavefrontScanFunction::apply(
      x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
      delta_bias_l, delta_softplus, origin_br, tile_width, tiles_in_flight);
}

std::vector<at::Tensor> v2m_corner_scan_autograd(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool axis_col, int64_t backwards_mask, bool merge_corners) {
  return V2MCornerScanFunction::apply(u, delta, A, B, C, D, z, delta_bias,
                                      delta_softplus, axis_col,
                                      backwards_mask, merge_corners);
}

at::Tensor causal_conv1d_autograd(const at::Tensor &x,
                                  const at::Tensor &weight,
                                  const c10::optional<at::Tensor> &bias,
                                  bool reverse, bool silu) {
  return CausalConv1dFunction::apply(x, weight, bias, reverse, silu);
}

std::vector<at::Tensor> norm_autograd(const at::Tensor &x,
                                      const c10::optional<at::Tensor> &weight,
                                      const c10::optional<at::Tensor> &bias,
                                      double eps, bool rms,
                                      bool channels_first,
                                      at::ScalarType out_dtype) {
  return NormFunction::apply(x, weight, bias, eps, rms, channels_first,
                             out_dtype);
}

}  // namespace mmssm
