// SPDX-License-Identifier: Apache-2.0
// Matrix products with quantised weights, the way llama.cpp computes them: each activation column is rounded
// to 8-bit blocks of 32 (one float scale per block), and every weight block is dotted with it in integers,
// so the weights are read in their 4.5- or 8.5-bit form straight from the memory-mapped file.
//
// Per block of 32, with weight values d_w * q_w + m_w and activations d_a * q_a:
//   sum_i (d_w q_w,i + m_w) d_a q_a,i  =  d_w d_a * sum_i q_w,i q_a,i  +  m_w * s_a,   s_a = d_a * sum_i q_a,i
// so one integer dot product and two multiplies per block. Q4_0 (values d (q - 8)) and Q8_0 have no minimum.
//
// Two implementations of the block dot products: AVX2 (chosen at compile time when the compiler targets it)
// and a portable scalar one that the tests run on every build and compare with the vector path.
#ifndef KVEVICT_EXAMPLES_LLAMA_QUANT_HPP
#define KVEVICT_EXAMPLES_LLAMA_QUANT_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KVEVICT_QUANT_AVX2 1
#else
#define KVEVICT_QUANT_AVX2 0
#endif

#include "gguf.hpp"

namespace llama::quant {

constexpr int kBlock = 32;

// The file's block layouts (ggml's), read in place from the mapping.
struct BlockQ4_0 {
  std::uint16_t d;      // fp16 scale
  std::uint8_t qs[16];  // value i in the low nibble of byte i, value i + 16 in its high nibble
};
struct BlockQ4_1 {
  std::uint16_t d, m;  // fp16 scale and minimum
  std::uint8_t qs[16];
};
struct BlockQ8_0 {
  std::uint16_t d;
  std::int8_t qs[32];
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34,
              "GGUF block layouts must have no padding");

/// A block of 32 activations: values d * qs[i]; s = d * sum(qs) serves the weight's minimum.
struct BlockQ8 {
  float d, s;
  std::int8_t qs[32];
};

inline float fp16(std::uint16_t h) {
#if KVEVICT_QUANT_AVX2
  return _cvtsh_ss(h);
#else
  return gguf::half_to_float(h);
#endif
}

/// Rounds `n` floats (a multiple of 32) to blocks: d = max|x| / 127, q = round(x / d).
inline void quantize_row(const float* x, int n, BlockQ8* out) {
  for (int b = 0; b < n / kBlock; ++b, x += kBlock) {
    float amax = 0.0f;
    for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      const int q = static_cast<int>(std::nearbyint(x[i] * inv));
      out[b].qs[i] = static_cast<std::int8_t>(q);
      sum += q;
    }
    out[b].d = d;
    out[b].s = d * static_cast<float>(sum);
  }
}

namespace scalar {

inline float dot(const BlockQ4_0* w, const BlockQ8* a, int n_blocks) {
  float sum = 0.0f;
  for (int b = 0; b < n_blocks; ++b) {
    int isum = 0;  // values q - 8 in integers: folding -8 d into a minimum term would cancel catastrophically
    for (int i = 0; i < 16; ++i)
      isum += ((w[b].qs[i] & 0x0F) - 8) * a[b].qs[i] + ((w[b].qs[i] >> 4) - 8) * a[b].qs[i + 16];
    sum += fp16(w[b].d) * a[b].d * static_cast<float>(isum);
  }
  return sum;
}
inline float dot(const BlockQ4_1* w, const BlockQ8* a, int n_blocks) {
  float sum = 0.0f;
  for (int b = 0; b < n_blocks; ++b) {
    int isum = 0;
    for (int i = 0; i < 16; ++i) isum += (w[b].qs[i] & 0x0F) * a[b].qs[i] + (w[b].qs[i] >> 4) * a[b].qs[i + 16];
    sum += fp16(w[b].d) * a[b].d * static_cast<float>(isum) + fp16(w[b].m) * a[b].s;
  }
  return sum;
}
inline float dot(const BlockQ8_0* w, const BlockQ8* a, int n_blocks) {
  float sum = 0.0f;
  for (int b = 0; b < n_blocks; ++b) {
    int isum = 0;
    for (int i = 0; i < kBlock; ++i) isum += w[b].qs[i] * a[b].qs[i];
    sum += fp16(w[b].d) * a[b].d * static_cast<float>(isum);
  }
  return sum;
}

/// out[c] = row w . column a[c] for `n_cols` columns.
template <class Block>
void dot_columns(const Block* w, const BlockQ8* const* a, int n_cols, int n_blocks, float* out) {
  for (int c = 0; c < n_cols; ++c) out[c] = dot(w, a[c], n_blocks);
}

}  // namespace scalar

