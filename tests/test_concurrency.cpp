// Concurrency of the host backend, the C++ API and the C ABI (docs/design.md §7, §8): several
// threads call the ops at the same time on their own buffers, and
//   - every result is bitwise equal to the same call made on one thread (the ops keep no shared
//     mutable state; built with POWERGRAD_SANITIZE_THREAD, ThreadSanitizer checks the accesses),
//   - the last-error message is per thread: a thread's failing call leaves its own message, and
//     another thread's successful call leaves "" on that thread, whatever the others do meanwhile.
// Run under ThreadSanitizer by `cmake --preset tsan` (tools/ci-tsan.sh).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "powergrad/bucket.hpp"
#include "powergrad/powergrad.hpp"
#include "powergrad/powergrad_c.h"

namespace {

namespace pg = powergrad;

constexpr int kThreads = 6;
constexpr int kIterations = 8;

// A reusable barrier: every thread waits until all have arrived (std::barrier is C++20).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    const int gen = gen_.load();
    if (arrived_.fetch_add(1) + 1 == n_) {
      arrived_.store(0);
      gen_.fetch_add(1);
    } else {
      while (gen_.load() == gen) std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<int> gen_{0};
};

// Deterministic inputs that differ per thread (seed).
std::vector<float> logits_for(int seed, int64_t rows, int64_t cols) {
  std::vector<float> z(static_cast<size_t>(rows * cols));
  uint32_t x = 2463534242u + 977u * static_cast<uint32_t>(seed);
  for (float& v : z) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    v = static_cast<float>(static_cast<int>(x % 2001) - 1000) / 125.f;
  }
  return z;
}

struct XentResult {
  std::vector<float> dlogits, lse_alpha;
  float loss = 0;
};

XentResult run_xent(int seed) {
  const int64_t rows = 7, cols = 1500;  // more than one 1024-column chunk per row
  const std::vector<float> z = logits_for(seed, rows, cols);
  std::vector<int64_t> y(rows);
  for (int64_t r = 0; r < rows; ++r) y[r] = (seed * 131 + r * 17) % cols;
  y[3] = -100;  // one ignored row
  pg::XentProblem<float, pg::ClassTargets<int64_t>> p;
  p.logits = z.data();
  p.rows = rows;
  p.cols = cols;
  p.targets.index = y.data();
  p.alpha = 0.25f + 0.1f * static_cast<float>(seed % 3);
  p.label_smoothing = 0.1f;
  p.reduction = pg::Reduction::kMean;
  XentResult res;
  res.dlogits.assign(static_cast<size_t>(rows * cols), NAN);
  res.lse_alpha.assign(static_cast<size_t>(rows), NAN);
  pg::XentOutputs<float> out;
  out.loss = &res.loss;
  out.lse_alpha = res.lse_alpha.data();
  out.dlogits = res.dlogits.data();
  const pg::Status s = pg::xent_forward_backward(pg::Backend::kHost, p, pg::Upstream{2.f, nullptr}, out);
  EXPECT_EQ(s, pg::Status::kSuccess) << pg::last_error_message();
  EXPECT_STREQ(pg::last_error_message(), "");
  return res;
}

struct BucketResult {
  std::vector<float> grads, norms;
};

BucketResult run_clip_norm(int seed) {
  const int64_t sizes[] = {5000, 3, 4097, 64};
  BucketResult res;
  std::vector<int64_t> offsets = {0};
  for (int64_t n : sizes) offsets.push_back(offsets.back() + n);
  res.grads = logits_for(seed + 1000, 1, offsets.back());
  std::vector<pg::BucketTensor<float>> ts(4);
  const pg::Status flat =
      pg::bucket_tensors_from_flat<float, float>(res.grads.data(), offsets.data(), 4, nullptr, nullptr, ts.data());
  EXPECT_EQ(flat, pg::Status::kSuccess) << pg::last_error_message();
  const size_t plan_bytes = pg::bucket_plan_bytes(4);
  std::vector<unsigned char> storage(plan_bytes + 16);
  void* plan = storage.data() + (16 - reinterpret_cast<uintptr_t>(storage.data()) % 16) % 16;
  EXPECT_EQ(pg::bucket_plan_build(pg::Backend::kHost, ts.data(), 4, pg::BucketUnits::kTensor, plan, plan_bytes),
            pg::Status::kSuccess)
      << pg::last_error_message();
  res.norms.assign(4, NAN);
  int32_t flags = -1;
  EXPECT_EQ(pg::bucket_clip_norm<float>(plan, plan_bytes, 3.f, pg::BucketScope::kTensor, res.norms.data(), nullptr, 0,
                                        &flags),
            pg::Status::kSuccess)
      << pg::last_error_message();
  EXPECT_EQ(flags, 0);
  return res;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Concurrency, CppApiResultsMatchOneThread) {
  std::vector<XentResult> xref;
  std::vector<BucketResult> bref;
  for (int t = 0; t < kThreads; ++t) {
    xref.push_back(run_xent(t));
    bref.push_back(run_clip_norm(t));
  }
  std::atomic<int> mismatches{0};
  Barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      start.wait();
      for (int it = 0; it < kIterations; ++it) {
        const XentResult x = run_xent(t);
        const BucketResult b = run_clip_norm(t);
        if (!same_bits(x.dlogits, xref[t].dlogits) || !same_bits(x.lse_alpha, xref[t].lse_alpha) ||
            std::memcmp(&x.loss, &xref[t].loss, sizeof(float)) != 0 || !same_bits(b.grads, bref[t].grads) ||
            !same_bits(b.norms, bref[t].norms))
          mismatches.fetch_add(1);
      }
    });
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0) << "results differ from the single-thread run";
}

