// SPDX-License-Identifier: Apache-2.0
// Matrix products with quantised weights, the way llama.cpp computes them: each activation column is rounded
// to 8-bit blocks of 32 (one float scale per block), and every weight block is dotted with it in integers,
// so the weights are read in their 4.5- or 8.5-bit form straight from the memory-mapped file.
//
// Per block of 32, with weight values d_w * q_w + m_w and activations d_a * q_a:
//   sum_i (d_w q_w,i + m_w) d_a q_a,i  =  d_w d_a * sum_i q_w,i q_a,i  +  m_w * s_a,   s_a = d_a * sum_i q_a,i
// so one integer dot product and two multiplies per block. Q4_0 (values d (q - 8)) and Q8_0 have no minimum.
//
// Three implementations, chosen at compile time: AVX-512 with VNNI (sixteen weight rows side by side, one per
// lane), AVX2 (eight rows side by side; Q8_0 without VNNI in tiles of rows by columns, a row's block in a
// register), and a portable scalar one that the tests run on every build and compare with the vector path.
#ifndef KVEVICT_EXAMPLES_LLAMA_QUANT_HPP
#define KVEVICT_EXAMPLES_LLAMA_QUANT_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KVEVICT_QUANT_AVX2 1
#else
#define KVEVICT_QUANT_AVX2 0
#endif
// VNNI (AVX512-VNNI on 256-bit registers, or AVX-VNNI): the products of a block in one instruction.
#if KVEVICT_QUANT_AVX2 && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
#define KVEVICT_QUANT_VNNI 1
#else
#define KVEVICT_QUANT_VNNI 0
#endif
// AVX-512 with VNNI: sixteen rows per instruction (-DKVEVICT_QUANT_NO_AVX512 keeps the 256-bit path, to compare).
#if KVEVICT_QUANT_VNNI && !defined(KVEVICT_QUANT_NO_AVX512) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__)
#define KVEVICT_QUANT_AVX512 1
#else
#define KVEVICT_QUANT_AVX512 0
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

/// A block of 32 activations: values d * qs[i]; s = d * sum(qs) serves the weight's minimum, and the integer
/// sum(qs) the offset of weights stored unsigned (Q4_0's q - 8, Q8_0's q + 128 in the row-lane products).
struct BlockQ8 {
  float d, s;
  std::int32_t sum;
  std::int8_t qs[32];
};

inline float fp16(std::uint16_t h) {
#if KVEVICT_QUANT_AVX2
  return _cvtsh_ss(h);
#else
  return gguf::half_to_float(h);
#endif
}

/// `f` rounded to the nearest value an IEEE half can hold (ties to even), as a float.
inline float round_to_fp16(float f) {
  if (std::fabs(f) < 6.103515625e-05f)  // half's subnormals: multiples of 2^-24
    return std::nearbyint(f * 16777216.0f) / 16777216.0f;
  const float split = f * 8193.0f;  // Veltkamp: keeps the 11 leading bits of the significand
  return split - (split - f);
}

/// Rounds `n` floats (a multiple of 32) to blocks as llama.cpp's Q8_1 does: d = max|x| / 127, q = round(x / d),
/// and d and s kept at half precision, so that both engines multiply the weights by the same activations.
inline void quantize_row(const float* x, int n, BlockQ8* out) {
  for (int b = 0; b < n / kBlock; ++b, x += kBlock) {
    float amax = 0.0f;
    for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      // |x * inv| <= 127 for finite rows; a NaN or infinite activation (a corrupt model) becomes 0 rather
      // than an undefined conversion to int.
      const float r = std::nearbyint(x[i] * inv);
      const int q = r >= -127.0f && r <= 127.0f ? static_cast<int>(r) : 0;
      out[b].qs[i] = static_cast<std::int8_t>(q);
      sum += q;
    }
    out[b].d = round_to_fp16(d);
    out[b].s = round_to_fp16(d * static_cast<float>(sum));
    out[b].sum = sum;
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

template <class Block>
void multiply(const std::uint8_t* first_row, std::size_t row_bytes, std::int64_t n_rows, const BlockQ8* const* a,
              int n_cols, int n_blocks, float* out, std::int64_t ld) {
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const auto* row = reinterpret_cast<const Block*>(first_row + std::size_t(r) * row_bytes);
    for (int c = 0; c < n_cols; ++c) out[r + c * ld] = dot(row, a[c], n_blocks);
  }
}

}  // namespace scalar

