// SPDX-License-Identifier: Apache-2.0
// The quantised products of the example engine: the vector path against the portable scalar path, and both
// against dequantise-then-multiply in double, on random blocks of every supported type.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "model_assets.hpp"
#include "quant.hpp"

namespace {

using llama::quant::BlockQ8;

// An fp16 near f (truncated; any nearby value will do for random blocks), subnormals included.
std::uint16_t to_fp16(float f) {
  const std::uint16_t sign = f < 0 ? 0x8000u : 0u;
  const float a = std::fmin(std::fabs(f), 65504.0f);
  if (a < 6.103515625e-05f) return std::uint16_t(sign | std::uint16_t(a / 5.9604644775390625e-08f));
  std::uint32_t bits;
  std::memcpy(&bits, &a, 4);
  return std::uint16_t(sign | (((bits >> 23) - 112u) << 10) | ((bits >> 13) & 0x3FFu));
}

// A tensor of `rows` x `n_blocks * 32` random blocks of `type`; `scale` sets the magnitude of d (and m).
struct RandomTensor {
  gguf::TensorInfo info;
  std::vector<std::uint8_t> bytes;
  RandomTensor(gguf::Type type, int rows, int n_blocks, float scale, std::mt19937& rng) {
    const auto [block_bytes, values] = gguf::block_layout(type);
    const std::size_t n = std::size_t(rows) * std::size_t(n_blocks);
    bytes.resize(n * block_bytes);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    for (std::size_t b = 0; b < n; ++b) {
      std::uint8_t* p = bytes.data() + b * block_bytes;
      for (std::size_t i = 0; i < block_bytes; ++i) p[i] = std::uint8_t(byte(rng));
      const std::uint16_t d = scale == 0.0f ? 0 : to_fp16(scale * unit(rng));
      std::memcpy(p, &d, 2);
      if (type == gguf::Type::Q4_1) {
        const std::uint16_t m = scale == 0.0f ? 0 : to_fp16(8.0f * scale * unit(rng));
        std::memcpy(p + 2, &m, 2);
      }
      if (type == gguf::Type::Q8_0)  // ggml's Q8_0 never holds -128 (it rounds to +-127)
        for (std::size_t i = 2; i < block_bytes; ++i)
          if (p[i] == 0x80) p[i] = 0x81;
    }
    info = gguf::TensorInfo{"random",
                            {std::uint64_t(n_blocks) * values, std::uint64_t(rows)},
                            type,
                            0,
                            std::uint64_t(n) * values,
                            bytes.size(),
                            bytes.data()};
  }
};

// Activations: `cols` columns of width n_blocks * 32, some all zero, some with a single huge value.
std::vector<float> random_columns(int width, int cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(std::size_t(width) * std::size_t(cols));
  for (auto& v : x) v = normal(rng);
  if (cols > 1) std::fill_n(x.begin() + width, width, 0.0f);  // column 1: zeros
  if (cols > 2) x[std::size_t(2 * width + 5)] = 3.0e4f;       // column 2: one outlier
  if (cols > 3)
    for (int i = 0; i < width; ++i) x[std::size_t(3 * width + i)] *= 1e-6f;  // tiny
  return x;
}

// The exact value of the product the kernels compute: dequantised weights times dequantised activations.
double reference_dot(const float* w, const BlockQ8* a, int n_blocks, double* magnitude) {
  double sum = 0.0, mag = 0.0;
  for (int b = 0; b < n_blocks; ++b)
    for (int i = 0; i < 32; ++i) {
      const double term = double(w[b * 32 + i]) * double(a[b].d) * double(a[b].qs[i]);
      sum += term;
      mag += std::fabs(term);
    }
  *magnitude = mag;
  return sum;
}

// Q4_1's minimum multiplies s, which is rounded to half precision apart from d: that difference is part of
// the format (llama.cpp's too), not an error of the product. Its size for one row against one column.
double minimum_rounding(gguf::Type type, const std::uint8_t* row, const BlockQ8* x, int n_blocks) {
  double total = 0;
  for (int b = 0; type == gguf::Type::Q4_1 && b < n_blocks; ++b) {
    std::uint16_t m;
    std::memcpy(&m, row + std::size_t(b) * 20 + 2, 2);
    int sum = 0;
    for (int i = 0; i < 32; ++i) sum += x[b].qs[i];
    total += std::fabs(double(gguf::half_to_float(m))) * std::fabs(double(x[b].s) - double(x[b].d) * sum);
  }
  return total;
}

// The kernels add the split form, d_w d_a * isum + m_w * s_a block by block, whose two terms can each be far
// larger than the product they sum to (Q4_1's minimum cancelling its scaled values against one outlier
// activation: terms of 2e8 for a product of 1e6). Each term is rounded at most n_blocks + 8 times (the scales'
// product, the FMA into its lane, the lanes' pairwise sum, the sums across blocks), by 2^-24 of the running sum
// at most: the bound on top of the dequantised product's.
double split_rounding(gguf::Type type, const std::uint8_t* row, const BlockQ8* x, int n_blocks) {
  const std::size_t block_bytes = gguf::block_layout(type).first;
  double terms = 0;
  for (int b = 0; b < n_blocks; ++b) {
    const std::uint8_t* block = row + std::size_t(b) * block_bytes;
    std::uint16_t d, m = 0;
    std::memcpy(&d, block, 2);
    int isum = 0;
    for (int i = 0; i < 32; ++i) {
      int q = 0;
      if (type == gguf::Type::Q8_0) {
        q = int(std::int8_t(block[2 + i]));
      } else {
        const std::uint8_t byte = block[(type == gguf::Type::Q4_1 ? 4 : 2) + i % 16];
        q = (i < 16 ? byte & 0x0F : byte >> 4) - (type == gguf::Type::Q4_0 ? 8 : 0);
      }
      isum += q * x[b].qs[i];
    }
    if (type == gguf::Type::Q4_1) std::memcpy(&m, block + 2, 2);
    terms +=
        std::fabs(double(gguf::half_to_float(d)) * x[b].d * isum) + std::fabs(double(gguf::half_to_float(m)) * x[b].s);
  }
  return double(n_blocks + 8) * std::ldexp(terms, -24);
}

TEST(Quant, RoundsActivationsToHalfAStep) {
  std::mt19937 rng(1);
  const std::vector<float> x = random_columns(96, 4, rng);
  std::vector<BlockQ8> blocks(12);
  llama::quant::quantize_row(x.data(), 384, blocks.data());
  for (int b = 0; b < 12; ++b) {
    int sum = 0;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[std::size_t(b * 32 + i)]));
    const float d = amax / 127.0f;  // the step before d is kept at half precision (2^-11 relative, 2^-25 least)
    for (int i = 0; i < 32; ++i) {
      const float v = x[std::size_t(b * 32 + i)];
      // Half a step, plus 127 steps times the half-precision rounding of d.
      EXPECT_LE(std::fabs(v - blocks[std::size_t(b)].d * float(blocks[std::size_t(b)].qs[i])),
                (0.5f * d + 127.0f * std::max(d / 2048.0f, 2.98023224e-08f)) * (1.0f + 1e-6f) + 1e-30f)
          << "block " << b << " value " << i;
      EXPECT_LE(std::abs(int(blocks[std::size_t(b)].qs[i])), 127);
      sum += blocks[std::size_t(b)].qs[i];
    }
    // s = d * sum, rounded to half precision like d: compare with the unrounded d.
    EXPECT_NEAR(blocks[std::size_t(b)].s, d * float(sum),
                std::max(std::fabs(d * float(sum)) / 2048.0f, 2.98023224e-08f));
  }
  EXPECT_EQ(blocks[3].d, 0.0f);  // the all-zero column quantises to zeros, not NaN
}

