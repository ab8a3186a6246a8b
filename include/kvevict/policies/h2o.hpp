// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_H2O_HPP
#define KVEVICT_POLICIES_H2O_HPP

/// @file
/// H2O: "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
/// Zhang et al., arXiv 2306.14048.
///
/// Every kv head scores each kept token by the attention it has received: after each attention call the
/// weights of every query (prefill chunks included, every query of a chunk counts) are added to the token's
/// score, the query heads of a GQA group folded into their kv head (mean by default, as kvpress does; sum
/// or max on request). The last `recent` tokens are always kept; the rest of the budget holds the heavy
/// hitters, the highest scores, so the lowest score is evicted. `normalized` divides a score by the number
/// of queries that saw the token (kvpress's ObservedAttention), which removes the head start of old tokens.
/// Cost per step: O(queries x group x capacity) to accumulate (the order of attention) + O(capacity) to
/// select (capacity = budget + the largest chunk or prompt).

#include "../detail/scoring.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Heavy hitters plus a recent window, by accumulated attention.
struct H2O {
  using GroupReduce = detail::GroupReduce;
  static constexpr int kHalfBudget = -1;

  int recent = kHalfBudget;  ///< newest tokens always kept (budget / 2 by default); the rest are heavy hitters
  GroupReduce reduce = GroupReduce::mean;
  bool normalized = false;

  /// @throws InvalidArgument unless 0 <= recent < budget.
  Protect protection(const HeadContext& context) const {
    return protect_recent(recent == kHalfBudget ? context.budget / 2 : recent, context);
  }
  void init(const HeadContext& context) { totals_.reset(context.capacity); }
  template <class Scalar>
  void on_append(const TokenView<Scalar>& token) noexcept {
    totals_.forget(token.slot);
  }
  template <class Scalar>
  void observe(const AttentionView<Scalar>& attention) noexcept {
    totals_.add(attention, reduce);
  }
  double score(int slot) const noexcept { return normalized ? totals_.mean(slot) : totals_.total(slot); }

 private:
  detail::AttentionTotals totals_;
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_H2O_HPP