/// Q4_1's minimum terms of a tile, m(r, b) x s(c, b) summed into mins[r][c] over blocks [first, last) in
/// block order with explicit fma, so that every tile shape and ISA path rounds them alike. The vector tiles
/// run it as a pass of its own, which leaves their registers to the products.
template <std::size_t kRows, std::size_t kCols>
void add_minimums(const BlockQ4_1* const* w, const BlockQ8* const* a, int first, int last,
                  float (&mins)[kRows][kCols]) {
  for (int b = first; b < last; ++b)
    for (std::size_t r = 0; r < kRows; ++r) {
      const float m = fp16(w[r][b].m);
      for (std::size_t c = 0; c < kCols; ++c) mins[r][c] = std::fma(m, a[c][b].s, mins[r][c]);
    }
}

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

// Eight int32 partial sums of 32 products unsigned(w) * signed(a), each of four neighbours. AVX2 takes two
// steps through int16 pairs, which cannot saturate (at most 2 * 128 * 127 < 2^15), so both ways give the same
// integers, and the same floats after.
inline __m256i products_avx2(__m256i w_unsigned, __m256i a_signed) {
  const __m256i pairs = _mm256_maddubs_epi16(w_unsigned, a_signed);
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}
#if KVEVICT_QUANT_VNNI
inline __m256i products_vnni(__m256i w_unsigned, __m256i a_signed) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w_unsigned, a_signed);
#else
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w_unsigned, a_signed);
#endif
}
#endif
inline __m256 products(__m256i w_unsigned, __m256i a_signed) {
#if KVEVICT_QUANT_VNNI
  return _mm256_cvtepi32_ps(products_vnni(w_unsigned, a_signed));
#else
  return _mm256_cvtepi32_ps(products_avx2(w_unsigned, a_signed));
#endif
}

// A tile of kRows weight rows by kCols activation columns: each weight block is unpacked once for every column
// and each activation block loaded once for every row, and the kRows * kCols accumulators are independent, so
// the FMA latency is hidden even for a single column (decode).
template <std::size_t kRows, std::size_t kCols, class Block>
void tile(const Block* const* w, const BlockQ8* const* a, int n_blocks, float* out, std::int64_t ld) {
  constexpr bool is_signed = !std::is_same_v<Block, BlockQ4_1>;  // Q4_1 holds 0..15 plus a minimum
  __m256 acc[kRows][kCols];
  float mins[kRows][kCols];
  for (std::size_t r = 0; r < kRows; ++r)
    for (std::size_t c = 0; c < kCols; ++c) {
      acc[r][c] = _mm256_setzero_ps();
      mins[r][c] = 0.0f;
    }
  for (int b = 0; b < n_blocks; ++b) {
    __m256i wq[kRows];
    float d[kRows];
    for (std::size_t r = 0; r < kRows; ++r) {
      const Block& block = w[r][b];
      d[r] = fp16(block.d);
      if constexpr (std::is_same_v<Block, BlockQ8_0>) {
        wq[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block.qs));
      } else if constexpr (std::is_same_v<Block, BlockQ4_0>) {
        wq[r] = _mm256_sub_epi8(unpack_nibbles(block.qs), _mm256_set1_epi8(8));
      } else {
        wq[r] = unpack_nibbles(block.qs);
      }
    }
    for (std::size_t c = 0; c < kCols; ++c) {
      const BlockQ8& x = a[c][b];
      const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs));
      for (std::size_t r = 0; r < kRows; ++r) {
        const __m256 p = is_signed ? products(_mm256_sign_epi8(wq[r], wq[r]), _mm256_sign_epi8(aq, wq[r]))
                                   : products(wq[r], aq);  // signed: |w| times a with w's sign
        acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d[r] * x.d), p, acc[r][c]);
      }
    }
  }
  if constexpr (std::is_same_v<Block, BlockQ4_1>) add_minimums(w, a, 0, n_blocks, mins);
  for (std::size_t r = 0; r < kRows; ++r)
    for (std::size_t c = 0; c < kCols; ++c)
      out[std::ptrdiff_t(r) + std::ptrdiff_t(c) * ld] = hsum(acc[r][c]) + mins[r][c];
}

