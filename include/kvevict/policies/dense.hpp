// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_DENSE_HPP
#define KVEVICT_POLICIES_DENSE_HPP

/// @file
/// Dense: keep every token. The quality reference of every table, and the memory worst case.
/// The cache refuses an append that would take it past the budget, so size the budget to the sequence.
/// Cost per step: nothing.

#include <cstdint>

#include "../policy.hpp"

namespace kvevict {

/// Keeps everything; never asked to select.
struct Dense {
  static constexpr bool evicts = false;
  int select(const SlotView& /*slots*/) const noexcept { return -1; }
  bool protects(std::int64_t /*position*/, std::int64_t /*newest*/) const noexcept { return true; }
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_DENSE_HPP
