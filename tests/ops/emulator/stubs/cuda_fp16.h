// The emulator needs no CUDA half-precision types.
#pragma once
