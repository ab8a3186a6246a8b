// SPDX-License-Identifier: Apache-2.0
// The attention kernel alone beside a read-only pass over the same K/V bytes: the memory bound of decode.
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.hpp"

namespace {

struct Table {
  bench::Matrix k, v, q, out, probs;
  std::vector<std::int64_t> pos;
  std::int64_t query_pos;
  Table(int n, int d, int group)
      : k(bench::random(n, d, 1)),
        v(bench::random(n, d, 2)),
        q(bench::random(1, group * d, 3)),
        out(1, group * d),
        probs(group, n),
        pos(std::size_t(n)),
        query_pos(n) {
    for (int j = 0; j < n; ++j) pos[std::size_t(j)] = j;
  }
  std::int64_t bytes() const { return 2 * k.size() * std::int64_t(sizeof(float)); }
};

void BM_AttentionKernel(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), d = static_cast<int>(state.range(1)), group = 3;
  Table t(n, d, group);
  const kvevict::AttentionOptions options;
  for (auto _ : state) {
    kvevict::attend_group(
        kvevict::GroupAttention<float>{t.q.data(), t.q.cols(), t.k.data(), t.v.data(), t.pos.data(), &t.query_pos, 1,
                                       group, n, d, t.probs.data(), nullptr, t.out.data(), t.out.cols()},
        options);
    benchmark::DoNotOptimize(t.out.data());
  }
  state.SetBytesProcessed(state.iterations() * t.bytes());
}

/// Reads K and V once and sums them: the floor any decode attention over these bytes must pay.
void BM_ReadOnlyPass(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), d = static_cast<int>(state.range(1));
  Table t(n, d, 1);
  for (auto _ : state) {
    float sum = t.k.sum() + t.v.sum();
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(state.iterations() * t.bytes());
}

void sizes(benchmark::internal::Benchmark* b) {
  for (int d : {64, 128})
    for (int n = 256; n <= 262144; n *= 4) b->Args({n, d});
}

BENCHMARK(BM_AttentionKernel)->Apply(sizes);
BENCHMARK(BM_ReadOnlyPass)->Apply(sizes);

}  // namespace
