// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_DETAIL_BLOCK_PRODUCTS_HPP
#define KVEVICT_DETAIL_BLOCK_PRODUCTS_HPP

/// @file
/// A decode step's two products over one block of cached rows, for the query rows of a GQA group: the logits
/// scale x (K q) and the weighted sums out += p^T V. A decode step has `group` query rows per kv head, too
/// few for a matrix product's register tile. With AVX-512, query rows go in pairs, so that every row of K or V
/// loaded serves two rows' FMAs (one load per FMA would leave the FMA units half idle): eight keys' dot
/// products for each of the two rows run side by side in sixteen accumulators, and one transpose-and-add tree
/// (30 shuffles and 15 adds, on another port than the FMAs) turns them into sixteen logits, each key's sum
/// formed alike whichever rows and keys come with it; the weighted sums keep both output rows in registers
/// across the block. An odd last row goes alone.
///
/// 16-bit rows (half or bfloat16) are converted as they are loaded (a conversion instruction for half, a shift
/// for bfloat16), so that a 16-bit cache is read at two bytes a value and never widened into a float copy.
/// With AVX-512 they go through the scheme above with query rows in fours where the group has four (a
/// converted row then serves four rows' FMAs: four keys per row in the logits' accumulators, the weighted sums
/// in strips of columns), the same bits as float rows holding the same values.
///
/// With AVX2 and FMA (and with AVX-512 past the head_dims it takes: weighted sums past 128, logits past 256),
/// float and 16-bit rows alike go through the same scheme at eight lanes: query rows in fours, eight
/// accumulators (eight keys for one query row, four for each of two, two for each of four), the logits stored
/// straight from the register, and the weighted sums in strips of columns whose sums fit in eight registers;
/// again the same bits for float and 16-bit rows holding the same values. Elsewhere (double, head_dim not a
/// multiple of 16 or 8, no AVX2), Eigen's matrix-vector products: the portable path, built and tested where
/// -march reaches neither.

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cstddef>
#include <type_traits>
#include <utility>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

// GCC unrolls the loops over a register array before it looks at the array, so the array stays in registers.
#if defined(__GNUC__) && !defined(__clang__)
#define KVEVICT_UNROLLED _Pragma("GCC unroll 16")
#else
#define KVEVICT_UNROLLED
#endif

namespace kvevict::detail {

/// f(q, o) over the `rows` rows in pairs, then an odd last row alone: q and o arrays of 2 or 1 pointers.
template <class Query, class Out, class F>
void in_pairs(int rows, Query& query, Out& out, F&& f) {
  int r = 0;
  for (; r + 2 <= rows; r += 2) {
    const float* const q[2] = {query(r), query(r + 1)};
    float* const o[2] = {out(r), out(r + 1)};
    f(q, o);
  }
  if (r < rows) {
    const float* const q[1] = {query(r)};
    float* const o[1] = {out(r)};
    f(q, o);
  }
}

/// f(q, o) with the query rows r, r + 1, ... of one tile: q and o arrays of sizeof...(I) pointers.
template <std::size_t... I, class Query, class Out, class F>
void tile_at(int r, Query& query, Out& out, F& f, std::index_sequence<I...>) {
  const float* const q[] = {query(r + int(I))...};
  float* const o[] = {out(r + int(I))...};
  f(q, o);
}

/// f(q, o) over the `rows` rows in tiles of four, then a pair and a last row alone (a tile of three measured
/// slower than a pair and a row).
template <class Query, class Out, class F>
void in_fours(int rows, Query& query, Out& out, F&& f) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) tile_at(r, query, out, f, std::make_index_sequence<4>{});
  if (r + 2 <= rows) tile_at(r, query, out, f, std::make_index_sequence<2>{}), r += 2;
  if (r < rows) tile_at(r, query, out, f, std::make_index_sequence<1>{});
}

