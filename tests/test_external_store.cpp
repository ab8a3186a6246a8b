// SPDX-License-Identifier: Apache-2.0
// The contract serves an engine that owns its K/V memory: here a store of per-token std::vector rows
// (standing in for paged or device memory) driven by Evictor alone, checked against KVCache.
#include <gtest/gtest.h>

#include <kvevict/kvevict.hpp>
#include <vector>

#include "cache_testing.hpp"

namespace {
using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// An engine's own single-head store: rows live in separately allocated "pages", one per slot.
struct PagedHead {
  std::vector<std::vector<float>> key_pages, value_pages;
  kvevict::Evictor<kvevict::StreamingLLM> evictor;
  kvevict::Rope rope;

  PagedHead(int budget, int head_dim, const kvevict::Rope& r)
      : key_pages(std::size_t(budget + 1), std::vector<float>(std::size_t(head_dim))),
        value_pages(key_pages),
        evictor(kvevict::StreamingLLM{2}, kvevict::HeadContext{0, 0, 1, budget, budget + 1, head_dim, 1}),
        rope(r) {}

  // The three rules of Evictor: store then admit; attend; evict and re-rotate what moved.
  std::vector<float> step(std::int64_t pos, const float* q, const float* k, const float* v, int d) {
    const int slot = evictor.next_free_slot();
    auto& key = key_pages[std::size_t(slot)];
    key.assign(k, k + d);
    value_pages[std::size_t(slot)].assign(v, v + d);
    rope.rotate(key.data(), pos);
    evictor.admit(pos, key.data(), value_pages[std::size_t(slot)].data());

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

    while (evictor.over_budget()) {
      const auto e = evictor.evict_one();
      for (int i = 0; i < e.n_shifted; ++i) rope.rotate(key_pages[std::size_t(evictor.shifted_slot(i))].data(), 1);
    }
    return out;
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
