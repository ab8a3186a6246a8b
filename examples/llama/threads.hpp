// SPDX-License-Identifier: Apache-2.0
// The engine's worker threads: a parallel-for that stays fast when the machine has other work.
//
// A decode step forks and joins a few hundred times (every matrix product, every layer's attention), so
// the wait between them must be short: workers spin for a moment before they sleep. But a worker that spins
// while the thread it waits for has been descheduled by someone else's work burns the core that thread
// needed; OpenMP's default spin of some 300,000 iterations is what made the engine fall from 43 to a few
// tokens/s beside a compiler. Here every wait spins for a bounded time (kSpin) and then yields or sleeps, and
// tasks are taken from a shared counter, so a worker that is not running holds up nothing but its own task.
#ifndef KVEVICT_EXAMPLES_LLAMA_THREADS_HPP
#define KVEVICT_EXAMPLES_LLAMA_THREADS_HPP

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llama {

class ThreadPool {
 public:
  /// `n_threads` counts the caller, which works too: 1 runs everything on the caller's thread.
  explicit ThreadPool(int n_threads = int(std::max(1u, std::thread::hardware_concurrency()))) {
    for (int i = 1; i < std::max(1, n_threads); ++i) workers_.emplace_back([this] { work(); });
  }
  ~ThreadPool() {
    stop_.store(true);
    publish(nullptr, 0);
    for (auto& w : workers_) w.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  /// Calls task(i) for every i in [0, n), spread over the threads; returns when all are done.
  void parallel_for(int n, const std::function<void(int)>& task) {
    if (n <= 0) return;
    // Called from inside a task (a sequence's attention splitting its keys while sequences run in
    // parallel): every thread is busy already, so the tasks run here.
    if (workers_.empty() || n == 1 || in_task_) {
      for (int i = 0; i < n; ++i) task(i);
      return;
    }
    done_.store(0);
    publish(&task, n);
    run_tasks(generation(ticket_.load()));
    wait_until([&] { return done_.load() == n; });
  }

 private:
  static constexpr auto kSpin = std::chrono::microseconds(50);

  // A ticket is (job generation << 32 | next task index): a thread claims a task by advancing it, and a
  // thread that wakes late sees another generation and claims nothing from the job it missed.
  static std::uint32_t generation(std::uint64_t ticket) { return std::uint32_t(ticket >> 32); }

  void publish(const std::function<void(int)>* task, int n) {
    // First a generation with no task to claim: a thread still looking at the last job's ticket can no longer
    // advance it, so it cannot pair that ticket with this job's task count and run a task twice.
    const std::uint32_t g = generation(ticket_.load());
    ticket_.store(std::uint64_t(g + 1u) << 32 | 0xFFFFFFFFu);
    task_.store(task);
    n_tasks_.store(n);
    {
      std::lock_guard<std::mutex> lock(mutex_);  // a worker checks for a new job under this lock before it sleeps
      ticket_.store(std::uint64_t(g + 2u) << 32);
    }
    if (sleeping_.load() > 0) wake_.notify_all();
  }

  // Spins for kSpin, then yields the core while `done` stays false.
  template <class Done>
  static void wait_until(Done done) {
    const auto start = std::chrono::steady_clock::now();
    while (!done())
      if (std::chrono::steady_clock::now() - start > kSpin) std::this_thread::yield();
  }

  void run_tasks(std::uint32_t job) {
    for (std::uint64_t t = ticket_.load(); generation(t) == job && std::uint32_t(t) < std::uint32_t(n_tasks_.load());) {
      if (!ticket_.compare_exchange_weak(t, t + 1)) continue;
      in_task_ = true;
      (*task_.load())(int(std::uint32_t(t)));  // the job cannot change before done_ counts this task
      in_task_ = false;
      done_.fetch_add(1);
      t = ticket_.load();
    }
  }

  void work() {
    std::uint32_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      while (generation(ticket_.load()) == seen && std::chrono::steady_clock::now() - start < kSpin) {
      }
      if (generation(ticket_.load()) == seen) {  // idle: sleep until the next job
        std::unique_lock<std::mutex> lock(mutex_);
        sleeping_.fetch_add(1);
        wake_.wait(lock, [&] { return generation(ticket_.load()) != seen; });
        sleeping_.fetch_sub(1);
      }
      if (stop_.load()) return;
      seen = generation(ticket_.load());
      run_tasks(seen);
    }
  }

  static inline thread_local bool in_task_ = false;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<std::uint64_t> ticket_{0};
  std::atomic<const std::function<void(int)>*> task_{nullptr};
  std::atomic<int> n_tasks_{0}, done_{0}, sleeping_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace llama

#endif  // KVEVICT_EXAMPLES_LLAMA_THREADS_HPP
