// SPDX-License-Identifier: Apache-2.0
// The policies every typed suite runs over. A new policy joins every shared invariant by one line here.
#ifndef KVEVICT_TESTS_POLICIES_UNDER_TEST_HPP
#define KVEVICT_TESTS_POLICIES_UNDER_TEST_HPP

#include <gtest/gtest.h>

#include <kvevict/kvevict.hpp>

namespace testing_support {

using kvevict::Protected;

/// One cache type of the typed suites: a policy over a storage type.
template <class Storage, class Policy>
struct Case {
  using storage = Storage;
  using policy = Policy;
  using cache = kvevict::KVCache<Storage, Policy>;
};

namespace detail {
template <class... T>
struct List {};
template <class... Lists>
struct Concat;
template <class... A>
struct Concat<List<A...>> {
  using type = List<A...>;
};
template <class... A, class... B, class... Rest>
struct Concat<List<A...>, List<B...>, Rest...> : Concat<List<A..., B...>, Rest...> {};
template <class Storage, class Policies>
struct Row;
template <class Storage, class... P>
struct Row<Storage, List<P...>> {
  using type = List<Case<Storage, P>...>;
};
template <class Storages, class Policies>
struct Product;
template <class... S, class Policies>
struct Product<List<S...>, Policies> : Concat<typename Row<S, Policies>::type...> {};
template <class L>
struct AsTypes;
template <class... T>
struct AsTypes<List<T...>> {
  using type = ::testing::Types<T...>;
};

using Policies =
    List<kvevict::Dense, kvevict::Window, kvevict::StreamingLLM, kvevict::SlidingWindowRecompute, kvevict::H2O,
         kvevict::AhaKV, kvevict::L2Norm, kvevict::SnapKV, kvevict::TOVA, Protected<kvevict::Window>,
         Protected<kvevict::H2O>, Protected<kvevict::AhaKV>, Protected<Protected<kvevict::L2Norm>>,
         kvevict::Pyramid<kvevict::H2O>, kvevict::AdaptiveHeads<kvevict::AhaKV>,
         kvevict::Pyramid<kvevict::AdaptiveHeads<kvevict::H2O>>, kvevict::CachePositions<kvevict::AhaKV>>;
using Storages = List<float, double, Eigen::half, Eigen::bfloat16>;
}  // namespace detail

using AllPolicies = detail::AsTypes<detail::Policies>::type;
/// The types K and V can be stored in.
using AllStorages = detail::AsTypes<detail::Storages>::type;
/// Every policy over every storage type.
using AllCases = detail::AsTypes<detail::Product<detail::Storages, detail::Policies>::type>::type;

/// Tokens all kv heads of `layer` hold together.
template <class Cache>
long layer_held(const Cache& cache, int layer) {
  long held = 0;
  for (int h = 0; h < cache.shape().n_kv_heads; ++h) held += cache.size(layer, h);
  return held;
}

/// What the kv heads of `layer` may hold together after a step: their budgets (the layer's own, for a
/// per-layer schedule), summed.
template <class Cache>
long layer_total(const Cache& cache, int layer) {
  return long(cache.shape().n_kv_heads) * cache.head(layer, 0).context().budget;
}

/// The shared suites build each policy with its defaults, which must be valid for any budget >= 8 (and a
/// layer budget of 1 under a pyramid); a composed policy gets 2 sinks, and L2 a recent window of 4 under
/// them (a composition of compositions).
template <class Policy>
struct Make {
  static Policy policy() { return Policy{}; }
};
template <class Policy>
struct Make<Protected<Policy>> {
  static Protected<Policy> policy() { return kvevict::with_sinks(Policy{}, 2); }
};
template <>
struct Make<Protected<Protected<kvevict::L2Norm>>> {
  static auto policy() { return kvevict::with_sinks(kvevict::with_recent(kvevict::L2Norm{}, 4), 2); }
};

template <class Policy>
Policy make_policy() {
  return Make<Policy>::policy();
}

}  // namespace testing_support

#endif  // KVEVICT_TESTS_POLICIES_UNDER_TEST_HPP
