// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICY_HPP
#define KVEVICT_POLICY_HPP

/// @file
/// The eviction policy contract. "The policy scores, the cache evicts."
///
/// A policy is a plain copyable struct. The cache (or your engine, through Evictor) makes one copy per
/// (layer, kv head), so a policy instance looks after exactly one slot table. One hook is required:
///
///     int select(const kvevict::SlotView& slots);   // which occupied slot to evict now
///
/// Everything else is optional and detected:
///
///     void init(const kvevict::HeadContext&);                   // once, before any token; may throw InvalidArgument
///     template <class S> void on_append(const kvevict::TokenView<S>&);     // a token took a slot
///     template <class S> void observe(const kvevict::AttentionView<S>&);   // after each attention call
///     bool protects(std::int64_t position, std::int64_t newest) const;    // a promise never to evict it
///     int layer_budget(int layer, int budget) const;            // a layer's own budget (L2's skipped layers)
///     int pinned_prefix() const;                                // in_cache: the first N tokens are kept for good
///     static constexpr bool evicts = false;                     // never evicts (Dense)
///     static constexpr bool needs_logits = true;                // observe() wants logits as well as weights
///     static constexpr kvevict::PositionMode position_mode = kvevict::PositionMode::in_cache;
///
/// select() is called once per token over the budget, after that step's attention; the cache frees the slot
/// before calling it again. Selecting a free or a protected slot is a bug in the policy and throws
/// std::logic_error. No virtual calls: the hooks are resolved at compile time.

#include <cstdint>
#include <type_traits>
#include <utility>
#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
#include <concepts>
#endif

#include "slots.hpp"

namespace kvevict {

/// Where a kept token "is" for RoPE.
enum class PositionMode {
  original,  ///< every key stays at the position it was appended at (H2O, L2, AhaKV as published)
  in_cache,  ///< positions are ranks within the cache, as StreamingLLM assigns them
};

/// Which slot table a policy instance serves, and its limits.
struct HeadContext {
  int layer = 0;
  int kv_head = 0;
  int n_layers = 1;
  int budget = 0;    ///< tokens this head keeps after every step
  int capacity = 0;  ///< slots: budget plus the largest chunk appended at once
  int head_dim = 0;
  int group_size = 1;  ///< query heads per kv head
};

/// A read-only look at one slot table.
struct SlotView {
  const std::int64_t* positions;  ///< per slot, kFreeSlot where empty
  int capacity;
  int size;             ///< occupied slots
  std::int64_t newest;  ///< position of the newest token appended

  bool occupied(int slot) const { return positions[slot] != kFreeSlot; }
};

/// A token that has just been stored: its key (as stored, i.e. rotated if the cache applies RoPE) and value.
template <class Scalar>
struct TokenView {
  int slot;
  std::int64_t position;
  const Scalar* key;
  const Scalar* value;
  int head_dim;
};

/// The attention of one GQA group that just ran over this head's slots.
/// Row r = t * group + h is query head h of query token t; column j is slot j.
template <class Scalar>
struct AttentionView {
  const Scalar* probs;   ///< the weights the model used (0 where masked)
  const Scalar* logits;  ///< scaled logits, -inf where masked; null unless the policy sets needs_logits
  double scale;          ///< logits = scale * q.k
  const std::int64_t* query_positions;
  int n_queries;
  int group;
  SlotView slots;

