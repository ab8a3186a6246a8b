// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_ROPE_HPP
#define KVEVICT_ROPE_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
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
/// (KeyShifter below). Angles are computed in double: streaming runs reach millions of positions, where a
/// float angle would be off by a large fraction of a radian.
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
    for (int i = 0; i < head_dim_ / 2; ++i) {
      const auto [c, s] = angle(i, delta);
      turn_pair(row, i, c, s);
    }
  }

  /// The cosines and sines of a turn by `delta` positions, pair by pair (head_dim values: cos, sin, cos, ...).
  /// Computed once, they turn every head at one position (rotate_by): the same bits as rotate(row, delta) for
  /// delta != 0, without a sine and cosine per pair per head.
  void angles(std::int64_t delta, double* cos_sin) const {
    for (int i = 0; i < head_dim_ / 2; ++i) {
      const auto [c, s] = angle(i, delta);
      cos_sin[2 * i] = c;
      cos_sin[2 * i + 1] = s;
    }
  }

  /// Rotates `row` in place by the turn whose angles() are `cos_sin`.
  template <class Scalar>
  void rotate_by(Scalar* row, const double* cos_sin) const {
    for (int i = 0; i < head_dim_ / 2; ++i) turn_pair(row, i, cos_sin[2 * i], cos_sin[2 * i + 1]);
  }

 private:
  std::pair<double, double> angle(int i, std::int64_t delta) const {
    const auto f = static_cast<std::size_t>(i);
    // A step of +1 (KeyShifter moving kept keys as tokens leave) uses the precomputed rotation.
    if (delta == 1) return {cos_one_[f], sin_one_[f]};
    const double a = static_cast<double>(delta) * inv_freq_[f];
    return {std::cos(a), std::sin(a)};
  }

  template <class Scalar>
  void turn_pair(Scalar* row, int i, double c, double s) const {
    const bool adjacent = layout_ == RopeLayout::adjacent;
    Scalar& a = row[std::ptrdiff_t(i) * (adjacent ? 2 : 1)];
    Scalar& b = row[std::ptrdiff_t(i) * (adjacent ? 2 : 1) + (adjacent ? 1 : head_dim_ / 2)];
    const double x = static_cast<double>(a), y = static_cast<double>(b);
    a = static_cast<Scalar>(x * c - y * s);
    b = static_cast<Scalar>(x * s + y * c);
  }

  int head_dim_ = 0;
  RopeLayout layout_ = RopeLayout::adjacent;
  std::vector<double> inv_freq_, cos_one_, sin_one_;
};

/// Moves kept keys on when tokens leave, in PositionMode::in_cache (rule 3 of Evictor).
///
/// Turning a stored row rounds it to its Scalar each time. The first tokens a policy keeps for good
/// (the sinks it declares: StreamingLLM's, or any policy's with_sinks) move once per token for the whole stream, and
/// those roundings add up linearly: 7e-4 after a million tokens in float. So the shifter keeps their keys in double,
/// unrotated and rotated, turns the double copy and stores it rounded once; every kExactEvery positions moved it
/// rotates the unrotated key afresh, so double round-off cannot pile up either. A pinned key stays within one
/// rounding of its rotation computed in double, however long the stream. Other keys are turned in place
/// (StreamingLLM never shifts its window; CachePositions<H2O> shifts the heavy hitters older than a victim). Memory: 2
/// x pinned x head_dim doubles, allocated at construction.
class KeyShifter {
 public:
  /// Positions moved between fresh rotations: the double round-off of this many +1 turns (~1e-12 relative) is far
  /// below one float rounding, and the sines and cosines of a fresh rotation cost little once per 4096.
  static constexpr std::int64_t kExactEvery = 4096;

  KeyShifter() = default;
  /// @param pinned how many first tokens of the stream are kept for good (Evictor::pinned_prefix)
  KeyShifter(int pinned, int head_dim) : pinned_(pinned), head_dim_(head_dim) {
    KVEVICT_REQUIRE(pinned >= 0, "pinned_prefix", ">= 0", pinned);
    unrotated_.assign(std::size_t(pinned) * std::size_t(head_dim), 0.0);
    rotated_.assign(unrotated_.size(), 0.0);
  }

  /// Keeps the key of a new token, before RoPE is applied to it, if the token is pinned; call it for every
  /// token admitted (a no-op past the pinned prefix).
  template <class Scalar>
  void remember(std::int64_t position, const Scalar* unrotated_key) {
    if (position >= pinned_) return;
    std::copy(unrotated_key, unrotated_key + head_dim_, unrotated(position));
  }

  /// Moves `row`, the stored key of the token at `position`, from its rotation `from` to `to` in one turn:
  /// pass what Evictor::move_keys() hands over. A pinned key is turned in double and stored rounded once.
  template <class Scalar>
  void move(const Rope& rope, Scalar* row, std::int64_t position, std::int64_t from, std::int64_t to) {
    if (position >= pinned_) {
      rope.rotate(row, to - from);
      return;
    }
    double* exact = rotated(position);
    // Afresh at the first move and whenever the move passes a multiple of kExactEvery moves.
    if (from == position || (from - position) / kExactEvery != (to - position) / kExactEvery) {
      std::copy(unrotated(position), unrotated(position) + head_dim_, exact);
      rope.rotate(exact, to);
    } else {
      rope.rotate(exact, to - from);
    }
    for (int i = 0; i < head_dim_; ++i) row[i] = static_cast<Scalar>(exact[i]);
  }

  /// Forgets the pinned keys (remember() overwrites them anyway before any shift reads them).
  void clear() {
    std::fill(unrotated_.begin(), unrotated_.end(), 0.0);
    std::fill(rotated_.begin(), rotated_.end(), 0.0);
  }

 private:
  double* unrotated(std::int64_t position) { return unrotated_.data() + position * head_dim_; }
  double* rotated(std::int64_t position) { return rotated_.data() + position * head_dim_; }

  int pinned_ = 0;
  int head_dim_ = 0;
  std::vector<double> unrotated_, rotated_;  // pinned x head_dim each, row p for the token at position p
};

}  // namespace kvevict

#endif  // KVEVICT_ROPE_HPP
