// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_SLIDING_WINDOW_RECOMPUTE_HPP
#define KVEVICT_POLICIES_SLIDING_WINDOW_RECOMPUTE_HPP

/// @file
/// Sliding window with re-computation: the quality oracle of StreamingLLM (arXiv 2309.17453, Figure 1b).
///
/// For every new token the K/V of the last `budget` tokens are rebuilt from scratch, as if the text began
/// at the window's first token, so the model never sees a truncated context at odd positions. The cache
/// cannot run the model, so the protocol is the engine's, three lines per token:
///
///     using P = kvevict::SlidingWindowRecompute;
///     if (auto r = P::recompute_range(t, budget); !r.empty()) {  // tokens [r.begin, r.end) of the text
///       cache.clear();                                        // positions restart at 0
///       engine.prefill(text, r.begin, r.end);                 // the usual chunked forward()
///     }
///     engine.decode(text[t]);                                 // forward() of token t
///
/// Between rebuilds it behaves as Window. Cost per token: a prefill of `budget` tokens, O(budget^2) attention.

#include <cstdint>

#include "window.hpp"

namespace kvevict {

/// A half-open range [begin, end) of token indices of the text.
struct TokenRange {
  std::int64_t begin = 0, end = 0;
  bool empty() const { return end <= begin; }
  std::int64_t size() const { return end - begin; }
};

/// Window attention whose window is rebuilt from scratch for every token.
struct SlidingWindowRecompute : Window {
  /// What to re-prefill before token `next` (its index in the text) with a window of `budget`:
  /// nothing while the text fits, else the `budget` tokens before it.
  static TokenRange recompute_range(std::int64_t next, int budget) {
    return next <= budget ? TokenRange{} : TokenRange{next - budget, next};
  }
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_SLIDING_WINDOW_RECOMPUTE_HPP
