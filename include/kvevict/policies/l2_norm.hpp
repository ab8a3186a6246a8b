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
/// sinks with `with_sinks`), and some layers are not compressed (the paper leaves layers 0 and 1 alone):
/// those hold up to `uncompressed_budget` tokens and evict by norm only beyond it.
/// Cost per step: O(head_dim) per new token for its norm, O(budget) to select.

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Keep the lowest-norm keys.
struct L2Norm {
  int recent = 1;                ///< newest tokens always kept; 1 so the next query sees its predecessor
  std::vector<int> skip_layers;  ///< layers not compressed
  int uncompressed_budget = 0;   ///< tokens a skipped layer holds; set it to the longest sequence

  /// Skipped layers get uncompressed_budget.
  /// @throws InvalidArgument for a skipped layer outside [0, n_layers), or uncompressed_budget below budget.
  int layer_budget(int layer, int n_layers, int budget) const {
    for (int skipped : skip_layers)
      KVEVICT_REQUIRE(skipped >= 0 && skipped < n_layers, "skip_layers",
                      "layer indices in [0, n_layers = " + std::to_string(n_layers) + ")", skipped);
    if (std::find(skip_layers.begin(), skip_layers.end(), layer) == skip_layers.end()) return budget;
    KVEVICT_REQUIRE(uncompressed_budget >= budget, "uncompressed_budget",
                    ">= budget = " + std::to_string(budget) + " when skip_layers is set", uncompressed_budget);
    return uncompressed_budget;
  }
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
