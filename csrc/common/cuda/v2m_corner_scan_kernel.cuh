// V2M's corner scan (one pass along rows or columns from each of K corners),
// forward and backward, read and written in the spatial layout.
//
// For corner k, channel d and state n, along each line in the corner's walk
// order (h = 0 before the first pixel):
//   dt = delta + delta_bias (softplus of it if asked),
//   h = exp(dt A) h + dt B u,  y = (sum_n C h + D u) * silu(z).
// The walk order is pure indexing (see v2m_scan_params.h): no rotated or
// transposed copy is made.
//
// The lines are short (a row or column of a feature map), so each thread
// walks one line sequentially for one (channel, state) pair; the sum over
// states is a shuffle among a channel's lanes. The forward pass saves the
// state at the start of every kV2MChunk positions; the backward pass walks
// the chunks in reverse, recomputing a chunk's states in registers from the
// saved one, then runs the adjoint recurrence g = C dy + a' g' over it.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "v2m_scan_params.h"
// sum_over_states, sum_over_channels and sigmoid_acc.
#include "wavefront_scan_kernel.cuh"

namespace mmssm {

// This thread's place in the launch and its weights.
template <typename acc_t>
struct V2MLane {
  int lane, state, channel, batch, corner, line, lines, length;
  bool valid, group_active, backwards;
  long long feature_base;  // (batch, corner, channel) plane of delta/out
  long long u_base;        // plane of u
  long long z_base;        // plane of z
  long long corner_index;  // batch * corners + corner
  long long pixels;        // height * width
  int channel_index;       // corner * dim + channel
  int weight;              // channel_index * dstate + state
  acc_t A, D, bias, B_const, C_const;

  __device__ V2MLane(const V2MScanParams &p) {
    lane = threadIdx.x;
    const int channels_per_warp = 32 / p.lanes_per_channel;
    const int group = blockIdx.x * kV2MWarps + threadIdx.y;
    state = lane % p.lanes_per_channel;
    channel = group * channels_per_warp + lane / p.lanes_per_channel;
    group_active = group * channels_per_warp < p.dim;
    valid = channel < p.dim && state < p.dstate;
    const int safe_channel = channel < p.dim ? channel : 0;
    const int safe_state = state < p.dstate ? state : 0;
    batch = blockIdx.z / p.corners;
    corner = blockIdx.z % p.corners;
    line = blockIdx.y;
    lines = p.axis_col ? p.width : p.height;
    length = p.axis_col ? p.height : p.width;
    backwards = (p.backwards_mask >> corner) & 1;
    pixels = static_cast<long long>(p.height) * p.width;
    corner_index = static_cast<long long>(batch) * p.corners + corner;
    feature_base = (corner_index * p.dim + safe_channel) * pixels;
    u_base = p.shared_u
                 ? (static_cast<long long>(batch) * p.dim + safe_channel) *
                       pixels
                 : feature_base;
    z_base = p.shared_z
                 ? (static_cast<long long>(batch) * p.dim + safe_channel) *
                       pixels
                 : feature_base;
    channel_index = corner * p.dim + safe_channel;
    weight = channel_index * p.dstate + safe_state;
    A = valid ? static_cast<const acc_t *>(p.A)[weight] : acc_t(0);
    D = valid && p.D ? static_cast<const acc_t *>(p.D)[channel_index]
                     : acc_t(0);
    bias = valid && p.delta_bias
               ? static_cast<const acc_t *>(p.delta_bias)[channel_index]
               : acc_t(0);
    B_const = valid && !p.var_B ? static_cast<const acc_t *>(p.B)[weight]
                                : acc_t(0);
    C_const = valid && !p.var_C ? static_cast<const acc_t *>(p.C)[weight]
                                : acc_t(0);
  }

  // Start of the (batch, corner, state s) plane of variable B/C.
  __device__ __forceinline__ long long matrix_plane(
      const V2MScanParams &p, int s) const {
    return (corner_index * p.dstate + s) * pixels;
  }

  // Pixel (row-major index within the map) of walk position t.
  __device__ __forceinline__ long long pixel(const V2MScanParams &p,
                                             int t) const {
    const int position = backwards ? length - 1 - t : t;
    return p.axis_col ? static_cast<long long>(position) * p.width + line
                      : static_cast<long long>(line) * p.width + position;
  }

