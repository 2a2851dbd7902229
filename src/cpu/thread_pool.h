// A small persistent thread pool for the CPU backend: parallel_for(n, fn) runs fn(item, worker)
// for every item in [0, n) on up to `threads` threads (the caller is worker 0), handing items
// out one at a time from an atomic counter so uneven items (causal rows, varlen sequences)
// balance themselves. No OpenMP.
//
// One call of the backend runs several parallel_for back to back (operand packing, the items,
// the output pass), a few microseconds apart. Workers that went to sleep on a condition variable
// after each one had to be woken for the next, each wake-up a futex call and a scheduler
// round-trip (tens of microseconds on a virtual machine), and then took the pool's mutex one
// after the other. So a worker that finishes first spins for a while (kSpin) on the published
// job word, and sleeps only when nothing came; the caller likewise spins for the last worker
// before sleeping. Neither spins when the call has more threads than the machine has hardware
// threads (then a spinning thread would take a core from one that has work).
//
// One parallel_for runs at a time. A call made while the pool is busy (from another user thread,
// or from inside a running item) runs its items inline on the calling thread, as worker 0,
// instead of waiting: slower, never a deadlock. fn must not throw (callers allocate before
// dispatch, or record a failure and skip their work: see WorkerScratch in backend_common.h).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace flashattn::cpu {

class ThreadPool {
 public:
  using Fn = std::function<void(int64_t item, int worker)>;

  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  // Runs fn over [0, n) with at most `threads` workers (worker ids < threads).
  void parallel_for(int64_t n, int threads, const Fn& fn) {
    if (n <= 0) return;
    if (threads > n) threads = static_cast<int>(n);
    // Inside an item (on any thread) run inline: re-locking run_mutex_ from the thread that
    // holds it would be undefined, and waiting for the pool from one of its items would deadlock.
    if (threads <= 1 || in_item()) {
      run_inline(n, fn);
      return;
    }
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) {
      run_inline(n, fn);
      return;
    }
    const bool spin = threads <= hardware_threads();
    {
      std::lock_guard<std::mutex> lk(mutex_);
      while (static_cast<int>(workers_.size()) < threads - 1) {
        const int id = static_cast<int>(workers_.size()) + 1;
        workers_.emplace_back([this, id] { worker_loop(id); });
      }
      fn_ = &fn;
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
      pending_.store(threads - 1, std::memory_order_relaxed);
      // Generation and participant count in one word, so a worker reads a consistent pair; the
      // release publishes fn_, n_, next_ and pending_ to workers that see it without the mutex.
      const uint64_t gen = (job_.load(std::memory_order_relaxed) >> kGenShift) + 1;
      job_.store(gen << kGenShift | uint64_t(threads - 1) << 1 | (spin ? 1u : 0u),
                 std::memory_order_release);
    }
    wake_.notify_all();
    drain(0);
    if (spin) spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
    {
      std::unique_lock<std::mutex> lk(mutex_);
      done_.wait(lk, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    fn_ = nullptr;
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

 private:
  // How long a worker (or the caller) spins before sleeping: longer than the gap between the
  // parallel_for of one backend call, short enough to cost nothing between calls.
  static constexpr std::chrono::microseconds kSpin{200};
  static constexpr int kGenShift = 17;  // job_: generation << 17 | participants << 1 | spin

  ThreadPool() = default;

  static int hardware_threads() {
    static const int n = [] {
      const unsigned hw = std::thread::hardware_concurrency();
      return hw == 0 ? 1 : int(hw);
    }();
    return n;
  }

  static bool& in_item() {
    static thread_local bool flag = false;
    return flag;
  }

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }

  // Spins until done() or kSpin has passed; returns done().
  template <class Done>
  static bool spin_until(Done done) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (int i = 1;; ++i) {
      if (done()) return true;
      pause();
      if (i % 256 == 0 && std::chrono::steady_clock::now() >= until) return done();
    }
  }

  static void run_inline(int64_t n, const Fn& fn) {
    const bool outer = in_item();
    in_item() = true;
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    in_item() = outer;
  }

  void drain(int worker) {
    in_item() = true;
    for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n_;
         i = next_.fetch_add(1, std::memory_order_relaxed))
      (*fn_)(i, worker);
    in_item() = false;
  }

  void worker_loop(int id) {
    uint64_t seen = 0;  // generation of the last job this worker looked at
    bool spin = false;  // whether the last job asked its workers to spin
    for (;;) {
      const auto fresh = [&] { return (job_.load(std::memory_order_acquire) >> kGenShift) != seen; };
      if (!(spin && spin_until(fresh))) {
        std::unique_lock<std::mutex> lk(mutex_);
        wake_.wait(lk, [&] { return stop_ || fresh(); });
        if (stop_) return;
      }
      const uint64_t job = job_.load(std::memory_order_acquire);
      seen = job >> kGenShift;
      spin = (job & 1u) != 0;
      // A worker beyond this job's participants leaves it alone: it is not counted in pending_,
      // and the caller may publish the next job at any time.
      if (id > int((job >> 1) & 0xffffu)) continue;
      drain(id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // The caller checks pending_ under the mutex before it sleeps: taking the mutex here
        // orders this notify after that check, so it cannot be lost.
        std::lock_guard<std::mutex> lk(mutex_);
        done_.notify_one();
      }
    }
  }

  std::mutex run_mutex_;  // held for the duration of one parallel_for
  std::mutex mutex_;      // guards workers_ and stop_; job_ changes under it
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  // Each counter on a cache line of its own: every item hand-out writes next_, and the fn_, n_
  // and job_ that all workers read should not be invalidated by it.
  alignas(64) std::atomic<int64_t> next_{0};
  alignas(64) std::atomic<int> pending_{0};
  alignas(64) std::atomic<uint64_t> job_{0};
  bool stop_ = false;
};

}  // namespace flashattn::cpu
