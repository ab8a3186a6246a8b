// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_TOVA_HPP
#define KVEVICT_POLICIES_TOVA_HPP

/// @file
/// TOVA: "Transformers are Multi-State RNNs", Oren et al., arXiv 2401.06104.
///
/// Token Omission Via Attention: when the cache is over its budget, the token the newest query attends to
/// least leaves. Nothing accumulates: a token's score is its weight from the current query alone, the query
/// heads of a GQA group averaged into their kv head (the paper averages a layer's heads; the kv head is
/// GQA's unit of memory). Of a prefill chunk only the last query counts. The newest token is kept, as by every
/// policy here, so the next query sees its predecessor; the paper lets it compete like any other (recent = 0).
/// Ties go to the older token.
/// Cost per step: O(group x capacity) to fold the last query's weights, plus O(capacity) for the selection.

#include <vector>

#include "../detail/scoring.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Keeps the tokens the newest query attends to most.
struct TOVA {
  int recent = 1;  ///< newest tokens always kept (0: none, as in the paper)

  /// @throws InvalidArgument unless recent is in [0, budget).
  Protect protection(const HeadContext& context) const { return protect_recent(recent, context); }
  void init(const HeadContext& context) { weight_.assign(std::size_t(context.capacity), 0.0f); }

  template <class Scalar>
  void observe(const AttentionView<Scalar>& a) noexcept {
    detail::group_mean(a, a.n_queries - 1, a.slots.occupied_end(), weight_.data());
  }
  double score(int slot) const noexcept { return weight_[std::size_t(slot)]; }

 private:
  std::vector<float> weight_;  // per slot: the newest query's weight, averaged over the group
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_TOVA_HPP