  int rows() const { return n_queries * group; }
  Scalar prob(int row, int slot) const { return probs[std::ptrdiff_t(row) * slots.capacity + slot]; }
  Scalar logit(int row, int slot) const { return logits[std::ptrdiff_t(row) * slots.capacity + slot]; }
};

namespace detail {
template <class P, class = void>
struct has_select : std::false_type {};
template <class P>
struct has_select<P, std::void_t<decltype(std::declval<P&>().select(std::declval<const SlotView&>()))>>
    : std::is_convertible<decltype(std::declval<P&>().select(std::declval<const SlotView&>())), int> {};

template <class P, class = void>
struct has_init : std::false_type {};
template <class P>
struct has_init<P, std::void_t<decltype(std::declval<P&>().init(std::declval<const HeadContext&>()))>>
    : std::true_type {};

template <class P, class S, class = void>
struct has_on_append : std::false_type {};
template <class P, class S>
struct has_on_append<P, S, std::void_t<decltype(std::declval<P&>().on_append(std::declval<const TokenView<S>&>()))>>
    : std::true_type {};

template <class P, class S, class = void>
struct has_observe : std::false_type {};
template <class P, class S>
struct has_observe<P, S, std::void_t<decltype(std::declval<P&>().observe(std::declval<const AttentionView<S>&>()))>>
    : std::true_type {};

template <class P, class = void>
struct has_protects : std::false_type {};
template <class P>
struct has_protects<P, std::void_t<decltype(bool(std::declval<const P&>().protects(std::int64_t{}, std::int64_t{})))>>
    : std::true_type {};

template <class P, class = void>
struct has_layer_budget : std::false_type {};
template <class P>
struct has_layer_budget<P, std::void_t<decltype(int(std::declval<const P&>().layer_budget(0, 0)))>> : std::true_type {};

template <class P, class = void>
struct has_pinned_prefix : std::false_type {};
template <class P>
struct has_pinned_prefix<P, std::void_t<decltype(int(std::declval<const P&>().pinned_prefix()))>> : std::true_type {};

template <class P, class = void>
struct has_recompute_range : std::false_type {};
template <class P>
struct has_recompute_range<P, std::void_t<decltype(P::recompute_range(std::int64_t{}, 0))>> : std::true_type {};

template <class P, class = void>
struct evicts_flag : std::true_type {};
template <class P>
struct evicts_flag<P, std::void_t<decltype(P::evicts)>> : std::bool_constant<P::evicts> {};

template <class P, class = void>
struct needs_logits_flag : std::false_type {};
template <class P>
struct needs_logits_flag<P, std::void_t<decltype(P::needs_logits)>> : std::bool_constant<P::needs_logits> {};

template <class P, class = void>
struct position_mode_of : std::integral_constant<PositionMode, PositionMode::original> {};
template <class P>
struct position_mode_of<P, std::void_t<decltype(P::position_mode)>>
    : std::integral_constant<PositionMode, P::position_mode> {};
}  // namespace detail

/// True when P can serve as an eviction policy (C++17 spelling of the EvictionPolicy concept).
template <class P>
inline constexpr bool is_eviction_policy_v = std::is_copy_constructible_v<P>&& detail::has_select<P>::value;

#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
/// An eviction policy: copyable, and names a victim among the occupied slots.
template <class P>
concept EvictionPolicy = std::copy_constructible<P> && requires(P& p, const SlotView& slots) {
  { p.select(slots) } -> std::convertible_to<int>;
};
#endif

/// Static facts about a policy type, with the defaults of the optional hooks filled in.
template <class P>
struct policy_traits {
  static constexpr bool evicts = detail::evicts_flag<P>::value;
  static constexpr bool needs_logits = detail::needs_logits_flag<P>::value;
  static constexpr PositionMode position_mode = detail::position_mode_of<P>::value;

  /// The budget of `layer`: the policy's layer_budget() if it has one, else the shape's budget.
  static int layer_budget(const P& policy, int layer, int budget) {
    if constexpr (detail::has_layer_budget<P>::value) return policy.layer_budget(layer, budget);
    return budget;
  }

  /// How many first tokens of the stream the policy keeps for good: pinned_prefix() if it has one, else 0.
  /// In PositionMode::in_cache their keys move once per token for the whole stream, so KeyShifter keeps
  /// them exact (rope.hpp).
  static int pinned_prefix(const P& policy) {
    if constexpr (detail::has_pinned_prefix<P>::value) return policy.pinned_prefix();
    return 0;
  }
};

#define KVEVICT_CHECK_POLICY(P)                                                           \
  static_assert(::kvevict::is_eviction_policy_v<P>,                                       \
                "kvevict: not an eviction policy: the type must be copyable and provide " \
                "`int select(const kvevict::SlotView&)` returning the slot to evict (see kvevict/policy.hpp)")

}  // namespace kvevict

#endif  // KVEVICT_POLICY_HPP
