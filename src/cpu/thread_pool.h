// A small persistent thread pool for the CPU backend: parallel_for(n, fn) runs fn(item, worker)
// for every item in [0, n) on up to `threads` threads (the caller is worker 0), handing items
// out one at a time from an atomic counter so uneven items (causal rows, varlen sequences)
// balance themselves. No OpenMP. Workers sleep on a condition variable between calls.
//
// One parallel_for runs at a time. A call made while the pool is busy (from another user thread,
// or from inside a running item) runs its items inline on the calling thread, as worker 0,
// instead of waiting: slower, never a deadlock. fn must not throw (callers allocate before
// dispatch).
#pragma once

#include <atomic>
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
    {
      std::unique_lock<std::mutex> lk(mutex_);
      while (static_cast<int>(workers_.size()) < threads - 1) {
        const int id = static_cast<int>(workers_.size()) + 1;
        workers_.emplace_back([this, id] { worker_loop(id); });
      }
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      participants_ = threads - 1;
      pending_ = threads - 1;
      ++generation_;
    }
    wake_.notify_all();
    drain(0);
    std::unique_lock<std::mutex> lk(mutex_);
    done_.wait(lk, [this] { return pending_ == 0; });
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
  ThreadPool() = default;

  static bool& in_item() {
    static thread_local bool flag = false;
    return flag;
  }

  static void run_inline(int64_t n, const Fn& fn) {
    const bool outer = in_item();
    in_item() = true;
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    in_item() = outer;
  }

  void drain(int worker) {
    in_item() = true;
    for (int64_t i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) (*fn_)(i, worker);
    in_item() = false;
  }

  void worker_loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mutex_);
        wake_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (id > participants_) continue;  // this call uses fewer threads
      }
      drain(id);
      {
        std::lock_guard<std::mutex> lk(mutex_);
        --pending_;
      }
      done_.notify_one();
    }
  }

  std::mutex run_mutex_;  // held for the duration of one parallel_for
  std::mutex mutex_;      // guards the fields below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  int participants_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace flashattn::cpu
