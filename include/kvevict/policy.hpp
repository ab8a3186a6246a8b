// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_POLICY_HPP
#define KVEVICT_POLICY_HPP

/// @file
/// The eviction policy contract. "The policy scores, the cache evicts."
///
/// A policy is a plain copyable struct. The cache (or your engine, through Evictor) makes one copy per
/// (layer, kv head), so a policy instance looks after exactly one slot table. It names its victims in one
/// of two ways:
///
///     double score(int slot) const;                  // a score policy: the lowest score goes, older on ties
///     int select(const kvevict::SlotView&) const;     // any other rule, e.g. `return slots.oldest();`
///                                                    // (where both are present, select() decides)
///
/// and may declare what it never evicts, which the Evictor applies before asking it:
///
///     kvevict::Protect protection(const kvevict::HeadContext&) const;   // first `sinks`, last `recent` tokens
///                                            // (protect_recent(recent, context) checks recent < budget)
///     bool protects(std::int64_t position, std::int64_t newest) const;  // a rule of its own, on top
///
/// Everything else is optional and detected:
///
///     void init(const kvevict::HeadContext&);                   // once, before any token; may throw InvalidArgument
///     template <class S> void on_append(const kvevict::TokenView<S>&);     // a token took a slot
///     template <class S> void observe(const kvevict::AttentionView<S>&);   // after each attention call
///     int layer_budget(int layer, int n_layers, int budget) const;   // a layer's own budget (a schedule)
///     static constexpr bool shares_layer_budget = true;         // kv heads share the layer's budget (AdaKV):
///     int head_floor(int budget) const;                         //   no head keeps fewer than this
///     static constexpr bool evicts = false;                     // never evicts (Dense)
///     static constexpr bool needs_logits = true;                // observe() wants logits as well as weights
///     static constexpr kvevict::PositionMode position_mode = kvevict::PositionMode::in_cache;
///
/// A victim is asked for once per token over the budget, after that step's attention; the cache frees the
/// slot before asking again. Naming a free or a protected slot is a bug in the policy and throws
/// std::logic_error. Protected<P> (with_sinks, with_recent) adds protection to any policy. No virtual calls:
/// the hooks are resolved at compile time.

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
#include <concepts>
#endif

#include "error.hpp"
#include "slots.hpp"

namespace kvevict {

/// Where a kept token "is" for RoPE.
enum class PositionMode {
  original,  ///< every key stays at the position it was appended at (H2O, L2, AhaKV as published)
  in_cache,  ///< positions are ranks within the cache, as StreamingLLM assigns them
};

/// Which slot table a policy instance serves, and its limits. Named construction as for Shape:
/// `HeadContext{}.with_budget(256).with_capacity(320).with_head_dim(64)`, or designated initialisers in C++20.
struct HeadContext {
  int layer = 0;
  int kv_head = 0;
  int n_layers = 1;
  int budget = 0;    ///< tokens this head keeps after every step
  int capacity = 0;  ///< slots: the head's budget plus max(max_chunk, max_prompt) (KVCache::capacity)
  int head_dim = 0;
  int group_size = 1;  ///< query heads per kv head

  constexpr HeadContext with_layer(int l, int of_layers) const {
    HeadContext c = *this;
    c.layer = l;
    c.n_layers = of_layers;
    return c;
  }
  constexpr HeadContext with_kv_head(int h) const { return set(&HeadContext::kv_head, h); }
  constexpr HeadContext with_budget(int n) const { return set(&HeadContext::budget, n); }
  constexpr HeadContext with_capacity(int n) const { return set(&HeadContext::capacity, n); }
  constexpr HeadContext with_head_dim(int n) const { return set(&HeadContext::head_dim, n); }
  constexpr HeadContext with_group_size(int n) const { return set(&HeadContext::group_size, n); }

 private:
  constexpr HeadContext set(int HeadContext::*field, int value) const {
    HeadContext copy = *this;
    copy.*field = value;
    return copy;
  }
};

/// Tokens a policy never evicts: the first `sinks` of the stream (kept for good) and the newest `recent`.
struct Protect {
  int sinks = 0;
  int recent = 0;

  bool covers(std::int64_t position, std::int64_t newest) const {
    return (position < sinks) | (position > newest - recent);
  }
  /// Both promises at once.
  friend Protect operator|(Protect a, Protect b) {
    return Protect{a.sinks > b.sinks ? a.sinks : b.sinks, a.recent > b.recent ? a.recent : b.recent};
  }
};

/// The usual protection of a score policy: its newest `recent` tokens.
/// @throws InvalidArgument unless 0 <= recent < budget (a policy that protects the whole budget cannot evict).
inline Protect protect_recent(int recent, const HeadContext& context) {
  if (recent < 0 || recent >= context.budget)
    detail::fail("recent", "in [0, budget = " + std::to_string(context.budget) + ")", recent);
  return Protect{0, recent};
}

/// A read-only look at one slot table, as the Evictor sees it when it asks for a victim.
struct SlotView {
  const std::int64_t* positions;  ///< per slot, kFreeSlot where empty
  int capacity;
  int size;             ///< occupied slots
  std::int64_t newest;  ///< position of the newest token appended
  Protect protect;      ///< the declared protection the Evictor enforces
  int oldest_slot;      ///< the oldest slot `protect` lets go; -1 for score policies (they keep no age order)