/// out(r, c) for `n_rows` rows starting at `first_row`, every column: tiles of kWideRows rows by kWideCols
/// columns (what the ISA's registers hold; AVX2's sixteen: 2 by 4, so that a weight block unpacked serves four
/// columns), then 4 rows by 2 columns, then by 1. Every tile shape gives the same bits.
template <class Block, template <std::size_t, std::size_t, class> class Tile, std::size_t kWideCols = 2,
          std::size_t kWideRows = 4>
void multiply_tiles(const std::uint8_t* first_row, std::size_t row_bytes, std::int64_t n_rows, const BlockQ8* const* a,
                    int n_cols, int n_blocks, float* out, std::int64_t ld) {
  auto row = [&](std::int64_t r) { return reinterpret_cast<const Block*>(first_row + std::size_t(r) * row_bytes); };
  std::int64_t r = 0;
  for (; r + 4 <= n_rows; r += 4) {
    const Block* rows[4] = {row(r), row(r + 1), row(r + 2), row(r + 3)};
    // The next four rows, asked for now: with one column (decode) a row is done before the hardware prefetcher
    // has ramped up on it. Rows from memory, one column: Q8_0 2.1x faster with this, Q4_1 1.15x (bench_quant).
    if (r + 8 <= n_rows)
      for (std::size_t byte = 0; byte < 4 * row_bytes; byte += 64)
        _mm_prefetch(reinterpret_cast<const char*>(row(r + 4)) + byte, _MM_HINT_T0);
    int c = 0;
    if constexpr (kWideCols > 2)
      for (; c + int(kWideCols) <= n_cols; c += int(kWideCols)) {
        for (std::size_t k = 0; k < 4; k += kWideRows)
          Tile<kWideRows, kWideCols, Block>::run(rows + k, a + c, n_blocks, out + r + std::int64_t(k) + c * ld, ld);
      }
    for (; c + 2 <= n_cols; c += 2) Tile<4, 2, Block>::run(rows, a + c, n_blocks, out + r + c * ld, ld);
    if (c < n_cols) Tile<4, 1, Block>::run(rows, a + c, n_blocks, out + r + c * ld, ld);
  }
  for (; r < n_rows; ++r) {
    const Block* rows[1] = {row(r)};
    for (int c = 0; c < n_cols; ++c) Tile<1, 1, Block>::run(rows, a + c, n_blocks, out + r + c * ld, ld);
  }
}

template <std::size_t kRows, std::size_t kCols, class Block>
struct Tile {
  static void run(const Block* const* w, const BlockQ8* const* a, int n_blocks, float* out, std::int64_t ld) {
    tile<kRows, kCols, Block>(w, a, n_blocks, out, ld);
  }
};

// Eight weight rows side by side, one per 32-bit lane: the AVX-512 row lanes below (read their comment first) at
// half the width. Without VNNI, a block's products go through 16-bit pairs, which only Q4's values (0..15) let
// add up before widening (8 x 2 x 15 x 127 < 2^15); Q8_0 then keeps its tiles.
template <class Block>
inline constexpr bool in_row_lanes = KVEVICT_QUANT_VNNI || !std::is_same_v<Block, BlockQ8_0>;

template <class Block>
struct RowLanes {
  static constexpr std::size_t kQs = std::is_same_v<Block, BlockQ4_1> ? 4 : 2;  // the values' byte offset
  static constexpr int kOffset = std::is_same_v<Block, BlockQ4_0> ? 8 : std::is_same_v<Block, BlockQ8_0> ? 128 : 0;

  __m256i q[8];
  __m256 d, m;

