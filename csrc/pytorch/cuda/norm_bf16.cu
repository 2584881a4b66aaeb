// LayerNorm / RMSNorm kernels for c10::BFloat16 inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "norm_kernel.cuh"

namespace mmssm {
template void norm_launch<c10::BFloat16, c10::BFloat16>(const NormParams &, bool);
}  // namespace mmssm