#if KVEVICT_QUANT_AVX2
namespace avx2 {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 unsigned weight values 0..15 from 16 bytes of nibbles, in value order.
inline __m256i unpack_nibbles(const std::uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// Eight int32 partial sums of 32 products unsigned(w) * signed(a).
inline __m256 products(__m256i w_unsigned, __m256i a_signed) {
  const __m256i pairs = _mm256_maddubs_epi16(w_unsigned, a_signed);  // <= 2 * 15 * 127 or 2 * 128 * 127
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// One weight row against up to four activation columns: each weight block is unpacked once for all of them.
template <std::size_t kCols, class Block>
void dot_columns_n(const Block* w, const BlockQ8* const* a, int n_blocks, float* out) {
  __m256 acc[kCols];
  float mins[kCols];
  for (std::size_t c = 0; c < kCols; ++c) {
    acc[c] = _mm256_setzero_ps();
    mins[c] = 0.0f;
  }
  for (int b = 0; b < n_blocks; ++b) {
    const float d = fp16(w[b].d);
    constexpr bool is_signed = !std::is_same_v<Block, BlockQ4_1>;
    __m256i wq;
    float m = 0.0f;
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs));
    } else if constexpr (std::is_same_v<Block, BlockQ4_0>) {
      wq = _mm256_sub_epi8(unpack_nibbles(w[b].qs), _mm256_set1_epi8(8));
    } else {
      wq = unpack_nibbles(w[b].qs);
      m = fp16(w[b].m);
    }
    for (std::size_t c = 0; c < kCols; ++c) {
      const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[c][b].qs));
      __m256 p;
      if constexpr (is_signed)  // signed x signed: |w| times a with w's sign
        p = products(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
      else
        p = products(wq, aq);
      acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[c][b].d), p, acc[c]);
      mins[c] += m * a[c][b].s;
    }
  }
  for (std::size_t c = 0; c < kCols; ++c) out[c] = hsum(acc[c]) + mins[c];
}

template <class Block>
void dot_columns(const Block* w, const BlockQ8* const* a, int n_cols, int n_blocks, float* out) {
  int c = 0;
  for (; c + 4 <= n_cols; c += 4) dot_columns_n<4>(w, a + c, n_blocks, out + c);
  switch (n_cols - c) {
    case 3:
      dot_columns_n<3>(w, a + c, n_blocks, out + c);
      break;
    case 2:
      dot_columns_n<2>(w, a + c, n_blocks, out + c);
      break;
    case 1:
      dot_columns_n<1>(w, a + c, n_blocks, out + c);
      break;
    default:
      break;
  }
}

}  // namespace avx2
#endif

/// The implementation this build uses.
inline const char* implementation() { return KVEVICT_QUANT_AVX2 ? "avx2" : "scalar"; }

template <class Block>
void dot_columns(const Block* w, const BlockQ8* const* a, int n_cols, int n_blocks, float* out) {
#if KVEVICT_QUANT_AVX2
  avx2::dot_columns(w, a, n_cols, n_blocks, out);
#else
  scalar::dot_columns(w, a, n_cols, n_blocks, out);
#endif
}