/// The number of pointers in one of in_pairs' arrays, as a constant.
template <class Array>
inline constexpr std::size_t count_of = std::extent_v<std::remove_reference_t<Array>>;

/// Keeps a row of floats in a register once loaded. GCC and Clang otherwise fold the load into every FMA that
/// uses the row, so a row meant to serve several query rows' FMAs is loaded once per FMA, and the loads, not the
/// FMAs, set the pace. An empty asm statement that may change the row makes them load it once. (A 16-bit row
/// is converted into a register anyway; pinning it measured no faster.)
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
template <class Stored, class Vector>
inline void in_register(Vector& row) {
#if defined(__GNUC__)
  if constexpr (std::is_same_v<Stored, float>) __asm__("" : "+v"(row));
#else
  static_cast<void>(row);
#endif
}
#endif

#if defined(__AVX512F__)
// The shuffles through their masked forms with every lane kept: GCC 12's unmasked forms pass an undefined
// vector that -Wuninitialized reports once inlined.
inline __m512 unpack_low(__m512 a, __m512 b) { return _mm512_mask_unpacklo_ps(a, 0xFFFF, a, b); }
inline __m512 unpack_high(__m512 a, __m512 b) { return _mm512_mask_unpackhi_ps(a, 0xFFFF, a, b); }
template <int kImm>
__m512 shuffle_in_lanes(__m512 a, __m512 b) {
  return _mm512_mask_shuffle_ps(a, 0xFFFF, a, b, kImm);
}
template <int kImm>
__m512 shuffle_lanes(__m512 a, __m512 b) {
  return _mm512_mask_shuffle_f32x4(a, 0xFFFF, a, b, kImm);
}

/// Sixteen stored K or V values as floats, converted in registers (a bfloat16 is the top half of a float), through
/// the zero-masked forms with every lane kept, for the reason above.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const Eigen::half* p) {
  return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const Eigen::bfloat16* p) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
}

/// Lane k of the result is the sum of the 16 lanes of v[k].
inline __m512 sum_each_of_16(const __m512 (&v)[16]) {
  // Pairs within 128-bit lanes: t[i] holds v[2i] in even lanes, v[2i + 1] in odd ones, half summed.
  __m512 t[8];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(unpack_low(v[2 * i], v[2 * i + 1]), unpack_high(v[2 * i], v[2 * i + 1]));
  // Each 128-bit lane of u[i] holds that lane's sums of v[4i] ... v[4i + 3].
  __m512 u[4];
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(shuffle_in_lanes<_MM_SHUFFLE(1, 0, 1, 0)>(t[2 * i], t[2 * i + 1]),
                         shuffle_in_lanes<_MM_SHUFFLE(3, 2, 3, 2)>(t[2 * i], t[2 * i + 1]));
  // Sum the four 128-bit lanes, putting u[i]'s four sums in lanes 4i ... 4i + 3.
  const __m512 w01 = _mm512_add_ps(shuffle_lanes<_MM_SHUFFLE(2, 0, 2, 0)>(u[0], u[1]),
                                   shuffle_lanes<_MM_SHUFFLE(3, 1, 3, 1)>(u[0], u[1]));
  const __m512 w23 = _mm512_add_ps(shuffle_lanes<_MM_SHUFFLE(2, 0, 2, 0)>(u[2], u[3]),
                                   shuffle_lanes<_MM_SHUFFLE(3, 1, 3, 1)>(u[2], u[3]));
  return _mm512_add_ps(shuffle_lanes<_MM_SHUFFLE(2, 0, 2, 0)>(w01, w23),
                       shuffle_lanes<_MM_SHUFFLE(3, 1, 3, 1)>(w01, w23));
}

