// Runs mmssm's CUDA kernel sources on the CPU, for tests on machines without
// a GPU (tests/ops/cuda_emulation.py builds them with it).
//
// Each CUDA thread of a block is a std::thread, so the threads of a block
// run concurrently and meet at __syncthreads as on a GPU; blocks run one
// after another. Warps are 32 consecutive threads in x-major order (the
// last one may be partial). Warp shuffles exchange values through a
// per-warp buffer between two warp barriers, so every lane of a warp must
// reach them, as CUDA's full masks require. __shared__ variables are
// static (one block runs at a time), dynamic shared memory is one buffer
// per launch filled with a garbage pattern, and atomics hold one mutex.
// __CUDA_ARCH__ is not defined: kernels take their generic paths (no sm_90
// vector atomics). The fast-math intrinsics are the C library's functions.
//
// What it does not show: timing, races between blocks, and anything that
// depends on the GPU's scheduling within a warp beyond the shuffles. Blocks
// that wait for blocks launched before them never wait here.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

struct EmulatedIndex {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local EmulatedIndex threadIdx;
inline EmulatedIndex blockIdx;
inline EmulatedIndex blockDim;
inline EmulatedIndex gridDim;

struct float4 {
  float x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) {
  return {x, y, z, w};
}

using std::max;
using std::min;

inline unsigned __umulhi(unsigned x, unsigned y) {
  return static_cast<unsigned>((static_cast<unsigned long long>(x) * y) >> 32);
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

namespace cuda_emulator {

// One warp's exchange buffer for shuffles, and its threads' barrier.
struct Warp {
  explicit Warp(int lanes) : arrived(lanes) {}
  std::barrier<> arrived;
  double values[32];
  long long integers[32];
};

inline thread_local int linear_thread = 0;

struct Block {
  std::unique_ptr<std::barrier<>> threads;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline Block block;
inline unsigned char *dynamic_shared_memory = nullptr;
inline std::mutex atomic_mutex;

inline unsigned char *dynamic_shared() { return dynamic_shared_memory; }

// Every lane publishes `value`; lane `source` is read where `take`.
template <typename T>
T exchange(T value, int source, bool take) {
  Warp &warp = *block.warps[linear_thread >> 5];
  const int lane = linear_thread & 31;
  if constexpr (std::is_integral_v<T>) {
    warp.integers[lane] = value;
  } else {
    warp.values[lane] = value;
  }
  warp.arrived.arrive_and_wait();
  T result = value;
  if (take) {
    if constexpr (std::is_integral_v<T>) {
      result = static_cast<T>(warp.integers[source]);
    } else {
      result = static_cast<T>(warp.values[source]);
    }
  }
  warp.arrived.arrive_and_wait();
  return result;
}

// Runs `kernel(args...)` on a grid of blocks of `threads` threads, with
// `shared_bytes` of dynamic shared memory.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 threads, size_t shared_bytes,
            Args... args) {
  const int count = threads.x * threads.y * threads.z;
  std::vector<unsigned char> shared(shared_bytes + 64);
  dynamic_shared_memory = reinterpret_cast<unsigned char *>(
      (reinterpret_cast<uintptr_t>(shared.data()) + 63) & ~uintptr_t(63));
  gridDim = {grid.x, grid.y, grid.z};
  blockDim = {threads.x, threads.y, threads.z};
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        std::fill(shared.begin(), shared.end(), 0xA5);
        blockIdx = {x, y, z};
        block.threads = std::make_unique<std::barrier<>>(count);
        block.warps.clear();
        for (int first = 0; first < count; first += 32)
          block.warps.push_back(
              std::make_unique<Warp>(std::min(32, count - first)));
        std::vector<std::thread> running;
        for (int t = 0; t < count; ++t) {
          running.emplace_back([&, t] {
            linear_thread = t;
            threadIdx = {t % threads.x, t / threads.x % threads.y,
                         t / (threads.x * threads.y)};
            kernel(args...);
          });
        }
        for (auto &thread : running) thread.join();
      }
    }
  }
}

// Runs run(T{}) for T double or float, as a driver's C entry point does:
// returns 0, or 1 with the exception's message in `error`.
template <typename Run>
int run_guarded(int is_double, Run run, char *error, int error_size) {
  try {
    if (is_double) {
      run(double{});
    } else {
      run(float{});
    }
  } catch (const std::exception &e) {
    std::snprintf(error, error_size, "%s", e.what());
    return 1;
  }
  return 0;
}

// Defines a driver's C entry point `name`(is_double, backward, call,
// tensors, error, error_size) that runs the driver's run<T>(backward,
// *call, tensors) with a `Call` describing the call.
#define CUDA_EMULATOR_ENTRY_POINT(name, Call)                              \
  extern "C" int name(int is_double, int backward, const Call *call,      \
                      void *const *tensors, char *error, int error_size) { \
    return cuda_emulator::run_guarded(                                     \
        is_double,                                                         \
        [&](auto type) { run<decltype(type)>(backward, *call, tensors); }, \
        error, error_size);                                                \
  }

template <typename... Parts>
std::string message(const Parts &...parts) {
  std::ostringstream stream;
  (stream << ... << parts);
  return stream.str();
}

}  // namespace cuda_emulator

inline void __syncthreads() {
  cuda_emulator::block.threads->arrive_and_wait();
}

inline void __syncwarp(unsigned = 0xffffffffu) {
  using cuda_emulator::block;
  block.warps[cuda_emulator::linear_thread >> 5]->arrived.arrive_and_wait();
}

template <typename T>
T __shfl_up_sync(unsigned, T value, int delta) {
  const int lane = cuda_emulator::linear_thread & 31;
  return cuda_emulator::exchange(value, lane - delta, lane >= delta);
}

template <typename T>
T __shfl_down_sync(unsigned, T value, int delta) {
  const int lane = cuda_emulator::linear_thread & 31;
  return cuda_emulator::exchange(value, lane + delta, lane + delta < 32);
}

template <typename T>
T __shfl_xor_sync(unsigned, T value, int mask) {
  return cuda_emulator::exchange(value,
                                 (cuda_emulator::linear_thread & 31) ^ mask,
                                 true);
}

template <typename T>
T __shfl_sync(unsigned, T value, int source) {
  return cuda_emulator::exchange(value, source & 31, true);
}

template <typename T>
T atomicAdd(T *address, T value) {
  std::lock_guard<std::mutex> guard(cuda_emulator::atomic_mutex);
  const T old = *address;
  *address = old + value;
  return old;
}

inline int atomicExch(int *address, int value) {
  std::lock_guard<std::mutex> guard(cuda_emulator::atomic_mutex);
  const int old = *address;
  *address = value;
  return old;
}

// Blocks run one after another, so another block's stores are complete and
// visible before a block starts.
inline void __threadfence() {}

template <typename T>
T __ldcg(const T *address) {
  return *address;
}

#define TORCH_CHECK(condition, ...)                                    \
  do {                                                                 \
    if (!(condition))                                                  \
      throw std::runtime_error(cuda_emulator::message(__VA_ARGS__));   \
  } while (false)