// Activation scales are kept at half precision, as llama.cpp keeps them: every half is its own rounding, and
// any float rounds to a half within half a unit in the last place (2^-11 relative, 2^-25 among subnormals).
TEST(Quant, RoundsScalesToHalfPrecision) {
  for (std::uint32_t h = 0; h < 0x7C00u; ++h) {
    const float f = gguf::half_to_float(std::uint16_t(h));
    ASSERT_EQ(llama::quant::round_to_fp16(f), f) << "half " << h;
    ASSERT_EQ(llama::quant::round_to_fp16(-f), -f) << "half " << h;
  }
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> exponent(-26.0f, 15.0f);
  for (int i = 0; i < 100000; ++i) {
    const float f = std::exp2(exponent(rng));
    const float r = llama::quant::round_to_fp16(f);
    EXPECT_LE(std::fabs(r - f), std::max(f / 2048.0f, 2.98023224e-08f) * (1.0f + 1e-6f)) << f;
  }
}

class QuantProduct : public ::testing::TestWithParam<gguf::Type> {};

// Every row of random weights times several columns (all-zero, outlier and tiny ones among them), for odd and
// model-sized block counts and scales from tiny to near fp16's largest: the compiled path and the scalar path
// both equal the exact product to within float rounding of the sum of |terms| (a few hundred additions of
// float products: relative 1e-5 of the magnitude is far above the 6e-8 per operation, far below any bug), plus
// the rounding of the split form's terms where they cancel (split_rounding).
// 5 and 37 rows: a group of sixteen rows side by side (AVX-512) short of rows, and two whole groups before one.
TEST_P(QuantProduct, MatchesScalarPathAndDequantisedProduct) {
  std::mt19937 rng(42);
  for (int rows : {5, 37})
    for (int n_blocks : {1, 3, 17, 18, 48}) {
      for (float scale : {0.0f, 1e-4f, 0.02f, 1.0f, 1000.0f}) {
        const int cols = 7, width = n_blocks * 32;
        RandomTensor w(GetParam(), rows, n_blocks, scale, rng);
        std::vector<float> dense(std::size_t(rows) * std::size_t(width));
        gguf::dequantize(w.info, dense.data());
        const std::vector<float> x = random_columns(width, cols, rng);
        llama::quant::Activations xq;
        xq.quantize(x.data(), width, cols);
        const llama::quant::QuantMatrix matrix(w.info);
        std::vector<float> out(std::size_t(rows) * std::size_t(cols));
        matrix.multiply_rows(xq, 0, rows, out.data(), rows);
        for (int r = 0; r < rows; ++r)
          for (int c = 0; c < cols; ++c) {
            double magnitude = 0;
            const double exact =
                reference_dot(dense.data() + std::size_t(r * width), xq.columns()[c], n_blocks, &magnitude);
            const auto* row = w.bytes.data() + std::size_t(r) * w.bytes.size() / std::size_t(rows);
            float scalar = 0;
            if (GetParam() == gguf::Type::Q4_1)
              scalar = llama::quant::scalar::dot(reinterpret_cast<const llama::quant::BlockQ4_1*>(row), xq.columns()[c],
                                                 n_blocks);
            else if (GetParam() == gguf::Type::Q4_0)
              scalar = llama::quant::scalar::dot(reinterpret_cast<const llama::quant::BlockQ4_0*>(row), xq.columns()[c],
                                                 n_blocks);
            else
              scalar = llama::quant::scalar::dot(reinterpret_cast<const llama::quant::BlockQ8_0*>(row), xq.columns()[c],
                                                 n_blocks);
            const double s_rounding = minimum_rounding(GetParam(), row, xq.columns()[c], n_blocks);
            const double tolerance =
                1e-5 * magnitude + s_rounding + split_rounding(GetParam(), row, xq.columns()[c], n_blocks) + 1e-30;
            const float fast = out[std::size_t(r + c * rows)];
            EXPECT_NEAR(fast, exact, tolerance) << llama::quant::implementation() << " blocks " << n_blocks << " scale "
                                                << scale << " row " << r << " col " << c;
            EXPECT_NEAR(scalar, exact, tolerance) << "scalar blocks " << n_blocks << " scale " << scale;
            EXPECT_NEAR(fast, scalar, 2 * tolerance);
            if (scale == 0.0f) {
              EXPECT_EQ(fast, 0.0f);
            }
          }
      }
    }
}

