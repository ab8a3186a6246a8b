// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_SHAPE_HPP
#define KVEVICT_SHAPE_HPP

#include <string>

#include "error.hpp"

namespace kvevict {

/// Stated maxima, checked before anything is allocated: far beyond any model (the largest have ~128 layers
/// and heads, head_dim 256, contexts of millions of tokens), small enough that no size computed from them
/// overflows an int.
inline constexpr int kMaxLayers = 1 << 16;
inline constexpr int kMaxHeads = 1 << 16;
inline constexpr int kMaxTokensPerHead = 1 << 27;  ///< budget of one (layer, kv head), 134M tokens
/// The widest head the attention kernel takes: a converted block of at least one row fits its tile (32 KiB
/// in float).
inline constexpr int kMaxHeadDim = 8192;

/// The geometry of a cache: how many layers and heads, how wide a head, and how many tokens each
/// (layer, kv head) keeps between steps. MHA has n_kv_heads == n_q_heads, MQA has n_kv_heads == 1,
/// GQA anything in between that divides n_q_heads.
///
/// Name the fields rather than counting positions: `Shape{}.with_layers(30).with_q_heads(9).with_kv_heads(3)
/// .with_head_dim(64).with_budget(512)` in C++17, or `Shape{.n_layers = 30, .n_q_heads = 9, ...}` in C++20.
struct Shape {
  int n_layers = 1;
  int n_q_heads = 1;
  int n_kv_heads = 1;
  int head_dim = 64;
  int budget = 256;  ///< tokens kept per (layer, kv head) after every step

  constexpr Shape with_layers(int n) const { return set(&Shape::n_layers, n); }
  constexpr Shape with_q_heads(int n) const { return set(&Shape::n_q_heads, n); }
  constexpr Shape with_kv_heads(int n) const { return set(&Shape::n_kv_heads, n); }
  constexpr Shape with_head_dim(int n) const { return set(&Shape::head_dim, n); }
  constexpr Shape with_budget(int n) const { return set(&Shape::budget, n); }

  /// Query heads that share one kv head.
  int group_size() const { return n_q_heads / n_kv_heads; }

  /// @throws InvalidArgument naming the first field that is out of range.
  void validate() const {
    KVEVICT_REQUIRE(n_layers > 0 && n_layers <= kMaxLayers, "n_layers", "in [1, " + std::to_string(kMaxLayers) + "]",
                    n_layers);
    KVEVICT_REQUIRE(n_q_heads > 0 && n_q_heads <= kMaxHeads, "n_q_heads", "in [1, " + std::to_string(kMaxHeads) + "]",
                    n_q_heads);
    KVEVICT_REQUIRE(n_kv_heads > 0, "n_kv_heads", "> 0", n_kv_heads);
    KVEVICT_REQUIRE(n_q_heads % n_kv_heads == 0, "n_kv_heads", "a divisor of n_q_heads = " + std::to_string(n_q_heads),
                    n_kv_heads);
    KVEVICT_REQUIRE(head_dim > 0 && head_dim <= kMaxHeadDim, "head_dim", "in [1, " + std::to_string(kMaxHeadDim) + "]",
                    head_dim);
    KVEVICT_REQUIRE(budget > 0 && budget <= kMaxTokensPerHead, "budget",
                    "in [1, " + std::to_string(kMaxTokensPerHead) + "]", budget);
  }

 private:
  constexpr Shape set(int Shape::*field, int value) const {
    Shape copy = *this;
    copy.*field = value;
    return copy;
  }
};

}  // namespace kvevict

#endif  // KVEVICT_SHAPE_HPP
