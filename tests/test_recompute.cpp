// SPDX-License-Identifier: Apache-2.0
// Sliding window with re-computation through its protocol, on a small transformer defined here (two layers,
// random weights, real RoPE): each token's output equals a from-scratch forward pass over its window.
#include <gtest/gtest.h>

#include <kvevict/kvevict.hpp>
#include <random>

#include "cache_testing.hpp"

namespace {
using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Pre-norm attention blocks with a tanh MLP; embeddings are random rows per token id.
struct TinyTransformer {
  static constexpr int kLayers = 2, kModel = 24, kQHeads = 4, kKvHeads = 2, kHeadDim = 6, kVocab = 50;
  MatrixF embed;
  std::vector<MatrixF> wq, wk, wv, wo, w1, w2;

  TinyTransformer() {
    std::mt19937 rng(77);
    using testing_support::random_matrix;
    embed = random_matrix<MatrixF>(rng, kVocab, kModel);
    for (int l = 0; l < kLayers; ++l) {
      wq.push_back(random_matrix<MatrixF>(rng, kModel, kQHeads * kHeadDim, 0.3));
      wk.push_back(random_matrix<MatrixF>(rng, kModel, kKvHeads * kHeadDim, 0.3));
      wv.push_back(random_matrix<MatrixF>(rng, kModel, kKvHeads * kHeadDim, 0.3));
      wo.push_back(random_matrix<MatrixF>(rng, kQHeads * kHeadDim, kModel, 0.3));
      w1.push_back(random_matrix<MatrixF>(rng, kModel, 2 * kModel, 0.3));
      w2.push_back(random_matrix<MatrixF>(rng, 2 * kModel, kModel, 0.3));
    }
  }

  static kvevict::Shape shape(int budget) { return kvevict::Shape{kLayers, kQHeads, kKvHeads, kHeadDim, budget}; }
  static kvevict::CacheOptions options() {
    kvevict::CacheOptions o;
    o.max_chunk = 16;
    o.rope = kvevict::Rope(kHeadDim, 10000.0, kvevict::RopeLayout::half_split);
    return o;
  }

  /// Runs tokens [begin, end) of `ids` through the model and the cache; returns the last hidden state.
  template <class Cache>
  Eigen::RowVectorXf forward(Cache& cache, const std::vector<int>& ids, std::int64_t begin, std::int64_t end) const {
    const auto n = static_cast<int>(end - begin);
    MatrixF x(n, kModel);
    for (int t = 0; t < n; ++t) x.row(t) = embed.row(ids[std::size_t(begin + t)]);
    for (int l = 0; l < kLayers; ++l) {
      const MatrixF h = x.array().colwise() / (x.rowwise().norm().array() / std::sqrt(float(kModel)) + 1e-5f);
      const MatrixF q = h * wq[std::size_t(l)], k = h * wk[std::size_t(l)], v = h * wv[std::size_t(l)];
      MatrixF attn(n, kQHeads * kHeadDim);
      cache.forward(l, q, k, v, attn);
      x += attn * wo[std::size_t(l)];
      x += ((x * w1[std::size_t(l)]).array().tanh().matrix()) * w2[std::size_t(l)];
    }
    return x.row(n - 1);
  }
};

TEST(SlidingWindowRecompute, EveryTokenEqualsAFromScratchPassOverItsWindow) {
  const TinyTransformer model;
  constexpr int kWindow = 6, kTokens = 30;
  std::vector<int> ids;
  std::mt19937 rng(5);
  for (int t = 0; t < kTokens; ++t) ids.push_back(int(rng() % TinyTransformer::kVocab));

  kvevict::RecomputeCache cache(TinyTransformer::shape(kWindow), {}, TinyTransformer::options());
  int rebuilds = 0;
  for (int t = 0; t < kTokens; ++t) {
    // The protocol: re-prefill what the policy names into a cleared cache, then decode token t.
    if (const auto range = kvevict::SlidingWindowRecompute::recompute_range(t, cache.shape().budget); !range.empty()) {
      cache.clear();
      model.forward(cache, ids, range.begin, range.end);
      ++rebuilds;
    }
    const Eigen::RowVectorXf got = model.forward(cache, ids, t, t + 1);

    // From scratch: a fresh dense cache, the window's tokens from position 0, then token t.
    kvevict::KVCache<float, kvevict::Dense> fresh(TinyTransformer::shape(kWindow + 1), {}, TinyTransformer::options());
    const Eigen::RowVectorXf expected = model.forward(fresh, ids, std::max(0, t - kWindow), t + 1);
    ASSERT_LE((got - expected).norm(), 1e-5f * (1 + expected.norm())) << "token " << t;
  }
  EXPECT_EQ(rebuilds, kTokens - kWindow - 1);
}

TEST(SlidingWindowRecompute, RangeNamesTheWindowBeforeTheToken) {
  using P = kvevict::SlidingWindowRecompute;
  EXPECT_TRUE(P::recompute_range(5, 8).empty());
  EXPECT_TRUE(P::recompute_range(8, 8).empty());
  EXPECT_EQ(P::recompute_range(9, 8).begin, 1);
  EXPECT_EQ(P::recompute_range(9, 8).end, 9);
}

TEST(SlidingWindowRecompute, ClearAllocatesNothingAndRestartsPositions) {
  kvevict::RecomputeCache cache(TinyTransformer::shape(4), {}, TinyTransformer::options());
  const TinyTransformer model;
  const std::vector<int> ids(10, 3);
  model.forward(cache, ids, 0, 10);
  EXPECT_EQ(cache.n_seen(0), 10);
  cache.clear();
  EXPECT_EQ(cache.n_seen(0), 0);
  EXPECT_EQ(cache.size(1, 1), 0);
  model.forward(cache, ids, 0, 3);
  EXPECT_EQ(cache.size(1, 1), 3);
}
}  // namespace
