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
/// or max on request). The last `recent` tokens are always kept; of the others the lowest score is evicted,
/// so the `heavy` hitters stay. `normalized` divides a score by the number of queries that saw the token
/// (kvpress's ObservedAttention), which removes the head start of old tokens. Ties: the older token goes.
/// Cost per step: O(queries x group x budget) to accumulate (the order of attention) + O(budget) to select.

#include <cstdint>
#include <string>
#include <vector>

#include "../detail/scoring.hpp"
#include "../error.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Heavy hitters plus a recent window, by accumulated attention.
struct H2O {
  using GroupReduce = detail::GroupReduce;
  static constexpr int kHalfBudget = -1;

  int heavy = kHalfBudget;   ///< tokens kept for their score; default budget - recent
  int recent = kHalfBudget;  ///< newest tokens always kept; default budget / 2
  GroupReduce reduce = GroupReduce::mean;
  bool normalized = false;

  H2O() = default;
  H2O(int n_heavy, int n_recent, GroupReduce group_reduce = GroupReduce::mean, bool normalize = false)
      : heavy(n_heavy), recent(n_recent), reduce(group_reduce), normalized(normalize) {}

  /// @throws InvalidArgument when recent or heavy is negative or heavy + recent exceeds the budget.
  /// When heavy + recent is below the budget the spare slots go to heavy hitters: the budget is the memory.
  void init(const HeadContext& context) {
    if (recent == kHalfBudget) recent = context.budget / 2;
    if (heavy == kHalfBudget) heavy = context.budget - recent;
    KVEVICT_REQUIRE(recent >= 0, "recent", ">= 0", recent);
    KVEVICT_REQUIRE(heavy >= 0, "heavy", ">= 0", heavy);
    KVEVICT_REQUIRE(heavy + recent <= context.budget, "heavy + recent", "<= budget = " + std::to_string(context.budget),
                    heavy + recent);
    KVEVICT_REQUIRE(recent < context.budget, "recent", "< budget = " + std::to_string(context.budget), recent);
    score_.assign(std::size_t(context.capacity), 0.0);
    seen_.assign(std::size_t(context.capacity), 0);
  }
  template <class Scalar>
  void on_append(const TokenView<Scalar>& token) {
    score_[std::size_t(token.slot)] = 0.0;
    seen_[std::size_t(token.slot)] = 0;
  }
  template <class Scalar>
  void observe(const AttentionView<Scalar>& attention) {
    detail::accumulate(attention, reduce, score_.data(), seen_.data());
  }
  int select(const SlotView& slots) const {
    return detail::argmin_score(
        slots, [&](int s) { return score(s); }, [&](std::int64_t p) { return protects(p, slots.newest); });
  }
  bool protects(std::int64_t position, std::int64_t newest) const { return position > newest - recent; }

  /// The score select() ranks by.
  double score(int slot) const {
    const auto s = std::size_t(slot);
    return normalized ? score_[s] / double(seen_[s] > 0 ? seen_[s] : 1) : score_[s];
  }

 private:
  std::vector<double> score_;
  std::vector<std::int64_t> seen_;
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_H2O_HPP
