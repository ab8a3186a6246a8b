// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_STREAMING_LLM_HPP
#define KVEVICT_POLICIES_STREAMING_LLM_HPP

/// @file
/// StreamingLLM: "Efficient Streaming Language Models with Attention Sinks", Xiao et al., arXiv 2309.17453.
///
/// Keep the first `sinks` tokens (4 by default) and the most recent `budget - sinks`. Models dump attention
/// mass on the first tokens whatever they say; keeping them is what stops window attention from collapsing.
/// Positions are those within the cache (the paper's pos_shift): the query sits at rank `sinks + window`,
/// so recent tokens keep their distances to it and only the sinks move one step closer when a token
/// leaves. The cache re-rotates the sink rows alone, from a double copy so that they stay on their exact
/// rotation over millions of tokens (KeyShifter in rope.hpp). Cost per step: O(log capacity + sinks)
/// bookkeeping (the oldest non-sink found in the Evictor's age order and taken out of it), plus O(sinks x
/// head_dim) re-rotation once the cache is full (sines and cosines once per 4096 tokens); 2 x sinks x head_dim
/// doubles per (layer, kv head).

#include <cstdint>
#include <string>

#include "../error.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Attention sinks plus a recent window, at positions within the cache.
struct StreamingLLM {
  static constexpr PositionMode position_mode = PositionMode::in_cache;

  int sinks = 4;  ///< initial tokens kept for good

  StreamingLLM() = default;
  explicit StreamingLLM(int n_sinks) : sinks(n_sinks) {}

  /// @throws InvalidArgument unless 0 <= sinks < budget.
  Protect protection(const HeadContext& context) const {
    KVEVICT_REQUIRE(sinks >= 0, "sinks", ">= 0", sinks);
    KVEVICT_REQUIRE(context.budget > sinks, "budget", ">= sinks + 1 = " + std::to_string(std::int64_t(sinks) + 1),
                    context.budget);
    return Protect{sinks, context.budget - sinks};
  }
  int select(const SlotView& slots) const noexcept { return slots.oldest(); }
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_STREAMING_LLM_HPP
