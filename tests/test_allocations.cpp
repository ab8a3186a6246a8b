// SPDX-License-Identifier: Apache-2.0
// Once the cache is full, decoding allocates nothing: counted with a replaced global operator new.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "cache_testing.hpp"
#include "policies_under_test.hpp"
#include "two_threads.hpp"

namespace {
std::atomic<long> g_allocations{0};
}

// The replacements pair malloc with free; GCC cannot see that operator new is replaced too.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
  ++g_allocations;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {
template <class Case>
class SteadyState : public ::testing::Test {};
TYPED_TEST_SUITE(SteadyState, testing_support::AllCases);

TYPED_TEST(SteadyState, ThousandDecodeStepsAllocateNothing) {
  using Cache = typename TypeParam::cache;
  using Policy = typename TypeParam::policy;
  constexpr int kSteps = 1000, kFill = 64;
  const bool evicts = kvevict::policy_traits<Policy>::evicts;
  const kvevict::Shape s{2, 6, 2, 16, evicts ? kFill : kFill + kSteps};
  kvevict::CacheOptions o;
  o.max_chunk = 8;
  o.rope = kvevict::Rope(s.head_dim, 10000.0);
  Cache cache(s, testing_support::make_policy<Policy>(), o);
  const testing_support::Stream<typename Cache::Scalar> stream(s, kFill + kSteps, 6);
  typename Cache::Matrix out(8, s.n_q_heads * s.head_dim);
  auto step = [&](int t, int chunk) {
    for (int l = 0; l < s.n_layers; ++l)
      cache.forward(l, stream.q[std::size_t(l)].middleRows(t, chunk), stream.k[std::size_t(l)].middleRows(t, chunk),
                    stream.v[std::size_t(l)].middleRows(t, chunk), out.topRows(chunk));
  };
  for (int t = 0; t < kFill; t += 8) step(t, 8);
  const long before = g_allocations.load();
  for (int t = kFill; t < kFill + kSteps; ++t) step(t, 1);
  const long made = g_allocations.load() - before;
  EXPECT_EQ(made, 0) << "heap allocations in " << kSteps << " steady-state steps";
  for (int l = 0; l < s.n_layers; ++l)
    EXPECT_EQ(testing_support::layer_held(cache, l),
              evicts ? testing_support::layer_total(cache, l) : s.n_kv_heads * (kFill + kSteps));
}
}  // namespace

namespace {
TEST(AllocationCounter, CountsAllocations) {
  const long before = g_allocations.load();
  std::vector<int> v(10);
  EXPECT_GT(g_allocations.load() - before, 0) << "the counter would miss allocations";
}
}  // namespace

namespace {
template <class Storage, class Policy>
void expect_threaded_steps_allocate_nothing(const Policy& policy, int fill = 2048, bool parallel_heads = false) {
  // Key splits over a second thread (budget 2048: two ranges of 1024), or the kv heads as the tasks (a budget
  // too small to split), 16-bit storage included: the steady state still allocates nothing, on either thread.
  using Cache = kvevict::KVCache<Storage, Policy>;
  constexpr int kSteps = 50;
  const kvevict::Shape s{1, 6, 2, 16, fill};
  testing_support::TwoThreads threads;
  kvevict::CacheOptions o;
  o.max_chunk = 64;
  o.rope = kvevict::Rope(s.head_dim, 10000.0);
  o.attention.key_splits = 4;
  o.attention.parallel_for = threads.parallel_for();
  o.attention.parallel_heads = parallel_heads;
  Cache cache(s, policy, o);
  const testing_support::Stream<float> stream(s, fill + kSteps, 8);
  typename Cache::Matrix out(64, s.n_q_heads * s.head_dim);
  auto step = [&](int t, int chunk) {
    cache.forward(0, stream.q[0].middleRows(t, chunk), stream.k[0].middleRows(t, chunk),
                  stream.v[0].middleRows(t, chunk), out.topRows(chunk));
  };
  for (int t = 0; t < fill; t += 64) step(t, 64);
  const long before = g_allocations.load();
  for (int t = fill; t < fill + kSteps; ++t) step(t, 1);
  EXPECT_EQ(g_allocations.load() - before, 0) << "heap allocations in " << kSteps << " threaded steps";
  EXPECT_EQ(cache.size(0, 0), fill);
}

TEST(SteadyStateThreaded, HalfStreamingLLMAllocatesNothing) {
  expect_threaded_steps_allocate_nothing<Eigen::half>(kvevict::StreamingLLM{4});
}
TEST(SteadyStateThreaded, FloatH2OAllocatesNothing) { expect_threaded_steps_allocate_nothing<float>(kvevict::H2O{}); }
TEST(SteadyStateThreaded, HalfAhaKvWithHeadsAsTasksAllocatesNothing) {
  expect_threaded_steps_allocate_nothing<Eigen::half>(kvevict::AhaKV{}, 256, true);
}
TEST(SteadyStateThreaded, FloatStreamingLLMWithHeadsAsTasksAllocatesNothing) {
  expect_threaded_steps_allocate_nothing<float>(kvevict::StreamingLLM{4}, 256, true);
}
}  // namespace
