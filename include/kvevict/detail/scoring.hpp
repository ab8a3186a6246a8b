// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_DETAIL_SCORING_HPP
#define KVEVICT_DETAIL_SCORING_HPP

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

#include "../policy.hpp"

namespace kvevict::detail {

/// How the query heads of a GQA group are folded into their kv head's score.
enum class GroupReduce { mean, sum, max };

/// Adds, for every slot, the attention weight it received from each query token of the view, reduced over
/// the group's heads, to `score[slot]`; counts in `seen` (unless null) the query tokens that saw each token.
/// Masked and free slots have weight exactly 0, so whole rows are added without looking at positions.
/// O(n_queries x group x capacity): the order of the attention itself, vectorised.
template <class Scalar>
void accumulate(const AttentionView<Scalar>& a, GroupReduce reduce, double* score, std::int64_t* seen) {
  const int cap = a.slots.capacity;
  Eigen::Map<Eigen::ArrayXd> total(score, cap);
  auto row = [&](int r) {
    return Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>(a.probs + std::ptrdiff_t(r) * cap, cap);
  };
  for (int t = 0; t < a.n_queries; ++t) {
    if (reduce == GroupReduce::max) {
      for (int s = 0; s < cap; ++s) {
        Scalar m = 0;  // weights are >= 0
        for (int h = 0; h < a.group; ++h) m = std::max(m, a.prob(t * a.group + h, s));
        total[s] += double(m);
      }
    } else {
      const double factor = reduce == GroupReduce::mean ? 1.0 / a.group : 1.0;
      for (int h = 0; h < a.group; ++h) total += factor * row(t * a.group + h).template cast<double>();
    }
    if (seen)
      for (int s = 0; s < cap; ++s) {
        const std::int64_t p = a.slots.positions[s];
        seen[s] += p != kFreeSlot && p <= a.query_positions[t];
      }
  }
}

}  // namespace kvevict::detail

#endif  // KVEVICT_DETAIL_SCORING_HPP
