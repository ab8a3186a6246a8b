// SPDX-License-Identifier: Apache-2.0
// KV head merging: exact when the heads are exactly mergeable, commuting with RoPE, better than mean pooling.
#include <gtest/gtest.h>

#include <functional>
#include <kvevict/attention.hpp>
#include <kvevict/head_merge.hpp>
#include <limits>
#include <random>
#include <string>

namespace {
using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr int kKv = 3, kQ = 6, kD = 8, kN = 40;

/// Keys whose heads are complex multiples (per RoPE pair) of one base key; values that are linear images
/// of one base value: three kv heads that one head can carry without loss.
struct MergeableHeads {
  Matrix q, k, v;
  explicit MergeableHeads(kvevict::RopeLayout layout, double noise = 0.0)
      : q(kN, kQ * kD), k(kN, kKv * kD), v(kN, kKv * kD) {
    std::mt19937 rng(3);
    std::normal_distribution<double> g(0.0, 1.0);
    Eigen::MatrixXd mix[kKv];
    std::complex<double> c[kKv][kD / 2];
    for (int i = 0; i < kKv; ++i) {
      mix[i] = Eigen::MatrixXd::NullaryExpr(kD, kD, [&] { return g(rng); });
      for (auto& x : c[i]) x = {g(rng), g(rng)};
    }
    for (int t = 0; t < kN; ++t) {
      Eigen::VectorXd base_v = Eigen::VectorXd::NullaryExpr(kD, [&] { return g(rng); });
      for (int f = 0; f < kD / 2; ++f) {
        const std::complex<double> z{g(rng), g(rng)};
        const int a = layout == kvevict::RopeLayout::adjacent ? 2 * f : f;
        const int b = layout == kvevict::RopeLayout::adjacent ? 2 * f + 1 : f + kD / 2;
        for (int i = 0; i < kKv; ++i) {
          const std::complex<double> zi = c[i][f] * z;
          k(t, i * kD + a) = zi.real() + noise * g(rng);
          k(t, i * kD + b) = zi.imag() + noise * g(rng);
        }
      }
      for (int i = 0; i < kKv; ++i) v.row(t).segment(i * kD, kD) = (mix[i] * base_v).transpose();
      for (int j = 0; j < q.cols(); ++j) q(t, j) = g(rng);
    }
  }
};

/// Attention with RoPE applied at positions 0..N-1, causal; the last query's output.
Matrix attend_last(Matrix q, Matrix k, const Matrix& v, int n_kv, kvevict::RopeLayout layout) {
  const kvevict::Rope rope(kD, 10000.0, layout);
  for (int t = 0; t < kN; ++t) {
    for (int h = 0; h < kQ; ++h) rope.rotate(q.row(t).data() + h * kD, t);
    for (int h = 0; h < n_kv; ++h) rope.rotate(k.row(t).data() + h * kD, t);
  }
  std::vector<std::int64_t> pos(kN);
  for (int t = 0; t < kN; ++t) pos[std::size_t(t)] = t;
  return kvevict::attention<double>(q.bottomRows(1), k, v, {kN - 1}, pos, kQ, n_kv);
}

/// The merged model's last output, brought back to the original heads' space.
Matrix merged_output(const MergeableHeads& x, const kvevict::HeadMerge& m, kvevict::RopeLayout layout) {
  const int group_q = kQ / kKv;  // query heads per original kv head
  Matrix q(kN, kQ * kD), k = Matrix::Zero(kN, kD), v = Matrix::Zero(kN, kD);
  for (int t = 0; t < kN; ++t) {
    for (int i = 0; i < kKv; ++i) {
      k.row(t) += (m.key_in[std::size_t(i)] * x.k.row(t).segment(i * kD, kD).transpose()).transpose();
      v.row(t) += (m.value_in[std::size_t(i)] * x.v.row(t).segment(i * kD, kD).transpose()).transpose();
    }
    for (int h = 0; h < kQ; ++h)
      q.row(t).segment(h * kD, kD) =
          (m.key_in[std::size_t(h / group_q)] * x.q.row(t).segment(h * kD, kD).transpose()).transpose();
  }
  Matrix out = attend_last(q, k, v, 1, layout);
  for (int h = 0; h < kQ; ++h)
    out.row(0).segment(h * kD, kD) =
        (m.value_out[std::size_t(h / group_q)] * out.row(0).segment(h * kD, kD).transpose()).transpose();
  return out;
}

class HeadMergeTest : public ::testing::TestWithParam<kvevict::RopeLayout> {};

TEST_P(HeadMergeTest, MergeableHeadsMergeExactlyUnderRope) {
  const MergeableHeads x(GetParam());
  const auto merge = kvevict::fit_head_merge(x.k, x.v, kKv, 1, kD, GetParam());
  const Matrix original = attend_last(x.q, x.k, x.v, kKv, GetParam());
  const Matrix merged = merged_output(x, merge, GetParam());
  EXPECT_LT((merged - original).cwiseAbs().maxCoeff(), 1e-9 * (1 + original.cwiseAbs().maxCoeff()));
}

TEST_P(HeadMergeTest, SvdBeatsMeanPoolingOnNoisyHeads) {
  const MergeableHeads x(GetParam(), 0.1);
  const Matrix original = attend_last(x.q, x.k, x.v, kKv, GetParam());
  const double svd =
      (merged_output(x, kvevict::fit_head_merge(x.k, x.v, kKv, 1, kD, GetParam()), GetParam()) - original).norm();
  const double mean =
      (merged_output(x, kvevict::fit_head_merge(x.k, x.v, kKv, 1, kD, GetParam(), kvevict::HeadMergeMethod::mean),
                     GetParam()) -
       original)
          .norm();
  EXPECT_LT(svd, 0.5 * mean) << "svd " << svd << ", mean " << mean;
}

INSTANTIATE_TEST_SUITE_P(BothLayouts, HeadMergeTest,
                         ::testing::Values(kvevict::RopeLayout::adjacent, kvevict::RopeLayout::half_split));

TEST(HeadMerge, BadShapesAreNamed) {
  const Matrix k = Matrix::Zero(4, 3 * kD);
  EXPECT_THROW(kvevict::fit_head_merge(k, k, 3, 2, kD, kvevict::RopeLayout::adjacent), kvevict::InvalidArgument);
  try {
    kvevict::fit_head_merge(k, k.leftCols(kD), 3, 1, kD, kvevict::RopeLayout::adjacent);
    FAIL();
  } catch (const kvevict::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("values"), std::string::npos);
  }
}

