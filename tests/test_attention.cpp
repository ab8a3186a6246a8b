// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <kvevict/attention.hpp>
#include <kvevict/error.hpp>
#include <kvevict/slots.hpp>
#include <kvevict/storage.hpp>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cache_testing.hpp"
#include "reference.hpp"
#include "two_threads.hpp"

namespace {
using kvevict::Normalization;
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Case {
  int n_q_heads, n_kv_heads, head_dim, n_queries, n_keys;
};

class AttentionTest : public ::testing::TestWithParam<std::tuple<Case, Normalization>> {};

ref::Vec head_row(const Matrix& m, int row, int head, int d) {
  ref::Vec v(static_cast<std::size_t>(d));
  for (int i = 0; i < d; ++i) v[std::size_t(i)] = double(m(row, head * d + i));
  return v;
}

TEST_P(AttentionTest, MatchesNaiveDoubleReference) {
  const auto [c, kind] = GetParam();
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto random = [&](int rows, int cols) {
    Matrix m(rows, cols);
    for (int i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
    return m;
  };
  const Matrix q = random(c.n_queries, c.n_q_heads * c.head_dim);
  const Matrix k = random(c.n_keys, c.n_kv_heads * c.head_dim);
  const Matrix v = random(c.n_keys, c.n_kv_heads * c.head_dim);
  // Keys at 0..N-1; the queries are the last T of them, so early queries see fewer keys.
  std::vector<std::int64_t> key_pos, query_pos;
  for (int j = 0; j < c.n_keys; ++j) key_pos.push_back(j);
  for (int t = 0; t < c.n_queries; ++t) query_pos.push_back(c.n_keys - c.n_queries + t);
  kvevict::AttentionOptions options;
  options.normalization = kind;
  for (int h = 0; h < c.n_q_heads; ++h) options.sink_logits.push_back(0.25 * h - 0.5);

  const Matrix out = kvevict::attention<float>(q, k, v, query_pos, key_pos, c.n_q_heads, c.n_kv_heads, options);

  const int group = c.n_q_heads / c.n_kv_heads;
  const double scale = 1.0 / std::sqrt(double(c.head_dim));
  for (int t = 0; t < c.n_queries; ++t)
    for (int h = 0; h < c.n_q_heads; ++h) {
      std::vector<ref::Vec> keys, values;
      for (int j = 0; j <= query_pos[std::size_t(t)]; ++j) {
        keys.push_back(head_row(k, j, h / group, c.head_dim));
        values.push_back(head_row(v, j, h / group, c.head_dim));
      }
      const ref::Vec expected =
          ref::attention(head_row(q, t, h, c.head_dim), keys, values, scale, kind, options.sink_logits[std::size_t(h)]);
      for (int i = 0; i < c.head_dim; ++i)
        EXPECT_NEAR(out(t, h * c.head_dim + i), expected[std::size_t(i)],
                    2e-6 * (1 + std::abs(expected[std::size_t(i)])))
            << "query " << t << " head " << h;
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Combine(::testing::Values(Case{4, 4, 16, 3, 9},    // MHA
                                                              Case{6, 2, 32, 5, 40},   // GQA
                                                              Case{8, 1, 64, 1, 300},  // MQA, decode
                                                              Case{9, 3, 64, 7, 7},    // SmolLM2's grouping, prefill
                                                              // chunks of 16 and 70 queries: matrix products
                                                              Case{6, 2, 32, 16, 40}, Case{9, 3, 64, 70, 200}),
                                            ::testing::Values(Normalization::softmax, Normalization::off_by_one,
                                                              Normalization::sink_logit)));

TEST(Attention, FullyMaskedQueryGivesZerosWithOffByOne) {
  Matrix q = Matrix::Ones(1, 4), k = Matrix::Ones(2, 4), v = Matrix::Ones(2, 4);
  kvevict::AttentionOptions options;
  options.normalization = Normalization::off_by_one;
  const Matrix out = kvevict::attention<float>(q, k, v, {0}, {5, 6}, 1, 1, options);  // both keys in the future
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out(0, i), 0.0f);
}

TEST(Attention, HugeLogitsStayFinite) {
  Matrix q = Matrix::Constant(1, 4, 100.0f), k(2, 4), v = Matrix::Ones(2, 4);
  k.row(0).setConstant(100.0f);   // logit +1e4 * 2
  k.row(1).setConstant(-100.0f);  // logit -1e4 * 2
  for (auto kind : {Normalization::softmax, Normalization::off_by_one}) {
    kvevict::AttentionOptions options;
    options.normalization = kind;
    const Matrix out = kvevict::attention<float>(q, k, v, {1}, {0, 1}, 1, 1, options);
    EXPECT_TRUE(out.allFinite());
    EXPECT_NEAR(out(0, 0), 1.0f, 1e-6f);
  }
}

TEST(Attention, RejectsMismatchedShapesNamingTheParameter) {
  Matrix q(1, 8), k(3, 8), v(2, 8);
  try {
    kvevict::attention<float>(q, k, v, {2}, {0, 1, 2}, 2, 2);
    FAIL();
  } catch (const kvevict::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("values"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kvevict::attention<float>(q, k, k, {2}, {0, 1, 2}, 2, 3), kvevict::InvalidArgument);
}
}  // namespace

// Slots from `used` on are known free: the kernel skips them and gives them weight 0 (and logit -inf). Logits
// are bit-identical to a pass over all slots, whatever stale values the buffers held; weights and outputs
// differ only by the order of the normalising sum (float rounding, 1e-6 at most here).
TEST(Attention, SkippingKnownFreeSlotsChangesNothing) {
  const int d = 16, group = 3, capacity = 100, used = 37;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Matrix q(2, group * d), k(capacity, d), v(capacity, d);
  for (auto* m : {&q, &k, &v})
    for (Eigen::Index i = 0; i < m->size(); ++i) m->data()[i] = dist(rng);
  std::vector<std::int64_t> pos(capacity, kvevict::kFreeSlot), query_pos{40, 41};
  for (int j = 0; j < used; j += 1) pos[std::size_t(j)] = j == 7 ? kvevict::kFreeSlot : j;  // one freed slot too
  for (auto kind : {Normalization::softmax, Normalization::off_by_one}) {
    kvevict::AttentionOptions options;
    options.normalization = kind;
    Matrix out_all(2, group * d), out_used(2, group * d), probs_all(2 * group, capacity),
        probs_used(2 * group, capacity), logits_all(2 * group, capacity), logits_used(2 * group, capacity);
    probs_used.setConstant(42.0f);  // stale values where the skipped slots are
    logits_used.setConstant(42.0f);
    const auto all = kvevict::GroupAttention<float>{}
                         .with_queries(q.data(), q.cols(), query_pos.data(), 2)
                         .with_cache(k.data(), v.data(), pos.data(), capacity)
                         .with_heads(group, d)
                         .with_weights(probs_all.data(), logits_all.data())
                         .with_output(out_all.data(), out_all.cols());
    kvevict::GroupAttention<float> skipping = all;
    skipping.probs = probs_used.data();
    skipping.logits = logits_used.data();
    skipping.out = out_used.data();
    skipping.used = used;
    kvevict::attend_group(all, options);
    kvevict::attend_group(skipping, options);
    EXPECT_LT((out_used - out_all).cwiseAbs().maxCoeff(), 1e-6f);
    EXPECT_LT((probs_used - probs_all).cwiseAbs().maxCoeff(), 1e-6f);
    EXPECT_TRUE((probs_used.rightCols(capacity - used).array() == 0.0f).all());
    EXPECT_EQ(logits_used, logits_all);
  }
}

namespace {
// The kernel over K/V kept in each storage type, computing in its compute type.
template <class Storage>
class StoredKernel : public ::testing::Test {
 protected:
  using Scalar = kvevict::compute_type_t<Storage>;
  using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using StoredRows = Eigen::Matrix<Storage, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static constexpr int kGroup = 3, kQueries = 2, kSlots = 203;  // blocks of 32 and a ragged last one

  // One group over kSlots slots; slot 7 is free and the last query is causally short of the last 3 keys.
  struct Setup {
    Rows q, k, v;  // k, v exact (before rounding to Storage)
    StoredRows k_stored, v_stored;
    std::vector<std::int64_t> key_pos, query_pos;
  };
  static Setup make(int d, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> dist(0.0, 1.0);
    auto random = [&](int rows, int cols) {
      Rows m(rows, cols);
      for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = Scalar(dist(rng));
      return m;
    };
    Setup s{random(kQueries, kGroup * d), random(kSlots, d), random(kSlots, d), {}, {}, {}, {}};
    s.k_stored = s.k.template cast<Storage>();
    s.v_stored = s.v.template cast<Storage>();
    for (int j = 0; j < kSlots; ++j) s.key_pos.push_back(j == 7 ? kvevict::kFreeSlot : j);
    s.query_pos = {kSlots - 4, kSlots - 1};
    return s;
  }
  static Rows run(const Setup& s, int d) {
    Rows out(kQueries, kGroup * d), probs(kQueries * kGroup, kSlots);
    const auto g = kvevict::GroupAttention<Scalar, Storage>{}
                       .with_queries(s.q.data(), s.q.cols(), s.query_pos.data(), kQueries)
                       .with_cache(s.k_stored.data(), s.v_stored.data(), s.key_pos.data(), kSlots)
                       .with_heads(kGroup, d)
                       .with_weights(probs.data())
                       .with_output(out.data(), out.cols());
    kvevict::attend_group(g, kvevict::AttentionOptions{});
    return out;
  }
  // The attention in double of query row (t, h) over the given rows.
  template <class KRows, class VRows>
  static ref::Vec exact(const Setup& s, const KRows& k, const VRows& v, int t, int h, int d) {
    std::vector<ref::Vec> keys, values;
    ref::Vec query(std::size_t(d), 0.0);
    for (int i = 0; i < d; ++i) query[std::size_t(i)] = double(s.q(t, h * d + i));
    for (int j = 0; j < kSlots; ++j) {
      if (s.key_pos[std::size_t(j)] < 0 || s.key_pos[std::size_t(j)] > s.query_pos[std::size_t(t)]) continue;
      ref::Vec kj(static_cast<std::size_t>(d)), vj(static_cast<std::size_t>(d));
      for (int i = 0; i < d; ++i) {
        kj[std::size_t(i)] = double(k(j, i));
        vj[std::size_t(i)] = double(v(j, i));
      }
      keys.push_back(kj);
      values.push_back(vj);
    }
    return ref::attention(query, keys, values, 1.0 / std::sqrt(double(d)), Normalization::softmax);
  }
};

using AllStorages = ::testing::Types<float, double, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(StoredKernel, AllStorages);

TYPED_TEST(StoredKernel, IsTheAttentionOfTheStoredValues) {
  // Widening inside the kernel adds no error of its own: the output is the attention of exactly the stored
  // (rounded) K and V, to the compute type's rounding. Head widths 64 and 128 and 512 (16 rows per tile).
  using Fixture = TestFixture;
  const double compute_eps = std::is_same_v<typename Fixture::Scalar, double> ? 1e-13 : 3e-6;
  for (int d : {64, 128, 512}) {
    const auto s = Fixture::make(d, 21);
    const auto out = Fixture::run(s, d);
    for (int t = 0; t < Fixture::kQueries; ++t)
      for (int h = 0; h < Fixture::kGroup; ++h) {
        const ref::Vec e = Fixture::exact(s, s.k_stored, s.v_stored, t, h, d);
        for (int i = 0; i < d; ++i)
          ASSERT_NEAR(double(out(t, h * d + i)), e[std::size_t(i)], compute_eps * (1 + std::abs(e[std::size_t(i)])))
              << "head_dim " << d << " query " << t << " head " << h << " column " << i;
      }
  }
}

TYPED_TEST(StoredKernel, StaysWithinTheStorageRoundingOfExactAttention) {
  // Rounding each stored value to relative u moves a logit by at most scale * |q| * u * |k|, so the
  // weights by at most 2 * that in total (L1), and the output by that times max|v| plus u * max|v| from V
  // itself. That bound doubled (the first-order terms are not the whole story for bfloat16's large u), plus
  // 100 roundings of the compute type for the sums of ~200 terms, must hold for every output.
  using Fixture = TestFixture;
  const double u = kvevict::storage_traits<TypeParam>::unit_roundoff();
  const double compute_u = kvevict::storage_traits<typename Fixture::Scalar>::unit_roundoff();
  const int d = 64;
  const auto s = Fixture::make(d, 22);
  const auto out = Fixture::run(s, d);
  const double scale = 1.0 / std::sqrt(double(d));
  const double max_k = s.k.rowwise().norm().maxCoeff(), max_v = s.v.cwiseAbs().maxCoeff();
  double worst = 0.0;
  for (int t = 0; t < Fixture::kQueries; ++t)
    for (int h = 0; h < Fixture::kGroup; ++h) {
      const double q_norm = s.q.row(t).segment(h * d, d).norm();
      const double bound = (2.0 * (2.0 * scale * q_norm * max_k * u + u) + 100.0 * compute_u) * max_v;
      const ref::Vec e = Fixture::exact(s, s.k, s.v, t, h, d);
      for (int i = 0; i < d; ++i) {
        const double error = std::abs(double(out(t, h * d + i)) - e[std::size_t(i)]);
        worst = std::max(worst, error / bound);
        ASSERT_LE(error, bound) << "query " << t << " head " << h << " column " << i;
      }
    }
  this->RecordProperty("worst_error_over_bound", std::to_string(worst));
}
}  // namespace

namespace {
template <class Half>
void expect_widening_exact_for_every_pattern() {
  // Eigen's own conversion is exact (every 16-bit value is a float); the kernel's vectorised one must agree
  // bit for bit on all 65536 patterns, subnormals, infinities and signed zeros included (NaNs: stay NaN).
  std::vector<Half> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    all[b] = Eigen::numext::bit_cast<Half>(bits);
  }
  std::vector<float> widened(all.size());
  kvevict::detail::widen(all.data(), widened.data(), std::ptrdiff_t(all.size()));
  for (std::size_t b = 0; b < all.size(); ++b) {
    const float expected = static_cast<float>(all[b]);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(widened[b])) << "pattern " << b;
    } else {
      ASSERT_EQ(std::memcmp(&expected, &widened[b], sizeof expected), 0)
          << "pattern " << b << ": " << widened[b] << " instead of " << expected;
    }
  }
}

