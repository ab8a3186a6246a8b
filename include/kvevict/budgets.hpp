// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_BUDGETS_HPP
#define KVEVICT_BUDGETS_HPP

/// @file
/// Budgets that differ per layer and per head, over any score, chosen in one line:
///
///     kvevict::KVCache<float, kvevict::Pyramid<kvevict::H2O>> a(shape);        // PyramidKV over H2O scores
///     kvevict::KVCache<float, kvevict::AdaptiveHeads<kvevict::AhaKV>> b(shape); // AdaKV over AhaKV scores
///     kvevict::KVCache<float, kvevict::SkipLayers<kvevict::L2Norm>> c(shape, {{}, {0, 1}, 4096});
///
/// Pyramid: "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling", Cai et al.,
/// arXiv 2406.02069. Lower layers spread their attention wide and upper layers focus it, so the budget
/// falls linearly with depth: the top layer gets budget / beta, the bottom 2 x budget - budget / beta,
/// and the layers sum to n_layers x budget, the memory of a uniform budget (largest remainders settle
/// the rounding; below budget = beta every layer gets one token first). Independent of the score. Cost:
/// none per step.
///
/// AdaptiveHeads: "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM
/// Inference", Feng et al., arXiv 2407.11550. A layer's kv heads share n_kv_heads x budget tokens: while the
/// layer holds more, the head whose lowest evictable score is lowest across the layer gives that token up,
/// so focused heads shrink and diffuse ones grow. No head goes below `floor` x budget tokens (the paper's
/// safeguard, alpha = 0.2) or gives up what its policy protects. Scores must be comparable across heads
/// (attention-based scores are: every head's weights sum to one per query). Each head can grow to
/// n_kv_heads x budget - (n_kv_heads - 1) x floor tokens, and its slots are sized for that. Cost per step:
/// one lowest-score pass per head, then one per evicted token over the head that gave it up.
///
/// SkipLayers: some layers are not compressed (the L2 norm paper, Devoto et al., arXiv 2406.11430, leaves
/// layers 0 and 1 alone; kvpress does the same for any press): those hold up to `uncompressed_budget`
/// tokens and evict only beyond it, the others keep the policy's budget. It goes outside a schedule,
/// `SkipLayers<Pyramid<P>>` (Pyramid refuses a policy with layer budgets of its own). Under AdaptiveHeads a
/// skipped layer's heads are sized to share n_kv_heads x uncompressed_budget, as every layer's are. Cost:
/// none per step.

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "error.hpp"
#include "policy.hpp"

namespace kvevict {

/// PyramidKV's budget of `layer` when a uniform cache would give every layer `budget`.
/// @throws InvalidArgument unless beta >= 1.
inline int pyramid_budget(int layer, int n_layers, int budget, double beta = 20.0) {
  KVEVICT_REQUIRE(beta >= 1.0, "beta", ">= 1 (the top layer gets budget / beta)", beta);
  if (n_layers <= 1) return budget;
  // Below one token at the top (budget < beta), every layer gets one and the pyramid shares out the rest.
  const int base = budget < beta ? 1 : 0;
  const double top = (budget - base) / beta, bottom = 2.0 * (budget - base) - top;
  auto exact = [&](int l) { return base + bottom - (bottom - top) * l / (n_layers - 1); };
  // Floors first, then the tokens left over to the largest fractional parts (the lower layer on ties).
  long long given = 0;
  for (int l = 0; l < n_layers; ++l) given += static_cast<long long>(std::floor(exact(l)));
  const long long left = static_cast<long long>(n_layers) * budget - given;
  const double mine = exact(layer) - std::floor(exact(layer));
  long long ahead = 0;  // layers whose remainder ranks before this layer's
  for (int l = 0; l < n_layers; ++l) {
    const double theirs = exact(l) - std::floor(exact(l));
    ahead += (theirs > mine) || (theirs == mine && l < layer);
  }
  return static_cast<int>(std::floor(exact(layer))) + (ahead < left ? 1 : 0);
}

/// `Policy` with PyramidKV's per-layer budgets (replacing any layer_budget of its own).
template <class Policy>
struct Pyramid : Policy {
  KVEVICT_CHECK_POLICY(Policy);
  static_assert(!detail::has_layer_budget<Policy>::value,
                "kvevict: Pyramid replaces its policy's layer budgets: put SkipLayers (or another schedule) outside, "
                "SkipLayers<Pyramid<P>>");

