// Selective-scan kernels for c10::BFloat16 inputs.
#include "selective_scan_launcher.cuh"

namespace mmssm {
template void selective_scan_launch<c10::BFloat16>(const SelectiveScanParams &,
                                         ScanLayout, int, int, bool);
}  // namespace mmssm
