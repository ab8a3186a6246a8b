// SPDX-License-Identifier: Apache-2.0
// The engine's thread pool: every task of every job runs exactly once, whatever the job sizes and however the
// threads interleave (jobs follow each other with no pause, so a thread that wakes late meets the next job).
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "threads.hpp"

namespace {

TEST(ThreadPool, RunsEveryTaskOfEveryJobExactlyOnce) {
  for (int threads : {1, 2, 4}) {
    llama::ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    std::vector<std::atomic<int>> runs(64);
    for (int job = 0; job < 20000; ++job) {
      const int n = 1 + job % 61;  // sizes change every job: a stale size must never meet a fresh ticket
      for (auto& r : runs) r.store(0);
      pool.parallel_for(n, [&](int i) { runs[std::size_t(i)].fetch_add(1); });
      for (int i = 0; i < 64; ++i)
        ASSERT_EQ(runs[std::size_t(i)].load(), i < n ? 1 : 0) << "job " << job << " task " << i << " of " << n;
    }
  }
}

TEST(ThreadPool, EmptyAndSingleJobsRunOnTheCaller) {
  llama::ThreadPool pool(2);
  int calls = 0;
  pool.parallel_for(0, [&](int) { ++calls; });
  EXPECT_EQ(calls, 0);
  pool.parallel_for(1, [&](int i) { calls += 1 + i; });
  EXPECT_EQ(calls, 1);
}

}  // namespace