// A row's product does not depend on which rows are multiplied with it (the engine hands rows to its threads
// in blocks, and a thread count must not change the logits): each row alone gives the bits it gives among 37.
TEST_P(QuantProduct, ARowGivesTheSameBitsAloneAsAmongOthers) {
  std::mt19937 rng(9);
  const int rows = 37, n_blocks = 18, width = n_blocks * 32;
  RandomTensor w(GetParam(), rows, n_blocks, 0.02f, rng);
  const llama::quant::QuantMatrix matrix(w.info);
  for (int cols : {1, 2, 3, 4, 16, 70}) {
    const std::vector<float> x = random_columns(width, cols, rng);
    llama::quant::Activations xq;
    xq.quantize(x.data(), width, cols);
    std::vector<float> together(std::size_t(rows) * std::size_t(cols)), alone(together.size());
    matrix.multiply_rows(xq, 0, rows, together.data(), rows);
    for (int r = 0; r < rows; ++r) matrix.multiply_rows(xq, r, r + 1, alone.data(), rows);
    for (std::size_t i = 0; i < together.size(); ++i)
      ASSERT_EQ(together[i], alone[i]) << "row " << i % rows << " column " << i / rows << " of " << cols;
  }
}

INSTANTIATE_TEST_SUITE_P(EveryType, QuantProduct,
                         ::testing::Values(gguf::Type::Q4_0, gguf::Type::Q4_1, gguf::Type::Q8_0),
                         [](const auto& param) { return std::string(gguf::type_name(unsigned(param.param))); });

