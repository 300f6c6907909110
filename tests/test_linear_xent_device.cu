// Device tests of the PGT linear cross-entropy (CUDA backend, cuBLAS): the host suite's case table
// through a device memory policy against the float64 reference, bitwise determinism, CUDA-graph
// capture, and the cuBLAS handle check. Without a usable GPU every test skips with the reason.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "device_mem.cuh"
#include "linear_xent_cases.hpp"

using namespace lxt;
using pgtest::gpu_available;

namespace {

// Device copies of the case's host vectors; down() copies outputs back.
struct LinearDeviceMem {
  static constexpr Backend backend = Backend::kCuda;
  cublasHandle_t handle = nullptr;
  LinearDeviceMem() { EXPECT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS); }
  ~LinearDeviceMem() {
    if (handle) cublasDestroy(handle);
  }
  template <class U>
  struct Buf {
    std::vector<U>* host = nullptr;
    U* ptr = nullptr;
    void up(std::vector<U>& h) {
      host = &h;
      EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(h.size(), 1) * sizeof(U)), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(ptr, h.data(), h.size() * sizeof(U), cudaMemcpyHostToDevice), cudaSuccess);
    }
    void down() {
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(host->data(), ptr, host->size() * sizeof(U), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    ~Buf() {
      if (ptr) cudaFree(ptr);
    }
  };
  struct Workspace {
    void* ptr = nullptr;
    void alloc(size_t bytes) { EXPECT_EQ(cudaMalloc(&ptr, bytes), cudaSuccess); }
    ~Workspace() {
      if (ptr) {
        cudaDeviceSynchronize();
        cudaFree(ptr);
      }
    }
  };
  void* blas_handle() { return handle; }
};

#define PG_LINEAR_REQUIRE_GPU()                      \
  do {                                               \
    std::string why_;                                \
    if (!gpu_available(&why_)) GTEST_SKIP() << why_; \
  } while (0)

// cuBLAS's fp32 GEMMs and the low-precision G (rounded to T before the dh / dW GEMMs, as cuBLAS
// takes both operands in one type) cost more than the host's tolerance: one more rounding of G.
template <class T>
void run_table_device() {
  LinearDeviceMem mem;
  for (const LCase& c : main_cases()) EXPECT_TRUE((run_and_check<T, LinearDeviceMem>(mem, c)));
}

TEST(LinearXentDevice, CasesFp32) {
  PG_LINEAR_REQUIRE_GPU();
  run_table_device<float>();
}
TEST(LinearXentDevice, CasesFp16) {
  PG_LINEAR_REQUIRE_GPU();
  run_table_device<half_t>();
}
TEST(LinearXentDevice, CasesBf16) {
  PG_LINEAR_REQUIRE_GPU();
  run_table_device<bfloat16_t>();
}

TEST(LinearXentDevice, BitwiseDeterministic) {
  PG_LINEAR_REQUIRE_GPU();
  LinearDeviceMem mem;
  LCase c;
  c.N = 700, c.H = 64, c.V = 3000, c.chunk = 128;
  const LData<bfloat16_t> d = make_data<bfloat16_t>(c);
  LOut<bfloat16_t> b1, b2;
  const auto o1 = run_case<bfloat16_t>(mem, d, b1);
  const auto o2 = run_case<bfloat16_t>(mem, d, b2);
  ASSERT_EQ(o1.st, Status::kSuccess) << o1.msg;
  EXPECT_EQ(0, std::memcmp(o1.dh.v.data(), o2.dh.v.data(), o1.dh.v.size() * 2));
  EXPECT_EQ(0, std::memcmp(o1.dw_t.v.data(), o2.dw_t.v.data(), o1.dw_t.v.size() * 2));
  EXPECT_EQ(0, std::memcmp(o1.db_t.v.data(), o2.db_t.v.data(), o1.db_t.v.size() * 2));
  EXPECT_EQ(0, std::memcmp(o1.loss.v.data(), o2.loss.v.data(), o1.loss.v.size() * 4));
}

