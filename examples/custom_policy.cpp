// SPDX-License-Identifier: Apache-2.0
// A policy of one's own, in the lines between the two rulers below, used two ways: through KVCache (kvevict
// owns the K/V) and through Evictor (the engine owns the K/V, here a plain vector of rows). Both keep the
// same tokens, and the policy gets sinks by one line of composition.
//
// The policy is TOVA ("Transformers are Multi-State RNNs", Oren et al., arXiv 2401.06104): evict the token
// the newest query attends to least. A score policy says only what a slot is worth; the Evictor applies the
// protection it declares and takes the lowest score (the older token on ties).
#include <cstdio>
#include <kvevict/kvevict.hpp>
#include <random>
#include <set>
#include <vector>

// ---------------------------------------------------------------------------------------------------------
/// The newest query's attention, averaged over the query heads of the group, is each token's score.
struct LastQueryAttention {
  std::vector<float> weight;  // per slot

  // The newest token has not been attended to by a later query yet: keep it.
  kvevict::Protect protection(const kvevict::HeadContext& /*head*/) const { return kvevict::Protect{0, 1}; }

  void init(const kvevict::HeadContext& head) { weight.assign(std::size_t(head.capacity), 0.0f); }

  // noexcept: the cache need not keep a copy to restore should a step throw halfway.
  template <class Scalar>
  void observe(const kvevict::AttentionView<Scalar>& attention) noexcept {
    const int newest = attention.n_queries - 1;  // of a prefill chunk, only its last query counts
    for (int slot = 0; slot < attention.slots.capacity; ++slot) {
      float sum = 0.0f;
      for (int h = 0; h < attention.group; ++h) sum += float(attention.prob(newest * attention.group + h, slot));
      weight[std::size_t(slot)] = sum / float(attention.group);
    }
  }

  double score(int slot) const noexcept { return weight[std::size_t(slot)]; }
};
// ---------------------------------------------------------------------------------------------------------

namespace {
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr int kHeadDim = 16, kGroup = 2, kBudget = 24, kTokens = 400;

Matrix random(std::mt19937& rng, int rows, int cols) {
  std::normal_distribution<float> normal;
  Matrix m(rows, cols);
  for (int i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

template <class Positions>
void print(const char* name, const Positions& kept) {
  std::printf("%-34s", name);
  for (auto p : kept) std::printf(" %lld", static_cast<long long>(p));
  std::printf("\n");
}
}  // namespace

int main() {
  std::mt19937 rng(7);
  const Matrix q = random(rng, kTokens, kGroup * kHeadDim), k = random(rng, kTokens, kHeadDim),
               v = random(rng, kTokens, kHeadDim);
  const kvevict::Shape shape{1, kGroup, 1, kHeadDim, kBudget};  // layers, query heads, kv heads, head_dim, budget

  // 1. Through KVCache: kvevict stores the K/V, attends and evicts.
  kvevict::KVCache<float, LastQueryAttention> cache(shape);
  Matrix out(1, kGroup * kHeadDim);
  for (int t = 0; t < kTokens; ++t) cache.forward(0, q.row(t), k.row(t), v.row(t), out);
  std::set<std::int64_t> by_cache;
  const auto& slots = cache.head(0, 0).slots();
  for (int s = 0; s < slots.capacity(); ++s)
    if (slots.occupied(s)) by_cache.insert(slots.position(s));

  // 2. Through Evictor: the engine keeps the rows and runs its own attention (here the library's kernel).
  const kvevict::HeadContext head{0, 0, 1, kBudget, kBudget + 1, kHeadDim, kGroup};
  kvevict::Evictor<LastQueryAttention> evictor(LastQueryAttention{}, head);
  Matrix keys = Matrix::Zero(head.capacity, kHeadDim), values = Matrix::Zero(head.capacity, kHeadDim);
  Matrix probs(kGroup, head.capacity);
  Eigen::VectorXf row(kGroup * kHeadDim);
  for (int t = 0; t < kTokens; ++t) {
    const int slot = evictor.next_free_slot();  // rule 1: write the rows, then admit
    keys.row(slot) = k.row(t);
    values.row(slot) = v.row(t);
    evictor.admit(t, keys.row(slot).data(), values.row(slot).data());
    const std::int64_t position = t;
    const auto attention = kvevict::GroupAttention<float>{}
                               .with_queries(q.row(t).data(), q.cols(), &position, 1)
                               .with_cache(keys.data(), values.data(), evictor.slots().positions(), head.capacity,
                                           evictor.slots().high_water())
                               .with_heads(kGroup, kHeadDim)
                               .with_weights(probs.data())
                               .with_output(row.data(), row.size());
    kvevict::attend_group(attention, kvevict::AttentionOptions{}, 0);
    // rule 2: show the weights to the policy; rule 3: evict back to the budget
    evictor.observe(kvevict::AttentionView<float>{probs.data(), nullptr, 0.25, &position, 1, kGroup, evictor.view()});
    while (evictor.over_budget()) evictor.evict_one();
  }
  std::set<std::int64_t> by_evictor;
  for (int s = 0; s < evictor.slots().capacity(); ++s)
    if (evictor.slots().occupied(s)) by_evictor.insert(evictor.slots().position(s));

  // 3. Composition: the same policy with the first 4 tokens kept for good.
  auto with_sinks = kvevict::with_sinks(LastQueryAttention{}, 4);
  kvevict::KVCache<float, decltype(with_sinks)> sinks_cache(shape, with_sinks);
  for (int t = 0; t < kTokens; ++t) sinks_cache.forward(0, q.row(t), k.row(t), v.row(t), out);
  std::set<std::int64_t> by_sinks;
  for (int s = 0; s < sinks_cache.capacity(); ++s)
    if (sinks_cache.head(0, 0).slots().occupied(s)) by_sinks.insert(sinks_cache.head(0, 0).slots().position(s));

  // 4. The library ships TOVA too (kvevict/policies/tova.hpp), the newest token kept as here.
  kvevict::KVCache<float, kvevict::TOVA> library_cache(shape);
  for (int t = 0; t < kTokens; ++t) library_cache.forward(0, q.row(t), k.row(t), v.row(t), out);
  std::set<std::int64_t> by_library;
  for (int s = 0; s < library_cache.capacity(); ++s)
    if (library_cache.head(0, 0).slots().occupied(s)) by_library.insert(library_cache.head(0, 0).slots().position(s));

  std::printf("TOVA (evict what the newest query attends to least), budget %d, after %d tokens:\n", kBudget, kTokens);
  print("kept through KVCache:", by_cache);
  print("kept through Evictor (own memory):", by_evictor);
  print("kept with 4 sinks added:", by_sinks);
  print("kept by kvevict::TOVA:", by_library);
  const bool same = by_cache == by_evictor && by_cache == by_library;
  const bool sinks_kept = by_sinks.count(0) && by_sinks.count(1) && by_sinks.count(2) && by_sinks.count(3);
  std::printf("KVCache, Evictor and kvevict::TOVA agree: %s; sinks kept: %s\n", same ? "yes" : "NO",
              sinks_kept ? "yes" : "NO");
  return same && sinks_kept ? 0 : 1;
}