/// f(std::integral_constant<std::size_t, d / 16>{}) for d = 16, 32, ..., 16 x kMost; false for any other d.
/// A head_dim known at compile time puts every row offset in the instructions and unrolls every loop.
template <std::size_t kMost, std::size_t kChunks = 1, class F>
bool with_chunks(std::ptrdiff_t d, F&& f) {
  if constexpr (kChunks > kMost) {
    return false;
  } else {
    if (d != 16 * std::ptrdiff_t(kChunks)) return with_chunks<kMost, kChunks + 1>(d, f);
    f(std::integral_constant<std::size_t, kChunks>{});
    return true;
  }
}

/// For kRows (1, 2 or 4) query rows q[r] and the `count` (<= 16 / kRows) rows k_i from `k`, kChunks x 16 floats
/// each: lane r x 16 / kRows + i holds k_i . q[r]; the lanes of missing keys are 0. Several rows at once so
/// that each row of K loaded serves them all. Every lane's sum is formed alike whatever kRows and `count` are, so a
/// key's logit does not depend on the rows and keys beside it.
template <std::size_t kChunks, std::size_t kRows, bool kPartial, class Stored>
inline __m512 dots(const Stored* k, const float* const (&q)[kRows], int count) {
  constexpr std::ptrdiff_t d = 16 * std::ptrdiff_t(kChunks);
  constexpr int kKeys = 16 / int(kRows);
  __m512 acc[16];
  KVEVICT_UNROLLED for (auto& a : acc) a = _mm512_setzero_ps();
  for (std::size_t c = 0; c < kChunks; ++c) {
    __m512 qc[kRows];
    KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) qc[r] = _mm512_loadu_ps(q[r] + 16 * c);
    KVEVICT_UNROLLED for (int i = 0; i < kKeys; ++i) {
      if (kPartial && i >= count) continue;
      __m512 kc = load16(k + i * d + 16 * std::ptrdiff_t(c));
      in_register<Stored>(kc);
      KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) {
        acc[int(r) * kKeys + i] = _mm512_fmadd_ps(kc, qc[r], acc[int(r) * kKeys + i]);
      }
    }
  }
  return sum_each_of_16(acc);
}

/// Row r's lanes of dots' result (lanes r x 16 / kRows on, which start at 128-bit lane r x 4 / kRows) moved to
/// the lowest lanes.
template <std::size_t kRows, int kRow>
inline __m512 row_lanes(__m512 all) {
  constexpr int kFirst = kRow * 4 / int(kRows);
  return shuffle_lanes<_MM_SHUFFLE(3, 3, kFirst < 3 ? kFirst + 1 : 3, kFirst)>(all, all);
}

/// out[r][j] = scale x (k_j . q[r]) for kRows (1, 2 or 4) query rows, 16 / kRows keys at a time.
template <std::size_t kChunks, std::size_t kRows, class Stored>
void logits_avx512(const Stored* keys, std::ptrdiff_t nb, const float* const (&q)[kRows], __m512 scales,
                   float* const (&out)[kRows]) {
  constexpr std::ptrdiff_t d = 16 * std::ptrdiff_t(kChunks), kKeys = 16 / std::ptrdiff_t(kRows);
  for (std::ptrdiff_t j = 0; j < nb; j += kKeys) {
    const int count = int(std::min(kKeys, nb - j));
    const __m512 all = _mm512_mul_ps(scales, count == kKeys ? dots<kChunks, kRows, false>(keys + j * d, q, count)
                                                            : dots<kChunks, kRows, true>(keys + j * d, q, count));
    const auto mask = __mmask16((1u << count) - 1u);
    _mm512_mask_storeu_ps(out[0] + j, mask, all);
    if constexpr (kRows >= 2) _mm512_mask_storeu_ps(out[1] + j, mask, row_lanes<kRows, 1>(all));
    if constexpr (kRows == 4) {
      _mm512_mask_storeu_ps(out[2] + j, mask, row_lanes<kRows, 2>(all));
      _mm512_mask_storeu_ps(out[3] + j, mask, row_lanes<kRows, 3>(all));
    }
  }
}

