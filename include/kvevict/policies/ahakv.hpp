// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_AHAKV_HPP
#define KVEVICT_POLICIES_AHAKV_HPP

/// @file
/// AhaKV: "AhaKV: Adaptive Holistic Attention-Driven KV Cache Eviction for Efficient Inference of Large
/// Language Models", Gu et al., arXiv 2506.03762.
///
/// H2O's accumulated score is biased toward early tokens: they have been seen by more queries. AhaKV fixes
/// the score in three ways, each switchable to rerun the paper's ablation:
///  1. recent accumulation: a token's score sums the weights of the last `window` (r = 32) queries only;
///  2. step-gain softmax: the weights for the score are softmax_j(lambda_i x_ij) over the unscaled logits
///     x = q.k, with lambda_i = sqrt(2 log(i / k) / d), k = budget, d = head_dim, so the score keeps its
///     sharpness as the context grows (the model's own output keeps its usual softmax);
///  3. value prior: score_j = gamma_bar_j S_j with gamma = AvgPool(||v||^2), gamma_bar = gamma / max gamma.
/// The last `recent` tokens are always kept; of the others the lowest score is evicted (older on ties).
///
/// Choices the paper leaves open, made here:
///  - i is the number of tokens query i would see without eviction (its position + 1), as in the paper's
///    prefill, not the number the cache still holds: in steady state that is always k + 1, and lambda
///    would never move.
///  - lambda is clamped to [min_gain, max_gain] / sqrt(d) = [1, 4] / sqrt(d): the formula is 0 at i = k
///    (every token scored equal) and imaginary below; the floor is the model's own scale, so the score is
///    never flatter than the model's attention.
///  - AvgPool is causal with width `pool` = 5: a token's prior averages its own ||v||^2 with the four tokens
///    before it, known when it arrives, so the prior costs O(pool) per token and never changes afterwards.
///  - max gamma is taken over the tokens held when the step's attention ran (in observe(), O(capacity)), so it
///    stays fixed while that step evicts: within a head it scales every score alike, and it makes scores
///    comparable across heads (AdaptiveHeads).
///  - GQA: the group's query heads are averaged into their kv head, as for H2O. Sink logits and
///    off-by-one do not enter the score: it is a plain (step-gain) softmax over the visible tokens.
/// Cost per step: a second softmax over the logits, O(queries x group x capacity), plus O(queries x
/// capacity) for the recent-window update, O(window + pool) per new token and O(capacity) to select (capacity
/// = budget + the largest chunk or prompt). Memory: `window` x capacity floats per head for the window.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../detail/scoring.hpp"
#include "../error.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Entropy-scaled attention score with recent accumulation and a value-norm prior.
struct AhaKV {
  static constexpr bool needs_logits = true;
  static constexpr int kAuto = -1;
  static constexpr int kMaxWindow = 4096;  ///< largest window and pool: the window keeps window x capacity floats

  int window = 32;                        ///< r: queries a score remembers
  int recent = kAuto;                     ///< newest tokens always kept; default min(window, budget / 2)
  int pool = 5;                           ///< width of the causal average pool of ||v||^2
  double min_gain = 1.0, max_gain = 4.0;  ///< clamp of lambda * sqrt(d)
  bool recent_accumulation = true, step_gain = true, value_prior = true;

  /// @throws InvalidArgument unless recent (default min(window, budget / 2)) is in [0, budget).
  Protect protection(const HeadContext& context) const {
    return protect_recent(recent == kAuto ? std::min(window, context.budget / 2) : recent, context);
  }
  /// @throws InvalidArgument for window or pool outside [1, kMaxWindow], or a gain range that is not
  /// finite with 0 < min_gain <= max_gain.
  void init(const HeadContext& context) {
    detail::require_in("window", window, 1, kMaxWindow, " (the r of recent accumulation)");
    detail::require_in("pool", pool, 1, kMaxWindow);
    KVEVICT_REQUIRE(min_gain > 0 && max_gain >= min_gain && std::isfinite(max_gain), "min_gain, max_gain",
                    "finite, 0 < min_gain <= max_gain", std::to_string(min_gain) + ", " + std::to_string(max_gain));
    budget_ = context.budget;
    head_dim_ = context.head_dim;
    attention_.reset(recent_accumulation ? window : 0, context.capacity);
    value_norms_.reset(pool);
    prior_.assign(std::size_t(context.capacity), 1.0);
    row_.assign(std::size_t(context.capacity), 0.0f);
    folded_.assign(std::size_t(context.capacity), 0.0f);
    max_prior_ = 1.0;  // Evictor::clear() starts afresh: no scale left from before
  }

  /// lambda_i for a query at position i - 1, clamped as documented above.
  double lambda(std::int64_t i) const {
    const double ratio = double(i) / double(budget_);
    const double gain = ratio > 1.0 ? std::sqrt(2.0 * std::log(ratio)) : 0.0;
    return std::clamp(gain, min_gain, max_gain) / std::sqrt(double(head_dim_));
  }

  template <class Scalar>
  void on_append(const TokenView<Scalar>& token) noexcept {
    attention_.forget(token.slot);
    prior_[std::size_t(token.slot)] = value_norms_.push(token.value_squared_norm());
  }

  template <class Scalar>
  void observe(const AttentionView<Scalar>& a) noexcept {
    const int cap = a.slots.capacity;
    max_prior_ = 0.0;
    for (int s = 0; s < cap; ++s)
      if (a.slots.occupied(s)) max_prior_ = std::max(max_prior_, prior_[std::size_t(s)]);
    if (!(max_prior_ > 0.0)) max_prior_ = 1.0;  // all-zero values: every prior is 0 and the scores tie anyway
    const int end = a.slots.occupied_end();
    for (int t = 0; t < a.n_queries; ++t) {
      const double gain = lambda(a.query_positions[t] + 1) / a.scale;  // the logits arrive scaled
      const auto sharpened = [&](int r, int n) {
        return detail::sharpened_softmax(a.logits + std::ptrdiff_t(r) * cap, n, gain, row_.data());
      };
      attention_.add(step_gain ? detail::group_mean(a, t, end, folded_.data(), sharpened)
                               : detail::group_mean(a, t, end, folded_.data()));
    }
  }

  /// gamma_bar_j S_j, as the paper writes it.
  double score(int slot) const noexcept {
    return value_prior ? attention_[slot] * (prior_[std::size_t(slot)] / max_prior_) : attention_[slot];
  }
  /// The raw gamma (pooled ||v||^2) of a slot.
  double prior(int slot) const { return prior_[std::size_t(slot)]; }

 private:
  int budget_ = 1, head_dim_ = 1;
  detail::RecentSum attention_;     // S: the (step-gain) weights of the last `window` queries, or of all
  detail::CausalMean value_norms_;  // gamma: ||v||^2 pooled over the token and the pool - 1 before it
  std::vector<double> prior_;       // gamma per slot, fixed when the token arrives
  std::vector<float> row_, folded_;
  double max_prior_ = 1.0;
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_AHAKV_HPP
