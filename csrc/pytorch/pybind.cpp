// Python bindings of mmssm._ext. The ops are registered with torch.library
// (schemas, fake implementations, autograd) in mmssm/ops/cuda_ops.py.
#include <torch/extension.h>

#include "ops.h"

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
        "Tiled or plane cross scan forward: returns (out, chunk_states, "
        "line_dt)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("plane"));
  m.def("cross_scan_backward", &mmssm::cross_scan_backward,
        "Tiled or plane cross scan backward: returns (du, ddelta, dA, dB, "
        "dC, dD, ddelta_bias)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("delta_bias"), py::arg("dout"),
        py::arg("chunk_states"), py::arg("line_dt"),
        py::arg("delta_softplus"), py::arg("plane"));
  m.def("wavefront_scan_forward", &mmssm::wavefront_scan_forward,
        "Mamba2D wavefront scan forward: returns (out, boundary states)",
        py::arg("x"), py::arg("delta_t"), py::arg("delta_l"), py::arg("A_t"),
        py::arg("A_l"), py::arg("B_t"), py::arg("B_l"), py::arg("C"),
        py::arg("D"), py::arg("delta_bias_t"), py::arg("delta_bias_l"),
        py::arg("delta_softplus"), py::arg("origin_br"),
        py::arg("tile_width"), py::arg("tiles_in_flight"));
  m.def("wavefront_scan_backward", &mmssm::wavefront_scan_backward,
        "Mamba2D wavefront scan backward: returns (dx, ddelta_t, ddelta_l, "
        "dA_t, dA_l, dB_t, dB_l, dC, dD, ddelta_bias_t, ddelta_bias_l)",
        py::arg("x"), py::arg("delta_t"), py::arg("delta_l"), py::arg("A_t"),
        py::arg("A_l"), py::arg("B_t"), py::arg("B_l"), py::arg("C"),
        py::arg("D"), py::arg("delta_bias_t"), py::arg("delta_bias_l"),
        py::arg("dout"), py::arg("boundary"), py::arg("delta_softplus"),
        py::arg("origin_br"), py::arg("tile_width"),
        py::arg("tiles_in_flight"));
  m.def("v2m_corner_scan_forward", &mmssm::v2m_corner_scan_forward,
        "V2M corner scan forward: returns (out, chunk_states)", py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("axis_col"),
        py::arg("backwards_mask"), py::arg("merge_corners"));
  m.def("v2m_corner_scan_backward", &mmssm::v2m_corner_scan_backward,
        "V2M corner scan backward: returns (du, ddelta, dA, dB, dC, dD, dz, "
        "ddelta_bias)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("dout"), py::arg("chunk_states"), py::arg("delta_softplus"),
        py::arg("axis_col"), py::arg("backwards_mask"),
        py::arg("merge_corners"));
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
  m.def("selective_scan_autograd", &mmssm::selective_scan_autograd,
        "Selective scan as an autograd Function: returns (out, y_pregate, "
        "chunk_states)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("num_dirs"), py::arg("height"),
        py::arg("width"), py::arg("reverse"), py::arg("num_threads"),
        py::arg("num_items"), py::arg("chunk_length"),
        py::arg("backward_threads"), py::arg("backward_items"),
        py::arg("backward_kernel"));
  m.def("cross_scan_autograd", &mmssm::cross_scan_autograd,
        "Tiled or plane cross scan as an autograd Function: returns (out, "
        "chunk_states, line_dt)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("plane"));
  m.def("wavefront_scan_autograd", &mmssm::wavefront_scan_autograd,
        "Mamba2D wavefront scan as an autograd Function: returns (out, "
        "boundary states)",
        py::arg("x"), py::arg("delta_t"), py::arg("delta_l"), py::arg("A_t"),
        py::arg("A_l"), py::arg("B_t"), py::arg("B_l"), py::arg("C"),
        py::arg("D"), py::arg("delta_bias_t"), py::arg("delta_bias_l"),
        py::arg("delta_softplus"), py::arg("origin_br"),
        py::arg("tile_width"), py::arg("tiles_in_flight"));
  m.def("v2m_corner_scan_autograd", &mmssm::v2m_corner_scan_autograd,
        "V2M corner scan as an autograd Function: returns (out, "
        "chunk_states)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("axis_col"),
        py::arg("backwards_mask"), py::arg("merge_corners"));
  m.def("causal_conv1d_autograd", &mmssm::causal_conv1d_autograd,
        "Causal depthwise conv1d (+ SiLU) as an autograd Function: returns "
        "out",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("reverse"),
        py::arg("silu"));
  m.def("norm_autograd", &mmssm::norm_autograd,
        "LayerNorm / RMSNorm as an autograd Function: returns (out, mean, "
        "rstd)",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("rms"), py::arg("channels_first"), py::arg("out_dtype"));
}
