// Device-agnostic entry points of Mamba2D's wavefront scan: argument checks,
// output allocation and dispatch on the element type. See
// wavefront_scan_params.h for the layouts; mmssm/ops/cuda_ops.py is the
// Python side.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "grad_buffers.h"
#include "op_checks.h"
#include "wavefront_scan_params.h"

namespace mmssm {
namespace {

constexpr char kOpName[] = "wavefront scan";

int next_power_of_two(int value) {
  int power = 1;
  while (power < value) power <<= 1;
  return power;
}

// Checks every input and fills the shapes and input pointers of the params.
WavefrontScanParams make_wavefront_params(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, bool delta_softplus,
    bool origin_br, int64_t tile_width) {
  TORCH_CHECK(x.is_cuda(), "wavefront scan: x must be a CUDA tensor, got ",
              x.device());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                  dtype == at::kBFloat16 || dtype == at::kDouble,
              "wavefront scan: x must be float32, float16, bfloat16 or "
              "float64, got ",
              dtype);
  TORCH_CHECK(x.dim() == 4, "wavefront scan: x must be (B, H, W, E), got "
              "shape ", x.sizes());
  TORCH_CHECK(A_t.dim() == 2, "wavefront scan: A_t must be (E, N), got "
              "shape ", A_t.sizes());
  const int64_t batch = x.size(0), height = x.size(1), width = x.size(2),
                channels = x.size(3), dstate = A_t.size(1);
  TORCH_CHECK(batch > 0 && height > 0 && width > 0 && channels > 0,
              "wavefront scan: x must be non-empty, got shape ", x.sizes());
  TORCH_CHECK(batch <= 65535, "wavefront scan: batch must be at most 65535, "
              "got ", batch);
  TORCH_CHECK(dstate >= 1 && dstate <= 32, "wavefront scan: the state size "
              "N (A_t.size(1)) must be in [1, 32], got ", dstate);
  TORCH_CHECK(tile_width >= 1 && tile_width <= kWavefrontMaxTileWidth,
              "wavefront scan: tile_width must be in [1, ",
              kWavefrontMaxTileWidth, "], got ", tile_width);
  const auto acc = accum_type(dtype);
  check_op_tensor(kOpName, x, "x", x, dtype, {batch, height, width, channels});
  check_op_tensor(kOpName, delta_t, "delta_t", x, dtype,
                  {batch, height, width, channels});
  check_op_tensor(kOpName, delta_l, "delta_l", x, dtype,
                  {batch, height, width, channels});
  check_op_tensor(kOpName, A_t, "A_t", x, acc, {channels, dstate});
  check_op_tensor(kOpName, A_l, "A_l", x, acc, {channels, dstate});
  check_op_tensor(kOpName, B_t, "B_t", x, dtype,
                  {batch, height, width, dstate});
  check_op_tensor(kOpName, B_l, "B_l", x, dtype,
                  {batch, height, width, dstate});
  check_op_tensor(kOpName, C, "C", x, dtype, {batch, height, width, dstate});
  if (D.has_value()) check_op_tensor(kOpName, *D, "D", x, acc, {channels});
  if (delta_bias_t.has_value())
    check_op_tensor(kOpName, *delta_bias_t, "delta_bias_t", x, acc, {channels});
  if (delta_bias_l.has_value())
    check_op_tensor(kOpName, *delta_bias_l, "delta_bias_l", x, acc, {channels});

  WavefrontScanParams params;
  params.batch = batch;
  params.height = height;
  params.width = width;
  params.channels = channels;
  params.dstate = dstate;
  params.lanes_per_channel = next_power_of_two(dstate);
  const int channels_per_warp = 32 / params.lanes_per_channel;
  params.num_groups = (channels + channels_per_warp - 1) / channels_per_warp;
  params.tile_width = std::min<int64_t>(tile_width, width);
  params.num_tiles = (width + params.tile_width - 1) / params.tile_width;
  params.delta_softplus = delta_softplus;
  params.origin_br = origin_br;
  params.x = x.data_ptr();
  params.delta_t = delta_t.data_ptr();
  params.delta_l = delta_l.data_ptr();
  params.A_t = A_t.data_ptr();
  params.A_l = A_l.data_ptr();
  params.B_t = B_t.data_ptr();
  params.B_l = B_l.data_ptr();
  params.C = C.data_ptr();
  params.D = D.has_value() ? D->data_ptr() : nullptr;
  params.delta_bias_t = delta_bias_t.has_value() ? delta_bias_t->data_ptr()
                                                 : nullptr;
  params.delta_bias_l = delta_bias_l.has_value() ? delta_bias_l->data_ptr()
                                                 : nullptr;
  return params;
}

// Zeroed ticket, hand-over progress and `slots` slot generations
// (TileSyncLayout).
at::Tensor tile_sync_buffer(const WavefrontScanParams &params, int slots,
                            const at::Tensor &like) {
  const TileSyncLayout layout(params);
  TORCH_CHECK(layout.sequences * params.num_tiles <= INT32_MAX,
              "wavefront scan: tiles in flight take one block per tile, at "
              "most ", INT32_MAX, ", got ",
              layout.sequences * params.num_tiles);
  return at::zeros({layout.size(slots)}, like.options().dtype(at::kInt));
}

std::vector<int64_t> boundary_shape(const WavefrontScanParams &params) {
  return {params.batch, params.num_groups, params.num_tiles - 1,
          params.height, 32};
}

void launch_wavefront(const WavefrontScanParams &params, at::ScalarType dtype,
                      bool backward) {
  with_element_type(kOpName, dtype, [&](auto type) {
    wavefront_scan_launch<decltype(type)>(params, backward);
  });
}

}  // namespace