// The C ABI: each thread's failing call names its own value; a success on one thread leaves ""
// there while other threads hold failure messages.
TEST(Concurrency, CAbiErrorMessagesArePerThread) {
  std::atomic<int> problems{0};
  std::vector<std::string> report(kThreads);
  Barrier step(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      const int64_t rows = 4, cols = 33;
      const std::vector<float> z = logits_for(t, rows, cols);
      std::vector<int32_t> y = {1, 2, 3, 4};
      std::vector<float> dz(static_cast<size_t>(rows * cols));
      float loss = 0;
      pg_xent_problem_t p;
      std::memset(&p, 0, sizeof p);
      p.struct_size = sizeof p;
      p.device = PG_DEVICE_HOST;
      p.dtype = PG_DTYPE_FLOAT32;
      p.logits = z.data();
      p.cols = cols;
      p.target_kind = PG_TARGET_INDEX_INT32;
      p.targets = y.data();
      p.ignore_index = -100;
      p.alpha = 0.5f;
      p.reduction = PG_REDUCTION_SUM;
      pg_xent_outputs_t o;
      std::memset(&o, 0, sizeof o);
      o.struct_size = sizeof o;
      o.loss = &loss;
      o.dlogits = dz.data();
      // The value each thread's failure carries, so that its message is recognisably its own.
      const int64_t bad_rows = -1000 - t;
      const std::string own = "problem->rows (" + std::to_string(bad_rows) + ")";
      for (int it = 0; it < kIterations; ++it) {
        // Odd threads fail while even ones succeed, then the other way round.
        const bool fail_now = (t + it) % 2 == 1;
        p.rows = fail_now ? bad_rows : rows;
        const pg_status_t st = pg_xent_forward_backward(&p, nullptr, &o, nullptr, 0, nullptr);
        step.wait();  // every thread has made its call before any checks its message
        const std::string msg = pg_last_error();
        if (fail_now && (st != PG_STATUS_INVALID_SIZE || msg.find(own) == std::string::npos)) {
          problems.fetch_add(1);
          report[t] = "status " + std::to_string(st) + ", message \"" + msg + "\", expected it to name " + own;
        }
        if (!fail_now && (st != PG_STATUS_SUCCESS || !msg.empty())) {
          problems.fetch_add(1);
          report[t] = "status " + std::to_string(st) + ", message after a success \"" + msg + "\"";
        }
        step.wait();  // nobody starts the next call before all have checked
      }
    });
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(report[t].empty()) << "thread " << t << ": " << report[t];
  EXPECT_EQ(problems.load(), 0);
}

// The C++ API's message is per thread too.
TEST(Concurrency, CppErrorMessagesArePerThread) {
  std::atomic<int> problems{0};
  Barrier step(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int it = 0; it < kIterations; ++it) {
        const bool fail_now = (t + it) % 2 == 0;
        // merge_stats on zero rows: succeeds, or fails on this thread's own shard count.
        const int64_t shards = fail_now ? -10 - t : 1;
        pg::RowStats parts[1], merged[1];
        const pg::Status s = pg::xent_merge_stats(pg::Backend::kHost, parts, shards, 0, 1.f, merged);
        step.wait();
        const std::string msg = pg::last_error_message();
        const std::string own = "shards (" + std::to_string(shards) + ")";
        if (fail_now ? (s != pg::Status::kInvalidSize || msg.find(own) == std::string::npos)
                     : (s != pg::Status::kSuccess || !msg.empty()))
          problems.fetch_add(1);
        step.wait();
      }
    });
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(problems.load(), 0);
}

}  // namespace
