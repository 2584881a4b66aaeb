// V2M corner-scan kernels for float inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "v2m_corner_scan_kernel.cuh"

namespace mmssm {
template void v2m_corner_scan_launch<float>(
    const V2MScanParams &, bool);
template bool v2m_corner_scan_planes<float>(const V2MScanParams &);
}  // namespace mmssm
