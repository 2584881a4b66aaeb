// Causal depthwise conv1d kernels for double inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "causal_conv1d_kernel.cuh"

namespace mmssm {
template void causal_conv1d_launch<double>(
    const CausalConv1dParams &, bool);
}  // namespace mmssm