  // rows[i]: lane i's row; offsets: lane i's byte offset from rows[0].
  RowLanes(const std::uint8_t* const* rows, __m256i offsets, int b) {
    const std::size_t at = std::size_t(b) * sizeof(Block);
    transposed(rows, at + kQs, q);
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      transposed(rows, at + kQs + 16, q + 4);
      for (auto& v : q) v = _mm256_xor_si256(v, _mm256_set1_epi8(char(0x80)));
    } else {
      const __m256i low = _mm256_set1_epi8(0x0F);
      for (int k = 0; k < 4; ++k) {
        q[k + 4] = _mm256_and_si256(_mm256_srli_epi16(q[k], 4), low);
        q[k] = _mm256_and_si256(q[k], low);
      }
    }
    // d and m, the block's first four bytes (m: Q4_1 only), of the eight rows: each 128-bit lane's four d's, then
    // its four m's, then the lanes' d's together in the low half.
    const __m256i scales = _mm256_i32gather_epi32(reinterpret_cast<const int*>(rows[0] + at), offsets, 1);
    const __m256i halves =
        _mm256_shuffle_epi8(scales, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5,
                                                     8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    const __m256i ordered = _mm256_permute4x64_epi64(halves, _MM_SHUFFLE(3, 1, 2, 0));
    d = _mm256_cvtph_ps(_mm256_castsi256_si128(ordered));
    if constexpr (std::is_same_v<Block, BlockQ4_1>) m = _mm256_cvtph_ps(_mm256_extracti128_si256(ordered, 1));
  }

  // Sixteen bytes at `at` of every row as four vectors, v[k] lane i = 32-bit group k of row i: vector j takes
  // rows j and j + 4 in its two 128-bit lanes, then a 4x4 transpose within each lane.
  static void transposed(const std::uint8_t* const* rows, std::size_t at, __m256i* v) {
    auto load = [&](int i) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + at)); };
    __m256i z[4];
    for (int j = 0; j < 4; ++j) z[j] = _mm256_set_m128i(load(j + 4), load(j));
    const __m256i t0 = _mm256_unpacklo_epi32(z[0], z[1]), t1 = _mm256_unpackhi_epi32(z[0], z[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(z[2], z[3]), t3 = _mm256_unpackhi_epi32(z[2], z[3]);
    v[0] = _mm256_unpacklo_epi64(t0, t2);
    v[1] = _mm256_unpackhi_epi64(t0, t2);
    v[2] = _mm256_unpacklo_epi64(t1, t3);
    v[3] = _mm256_unpackhi_epi64(t1, t3);
  }

  // The block's integer sums of the eight rows against one column.
  __m256i products(const BlockQ8& x) const {
    std::int32_t group[8];
    std::memcpy(group, x.qs, sizeof group);
    const __m256i offset = _mm256_set1_epi32(-kOffset * x.sum);
#if KVEVICT_QUANT_VNNI
    __m256i even = offset, odd = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
      even = _mm256_dpbusd_epi32(even, q[k], _mm256_set1_epi32(group[k]));
      odd = _mm256_dpbusd_epi32(odd, q[k + 4], _mm256_set1_epi32(group[k + 4]));
#else
      even = _mm256_dpbusd_avx_epi32(even, q[k], _mm256_set1_epi32(group[k]));
      odd = _mm256_dpbusd_avx_epi32(odd, q[k + 4], _mm256_set1_epi32(group[k + 4]));
#endif
    }
    return _mm256_add_epi32(even, odd);
#else
    __m256i pairs = _mm256_maddubs_epi16(q[0], _mm256_set1_epi32(group[0]));
    for (int k = 1; k < 8; ++k)
      pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(q[k], _mm256_set1_epi32(group[k])));
    return _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), offset);
#endif
  }

  // acc plus this block's products of the eight rows with column x.
  __m256 accumulate(const BlockQ8& x, __m256 acc) const {
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(products(x)), _mm256_mul_ps(d, _mm256_set1_ps(x.d)), acc);
    if constexpr (std::is_same_v<Block, BlockQ4_1>) acc = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), acc);
    return acc;
  }
};