  bool occupied(int slot) const { return positions[slot] != kFreeSlot; }
  /// One past the last occupied slot: every slot from here on is free, its weight 0 and its logit -inf, so a
  /// loop over a step's attention can stop here. A cache fills its slots from 0 up, so while it is filling
  /// (a prompt read into a large capacity) this is what it holds; O(free slots at the end).
  int occupied_end() const {
    int end = capacity;
    while (end > 0 && positions[end - 1] == kFreeSlot) --end;
    return end;
  }
  /// Occupied and not under the declared protection.
  bool evictable(int slot) const { return occupied(slot) && !protect.covers(positions[slot], newest); }
  /// The victim of first-in-first-out policies (Window, StreamingLLM): O(1).
  int oldest() const { return oldest_slot; }
};

/// A token that has just been stored: its key (as stored, i.e. rotated if the cache applies RoPE) and value.
/// `Scalar` is the storage type (Eigen::half or Eigen::bfloat16 in a 16-bit cache): read an element as
/// `double(token.key[i])`, which works for every storage type.
template <class Scalar>
struct TokenView {
  int slot;
  std::int64_t position;
  const Scalar* key;
  const Scalar* value;
  int head_dim;

  /// ||key||^2 and ||value||^2, summed in double.
  double key_squared_norm() const noexcept { return squared_norm(key); }
  double value_squared_norm() const noexcept { return squared_norm(value); }

 private:
  double squared_norm(const Scalar* x) const noexcept {
    double sum = 0.0;
    for (int i = 0; i < head_dim; ++i) sum += double(x[i]) * double(x[i]);
    return sum;
  }
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
struct has_select<P, std::void_t<decltype(std::declval<const P&>().select(std::declval<const SlotView&>()))>>
    : std::is_convertible<decltype(std::declval<const P&>().select(std::declval<const SlotView&>())), int> {};

template <class P, class = void>
struct has_score : std::false_type {};
template <class P>
struct has_score<P, std::void_t<decltype(double(std::declval<const P&>().score(0)))>> : std::true_type {};

template <class P, class = void>
struct has_protection : std::false_type {};
template <class P>
struct has_protection<P, std::void_t<decltype(Protect(std::declval<const P&>().protection(HeadContext{})))>>
    : std::true_type {};

// A protection() callable only on a non-const policy: one the cache would never see.
template <class P, class = void>
struct has_mutable_protection : std::false_type {};
template <class P>
struct has_mutable_protection<P, std::void_t<decltype(Protect(std::declval<P&>().protection(HeadContext{})))>>
    : std::bool_constant<!has_protection<P>::value> {};

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
struct has_layer_budget<P, std::void_t<decltype(int(std::declval<const P&>().layer_budget(0, 0, 0)))>>
    : std::true_type {};

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

template <class P, class = void>
struct shares_layer_budget_flag : std::false_type {};
template <class P>
struct shares_layer_budget_flag<P, std::void_t<decltype(P::shares_layer_budget)>>
    : std::bool_constant<P::shares_layer_budget> {};

struct NothingMore {
  bool operator()(std::int64_t /*position*/) const { return false; }
};

template <class P, class S, class Stored>
constexpr bool hooks_noexcept() {
  bool all = true;
  if constexpr (has_on_append<P, Stored>::value)
    all = all&& noexcept(std::declval<P&>().on_append(std::declval<const TokenView<Stored>&>()));
  if constexpr (has_observe<P, S>::value)
    all = all&& noexcept(std::declval<P&>().observe(std::declval<const AttentionView<S>&>()));
  if constexpr (has_select<P>::value)
    all = all&& noexcept(std::declval<const P&>().select(std::declval<const SlotView&>()));
  if constexpr (has_score<P>::value) all = all&& noexcept(std::declval<const P&>().score(0));
  if constexpr (has_protects<P>::value)
    all = all&& noexcept(std::declval<const P&>().protects(std::int64_t{}, std::int64_t{}));
  return all;
}

/// Derived derives from P and is not P: a wrapper such as with_sinks()'s Protected<P>, or Pyramid<P>, which
/// would lose what it adds if converted to P where a P is expected.
template <class P, class Derived>
inline constexpr bool slices_to_v = std::is_base_of_v<P, Derived> && !std::is_same_v<P, Derived>;
}  // namespace detail

#define KVEVICT_REFUSE_SLICED_POLICY(P, Derived)                                                            \
  static_assert(!::kvevict::detail::slices_to_v<P, Derived>,                                                \
                "kvevict: the policy passed is of a type derived from the Policy named in the type (a "     \
                "wrapper such as with_sinks()'s Protected<P> or a Pyramid<P>) and would lose what it adds " \
                "if converted: name its own type, e.g. KVCache<float, kvevict::Protected<P>>")

/// True when P can serve as an eviction policy (C++17 spelling of the EvictionPolicy concept).
template <class P>
inline constexpr bool is_eviction_policy_v = std::is_copy_constructible_v<P> &&
                                             (detail::has_select<P>::value || detail::has_score<P>::value);

#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
/// An eviction policy: copyable, and either scores slots or names a victim among them.
template <class P>
concept EvictionPolicy = is_eviction_policy_v<P>;
#endif

/// The evictable slot (SlotView::evictable) with the lowest score, leaving out the positions for which
/// `excluded` holds. On equal scores the older token goes, so the newer one is kept: the same answer on
/// every run and compiler. Returns -1 when nothing is left to choose. O(capacity), branch-free.
template <class Score, class Excluded = detail::NothingMore>
int lowest_score(const SlotView& slots, Score&& score, Excluded&& excluded = {}) {
  int victim = -1;
  double best = std::numeric_limits<double>::infinity();
  std::int64_t best_position = std::numeric_limits<std::int64_t>::max();
  for (int s = 0; s < slots.capacity; ++s) {
    // The winner changes rarely, but the tests against it are unpredictable: no branches.
    const std::int64_t p = slots.positions[s];
    // int operands: bitwise on purpose, and clang's -Wbitwise-instead-of-logical stays quiet.
    const bool eligible = (int(p != kFreeSlot) & int(!slots.protect.covers(p, slots.newest)) & int(!excluded(p))) != 0;
    const double v = eligible ? double(score(s)) : std::numeric_limits<double>::infinity();
    const bool better = (int(eligible) & (int(v < best) | (int(v == best) & int(p < best_position)))) != 0;
    victim = better ? s : victim;
    best = better ? v : best;
    best_position = better ? p : best_position;
  }
  return victim;
}

/// Static facts about a policy type, with the defaults of the optional hooks filled in.
template <class P>
struct policy_traits {
  static constexpr bool evicts = detail::evicts_flag<P>::value;
  static constexpr bool needs_logits = detail::needs_logits_flag<P>::value;
  static constexpr PositionMode position_mode = detail::position_mode_of<P>::value;
  /// Victims by lowest score(): the policy has score() and no select() (a select() of its own wins).
  static constexpr bool scores = detail::has_score<P>::value && !detail::has_select<P>::value;