/// Activations of T tokens, each rounded to blocks; reused between calls so decode allocates nothing.
class Activations {
 public:
  /// Rounds the columns of a column-major (width x T) matrix.
  void quantize(const float* columns, int width, int n_cols) {
    if (width % kBlock != 0) throw std::invalid_argument("activation width must be a multiple of 32");
    n_blocks_ = width / kBlock;
    blocks_.resize(std::size_t(n_blocks_) * std::size_t(n_cols));
    columns_.resize(std::size_t(n_cols));
    for (int c = 0; c < n_cols; ++c) {
      BlockQ8* column = blocks_.data() + std::size_t(c) * std::size_t(n_blocks_);
      quantize_row(columns + std::ptrdiff_t(c) * width, width, column);
      columns_[std::size_t(c)] = column;
    }
  }
  int n_cols() const { return int(columns_.size()); }
  int n_blocks() const { return n_blocks_; }
  const BlockQ8* const* columns() const { return columns_.data(); }

 private:
  int n_blocks_ = 0;
  std::vector<BlockQ8> blocks_;
  std::vector<const BlockQ8*> columns_;
};

/// A weight matrix (rows x cols, row-major as GGUF stores it) read in place from a quantised tensor.
class QuantMatrix {
 public:
  QuantMatrix() = default;
  explicit QuantMatrix(const gguf::TensorInfo& t)
      : type_(t.type), rows_(std::int64_t(t.n_elements / t.dims[0])), cols_(std::int64_t(t.dims[0])), data_(t.data) {
    if (type_ != gguf::Type::Q4_0 && type_ != gguf::Type::Q4_1 && type_ != gguf::Type::Q8_0)
      throw gguf::GgufError("tensor " + t.name + ": no quantised product for type " + gguf::type_name(unsigned(type_)));
    row_bytes_ = std::size_t(cols_ / kBlock) * gguf::block_layout(type_).first;
  }
  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  gguf::Type type() const { return type_; }
  std::size_t bytes() const { return row_bytes_ * std::size_t(rows_); }

  /// out(r, c) for rows [first, last) and every column of `x`; `out` is column-major with leading dimension ld.
  void multiply_rows(const Activations& x, std::int64_t first, std::int64_t last, float* out, std::int64_t ld) const {
    float partial[64];
    for (std::int64_t r = first; r < last; ++r) {
      const std::uint8_t* row = data_ + std::size_t(r) * row_bytes_;
      for (int c0 = 0; c0 < x.n_cols(); c0 += 64) {
        const int n = std::min(64, x.n_cols() - c0);
        switch (type_) {
          case gguf::Type::Q4_0:
            dot_columns(reinterpret_cast<const BlockQ4_0*>(row), x.columns() + c0, n, x.n_blocks(), partial);
            break;
          case gguf::Type::Q4_1:
            dot_columns(reinterpret_cast<const BlockQ4_1*>(row), x.columns() + c0, n, x.n_blocks(), partial);
            break;
          default:
            dot_columns(reinterpret_cast<const BlockQ8_0*>(row), x.columns() + c0, n, x.n_blocks(), partial);
            break;
        }
        for (int c = 0; c < n; ++c) out[std::size_t(r + (c0 + c) * ld)] = partial[c];
      }
    }
  }

  /// One row as floats (embedding lookup).
  void dequantize_row(std::int64_t r, float* out) const {
    gguf::TensorInfo row;
    row.type = type_;
    row.n_elements = std::uint64_t(cols_);
    row.data = data_ + std::size_t(r) * row_bytes_;
    gguf::dequantize(row, out);
  }

 private:
  gguf::Type type_ = gguf::Type::Q4_1;
  std::int64_t rows_ = 0, cols_ = 0;
  std::size_t row_bytes_ = 0;
  const std::uint8_t* data_ = nullptr;
};

}  // namespace llama::quant

#endif  // KVEVICT_EXAMPLES_LLAMA_QUANT_HPP