TEST(Widening, ExactForEveryHalf) { expect_widening_exact_for_every_pattern<Eigen::half>(); }
TEST(Widening, ExactForEveryBfloat16) { expect_widening_exact_for_every_pattern<Eigen::bfloat16>(); }
}  // namespace

namespace {
template <class Storage>
void expect_key_splits_change_nothing_but_the_order_of_sums() {
  // Split-K over two real threads: the weights are normalised over all keys at once, so they are bit for bit
  // the serial kernel's; each range sums its own share of V and the shares are added after, which reorders
  // float sums (a few roundings). 5000 keys: four splits of 1250, the last range short.
  using Scalar = kvevict::compute_type_t<Storage>;
  using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  constexpr int kKeys = 5000, kDim = 64, kGroup = 3, kSplits = 4;
  const Rows q = Rows::Random(1, kGroup * kDim);
  const Eigen::Matrix<Storage, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> k =
      Rows::Random(kKeys, kDim).template cast<Storage>();
  const Eigen::Matrix<Storage, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> v =
      Rows::Random(kKeys, kDim).template cast<Storage>();
  std::vector<std::int64_t> key_pos(kKeys);
  for (int j = 0; j < kKeys; ++j) key_pos[std::size_t(j)] = j == 2500 ? kvevict::kFreeSlot : j;
  const std::int64_t query_pos = kKeys - 2;  // the last key is in the future
  auto run = [&](const kvevict::AttentionOptions& options, Rows& probs, Rows& out) {
    Rows partial(kSplits * kGroup, kDim);
    const auto g = kvevict::GroupAttention<Scalar, Storage>{}
                       .with_queries(q.data(), q.cols(), &query_pos, 1)
                       .with_cache(k.data(), v.data(), key_pos.data(), kKeys)
                       .with_heads(kGroup, kDim)
                       .with_weights(probs.data())
                       .with_output(out.data(), out.cols())
                       .with_split_scratch(partial.data());
    kvevict::attend_group(g, options);
  };
  testing_support::TwoThreads threads;
  kvevict::AttentionOptions serial, split;
  split.key_splits = kSplits;
  int jobs = 0, tasks = 0;
  split.parallel_for = [&](int n, kvevict::TaskRef task) {
    ++jobs;
    tasks += n;
    threads.run(n, task);
  };
  Rows probs_serial(kGroup, kKeys), probs_split(kGroup, kKeys), out_serial(1, kGroup * kDim),
      out_split(1, kGroup * kDim);
  run(serial, probs_serial, out_serial);
  run(split, probs_split, out_split);
  EXPECT_EQ(jobs, 2);  // the K pass and the V pass
  EXPECT_EQ(tasks, 2 * kSplits);
  EXPECT_TRUE(probs_serial == probs_split);
  for (int i = 0; i < out_serial.cols(); ++i)
    ASSERT_NEAR(double(out_split(0, i)), double(out_serial(0, i)), 1e-5 * (1 + std::abs(double(out_serial(0, i)))));
  EXPECT_FALSE(out_serial == Rows::Zero(1, kGroup * kDim));
}

TEST(KeySplits, FloatWeightsAreTheSerialOnes) { expect_key_splits_change_nothing_but_the_order_of_sums<float>(); }
TEST(KeySplits, HalfWeightsAreTheSerialOnes) { expect_key_splits_change_nothing_but_the_order_of_sums<Eigen::half>(); }
}  // namespace

