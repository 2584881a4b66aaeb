// Causal depthwise conv1d kernels for c10::Half inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "causal_conv1d_kernel.cuh"

namespace mmssm {
template void causal_conv1d_launch<c10::Half>(
    const CausalConv1dParams &, bool);
}  // namespace mmssm
