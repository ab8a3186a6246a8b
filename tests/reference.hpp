// SPDX-License-Identifier: Apache-2.0
// Naive double-precision references the library is checked against: written for clarity, not speed,
// and sharing no code with the library.
#ifndef KVEVICT_TESTS_REFERENCE_HPP
#define KVEVICT_TESTS_REFERENCE_HPP

#include <cmath>
#include <cstdint>
#include <vector>

#include <kvevict/rope.hpp>
#include <kvevict/softmax.hpp>

namespace ref {

using Vec = std::vector<double>;

/// Weights over `logits`; `sink` adds exp(sink) to the denominator unless `plain`.
inline Vec weights(const Vec& logits, kvevict::Normalization kind, double sink = 0.0) {
  Vec w(logits.size());
  if (kind == kvevict::Normalization::off_by_one) sink = 0.0;
  long double denom = kind == kvevict::Normalization::softmax ? 0.0L : std::exp(static_cast<long double>(sink));
  long double m = 0.0L;  // shift for range; cancels exactly
  for (double x : logits) m = std::max(m, static_cast<long double>(x));
  denom *= std::exp(-m);
  for (double x : logits) denom += std::exp(static_cast<long double>(x) - m);
  for (std::size_t i = 0; i < logits.size(); ++i)
    w[i] = denom == 0.0L ? 0.0 : static_cast<double>(std::exp(static_cast<long double>(logits[i]) - m) / denom);
  return w;
}

/// Attention of one query over rows of keys/values.
inline Vec attention(const Vec& q, const std::vector<Vec>& keys, const std::vector<Vec>& values, double scale,
                     kvevict::Normalization kind, double sink = 0.0) {
  Vec logits;
  for (const Vec& k : keys) {
    double dot = 0.0;
    for (std::size_t i = 0; i < q.size(); ++i) dot += q[i] * k[i];
    logits.push_back(scale * dot);
  }
  const Vec w = weights(logits, kind, sink);
  Vec out(q.size(), 0.0);
  for (std::size_t j = 0; j < keys.size(); ++j)
    for (std::size_t i = 0; i < q.size(); ++i) out[i] += w[j] * values[j][i];
  return out;
}

/// RoPE at `position`, straight from the definition: pair (a, b) turns by position * theta^(-2i/d).
inline Vec rope(Vec x, double position, double theta, kvevict::RopeLayout layout) {
  const std::size_t d = x.size(), half = d / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t a = layout == kvevict::RopeLayout::adjacent ? 2 * i : i;
    const std::size_t b = layout == kvevict::RopeLayout::adjacent ? 2 * i + 1 : i + half;
    const double angle = position * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    const double xa = x[a], xb = x[b];
    x[a] = xa * std::cos(angle) - xb * std::sin(angle);
    x[b] = xa * std::sin(angle) + xb * std::cos(angle);
  }
  return x;
}

/// The norm of each pair RoPE turns together; a rotation keeps them, so no element of it exceeds the largest.
inline Vec rope_pair_norms(const Vec& x, kvevict::RopeLayout layout) {
  const std::size_t half = x.size() / 2;
  Vec norms(half);
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t a = layout == kvevict::RopeLayout::adjacent ? 2 * i : i;
    const std::size_t b = layout == kvevict::RopeLayout::adjacent ? 2 * i + 1 : i + half;
    norms[i] = std::hypot(x[a], x[b]);
  }
  return norms;
}

}  // namespace ref

#endif  // KVEVICT_TESTS_REFERENCE_HPP