/// out[r][16 c ...] += sum_j p[r][j] v_j[16 c ...] for the chunks c in [kFirst, kFirst + kCount) of rows of
/// kChunks chunks, for kRows rows at once, so that each chunk of V loaded serves every one of them; the sums
/// stay in registers. While registers allow (head_dim <= 64), even and odd keys go into two sums per row, so
/// that consecutive keys' FMAs do not wait on each other. A row's sums are formed alike whatever kRows and the
/// strip are.
template <std::size_t kChunks, std::size_t kFirst, std::size_t kCount, std::size_t kRows, class Stored>
void weighted_strip_avx512(const Stored* values, std::ptrdiff_t nb, const float* const (&p)[kRows],
                           float* const (&out)[kRows]) {
  constexpr std::ptrdiff_t d = 16 * std::ptrdiff_t(kChunks);
  constexpr std::size_t kSums = kChunks <= 4 ? 2 : 1;
  __m512 sum[kRows][kSums][kCount];
  KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) {
    KVEVICT_UNROLLED for (std::size_t s = 0; s < kSums; ++s) {
      KVEVICT_UNROLLED for (std::size_t c = 0; c < kCount; ++c) sum[r][s][c] = _mm512_setzero_ps();
    }
  }
  // Key j + s into sum s of every row.
  auto add = [&](std::ptrdiff_t j, std::size_t s) {
    __m512 w[kRows];
    KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) w[r] = _mm512_set1_ps(p[r][j]);
    KVEVICT_UNROLLED for (std::size_t c = 0; c < kCount; ++c) {
      __m512 vc = load16(values + j * d + 16 * std::ptrdiff_t(kFirst + c));
      in_register<Stored>(vc);
      KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) sum[r][s][c] = _mm512_fmadd_ps(w[r], vc, sum[r][s][c]);
    }
  };
  std::ptrdiff_t j = 0;
  for (; j + std::ptrdiff_t(kSums) <= nb; j += std::ptrdiff_t(kSums)) {
    KVEVICT_UNROLLED for (std::size_t s = 0; s < kSums; ++s) add(j + std::ptrdiff_t(s), s);
  }
  if (j < nb) add(j, 0);
  KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) {
    KVEVICT_UNROLLED for (std::size_t c = 0; c < kCount; ++c) {
      __m512 total = sum[r][0][c];
      if constexpr (kSums == 2) total = _mm512_add_ps(total, sum[r][1][c]);
      float* o = out[r] + 16 * (kFirst + c);
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), total));
    }
  }
}

/// out[r] += sum_j p[r][j] v_j for kRows (1, 2 or 4) rows, in strips of chunks whose sums fit in sixteen
/// registers (one strip for one or two rows up to head_dim 128).
template <std::size_t kChunks, std::size_t kRows, class Stored, std::size_t kFirst = 0>
void weighted_sums_avx512(const Stored* values, std::ptrdiff_t nb, const float* const (&p)[kRows],
                          float* const (&out)[kRows]) {
  constexpr std::size_t kSums = kChunks <= 4 ? 2 : 1, kStrip = 16 / (kRows * kSums);
  if constexpr (kFirst < kChunks) {
    constexpr std::size_t kCount = std::min(kStrip, kChunks - kFirst);
    weighted_strip_avx512<kChunks, kFirst, kCount, kRows>(values, nb, p, out);
    weighted_sums_avx512<kChunks, kRows, Stored, kFirst + kCount>(values, nb, p, out);
  }
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
/// Eight stored K or V values as floats, 16-bit ones converted in registers.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const Eigen::bfloat16* p) {  // a bfloat16 is the top half of a float
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
#if defined(__F16C__)
inline __m256 load8(const Eigen::half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif

/// Lane k of the result is the sum of the 8 lanes of v[k], by the same tree for every k:
/// ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)).
inline __m256 sum_each_of_8(const __m256 (&v)[8]) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  // Lanes 0-3 of u0 hold the sums of the low halves of v[0] ... v[3], lanes 4-7 those of the high halves.
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/// For kRows (1, 2 or 4) query rows q[r] and the `count` (<= 8 / kRows) rows k_i from `k`, d floats each: lane
/// r x 8 / kRows + i holds k_i . q[r]; the lanes of missing keys are 0.
template <std::size_t kRows, bool kPartial, class Stored>
inline __m256 dots_avx2(const Stored* k, std::ptrdiff_t d, const float* const (&q)[kRows], int count) {
  constexpr int kKeys = 8 / int(kRows);
  __m256 acc[8];
  KVEVICT_UNROLLED for (auto& a : acc) a = _mm256_setzero_ps();
  for (std::ptrdiff_t c = 0; c < d; c += 8) {
    __m256 qc[kRows];
    KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) qc[r] = _mm256_loadu_ps(q[r] + c);
    KVEVICT_UNROLLED for (int i = 0; i < kKeys; ++i) {
      if (kPartial && i >= count) continue;
      __m256 kc = load8(k + i * d + c);
      in_register<Stored>(kc);
      KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) {
        acc[int(r) * kKeys + i] = _mm256_fmadd_ps(kc, qc[r], acc[int(r) * kKeys + i]);
      }
    }
  }
  return sum_each_of_8(acc);
}

