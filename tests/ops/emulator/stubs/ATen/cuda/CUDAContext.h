// The emulator's stand-in for ATen's CUDA context: device properties the
// kernels' launchers read (set by the test driver) and a null stream.
#pragma once

#include "cuda_emulator.h"

namespace cuda_emulator {
struct DeviceProperties {
  int sharedMemPerBlockOptin = 232448;  // an H100's
  int multiProcessorCount = 132;
};
inline DeviceProperties device_properties;
}  // namespace cuda_emulator

using cudaStream_t = int;

namespace at {
namespace cuda {
inline cuda_emulator::DeviceProperties *getCurrentDeviceProperties() {
  return &cuda_emulator::device_properties;
}
inline cudaStream_t getCurrentCUDAStream() { return 0; }
inline int current_device() { return 0; }
}  // namespace cuda
}  // namespace at

enum EmulatedDeviceAttribute { cudaDevAttrMaxSharedMemoryPerBlockOptin };

inline int cudaDeviceGetAttribute(int *value, EmulatedDeviceAttribute,
                                  int) {
  *value = cuda_emulator::device_properties.sharedMemPerBlockOptin;
  return 0;
}

enum EmulatedFunctionAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize,
  cudaFuncAttributePreferredSharedMemoryCarveout,
};
constexpr int cudaSharedmemCarveoutMaxShared = 100;

template <typename Kernel>
int cudaFuncSetAttribute(Kernel, EmulatedFunctionAttribute, int) {
  return 0;
}