  __device__ __forceinline__ size_t chunk_state_index(const V2MScanParams &p,
                                                      int chunk) const {
    return ((((static_cast<size_t>(batch) * p.corners + corner) * lines +
              line) * (p.num_chunks - 1) +
             chunk - 1) * p.dim + channel) * p.dstate + state;
  }
};

// Inputs of one walk position for one lane, and its gate.
template <typename acc_t>
struct V2MStep {
  long long pixel;
  acc_t u, pre, dt, b, c, a;

  template <typename T>
  __device__ __forceinline__ void load(const V2MScanParams &p,
                                       const V2MLane<acc_t> &lane, int t) {
    pixel = lane.pixel(p, t);
    u = pre = b = c = acc_t(0);
    if (lane.valid) {
      u = to_acc<acc_t>(static_cast<const T *>(p.u)[lane.u_base + pixel]);
      pre = to_acc<acc_t>(
                static_cast<const T *>(p.delta)[lane.feature_base + pixel]) +
            lane.bias;
      const long long matrix = lane.matrix_plane(p, lane.state) + pixel;
      b = p.var_B ? to_acc<acc_t>(static_cast<const T *>(p.B)[matrix])
                  : lane.B_const;
      c = p.var_C ? to_acc<acc_t>(static_cast<const T *>(p.C)[matrix])
                  : lane.C_const;
    }
    dt = p.delta_softplus ? softplus(pre) : pre;
    a = exp_acc(dt * lane.A);
  }
};

template <typename T>
__global__ void __launch_bounds__(kV2MWarps * 32)
    v2m_corner_scan_fwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  const V2MLane<acc_t> lane(p);
  if (!lane.group_active) return;  // whole warp: no shuffle partner lost
  acc_t h = acc_t(0);
  for (int t = 0; t < lane.length; ++t) {
    if (t > 0 && t % kV2MChunk == 0 && lane.valid) {
      static_cast<acc_t *>(p.chunk_states)[lane.chunk_state_index(
          p, t / kV2MChunk)] = h;
    }
    V2MStep<acc_t> step;
    step.template load<T>(p, lane, t);
    h = step.a * h + step.dt * step.b * step.u;
    acc_t y = sum_over_states(step.c * h, p.lanes_per_channel) +
              lane.D * step.u;
    if (lane.valid && lane.state == 0) {
      if (p.z) {
        const acc_t z = to_acc<acc_t>(
            static_cast<const T *>(p.z)[lane.z_base + step.pixel]);
        y *= z * sigmoid_acc(z);
      }
      static_cast<T *>(p.out)[lane.feature_base + step.pixel] =
          from_acc<T>(y);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kV2MWarps * 32)
    v2m_corner_scan_bwd_kernel(V2MScanParams p) {
  using acc_t = typename AccumType<T>::type;
  const V2MLane<acc_t> lane(p);
  if (!lane.group_active) return;
  acc_t carried = acc_t(0);  // a g of the next walk position
  acc_t dA = acc_t(0), dD = acc_t(0), dbias = acc_t(0);
  acc_t dB_const = acc_t(0), dC_const = acc_t(0);
  for (int chunk = p.num_chunks - 1; chunk >= 0; --chunk) {
    const int first = chunk * kV2MChunk;
    const acc_t start =
        chunk > 0 && lane.valid
            ? static_cast<const acc_t *>(
                  p.chunk_states)[lane.chunk_state_index(p, chunk)]
            : acc_t(0);
    acc_t states[kV2MChunk];
    acc_t h = start;
#pragma unroll
    for (int s = 0; s < kV2MChunk; ++s) {
      if (first + s < lane.length) {
        V2MStep<acc_t> step;
        step.template load<T>(p, lane, first + s);
        h = step.a * h + step.dt * step.b * step.u;
      }
      states[s] = h;
    }
#pragma unroll
    for (int s = kV2MChunk - 1; s >= 0; --s) {
      if (first + s >= lane.length) continue;  // uniform over the warp
      V2MStep<acc_t> step;
      step.template load<T>(p, lane, first + s);
      const acc_t h_now = states[s];
      const acc_t h_before = s > 0 ? states[s - 1] : start;
      const acc_t dout =
          lane.valid ? to_acc<acc_t>(static_cast<const T *>(
                           p.dout)[lane.feature_base + step.pixel])
                     : acc_t(0);
      acc_t dy = dout;  // gradient of y before the gate
      acc_t dz = acc_t(0);
      if (p.z) {
        const acc_t y = sum_over_states(step.c * h_now, p.lanes_per_channel) +
                        lane.D * step.u;
        const acc_t z =
            lane.valid ? to_acc<acc_t>(static_cast<const T *>(
                             p.z)[lane.z_base + step.pixel])
                       : acc_t(0);
        const acc_t gate = sigmoid_acc(z);
        dy = dout * z * gate;
        dz = dout * y * gate * (acc_t(1) + z * (acc_t(1) - gate));
      }
      const acc_t g = step.c * dy + carried;
      carried = g * step.a;
      dA += g * h_before * step.a * step.dt;
      const acc_t ddt = sum_over_states(
          g * (h_before * step.a * lane.A + step.b * step.u),
          p.lanes_per_channel);
      const acc_t du =
          sum_over_states(g * step.dt * step.b, p.lanes_per_channel) +
          lane.D * dy;
      const acc_t dB = g * step.dt * step.u;
      const acc_t dC = dy * h_now;
      if (p.var_B) {
        const acc_t total = sum_over_channels(dB, p.lanes_per_channel);
        if (lane.lane < p.dstate)
          atomicAdd(static_cast<acc_t *>(p.dB) +
                        lane.matrix_plane(p, lane.lane) + step.pixel,
                    total);
      } else {
        dB_const += dB;
      }
      if (p.var_C) {
        const acc_t total = sum_over_channels(dC, p.lanes_per_channel);
        if (lane.lane < p.dstate)
          atomicAdd(static_cast<acc_t *>(p.dC) +
                        lane.matrix_plane(p, lane.lane) + step.pixel,
                    total);
      } else {
        dC_const += dC;
      }
      if (lane.valid && lane.state == 0) {
        const acc_t ddelta =
            p.delta_softplus ? ddt * sigmoid_acc(step.pre) : ddt;
        static_cast<T *>(p.ddelta)[lane.feature_base + step.pixel] =
            from_acc<T>(ddelta);
        dbias += ddelta;
        dD += dy * step.u;
        acc_t *du_out = static_cast<acc_t *>(p.du) + lane.u_base + step.pixel;
        if (p.shared_u) {
          atomicAdd(du_out, du);
        } else {
          *du_out = du;
        }
        if (p.z) {
          acc_t *dz_out =
              static_cast<acc_t *>(p.dz) + lane.z_base + step.pixel;
          if (p.shared_z) {
            atomicAdd(dz_out, dz);
          } else {
            *dz_out = dz;
          }
        }
      }
    }
  }
  if (lane.valid) {
    atomicAdd(static_cast<acc_t *>(p.dA) + lane.weight, dA);
    if (!p.var_B)
      atomicAdd(static_cast<acc_t *>(p.dB) + lane.weight, dB_const);
    if (!p.var_C)
      atomicAdd(static_cast<acc_t *>(p.dC) + lane.weight, dC_const);
    if (lane.state == 0) {
      if (p.dD) atomicAdd(static_cast<acc_t *>(p.dD) + lane.channel_index, dD);
      if (p.ddelta_bias)
        atomicAdd(static_cast<acc_t *>(p.ddelta_bias) + lane.channel_index,
                  dbias);
    }
  }
}

template <typename T>
void v2m_corner_scan_launch(const V2MScanParams &params, bool backward) {
  const int channels_per_warp = 32 / params.lanes_per_channel;
  const int groups = (params.dim + channels_per_warp - 1) / channels_per_warp;
  const dim3 grid((groups + kV2MWarps - 1) / kV2MWarps,
                  params.axis_col ? params.width : params.height,
                  params.batch * params.corners);
  const dim3 block(32, kV2MWarps);
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (backward) {
    v2m_corner_scan_bwd_kernel<T><<<grid, block, 0, stream>>>(params);
  } else {
    v2m_corner_scan_fwd_kernel<T><<<grid, block, 0, stream>>>(params);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mmssm
