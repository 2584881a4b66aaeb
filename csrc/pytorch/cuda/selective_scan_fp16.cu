// Selective-scan kernels for c10::Half inputs.
#include "selective_scan_launcher.cuh"

namespace mmssm {
template void selective_scan_launch<c10::Half>(const SelectiveScanParams &,
                                         ScanLayout, int, int, bool);
}  // namespace mmssm
