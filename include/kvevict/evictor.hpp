// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_EVICTOR_HPP
#define KVEVICT_EVICTOR_HPP

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "detail/ring.hpp"
#include "error.hpp"
#include "policy.hpp"
#include "shape.hpp"
#include "slots.hpp"

namespace kvevict {

/// Runs one policy over one slot table: the part of a cache that decides, without the K/V memory.
///
/// KVCache owns one Evictor per (layer, kv head) beside its Eigen storage. An engine that keeps K/V in
/// its own memory (paged, quantised, on a device) owns Evictors instead and follows three rules:
///   1. write a new token's rows at `next_free_slot()`, then call `admit(...)`;
///   2. after attention, hand the weights to `observe(...)`;
///   3. while `over_budget()`, call `evict_one()` (or `evict_to_budget()` once); then, once per step,
///      `move_keys(...)`: in PositionMode::in_cache it names each kept key whose position moved (RoPE is relative: when
///      a token leaves, the tokens older than it get one step closer to every later query) with the rotation it has and
///      the one it needs, and a KeyShifter (rope.hpp) turns the row. Keys move only there, after every call into the
///      policy, so a step that fails halfway has moved none.
/// Build the KeyShifter with `pinned_prefix()` and give it each new key before RoPE at rule 1: it keeps the
/// keys the policy holds for good on their exact rotation over any stream.
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
    int n_shifted;          ///< in_cache mode: kept keys whose position moved on by one (see move_keys())
  };

  Evictor() = default;
  /// Refuses, at compile time, a policy whose type derives from Policy: converted, it would lose what it adds.
  template <class Derived, std::enable_if_t<detail::slices_to_v<Policy, Derived>, int> = 0>
  Evictor(const Derived& /*policy*/, const HeadContext& /*context*/) {
    KVEVICT_REFUSE_SLICED_POLICY(Policy, Derived);
  }
  /// @throws InvalidArgument when a field of the context is out of range, the policy's init() or
  /// protection() rejects it, or the declared protection leaves nothing to evict (sinks + recent above the
  /// budget).
  Evictor(const Policy& policy, const HeadContext& context)
      : policy_(policy),
        context_(validated(context)),
        slots_(context.capacity),
        order_(kKeepsOrder ? context.capacity : 0),
        stored_at_(kMovesKeys ? std::size_t(context.capacity) : 0, kFreeSlot) {
    if constexpr (policy_traits<Policy>::scores) ranked_.reserve(std::size_t(context_.capacity));
    if constexpr (detail::has_init<Policy>::value) policy_.init(context_);
    protect_ = validated(policy_traits<Policy>::protection(policy_, context_), context_);
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
  /// The protection declared by the policy for this head, as the Evictor enforces it.
  const Protect& protection() const { return protect_; }
  SlotView view() const {
    return SlotView{slots_.positions(), slots_.capacity(), slots_.size(), newest_, protect_, oldest_evictable()};
  }
  int size() const { return slots_.size(); }
  bool over_budget() const { return slots_.size() > context_.budget; }
  /// True when the policy promised to keep the token at `position` while `newest` is the newest token.
  bool protects(std::int64_t position, std::int64_t newest) const {
    if (protect_.covers(position, newest)) return true;
    if constexpr (detail::has_protects<Policy>::value) return policy_.protects(position, newest);
    return false;
  }

  /// How many first tokens of the stream are kept for good (the declared sinks; see KeyShifter).
  int pinned_prefix() const { return protect_.sinks; }

  /// The slot the next admit() fills; -1 when the table is full.
  int next_free_slot() const { return slots_.full() ? -1 : slots_.next_free(); }

  /// Records a token whose rows are already stored at next_free_slot(). O(1) plus the policy's on_append.
  /// @throws InvalidArgument when no slot is free or `position` is not after the newest admitted.
  template <class Scalar>
  int admit(std::int64_t position, const Scalar* key, const Scalar* value) {
    KVEVICT_REQUIRE(
        !slots_.full(), "admit",
        "a free slot (capacity = " + std::to_string(slots_.capacity()) + "; evict_one() while over_budget() first)",
        "a full table");
    KVEVICT_REQUIRE(position > newest_, "position", "> the newest admitted, " + std::to_string(newest_), position);
    const int slot = slots_.insert(position);
    newest_ = position;
    if constexpr (kKeepsOrder) order_.push_back(slot);
    if constexpr (kMovesKeys) stored_at_[std::size_t(slot)] = position;
    if constexpr (detail::has_on_append<Policy, Scalar>::value)
      policy_.on_append(TokenView<Scalar>{slot, position, key, value, context_.head_dim});
    return slot;
  }

  /// Hands one group's attention weights to the policy (a no-op for policies without observe()).
  template <class Scalar>
  void observe(const AttentionView<Scalar>& attention) {
    if constexpr (detail::has_observe<Policy, Scalar>::value) policy_.observe(attention);
  }

  /// Asks the policy for a victim (the lowest score, or its select()) and frees its slot.
  /// @throws std::logic_error when the policy names a free or a protected slot (a bug in the policy).
  Eviction evict_one() { return evict(victim()); }

  /// evict_one() while over_budget(): the same victims, and for a score policy found in one pass. No hook runs
  /// between the evictions of a step, so the scores stand still and the victims are the eligible tokens with
  /// the lowest (score, position): O(capacity + k log k) for k victims instead of O(k x capacity), which is
  /// what compressing a whole prompt at once needs. Allocates nothing.
  void evict_to_budget() {
    const int excess = slots_.size() - context_.budget;
    if constexpr (policy_traits<Policy>::scores) {
      if (excess > 1) {
        ranked_.clear();
        for (int s = 0; s < slots_.capacity(); ++s) {
          const std::int64_t p = slots_.position(s);
          if (p != kFreeSlot && !protects(p, newest_)) ranked_.push_back({double(policy_.score(s)), p, s});
        }
        if (int(ranked_.size()) >= excess) {  // else evict_one() reports the policy's broken promise
          const auto lower = [](const Ranked& a, const Ranked& b) {
            return a.score < b.score || (a.score == b.score && a.position < b.position);
          };
          std::nth_element(ranked_.begin(), ranked_.begin() + excess - 1, ranked_.end(), lower);
          std::sort(ranked_.begin(), ranked_.begin() + excess, lower);
          for (int k = 0; k < excess; ++k) evict(ranked_[std::size_t(k)].slot);
          return;
        }
      }
    }
    while (over_budget()) evict_one();
  }

  /// The slot evict_one() would free now: the policy's select(), or the lowest score() that the
  /// protection lets go (-1 when it lets nothing go).
  int victim() const {
    if constexpr (policy_traits<Policy>::scores) {
      const SlotView slots{slots_.positions(), slots_.capacity(), slots_.size(), newest_, protect_, -1};
      auto score = [&](int s) { return policy_.score(s); };
      if constexpr (detail::has_protects<Policy>::value)
        return lowest_score(slots, score, [&](std::int64_t p) { return policy_.protects(p, newest_); });
      else
        return lowest_score(slots, score);
    } else {
      return static_cast<int>(policy_.select(view()));
    }
  }

  /// Frees `slot`, chosen by whoever shares a budget across Evictors (AdaptiveHeads).
  /// @throws std::logic_error when the slot holds no token or a protected one.
  Eviction evict(int slot) {
    if (slot < 0 || slot >= slots_.capacity() || !slots_.occupied(slot))
      throw std::logic_error("kvevict: policy selected slot " + std::to_string(slot) + ", which holds no token");
    const std::int64_t position = slots_.position(slot);
    if (protects(position, newest_))
      throw std::logic_error("kvevict: policy selected the token at position " + std::to_string(position) +
                             ", which it promised to keep");
    slots_.erase(slot);
    int n_shifted = 0;
    if constexpr (kKeepsOrder) {
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
      if constexpr (position_mode == PositionMode::in_cache) {
        n_shifted = lo;
        for (int k = 0; k < n_shifted; ++k) slots_.set_rotated_at(order_[k], slots_.rotated_at(order_[k]) + 1);
      }
    }
    return Eviction{slot, position, n_shifted};
  }

  /// In PositionMode::in_cache, calls `move(slot, position, from, to)` for every kept key whose position
  /// moved since the last call: its row is rotated at `from` and belongs at `to` (rope.rotate(row, to - from),
  /// or KeyShifter::move). Call it once per step, after the evictions (rule 3). The keys that moved are the
  /// oldest ones, so this costs O(keys moved). A no-op in original position mode.
  template <class Move>
  void move_keys(Move&& move) {
    if constexpr (kMovesKeys) {
      for (int k = 0; k < order_.size(); ++k) {
        const int slot = order_[k];
        const std::int64_t from = stored_at_[std::size_t(slot)], to = slots_.rotated_at(slot);
        if (from == to) return;  // every key that moved is older than the last victim: a prefix of order_
        move(slot, slots_.position(slot), from, to);
        stored_at_[std::size_t(slot)] = to;
      }
    }
  }

 private:
  // The age order serves select() policies (SlotView::oldest) and the RoPE shift; a score policy in
  // original position mode never needs it, and skips its upkeep.
  static constexpr bool kKeepsOrder = position_mode == PositionMode::in_cache || !policy_traits<Policy>::scores;
  static constexpr bool kMovesKeys = position_mode == PositionMode::in_cache;

  // Before anything is allocated: the table takes `capacity` slots.
  static const HeadContext& validated(const HeadContext& c) {
    KVEVICT_REQUIRE(c.n_layers > 0 && c.n_layers <= kMaxLayers, "context.n_layers",
                    "in [1, " + std::to_string(kMaxLayers) + "]", c.n_layers);
    KVEVICT_REQUIRE(c.layer >= 0 && c.layer < c.n_layers, "context.layer",
                    "in [0, n_layers = " + std::to_string(c.n_layers) + ")", c.layer);
    KVEVICT_REQUIRE(c.kv_head >= 0 && c.kv_head < kMaxHeads, "context.kv_head",
                    "in [0, " + std::to_string(kMaxHeads) + ")", c.kv_head);
    KVEVICT_REQUIRE(c.budget > 0 && c.budget <= kMaxTokensPerHead, "context.budget",
                    "in [1, " + std::to_string(kMaxTokensPerHead) + "]", c.budget);
    KVEVICT_REQUIRE(
        c.capacity >= c.budget && c.capacity - c.budget <= kMaxTokensPerHead, "context.capacity",
        "in [budget = " + std::to_string(c.budget) + ", budget + " + std::to_string(kMaxTokensPerHead) + "]",
        c.capacity);
    KVEVICT_REQUIRE(c.head_dim > 0 && c.head_dim <= kMaxHeadDim, "context.head_dim",
                    "in [1, " + std::to_string(kMaxHeadDim) + "]", c.head_dim);
    KVEVICT_REQUIRE(c.group_size > 0 && c.group_size <= kMaxHeads, "context.group_size",
                    "in [1, " + std::to_string(kMaxHeads) + "]", c.group_size);
    return c;
  }

  static Protect validated(Protect protect, const HeadContext& context) {
    KVEVICT_REQUIRE(protect.sinks >= 0, "sinks", ">= 0", protect.sinks);
    KVEVICT_REQUIRE(protect.recent >= 0, "recent", ">= 0", protect.recent);
    KVEVICT_REQUIRE(std::int64_t(protect.sinks) + protect.recent <= context.budget, "sinks + recent",
                    "<= budget = " + std::to_string(context.budget) + " (protected tokens leave nothing to evict)",
                    std::int64_t(protect.sinks) + protect.recent);
    return protect;
  }

  // The first slot in age order that the declared protection lets go: past the sinks, and stopping at the
  // recent window, so O(sinks) whatever the size.
  int oldest_evictable() const {
    if constexpr (!kKeepsOrder) {
      return -1;
    } else {
      for (int k = 0; k < order_.size(); ++k) {
        const std::int64_t p = slots_.position(order_[k]);
        if (p > newest_ - protect_.recent) return -1;
        if (p >= protect_.sinks) return order_[k];
      }
      return -1;
    }
  }

  Policy policy_{};
  HeadContext context_{};
  SlotTable slots_;
  Protect protect_{};
  detail::Ring<int> order_;              // select() policies and in_cache mode: occupied slots by increasing position
  std::vector<std::int64_t> stored_at_;  // in_cache mode: the rotation each slot's key has in memory
  std::int64_t newest_ = -1;
  struct Ranked {
    double score;
    std::int64_t position;
    int slot;
  };
  std::vector<Ranked> ranked_;  // score policies: evict_to_budget()'s candidates, room for every slot
};

}  // namespace kvevict

#endif  // KVEVICT_EVICTOR_HPP
