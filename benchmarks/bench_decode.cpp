// SPDX-License-Identifier: Apache-2.0
// One decode step per policy (append + attention + evict) on a full cache, and the eviction alone.
// Dense is absent: it never evicts, so it has no steady state; its step is the attention (bench_attention).
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

namespace {

template <class Policy>
void BM_DecodeStep(benchmark::State& state, Policy policy) {
  const auto s = bench::shape(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  auto cache = bench::full_cache(s, policy);
  const bench::Matrix q = bench::random(1, s.n_q_heads * s.head_dim, 3), kv = bench::random(1, s.head_dim, 4);
  bench::Matrix out(1, q.cols());
  for (auto _ : state) {
    cache.forward(0, q, kv, kv, out);
    benchmark::DoNotOptimize(out.data());
  }
  // Decode reads every held K and V row once.
  state.SetBytesProcessed(state.iterations() * 2 * std::int64_t(s.budget) * s.head_dim * std::int64_t(sizeof(float)));
}

/// append + evict without attention: the eviction path alone. Flat across budgets means O(1) per token.
template <class Policy>
void BM_AppendEvict(benchmark::State& state, Policy policy) {
  const auto s = bench::shape(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  auto cache = bench::full_cache(s, policy);
  const bench::Matrix kv = bench::random(1, s.head_dim, 4);
  for (auto _ : state) {
    cache.append(0, kv, kv);
    cache.evict(0);
  }
  state.SetItemsProcessed(state.iterations());
}

void budgets(benchmark::internal::Benchmark* b) {
  for (int d : {64, 128})
    for (int n = 256; n <= 8192; n *= 2) b->Args({n, d});
}

BENCHMARK_CAPTURE(BM_DecodeStep, window, kvevict::Window{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_DecodeStep, streaming_llm, kvevict::StreamingLLM{4})->Apply(budgets);
BENCHMARK_CAPTURE(BM_DecodeStep, h2o, kvevict::H2O{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_DecodeStep, ahakv, kvevict::AhaKV{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_DecodeStep, l2_norm, kvevict::L2Norm{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_AppendEvict, window, kvevict::Window{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_AppendEvict, streaming_llm, kvevict::StreamingLLM{4})->Apply(budgets);

}  // namespace
