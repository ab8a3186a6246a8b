// SPDX-License-Identifier: Apache-2.0
// The invariants every policy keeps, checked for each one through the same cache and the same streams, with
// K/V stored in each storage type.
#include <gtest/gtest.h>

#include <algorithm>
#include <kvevict/kvevict.hpp>
#include <set>

#include "cache_testing.hpp"
#include "policies_under_test.hpp"
#include "two_threads.hpp"

namespace {
using kvevict::CacheOptions;
using kvevict::Shape;
using testing_support::Stream;

template <class Case>
class PolicyInvariants : public ::testing::Test {
 protected:
  using Policy = typename Case::policy;
  using Storage = typename Case::storage;
  using Cache = typename Case::cache;
  using Matrix = typename Cache::Matrix;
  using Scalar = typename Cache::Scalar;
  static constexpr int kTokens = 96;

  // A policy that never evicts is given room for the whole stream.
  static int budget_for(int wanted) { return kvevict::policy_traits<Policy>::evicts ? wanted : kTokens; }

  static Shape shape(int budget) { return Shape{2, 6, 2, 8, budget}; }

  /// Streams kTokens through the cache (a prefill chunk, then decode) and calls check(t) after each step.
  template <class Check>
  static void run(Cache& cache, const Stream<Scalar>& stream, Check&& check, int prefill = 5) {
    const Shape& s = cache.shape();
    int t = 0;
    while (t < kTokens) {
      const int chunk = t == 0 ? prefill : 1;
      for (int l = 0; l < s.n_layers; ++l) {
        Matrix out(chunk, stream.q[std::size_t(l)].cols());
        cache.forward(l, stream.q[std::size_t(l)].middleRows(t, chunk), stream.k[std::size_t(l)].middleRows(t, chunk),
                      stream.v[std::size_t(l)].middleRows(t, chunk), out);
      }
      t += chunk;
      check(t - 1);
    }
  }