// Each bad input gives InvalidArgument whose message starts with the parameter's name.
void expect_refused(const std::function<void()>& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "accepted; expected " << message;
  } catch (const kvevict::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

TEST(HeadMerge, HostileInputIsRefusedBeforeAnyWork) {
  const auto adjacent = kvevict::RopeLayout::adjacent;
  const Matrix k = Matrix::Random(4, 3 * kD);
  expect_refused([&] { kvevict::fit_head_merge(k, k, 0, 1, kD, adjacent); },
                 "n_kv_heads: expected in [1, 65536], got 0");
  expect_refused([&] { kvevict::fit_head_merge(k, k, -3, 1, kD, adjacent); }, "n_kv_heads");
  expect_refused([&] { kvevict::fit_head_merge(k, k, 3, 0, kD, adjacent); }, "n_merged");
  expect_refused([&] { kvevict::fit_head_merge(k, k, 3, 1, 1 << 20, adjacent); },
                 "head_dim: expected even and in [2, 8192]");
  const Matrix none(0, 3 * kD);
  expect_refused([&] { kvevict::fit_head_merge(none, none, 3, 1, kD, adjacent); },
                 "keys.rows(): expected at least one calibration token");
  Matrix nan = k;
  nan(2, 5) = std::numeric_limits<double>::quiet_NaN();
  expect_refused([&] { kvevict::fit_head_merge(nan, k, 3, 1, kD, adjacent); }, "keys: expected finite");
  expect_refused([&] { kvevict::fit_head_merge(k, nan, 3, 1, kD, adjacent); }, "values: expected finite");
  // The mean merge reads no calibration data, so it takes none.
  const auto mean = kvevict::fit_head_merge(none, none, 3, 1, kD, adjacent, kvevict::HeadMergeMethod::mean);
  EXPECT_TRUE(mean.value_in[0].allFinite());
}
}  // namespace
