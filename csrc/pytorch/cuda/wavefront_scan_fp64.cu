// Wavefront-scan kernels for double inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "wavefront_scan_kernel.cuh"

namespace mmssm {
template void wavefront_scan_launch<double>(
    const WavefrontScanParams &, bool);
template int wavefront_backward_resident_blocks<double>(
    const WavefrontScanParams &);
}  // namespace mmssm
