// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_PROTECTED_HPP
#define KVEVICT_POLICIES_PROTECTED_HPP

/// @file
/// Composition: attention sinks or a recent window added to any policy, in one line.
///
///     auto h2o_sinks = kvevict::with_sinks(kvevict::H2O{}, 4);        // H2O + the first 4 tokens for good
///     auto l2_recent = kvevict::with_recent(kvevict::L2Norm{}, 32);   // L2 norm + the newest 32 tokens
///
/// The result is the policy itself (every hook inherited) with a wider protection(): the union of the
/// policy's own and the added one. Protected tokens come out of the policy's share, never on top of the
/// budget: H2O + 4 sinks at budget 256 keeps 4 sinks, 128 recent tokens and 124 heavy hitters. Sinks are
/// kept for good, so in PositionMode::in_cache their keys stay exact over any stream (KeyShifter).
/// Cost per step: nothing beyond the policy's.

#include "../policy.hpp"

namespace kvevict {

/// `Policy` with `extra` protection on top of its own.
template <class Policy>
struct Protected : Policy {
  KVEVICT_CHECK_POLICY(Policy);

  Protect extra;

  Protected() = default;
  Protected(const Policy& policy, Protect more) : Policy(policy), extra(more) {}
  /// Refuses a policy whose type derives from Policy: converted, it would lose what it adds.
  template <class Derived, std::enable_if_t<detail::slices_to_v<Policy, Derived>, int> = 0>
  Protected(const Derived& /*policy*/, Protect /*more*/) {
    KVEVICT_REFUSE_SLICED_POLICY(Policy, Derived);
  }

  Protect protection(const HeadContext& context) const {
    return policy_traits<Policy>::protection(*this, context) | extra;
  }
};

/// `policy` that also keeps the first `sinks` tokens of the stream for good.
template <class Policy>
Protected<Policy> with_sinks(const Policy& policy, int sinks) {
  return Protected<Policy>(policy, Protect{sinks, 0});
}

/// `policy` that also keeps the newest `recent` tokens.
template <class Policy>
Protected<Policy> with_recent(const Policy& policy, int recent) {
  return Protected<Policy>(policy, Protect{0, recent});
}

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_PROTECTED_HPP
