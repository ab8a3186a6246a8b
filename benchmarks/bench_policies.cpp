// SPDX-License-Identifier: Apache-2.0
// Each policy's bookkeeping per decode step (admit + observe + select/evict) beside the attention step it
// rides on, at the same shape and budget, in one run: scripts/bench_ratios.py prints the ratios.
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.hpp"

namespace {
constexpr int kGroup = 3;  // SmolLM2: 9 query heads over 3 kv heads

/// A decode step's attention over a full head: `n` kept tokens plus the new one.
struct Step {
  int capacity, d;
  bench::Matrix k, v, q, out, probs, logits;
  std::vector<std::int64_t> pos;
  std::int64_t query_pos;
  Step(int n, int head_dim)
      : capacity(n + 1),
        d(head_dim),
        k(bench::random(capacity, d, 1)),
        v(bench::random(capacity, d, 2)),
        q(bench::random(1, kGroup * d, 3)),
        out(1, kGroup * d),
        probs(kGroup, capacity),
        logits(kGroup, capacity),
        pos(std::size_t(capacity)),
        query_pos(n) {
    for (int j = 0; j < capacity; ++j) pos[std::size_t(j)] = j;
  }
  void attend() {
    kvevict::attend_group(kvevict::GroupAttention<float>{}
                              .with_queries(q.data(), q.cols(), &query_pos, 1)
                              .with_cache(k.data(), v.data(), pos.data(), capacity)
                              .with_heads(kGroup, d)
                              .with_weights(probs.data(), logits.data())
                              .with_output(out.data(), out.cols()),
                          kvevict::AttentionOptions{});
  }
};

void BM_AttentionStep(benchmark::State& state) {
  Step step(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  for (auto _ : state) {
    step.attend();
    benchmark::DoNotOptimize(step.out.data());
  }
}

template <class Policy>
void BM_Bookkeeping(benchmark::State& state, Policy policy) {
  const int n = static_cast<int>(state.range(0)), d = static_cast<int>(state.range(1));
  Step step(n, d);
  step.attend();  // real weights and logits for the policy to read
  kvevict::Evictor<Policy> head(policy, kvevict::HeadContext{2, 0, 30, n, n + 1, d, kGroup});
  std::int64_t next = 0;
  for (; next < n; ++next) head.admit(next, step.k.row(next).data(), step.v.row(next).data());
  for (auto _ : state) {
    const int slot = head.next_free_slot();
    head.admit(next, step.k.row(slot).data(), step.v.row(slot).data());
    step.query_pos = next;
    head.observe(kvevict::AttentionView<float>{step.probs.data(), step.logits.data(), 0.125, &step.query_pos, 1, kGroup,
                                               head.view()});
    benchmark::DoNotOptimize(head.evict_one());
    ++next;
  }
}

void budgets(benchmark::internal::Benchmark* b) {
  for (int d : {64, 128})
    for (int n = 512; n <= 8192; n *= 2) b->Args({n, d});
}

BENCHMARK(BM_AttentionStep)->Apply(budgets);
BENCHMARK_CAPTURE(BM_Bookkeeping, window, kvevict::Window{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_Bookkeeping, streaming_llm, kvevict::StreamingLLM{4})->Apply(budgets);
BENCHMARK_CAPTURE(BM_Bookkeeping, h2o, kvevict::H2O{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_Bookkeeping, ahakv, kvevict::AhaKV{})->Apply(budgets);
BENCHMARK_CAPTURE(BM_Bookkeeping, l2_norm, kvevict::L2Norm{})->Apply(budgets);

}  // namespace
