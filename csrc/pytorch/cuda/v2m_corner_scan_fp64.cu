// V2M corner-scan kernels for double inputs.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "v2m_corner_scan_kernel.cuh"

namespace mmssm {
template void v2m_corner_scan_launch<double>(
    const V2MScanParams &, bool);
template bool v2m_corner_scan_planes<double>(const V2MScanParams &);
}  // namespace mmssm
