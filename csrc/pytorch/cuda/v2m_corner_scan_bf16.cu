// V2M corner-scan kernels for c10::BFloat16 inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "v2m_corner_scan_kernel.cuh"

namespace mmssm {
template void v2m_corner_scan_launch<c10::BFloat16>(
    const V2MScanParams &, bool);
template bool v2m_corner_scan_planes<c10::BFloat16>(const V2MScanParams &);
}  // namespace mmssm