// The whole op captured into a CUDA graph and replayed: same bits as the direct call.
TEST(LinearXentDevice, GraphCapture) {
  PG_LINEAR_REQUIRE_GPU();
  const int64_t N = 96, H = 32, V = 1000;
  std::vector<float> h(N * H), w(V * H);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<float>((i * 37 % 101) / 101.0 - 0.5);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>((i * 53 % 97) / 97.0 - 0.5) * 0.2f;
  std::vector<int32_t> y(N);
  for (int64_t r = 0; r < N; ++r) y[r] = static_cast<int32_t>((r * 7) % V);
  LinearDeviceMem mem;
  LinearDeviceMem::Buf<float> bh, bw, bloss, bdh, bdw;
  LinearDeviceMem::Buf<int32_t> by;
  std::vector<float> loss(1), dh(N * H), dw(V * H);
  bh.up(h), bw.up(w), by.up(y), bloss.up(loss), bdh.up(dh), bdw.up(dw);
  LinearXentProblem<float, ClassTargets<int32_t>> p;
  p.hidden = bh.ptr, p.rows = N, p.hidden_dim = H, p.weight = bw.ptr, p.vocab = V, p.targets = {by.ptr, -100};
  p.alpha = 0.3f;
  LinearXentOutputs<float> o;
  o.loss = bloss.ptr, o.dhidden = bdh.ptr, o.dweight = bdw.ptr;
  size_t bytes = 0;
  ASSERT_EQ(Status::kSuccess, linear_xent_workspace_bytes(Backend::kCuda, p, o, 40, &bytes));
  LinearDeviceMem::Workspace ws;
  ws.alloc(bytes);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ASSERT_EQ(Status::kSuccess, linear_xent_forward_backward(Backend::kCuda, p, Upstream{}, o, ws.ptr, bytes, 40,
                                                           mem.handle, reinterpret_cast<stream_t>(s)))
      << last_error_message();
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  std::vector<float> dh1(N * H), dw1(V * H);
  cudaMemcpy(dh1.data(), bdh.ptr, dh1.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(dw1.data(), bdw.ptr, dw1.size() * 4, cudaMemcpyDeviceToHost);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const Status st = linear_xent_forward_backward(Backend::kCuda, p, Upstream{}, o, ws.ptr, bytes, 40, mem.handle,
                                                 reinterpret_cast<stream_t>(s));
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_EQ(st, Status::kSuccess) << last_error_message();
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  cudaMemset(bdh.ptr, 0xFF, dh.size() * 4);
  cudaMemset(bdw.ptr, 0xFF, dw.size() * 4);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  std::vector<float> dh2(N * H), dw2(V * H);
  cudaMemcpy(dh2.data(), bdh.ptr, dh2.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(dw2.data(), bdw.ptr, dw2.size() * 4, cudaMemcpyDeviceToHost);
  EXPECT_EQ(0, std::memcmp(dh1.data(), dh2.data(), dh1.size() * 4));
  EXPECT_EQ(0, std::memcmp(dw1.data(), dw2.data(), dw1.size() * 4));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

// The options of docs/design.md §2.5 reach the CUDA cross-entropy kernels through each chunk's row
// op: the result matches the float64 reference.
TEST(LinearXentDevice, OptionsMatchTheReference) {
  PG_LINEAR_REQUIRE_GPU();
  LinearDeviceMem mem;
  for (const LCase& c : option_cases()) {
    const LData<float> d = make_data<float>(c);
    LOut<float> before;
    const LOut<float> o = run_case<float>(mem, d, before);
    ASSERT_EQ(o.st, Status::kSuccess) << c.name() << ": " << o.msg;
    EXPECT_TRUE(check_case<float>(d, o, before)) << c.name();
  }
}

// The split form on the CUDA backend (shards emulated on one device, merged by xent_merge_stats on
// the device): the host suite's split cases, options included.
template <class T>
void run_split_device() {
  LinearDeviceMem mem;
  for (LCase c : split_cases())
    for (int shards : {1, 2, 3}) EXPECT_TRUE((run_split_and_check<T, LinearDeviceMem>(mem, c, shards)));
}
TEST(LinearXentDevice, SplitFp32) {
  PG_LINEAR_REQUIRE_GPU();
  run_split_device<float>();
}
TEST(LinearXentDevice, SplitBf16) {
  PG_LINEAR_REQUIRE_GPU();
  run_split_device<bfloat16_t>();
}

TEST(LinearXentDevice, NullHandleIsRejected) {
  PG_LINEAR_REQUIRE_GPU();
  LinearXentProblem<float, ClassTargets<int32_t>> p;
  std::vector<float> h(4, 1.f), w(4, 1.f);
  std::vector<int32_t> y = {0, 1};
  LinearDeviceMem::Buf<float> bh, bw;
  LinearDeviceMem::Buf<int32_t> by;
  bh.up(h), bw.up(w), by.up(y);
  p.hidden = bh.ptr, p.rows = 2, p.hidden_dim = 2, p.weight = bw.ptr, p.vocab = 2, p.targets = {by.ptr, -100};
  LinearXentOutputs<float> o;
  size_t bytes = 0;
  ASSERT_EQ(Status::kSuccess, linear_xent_workspace_bytes(Backend::kCuda, p, o, 2, &bytes));
  LinearDeviceMem::Workspace ws;
  ws.alloc(bytes);
  EXPECT_EQ(Status::kNullPointer, linear_xent_forward_backward(Backend::kCuda, p, Upstream{}, o, ws.ptr, bytes, 2));
  EXPECT_NE(std::string(last_error_message()).find("blas_handle"), std::string::npos);
}

}  // namespace
