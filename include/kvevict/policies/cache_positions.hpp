// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_CACHE_POSITIONS_HPP
#define KVEVICT_POLICIES_CACHE_POSITIONS_HPP

/// @file
/// Positions within the cache for any policy: `CachePositions<H2O>` is H2O whose kept keys sit at their ranks
/// in the cache, as StreamingLLM (Xiao et al., arXiv 2309.17453) places its tokens (the paper's pos_shift),
/// instead of where they arrived.
///
/// A model trained on windows of N tokens has never seen a query-key distance above N. Dense attention and
/// every policy that keeps old keys at their original positions (H2O, AhaKV, L2 as published) reach such
/// distances once the stream is longer than N; with positions within the cache no distance exceeds the
/// budget. When a token leaves, every kept token older than it moves one step closer to the queries.
/// Cost per step: re-rotating those keys, O(older tokens x head_dim) per eviction: up to the order of the
/// attention itself for a score policy that evicts from the middle, nothing for one that evicts the oldest.

#include "../policy.hpp"

namespace kvevict {

/// `Policy` with PositionMode::in_cache.
template <class Policy>
struct CachePositions : Policy {
  KVEVICT_CHECK_POLICY(Policy);
  static constexpr PositionMode position_mode = PositionMode::in_cache;

  CachePositions() = default;
  explicit CachePositions(const Policy& policy) : Policy(policy) {}
  /// Refuses a policy whose type derives from Policy: converted, it would lose what it adds.
  template <class Derived, std::enable_if_t<detail::slices_to_v<Policy, Derived>, int> = 0>
  explicit CachePositions(const Derived& /*policy*/) {
    KVEVICT_REFUSE_SLICED_POLICY(Policy, Derived);
  }
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_CACHE_POSITIONS_HPP
