// Tiled cross-scan kernels for c10::BFloat16 inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cross_scan_kernel.cuh"

namespace mmssm {
template void cross_scan_launch<c10::BFloat16>(const CrossScanParams &, bool);
}  // namespace mmssm
