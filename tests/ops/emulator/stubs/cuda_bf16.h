// The emulator needs no CUDA bfloat16 types.
#pragma once