std::vector<at::Tensor> wavefront_scan_forward(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, bool delta_softplus,
    bool origin_br, int64_t tile_width, bool tiles_in_flight) {
  WavefrontScanParams params = make_wavefront_params(
      x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
      delta_bias_l, delta_softplus, origin_br, tile_width);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty_like(x);
  at::Tensor boundary = at::empty(
      boundary_shape(params), x.options().dtype(accum_type(x.scalar_type())));
  params.out = out.data_ptr();
  params.boundary = boundary.data_ptr();
  at::Tensor tile_sync;
  if (tiles_in_flight && params.num_tiles > 1) {
    tile_sync = tile_sync_buffer(params, 0, x);
    params.tile_sync = tile_sync.data_ptr<int>();
  }
  launch_wavefront(params, x.scalar_type(), false);
  return {out, boundary};
}

std::vector<at::Tensor> wavefront_scan_backward(
    const at::Tensor &x, const at::Tensor &delta_t, const at::Tensor &delta_l,
    const at::Tensor &A_t, const at::Tensor &A_l, const at::Tensor &B_t,
    const at::Tensor &B_l, const at::Tensor &C,
    const c10::optional<at::Tensor> &D,
    const c10::optional<at::Tensor> &delta_bias_t,
    const c10::optional<at::Tensor> &delta_bias_l, const at::Tensor &dout,
    const at::Tensor &boundary, bool delta_softplus, bool origin_br,
    int64_t tile_width, bool tiles_in_flight) {
  WavefrontScanParams params = make_wavefront_params(
      x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
      delta_bias_l, delta_softplus, origin_br, tile_width);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto dtype = x.scalar_type();
  const auto acc_options = x.options().dtype(accum_type(dtype));
  check_op_tensor(kOpName, dout, "dout", x, dtype, x.sizes());
  check_op_tensor(kOpName, boundary, "boundary", x, accum_type(dtype),
                  boundary_shape(params));
  // One tile scratch per sequence, or with tiles in flight one per block
  // the device runs at once (at most one per tile of every sequence).
  int64_t scratch_blocks = params.batch * params.num_groups;
  int64_t adjoint_columns = 1;
  at::Tensor tile_sync;
  if (tiles_in_flight && params.num_tiles > 1) {
    int64_t resident = 0;
    with_element_type(kOpName, dtype, [&](auto type) {
      resident = wavefront_backward_resident_blocks<decltype(type)>(params);
    });
    TORCH_CHECK(resident > 0, "wavefront scan: the backward kernel cannot "
                "run a block of ", params.tile_width, " warps on this device");
    params.num_slots = static_cast<int>(
        std::min(resident, scratch_blocks * params.num_tiles));
    scratch_blocks = params.num_slots;
    adjoint_columns = params.num_tiles - 1;
    tile_sync = tile_sync_buffer(params, params.num_slots, x);
    params.tile_sync = tile_sync.data_ptr<int>();
  }
  at::Tensor scratch = at::empty(
      {scratch_blocks, params.height, params.tile_width, 32}, acc_options);
  at::Tensor right_adjoint = at::empty(
      {adjoint_columns, params.batch, params.num_groups, params.height, 32},
      acc_options);
  at::Tensor dx = at::empty_like(x);
  const auto step_grads =
      carve({delta_t.sizes(), delta_l.sizes()}, delta_t.options(), false);
  const at::Tensor &ddelta_t = step_grads[0], &ddelta_l = step_grads[1];
  const auto weight_grads =
      carve({A_t.sizes(), A_l.sizes(), shape_or_empty(D),
             shape_or_empty(delta_bias_t), shape_or_empty(delta_bias_l)},
            acc_options, true);
  const at::Tensor &dA_t = weight_grads[0], &dA_l = weight_grads[1];
  const at::Tensor &dD = weight_grads[2];
  const at::Tensor &ddelta_bias_t = weight_grads[3];
  const at::Tensor &ddelta_bias_l = weight_grads[4];
  const auto projection_grads =
      carve({B_t.sizes(), B_l.sizes(), C.sizes()}, acc_options, true);
  const at::Tensor &dB_t = projection_grads[0], &dB_l = projection_grads[1];
  const at::Tensor &dC = projection_grads[2];
  params.boundary = const_cast<void *>(boundary.data_ptr());
  params.dout = dout.data_ptr();
  params.scratch = scratch.data_ptr();
  params.right_adjoint = right_adjoint.data_ptr();
  params.dx = dx.data_ptr();
  params.ddelta_t = ddelta_t.data_ptr();
  params.ddelta_l = ddelta_l.data_ptr();
  params.dA_t = dA_t.data_ptr();
  params.dA_l = dA_l.data_ptr();
  params.dB_t = dB_t.data_ptr();
  params.dB_l = dB_l.data_ptr();
  params.dC = dC.data_ptr();
  params.dD = D.has_value() ? dD.data_ptr() : nullptr;
  params.ddelta_bias_t =
      delta_bias_t.has_value() ? ddelta_bias_t.data_ptr() : nullptr;
  params.ddelta_bias_l =
      delta_bias_l.has_value() ? ddelta_bias_l.data_ptr() : nullptr;
  launch_wavefront(params, dtype, true);
  return {dx,   ddelta_t, ddelta_l, dA_t,          dA_l,         dB_t,
          dB_l, dC,       dD,       ddelta_bias_t, ddelta_bias_l};
}

}  // namespace mmssm
