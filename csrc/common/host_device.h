// MMSSM_HOST_DEVICE marks the helpers of the params headers that both the
// host code and the CUDA kernels call.
#pragma once

#if defined(__CUDACC__)
#define MMSSM_HOST_DEVICE __host__ __device__
#else
#define MMSSM_HOST_DEVICE
#endif