  /// The budget of `layer`: the policy's layer_budget() if it has one, else the shape's budget.
  static int layer_budget(const P& policy, int layer, int n_layers, int budget) {
    if constexpr (detail::has_layer_budget<P>::value) return policy.layer_budget(layer, n_layers, budget);
    return budget;
  }

  /// The kv heads of a layer share n_kv_heads x budget tokens (AdaptiveHeads) instead of budget each.
  static constexpr bool shares_layer_budget = detail::shares_layer_budget_flag<P>::value;

  /// With a shared budget, the fewest tokens a head keeps: the policy's head_floor(budget).
  static int head_floor(const P& policy, int budget) {
    if constexpr (shares_layer_budget) return policy.head_floor(budget);
    return budget;
  }

  /// Every per-step hook the policy has (on_append, observe, select or score, protects) is declared noexcept
  /// for weights of type Scalar and tokens stored as Stored (on_append sees the stored rows: a half cache calls
  /// on_append(TokenView<Eigen::half>)). Otherwise a step could fail halfway, and KVCache pays for the strong
  /// guarantee with a copy of the layer's heads per call (see KVCache).
  template <class Scalar, class Stored = Scalar>
  static constexpr bool hooks_noexcept = detail::hooks_noexcept<P, Scalar, Stored>();

  /// What the policy declares it never evicts: its protection() if it has one, else nothing.
  static Protect protection(const P& policy, const HeadContext& context) {
    if constexpr (detail::has_protection<P>::value) return policy.protection(context);
    return Protect{};
  }
};

#define KVEVICT_CHECK_POLICY(P)                                                                              \
  static_assert(::kvevict::is_eviction_policy_v<P>,                                                          \
                "kvevict: not an eviction policy: the type must be copyable and provide either "             \
                "`double score(int slot) const` or `int select(const kvevict::SlotView&) const` returning "  \
                "the slot to evict (see kvevict/policy.hpp)");                                               \
  static_assert(!::kvevict::detail::has_mutable_protection<P>::value,                                        \
                "kvevict: the policy's protection() must be const, "                                         \
                "`kvevict::Protect protection(const kvevict::HeadContext&) const`; as it is it would never " \
                "be called and the policy's sinks and recent window would go unprotected")

}  // namespace kvevict

#endif  // KVEVICT_POLICY_HPP
