// Argument checks shared by the device-agnostic entry points of mmssm's
// compiled ops (csrc/pytorch/*.cpp). Every entry point runs them before it
// sets a device guard.
#pragma once

#include <ATen/ATen.h>

namespace mmssm {

// Accumulation type of an op: double for double inputs, else float.
inline at::ScalarType accum_type(at::ScalarType input_type) {
  return input_type == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks that argument `name` of op `op` is on the reference's device, has
// the dtype and shape given and is contiguous; the error names all of them.
inline void check_op_tensor(const char *op, const at::Tensor &tensor,
                            const char *name, const at::Tensor &reference,
                            at::ScalarType dtype, at::IntArrayRef shape) {
  TORCH_CHECK(tensor.device() == reference.device(), op, ": ", name,
              " must be on ", reference.device(), ", got ", tensor.device());
  TORCH_CHECK(tensor.scalar_type() == dtype, op, ": ", name,
              " must have dtype ", dtype, ", got ", tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == shape, op, ": ", name, " must have shape ",
              shape, ", got ", tensor.sizes());
  TORCH_CHECK(tensor.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Calls fn with a value of the element type of `dtype` (float, half,
// bfloat16 or double) and returns what it returns; any other dtype is an
// error naming op `op`.
template <typename Fn>
decltype(auto) with_element_type(const char *op, at::ScalarType dtype,
                                 Fn &&fn) {
  switch (dtype) {
    case at::kHalf:
      return fn(c10::Half{});
    case at::kBFloat16:
      return fn(c10::BFloat16{});
    case at::kDouble:
      return fn(double{});
    default:
      TORCH_CHECK(dtype == at::kFloat, op, ": unsupported dtype ", dtype,
                  " (expected float32, float16, bfloat16 or float64)");
      return fn(float{});
  }
}

}  // namespace mmssm