// What lanes::multiply needs of the width.
struct Lanes {
  static constexpr int kRows = 8;
  using Sums = __m256;
  using Offsets = __m256i;
  using Valid = __m256i;
  template <class Block>
  using Group = RowLanes<Block>;
  static Sums zero() { return _mm256_setzero_ps(); }
  static Offsets offsets(const std::int32_t* o) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o)); }
  static Valid first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static void store(float* out, Valid valid, Sums sums) { _mm256_maskstore_ps(out, valid, sums); }
};

}  // namespace avx2

// Rows side by side, one per lane, for either width (Isa: avx2::Lanes or avx512::Lanes).
namespace lanes {

// The most columns one pass over a group's blocks takes: their sums stay in L1 (4 KB) between blocks.
constexpr int kMaxColumns = 64;

// out(row of lane i, c) for n_cols <= kMaxColumns columns: block by block, each block's rows transposed once
// for every column (the transposition costs more than a column's products, so the more columns the better).
// kCols > 0 fixes the count at compile time, which keeps the sums of a few columns (decode) in registers.
// `next_lines` cache lines from `next` (the next rows, or none) are asked for along the way, a share per block:
// a group's rows are more streams than the hardware prefetcher follows.
template <class Isa, int kCols, class Block>
void pass(const std::uint8_t* const* rows, typename Isa::Offsets offsets, typename Isa::Valid valid,
          const BlockQ8* const* a, int n_cols, int n_blocks, float* out, std::int64_t ld, const std::uint8_t* next,
          int next_lines) {
  if constexpr (kCols > 0) n_cols = kCols;
  typename Isa::Sums acc[std::size_t(kCols > 0 ? kCols : kMaxColumns)];
  for (int c = 0; c < n_cols; ++c) acc[c] = Isa::zero();
  const int lines_per_block = (next_lines + n_blocks - 1) / n_blocks;
  for (int b = 0; b < n_blocks; ++b) {
    for (int line = b * lines_per_block; line < std::min((b + 1) * lines_per_block, next_lines); ++line)
      _mm_prefetch(reinterpret_cast<const char*>(next + 64 * line), _MM_HINT_T0);
    const typename Isa::template Group<Block> w(rows, offsets, b);
    for (int c = 0; c < n_cols; ++c) acc[c] = w.accumulate(a[c][b], acc[c]);
  }
  for (int c = 0; c < n_cols; ++c) Isa::store(out + std::ptrdiff_t(c) * ld, valid, acc[c]);
}

template <class Isa, class Block>
void multiply(const std::uint8_t* first_row, std::size_t row_bytes, std::int64_t n_rows, const BlockQ8* const* a,
              int n_cols, int n_blocks, float* out, std::int64_t ld) {
  constexpr int kRows = Isa::kRows;
  // The first group's rows, asked for at once: the engine hands its threads rows 32 at a time, so every
  // call starts on rows the hardware prefetcher has not seen.
  for (std::size_t line = 0; line < std::size_t(std::min<std::int64_t>(kRows, n_rows)) * row_bytes; line += 64)
    _mm_prefetch(reinterpret_cast<const char*>(first_row + line), _MM_HINT_T0);
  for (std::int64_t r = 0; r < n_rows; r += kRows) {
    // Past the last row, lanes repeat it: their loads stay inside the matrix and their sums are not stored.
    const int n = int(std::min<std::int64_t>(kRows, n_rows - r));
    const std::uint8_t* rows[std::size_t(kRows)];
    std::int32_t offsets[std::size_t(kRows)];
    for (int i = 0; i < kRows; ++i) {
      const int row = std::min(i, n - 1);
      rows[i] = first_row + std::size_t(r + row) * row_bytes;
      offsets[i] = row * std::int32_t(row_bytes);
    }
    const auto lane_offsets = Isa::offsets(offsets);
    const auto valid = Isa::first(n);
    // The next group's rows follow this one's in memory: the first pass over the columns asks for them.
    int next_lines = r + 2 * kRows <= n_rows ? int(std::size_t(kRows) * row_bytes / 64) : 0;
    for (int c = 0; c < n_cols; c += kMaxColumns) {
      const int cols = std::min(kMaxColumns, n_cols - c);
      auto run = [&](auto fixed) {
        pass<Isa, decltype(fixed)::value, Block>(rows, lane_offsets, valid, a + c, cols, n_blocks, out + r + c * ld, ld,
                                                 rows[0] + kRows * row_bytes, next_lines);
      };
      if (cols == 1)
        run(std::integral_constant<int, 1>{});
      else if (cols == 2)
        run(std::integral_constant<int, 2>{});
      else if (cols == 4)
        run(std::integral_constant<int, 4>{});
      else
        run(std::integral_constant<int, 0>{});
      next_lines = 0;
    }
  }
}

}  // namespace lanes