  double beta = 20.0;  ///< the bottom layer holds (2 beta - 1) times the top layer's budget

  Pyramid() = default;
  explicit Pyramid(const Policy& policy, double beta_ = 20.0) : Policy(policy), beta(beta_) {}
  /// Refuses a policy whose type derives from Policy: converted, it would lose what it adds.
  template <class Derived, std::enable_if_t<detail::slices_to_v<Policy, Derived>, int> = 0>
  explicit Pyramid(const Derived& /*policy*/, double /*beta_*/ = 20.0) {
    KVEVICT_REFUSE_SLICED_POLICY(Policy, Derived);
  }

  int layer_budget(int layer, int n_layers, int budget) const { return pyramid_budget(layer, n_layers, budget, beta); }
};

/// `Policy` (a score policy) whose kv heads share their layer's budget, AdaKV's way.
template <class Policy>
struct AdaptiveHeads : Policy {
  KVEVICT_CHECK_POLICY(Policy);
  static_assert(policy_traits<Policy>::scores,
                "kvevict: AdaptiveHeads compares scores across heads: the policy must have score(slot) and no "
                "select()");

  static constexpr bool shares_layer_budget = true;
  double floor = 0.2;  ///< each head keeps at least floor x budget tokens

  AdaptiveHeads() = default;
  explicit AdaptiveHeads(const Policy& policy, double floor_ = 0.2) : Policy(policy), floor(floor_) {}
  /// Refuses a policy whose type derives from Policy: converted, it would lose what it adds.
  template <class Derived, std::enable_if_t<detail::slices_to_v<Policy, Derived>, int> = 0>
  explicit AdaptiveHeads(const Derived& /*policy*/, double /*floor_*/ = 0.2) {
    KVEVICT_REFUSE_SLICED_POLICY(Policy, Derived);
  }

  /// Tokens no head of a layer with `budget` per head goes below.
  /// @throws InvalidArgument unless 0 <= floor <= 1.
  int head_floor(int budget) const {
    KVEVICT_REQUIRE(floor >= 0.0 && floor <= 1.0, "floor", "in [0, 1] (a fraction of the budget)", floor);
    return static_cast<int>(std::ceil(floor * budget));
  }
};

/// `Policy` with `skip_layers` not compressed: they get uncompressed_budget (set it to the longest sequence);
/// the other layers keep the policy's own budget (its layer_budget, when it has one).
template <class Policy>
struct SkipLayers : Policy {
  KVEVICT_CHECK_POLICY(Policy);

  std::vector<int> skip_layers;  ///< layers not compressed
  int uncompressed_budget = 0;   ///< tokens a skipped layer holds

  SkipLayers() = default;
  SkipLayers(const Policy& policy, std::vector<int> layers, int uncompressed)
      : Policy(policy), skip_layers(std::move(layers)), uncompressed_budget(uncompressed) {}
  /// Refuses a policy whose type derives from Policy: converted, it would lose what it adds.
  template <class Derived, std::enable_if_t<detail::slices_to_v<Policy, Derived>, int> = 0>
  SkipLayers(const Derived& /*policy*/, std::vector<int> /*layers*/, int /*uncompressed*/) {
    KVEVICT_REFUSE_SLICED_POLICY(Policy, Derived);
  }

  /// @throws InvalidArgument for a skipped layer outside [0, n_layers), or an uncompressed_budget below the
  /// budget the layer would have compressed.
  int layer_budget(int layer, int n_layers, int budget) const {
    for (int skipped : skip_layers)
      KVEVICT_REQUIRE(skipped >= 0 && skipped < n_layers, "skip_layers",
                      "layer indices in [0, n_layers = " + std::to_string(n_layers) + ")", skipped);
    const int compressed = policy_traits<Policy>::layer_budget(*this, layer, n_layers, budget);
    if (std::find(skip_layers.begin(), skip_layers.end(), layer) == skip_layers.end()) return compressed;
    KVEVICT_REQUIRE(uncompressed_budget >= compressed, "uncompressed_budget",
                    ">= the skipped layer's compressed budget = " + std::to_string(compressed), uncompressed_budget);
    return uncompressed_budget;
  }
};

}  // namespace kvevict

#endif  // KVEVICT_BUDGETS_HPP
