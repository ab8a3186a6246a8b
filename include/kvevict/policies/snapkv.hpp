// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_SNAPKV_HPP
#define KVEVICT_POLICIES_SNAPKV_HPP

/// @file
/// SnapKV: "SnapKV: LLM Knows What You are Looking for Before Generation", Li et al., arXiv 2404.14469.
///
/// The last `window` queries (the observation window: the end of the prompt, where the question sits) vote
/// for the tokens before them. A token's vote is the attention those queries gave it, the query heads of a
/// GQA group averaged into their kv head, summed over the window; then it is pooled with its neighbours in
/// position order, `kernel` wide (average pooling with zeros beyond the ends, as the paper's code does, or
/// max pooling), so that a chosen token brings its context along; the newest `recent` tokens (the window
/// itself, by default) always stay and, as in the paper, do not enter the pooling of the others. The lowest
/// pooled vote leaves, the older on ties.
/// Compressing a prompt: append and attend it in chunks with CacheOptions::max_prompt at least its length,
/// then evict() once (or forward() it as one chunk, max_chunk at least its length):
/// its last `window` queries are the observation window and the cache comes out at the budget. Streaming,
/// the window slides: the votes of the last `window` queries seen.
/// Cost per step: O(queries x group x capacity) to fold the weights (the order of attention itself), and
/// O(capacity x kernel) to keep the position order and pool. Memory: window x capacity floats per head.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../detail/scoring.hpp"
#include "../error.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Observation-window votes, pooled over neighbouring tokens.
struct SnapKV {
  enum class Pooling { average, max };
  static constexpr int kAuto = -1;
  static constexpr int kMaxWindow = 4096;  ///< the window keeps window x capacity floats per head

  int window = 32;  ///< queries that vote
  int kernel = 5;   ///< pooling width, odd (the paper's code: 5, or 7 in some of its runs)
  Pooling pooling = Pooling::average;
  int recent = kAuto;  ///< newest tokens always kept; default min(window, budget / 2)

  /// @throws InvalidArgument unless recent (default min(window, budget / 2)) is in [0, budget).
  Protect protection(const HeadContext& context) const {
    return protect_recent(recent == kAuto ? std::min(window, context.budget / 2) : recent, context);
  }
  /// @throws InvalidArgument for window outside [1, kMaxWindow] or a kernel that is not odd and positive.
  void init(const HeadContext& context) {
    detail::require_in("window", window, 1, kMaxWindow);
    detail::require_in("kernel", kernel, 1, kMaxWindow);
    KVEVICT_REQUIRE(kernel % 2 == 1, "kernel", "odd", kernel);
    const auto cap = std::size_t(context.capacity);
    kept_recent_ = protection(context).recent;
    votes_.reset(window, context.capacity);
    folded_.assign(cap, 0.0f);
    pooled_.assign(cap, 0.0);
    position_.assign(cap, kFreeSlot);
    order_.clear();
    order_.reserve(2 * cap);
  }

  template <class Scalar>
  void on_append(const TokenView<Scalar>& token) noexcept {
    votes_.forget(token.slot);
    position_[std::size_t(token.slot)] = token.position;
    if (order_.size() == order_.capacity())
      keep_held([&](int s, std::int64_t p) { return position_[std::size_t(s)] == p; });
    order_.push_back({token.slot, token.position});  // tokens arrive in position order
  }

  template <class Scalar>
  void observe(const AttentionView<Scalar>& a) noexcept {
    const int end = a.slots.occupied_end();
    for (int t = 0; t < a.n_queries; ++t) votes_.add(detail::group_mean(a, t, end, folded_.data()));
    keep_held([&](int s, std::int64_t p) { return a.slots.positions[s] == p; });
    pool();
  }

  /// The pooled vote, as of the last attention.
  double score(int slot) const noexcept { return pooled_[std::size_t(slot)]; }

 private:
  struct Held {
    int slot;
    std::int64_t position;
  };

  // Drops from the position order the tokens that `held` says have left.
  template <class Held_>
  void keep_held(Held_&& held) noexcept {
    order_.erase(std::remove_if(order_.begin(), order_.end(), [&](const Held& h) { return !held(h.slot, h.position); }),
                 order_.end());
  }

  // Each held token's vote pooled over the kernel of tokens around it in position order, the protected
  // newest ones left out (zero padding, as beyond the ends).
  void pool() noexcept {
    const std::int64_t newest = order_.empty() ? 0 : order_.back().position;
    int n = int(order_.size());
    while (n > 0 && order_[std::size_t(n - 1)].position > newest - kept_recent_) --n;
    const int half = kernel / 2;
    for (int i = 0; i < n; ++i) {
      double total = 0.0, top = 0.0;  // votes are >= 0: zero is max pooling's padding too
      for (int j = std::max(0, i - half); j <= std::min(n - 1, i + half); ++j) {
        const double v = votes_[order_[std::size_t(j)].slot];
        total += v;
        top = std::max(top, v);
      }
      pooled_[std::size_t(order_[std::size_t(i)].slot)] = pooling == Pooling::average ? total / kernel : top;
    }
  }

  int kept_recent_ = 0;
  detail::RecentSum votes_;    // per slot: the window's summed, group-averaged weights
  std::vector<float> folded_;  // one query's weights averaged over the group
  std::vector<double> pooled_;
  std::vector<std::int64_t> position_;  // per slot: the token on_append put there
  std::vector<Held> order_;             // held tokens by position; stale entries until the next keep_held
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_SNAPKV_HPP