namespace avx2 {

template <class Block>
void multiply(const std::uint8_t* first_row, std::size_t row_bytes, std::int64_t n_rows, const BlockQ8* const* a,
              int n_cols, int n_blocks, float* out, std::int64_t ld) {
  if constexpr (in_row_lanes<Block>)
    lanes::multiply<Lanes, Block>(first_row, row_bytes, n_rows, a, n_cols, n_blocks, out, ld);
  else
    multiply_tiles<Block, Tile, 4, 2>(first_row, row_bytes, n_rows, a, n_cols, n_blocks, out, ld);
}

}  // namespace avx2
#endif

#if KVEVICT_QUANT_AVX512
namespace avx512 {

// Sixteen weight rows side by side, one per 32-bit lane. A block of the sixteen rows is transposed into eight
// vectors: in vector k, each row's lane holds that row's four values that meet activation values 4k..4k+3 (for
// Q4, the low nibbles of bytes 4k..4k+3 when k < 4, the high nibbles of bytes 4(k-4).. after). One VNNI
// instruction then takes four values of sixteen rows against four values of one column, broadcast, and the
// block's scales reach sixteen rows in one multiply: about a third of the instructions of a tile that keeps a
// row in a register. Each lane sums its own row's blocks in block order, so a row's product has the same bits
// whichever rows share its group, and no horizontal sums are left at the end. The values go in unsigned, as VNNI
// takes them: Q4_0's q - 8 and Q8_0's q as q + 128, the offset taken off through the activation's integer sum.
template <class Block>
struct RowLanes {
  static constexpr std::size_t kQs = std::is_same_v<Block, BlockQ4_1> ? 4 : 2;  // the values' byte offset
  static constexpr int kOffset = std::is_same_v<Block, BlockQ4_0> ? 8 : std::is_same_v<Block, BlockQ8_0> ? 128 : 0;

  __m512i q[8];
  __m512 d, m;

  // rows[i]: lane i's row; offsets: lane i's byte offset from rows[0].
  RowLanes(const std::uint8_t* const* rows, __m512i offsets, int b) {
    const std::size_t at = std::size_t(b) * sizeof(Block);
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      transposed(rows, at + kQs, q);
      transposed(rows, at + kQs + 16, q + 4);
      for (auto& v : q) v = _mm512_xor_si512(v, _mm512_set1_epi8(char(0x80)));
    } else {
      transposed(rows, at + kQs, q);
      const __m512i low = _mm512_set1_epi8(0x0F);
      for (int k = 0; k < 4; ++k) {
        q[k + 4] = _mm512_and_si512(_mm512_srli_epi16(q[k], 4), low);
        q[k] = _mm512_and_si512(q[k], low);
      }
    }
    // d (and Q4_1's m) are the block's first two (four) bytes.
    const __m512i scales = _mm512_i32gather_epi32(offsets, rows[0] + at, 1);
    d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(scales));
    if constexpr (std::is_same_v<Block, BlockQ4_1>)
      m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(scales, 16)));
  }

  // Sixteen bytes at `at` of every row, as four vectors of one 32-bit group per lane: v[k] lane i = group k of
  // row i. Vector j first takes rows j, j + 4, j + 8, j + 12 in its four 128-bit lanes; then a 4x4 transpose of
  // the groups within each 128-bit lane puts row 4L + j at lane 4L + j.
  static void transposed(const std::uint8_t* const* rows, std::size_t at, __m512i* v) {
    auto load = [&](int i) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + at)); };
    __m512i z[4];
    for (int j = 0; j < 4; ++j) {
      z[j] = _mm512_castsi128_si512(load(j));
      z[j] = _mm512_inserti32x4(z[j], load(j + 4), 1);
      z[j] = _mm512_inserti32x4(z[j], load(j + 8), 2);
      z[j] = _mm512_inserti32x4(z[j], load(j + 12), 3);
    }
    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    v[0] = _mm512_unpacklo_epi64(t0, t2);
    v[1] = _mm512_unpackhi_epi64(t0, t2);
    v[2] = _mm512_unpacklo_epi64(t1, t3);
    v[3] = _mm512_unpackhi_epi64(t1, t3);
  }

  // acc plus this block's products of the sixteen rows with column x.
  __m512 accumulate(const BlockQ8& x, __m512 acc) const {
    std::int32_t group[8];
    std::memcpy(group, x.qs, sizeof group);
    // Two chains of four, so one column's products do not wait on one another's latency.
    __m512i even = _mm512_set1_epi32(-kOffset * x.sum), odd = _mm512_setzero_si512();
    for (int k = 0; k < 4; ++k) {
      even = _mm512_dpbusd_epi32(even, q[k], _mm512_set1_epi32(group[k]));
      odd = _mm512_dpbusd_epi32(odd, q[k + 4], _mm512_set1_epi32(group[k + 4]));
    }
    const __m512 products = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
    acc = _mm512_fmadd_ps(products, _mm512_mul_ps(d, _mm512_set1_ps(x.d)), acc);
    if constexpr (std::is_same_v<Block, BlockQ4_1>) acc = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), acc);
    return acc;
  }
};

