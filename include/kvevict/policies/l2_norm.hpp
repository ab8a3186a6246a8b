// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_L2_NORM_HPP
#define KVEVICT_POLICIES_L2_NORM_HPP

/// @file
/// L2 norm: "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression", Devoto et al.,
/// arXiv 2406.11430.
///
/// Keys with a low L2 norm draw high attention, so each kv head keeps the keys with the lowest ||k||_2 and
/// evicts the highest. The norm is taken once when a token arrives; RoPE is a rotation and leaves it as it
/// is. No attention weights are needed, so the policy works with fused kernels that never form them.
/// The first `sinks` and the last `recent` (default 1: the newest) tokens are always kept, and some layers are not
/// compressed (the paper leaves layers 0 and 1 alone): those hold up to `uncompressed_budget` tokens and
/// evict by norm only beyond it. Ties: the older token goes. Cost per step: O(head_dim) per new token for
/// its norm, O(budget) to select.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../detail/scoring.hpp"
#include "../error.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Keep the lowest-norm keys.
struct L2Norm {
  int sinks = 0;                 ///< first tokens always kept
  int recent = 1;                ///< newest tokens always kept; 1 so the next query sees its predecessor
  std::vector<int> skip_layers;  ///< layers not compressed
  int uncompressed_budget = 0;   ///< tokens a skipped layer holds; set it to the longest sequence

  /// Per-layer budget: skipped layers get uncompressed_budget.
  /// @throws InvalidArgument when a layer is skipped and uncompressed_budget is below the budget.
  int layer_budget(int layer, int budget) const {
    if (std::find(skip_layers.begin(), skip_layers.end(), layer) == skip_layers.end()) return budget;
    KVEVICT_REQUIRE(uncompressed_budget >= budget, "uncompressed_budget",
                    ">= budget = " + std::to_string(budget) + " when skip_layers is set", uncompressed_budget);
    return uncompressed_budget;
  }

  /// @throws InvalidArgument for negative sinks or recent, a budget that does not exceed them, or a
  /// skipped layer outside [0, n_layers).
  void init(const HeadContext& context) {
    KVEVICT_REQUIRE(sinks >= 0, "sinks", ">= 0", sinks);
    KVEVICT_REQUIRE(recent >= 0, "recent", ">= 0", recent);
    for (int layer : skip_layers)
      KVEVICT_REQUIRE(layer >= 0 && layer < context.n_layers, "skip_layers",
                      "layer indices in [0, n_layers = " + std::to_string(context.n_layers) + ")", layer);
    KVEVICT_REQUIRE(context.budget > sinks + recent, "budget", "> sinks + recent = " + std::to_string(sinks + recent),
                    context.budget);
    norm_.assign(std::size_t(context.capacity), 0.0);
  }
  template <class Scalar>
  void on_append(const TokenView<Scalar>& token) {
    double sum = 0.0;
    for (int i = 0; i < token.head_dim; ++i) sum += double(token.key[i]) * double(token.key[i]);
    norm_[std::size_t(token.slot)] = std::sqrt(sum);
  }
  int select(const SlotView& slots) const {
    return detail::argmin_score(
        slots, [&](int s) { return -norm_[std::size_t(s)]; },
        [&](std::int64_t p) { return protects(p, slots.newest); });
  }
  bool protects(std::int64_t position, std::int64_t newest) const {
    return position < sinks || position > newest - recent;
  }
  /// ||k||_2 of the key in `slot`.
  double key_norm(int slot) const { return norm_[std::size_t(slot)]; }

 private:
  std::vector<double> norm_;
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_L2_NORM_HPP
