// powergrad host backend: the threading layer (docs/design.md §6.1).
//
// A small persistent pool of std::threads, started on first use and kept for the life of the
// process. Work is always expressed as a fixed number of tasks (a task = a fixed chunk of rows or of
// bucket items, chosen from the problem's shape, never from the thread count); each task writes its
// own result slot and the caller merges the slots in task order afterwards. Which thread ran which
// task therefore cannot change a single bit: the result is the same for 1, 2 or 64 threads.
//
// Why a pool of our own and not OpenMP: the library is header-only, and OpenMP would make every
// consumer translation unit compile with -fopenmp and link an OpenMP runtime; PyTorch wheels ship
// their own libgomp, so a second runtime in the process would run a second, oversubscribing pool;
// and ThreadSanitizer reports false races inside an uninstrumented libgomp, while it understands
// std::thread, std::mutex and std::atomic.
//
// Cost model: a parallel region wakes sleeping workers (a condition variable, tens of
// microseconds on a loaded machine), so the caller asks for threads in proportion to the work
// (threads_for: one thread per kMinWorkPerThread elements); small problems run on the calling
// thread without touching the pool. A region that finds the pool busy (another thread of the
// program is inside a powergrad call, or a nested call) runs on its calling thread: still the same
// bits, never a deadlock.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "powergrad/config.hpp"

POWERGRAD_NS_BEGIN
namespace host {

// The most threads one region uses (a guard against absurd settings, not a tuning constant).
constexpr int kMaxHostThreads = 256;
// Elements of memory-bound work below which waking one more thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 15;

namespace thread_detail {

inline std::atomic<int>& host_threads_setting() {
  static std::atomic<int> n{0};  // 0: the default (hardware concurrency)
  return n;
}

inline int default_host_threads() {
  const unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(std::min<unsigned>(h, kMaxHostThreads));
}

inline long process_id() {
#if defined(__unix__) || defined(__APPLE__)
  return static_cast<long>(::getpid());
#else
  return 0;
#endif
}

// One job at a time: `run` publishes (fn, ctx, n_tasks), wakes `want` workers, takes tasks itself
// from the shared counter and waits until every participating worker has left the job.
class Pool {
 public:
  using TaskFn = void (*)(void* ctx, int64_t task);

  // Returns false (and runs nothing) when the pool is busy; the caller then runs the tasks itself.
  bool run(int threads, int64_t n_tasks, TaskFn fn, void* ctx) {
    std::unique_lock<std::mutex> submit(submit_, std::try_to_lock);
    if (!submit.owns_lock()) return false;
    const int want = threads - 1;  // workers besides the caller
    {
      std::lock_guard<std::mutex> lk(m_);
      while (static_cast<int>(workers_) < want) {
        std::thread(&Pool::worker_loop, this, static_cast<int>(workers_)).detach();
        ++workers_;
      }
      fn_ = fn;
      ctx_ = ctx;
      n_tasks_ = n_tasks;
      next_.store(0, std::memory_order_relaxed);
      active_ = want;
      busy_ = want;
      ++generation_;
    }
    wake_.notify_all();
    take_tasks(fn, ctx, n_tasks);
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [this] { return busy_ == 0; });
    return true;
  }

 private:
  void take_tasks(TaskFn fn, void* ctx, int64_t n_tasks) {
    for (int64_t t = next_.fetch_add(1, std::memory_order_relaxed); t < n_tasks;
         t = next_.fetch_add(1, std::memory_order_relaxed))
      fn(ctx, t);
  }

  void worker_loop(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      wake_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) continue;  // not asked to join this job
      const TaskFn fn = fn_;
      void* const ctx = ctx_;
      const int64_t n = n_tasks_;
      lk.unlock();
      take_tasks(fn, ctx, n);
      lk.lock();
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::mutex submit_;  // held by the one caller whose job is running
  std::mutex m_;       // guards everything below
  std::condition_variable wake_, done_;
  unsigned workers_ = 0;
  uint64_t generation_ = 0;
  int active_ = 0, busy_ = 0;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
};

// The process's pool. Never destroyed: its detached workers sleep on its condition variable until
// the process ends. A child process after fork() has no workers, so it gets a pool of its own.
inline Pool& pool() {
  struct Slot {
    std::atomic<Pool*> pool{nullptr};
    std::atomic<long> pid{0};
  };
  static Slot slot;
  const long pid = process_id();
  Pool* p = slot.pool.load(std::memory_order_acquire);
  if (p != nullptr && slot.pid.load(std::memory_order_acquire) == pid) return *p;
  Pool* fresh = new Pool();  // the previous pool (if any) belonged to the parent: left as it is
  if (slot.pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) {
    slot.pid.store(pid, std::memory_order_release);
    return *fresh;
  }
  delete fresh;  // another thread installed one first
  return *slot.pool.load(std::memory_order_acquire);
}

}  // namespace thread_detail

// The number of threads a host op may use (the setting, or the machine's hardware concurrency when
// it was never set or set to 0).
inline int host_threads() {
  const int n = thread_detail::host_threads_setting().load(std::memory_order_relaxed);
  return n > 0 ? n : thread_detail::default_host_threads();
}

// Threads for a region of `work` elements split into `tasks` tasks: at most host_threads(), at most
// one per task, and one per kMinWorkPerThread elements of work.
inline int threads_for(int64_t work, int64_t tasks) {
  int64_t t = host_threads();
  t = std::min<int64_t>(t, tasks);
  t = std::min<int64_t>(t, std::max<int64_t>(1, work / kMinWorkPerThread));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, kMaxHostThreads)));
}

// Runs body(task) for every task in [0, n_tasks) on up to `threads` threads (the caller included).
// The tasks must be independent (each writes its own outputs); their order of execution is
// unspecified, so any merge of their results happens after this returns, in task order.
template <class Body>
void parallel_for(int threads, int64_t n_tasks, Body&& body) {
  if (n_tasks <= 0) return;
  if (threads > 1 && n_tasks > 1) {
    auto trampoline = [](void* ctx, int64_t task) { (*static_cast<Body*>(ctx))(task); };
    if (thread_detail::pool().run(static_cast<int>(std::min<int64_t>(threads, n_tasks)), n_tasks, trampoline,
                           static_cast<void*>(&body)))
      return;
  }
  for (int64_t t = 0; t < n_tasks; ++t) body(t);
}

}  // namespace host

POWERGRAD_NS_END