// What lanes::multiply needs of the width.
struct Lanes {
  static constexpr int kRows = 16;
  using Sums = __m512;
  using Offsets = __m512i;
  using Valid = __mmask16;
  template <class Block>
  using Group = RowLanes<Block>;
  static Sums zero() { return _mm512_setzero_ps(); }
  static Offsets offsets(const std::int32_t* o) { return _mm512_loadu_si512(o); }
  static Valid first(int n) { return __mmask16((1u << n) - 1u); }
  static void store(float* out, Valid valid, Sums sums) { _mm512_mask_storeu_ps(out, valid, sums); }
};

template <class Block>
void multiply(const std::uint8_t* first_row, std::size_t row_bytes, std::int64_t n_rows, const BlockQ8* const* a,
              int n_cols, int n_blocks, float* out, std::int64_t ld) {
  lanes::multiply<Lanes, Block>(first_row, row_bytes, n_rows, a, n_cols, n_blocks, out, ld);
}

}  // namespace avx512
#endif

/// The implementation this build uses.
inline const char* implementation() {
  if (KVEVICT_QUANT_AVX512) return "avx512+vnni";
  if (KVEVICT_QUANT_VNNI) return "avx2+vnni";
  return KVEVICT_QUANT_AVX2 ? "avx2" : "scalar";
}

/// out(r, c) = row r . column c for `n_rows` rows from `first_row` (rows of `row_bytes`), every column of `a`;
/// `out` is column-major with leading dimension `ld`.
template <class Block>
void multiply(const std::uint8_t* first_row, std::size_t row_bytes, std::int64_t n_rows, const BlockQ8* const* a,
              int n_cols, int n_blocks, float* out, std::int64_t ld) {
#if KVEVICT_QUANT_AVX512
  avx512::multiply<Block>(first_row, row_bytes, n_rows, a, n_cols, n_blocks, out, ld);
#elif KVEVICT_QUANT_AVX2
  avx2::multiply<Block>(first_row, row_bytes, n_rows, a, n_cols, n_blocks, out, ld);
#else
  scalar::multiply<Block>(first_row, row_bytes, n_rows, a, n_cols, n_blocks, out, ld);
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
    const std::uint8_t* rows = data_ + std::size_t(first) * row_bytes_;
    const auto args =
        std::make_tuple(rows, row_bytes_, last - first, x.columns(), x.n_cols(), x.n_blocks(), out + first, ld);
    switch (type_) {
      case gguf::Type::Q4_0:
        std::apply(multiply<BlockQ4_0>, args);
        break;
      case gguf::Type::Q4_1:
        std::apply(multiply<BlockQ4_1>, args);
        break;
      default:
        std::apply(multiply<BlockQ8_0>, args);
        break;
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
