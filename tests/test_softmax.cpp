// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <kvevict/softmax.hpp>
#include <limits>
#include <random>
#include <vector>

#include "reference.hpp"

namespace {
using kvevict::Normalization;
constexpr float kInf = std::numeric_limits<float>::infinity();

class NormalizeTest : public ::testing::TestWithParam<Normalization> {};

TEST_P(NormalizeTest, MatchesDoubleReferenceOnRandomRows) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 4.0f);
  for (int n : {1, 2, 7, 64, 1000}) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (float& v : x) v = dist(rng);
    const float sink = 0.75f;
    ref::Vec logits(x.begin(), x.end());
    const ref::Vec expected = ref::weights(logits, GetParam(), sink);
    kvevict::normalize(x.data(), n, GetParam(), sink);
    for (int i = 0; i < n; ++i) EXPECT_NEAR(x[std::size_t(i)], expected[std::size_t(i)], 1e-6) << "n=" << n;
  }
}

TEST_P(NormalizeTest, HugeLogitsStayFinite) {
  std::vector<float> x{1e4f, -1e4f, 1e4f, 0.0f};
  kvevict::normalize(x.data(), 4, GetParam(), 1e4f);
  for (float v : x) EXPECT_TRUE(std::isfinite(v));
  EXPECT_GT(x[0], 0.0f);
  EXPECT_EQ(x[1], 0.0f);
  std::vector<float> y{-1e4f, -1e4f};
  kvevict::normalize(y.data(), 2, GetParam(), -1e4f);
  for (float v : y) EXPECT_TRUE(std::isfinite(v));
}

TEST_P(NormalizeTest, FullyMaskedRowIsZeroNotNaN) {
  std::vector<float> x(5, -kInf);
  kvevict::normalize(x.data(), 5, GetParam());
  for (float v : x) EXPECT_EQ(v, 0.0f);
}

// The same logits give the same bits wherever the row lies: an engine's buffers or the heap's, which moves from
// run to run. Measured before exp_of_shifted and sum_in_fixed_order: rows at most offsets differed in the last
// bits (Eigen's scalar exp and sum order before the first aligned element).
TEST_P(NormalizeTest, BitsDoNotDependOnWhereTheRowLies) {
  constexpr int n = 1000, kOffsets = 16;
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 4.0f);
  std::vector<float> logits(n);
  for (float& v : logits) v = dist(rng);
  logits[5] = -kInf;  // a masked key
  std::vector<float> buffer(n + kOffsets), first;
  for (int offset = 0; offset < kOffsets; ++offset) {
    float* row = buffer.data() + offset;
    std::copy(logits.begin(), logits.end(), row);
    kvevict::normalize(row, n, GetParam(), 0.75f);
    const std::vector<float> weights(row, row + n);
    if (offset == 0) first = weights;
    EXPECT_EQ(weights, first) << "row at offset " << offset << " floats";
  }
  EXPECT_EQ(first[5], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(AllKinds, NormalizeTest,
                         ::testing::Values(Normalization::softmax, Normalization::off_by_one,
                                           Normalization::sink_logit));

// The one-pass exp, flush and sum that normalize takes gives the bits of the three passes it replaced, whatever the
// row's length and alignment (a running sum rotated wrongly, or a chunk's exp taken through another path, would
// move the last bits of the sum), in float and in double.
template <class Scalar>
void expect_one_pass_bits() {
  std::mt19937 rng(5);
  std::normal_distribution<Scalar> dist(Scalar(0), Scalar(6));
  constexpr int kOffsets = 64 / int(sizeof(Scalar));
  for (int n : {0, 1, 5, 15, 16, 17, 63, 64, 65, 127, 200, 1000, 4099}) {
    std::vector<Scalar> logits(std::size_t(n) + kOffsets);
    for (Scalar& v : logits) v = dist(rng) - (rng() % 7 == 0 ? Scalar(100) : Scalar(0));  // some flush to zero
    for (int offset = 0; offset < kOffsets; ++offset) {
      const Scalar* row = logits.data() + offset;
      const Scalar m = n > 0 ? *std::max_element(row, row + n) : Scalar(0);
      std::vector<Scalar> three(std::size_t(n) + 1), one(logits.begin(), logits.end());
      kvevict::detail::exp_of_shifted(row, n, m, Scalar(1), three.data());
      kvevict::detail::flush_denormals(three.data(), n);
      const Scalar sum = kvevict::detail::sum_in_fixed_order(three.data(), n);
      Scalar* in_place = one.data() + offset;
      EXPECT_EQ(kvevict::detail::exp_flush_sum(in_place, n, m), sum) << "n " << n << ", offset " << offset;
      EXPECT_TRUE(std::equal(in_place, in_place + n, three.begin())) << "n " << n << ", offset " << offset;
    }
  }
}

TEST(Normalize, OnePassHasTheBitsOfThreeFloat) { expect_one_pass_bits<float>(); }
TEST(Normalize, OnePassHasTheBitsOfThreeDouble) { expect_one_pass_bits<double>(); }

TEST(Normalize, SoftmaxSumsToOneAndOffByOneToLess) {
  std::vector<float> a{0.5f, -1.0f, 2.0f}, b = a;
  kvevict::normalize(a.data(), 3, Normalization::softmax);
  kvevict::normalize(b.data(), 3, Normalization::off_by_one);
  EXPECT_NEAR(a[0] + a[1] + a[2], 1.0f, 1e-6f);
  const double expected =
      (std::exp(0.5) + std::exp(-1.0) + std::exp(2.0)) / (1.0 + std::exp(0.5) + std::exp(-1.0) + std::exp(2.0));
  EXPECT_NEAR(b[0] + b[1] + b[2], expected, 1e-6);
}

TEST(Normalize, OffByOneIsSinkLogitZero) {
  std::vector<double> a{0.3, 1.7, -2.0}, b = a;
  kvevict::normalize(a.data(), 3, Normalization::off_by_one, 5.0);  // the sink argument is ignored
  kvevict::normalize(b.data(), 3, Normalization::sink_logit, 0.0);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_DOUBLE_EQ(a[i], b[i]);
}

TEST(Normalize, OffByOneLetsAHeadAttendToNothing) {
  std::vector<float> x{-30.0f, -31.0f};
  kvevict::normalize(x.data(), 2, Normalization::off_by_one);
  EXPECT_LT(x[0] + x[1], 1e-12f);
}
}  // namespace
