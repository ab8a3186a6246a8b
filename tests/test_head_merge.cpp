// SPDX-License-Identifier: Apache-2.0
// KV head merging: exact when the heads are exactly mergeable, commuting with RoPE, better than mean pooling;
// the error it reports and the output repair that follows it.
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

// What head_merge_error reports is what the merged head loses: nothing for mergeable heads or a merge into as many
// heads as before, something for noisy heads, more for mean pooling than for the SVD merge it is compared with.
TEST_P(HeadMergeTest, MergeErrorIsWhatTheMergedHeadCannotReconstruct) {
  const MergeableHeads exact(GetParam()), noisy(GetParam(), 0.3);
  const auto merge_error = [&](const MergeableHeads& x, int n_merged, kvevict::HeadMergeMethod method) {
    return kvevict::head_merge_error(x.k, x.v,
                                     kvevict::fit_head_merge(x.k, x.v, kKv, n_merged, kD, GetParam(), method));
  };
  const auto svd = kvevict::HeadMergeMethod::svd, mean = kvevict::HeadMergeMethod::mean;
  for (const auto& e : {merge_error(exact, 1, svd), merge_error(noisy, kKv, svd), merge_error(noisy, kKv, mean)}) {
    EXPECT_LT(e.keys, 1e-12);
    EXPECT_LT(e.values, 1e-12);
  }
  // The noise is in the keys; the values stay images of one head_dim-wide base, which the SVD keeps whole.
  const auto noisy_svd = merge_error(noisy, 1, svd), noisy_mean = merge_error(noisy, 1, mean);
  EXPECT_GT(noisy_svd.keys, 1e-4);
  EXPECT_LT(noisy_svd.values, 1e-12);
  EXPECT_LT(noisy_svd.keys, noisy_mean.keys);
  EXPECT_GT(noisy_mean.values, 0.1);
  EXPECT_LE(noisy_mean.keys, 1.0);
  EXPECT_LE(noisy_mean.values, 1.0);
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

// The output repair: least squares shrunk towards the merged projection W_0, which is one of its candidates, so
// the calibration error it minimises never grows, whatever the ridge, also when the outputs are rank-deficient
// (more inputs than tokens, or repeated columns); with no ridge and an exact linear target it finds the target's
// projection.
TEST(OutputRepair, NeverIncreasesTheCalibrationErrorItMinimises) {
  std::mt19937 rng(11);
  std::normal_distribution<double> g(0.0, 1.0);
  const auto random = [&](Eigen::Index r, Eigen::Index c) {
    return Eigen::MatrixXd(Eigen::MatrixXd::NullaryExpr(r, c, [&] { return g(rng); }));
  };
  for (const Eigen::Index tokens : {Eigen::Index(12), Eigen::Index(200)}) {
    Eigen::MatrixXd a = random(tokens, 24);
    a.col(3) = a.col(7);  // rank-deficient
    const Eigen::MatrixXd truth = random(16, 24), w0 = truth + 0.5 * random(16, 24);
    const Eigen::MatrixXd target = a * truth.transpose() + 0.1 * random(tokens, 16);
    const double before = (a * w0.transpose() - target).squaredNorm();
    double previous = 0;
    for (const double ridge : {100.0, 1.0, 1e-2, 1e-4, 0.0}) {
      const Eigen::MatrixXd w = kvevict::repair_output_projection(a, target, w0, ridge);
      const double after = (a * w.transpose() - target).squaredNorm();
      EXPECT_LE(after, before * (1 + 1e-12)) << "tokens " << tokens << ", ridge " << ridge;
      if (ridge < 100.0) {
        EXPECT_LE(after, previous * (1 + 1e-9)) << "less shrinkage fits no worse";
      }
      previous = after;
    }
    EXPECT_LT(previous, 0.5 * before);
  }
  const Eigen::MatrixXd a = random(100, 10), truth = random(6, 10);
  const Eigen::MatrixXd w =
      kvevict::repair_output_projection(a, a * truth.transpose(), Eigen::MatrixXd::Zero(6, 10), 0);
  EXPECT_LT((w - truth).cwiseAbs().maxCoeff(), 1e-9);
}

TEST(OutputRepair, HostileInputIsNamed) {
  const Eigen::MatrixXd a = Eigen::MatrixXd::Random(8, 4), t = Eigen::MatrixXd::Random(8, 3),
                        w = Eigen::MatrixXd::Random(3, 4);
  expect_refused([&] { kvevict::repair_output_projection(a.topRows(0), t.topRows(0), w); },
                 "attention.rows(): expected at least one calibration token");
  expect_refused([&] { kvevict::repair_output_projection(a, t.topRows(7), w); }, "target.rows(): expected");
  expect_refused([&] { kvevict::repair_output_projection(a, t, w.transpose()); }, "projection: expected 3x4");
  expect_refused([&] { kvevict::repair_output_projection(a, t, w, -1.0); }, "ridge: expected finite and >= 0");
  Eigen::MatrixXd nan = a;
  nan(1, 1) = std::numeric_limits<double>::quiet_NaN();
  expect_refused([&] { kvevict::repair_output_projection(nan, t, w); }, "attention: expected finite");
  const Matrix k = Matrix::Random(4, 3 * kD);
  auto merge = kvevict::fit_head_merge(k, k, 3, 1, kD, kvevict::RopeLayout::adjacent);
  expect_refused([&] { kvevict::head_merge_error(k.leftCols(kD), k, merge); }, "keys.cols()");
  merge.key_in.pop_back();
  expect_refused([&] { kvevict::head_merge_error(k, k, merge); }, "merge: expected a merge made by fit_head_merge");
}
}  // namespace