/// out[r][j + i] = lane r x 8 / kRows + i of `all` for i < 8 / kRows (kRows 1, 2 or 4): dots_avx2's layout.
template <std::size_t kRows>
inline void store_lanes(__m256 all, float* const (&out)[kRows], std::ptrdiff_t j) {
  if constexpr (kRows == 1) {
    _mm256_storeu_ps(out[0] + j, all);
  } else if constexpr (kRows == 2) {
    _mm_storeu_ps(out[0] + j, _mm256_castps256_ps128(all));
    _mm_storeu_ps(out[1] + j, _mm256_extractf128_ps(all, 1));
  } else {
    static_assert(kRows == 4);
    const __m128 low = _mm256_castps256_ps128(all), high = _mm256_extractf128_ps(all, 1);
    _mm_storel_pi(reinterpret_cast<__m64*>(out[0] + j), low);
    _mm_storeh_pi(reinterpret_cast<__m64*>(out[1] + j), low);
    _mm_storel_pi(reinterpret_cast<__m64*>(out[2] + j), high);
    _mm_storeh_pi(reinterpret_cast<__m64*>(out[3] + j), high);
  }
}

/// out[r][j] = scale x (k_j . q[r]) for kRows (1, 2 or 4) query rows, 8 / kRows keys at a time.
template <std::size_t kRows, class Stored>
void logits_avx2(const Stored* keys, std::ptrdiff_t nb, std::ptrdiff_t d, const float* const (&q)[kRows], __m256 scales,
                 float* const (&out)[kRows]) {
  constexpr std::ptrdiff_t kKeys = 8 / std::ptrdiff_t(kRows);
  for (std::ptrdiff_t j = 0; j < nb; j += kKeys) {
    const int count = int(std::min(kKeys, nb - j));
    const __m256 all = _mm256_mul_ps(scales, count == kKeys ? dots_avx2<kRows, false>(keys + j * d, d, q, count)
                                                            : dots_avx2<kRows, true>(keys + j * d, d, q, count));
    if (count == kKeys) {  // straight from the register: through memory, the copy took a fifth of the time
      store_lanes(all, out, j);
      continue;
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, all);
    KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) std::copy_n(lanes + r * kKeys, count, out[r] + j);
  }
}

