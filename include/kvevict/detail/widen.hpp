// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_DETAIL_WIDEN_HPP
#define KVEVICT_DETAIL_WIDEN_HPP

/// @file
/// 16-bit K/V rows to float, as fast as the kernel needs: the conversion runs once per stored value per step.
/// Eigen's element-wise cast converts half one value at a time; these loops vectorise: bfloat16 is the top
/// half of a float (a shift), and half goes through F16C where the compiler targets it (-mf16c, implied by
/// -march=native on any AVX2 machine; sixteen at a time with AVX-512), else through a branch-free bit
/// conversion the compiler vectorises.

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kvevict::detail {

inline std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float float_of(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

/// IEEE binary16 to binary32, exact for every input (normals, subnormals, zeros, infinities, NaNs), with no
/// branches: exponent and mantissa move into place, and two selects fix the exponent of infinities/NaNs and
/// renormalise subnormals through one float subtraction.
inline float half_bits_to_float(std::uint16_t h) {
  constexpr std::uint32_t kShiftedExp = 0x7c00u << 13;  // exponent mask after the shift
  const float kSubnormalMagic = float_of(113u << 23);   // 2^-14
  std::uint32_t o = (std::uint32_t(h) & 0x7fffu) << 13;
  const std::uint32_t exp = o & kShiftedExp;
  o += (127u - 15u) << 23;
  o += exp == kShiftedExp ? (128u - 16u) << 23 : 0u;  // infinity or NaN: the largest exponent
  const float subnormal = float_of(o + (1u << 23)) - kSubnormalMagic;
  const std::uint32_t magnitude = exp == 0 ? bits_of(subnormal) : o;
  return float_of(magnitude | ((std::uint32_t(h) & 0x8000u) << 16));
}

/// out[i] = float(in[i]) for i < n.
inline void widen(const Eigen::bfloat16* in, float* out, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    std::uint16_t b;
    std::memcpy(&b, in + i, sizeof b);
    out[i] = float_of(std::uint32_t(b) << 16);
  }
}

inline void widen(const Eigen::half* in, float* out, std::ptrdiff_t n) {
  std::ptrdiff_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
#endif
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
  for (; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, in + i, sizeof h);
    out[i] = half_bits_to_float(h);
  }
}

}  // namespace kvevict::detail

#endif  // KVEVICT_DETAIL_WIDEN_HPP
