// SPDX-License-Identifier: Apache-2.0
// The smallest real thread pool, for the tests and benchmarks of the kernel's key splits.
#ifndef KVEVICT_TESTS_TWO_THREADS_HPP
#define KVEVICT_TESTS_TWO_THREADS_HPP

#include <atomic>
#include <kvevict/attention.hpp>
#include <thread>

namespace testing_support {

/// A second thread that takes every other task of a parallel_for: the smallest real thread pool, started
/// once, spinning between jobs, allocating nothing per job.
class TwoThreads {
 public:
  TwoThreads() : worker_([this] { work(); }) {}
  ~TwoThreads() {
    stop_.store(true);
    worker_.join();
  }
  TwoThreads(const TwoThreads&) = delete;
  TwoThreads& operator=(const TwoThreads&) = delete;

  void run(int n, kvevict::TaskRef task) {
    task_ = &task;
    n_ = n;
    done_.store(false);
    job_.fetch_add(1);
    for (int i = 0; i < n; i += 2) task(i);
    while (!done_.load()) std::this_thread::yield();
  }
  kvevict::ParallelFor parallel_for() {
    return [this](int n, kvevict::TaskRef task) { run(n, task); };
  }

 private:
  void work() {
    long seen = 0;
    while (!stop_.load()) {
      if (job_.load() == seen) {
        std::this_thread::yield();  // other tests share the cores
        continue;
      }
      seen = job_.load();
      for (int i = 1; i < n_; i += 2) (*task_)(i);
      done_.store(true);
    }
  }

  const kvevict::TaskRef* task_ = nullptr;
  int n_ = 0;
  std::atomic<long> job_{0};
  std::atomic<bool> done_{true}, stop_{false};
  std::thread worker_;
};

}  // namespace testing_support

#endif  // KVEVICT_TESTS_TWO_THREADS_HPP
