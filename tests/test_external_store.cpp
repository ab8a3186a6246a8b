// SPDX-License-Identifier: Apache-2.0
// The contract serves an engine that owns its K/V memory: here a store of per-token std::vector rows
// (standing in for paged or device memory) driven by Evictor alone, checked against KVCache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cstdio>
#include <kvevict/kvevict.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cache_testing.hpp"
#include "reference.hpp"

namespace {
using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// An engine's own single-head store: rows live in separately allocated "pages", one per slot.
struct PagedHead {
  std::vector<std::vector<float>> key_pages, value_pages;
  kvevict::Evictor<kvevict::StreamingLLM> evictor;
  kvevict::KeyShifter shifter;
  kvevict::Rope rope;

  PagedHead(int budget, int head_dim, const kvevict::Rope& r)
      : key_pages(std::size_t(budget + 1), std::vector<float>(std::size_t(head_dim))),
        value_pages(key_pages),
        evictor(kvevict::StreamingLLM{2}, kvevict::HeadContext{0, 0, 1, budget, budget + 1, head_dim, 1}),
        shifter(evictor.pinned_prefix(), head_dim),
        rope(r) {}

  // The three rules of Evictor: store then admit; attend; evict and move on what moved.
  std::vector<float> step(std::int64_t pos, const float* q, const float* k, const float* v, int d) {
    store(pos, k, v, d);
    const std::vector<float> out = attend(pos, q, d);
    evict();
    return out;
  }

  void store(std::int64_t pos, const float* k, const float* v, int d) {
    const int slot = evictor.next_free_slot();
    auto& key = key_pages[std::size_t(slot)];
    key.assign(k, k + d);
    value_pages[std::size_t(slot)].assign(v, v + d);
    shifter.remember(pos, key.data());
    rope.rotate(key.data(), pos);
    evictor.admit(pos, key.data(), value_pages[std::size_t(slot)].data());
  }

  std::vector<float> attend(std::int64_t pos, const float* q, int d) const {
    std::vector<float> query(q, q + d), out(std::size_t(d), 0.0f);
    rope.rotate(query.data(), pos);
    std::vector<double> logits;
    std::vector<int> live;
    for (int s = 0; s < int(key_pages.size()); ++s) {
      if (!evictor.slots().occupied(s)) continue;
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(query[std::size_t(i)]) * key_pages[std::size_t(s)][std::size_t(i)];
      logits.push_back(dot / std::sqrt(double(d)));
      live.push_back(s);
    }
    std::vector<double> w(logits.begin(), logits.end());
    kvevict::normalize(w.data(), int(w.size()), kvevict::Normalization::softmax);
    for (std::size_t j = 0; j < live.size(); ++j)
      for (int i = 0; i < d; ++i)
        out[std::size_t(i)] += float(w[j]) * value_pages[std::size_t(live[j])][std::size_t(i)];
    return out;
  }