/// out[r][c0 + i] += sum_j p[r][j] v_j[c0 + i] for i < 8 x kChunks: a strip of columns whose sums stay in
/// registers across the block. An element's sum is formed alike whatever the strip and kRows are.
template <std::size_t kChunks, std::size_t kRows, class Stored>
void weighted_strip_avx2(const Stored* values, std::ptrdiff_t nb, std::ptrdiff_t d, std::ptrdiff_t c0,
                         const float* const (&p)[kRows], float* const (&out)[kRows]) {
  __m256 sum[kRows][kChunks];
  KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) {
    KVEVICT_UNROLLED for (std::size_t c = 0; c < kChunks; ++c) sum[r][c] = _mm256_setzero_ps();
  }
  for (std::ptrdiff_t j = 0; j < nb; ++j) {
    __m256 w[kRows];
    KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) w[r] = _mm256_broadcast_ss(p[r] + j);
    const Stored* v = values + j * d + c0;
    KVEVICT_UNROLLED for (std::size_t c = 0; c < kChunks; ++c) {
      __m256 vc = load8(v + 8 * c);
      in_register<Stored>(vc);
      KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) sum[r][c] = _mm256_fmadd_ps(w[r], vc, sum[r][c]);
    }
  }
  KVEVICT_UNROLLED for (std::size_t r = 0; r < kRows; ++r) {
    KVEVICT_UNROLLED for (std::size_t c = 0; c < kChunks; ++c) {
      float* o = out[r] + c0 + 8 * std::ptrdiff_t(c);
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), sum[r][c]));
    }
  }
}

/// out[r] += sum_j p[r][j] v_j for kRows (1, 2 or 4) rows at once: strips of 8 / kRows chunks of eight columns
/// (eight independent sums, enough to cover the FMA latency on two ports), then any columns left one chunk at a
/// time.
template <std::size_t kRows, class Stored>
void weighted_sums_avx2(const Stored* values, std::ptrdiff_t nb, std::ptrdiff_t d, const float* const (&p)[kRows],
                        float* const (&out)[kRows]) {
  constexpr std::ptrdiff_t kStrip = 8 * (8 / std::ptrdiff_t(kRows));
  std::ptrdiff_t c0 = 0;
  for (; c0 + kStrip <= d; c0 += kStrip) weighted_strip_avx2<8 / kRows, kRows>(values, nb, d, c0, p, out);
  for (; c0 < d; c0 += 8) weighted_strip_avx2<1, kRows>(values, nb, d, c0, p, out);
}

#define KVEVICT_AVX2_PRODUCTS 1
#endif

/// Whether the AVX2 products take rows stored as `Stored` eight values at a time: float, bfloat16 (converted by
/// a shift), and half only with F16C.
template <class Stored>
inline constexpr bool eight_lane_rows =
#if defined(KVEVICT_AVX2_PRODUCTS)
    std::is_same_v<Stored, float> || std::is_same_v<Stored, Eigen::bfloat16>
#if defined(__F16C__)
    || std::is_same_v<Stored, Eigen::half>
#endif
#else
    false
#endif
    ;

/// Whether block_logits and block_weighted_sums take rows stored as `Stored` with `d` columns as they are,
/// converting 16-bit rows in registers (AVX-512: d a multiple of 16 up to 128; else eight_lane_rows and d a
/// multiple of 8); where not, the caller widens 16-bit rows to float first.
template <class Stored>
constexpr bool reads_stored_rows(std::ptrdiff_t d) {
  if constexpr (std::is_same_v<Stored, float> || std::is_same_v<Stored, double>) {
    return true;
  } else {
    bool sixteen_lanes = false;
#if defined(__AVX512F__)
    sixteen_lanes = d % 16 == 0 && d <= 128;
#endif
    return sixteen_lanes || (eight_lane_rows<Stored> && d % 8 == 0);
  }
}

/// Whether reads_stored_rows<Stored>(d) holds for any d: where not, the products are never given `Stored` rows.
template <class Stored>
inline constexpr bool may_read_stored_rows = reads_stored_rows<Stored>(16);

