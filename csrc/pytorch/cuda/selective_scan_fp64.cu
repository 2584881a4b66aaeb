// Selective-scan kernels for double inputs.
#include "selective_scan_launcher.cuh"

namespace mmssm {
template void selective_scan_launch<double>(const SelectiveScanParams &,
                                         ScanLayout, int, int, bool);
}  // namespace mmssm
