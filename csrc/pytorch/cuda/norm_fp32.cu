// LayerNorm / RMSNorm kernels for float inputs (float, float16 and bfloat16 outputs).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "norm_kernel.cuh"

namespace mmssm {
template void norm_launch<float, float>(const NormParams &, bool);
template void norm_launch<float, c10::Half>(const NormParams &, bool);
template void norm_launch<float, c10::BFloat16>(const NormParams &, bool);
}  // namespace mmssm
