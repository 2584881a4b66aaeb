// Wavefront-scan kernels for float inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "wavefront_scan_kernel.cuh"

namespace mmssm {
template void wavefront_scan_launch<float>(
    const WavefrontScanParams &, bool);
template int wavefront_backward_resident_blocks<float>(
    const WavefrontScanParams &);
}  // namespace mmssm