/// out(r)[j] = scale x (k_j . query(r)) for the `nb` rows k_j of `keys` (row-major, `d` columns) and the
/// `rows` query rows r. A key's logit is formed alike whichever rows and keys come with it. Keys stored in 16
/// bits only where reads_stored_rows<Stored>(d).
template <class Stored, class Scalar, class Query, class Out>
void block_logits(const Stored* keys, std::ptrdiff_t nb, std::ptrdiff_t d, int rows, Query&& query, Scalar scale,
                  Out&& out) {
  assert(reads_stored_rows<Stored>(d) && "16-bit rows the products do not read: widen them first");
#if defined(__AVX512F__)
  if constexpr (!std::is_same_v<Stored, double>) {  // float, or 16-bit rows converted as they are loaded
    const bool done = with_chunks<16>(d, [&](auto chunks) {
      auto tiles = [&](const auto& q, const auto& o) {
        logits_avx512<chunks(), count_of<decltype(q)>>(keys, nb, q, _mm512_set1_ps(scale), o);
      };
      if constexpr (std::is_same_v<Stored, float>)
        in_pairs(rows, query, out, tiles);
      else  // a converted row then serves four rows' FMAs
        in_fours(rows, query, out, tiles);
    });
    if (done) return;
  }
#endif
#if defined(KVEVICT_AVX2_PRODUCTS)
  if constexpr (eight_lane_rows<Stored>) {
    if (d % 8 == 0) {
      in_fours(rows, query, out, [&](const auto& q, const auto& o) {
        logits_avx2<count_of<decltype(q)>>(keys, nb, d, q, _mm256_set1_ps(scale), o);
      });
      return;
    }
  }
#endif
  if constexpr (std::is_same_v<Stored, Scalar>) {
    using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Column = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    for (int r = 0; r < rows; ++r)
      Eigen::Map<Column>(out(r), nb).noalias() =
          scale * (Eigen::Map<const Rows>(keys, nb, d) * Eigen::Map<const Column>(query(r), d));
  }
}

/// out_r += sum_j p_r[j] v_j over the `nb` rows v_j of `values` (row-major, `d` columns), for the `rows` rows r
/// whose weights are at weights(r) and whose output is at out(r). Values stored in 16 bits only where
/// reads_stored_rows<Stored>(d).
template <class Stored, class Weights, class Out>
void block_weighted_sums(const Stored* values, std::ptrdiff_t nb, std::ptrdiff_t d, int rows, Weights&& weights,
                         Out&& out) {
  assert(reads_stored_rows<Stored>(d) && "16-bit rows the products do not read: widen them first");
#if defined(__AVX512F__)
  if constexpr (!std::is_same_v<Stored, double>) {
    const bool done = with_chunks<8>(d, [&](auto chunks) {
      auto strips = [&](const auto& p, const auto& o) {
        weighted_sums_avx512<chunks(), count_of<decltype(p)>>(values, nb, p, o);
      };
      if constexpr (std::is_same_v<Stored, float>)
        in_pairs(rows, weights, out, strips);
      else  // a converted row then serves four rows' FMAs
        in_fours(rows, weights, out, strips);
    });
    if (done) return;
  }
#endif
  using Scalar = std::remove_pointer_t<std::invoke_result_t<Out&, int>>;
#if defined(KVEVICT_AVX2_PRODUCTS)
  if constexpr (eight_lane_rows<Stored>) {
    if (d % 8 == 0) {
      in_fours(rows, weights, out,
               [&](const auto& p, const auto& o) { weighted_sums_avx2<count_of<decltype(p)>>(values, nb, d, p, o); });
      return;
    }
  }
#endif
  if constexpr (std::is_same_v<Stored, Scalar>) {
    using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Row = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
    for (int r = 0; r < rows; ++r)
      Eigen::Map<Row>(out(r), d).noalias() +=
          Eigen::Map<const Row>(weights(r), nb) * Eigen::Map<const Rows>(values, nb, d);
  }
}

}  // namespace kvevict::detail

#undef KVEVICT_UNROLLED

#endif  // KVEVICT_DETAIL_BLOCK_PRODUCTS_HPP
