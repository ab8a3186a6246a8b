// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_ROPE_HPP
#define KVEVICT_ROPE_HPP

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"

namespace kvevict {

/// Which dimensions RoPE rotates together.
enum class RopeLayout {
  adjacent,    ///< (x0, x1), (x2, x3), ...   GGUF / ggml mode 0, Llama in GGUF files
  half_split,  ///< (x0, x_{d/2}), (x1, x_{d/2+1}), ...   GPT-NeoX and Hugging Face Llama
};

/// Rotary position embedding (Su et al., arXiv 2104.09864) over one head of width `head_dim`.
///
/// Pair i turns by angle p * theta^(-2i/d). Because R(a + b) = R(a) R(b), a row rotated at position a is
/// moved to position a + delta by `rotate(row, delta)`; that is how the cache re-positions kept keys
/// without their unrotated copy. Angles are computed in double: streaming runs reach millions of
/// positions, where a float angle would be off by a large fraction of a radian.
class Rope {
 public:
  Rope() = default;

  /// @pre head_dim even and positive, theta > 0.
  Rope(int head_dim, double theta = 10000.0, RopeLayout layout = RopeLayout::adjacent)
      : head_dim_(head_dim), layout_(layout) {
    KVEVICT_REQUIRE(head_dim > 0 && head_dim % 2 == 0, "head_dim", "even and > 0 with RoPE", head_dim);
    KVEVICT_REQUIRE(theta > 0.0, "rope theta", "> 0", theta);
    const auto half = static_cast<std::size_t>(head_dim / 2);
    inv_freq_.resize(half);
    cos_one_.resize(half);
    sin_one_.resize(half);
    for (std::size_t i = 0; i < half; ++i) {
      inv_freq_[i] = std::pow(theta, -2.0 * double(i) / head_dim);
      cos_one_[i] = std::cos(inv_freq_[i]);
      sin_one_[i] = std::sin(inv_freq_[i]);
    }
  }

  int head_dim() const { return head_dim_; }
  RopeLayout layout() const { return layout_; }
  bool enabled() const { return head_dim_ > 0; }

  /// Rotates `row` (head_dim values) in place by `delta` positions; apply at position p is rotate(row, p).
  template <class Scalar>
  void rotate(Scalar* row, std::int64_t delta) const {
    if (delta == 0) return;
    const int half = head_dim_ / 2;
    const int stride = layout_ == RopeLayout::adjacent ? 2 : 1;
    const int partner = layout_ == RopeLayout::adjacent ? 1 : half;
    for (int i = 0; i < half; ++i) {
      const auto f = static_cast<std::size_t>(i);
      // A step of +1 (in-cache positions re-rotating sinks every token) uses the precomputed rotation.
      const double angle = static_cast<double>(delta) * inv_freq_[f];
      const double c = delta == 1 ? cos_one_[f] : std::cos(angle), s = delta == 1 ? sin_one_[f] : std::sin(angle);
      Scalar& a = row[std::ptrdiff_t(i) * stride];
      Scalar& b = row[std::ptrdiff_t(i) * stride + partner];
      const double x = static_cast<double>(a), y = static_cast<double>(b);
      a = static_cast<Scalar>(x * c - y * s);
      b = static_cast<Scalar>(x * s + y * c);
    }
  }

 private:
  int head_dim_ = 0;
  RopeLayout layout_ = RopeLayout::adjacent;
  std::vector<double> inv_freq_, cos_one_, sin_one_;
};

}  // namespace kvevict

#endif  // KVEVICT_ROPE_HPP