  static CacheOptions options() {
    CacheOptions o;
    o.max_chunk = 8;
    return o;
  }
};

TYPED_TEST_SUITE(PolicyInvariants, testing_support::AllCases);

TYPED_TEST(PolicyInvariants, NeverHoldsMoreThanTheBudget) {
  // Each head holds at most its layer's budget; heads that share the layer's total hold at most that total
  // together, never fewer than the floor each once the layer is full, and the layer's total exactly.
  using CacheT = typename TestFixture::Cache;
  using Traits = kvevict::policy_traits<typename TestFixture::Policy>;
  const Shape s = TestFixture::shape(TestFixture::budget_for(16));
  const auto policy = testing_support::make_policy<typename TestFixture::Policy>();
  CacheT cache(s, policy, TestFixture::options());
  const Stream<typename TestFixture::Scalar> stream(s, TestFixture::kTokens, 1);
  long budgets = 0;
  for (int l = 0; l < s.n_layers; ++l) budgets += cache.head(l, 0).context().budget;
  EXPECT_EQ(budgets, long(s.n_layers) * s.budget);  // a per-layer schedule moves memory, never adds it
  TestFixture::run(cache, stream, [&](int newest) {
    for (int l = 0; l < s.n_layers; ++l) {
      const int budget = cache.head(l, 0).context().budget;
      const long total = testing_support::layer_total(cache, l);
      ASSERT_LE(testing_support::layer_held(cache, l), total);
      if (Traits::evicts && newest + 1 >= budget) {
        ASSERT_EQ(testing_support::layer_held(cache, l), total);
      }
      for (int h = 0; h < s.n_kv_heads; ++h) {
        if (!Traits::shares_layer_budget) {
          ASSERT_LE(cache.size(l, h), budget);
        } else {
          ASSERT_LE(cache.size(l, h), cache.capacity(l) - TestFixture::options().max_chunk);
          if (newest + 1 >= budget) {
            ASSERT_GE(cache.size(l, h), std::min(budget, Traits::head_floor(policy, budget)));
          }
        }
      }
    }
  });
}

TYPED_TEST(PolicyInvariants, KeptRowsAreBitIdenticalToWhatWasAppendedRoundedOnce) {
  using CacheT = typename TestFixture::Cache;
  const Shape s = TestFixture::shape(TestFixture::budget_for(16));
  CacheT cache(s, testing_support::make_policy<typename TestFixture::Policy>(), TestFixture::options());
  const Stream<typename TestFixture::Scalar> stream(s, TestFixture::kTokens, 2);
  TestFixture::run(cache, stream, [&](int) {
    for (int l = 0; l < s.n_layers; ++l)
      for (int h = 0; h < s.n_kv_heads; ++h) {
        const auto& slots = cache.head(l, h).slots();
        for (int slot = 0; slot < slots.capacity(); ++slot) {
          if (!slots.occupied(slot)) continue;
          const auto p = slots.position(slot);
          ASSERT_TRUE(cache.keys(l, h).row(slot) == stream.k[std::size_t(l)]
                                                        .row(p)
                                                        .segment(h * s.head_dim, s.head_dim)
                                                        .template cast<typename TestFixture::Storage>());
          ASSERT_TRUE(cache.values(l, h).row(slot) == stream.v[std::size_t(l)]
                                                          .row(p)
                                                          .segment(h * s.head_dim, s.head_dim)
                                                          .template cast<typename TestFixture::Storage>());
        }
      }
  });
}

TYPED_TEST(PolicyInvariants, NeverEvictsWhatItPromisedToKeep) {
  using CacheT = typename TestFixture::Cache;
  const Shape s = TestFixture::shape(TestFixture::budget_for(12));
  CacheT cache(s, testing_support::make_policy<typename TestFixture::Policy>(), TestFixture::options());
  const Stream<typename TestFixture::Scalar> stream(s, TestFixture::kTokens, 3);
  int promised = 0;
  TestFixture::run(cache, stream, [&](int newest) {
    for (int l = 0; l < s.n_layers; ++l)
      for (int h = 0; h < s.n_kv_heads; ++h) {
        const auto& head = cache.head(l, h);
        std::set<std::int64_t> held;
        for (int slot = 0; slot < head.slots().capacity(); ++slot)
          if (head.slots().occupied(slot)) held.insert(head.slots().position(slot));
        for (int p = 0; p <= newest; ++p)
          if (head.protects(p, newest)) {
            ++promised;
            ASSERT_TRUE(held.count(p)) << "position " << p << " promised but gone at step " << newest;
          }
      }
  });
  EXPECT_GT(promised, 0);  // every policy promises something (at least the newest token)
}

TYPED_TEST(PolicyInvariants, ProtectedTokensSurviveTenThousandSteps) {
  // One token per step for 10,000 steps, far past any budget: every token the policy (with what a composition
  // added) promised to keep is held at every step. Checked exhaustively every 500 steps, and at every step
  // over the tokens where library protection lives (the first and the newest 64). Dense, which never evicts,
  // holds the whole stream and attends over all of it, quadratic in the steps: 2,000 of them show it too.
  constexpr bool kEvicts = kvevict::policy_traits<typename TestFixture::Policy>::evicts;
  constexpr int kSteps = kEvicts ? 10000 : 2000;
  using CacheT = typename TestFixture::Cache;
  using MatrixT = typename TestFixture::Matrix;
  const Shape s{1, 2, 1, 8, kEvicts ? 16 : kSteps};
  CacheT cache(s, testing_support::make_policy<typename TestFixture::Policy>(), TestFixture::options());
  const Stream<typename TestFixture::Scalar> stream(s, kSteps, 5);
  std::vector<char> held(kSteps);
  MatrixT out(1, stream.q[0].cols());
  long promised = 0;
  for (int t = 0; t < kSteps; ++t) {
    cache.forward(0, stream.q[0].row(t), stream.k[0].row(t), stream.v[0].row(t), out);
    const auto& head = cache.head(0, 0);
    std::fill(held.begin(), held.begin() + t + 1, 0);
    for (int slot = 0; slot < head.slots().capacity(); ++slot)
      if (head.slots().occupied(slot)) held[std::size_t(head.slots().position(slot))] = 1;
    auto check = [&](int p) {
      if (!head.protects(p, t)) return true;
      ++promised;
      return held[std::size_t(p)] == 1;
    };
    if (t % 500 == 0) {
      for (int p = 0; p <= t; ++p) ASSERT_TRUE(check(p)) << "position " << p << " promised but gone at step " << t;
    } else {
      for (int p = 0; p <= std::min(t, 63); ++p) ASSERT_TRUE(check(p)) << "position " << p << " at step " << t;
      for (int p = std::max(64, t - 63); p <= t; ++p) ASSERT_TRUE(check(p)) << "position " << p << " at step " << t;
    }
  }
  EXPECT_GE(promised, kSteps);  // at least the newest token, every step
}

TYPED_TEST(PolicyInvariants, EqualsDenseWhenTheBudgetCoversTheSequence) {
  using CacheT = typename TestFixture::Cache;
  using MatrixT = typename TestFixture::Matrix;
  const Shape s = TestFixture::shape(TestFixture::kTokens);
  CacheOptions o = TestFixture::options();
  o.rope = kvevict::Rope(s.head_dim, 10000.0);
  CacheT cache(s, testing_support::make_policy<typename TestFixture::Policy>(), o);
  kvevict::KVCache<typename TestFixture::Storage, kvevict::Dense> dense(s, {}, o);
  for (int l = 0; l < s.n_layers; ++l)
    if (cache.head(l, 0).context().budget < TestFixture::kTokens)
      GTEST_SKIP() << "a per-layer schedule gives layer " << l << " less than the sequence";
  const Stream<typename TestFixture::Scalar> stream(s, TestFixture::kTokens, 4);
  for (int t = 0; t < TestFixture::kTokens; ++t)
    for (int l = 0; l < s.n_layers; ++l) {
      MatrixT a(1, stream.q[std::size_t(l)].cols()), b(1, stream.q[std::size_t(l)].cols());
      cache.forward(l, stream.q[std::size_t(l)].row(t), stream.k[std::size_t(l)].row(t),
                    stream.v[std::size_t(l)].row(t), a);
      dense.forward(l, stream.q[std::size_t(l)].row(t), stream.k[std::size_t(l)].row(t),
                    stream.v[std::size_t(l)].row(t), b);
      // Bit-identical where the slot tables are as wide as dense's; a head sized for a shared budget has wider
      // rows of weights, whose alignment changes the order of the vectorised sums by an ulp or so.
      if (cache.capacity(l) == dense.capacity(l)) {
        ASSERT_TRUE(a == b) << "step " << t << " layer " << l;
      } else {
        ASSERT_TRUE(a.isApprox(b, typename TestFixture::Scalar(1e-5))) << "step " << t << " layer " << l;
      }
    }
}

TYPED_TEST(PolicyInvariants, KvHeadsAsTasksGiveTheSerialBits) {
  // Each kv head's attention is the same arithmetic on either thread, and the policy observes the heads in the
  // same order on the calling thread: outputs and every slot the same bits as one thread's, at every step.
  using CacheT = typename TestFixture::Cache;
  using MatrixT = typename TestFixture::Matrix;
  const Shape s{2, 6, 3, 8, TestFixture::budget_for(12)};
  testing_support::TwoThreads threads;
  CacheOptions o = TestFixture::options();
  o.rope = kvevict::Rope(s.head_dim, 10000.0);
  o.attention.key_splits = 2;
  o.attention.parallel_for = threads.parallel_for();
  const auto policy = testing_support::make_policy<typename TestFixture::Policy>();
  CacheT serial(s, policy, o);
  o.attention.parallel_heads = true;
  CacheT tasks(s, policy, o);
  const Stream<typename TestFixture::Scalar> stream(s, TestFixture::kTokens, 6);
  for (int t = 0; t < TestFixture::kTokens;) {
    const int chunk = t == 0 ? 5 : 1;
    for (int l = 0; l < s.n_layers; ++l) {
      const auto rows = [&](const std::vector<MatrixT>& m) { return m[std::size_t(l)].middleRows(t, chunk); };
      MatrixT a(chunk, stream.q[std::size_t(l)].cols()), b = a;
      serial.forward(l, rows(stream.q), rows(stream.k), rows(stream.v), a);
      tasks.forward(l, rows(stream.q), rows(stream.k), rows(stream.v), b);
      ASSERT_TRUE(a == b) << "step " << t << " layer " << l;
    }
    t += chunk;
    ASSERT_TRUE(testing_support::Snapshot<CacheT>(serial) == testing_support::Snapshot<CacheT>(tasks)) << "step " << t;
  }
}

TYPED_TEST(PolicyInvariants, CompressesAWholePromptToExactlyItsBudget) {
  // Prompt compression: with max_prompt the whole prompt is appended and attended chunk by chunk with nothing
  // evicted, then one evict() per layer brings it to the budget, keeping what the policy promised. It keeps
  // the same tokens as the same prompt passed as one chunk (max_chunk = its length): the policy saw the same
  // weights, only in pieces; and evict()'s one-pass selection frees the same slots as evict_one() in a loop.
  using CacheT = typename TestFixture::Cache;
  using MatrixT = typename TestFixture::Matrix;
  using Traits = kvevict::policy_traits<typename TestFixture::Policy>;
  constexpr int kPrompt = TestFixture::kTokens;
  const Shape s = TestFixture::shape(TestFixture::budget_for(16));
  CacheOptions chunked = TestFixture::options();
  chunked.max_prompt = kPrompt;
  CacheOptions whole = TestFixture::options();
  whole.max_chunk = kPrompt;
  const auto policy = testing_support::make_policy<typename TestFixture::Policy>();
  CacheT cache(s, policy, chunked), one_chunk(s, policy, whole);
  const Stream<typename TestFixture::Scalar> stream(s, kPrompt, 6);
  for (int l = 0; l < s.n_layers; ++l) {
    const auto& q = stream.q[std::size_t(l)];
    const auto& k = stream.k[std::size_t(l)];
    const auto& v = stream.v[std::size_t(l)];
    for (int t = 0; t < kPrompt; t += chunked.max_chunk) {
      MatrixT out(chunked.max_chunk, q.cols());
      cache.append(l, k.middleRows(t, chunked.max_chunk), v.middleRows(t, chunked.max_chunk));
      cache.attend(l, q.middleRows(t, chunked.max_chunk), out);
    }
    for (int h = 0; h < s.n_kv_heads; ++h) ASSERT_EQ(cache.size(l, h), kPrompt) << "evicted before evict()";
    std::vector<kvevict::Evictor<typename TestFixture::Policy>> one_at_a_time;  // the reference for the bulk path
    for (int h = 0; h < s.n_kv_heads; ++h) one_at_a_time.push_back(cache.head(l, h));
    cache.evict(l);
    if (!Traits::shares_layer_budget) {
      for (int h = 0; h < s.n_kv_heads; ++h) {
        auto& e = one_at_a_time[std::size_t(h)];
        while (e.over_budget()) e.evict_one();
        const auto& bulk = cache.head(l, h).slots();
        for (int slot = 0; slot < bulk.capacity(); ++slot) {
          ASSERT_EQ(bulk.position(slot), e.slots().position(slot)) << "layer " << l << " head " << h;
          ASSERT_EQ(bulk.rotated_at(slot), e.slots().rotated_at(slot)) << "layer " << l << " head " << h;
        }
      }
    }
    MatrixT out(kPrompt, q.cols());
    one_chunk.forward(l, q, k, v, out);
  }
  for (int l = 0; l < s.n_layers; ++l) {
    const int budget = cache.head(l, 0).context().budget;
    EXPECT_EQ(testing_support::layer_held(cache, l), long(s.n_kv_heads) * (Traits::evicts ? budget : kPrompt));
    for (int h = 0; h < s.n_kv_heads; ++h) {
      const auto& head = cache.head(l, h);
      std::set<std::int64_t> held, held_one_chunk;
      for (int slot = 0; slot < head.slots().capacity(); ++slot)
        if (head.slots().occupied(slot)) held.insert(head.slots().position(slot));
      const auto& other = one_chunk.head(l, h).slots();
      for (int slot = 0; slot < other.capacity(); ++slot)
        if (other.occupied(slot)) held_one_chunk.insert(other.position(slot));
      if (!Traits::shares_layer_budget) {
        EXPECT_EQ(int(held.size()), Traits::evicts ? budget : kPrompt);
      }
      for (int p = 0; p < kPrompt; ++p) {
        if (head.protects(p, kPrompt - 1)) {
          EXPECT_TRUE(held.count(p)) << "position " << p << " promised but gone";
        }
      }
      EXPECT_EQ(held, held_one_chunk) << "layer " << l << " head " << h;
    }
  }
}
}  // namespace