namespace {
// A prefill chunk runs both products as matrix products (AttentionOptions::product_queries); a decode step
// as one dot product per query row. On the same chunk the two differ only by the order of float sums: the
// same keys masked in every row, weights and outputs within a few roundings. 100 queries (a tile of 64 and
// one of 36), a freed slot, keys in the chunk's future, free slots past `used`, and key splits over two
// threads (ranges that end inside a tile of keys).
template <class Scalar>
void expect_products_agree_with_rows() {
  using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  constexpr int kQueries = 100, kGroup = 3, kDim = 64, kSlots = 2600, kUsed = 2590;
  std::mt19937 rng(17);
  std::normal_distribution<double> dist(0.0, 1.0);
  auto random = [&](int rows, int cols) {
    Rows m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = Scalar(dist(rng));
    return m;
  };
  const Rows q = random(kQueries, kGroup * kDim + 8), k = random(kSlots, kDim), v = random(kSlots, kDim);
  std::vector<std::int64_t> key_pos(kSlots, kvevict::kFreeSlot), query_pos(kQueries);
  for (int j = 0; j < kUsed; ++j) key_pos[std::size_t(j)] = j == 1000 ? kvevict::kFreeSlot : j;
  for (int t = 0; t < kQueries; ++t) query_pos[std::size_t(t)] = kUsed - kQueries + t;
  testing_support::TwoThreads threads;
  for (int splits : {1, 2}) {
    kvevict::AttentionOptions products, rows;
    rows.product_queries = std::numeric_limits<int>::max();
    for (auto* o : {&products, &rows}) {
      o->key_splits = splits;
      o->parallel_for = threads.parallel_for();
    }
    auto run = [&](const kvevict::AttentionOptions& options, Rows& probs, Rows& logits, Rows& out) {
      Rows partial(kQueries * kGroup, kDim);
      kvevict::attend_group(kvevict::GroupAttention<Scalar>{}
                                .with_queries(q.data(), q.cols(), query_pos.data(), kQueries)
                                .with_cache(k.data(), v.data(), key_pos.data(), kSlots, kUsed)
                                .with_heads(kGroup, kDim)
                                .with_weights(probs.data(), logits.data())
                                .with_output(out.data(), out.cols())
                                .with_split_scratch(partial.data()),
                            options);
    };
    Rows p1(kQueries * kGroup, kSlots), p2 = p1, l1 = p1, l2 = p1, o1(kQueries, kGroup * kDim + 4), o2 = o1;
    run(products, p1, l1, o1);
    run(rows, p2, l2, o2);
    const Scalar eps = std::numeric_limits<Scalar>::epsilon();
    EXPECT_TRUE(((l1.array() == -std::numeric_limits<Scalar>::infinity()) ==
                 (l2.array() == -std::numeric_limits<Scalar>::infinity()))
                    .all())
        << "splits " << splits;
    EXPECT_LT((p1 - p2).cwiseAbs().maxCoeff(), 64 * eps) << "splits " << splits;
    EXPECT_LT((o1.leftCols(kGroup * kDim) - o2.leftCols(kGroup * kDim)).cwiseAbs().maxCoeff(), 256 * eps)
        << "splits " << splits;
    EXPECT_GT(o1.leftCols(kGroup * kDim).cwiseAbs().maxCoeff(), Scalar(0.01));
  }
}
TEST(ChunkProducts, FloatAgreeWithTheRowKernel) { expect_products_agree_with_rows<float>(); }
TEST(ChunkProducts, DoubleAgreeWithTheRowKernel) { expect_products_agree_with_rows<double>(); }
}  // namespace

