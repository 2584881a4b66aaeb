// The emulator's stand-in for c10's CUDA error checks: nothing to check.
#pragma once

#define C10_CUDA_CHECK(expression) (void)(expression)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() (void)0