  void evict() {
    while (evictor.over_budget()) evictor.evict_one();
    evictor.move_keys([&](int slot, std::int64_t position, std::int64_t from, std::int64_t to) {
      shifter.move(rope, key_pages[std::size_t(slot)].data(), position, from, to);
    });
  }
};

TEST(ExternalStore, EvictorOverEngineMemoryMatchesKVCache) {
  const kvevict::Shape shape{1, 1, 1, 16, 8};
  kvevict::CacheOptions options;
  options.max_chunk = 1;
  options.rope = kvevict::Rope(16, 10000.0, kvevict::RopeLayout::half_split);
  kvevict::StreamingCache cache(shape, kvevict::StreamingLLM{2}, options);
  PagedHead engine(shape.budget, shape.head_dim, options.rope);
  const testing_support::Stream<float> stream(shape, 50, 8);
  for (int t = 0; t < 50; ++t) {
    MatrixF out(1, 16);
    cache.forward(0, stream.q[0].row(t), stream.k[0].row(t), stream.v[0].row(t), out);
    const auto mine =
        engine.step(t, stream.q[0].row(t).data(), stream.k[0].row(t).data(), stream.v[0].row(t).data(), 16);
    for (int i = 0; i < 16; ++i) ASSERT_NEAR(mine[std::size_t(i)], out(0, i), 1e-5) << "step " << t;
    ASSERT_EQ(engine.evictor.size(), cache.size(0, 0));
  }
}

// The sinks move once per token for the whole stream; through KeyShifter they stay within one float rounding of
// their exact rotation (the bound is derived in test_kv_cache.cpp's SinkKeyOverLongStreams).
TEST(ExternalStore, SinkKeysStayExactThroughKeyShifter) {
  constexpr int d = 64, kBudget = 8;
  constexpr long kSteps = testing_support::kLongStreamTokens;
  PagedHead engine(kBudget, d, kvevict::Rope(d, 10000.0, kvevict::RopeLayout::half_split));
  std::mt19937 rng(12);
  const MatrixF sinks = testing_support::random_matrix<MatrixF>(rng, 2, d),
                other = testing_support::random_matrix<MatrixF>(rng, 1, d);
  for (long t = 0; t < kSteps; ++t) {
    const float* k = t < 2 ? sinks.row(t).data() : other.data();
    engine.store(t, k, k, d);  // no attention: the keys do not depend on it
    engine.evict();
  }
  const auto& slots = engine.evictor.slots();
  int checked = 0;
  for (int s = 0; s < slots.capacity(); ++s) {
    if (!slots.occupied(s) || slots.position(s) >= 2) continue;
    const std::int64_t p = slots.position(s);
    ASSERT_EQ(slots.rotated_at(s), kSteps - kBudget + p);
    ref::Vec unrotated(d);
    for (int i = 0; i < d; ++i) unrotated[std::size_t(i)] = double(sinks(p, i));
    const ref::Vec exact = ref::rope(unrotated, double(slots.rotated_at(s)), 10000.0, kvevict::RopeLayout::half_split);
    const ref::Vec norms = ref::rope_pair_norms(unrotated, kvevict::RopeLayout::half_split);
    const double magnitude = *std::max_element(norms.begin(), norms.end());
    double largest = 0.0;
    for (int i = 0; i < d; ++i)
      largest =
          std::max(largest, std::abs(double(engine.key_pages[std::size_t(s)][std::size_t(i)]) - exact[std::size_t(i)]));
    EXPECT_LE(largest, FLT_EPSILON * magnitude) << "sink " << p;
    std::printf("sink %lld after %ld tokens: largest error %.2g (bound %.2g)\n", static_cast<long long>(p), kSteps,
                largest, FLT_EPSILON * magnitude);
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

/// A policy written against the contract alone, in a handful of lines: evict the newest non-protected token.
struct KeepOldest {
  int select(const kvevict::SlotView& slots) const {
    int victim = -1;
    for (int s = 0; s < slots.capacity; ++s)
      if (slots.occupied(s) && slots.positions[s] != slots.newest &&
          (victim < 0 || slots.positions[s] > slots.positions[victim]))
        victim = s;
    return victim;
  }
  bool protects(std::int64_t position, std::int64_t newest) const { return position == newest; }
};

TEST(ExternalStore, AUserPolicyPlugsIntoKVCache) {
  static_assert(kvevict::is_eviction_policy_v<KeepOldest>);
  const kvevict::Shape shape{1, 2, 1, 4, 3};
  kvevict::KVCache<float, KeepOldest> cache(shape);
  MatrixF q = MatrixF::Ones(1, 8), kv = MatrixF::Ones(1, 4), out(1, 8);
  for (int t = 0; t < 10; ++t) cache.forward(0, q, kv, kv, out);
  std::vector<std::int64_t> kept;
  for (int s = 0; s < cache.capacity(); ++s)
    if (cache.head(0, 0).slots().occupied(s)) kept.push_back(cache.head(0, 0).slots().position(s));
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(kept, (std::vector<std::int64_t>{0, 1, 9}));
}

TEST(ExternalStore, EvictorPreconditionsAreChecked) {
  const auto context = kvevict::HeadContext{}.with_budget(2).with_capacity(3).with_head_dim(4);
  kvevict::Evictor<kvevict::Window> e(kvevict::Window{}, context);
  const float row[4] = {1, 1, 1, 1};
  e.admit(0, row, row);
  EXPECT_THROW(e.admit(0, row, row), kvevict::InvalidArgument);  // positions must increase
  e.admit(1, row, row);
  e.admit(2, row, row);
  EXPECT_EQ(e.next_free_slot(), -1);
  EXPECT_THROW(e.admit(3, row, row), kvevict::InvalidArgument);  // full: evict first
  EXPECT_EQ(e.size(), 3);
  e.evict_one();
  e.admit(3, row, row);
  EXPECT_EQ(e.size(), 3);
  kvevict::Evictor<kvevict::H2O> empty(kvevict::H2O{}, context);
  EXPECT_THROW(empty.evict_one(), std::logic_error);  // nothing to evict: checked in release builds too
}

TEST(ExternalStore, AContextOutOfRangeIsNamedBeforeAnyAllocation) {
  const auto good = kvevict::HeadContext{}.with_budget(2).with_capacity(3).with_head_dim(4);
  auto message = [](const kvevict::HeadContext& c) {
    try {
      kvevict::Evictor<kvevict::Window> e(kvevict::Window{}, c);
    } catch (const kvevict::InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(message(good), "accepted");
  EXPECT_EQ(message(good.with_capacity(-1)),
            "kvevict: context.capacity: expected in [budget = 2, budget + 134217728], got -1");
  EXPECT_EQ(message(good.with_capacity(1 << 30)).substr(0, 26), "kvevict: context.capacity:");
  EXPECT_EQ(message(good.with_budget(0)), "kvevict: context.budget: expected in [1, 134217728], got 0");
  EXPECT_EQ(message(good.with_head_dim(0)), "kvevict: context.head_dim: expected in [1, 8192], got 0");
  EXPECT_EQ(message(good.with_group_size(0)), "kvevict: context.group_size: expected in [1, 65536], got 0");
  EXPECT_EQ(message(good.with_layer(3, 2)), "kvevict: context.layer: expected in [0, n_layers = 2), got 3");
  EXPECT_EQ(message(good.with_kv_head(-1)), "kvevict: context.kv_head: expected in [0, 65536), got -1");
}

struct BrokenPolicy {
  int select(const kvevict::SlotView&) const { return 1000; }
};

TEST(ExternalStore, APolicyNamingAFreeSlotIsCaught) {
  kvevict::KVCache<float, BrokenPolicy> cache(kvevict::Shape{1, 1, 1, 4, 1});
  MatrixF x = MatrixF::Ones(1, 4), out(1, 4);
  cache.forward(0, x, x, x, out);
  EXPECT_THROW(cache.forward(0, x, x, x, out), std::logic_error);
}
}  // namespace

namespace {
TEST(ExternalStore, SixteenBitEngineMemoryThroughTheLibraryKernel) {
  // An engine that keeps its own K/V as half in one slab per head follows Evictor's three rules and runs the
  // library's kernel over that memory (GroupAttention<float, Eigen::half>). It holds what
  // KVCache<Eigen::half, ...> holds, bit for bit (both rotate in float and store once), and attends alike.
  // The policy exercises every rule: H2O needs the weights (rule 2), and with positions within the cache
  // the kept keys move on as tokens leave (rule 3), the sinks through KeyShifter.
  using Policy = kvevict::CachePositions<kvevict::Protected<kvevict::H2O>>;
  constexpr int kDim = 16, kBudget = 8, kGroup = 2, kSteps = 120;
  const Policy policy{kvevict::with_sinks(kvevict::H2O{}, 2)};
  const kvevict::Shape shape{1, kGroup, 1, kDim, kBudget};
  kvevict::CacheOptions options;
  options.max_chunk = 1;
  options.rope = kvevict::Rope(kDim, 10000.0);
  kvevict::KVCache<Eigen::half, Policy> cache(shape, policy, options);

  const int capacity = kBudget + 1;
  std::vector<Eigen::half> keys(std::size_t(capacity) * kDim), values(keys.size());
  kvevict::Evictor<Policy> evictor(
      policy,
      kvevict::HeadContext{}.with_budget(kBudget).with_capacity(capacity).with_head_dim(kDim).with_group_size(kGroup));
  kvevict::KeyShifter shifter(evictor.pinned_prefix(), kDim);
  std::vector<float> key(kDim), query(std::size_t(kGroup) * kDim), out(query.size()),
      probs(std::size_t(kGroup) * capacity);
  const testing_support::Stream<float> stream(shape, kSteps, 31);
  MatrixF expected(1, kGroup * kDim);
  for (int t = 0; t < kSteps; ++t) {
    // Rule 1: rotate in float, store rounded once, admit.
    const int slot = evictor.next_free_slot();
    std::copy(stream.k[0].row(t).data(), stream.k[0].row(t).data() + kDim, key.begin());
    shifter.remember(t, key.data());
    options.rope.rotate(key.data(), t);
    for (int i = 0; i < kDim; ++i) {
      keys[std::size_t(slot) * kDim + std::size_t(i)] = Eigen::half(key[std::size_t(i)]);
      values[std::size_t(slot) * kDim + std::size_t(i)] = Eigen::half(stream.v[0](t, i));
    }
    evictor.admit(t, keys.data() + std::ptrdiff_t(slot) * kDim, values.data() + std::ptrdiff_t(slot) * kDim);
    // Rule 2: attend over the engine's own half memory, show the weights to the policy.
    std::copy(stream.q[0].row(t).data(), stream.q[0].row(t).data() + kGroup * kDim, query.begin());
    for (int h = 0; h < kGroup; ++h) options.rope.rotate(query.data() + h * kDim, t);
    const std::int64_t query_pos = t;
    const auto g =
        kvevict::GroupAttention<float, Eigen::half>{}
            .with_queries(query.data(), kGroup * kDim, &query_pos, 1)
            .with_cache(keys.data(), values.data(), evictor.slots().positions(), capacity, evictor.slots().high_water())
            .with_heads(kGroup, kDim)
            .with_weights(probs.data())
            .with_output(out.data(), kGroup * kDim);
    kvevict::attend_group(g, options.attention);
    evictor.observe(kvevict::AttentionView<float>{probs.data(), nullptr, options.attention.scale_for(kDim), &query_pos,
                                                  1, kGroup, evictor.view()});
    // Rule 3: evict, and move on the keys that moved.
    while (evictor.over_budget()) evictor.evict_one();
    evictor.move_keys([&](int moved, std::int64_t position, std::int64_t from, std::int64_t to) {
      shifter.move(options.rope, keys.data() + std::ptrdiff_t(moved) * kDim, position, from, to);
    });
    cache.forward(0, stream.q[0].row(t), stream.k[0].row(t), stream.v[0].row(t), expected);
    for (int s = 0; s < capacity; ++s) {
      ASSERT_EQ(evictor.slots().position(s), cache.head(0, 0).slots().position(s)) << "step " << t;
      if (!evictor.slots().occupied(s)) continue;
      for (int i = 0; i < kDim; ++i) {
        const std::size_t at = std::size_t(s) * kDim + std::size_t(i);
        ASSERT_EQ(keys[at], cache.keys(0, 0)(s, i)) << "step " << t << " slot " << s;
        ASSERT_EQ(values[at], cache.values(0, 0)(s, i)) << "step " << t << " slot " << s;
      }
    }
    // The same inputs to the same kernel; Eigen's products peel by the buffers' alignment, which may order a
    // sum differently: a few float roundings.
    for (int i = 0; i < kGroup * kDim; ++i)
      ASSERT_NEAR(out[std::size_t(i)], expected(0, i), 1e-6f * (1.0f + std::abs(expected(0, i)))) << "step " << t;
  }
}
}  // namespace
