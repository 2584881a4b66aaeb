// Entry points of mmssm's compiled ops (csrc/pytorch/*.cpp), bound in
// pybind.cpp. The *_autograd functions run an op's forward as a C++
// autograd Function whose backward calls the op's backward entry point
// (autograd.cpp): eager training calls them, so the backward pass runs no
// Python.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mmssm {

std::vector<at::Tensor> selective_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    int64_t num_dirs, int64_t height, int64_t width, bool reverse,
    int64_t num_threads, int64_t num_items, int64_t chunk_length);

std::vector<at::Tensor> selective_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const c10::optional<at::Tensor> &y_pregate,
    const at::Tensor &chunk_states, bool delta_softplus, int64_t num_dirs,
    int64_t height, int64_t width, bool reverse, int64_t num_threads,
    int64_t num_items, const std::string &kernel);

std::vector<at::Tensor> cross_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool plane);

std::vector<at::Tensor> cross_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const at::Tensor &chunk_states, const at::Tensor &line_dt,
    bool delta_softplus, bool plane);

std::vector<at::Tensor> wavefront_scan_forward(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, bool delta_softplus,
    bool origin_br, int64_t tile_width, bool tiles_in_flight);

std::vector<at::Tensor> wavefront_scan_backward(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, const at::Tensor &dout,
    const at::Tensor &boundary, bool delta_softplus, bool origin_br,
    int64_t tile_width, bool tiles_in_flight);

std::vector<at::Tensor> v2m_corner_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool axis_col, int64_t backwards_mask, bool merge_corners);

std::vector<at::Tensor> v2m_corner_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const at::Tensor &chunk_states, bool delta_softplus, bool axis_col,
    int64_t backwards_mask, bool merge_corners);

at::Tensor causal_conv1d_forward(const at::Tensor &x, const at::Tensor &weight,
                                 const c10::optional<at::Tensor> &bias,
                                 bool reverse, bool silu);

std::vector<at::Tensor> causal_conv1d_backward(
    const at::Tensor &x, const at::Tensor &weight,
    const c10::optional<at::Tensor> &bias, const at::Tensor &dout,
    bool reverse, bool silu);

std::vector<at::Tensor> norm_forward(const at::Tensor &x,
                                     const c10::optional<at::Tensor> &weight,
                                     const c10::optional<at::Tensor> &bias,
                                     double eps, bool rms, bool channels_first,
                                     at::ScalarType out_dtype);

std::vector<at::Tensor> norm_backward(const at::Tensor &dout,
                                      const at::Tensor &x,
                                      const c10::optional<at::Tensor> &weight,
                                      const c10::optional<at::Tensor> &bias,
                                      const at::Tensor &mean,
                                      const at::Tensor &rstd, bool rms,
                                      bool channels_first);

// Autograd Functions of the ops (autograd.cpp). Each takes the op's forward
// arguments, plus the selective scan's backward launch choice, and returns
// the forward entry point's outputs; the outputs other than the first carry
// no gradient.

std::vector<at::Tensor> selective_scan_autograd(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    int64_t num_dirs, int64_t height, int64_t width, bool reverse,
    int64_t num_threads, int64_t num_items, int64_t chunk_length,
    int64_t backward_threads, int64_t backward_items,
    const std::string &backward_kernel);

std::vector<at::Tensor> cross_scan_autograd(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool plane);

std::vector<at::Tensor> wavefront_scan_autograd(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, bool delta_softplus,
    bool origin_br, int64_t tile_width, bool tiles_in_flight);

std::vector<at::Tensor> v2m_corner_scan_autograd(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool axis_col, int64_t backwards_mask, bool merge_corners);

at::Tensor causal_conv1d_autograd(const at::Tensor &x,
                                  const at::Tensor &weight,
                                  const c10::optional<at::Tensor> &bias,
                                  bool reverse, bool silu);

std::vector<at::Tensor> norm_autograd(const at::Tensor &x,
                                      const c10::optional<at::Tensor> &weight,
                                      const c10::optional<at::Tensor> &bias,
                                      double eps, bool rms,
                                      bool channels_first,
                                      at::ScalarType out_dtype);

}  // namespace mmssm