// The real file's Q4_1 and Q8_0 matrices, a few rows each, against their dequantised rows.
#if KVEVICT_QUANT_VNNI
// The VNNI instruction and AVX2's two steps give the same integers for every block the products see: weights
// 0..15 (Q4) or |w| up to 128 (Q8_0 with the sign moved to the activation), activations -127..127; the
// extremes included.
TEST(Quant, VnniAndAvx2ProductsAreTheSameIntegers) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> weight(0, 128), activation(-127, 127);
  for (int trial = 0; trial < 20000; ++trial) {
    alignas(32) std::uint8_t w[32];
    alignas(32) std::int8_t a[32];
    for (int i = 0; i < 32; ++i) {
      w[i] = std::uint8_t(trial == 0 ? 128 : trial == 1 ? 0 : weight(rng));
      a[i] = std::int8_t(trial == 0 ? -127 : trial == 2 ? 127 : activation(rng));
    }
    const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i av = _mm256_load_si256(reinterpret_cast<const __m256i*>(a));
    alignas(32) std::int32_t vnni[8], avx2[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(vnni), llama::quant::avx2::products_vnni(wv, av));
    _mm256_store_si256(reinterpret_cast<__m256i*>(avx2), llama::quant::avx2::products_avx2(wv, av));
    for (int i = 0; i < 8; ++i) {
      std::int32_t exact = 0;
      for (int j = 0; j < 4; ++j) exact += int(w[4 * i + j]) * int(a[4 * i + j]);
      ASSERT_EQ(vnni[i], exact) << "trial " << trial;
      ASSERT_EQ(avx2[i], exact) << "trial " << trial;
    }
  }
}
#endif

TEST(Quant, RealWeightsMatchTheirDequantisedRows) {
  const gguf::File file(assets::model());
  std::mt19937 rng(7);
  for (const char* name : {"blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"}) {
    const auto& t = file.tensor(name);
    const llama::quant::QuantMatrix matrix(t);
    const int width = int(matrix.cols());
    const std::vector<float> x = random_columns(width, 3, rng);
    llama::quant::Activations xq;
    xq.quantize(x.data(), width, 3);
    for (std::int64_t r : {std::int64_t(0), matrix.rows() / 2, matrix.rows() - 1}) {
      std::vector<float> row(static_cast<std::size_t>(width)), out(static_cast<std::size_t>(matrix.rows()) * 3);
      matrix.dequantize_row(r, row.data());
      matrix.multiply_rows(xq, r, r + 1, out.data(), matrix.rows());
      for (int c = 0; c < 3; ++c) {
        double magnitude = 0;
        const double exact = reference_dot(row.data(), xq.columns()[c], width / 32, &magnitude);
        const double s_rounding = minimum_rounding(
            t.type, t.data + std::size_t(r) * matrix.bytes() / std::size_t(matrix.rows()), xq.columns()[c], width / 32);
        EXPECT_NEAR(out[std::size_t(r + c * matrix.rows())], exact, 1e-5 * magnitude + s_rounding + 1e-30)
            << name << " row " << r;
      }
    }
  }
}

}  // namespace
