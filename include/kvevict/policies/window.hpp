// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICIES_WINDOW_HPP
#define KVEVICT_POLICIES_WINDOW_HPP

/// @file
/// Window attention: keep the last `budget` tokens.
///
/// The baseline that collapses: once the text is longer than the window, the first tokens (the attention
/// sinks) leave and perplexity explodes (StreamingLLM, arXiv 2309.17453, Table 1: 5158 on Llama-2-13B with
/// a 1024-token cache). Slots are reused in the order they were filled, so the cache is a ring buffer.
/// Cost per step: O(1).

#include <cstdint>

#include "../detail/ring.hpp"
#include "../policy.hpp"

namespace kvevict {

/// Evicts the oldest token.
struct Window {
  void init(const HeadContext& context) {
    window_ = context.budget;
    fifo_.reset(context.capacity);
  }
  template <class Scalar>
  void on_append(const TokenView<Scalar>& token) {
    fifo_.push_back(token.slot);
  }
  int select(const SlotView& /*slots*/) { return fifo_.pop_front(); }
  bool protects(std::int64_t position, std::int64_t newest) const { return position > newest - window_; }

 private:
  int window_ = 0;
  detail::Ring<int> fifo_;  // slots, oldest first
};

}  // namespace kvevict

#endif  // KVEVICT_POLICIES_WINDOW_HPP
