// SPDX-License-Identifier: Apache-2.0
// Streams synthetic K/V through every policy and shows what each one kept, and what that cost.
//
// The stream is built to have attention sinks: the first four keys point along the direction every query
// leans towards, so each query puts a large share of its attention on them, as trained LLMs do. Window
// attention throws them away once the stream passes its budget; StreamingLLM keeps them. For each policy the
// demo prints what it kept and how much of the last query's dense attention falls on what it kept.
#include <algorithm>
#include <cstdio>
#include <kvevict/kvevict.hpp>
#include <random>
#include <string>
#include <vector>

namespace {
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int kTokens = 4096, kBudget = 256, kHeadDim = 64, kQHeads = 3, kSinks = 4;

struct SyntheticStream {
  Matrix q, k, v;
  SyntheticStream() : q(kTokens, kQHeads * kHeadDim), k(kTokens, kHeadDim), v(kTokens, kHeadDim) {
    std::mt19937 rng(2024);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    for (int t = 0; t < kTokens; ++t) {
      for (int i = 0; i < q.cols(); ++i) q(t, i) = noise(rng) + (i % kHeadDim == 0 ? 3.0f : 0.0f);
      for (int i = 0; i < kHeadDim; ++i) {
        k(t, i) = noise(rng) + (t < kSinks && i == 0 ? 20.0f : 0.0f);
        v(t, i) = noise(rng);
      }
    }
  }
};

/// Dense attention weights of the last query (mean over its heads) on every token.
std::vector<double> last_query_weights(const SyntheticStream& s) {
  std::vector<double> mean(kTokens, 0.0);
  for (int h = 0; h < kQHeads; ++h) {
    std::vector<float> logits(kTokens);
    for (int j = 0; j < kTokens; ++j)
      logits[std::size_t(j)] = s.q.row(kTokens - 1).segment(h * kHeadDim, kHeadDim).dot(s.k.row(j)) / 8.0f;
    kvevict::normalize(logits.data(), kTokens, kvevict::Normalization::softmax);
    for (int j = 0; j < kTokens; ++j) mean[std::size_t(j)] += logits[std::size_t(j)] / kQHeads;
  }
  return mean;
}

template <class Policy>
void run(const char* name, const Policy& policy, int budget, const SyntheticStream& s,
         const std::vector<double>& dense_weights) {
  kvevict::KVCache<float, Policy> cache(kvevict::Shape{1, kQHeads, 1, kHeadDim, budget}, policy);
  Matrix out(kTokens, s.q.cols());
  for (int t = 0; t < kTokens; ++t) cache.forward(0, s.q.row(t), s.k.row(t), s.v.row(t), out.row(t));
  std::vector<std::int64_t> kept;
  const auto& slots = cache.head(0, 0).slots();
  for (int i = 0; i < slots.capacity(); ++i)
    if (slots.occupied(i)) kept.push_back(slots.position(i));
  std::sort(kept.begin(), kept.end());
  double captured = 0.0;
  for (std::int64_t p : kept) captured += dense_weights[std::size_t(p)];
  std::printf("%-14s kept %4zu tokens: %lld %lld %lld %lld ... %lld   dense attention kept: %5.1f%%\n", name,
              kept.size(), static_cast<long long>(kept[0]), static_cast<long long>(kept[1]),
              static_cast<long long>(kept[2]), static_cast<long long>(kept[3]), static_cast<long long>(kept.back()),
              100.0 * captured);
}
}  // namespace

int main() {
  const SyntheticStream stream;
  const std::vector<double> weights = last_query_weights(stream);
  std::printf("%d synthetic tokens, budget %d, %d query heads on one kv head, head_dim %d\n", kTokens, kBudget, kQHeads,
              kHeadDim);
  run("dense", kvevict::Dense{}, kTokens, stream, weights);
  run("window", kvevict::Window{}, kBudget, stream, weights);
  run("streaming_llm", kvevict::StreamingLLM{kSinks}, kBudget, stream, weights);
  return 0;
}
