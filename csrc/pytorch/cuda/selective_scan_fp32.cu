// Selective-scan kernels for float inputs.
#include "selective_scan_launcher.cuh"

namespace mmssm {
template void selective_scan_launch<float>(const SelectiveScanParams &,
                                         ScanLayout, int, int, bool);
}  // namespace mmssm
