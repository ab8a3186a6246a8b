// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_WINDOW_HPP
#define KVEVICT_POLICIES_WINDOW_HPP

/// @file
/// Window attention: keep the last `budget` tokens.
///
/// The baseline that collapses: once the text is longer than the window, the first tokens (the attention
/// sinks) leave and perplexity explodes (StreamingLLM, arXiv 2309.17453, Table 1: 5158 on Llama-2-13B with
/// a 1024-token cache). The oldest token goes; slots are reused in the order they were filled, so the cache
/// is a ring buffer. It promises only the newest token, so `with_sinks(Window{}, 4)` is window attention
/// with sinks at their original positions (StreamingLLM without its position shift). Cost per step: the
/// victim is the oldest, found in the Evictor's age order by a binary search, O(log capacity), plus O(sinks)
/// to take it out of that order.

#include "../policy.hpp"

namespace kvevict {

/// Evicts the oldest token.
struct Window {
  Protect protection(const HeadContext& /*context*/) const { return Protect{0, 1}; }
  int select(const SlotView& slots) const noexcept { return slots.oldest(); }
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_WINDOW_HPP
