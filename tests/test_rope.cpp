// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <kvevict/error.hpp>
#include <kvevict/rope.hpp>
#include <random>
#include <vector>

#include "reference.hpp"

namespace {
using kvevict::Rope;
using kvevict::RopeLayout;

class RopeTest : public ::testing::TestWithParam<RopeLayout> {};

std::vector<double> random_row(int d, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> x(static_cast<std::size_t>(d));
  for (double& v : x) v = dist(rng);
  return x;
}

TEST_P(RopeTest, MatchesTheDefinition) {
  const Rope rope(16, 10000.0, GetParam());
  for (std::int64_t p : {0, 1, 5, 1000, 4000000}) {
    auto x = random_row(16, 3);
    const auto expected = ref::rope(x, static_cast<double>(p), 10000.0, GetParam());
    rope.rotate(x.data(), p);
    for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], expected[i], 1e-9) << "position " << p;
  }
}

TEST_P(RopeTest, ReRotatingByADeltaEqualsRotatingAtTheSum) {
  const Rope rope(32, 100000.0, GetParam());
  auto a = random_row(32, 4);
  auto b = a;
  rope.rotate(a.data(), 1234);
  rope.rotate(a.data(), 17);
  rope.rotate(b.data(), 1251);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12);
}

TEST_P(RopeTest, FloatRowsAtMillionsOfPositionsUseExactAngles) {
  const Rope rope(8, 10000.0, GetParam());
  std::vector<float> x{1, 0, 0, 1, 0.5f, 0.5f, -1, 2};
  const ref::Vec expected = ref::rope(ref::Vec(x.begin(), x.end()), 4000001.0, 10000.0, GetParam());
  rope.rotate(x.data(), 4000001);
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], expected[i], 1e-6);
}

// The cache turns every head at one position with angles computed once: the same bits as rotate().
TEST_P(RopeTest, AnglesComputedOnceTurnRowsAsRotateDoes) {
  const Rope rope(16, 10000.0, GetParam());
  std::vector<double> cos_sin(16);
  for (std::int64_t p : {1, 2, 77, 8191, 4000001}) {
    rope.angles(p, cos_sin.data());
    for (unsigned seed : {5u, 6u}) {
      auto a = random_row(16, seed);
      std::vector<float> f(a.begin(), a.end()), g = f;
      auto b = a;
      rope.rotate(a.data(), p);
      rope.rotate_by(b.data(), cos_sin.data());
      rope.rotate(f.data(), p);
      rope.rotate_by(g.data(), cos_sin.data());
      EXPECT_EQ(a, b) << "position " << p;
      EXPECT_EQ(f, g) << "position " << p;
    }
  }
}

TEST_P(RopeTest, LayoutsPairDifferentDimensions) {
  const Rope rope(4, 10000.0, GetParam());
  std::vector<double> x{1, 0, 0, 0};
  rope.rotate(x.data(), 1);
  // Dimension 0 turns with dimension 1 (adjacent) or dimension 2 (half-split).
  const std::size_t partner = GetParam() == RopeLayout::adjacent ? 1 : 2;
  EXPECT_NEAR(x[partner], std::sin(1.0), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(BothLayouts, RopeTest, ::testing::Values(RopeLayout::adjacent, RopeLayout::half_split));

TEST(Rope, RejectsOddHeadDim) {
  try {
    Rope rope(7);
    FAIL() << "expected InvalidArgument";
  } catch (const kvevict::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("even"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Rope(8, -1.0), kvevict::InvalidArgument);
}
}  // namespace