namespace {
// The decode step's block products (float and 16-bit rows sixteen lanes at once with AVX-512, eight with AVX2,
// where the build targets them; Eigen's elsewhere) against sums in double, over block lengths around the key
// groups and head dims on and off the vector chunks; 16-bit rows where the products read them as stored. Tolerance: a
// float sum of d products rounds by at most about d eps of the sum of the products' magnitudes; 4 x that.
template <class Stored>
void expect_block_products_match_double_sums() {
  using Scalar = kvevict::compute_type_t<Stored>;
  if constexpr (!kvevict::detail::may_read_stored_rows<Stored>) {
    GTEST_SKIP() << "this build widens 16-bit rows before the block products (no AVX-512 or AVX2 path)";
  }
  std::mt19937 rng(5);
  std::normal_distribution<double> dist(0.0, 1.0);
  const double eps = std::numeric_limits<Scalar>::epsilon();
  for (int d : {8, 16, 48, 64, 100, 128, 144}) {
    if (!kvevict::detail::reads_stored_rows<Stored>(d)) continue;  // 16-bit rows are widened first there
    for (int nb : {1, 2, 15, 16, 17, 31, 32}) {
      const auto rows_n = static_cast<std::size_t>(nb * d), d_n = static_cast<std::size_t>(d),
                 nb_n = static_cast<std::size_t>(nb);
      std::vector<Stored> rows(rows_n);
      constexpr int kMostRows = 7;  // tiles of four, a pair and a row alone: 1-7 rows reach every mix
      std::vector<Scalar> q(kMostRows * d_n);
      for (auto& x : rows) x = Stored(dist(rng));
      for (auto& x : q) x = Scalar(dist(rng));
      const Scalar scale = Scalar(0.125);
      // Logits for 1 to 7 query rows (rows go in fours or pairs, an odd one alone): each as the double sum says,
      // and a row's logits the same bits whichever rows come with it (row r alone: the query pointer at row r).
      std::vector<Scalar> alone(nb_n * kMostRows);
      for (int r = 0; r < kMostRows; ++r)
        kvevict::detail::block_logits(
            rows.data(), nb, d, 1, [&](int) { return q.data() + r * d; }, scale,
            [&](int) { return alone.data() + r * nb; });
      for (int n_rows = 1; n_rows <= kMostRows; ++n_rows) {
        std::vector<Scalar> logits(nb_n * std::size_t(n_rows));
        kvevict::detail::block_logits(
            rows.data(), nb, d, n_rows, [&](int r) { return q.data() + r * d; }, scale,
            [&](int r) { return logits.data() + r * nb; });
        for (int r = 0; r < n_rows; ++r)
          for (int j = 0; j < nb; ++j) {
            double exact = 0, magnitude = 0;
            for (int i = 0; i < d; ++i) {
              const double term = double(rows[std::size_t(j * d + i)]) * double(q[std::size_t(r * d + i)]);
              exact += term;
              magnitude += std::abs(term);
            }
            EXPECT_NEAR(double(logits[std::size_t(r * nb + j)]), double(scale) * exact,
                        4 * d * eps * double(scale) * magnitude)
                << "row " << r << " of " << n_rows << ", logit " << j << " of " << nb << ", head_dim " << d;
          }
        EXPECT_TRUE(std::equal(logits.begin(), logits.end(), alone.begin())) << n_rows << " rows, head_dim " << d;
      }
      // Weighted sums for 1 to 7 query rows, each row its own weights: each as the double sum says, and a row's
      // sums the same bits whichever rows come with it.
      std::vector<Scalar> weights(nb_n * kMostRows), start(d_n * kMostRows);
      for (auto& x : weights) x = Scalar(std::abs(dist(rng)));
      for (auto& x : start) x = Scalar(dist(rng));
      std::vector<Scalar> sums_alone = start;
      for (int r = 0; r < kMostRows; ++r)
        kvevict::detail::block_weighted_sums(
            rows.data(), nb, d, 1, [&](int) { return weights.data() + r * nb; },
            [&](int) { return sums_alone.data() + r * d; });
      for (int n_rows = 1; n_rows <= kMostRows; ++n_rows) {
        std::vector<Scalar> out = start;
        kvevict::detail::block_weighted_sums(
            rows.data(), nb, d, n_rows, [&](int r) { return weights.data() + r * nb; },
            [&](int r) { return out.data() + r * d; });
        for (int r = 0; r < n_rows; ++r)
          for (int i = 0; i < d; ++i) {
            double exact = double(start[std::size_t(r * d + i)]), magnitude = std::abs(exact);
            for (int j = 0; j < nb; ++j) {
              const double term = double(weights[std::size_t(r * nb + j)]) * double(rows[std::size_t(j * d + i)]);
              exact += term;
              magnitude += std::abs(term);
            }
            EXPECT_NEAR(double(out[std::size_t(r * d + i)]), exact, 4 * (nb + 1) * eps * magnitude)
                << "row " << r << " of " << n_rows << ", output " << i << " over " << nb << " keys, head_dim " << d;
          }
        EXPECT_TRUE(std::equal(out.begin(), out.begin() + n_rows * d, sums_alone.begin()))
            << n_rows << " rows, head_dim " << d;
      }
    }
  }
}
}  // namespace

