// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_EVICTOR_HPP
#define KVEVICT_EVICTOR_HPP

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "detail/ring.hpp"
#include "policy.hpp"
#include "slots.hpp"

namespace kvevict {

/// Runs one policy over one slot table: the part of a cache that decides, without the K/V memory.
///
/// KVCache owns one Evictor per (layer, kv head) beside its Eigen storage. An engine that keeps K/V in
/// its own memory (paged, quantised, on a device) owns Evictors instead and follows three rules:
///   1. write a new token's rows at `next_free_slot()`, then call `admit(...)`;
///   2. after attention, hand the weights to `observe(...)`;
///   3. while `over_budget()`, call `evict_one()`; in PositionMode::in_cache, move the keys of
///      `shifted_slot(0 .. n_shifted - 1)` on by one position (RoPE is relative: when a token leaves, only
///      the tokens older than it get one step closer to every later query).
/// For rule 3, use a KeyShifter (rope.hpp) built with `pinned_prefix()`, and give it each new key before
/// RoPE at rule 1: it keeps the keys the policy holds for good on their exact rotation over any stream.
/// @tparam Policy a type for which is_eviction_policy_v holds.
template <class Policy>
class Evictor {
  KVEVICT_CHECK_POLICY(Policy);

 public:
  static constexpr PositionMode position_mode = policy_traits<Policy>::position_mode;

  /// What evict_one() did.
  struct Eviction {
    int slot;               ///< the freed slot
    std::int64_t position;  ///< the token that left
    int n_shifted;          ///< in_cache mode: keys to move on by +1, see shifted_slot()
  };

  Evictor() = default;
  /// @throws InvalidArgument when the policy's init() rejects the context.
  Evictor(const Policy& policy, const HeadContext& context)
      : policy_(policy),
        context_(context),
        slots_(context.capacity),
        order_(position_mode == PositionMode::in_cache ? context.capacity : 0) {
    if constexpr (detail::has_init<Policy>::value) policy_.init(context_);
  }

  /// Forgets every token and starts the policy afresh (init() again); allocates nothing.
  void clear() {
    slots_.clear();
    order_.clear();
    newest_ = -1;
    if constexpr (detail::has_init<Policy>::value) policy_.init(context_);
  }

  const Policy& policy() const { return policy_; }
  const HeadContext& context() const { return context_; }
  const SlotTable& slots() const { return slots_; }
  SlotView view() const { return SlotView{slots_.positions(), slots_.capacity(), slots_.size(), newest_}; }
  int size() const { return slots_.size(); }
  bool over_budget() const { return slots_.size() > context_.budget; }
  /// True when the policy promised to keep the token at `position` while `newest` is the newest token.
  bool protects(std::int64_t position, std::int64_t newest) const {
    if constexpr (detail::has_protects<Policy>::value) return policy_.protects(position, newest);
    return false;
  }

  /// How many first tokens of the stream the policy keeps for good (see KeyShifter).
  int pinned_prefix() const { return policy_traits<Policy>::pinned_prefix(policy_); }

  /// The slot the next admit() fills. @pre size() < capacity
  int next_free_slot() const { return slots_.next_free(); }

  /// Records a token whose rows are already stored at next_free_slot(). O(1) plus the policy's on_append.
  /// @pre positions are admitted in increasing order; size() < capacity
  template <class Scalar>
  int admit(std::int64_t position, const Scalar* key, const Scalar* value) {
    const int slot = slots_.insert(position);
    newest_ = position;
    if constexpr (position_mode == PositionMode::in_cache) order_.push_back(slot);
    if constexpr (detail::has_on_append<Policy, Scalar>::value)
      policy_.on_append(TokenView<Scalar>{slot, position, key, value, context_.head_dim});
    return slot;
  }

  /// Hands one group's attention weights to the policy (a no-op for policies without observe()).
  template <class Scalar>
  void observe(const AttentionView<Scalar>& attention) {
    if constexpr (detail::has_observe<Policy, Scalar>::value) policy_.observe(attention);
  }

  /// Asks the policy for a victim and frees its slot.
  /// @throws std::logic_error when the policy names a free or a protected slot (a bug in the policy).
  Eviction evict_one() {
    const int slot = static_cast<int>(policy_.select(view()));
    if (slot < 0 || slot >= slots_.capacity() || !slots_.occupied(slot))
      throw std::logic_error("kvevict: policy selected slot " + std::to_string(slot) + ", which holds no token");
    const std::int64_t position = slots_.position(slot);
    if (protects(position, newest_))
      throw std::logic_error("kvevict: policy selected the token at position " + std::to_string(position) +
                             ", which it promised to keep");
    slots_.erase(slot);
    int n_shifted = 0;
    if constexpr (position_mode == PositionMode::in_cache) {
      // Positions are admitted in increasing order, so order_ is sorted by position.
      int lo = 0, hi = order_.size();
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (slots_.position(order_[mid]) != kFreeSlot && slots_.position(order_[mid]) < position)
          lo = mid + 1;
        else
          hi = mid;
      }
      // order_[lo] is the victim: the only freed slot in order_, and every older one is still held.
      order_.erase_at(lo);
      n_shifted = lo;
      for (int k = 0; k < n_shifted; ++k) slots_.set_rotated_at(order_[k], slots_.rotated_at(order_[k]) + 1);
    }
    return Eviction{slot, position, n_shifted};
  }

  /// The k-th oldest kept slot; after evict_one() in in_cache mode, slots 0 .. n_shifted - 1 moved by +1.
  int shifted_slot(int k) const { return order_[k]; }

 private:
  Policy policy_{};
  HeadContext context_{};
  SlotTable slots_;
  detail::Ring<int> order_;  // in_cache mode: occupied slots by increasing position
  std::int64_t newest_ = -1;
};

}  // namespace kvevict

#endif  // KVEVICT_EVICTOR_HPP
