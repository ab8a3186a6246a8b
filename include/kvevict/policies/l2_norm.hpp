// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_L2_NORM_HPP
#define KVEVICT_POLICIES_L2_NORM_HPP

/// @file
/// L2 norm: "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression", Devoto et al.,
/// arXiv 2406.11430.
///
/// Keys with a low L2 norm draw high attention, so each kv head keeps the keys with the lowest ||k||_2 and
/// evicts the highest: the score is -||k||_2. The norm is taken once when a token arrives; RoPE is a
/// rotation and leaves it as it is. No attention weights are needed, so the policy works with fused
/// kernels that never form them. The last `recent` tokens (default 1: the newest) are always kept (add
/// sinks with `with_sinks`). The paper leaves layers 0 and 1 uncompressed:
/// `SkipLayers<L2Norm>(l2, {0, 1}, longest)` (budgets.hpp) does that, for this policy or any other.
/// Cost per step: O(head_dim) per new token for its norm, O(capacity) to select (capacity = budget + the
/// largest chunk or prompt).

#include <cmath>
#include <vector>

#include "../policy.hpp"

namespace kvevict {

/// Keep the lowest-norm keys.
struct L2Norm {
  int recent = 1;  ///< newest tokens always kept; 1 so the next query sees its predecessor
  Protect protection(const HeadContext& /*context*/) const { return Protect{0, recent}; }
  void init(const HeadContext& context) { norm_.assign(std::size_t(context.capacity), 0.0); }
  template <class Scalar>
  void on_append(const TokenView<Scalar>& token) noexcept {
    norm_[std::size_t(token.slot)] = std::sqrt(token.key_squared_norm());
  }
  double score(int slot) const noexcept { return -norm_[std::size_t(slot)]; }

 private:
  std::vector<double> norm_;
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_L2_NORM_HPP
