// LayerNorm / RMSNorm kernels for double inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "norm_kernel.cuh"

namespace mmssm {
template void norm_launch<double, double>(const NormParams &, bool);
}  // namespace mmssm
