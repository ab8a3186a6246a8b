// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_BENCHMARKS_COMMON_HPP
#define KVEVICT_BENCHMARKS_COMMON_HPP

#include <kvevict/kvevict.hpp>
#include <random>

namespace bench {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline Matrix random(std::ptrdiff_t rows, std::ptrdiff_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Matrix m(rows, cols);
  for (std::ptrdiff_t i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
  return m;
}

/// One layer, SmolLM2's grouping (3 query heads per kv head), one kv head: the unit that scales.
inline kvevict::Shape shape(int budget, int head_dim) { return kvevict::Shape{1, 3, 1, head_dim, budget}; }

/// A cache of `Policy` filled to its budget, so that every further step evicts.
template <class Policy>
kvevict::KVCache<float, Policy> full_cache(const kvevict::Shape& s, const Policy& policy = Policy{}) {
  kvevict::CacheOptions options;
  options.max_chunk = 64;
  options.rope = kvevict::Rope(s.head_dim, 10000.0);
  kvevict::KVCache<float, Policy> cache(s, policy, options);
  const Matrix q = random(64, s.n_q_heads * s.head_dim, 1), kv = random(64, s.n_kv_heads * s.head_dim, 2);
  Matrix out(64, q.cols());
  for (int t = 0; t < s.budget; t += 64) cache.forward(0, q, kv, kv, out);
  return cache;
}

}  // namespace bench

#endif  // KVEVICT_BENCHMARKS_COMMON_HPP
