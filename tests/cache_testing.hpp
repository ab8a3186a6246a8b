// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the cache tests: random token streams and a full snapshot of a cache's state.
#ifndef KVEVICT_TESTS_CACHE_TESTING_HPP
#define KVEVICT_TESTS_CACHE_TESTING_HPP

#include <cstdint>
#include <kvevict/kv_cache.hpp>
#include <random>
#include <vector>

namespace testing_support {

/// Tokens of the long-stream tests: a million, where the drift they guard against had reached 7e-4. Under
/// AddressSanitizer, which looks for memory errors rather than drift, a tenth of it; the optimised
/// configurations stream the million.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr long kLongStreamTokens = 100000;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr long kLongStreamTokens = 100000;
#else
inline constexpr long kLongStreamTokens = 1000000;
#endif
#else
inline constexpr long kLongStreamTokens = 1000000;
#endif

template <class Matrix>
Matrix random_matrix(std::mt19937& rng, std::ptrdiff_t rows, std::ptrdiff_t cols, double stddev = 1.0) {
  std::normal_distribution<double> dist(0.0, stddev);
  Matrix m(rows, cols);
  for (std::ptrdiff_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<typename Matrix::Scalar>(dist(rng));
  return m;
}

/// Per-token queries, keys and values for every layer of a stream, made up front.
template <class Scalar>
struct Stream {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::vector<Matrix> q, k, v;  // [layer]: n_tokens x width

  Stream(const kvevict::Shape& s, int n_tokens, unsigned seed) {
    std::mt19937 rng(seed);
    for (int l = 0; l < s.n_layers; ++l) {
      q.push_back(random_matrix<Matrix>(rng, n_tokens, std::ptrdiff_t(s.n_q_heads) * s.head_dim));
      k.push_back(random_matrix<Matrix>(rng, n_tokens, std::ptrdiff_t(s.n_kv_heads) * s.head_dim));
      v.push_back(random_matrix<Matrix>(rng, n_tokens, std::ptrdiff_t(s.n_kv_heads) * s.head_dim));
    }
  }
};

/// Everything observable about a cache; equal snapshots mean nothing changed.
template <class Cache>
struct Snapshot {
  std::vector<typename Cache::StoredMatrix> keys, values;
  std::vector<std::vector<std::int64_t>> positions, rotated_at;
  std::vector<std::int64_t> n_seen;

  explicit Snapshot(const Cache& c) {
    const auto& s = c.shape();
    for (int l = 0; l < s.n_layers; ++l) {
      n_seen.push_back(c.n_seen(l));
      for (int h = 0; h < s.n_kv_heads; ++h) {
        keys.push_back(c.keys(l, h));
        values.push_back(c.values(l, h));
        const auto& slots = c.head(l, h).slots();
        std::vector<std::int64_t> p, r;
        for (int i = 0; i < slots.capacity(); ++i) {
          p.push_back(slots.position(i));
          r.push_back(slots.rotated_at(i));
        }
        positions.push_back(p);
        rotated_at.push_back(r);
      }
    }
  }
  bool operator==(const Snapshot& o) const {
    if (positions != o.positions || rotated_at != o.rotated_at || n_seen != o.n_seen) return false;
    for (std::size_t i = 0; i < keys.size(); ++i)
      if (keys[i] != o.keys[i] || values[i] != o.values[i]) return false;
    return true;
  }
};

}  // namespace testing_support

#endif  // KVEVICT_TESTS_CACHE_TESTING_HPP
