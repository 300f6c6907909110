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
// Cost model: a parallel region wakes sleeping workers (a condition variable: tens of
// microseconds, far more on a loaded machine), so the caller asks for threads in proportion to the
// work (threads_for: one thread per kMinWorkPerThread elements), small problems run on the calling
// thread without touching the pool, and the caller never waits for a worker that has not started
// a task (it takes the remaining tasks itself). A region that finds the pool busy (another thread of the
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

// One job at a time. `run` publishes (fn, ctx, n_tasks) under a new generation, wakes `want`
// workers and takes tasks itself; it returns when every task has completed, not when every woken
// worker has checked in, so a worker that is slow to be scheduled (a loaded machine) costs nothing:
// the caller then runs the tasks itself. Tasks are claimed from one 64-bit word holding the
// generation (high 32 bits) and the next task index (low 32 bits), so a worker that wakes late can
// never claim a task of a later job with the function of an earlier one.
class Pool {
 public:
  using TaskFn = void (*)(void* ctx, int64_t task);
  static constexpr int64_t kMaxTasks = int64_t(1) << 31;

  // Returns false (and runs nothing) when the pool is busy or the job too large to publish; the
  // caller then runs the tasks itself.
  bool run(int threads, int64_t n_tasks, TaskFn fn, void* ctx) {
    if (n_tasks >= kMaxTasks) return false;
    // A flag, not a mutex: a nested region on the same thread must see "busy" (try_lock on a mutex
    // the thread already owns is undefined).
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    struct Release {
      std::atomic<bool>& b;
      ~Release() { b.store(false, std::memory_order_release); }
    } release{busy_};
    const int want = threads - 1;  // workers besides the caller
    uint32_t gen = 0;
    {
      std::lock_guard<std::mutex> lk(m_);
      while (static_cast<int>(workers_) < want) {
        std::thread(&Pool::worker_loop, this, static_cast<int>(workers_)).detach();
        ++workers_;
      }
      gen = ++generation_;
      fn_ = fn;
      ctx_ = ctx;
      n_tasks_ = n_tasks;
      active_ = want;
      completed_.store(0, std::memory_order_relaxed);
      claim_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_release);
    }
    wake_.notify_all();
    take_tasks(gen, fn, ctx, n_tasks);
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [&] { return completed_.load(std::memory_order_acquire) == n_tasks; });
    return true;
  }

 private:
  // Claims and runs tasks of generation `gen` until none is left.
  void take_tasks(uint32_t gen, TaskFn fn, void* ctx, int64_t n_tasks) {
    uint64_t v = claim_.load(std::memory_order_acquire);
    for (;;) {
      if (static_cast<uint32_t>(v >> 32) != gen) return;
      const int64_t t = static_cast<int64_t>(v & 0xFFFFFFFFull);
      if (t >= n_tasks) return;
      if (!claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      fn(ctx, t);
      if (completed_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_tasks) {
        std::lock_guard<std::mutex> lk(m_);
        done_.notify_one();
      }
      v = claim_.load(std::memory_order_acquire);
    }
  }

  void worker_loop(int index) {
    uint32_t seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      wake_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) continue;  // not asked to join this job
      const TaskFn fn = fn_;
      void* const ctx = ctx_;
      const int64_t n = n_tasks_;
      lk.unlock();
      take_tasks(seen, fn, ctx, n);
      lk.lock();
    }
  }

  std::atomic<bool> busy_{false};  // set by the one caller whose job is running
  std::mutex m_;       // guards the job description and the worker count
  std::condition_variable wake_, done_;
  unsigned workers_ = 0;
  uint32_t generation_ = 0;
  int active_ = 0;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<uint64_t> claim_{0};      // generation << 32 | next task
  std::atomic<int64_t> completed_{0};   // tasks of the current job that have finished
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
