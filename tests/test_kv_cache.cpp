// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cstdio>
#include <kvevict/kvevict.hpp>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "cache_testing.hpp"
#include "reference.hpp"
#include "two_threads.hpp"

namespace {
using kvevict::CacheOptions;
using kvevict::InvalidArgument;
using kvevict::Shape;
using testing_support::Snapshot;
using testing_support::Stream;
using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

ref::Vec head_row(const MatrixF& m, int row, int head, int d) {
  ref::Vec v(static_cast<std::size_t>(d));
  for (int i = 0; i < d; ++i) v[std::size_t(i)] = double(m(row, head * d + i));
  return v;
}

double relative_error(double got, double expected) { return std::abs(got - expected) / (1.0 + std::abs(expected)); }

// ---- Dense through the cache equals attention from scratch over every token -------------------------

class DenseFromScratch : public ::testing::TestWithParam<Shape> {};

TEST_P(DenseFromScratch, DecodeAndChunkedPrefillMatch) {
  const Shape shape = GetParam();
  const int n_tokens = shape.budget;
  const Stream<float> stream(shape, n_tokens, 5);
  CacheOptions options;
  options.max_chunk = 8;
  options.rope = kvevict::Rope(shape.head_dim, 10000.0);
  kvevict::DenseCache cache(shape, {}, options);
  for (int layer = 0; layer < shape.n_layers; ++layer) {
    // Prefill 11 tokens in chunks of 8 and 3, then decode one at a time.
    int t = 0;
    while (t < n_tokens) {
      const int chunk = t == 0 ? 8 : (t == 8 ? 3 : 1);
      MatrixF out(chunk, stream.q[std::size_t(layer)].cols());
      cache.forward(layer, stream.q[std::size_t(layer)].middleRows(t, chunk),
                    stream.k[std::size_t(layer)].middleRows(t, chunk),
                    stream.v[std::size_t(layer)].middleRows(t, chunk), out);
      // From scratch: rotate everything at its position, attend causally over all tokens so far.
      MatrixF q = stream.q[std::size_t(layer)].topRows(t + chunk), k = stream.k[std::size_t(layer)].topRows(t + chunk);
      for (int i = 0; i < t + chunk; ++i) {
        for (int h = 0; h < shape.n_q_heads; ++h) options.rope.rotate(q.row(i).data() + h * shape.head_dim, i);
        for (int h = 0; h < shape.n_kv_heads; ++h) options.rope.rotate(k.row(i).data() + h * shape.head_dim, i);
      }
      std::vector<std::int64_t> pos(std::size_t(t + chunk));
      for (std::size_t i = 0; i < pos.size(); ++i) pos[i] = std::int64_t(i);
      const MatrixF all = kvevict::attention<float>(q, k, stream.v[std::size_t(layer)].topRows(t + chunk), pos, pos,
                                                    shape.n_q_heads, shape.n_kv_heads);
      // Two float computations of the same attention in different orders (the cache's chunks and decode steps
      // against the from-scratch pass, which takes 16 queries or more through matrix products): a logit sums
      // head_dim products and an output n weighted rows, so they may differ by about head_dim + n roundings
      // relative to the output's scale; twice that bounds it.
      const double tolerance = 2.0 * (shape.head_dim + n_tokens) * double(std::numeric_limits<float>::epsilon());
      for (int r = 0; r < chunk; ++r)
        for (int c = 0; c < out.cols(); ++c)
          ASSERT_LE(relative_error(out(r, c), all(t + r, c)), tolerance) << "token " << t + r << " col " << c;
      t += chunk;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(MhaGqaMqa, DenseFromScratch,
                         ::testing::Values(Shape{2, 4, 4, 16, 40}, Shape{2, 6, 2, 32, 40}, Shape{1, 8, 1, 64, 40},
                                           Shape{1, 9, 3, 64, 24}));

TEST(DoublePrecision, DenseCacheMatchesTheReferenceToRoundOff) {
  const Shape shape{1, 6, 2, 16, 30};
  const Stream<double> stream(shape, 30, 17);
  CacheOptions options;
  options.rope = kvevict::Rope(16, 10000.0, kvevict::RopeLayout::half_split);
  kvevict::KVCache<double, kvevict::Dense> cache(shape, {}, options);
  using MatrixD = kvevict::KVCache<double, kvevict::Dense>::Matrix;
  MatrixD out(1, 96);
  for (int t = 0; t < 30; ++t) cache.forward(0, stream.q[0].row(t), stream.k[0].row(t), stream.v[0].row(t), out);
  // The last query against every key, from the definitions.
  for (int h = 0; h < 6; ++h) {
    std::vector<ref::Vec> keys, values;
    for (int j = 0; j < 30; ++j) {
      ref::Vec k(16), v(16);
      for (int i = 0; i < 16; ++i) {
        k[std::size_t(i)] = stream.k[0](j, (h / 3) * 16 + i);
        v[std::size_t(i)] = stream.v[0](j, (h / 3) * 16 + i);
      }
      keys.push_back(ref::rope(k, j, 10000.0, kvevict::RopeLayout::half_split));
      values.push_back(v);
    }
    ref::Vec q(16);
    for (int i = 0; i < 16; ++i) q[std::size_t(i)] = stream.q[0](29, h * 16 + i);
    const ref::Vec expected = ref::attention(ref::rope(q, 29, 10000.0, kvevict::RopeLayout::half_split), keys, values,
                                             0.25, kvevict::Normalization::softmax);
    for (int i = 0; i < 16; ++i) EXPECT_NEAR(out(0, h * 16 + i), expected[std::size_t(i)], 1e-12);
  }
}

// ---- StreamingLLM equals from-scratch attention over the kept tokens at their in-cache positions --------

class StreamingFromScratch : public ::testing::TestWithParam<kvevict::RopeLayout> {};

TEST_P(StreamingFromScratch, EveryStepOverFiveTimesTheBudget) {
  const Shape shape{1, 4, 2, 16, 12};
  const int sinks = 4, window = shape.budget - sinks, n_tokens = 5 * shape.budget;
  const Stream<float> stream(shape, n_tokens, 9);
  CacheOptions options;
  options.max_chunk = 1;
  options.rope = kvevict::Rope(shape.head_dim, 10000.0, GetParam());
  kvevict::StreamingCache cache(shape, kvevict::StreamingLLM{sinks}, options);
  const int group = shape.group_size(), d = shape.head_dim;
  for (int t = 0; t < n_tokens; ++t) {
    MatrixF out(1, shape.n_q_heads * d);
    cache.forward(0, stream.q[0].row(t), stream.k[0].row(t), stream.v[0].row(t), out);
    // What the query saw: the sinks and the window before it, then itself, at ranks 0, 1, 2, ...
    std::vector<int> seen;
    for (int p = 0; p <= t; ++p)
      if (p < sinks || p >= t - window) seen.push_back(p);
    for (int h = 0; h < shape.n_q_heads; ++h) {
      std::vector<ref::Vec> keys, values;
      for (std::size_t rank = 0; rank < seen.size(); ++rank) {
        keys.push_back(ref::rope(head_row(stream.k[0], seen[rank], h / group, d), double(rank), 10000.0, GetParam()));
        values.push_back(head_row(stream.v[0], seen[rank], h / group, d));
      }
      const ref::Vec q = ref::rope(head_row(stream.q[0], t, h, d), double(seen.size() - 1), 10000.0, GetParam());
      const ref::Vec expected =
          ref::attention(q, keys, values, 1.0 / std::sqrt(double(d)), kvevict::Normalization::softmax);
      for (int i = 0; i < d; ++i)
        ASSERT_LE(relative_error(out(0, h * d + i), expected[std::size_t(i)]), 1e-5) << "step " << t << " head " << h;
    }
    // Kept afterwards: the sinks and the last `window` tokens.
    std::set<std::int64_t> kept;
    for (int s = 0; s < cache.capacity(); ++s)
      if (cache.head(0, 0).slots().occupied(s)) kept.insert(cache.head(0, 0).slots().position(s));
    std::set<std::int64_t> expected_kept;
    for (int p = 0; p <= t; ++p)
      if (p < sinks || p > t - window) expected_kept.insert(p);
    ASSERT_EQ(kept, expected_kept) << "step " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(BothLayouts, StreamingFromScratch,
                         ::testing::Values(kvevict::RopeLayout::adjacent, kvevict::RopeLayout::half_split));

// Any score policy with positions within the cache: the query sees the tokens held before the step and
// itself, each key rotated at its rank, however the policy picked them (H2O evicts from the middle).
TEST(CachePositions, AScorePolicySeesItsKeptTokensAtTheirRanks) {
  const Shape shape{1, 4, 2, 16, 12};
  const int n_tokens = 400, group = shape.group_size(), d = shape.head_dim;
  const Stream<float> stream(shape, n_tokens, 19);
  CacheOptions options;
  options.max_chunk = 1;
  options.rope = kvevict::Rope(d, 10000.0);
  kvevict::KVCache<float, kvevict::CachePositions<kvevict::Protected<kvevict::H2O>>> cache(
      shape, kvevict::CachePositions<kvevict::Protected<kvevict::H2O>>(with_sinks(kvevict::H2O{}, 2)), options);
  for (int t = 0; t < n_tokens; ++t) {
    std::vector<std::vector<int>> seen(std::size_t(shape.n_kv_heads));
    for (int kv = 0; kv < shape.n_kv_heads; ++kv) {
      const auto& slots = cache.head(0, kv).slots();
      for (int s = 0; s < slots.capacity(); ++s)
        if (slots.occupied(s)) seen[std::size_t(kv)].push_back(int(slots.position(s)));
      seen[std::size_t(kv)].push_back(t);
      std::sort(seen[std::size_t(kv)].begin(), seen[std::size_t(kv)].end());
    }
    MatrixF out(1, shape.n_q_heads * d);
    cache.forward(0, stream.q[0].row(t), stream.k[0].row(t), stream.v[0].row(t), out);
    for (int h = 0; h < shape.n_q_heads; ++h) {
      const auto& ranks = seen[std::size_t(h / group)];
      std::vector<ref::Vec> keys, values;
      for (std::size_t rank = 0; rank < ranks.size(); ++rank) {
        keys.push_back(ref::rope(head_row(stream.k[0], ranks[rank], h / group, d), double(rank), 10000.0,
                                 kvevict::RopeLayout::adjacent));
        values.push_back(head_row(stream.v[0], ranks[rank], h / group, d));
      }
      const ref::Vec q =
          ref::rope(head_row(stream.q[0], t, h, d), double(ranks.size() - 1), 10000.0, kvevict::RopeLayout::adjacent);
      const ref::Vec expected =
          ref::attention(q, keys, values, 1.0 / std::sqrt(double(d)), kvevict::Normalization::softmax);
      for (int i = 0; i < d; ++i)
        ASSERT_LE(relative_error(out(0, h * d + i), expected[std::size_t(i)]), 1e-5) << "step " << t << " head " << h;
    }
  }
}

TEST(StreamingLLM, OnlySinkRowsAreReRotated) {
  const Shape shape{1, 2, 1, 8, 10};
  CacheOptions options;
  options.max_chunk = 1;
  options.rope = kvevict::Rope(8);
  kvevict::StreamingCache cache(shape, kvevict::StreamingLLM{3}, options);
  const Stream<float> stream(shape, 40, 2);
  MatrixF out(1, 16);
  for (int t = 0; t < 40; ++t) cache.forward(0, stream.q[0].row(t), stream.k[0].row(t), stream.v[0].row(t), out);
  const auto& slots = cache.head(0, 0).slots();
  for (int s = 0; s < slots.capacity(); ++s) {
    if (!slots.occupied(s)) continue;
    const std::int64_t p = slots.position(s);
    // 30 tokens have left; each sink moved 30 positions closer, the window kept its own positions.
    EXPECT_EQ(slots.rotated_at(s), p < 3 ? p + 30 : p) << "position " << p;
  }
}

// ---- Sink keys over long streams -------------------------------------------------------------------------

// Streams run to millions of positions (the paper goes to 4M), and StreamingLLM's sinks move one position on
// per token for the whole stream. Turning the stored float row by +1 each time drifted linearly: 7e-4 after
// 1M tokens, 3e-3 after 4M (this key: head_dim 64, unit-variance entries). KeyShifter keeps the sinks in
// double and stores each new rotation rounded once.
struct SinkKey {
  std::int64_t rotated_at;
  double largest_error;  // against ref::rope at rotated_at
  double magnitude;      // m: the largest norm of a RoPE pair of the key, which no element of a rotation exceeds
};

constexpr int kSinkDim = 64, kSinkBudget = 8;

template <class Scalar>
kvevict::KVCache<Scalar, kvevict::StreamingLLM> sink_cache(kvevict::RopeLayout layout) {
  CacheOptions options;
  options.max_chunk = 1;
  options.rope = kvevict::Rope(kSinkDim, 10000.0, layout);
  return kvevict::KVCache<Scalar, kvevict::StreamingLLM>(Shape{1, 1, 1, kSinkDim, kSinkBudget},
                                                         kvevict::StreamingLLM{4}, options);
}

// Streams `steps` tokens, the first with key `sink`, and measures where that key ends up. Append and evict
// without attention: the keys do not depend on it, and a million steps stay quick in a sanitizer build.
template <class Cache>
SinkKey stream_after_sink(Cache& cache, const typename Cache::Matrix& sink, long steps) {
  using Matrix = typename Cache::Matrix;
  std::mt19937 rng(5);
  const Matrix other = testing_support::random_matrix<Matrix>(rng, 1, kSinkDim);
  cache.append(0, sink, sink);
  cache.evict(0);
  for (long t = 1; t < steps; ++t) {
    cache.append(0, other, other);
    cache.evict(0);
  }
  const kvevict::RopeLayout layout = cache.options().rope.layout();
  ref::Vec unrotated(kSinkDim);
  for (int i = 0; i < kSinkDim; ++i) unrotated[std::size_t(i)] = double(sink(0, i));
  SinkKey key{-1, 0.0, 0.0};
  const ref::Vec pair_norms = ref::rope_pair_norms(unrotated, layout);
  key.magnitude = *std::max_element(pair_norms.begin(), pair_norms.end());
  const auto& slots = cache.head(0, 0).slots();
  for (int s = 0; s < slots.capacity(); ++s) {
    if (!slots.occupied(s) || slots.position(s) != 0) continue;
    key.rotated_at = slots.rotated_at(s);
    const ref::Vec exact = ref::rope(unrotated, double(key.rotated_at), 10000.0, layout);
    for (int i = 0; i < kSinkDim; ++i)
      key.largest_error = std::max(key.largest_error, std::abs(double(cache.keys(0, 0)(s, i)) - exact[std::size_t(i)]));
  }
  return key;
}

enum class Stored { f32, f64, f16, bf16 };

struct SinkCase {
  const char* name;
  kvevict::RopeLayout layout;
  Stored storage;
};
void PrintTo(const SinkCase& c, std::ostream* os) { *os << c.name; }

class SinkKeyOverLongStreams : public ::testing::TestWithParam<SinkCase> {};

TEST_P(SinkKeyOverLongStreams, StaysOnItsExactRotation) {
  constexpr long kSteps = testing_support::kLongStreamTokens;
  const SinkCase c = GetParam();
  std::mt19937 rng(99);
  SinkKey key{};
  double unit_roundoff = 0.0;
  auto run = [&](auto storage) {
    using Storage = decltype(storage);
    auto cache = sink_cache<Storage>(c.layout);
    key = stream_after_sink(cache, testing_support::random_matrix<typename decltype(cache)::Matrix>(rng, 1, kSinkDim),
                            kSteps);
    unit_roundoff = kvevict::storage_traits<Storage>::unit_roundoff();
  };
  switch (c.storage) {
    case Stored::f32:
      run(float{});
      break;
    case Stored::f64:
      run(double{});
      break;
    case Stored::f16:
      run(Eigen::half{});
      break;
    case Stored::bf16:
      run(Eigen::bfloat16{});
      break;
  }
  EXPECT_EQ(key.rotated_at, kSteps - kSinkBudget);  // the newest token sits budget - 1 ranks after the sink
  // The bound, from the arithmetic. Reference and cache both round the angle P * theta_i to double (up to
  // P * 2^-53 rad each at position P), and the cache's double copy adds the round-off of at most
  // kExactEvery +1 turns (a few 2^-53 each) since its last fresh rotation: DBL_EPSILON * (P + 4 kExactEvery)
  // of m in all, 2e-10 m at P = 1M. A double cache stores that copy as it is. A float or 16-bit cache rounds
  // it once, at most u m off (u: the storage's unit round-off, half an ulp of m); the bound 2 u m covers both.
  const double in_double = DBL_EPSILON * double(key.rotated_at + 4 * kvevict::KeyShifter::kExactEvery) * key.magnitude;
  const double bound = c.storage == Stored::f64 ? in_double : 2.0 * unit_roundoff * key.magnitude;
  EXPECT_LE(key.largest_error, bound);
  std::printf("%s sink key after %ld tokens: largest error %.2g (bound %.2g; key magnitude %.2f)\n", c.name, kSteps,
              key.largest_error, bound, key.magnitude);
}

INSTANTIATE_TEST_SUITE_P(EveryStorage, SinkKeyOverLongStreams,
                         ::testing::Values(SinkCase{"float_adjacent", kvevict::RopeLayout::adjacent, Stored::f32},
                                           SinkCase{"float_half_split", kvevict::RopeLayout::half_split, Stored::f32},
                                           SinkCase{"double_adjacent", kvevict::RopeLayout::adjacent, Stored::f64},
                                           SinkCase{"half_adjacent", kvevict::RopeLayout::adjacent, Stored::f16},
                                           SinkCase{"bfloat16_adjacent", kvevict::RopeLayout::adjacent, Stored::bf16}),
                         [](const ::testing::TestParamInfo<SinkCase>& c) { return std::string(c.param.name); });

TEST(StreamingLLM, ClearForgetsTheSinkKeys) {
  auto cache = sink_cache<float>(kvevict::RopeLayout::adjacent);
  std::mt19937 rng(3);
  const MatrixF old_sink = testing_support::random_matrix<MatrixF>(rng, 1, kSinkDim),
                new_sink = testing_support::random_matrix<MatrixF>(rng, 1, kSinkDim);
  stream_after_sink(cache, old_sink, 3 * kvevict::KeyShifter::kExactEvery);
  cache.clear();
  const SinkKey key = stream_after_sink(cache, new_sink, 10000);
  EXPECT_EQ(key.rotated_at, 10000 - kSinkBudget);
  EXPECT_LE(key.largest_error, FLT_EPSILON * key.magnitude);
}

// ---- Bad input: a clear error naming the parameter, and the cache exactly as it was -----------------------

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "no error";
}

TEST(BadInput, SizesAreBoundedBeforeAnythingIsAllocated) {
  // A mistyped size fails at once with InvalidArgument naming it, before any allocation (a bad_alloc or the
  // process being killed would fail the test): each count against its stated maximum, then the product.
  auto expect = [](const std::string& message, const std::string& wanted) {
    EXPECT_NE(message.find(wanted), std::string::npos) << message;
  };
  expect(error_of([] { kvevict::DenseCache c(Shape{1, 1, 1, 8, 1 << 30}); }), "budget: expected in [1, 134217728]");
  expect(error_of([] { kvevict::DenseCache c(Shape{1 << 20, 1, 1, 8, 8}); }), "n_layers: expected in [1, 65536]");
  expect(error_of([] { kvevict::DenseCache c(Shape{1, 1 << 20, 1, 8, 8}); }), "n_q_heads: expected in [1, 65536]");
  expect(error_of([] { kvevict::DenseCache c(Shape{1, 1, 1, 1 << 14, 8}); }), "head_dim: expected in [1, 8192]");
  expect(error_of([] {
           CacheOptions o;
           o.max_chunk = std::numeric_limits<int>::max();  // budget + max_chunk would overflow an int
           kvevict::DenseCache c(Shape{1, 1, 1, 8, 8}, {}, o);
         }),
         "max_chunk: expected in [1, 65536]");
  expect(error_of([] {
           CacheOptions o;
           o.max_prompt = -1;
           kvevict::DenseCache c(Shape{1, 1, 1, 8, 8}, {}, o);
         }),
         "max_prompt: expected in [0, 134217728], got -1");
  expect(error_of([] {
           CacheOptions o;
           o.max_prompt = std::numeric_limits<int>::max();
           kvevict::DenseCache c(Shape{1, 1, 1, 8, 8}, {}, o);
         }),
         "max_prompt: expected in [0, 134217728]");
  // Each count within bounds, the product not: SmolLM2's shape at 64M tokens per head is 2.9 TiB of K/V.
  expect(error_of([] {
           kvevict::StreamingCache c(Shape{30, 9, 3, 64, 1 << 26}, kvevict::StreamingLLM{4});
         }),
         "budget: expected a cache of at most max_bytes = 64 GiB");
  // Heads sharing a layer's budget may each hold up to n_kv_heads x budget: that is bounded too.
  expect(error_of([] {
           kvevict::KVCache<float, kvevict::AdaptiveHeads<kvevict::H2O>> c(Shape{1, 4096, 4096, 8, 1 << 20});
         }),
         "at most 134217728 tokens in one head sharing its layer's budget");
}

TEST(BadInput, AccessorsCheckTheLayerAndTheKvHead) {
  const kvevict::H2OCache cache(Shape{2, 4, 2, 8, 8});
  EXPECT_NE(error_of([&] { cache.n_seen(5); }).find("layer: expected in [0, n_layers = 2), got 5"), std::string::npos);
  EXPECT_NE(error_of([&] { cache.size(0, 2); }).find("kv_head: expected in [0, n_kv_heads = 2), got 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { cache.head(-1, 0); }).find("layer"), std::string::npos);
  EXPECT_NE(error_of([&] { cache.keys(1, -1); }).find("kv_head"), std::string::npos);
  EXPECT_NE(error_of([&] { cache.values(2, 0); }).find("layer"), std::string::npos);
  EXPECT_NE(error_of([&] { cache.capacity(2); }).find("layer"), std::string::npos);
  EXPECT_EQ(error_of([&] { cache.size(1, 1); }), "no error");
}

TEST(BadInput, ReferenceAttentionRejectsNoQueryHeads) {
  const MatrixF x = MatrixF::Ones(1, 8);
  EXPECT_NE(error_of([&] { kvevict::attention<float>(x, x, x, {0}, {0}, 0, 1); }).find("n_q_heads: expected > 0"),
            std::string::npos);
}

TEST(BadInput, ShapeErrorsNameTheParameter) {
  EXPECT_NE(error_of([] { kvevict::DenseCache c(Shape{1, 6, 4, 8, 8}); }).find("n_kv_heads"), std::string::npos);
  EXPECT_NE(error_of([] { kvevict::DenseCache c(Shape{0, 1, 1, 8, 8}); }).find("n_layers"), std::string::npos);
  EXPECT_NE(error_of([] { kvevict::DenseCache c(Shape{1, 1, 1, 0, 8}); }).find("head_dim"), std::string::npos);
  EXPECT_NE(error_of([] { kvevict::DenseCache c(Shape{1, 1, 1, 8, 0}); }).find("budget"), std::string::npos);
  const std::string sinks = error_of([] { kvevict::StreamingCache c(Shape{1, 1, 1, 8, 4}, kvevict::StreamingLLM{4}); });
  EXPECT_NE(sinks.find("budget: expected >= sinks + 1 = 5, got 4"), std::string::npos) << sinks;
  const std::string odd = error_of([] {
    CacheOptions o;
    o.rope = kvevict::Rope(7);
  });
  EXPECT_NE(odd.find("head_dim"), std::string::npos) << odd;
  const std::string mismatch = error_of([] {
    CacheOptions o;
    o.rope = kvevict::Rope(16);
    kvevict::DenseCache c(Shape{1, 1, 1, 8, 8}, {}, o);
  });
  EXPECT_NE(mismatch.find("rope.head_dim"), std::string::npos) << mismatch;
  EXPECT_NE(error_of([] {
              CacheOptions o;
              o.max_chunk = 0;
              kvevict::DenseCache c(Shape{1, 1, 1, 8, 8}, {}, o);
            }).find("max_chunk"),
            std::string::npos);
}

class BadInputLeavesCacheUnchanged : public ::testing::Test {
 protected:
  Shape shape{2, 4, 2, 8, 6};
  CacheOptions options = [] {
    CacheOptions o;
    o.max_chunk = 4;
    o.check_finite = true;
    o.rope = kvevict::Rope(8);
    return o;
  }();
  kvevict::StreamingCache cache{shape, kvevict::StreamingLLM{2}, options};
  Stream<float> stream{shape, 20, 3};

  void SetUp() override {
    for (int t = 0; t < 10; ++t)
      for (int l = 0; l < 2; ++l) {
        MatrixF out(1, 32);
        cache.forward(l, stream.q[std::size_t(l)].row(t), stream.k[std::size_t(l)].row(t),
                      stream.v[std::size_t(l)].row(t), out);
      }
  }

  void expect_rejected(const std::function<void()>& bad, const std::string& parameter) {
    const Snapshot<kvevict::StreamingCache> before(cache);
    const std::string message = error_of(bad);
    EXPECT_NE(message.find(parameter), std::string::npos) << "message: " << message;
    EXPECT_NE(message.find("expected"), std::string::npos) << "message: " << message;
    EXPECT_TRUE(before == Snapshot<kvevict::StreamingCache>(cache)) << "cache changed by: " << message;
  }
};

TEST_F(BadInputLeavesCacheUnchanged, WrongWidths) {
  MatrixF q = MatrixF::Zero(1, 32), k = MatrixF::Zero(1, 16), v = MatrixF::Zero(1, 16), out(1, 32);
  MatrixF narrow = MatrixF::Zero(1, 15), wide_q = MatrixF::Zero(1, 33), tall = MatrixF::Zero(2, 16);
  expect_rejected([&] { cache.forward(0, q, narrow, v, out); }, "keys.cols()");
  expect_rejected([&] { cache.forward(0, q, k, narrow, out); }, "values");
  expect_rejected([&] { cache.forward(0, wide_q, k, v, out); }, "queries.cols()");
  expect_rejected([&] { cache.forward(0, q, tall, tall, out); }, "queries.rows()");
  MatrixF small_out(1, 8);
  expect_rejected([&] { cache.forward(0, q, k, v, small_out); }, "out");
  expect_rejected([&] { cache.forward(2, q, k, v, out); }, "layer");
  expect_rejected([&] { cache.append(-1, k, v); }, "layer");
  MatrixF huge = MatrixF::Zero(5, 16);
  expect_rejected([&] { cache.append(0, huge, huge); }, "keys.rows()");
}

TEST_F(BadInputLeavesCacheUnchanged, NonFiniteValues) {
  MatrixF q = MatrixF::Zero(1, 32), k = MatrixF::Zero(1, 16), v = MatrixF::Zero(1, 16), out(1, 32);
  MatrixF bad_k = k, bad_v = v, bad_q = q;
  bad_k(0, 3) = std::numeric_limits<float>::quiet_NaN();
  bad_v(0, 0) = std::numeric_limits<float>::infinity();
  bad_q(0, 31) = -std::numeric_limits<float>::infinity();
  expect_rejected([&] { cache.forward(0, q, bad_k, v, out); }, "keys");
  expect_rejected([&] { cache.forward(0, q, k, bad_v, out); }, "values");
  expect_rejected([&] { cache.forward(1, bad_q, k, v, out); }, "queries");
}

// ---- A policy that throws halfway through a step leaves the cache as it was ------------------------------

// Which hook throws, and at its how-many-th call from now; -1: none.
struct Trap {
  enum Hook { on_append, observe, score };
  static inline Hook hook = on_append;
  static inline int countdown = -1;
  static void spring(Hook h) {
    if (h == hook && countdown >= 0 && countdown-- == 0) throw std::runtime_error("trap");
  }
};

// H2O whose hooks may throw (so not noexcept), each after it has changed its state.
struct TrappedH2O : kvevict::H2O {
  TrappedH2O() { recent = 3; }
  template <class Scalar>
  void on_append(const kvevict::TokenView<Scalar>& token) {
    kvevict::H2O::on_append(token);
    Trap::spring(Trap::on_append);
  }
  template <class Scalar>
  void observe(const kvevict::AttentionView<Scalar>& attention) {
    kvevict::H2O::observe(attention);
    Trap::spring(Trap::observe);
  }
  double score(int slot) const {
    Trap::spring(Trap::score);
    return kvevict::H2O::score(slot);
  }
};
static_assert(!kvevict::policy_traits<TrappedH2O>::hooks_noexcept<float>);
static_assert(kvevict::policy_traits<kvevict::H2O>::hooks_noexcept<float>);

// H2O written for half caches alone: its on_append takes the stored rows, TokenView<Eigen::half>, and may
// throw; its other hooks are H2O's, noexcept. Only the stored type reveals that a step can fail halfway.
struct TrappedHalfH2O : kvevict::H2O {
  TrappedHalfH2O() { recent = 3; }
  void on_append(const kvevict::TokenView<Eigen::half>& token) {
    kvevict::H2O::on_append(token);
    Trap::spring(Trap::on_append);
  }
};
static_assert(kvevict::policy_traits<TrappedHalfH2O>::hooks_noexcept<float>);
static_assert(!kvevict::policy_traits<TrappedHalfH2O>::hooks_noexcept<float, Eigen::half>);

// What a head keeps, by position: where its key is rotated, its rows, its score.
template <class Cache>
std::vector<std::vector<double>> kept(const Cache& cache) {
  std::vector<std::vector<double>> out;
  for (int l = 0; l < cache.shape().n_layers; ++l) {
    for (int h = 0; h < cache.shape().n_kv_heads; ++h) {
      const auto& head = cache.head(l, h);
      std::vector<int> slots;
      for (int s = 0; s < head.slots().capacity(); ++s)
        if (head.slots().occupied(s)) slots.push_back(s);
      std::sort(slots.begin(), slots.end(),
                [&](int a, int b) { return head.slots().position(a) < head.slots().position(b); });
      for (int s : slots) {
        std::vector<double> row{double(l), double(h), double(head.slots().position(s)),
                                double(head.slots().rotated_at(s)), head.policy().kvevict::H2O::score(s)};
        for (int i = 0; i < cache.shape().head_dim; ++i) {
          row.push_back(double(cache.keys(l, h)(s, i)));
          row.push_back(double(cache.values(l, h)(s, i)));
        }
        out.push_back(row);
      }
    }
    out.push_back({double(cache.n_seen(l))});
  }
  return out;
}

template <class Policy, class Storage = float>
void expect_strong_guarantee_when_hooks_throw(int least_failures = 21) {
  const Shape shape{2, 4, 2, 8, 12};
  CacheOptions options;
  options.max_chunk = 4;
  options.rope = kvevict::Rope(8);
  kvevict::KVCache<Storage, Policy> trapped(shape, Policy{}, options), clean(shape, Policy{}, options);
  const Stream<float> stream(shape, 120, 17);
  int t = 0, failures = 0;
  for (int step = 0; t + 4 <= 120; ++step) {
    const int chunk = 1 + step % 4;
    for (int l = 0; l < shape.n_layers; ++l) {
      auto rows = [&](const MatrixF& m) { return m.middleRows(t, chunk); };
      MatrixF out(chunk, 32), expected(chunk, 32);
      if (step >= 4) {  // the cache is full from here on: a step appends, attends and evicts
        Trap::hook = Trap::Hook(step % 3);
        Trap::countdown = step % 5;
        const auto before = kept(trapped);
        try {
          trapped.forward(l, rows(stream.q[std::size_t(l)]), rows(stream.k[std::size_t(l)]),
                          rows(stream.v[std::size_t(l)]), out);
        } catch (const std::runtime_error&) {
          ++failures;
          EXPECT_EQ(kept(trapped), before) << "step " << step << ", layer " << l << ", hook " << Trap::hook;
        }
        Trap::countdown = -1;
        if (kept(trapped) != before) {  // the step went through: compare with the cache that never failed
          clean.forward(l, rows(stream.q[std::size_t(l)]), rows(stream.k[std::size_t(l)]),
                        rows(stream.v[std::size_t(l)]), expected);
          ASSERT_EQ(kept(trapped), kept(clean)) << "step " << step;
          continue;
        }
      }
      trapped.forward(l, rows(stream.q[std::size_t(l)]), rows(stream.k[std::size_t(l)]), rows(stream.v[std::size_t(l)]),
                      out);
      clean.forward(l, rows(stream.q[std::size_t(l)]), rows(stream.k[std::size_t(l)]), rows(stream.v[std::size_t(l)]),
                    expected);
      ASSERT_EQ(out, expected) << "step " << step;
      ASSERT_EQ(kept(trapped), kept(clean)) << "step " << step;
    }
    t += chunk;
  }
  EXPECT_GE(failures, least_failures);  // every hook, at several calls into a step, has thrown
}

TEST(StrongGuarantee, APolicyThrowingFromAnyHookLeavesTheCacheAsItWas) {
  expect_strong_guarantee_when_hooks_throw<TrappedH2O>();
  expect_strong_guarantee_when_hooks_throw<TrappedH2O, Eigen::half>();
}

TEST(StrongGuarantee, AHalfCacheAsksWhetherOnAppendForItsStoredRowsMayThrow) {
  // Only on_append throws here, one step in three.
  expect_strong_guarantee_when_hooks_throw<TrappedHalfH2O, Eigen::half>(10);
}

TEST(StrongGuarantee, KeysInCachePositionsHaveNotMovedWhenThePolicyThrows) {
  expect_strong_guarantee_when_hooks_throw<kvevict::CachePositions<TrappedH2O>>();
}

TEST(BadInput, HalfStorageRejectsKeysBeyondItsRangeWhenCheckingFinite) {
  // 65504 is the largest half: a key of 70000 would be stored as infinity. With check_finite the append is
  // refused, naming the range, and the cache is untouched; bfloat16 has float's range and takes it.
  CacheOptions o;
  o.check_finite = true;
  const Shape s{1, 2, 1, 8, 4};
  kvevict::KVCache<Eigen::half, kvevict::Window> cache(s, {}, o);
  MatrixF q = MatrixF::Zero(1, 16), k = MatrixF::Zero(1, 8), v = MatrixF::Zero(1, 8), out(1, 16);
  cache.forward(0, q, k, v, out);
  const Snapshot<decltype(cache)> before(cache);
  k(0, 2) = 70000.0f;
  try {
    cache.forward(0, q, k, v, out);
    FAIL() << "a key beyond the range of half was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("keys: expected |x| <= 65504, the range of f16 storage"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(before == Snapshot<decltype(cache)>(cache));
  kvevict::KVCache<Eigen::bfloat16, kvevict::Window> wide(s, {}, o);
  EXPECT_NO_THROW(wide.forward(0, q, k, v, out));
}

TEST(BadInput, DenseRefusesToGrowPastItsBudgetAndStaysIntact) {
  kvevict::DenseCache cache(Shape{1, 1, 1, 4, 3});
  MatrixF q = MatrixF::Ones(1, 4), out(1, 4);
  for (int t = 0; t < 3; ++t) cache.forward(0, q, q, q, out);
  const Snapshot<kvevict::DenseCache> before(cache);
  const std::string message = error_of([&] { cache.forward(0, q, q, q, out); });
  EXPECT_NE(message.find("budget"), std::string::npos) << message;
  EXPECT_TRUE(before == Snapshot<kvevict::DenseCache>(cache));
}

TEST(KVCache, OffByOneAndSinkLogitReachTheKernel) {
  const Shape shape{1, 2, 1, 4, 4};
  MatrixF q = MatrixF::Constant(1, 8, -3.0f), k = MatrixF::Constant(1, 4, 1.0f), v = MatrixF::Ones(1, 4), out(1, 8);
  CacheOptions options;
  options.attention.normalization = kvevict::Normalization::off_by_one;
  kvevict::DenseCache off(shape, {}, options);
  off.forward(0, q, k, v, out);
  // One key with logit -6: weight e^-6 / (1 + e^-6).
  EXPECT_NEAR(out(0, 0), std::exp(-6.0) / (1 + std::exp(-6.0)), 1e-6);
  options.attention.normalization = kvevict::Normalization::sink_logit;
  options.attention.sink_logits = {-100.0, 0.0};
  kvevict::DenseCache sink(shape, {}, options);
  sink.forward(0, q, k, v, out);
  EXPECT_NEAR(out(0, 0), 1.0, 1e-6);  // head 0: sink far below the key
  EXPECT_NEAR(out(0, 4), std::exp(-6.0) / (1 + std::exp(-6.0)), 1e-6);
}
}  // namespace

namespace {
TEST(ParallelHeads, HeadsAreTheTasksUntilTheKeysAreEnoughToSplit) {
  // Three kv heads over two threads: the heads are the tasks until a head holds 2 x kMinKeysPerSplit keys, then
  // each head splits its keys in turn, never both at once (nested). Either way the bits of one thread's cache
  // with the same key splits.
  const Shape s{1, 6, 3, 16, 2300};
  const int tokens = 2 * kvevict::kMinKeysPerSplit + 64;
  testing_support::TwoThreads threads;
  std::vector<int> task_counts;  // n of each parallel_for call the heads-as-tasks cache makes
  bool nested = false, inside = false;
  CacheOptions o;
  o.rope = kvevict::Rope(s.head_dim, 10000.0);
  o.attention.key_splits = 2;
  o.attention.parallel_for = threads.parallel_for();
  kvevict::KVCache<float, kvevict::Dense> serial(s, {}, o);
  o.attention.parallel_heads = true;
  o.attention.parallel_for = [&](int n, kvevict::TaskRef task) {
    nested = nested || inside;
    task_counts.push_back(n);
    inside = true;
    threads.run(n, task);
    inside = false;
  };
  kvevict::KVCache<float, kvevict::Dense> tasks(s, {}, o);
  const Stream<float> stream(s, tokens, 12);
  long steps_unsplit = 0;  // steps whose heads hold fewer keys than two ranges need, the chunk included
  for (int t = 0; t < tokens;) {
    const int chunk = t < 2 * kvevict::kMinKeysPerSplit - 64 ? 64 : 1;
    steps_unsplit += t + chunk < 2 * kvevict::kMinKeysPerSplit;
    MatrixF a(chunk, s.n_q_heads * s.head_dim), b = a;
    serial.forward(0, stream.q[0].middleRows(t, chunk), stream.k[0].middleRows(t, chunk),
                   stream.v[0].middleRows(t, chunk), a);
    tasks.forward(0, stream.q[0].middleRows(t, chunk), stream.k[0].middleRows(t, chunk),
                  stream.v[0].middleRows(t, chunk), b);
    ASSERT_TRUE(a == b) << "token " << t;
    t += chunk;
  }
  EXPECT_FALSE(nested);
  const auto first_split = std::find(task_counts.begin(), task_counts.end(), 2);
  ASSERT_NE(first_split, task_counts.end()) << "the keys were never split";
  EXPECT_TRUE(std::all_of(task_counts.begin(), first_split, [](int n) { return n == 3; }));
  EXPECT_TRUE(std::all_of(first_split, task_counts.end(), [](int n) { return n == 2; }));
  EXPECT_EQ(first_split - task_counts.begin(), steps_unsplit);
}

TEST(NamedConstruction, ShapeAndHeadContextByName) {
  constexpr auto shape =
      kvevict::Shape{}.with_layers(30).with_q_heads(9).with_kv_heads(3).with_head_dim(64).with_budget(512);
  static_assert(shape.n_layers == 30 && shape.n_q_heads == 9 && shape.n_kv_heads == 3 && shape.head_dim == 64 &&
                shape.budget == 512);
  constexpr auto head = kvevict::HeadContext{}.with_layer(2, 30).with_kv_head(1).with_budget(256).with_capacity(320);
  static_assert(head.layer == 2 && head.n_layers == 30 && head.kv_head == 1 && head.budget == 256 &&
                head.capacity == 320 && head.group_size == 1);
#if __cplusplus >= 202002L
  constexpr kvevict::Shape designated{.n_layers = 30, .n_q_heads = 9, .n_kv_heads = 3, .head_dim = 64, .budget = 512};
  static_assert(designated.n_kv_heads == shape.n_kv_heads && designated.budget == shape.budget);
#endif
  EXPECT_EQ(shape.group_size(), 3);
}
}  // namespace