TEST(BlockProducts, FloatMatchDoubleSums) { expect_block_products_match_double_sums<float>(); }
TEST(BlockProducts, DoubleMatchDoubleSums) { expect_block_products_match_double_sums<double>(); }
TEST(BlockProducts, HalfRowsMatchDoubleSums) { expect_block_products_match_double_sums<Eigen::half>(); }
TEST(BlockProducts, Bfloat16RowsMatchDoubleSums) { expect_block_products_match_double_sums<Eigen::bfloat16>(); }

namespace {
// 16-bit rows are converted to float exactly and then take the float rows' arithmetic (the same tiles' sums, in
// the same order, whether converted in registers or widened first), so a 16-bit cache's logits and weighted sums
// are the same bits as a float cache's holding the same values. Seven query rows reach tiles of four, two and one;
// head_dim 144 takes the AVX-512 logits beside the eight-lane weighted sums.
template <class Stored>
void expect_sixteen_bit_rows_give_the_bits_of_float_rows() {
  if constexpr (!kvevict::detail::may_read_stored_rows<Stored>) {
    GTEST_SKIP() << "this build widens 16-bit rows before the block products: they are float rows there";
  }
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int d : {8, 16, 64, 128, 144}) {
    if (!kvevict::detail::reads_stored_rows<Stored>(d)) continue;  // widened first: the float path itself
    for (int nb : {1, 7, 16, 33}) {
      constexpr int kRows = 7;
      const auto size = [](int a, int b) { return static_cast<std::size_t>(a * b); };
      std::vector<Stored> stored(size(nb, d));
      std::vector<float> widened(stored.size()), q(size(kRows, d)), p(size(kRows, nb));
      for (std::size_t i = 0; i < stored.size(); ++i) widened[i] = float(stored[i] = Stored(dist(rng)));
      for (auto& x : q) x = dist(rng);
      for (auto& x : p) x = std::abs(dist(rng));
      std::vector<float> logits16(size(kRows, nb)), logits32(logits16.size());
      std::vector<float> sums16(size(kRows, d), 0.5f), sums32 = sums16;
      const auto query = [&](int r) { return q.data() + r * d; };
      const auto weights = [&](int r) { return p.data() + r * nb; };
      kvevict::detail::block_logits(stored.data(), nb, d, kRows, query, 0.125f,
                                    [&](int r) { return logits16.data() + r * nb; });
      kvevict::detail::block_logits(widened.data(), nb, d, kRows, query, 0.125f,
                                    [&](int r) { return logits32.data() + r * nb; });
      kvevict::detail::block_weighted_sums(stored.data(), nb, d, kRows, weights,
                                           [&](int r) { return sums16.data() + r * d; });
      kvevict::detail::block_weighted_sums(widened.data(), nb, d, kRows, weights,
                                           [&](int r) { return sums32.data() + r * d; });
      EXPECT_EQ(std::memcmp(logits16.data(), logits32.data(), logits16.size() * sizeof(float)), 0)
          << "logits, head_dim " << d << ", " << nb << " keys";
      EXPECT_EQ(std::memcmp(sums16.data(), sums32.data(), sums16.size() * sizeof(float)), 0)
          << "weighted sums, head_dim " << d << ", " << nb << " keys";
    }
  }
}
}  // namespace

TEST(BlockProducts, HalfRowsGiveTheBitsOfFloatRows) {
  expect_sixteen_bit_rows_give_the_bits_of_float_rows<Eigen::half>();
}
TEST(BlockProducts, Bfloat16RowsGiveTheBitsOfFloatRows) {
  expect_sixteen_bit_rows_give_the_bits_of_float_rows<Eigen::bfloat16>();
}
