// Device-test helpers shared by the CUDA test translation units: GPU detection that skips (never
// fails) without a GPU, and DeviceMem, the memory policy that hands the shared case code (xent_cases.hpp,
// bucket_cases.hpp) device copies of its host vectors.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "xent_cases.hpp"

namespace pgtest {

#define PG_CUDA_EXPECT(call)                                                                      \
  do {                                                                                            \
    const cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) ADD_FAILURE() << #call << " failed: " << cudaGetErrorString(e_);       \
  } while (0)

// Whether a GPU is usable, and if not, why.
inline bool gpu_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e);
    (void)cudaGetLastError();
    return false;
  }
  if (n == 0) {
    *why = "no CUDA device visible";
    return false;
  }
  return true;
}

#define PG_REQUIRE_GPU()                         \
  do {                                           \
    std::string why_;                            \
    if (!gpu_available(&why_)) GTEST_SKIP() << why_; \
  } while (0)

// Memory policy for the shared case code: device copies of the host vectors.
struct DeviceMem {
  static constexpr Backend backend = Backend::kCuda;
  std::vector<void*> allocs;
  cudaStream_t s = nullptr;

  template <class U>
  U* alloc(size_t n) {
    void* p = nullptr;
    PG_CUDA_EXPECT(cudaMalloc(&p, n * sizeof(U)));
    allocs.push_back(p);
    return static_cast<U*>(p);
  }
  template <class U>
  U* in(std::vector<U>& v) {
    if (v.empty()) return nullptr;
    U* d = alloc<U>(v.size());
    PG_CUDA_EXPECT(cudaMemcpy(d, v.data(), v.size() * sizeof(U), cudaMemcpyHostToDevice));
    return d;
  }
  template <class U>
  U* out(std::vector<U>& v) {
    std::fill(v.begin(), v.end(), poison_value<U>());
    if (v.empty()) return nullptr;
    U* d = alloc<U>(v.size());
    PG_CUDA_EXPECT(cudaMemset(d, 0xFF, v.size() * sizeof(U)));
    return d;
  }
  template <class U>
  void fetch(std::vector<U>& v, const U* d) {
    if (!d || v.empty()) return;
    PG_CUDA_EXPECT(cudaStreamSynchronize(s));
    PG_CUDA_EXPECT(cudaMemcpy(v.data(), d, v.size() * sizeof(U), cudaMemcpyDeviceToHost));
  }
  void* workspace(size_t bytes) {
    if (bytes == 0) return nullptr;
    unsigned char* d = alloc<unsigned char>(bytes);
    PG_CUDA_EXPECT(cudaMemset(d, 0xFF, bytes));  // the op must not rely on zeroed workspace
    return d;
  }
  pg::stream_t stream() const { return reinterpret_cast<pg::stream_t>(s); }
  ~DeviceMem() {
    PG_CUDA_EXPECT(cudaDeviceSynchronize());
    for (void* p : allocs) cudaFree(p);
  }
};

}  // namespace pgtest
