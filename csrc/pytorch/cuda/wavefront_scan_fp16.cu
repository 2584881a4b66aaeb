// Wavefront-scan kernels for c10::Half inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "wavefront_scan_kernel.cuh"

namespace mmssm {
template void wavefront_scan_launch<c10::Half>(
    const WavefrontScanParams &, bool);
template int wavefront_backward_resident_blocks<c10::Half>(
    const WavefrontScanParams &);
}  // namespace mmssm
