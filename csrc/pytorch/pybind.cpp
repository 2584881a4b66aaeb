// Python bindings of mmssm._ext. The ops are registered with torch.library
// (schemas, fake implementations, autograd) in mmssm/ops/cuda_ops.py.
#include <torch/extension.h>

#include <vector>

namespace mmssm {

std::vector<at::Tensor> selective_scan_forward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, bool delta_softplus,
    int64_t num_dirs, int64_t height, int64_t width, int64_t num_threads,
    int64_t num_items);

std::vector<at::Tensor> selective_scan_backward(
    const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
    const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &delta_bias, const at::Tensor &dout,
    const c10::optional<at::Tensor> &y_pregate,
    const at::Tensor &chunk_states, bool delta_softplus, int64_t num_dirs,
    int64_t height, int64_t width, int64_t num_threads, int64_t num_items,
    bool warp_per_sequence);

}  // namespace mmssm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_forward", &mmssm::selective_scan_forward,
        "Selective scan forward: returns (out, y_pregate, chunk_states)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("num_dirs"), py::arg("height"),
        py::arg("width"), py::arg("num_threads"), py::arg("num_items"));
  m.def("selective_scan_backward", &mmssm::selective_scan_backward,
        "Selective scan backward: returns (du, ddelta, dA, dB, dC, dD, dz, "
        "ddelta_bias)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("dout"), py::arg("y_pregate"), py::arg("chunk_states"),
        py::arg("delta_softplus"), py::arg("num_dirs"), py::arg("height"),
        py::arg("width"), py::arg("num_threads"), py::arg("num_items"),
        py::arg("warp_per_sequence"));
}
