// Several tensors carved out of one allocation, for the gradients and saved
// buffers of mmssm's compiled ops: one allocation (and one memset where
// zeroed) instead of one of each per tensor. Each costs microseconds of host
// time, and an op's backward pass returns up to eleven tensors.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <vector>

namespace mmssm {

// Whether carve() may put its tensors in one allocation on this thread.
// The outputs of a torch.library op must not alias one another, so the
// entry points carve separate tensors unless called from one of the C++
// autograd Functions (autograd.cpp), which allow it while they run.
inline bool &shared_buffers_allowed() {
  thread_local bool allowed = false;
  return allowed;
}

// Allows shared buffers for the scope's lifetime.
class SharedBuffersScope {
 public:
  SharedBuffersScope() : previous_(shared_buffers_allowed()) {
    shared_buffers_allowed() = true;
  }
  ~SharedBuffersScope() { shared_buffers_allowed() = previous_; }
  SharedBuffersScope(const SharedBuffersScope &) = delete;
  SharedBuffersScope &operator=(const SharedBuffersScope &) = delete;

 private:
  bool previous_;
};

// Contiguous tensors of the given shapes in `options`, zero-filled where
// `zeroed`: all in one buffer where shared_buffers_allowed(), each starting
// on a 256-byte boundary as the caching allocator's own allocations do,
// else one allocation each. Carve together only tensors whose lifetimes are
// alike: a shared storage lives as long as any of its tensors.
inline std::vector<at::Tensor> carve(
    std::initializer_list<at::IntArrayRef> shapes,
    const at::TensorOptions &options, bool zeroed) {
  if (!shared_buffers_allowed()) {
    std::vector<at::Tensor> tensors;
    for (const auto &shape : shapes)
      tensors.push_back(zeroed ? at::zeros(shape, options)
                               : at::empty(shape, options));
    return tensors;
  }
  const int64_t align = 256 / static_cast<int64_t>(options.dtype().itemsize());
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (const auto &shape : shapes) {
    offsets.push_back(total);
    total += (c10::multiply_integers(shape) + align - 1) / align * align;
  }
  at::Tensor buffer = zeroed ? at::zeros({total}, options)
                             : at::empty({total}, options);
  std::vector<at::Tensor> tensors;
  size_t index = 0;
  for (const auto &shape : shapes) {
    std::vector<int64_t> strides(shape.size());
    int64_t stride = 1;
    for (size_t d = shape.size(); d-- > 0;) {
      strides[d] = stride;
      stride *= std::max<int64_t>(shape[d], 1);
    }
    tensors.push_back(buffer.as_strided(shape, strides, offsets[index++]));
  }
  return tensors;
}

// The shape of an optional tensor, or {0} where it is absent.
inline at::IntArrayRef shape_or_empty(const c10::optional<at::Tensor> &t) {
  static const int64_t kEmpty[] = {0};
  return t.has_value() ? t->sizes() : at::IntArrayRef(kEmpty);
}

// The zeroed gradients of a scan's weights (A, D, delta_bias; empty where
// absent) and of its B and C projections, each group carved together.
struct ScanGrads {
  at::Tensor dA, dD, ddelta_bias, dB, dC;
};

inline ScanGrads scan_grads(const at::Tensor &A,
                            const c10::optional<at::Tensor> &D,
                            const c10::optional<at::Tensor> &delta_bias,
                            const at::Tensor &B, const at::Tensor &C,
                            const at::TensorOptions &acc_options) {
  auto weights = carve({A.sizes(), shape_or_empty(D),
                        shape_or_empty(delta_bias)},
                       acc_options, true);
  auto projections = carve({B.sizes(), C.sizes()}, acc_options, true);
  return {weights[0], weights[1], weights[2], projections[0],
          projections[1]};
}

}  // namespace mmssm
