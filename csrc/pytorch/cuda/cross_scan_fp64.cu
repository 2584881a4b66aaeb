// Tiled cross-scan kernels for double inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cross_scan_kernel.cuh"

namespace mmssm {
template void cross_scan_launch<double>(const CrossScanParams &, bool);
}  // namespace mmssm
