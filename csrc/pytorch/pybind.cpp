// Python bindings of mmssm._ext. The ops are registered with torch.library
// (schemas, fake implementations, autograd) in mmssm/ops/cuda_ops.py.
#include <torch/extension.h>

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
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus);

std::vector<at::Tensor> cross_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const at::Tensor &chunk_states, const at::Tensor &line_dt,
    bool delta_softplus);

std::vector<at::Tensor> wavefront_scan_forward(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, bool delta_softplus,
    bool origin_br, int64_t tile_width);

std::vector<at::Tensor> wavefront_scan_backward(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, const at::Tensor &dout,
    const at::Tensor &boundary, bool delta_softplus, bool origin_br,
    int64_t tile_width);

std::vector<at::Tensor> v2m_corner_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    bool axis_col, int64_t backwards_mask);

std::vector<at::Tensor> v2m_corner_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const at::Tensor &chunk_states, bool delta_softplus, bool axis_col,
    int64_t backwards_mask);

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

}  // namespace mmssm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_forward", &mmssm::selective_scan_forward,
        "Selective scan forward: returns (out, y_pregate, chunk_states)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("num_dirs"), py::arg("height"),
        py::arg("width"), py::arg("reverse"), py::arg("num_threads"),
        py::arg("num_items"), py::arg("chunk_length"));
  m.def("selective_scan_backward", &mmssm::selective_scan_backward,
        "Selective scan backward: returns (du, ddelta, dA, dB, dC, dD, dz, "
        "ddelta_bias)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("dout"), py::arg("y_pregate"), py::arg("chunk_states"),
        py::arg("delta_softplus"), py::arg("num_dirs"), py::arg("height"),
        py::arg("width"), py::arg("reverse"), py::arg("num_threads"),
        py::arg("num_items"), py::arg("kernel"));
  m.def("cross_scan_forward", &mmssm::cross_scan_forward,
        "Tiled cross scan forward: returns (out, chunk_states, line_dt)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("delta_bias"),
        py::arg("delta_softplus"));
  m.def("cross_scan_backward", &mmssm::cross_scan_backward,
        "Tiled cross scan backward: returns (du, ddelta, dA, dB, dC, dD, "
        "ddelta_bias)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("delta_bias"), py::arg("dout"),
        py::arg("chunk_states"), py::arg("line_dt"),
        py::arg("delta_softplus"));
  m.def("wavefront_scan_forward", &mmssm::wavefront_scan_forward,
        "Mamba2D wavefront scan forward: returns (out, boundary states)",
        py::arg("x"), py::arg("delta_t"), py::arg("delta_l"), py::arg("A_t"),
        py::arg("A_l"), py::arg("B_t"), py::arg("B_l"), py::arg("C"),
        py::arg("D"), py::arg("delta_bias_t"), py::arg("delta_bias_l"),
        py::arg("delta_softplus"), py::arg("origin_br"),
        py::arg("tile_width"));
  m.def("wavefront_scan_backward", &mmssm::wavefront_scan_backward,
        "Mamba2D wavefront scan backward: returns (dx, ddelta_t, ddelta_l, "
        "dA_t, dA_l, dB_t, dB_l, dC, dD, ddelta_bias_t, ddelta_bias_l)",
        py::arg("x"), py::arg("delta_t"), py::arg("delta_l"), py::arg("A_t"),
        py::arg("A_l"), py::arg("B_t"), py::arg("B_l"), py::arg("C"),
        py::arg("D"), py::arg("delta_bias_t"), py::arg("delta_bias_l"),
        py::arg("dout"), py::arg("boundary"), py::arg("delta_softplus"),
        py::arg("origin_br"), py::arg("tile_width"));
  m.def("v2m_corner_scan_forward", &mmssm::v2m_corner_scan_forward,
        "V2M corner scan forward: returns (out, chunk_states)", py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("axis_col"),
        py::arg("backwards_mask"));
  m.def("v2m_corner_scan_backward", &mmssm::v2m_corner_scan_backward,
        "V2M corner scan backward: returns (du, ddelta, dA, dB, dC, dD, dz, "
        "ddelta_bias)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("dout"), py::arg("chunk_states"), py::arg("delta_softplus"),
        py::arg("axis_col"), py::arg("backwards_mask"));
  m.def("causal_conv1d_forward", &mmssm::causal_conv1d_forward,
        "Causal depthwise conv1d (+ SiLU) forward: returns out", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("reverse"),
        py::arg("silu"));
  m.def("causal_conv1d_backward", &mmssm::causal_conv1d_backward,
        "Causal depthwise conv1d (+ SiLU) backward: returns (dx, dweight, "
        "dbias)",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("dout"),
        py::arg("reverse"), py::arg("silu"));
  m.def("norm_forward", &mmssm::norm_forward,
        "LayerNorm / RMSNorm forward: returns (out, mean, rstd)",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("rms"), py::arg("channels_first"), py::arg("out_dtype"));
  m.def("norm_backward", &mmssm::norm_backward,
        "LayerNorm / RMSNorm backward: returns (dx, (dweight, dbias) as the "
        "rows of one tensor)",
        py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("mean"), py::arg("rstd"), py::arg("rms"),
        py::arg("channels_first"));
}
