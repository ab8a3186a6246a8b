// SPDX-License-Identifier: Apache-2.0
// The decode attention kernel beside its two yardsticks, in one binary so that every ratio comes from one run
// (and a prefill chunk through the kernel's two paths):
//   BM_ReadOnlyPass<S>  reads the same K and V bytes once: the memory floor of any decode attention over them;
//   BM_FmaPeak          independent FMAs at the kernel's vector width: this core's FMA rate, from which the
//                       arithmetic floor of the kernel's 2 * n * group * head_dim FMAs per step follows.
// scripts/bench_attention_report.py turns a JSON run into each kernel's share of both.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "bench_common.hpp"
#include "two_threads.hpp"

namespace {

template <class Storage>
struct Table {
  using Scalar = kvevict::compute_type_t<Storage>;
  using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using StoredRows = Eigen::Matrix<Storage, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  StoredRows k, v;
  Rows q, out, probs;
  std::vector<std::int64_t> pos;
  std::int64_t query_pos;
  Table(int n, int d, int group)
      : k(Rows::Random(n, d).template cast<Storage>()),
        v(Rows::Random(n, d).template cast<Storage>()),
        q(Rows::Random(1, group * d)),
        out(1, group * d),
        probs(group, n),
        pos(std::size_t(n)),
        query_pos(n) {
    for (int j = 0; j < n; ++j) pos[std::size_t(j)] = j;
  }
  std::int64_t bytes() const { return 2 * k.size() * std::int64_t(sizeof(Storage)); }

  /// One query token of the whole group over all n keys.
  kvevict::GroupAttention<Scalar, Storage> kernel_args() {
    return kvevict::GroupAttention<Scalar, Storage>{}
        .with_queries(q.data(), q.cols(), &query_pos, 1)
        .with_cache(k.data(), v.data(), pos.data(), int(k.rows()))
        .with_heads(int(probs.rows()), int(k.cols()))
        .with_weights(probs.data())
        .with_output(out.data(), out.cols());
  }
};

/// One decode step of one GQA group: `group` query heads over n keys. Counters: the FMAs of the two products
/// (q.k and p.v: 2 * n * group * head_dim) as a rate, for the arithmetic share.
template <class Storage>
void BM_AttentionKernel(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), d = static_cast<int>(state.range(1));
  const int group = static_cast<int>(state.range(2));
  Table<Storage> t(n, d, group);
  const kvevict::AttentionOptions options;
  const auto g = t.kernel_args();
  for (auto _ : state) {
    kvevict::attend_group(g, options);
    benchmark::DoNotOptimize(t.out.data());
  }
  state.SetBytesProcessed(state.iterations() * t.bytes());
  state.counters["fma"] =
      benchmark::Counter(2.0 * double(n) * group * d, benchmark::Counter::kIsIterationInvariantRate);
}

/// The same step with the keys split in two ranges, one per thread (a spinning two-thread pool): the
/// kernel's split-K path, against BM_AttentionKernel for the speed-up of a second core.
template <class Storage>
void BM_AttentionKernelTwoThreads(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), d = static_cast<int>(state.range(1));
  const int group = static_cast<int>(state.range(2));
  Table<Storage> t(n, d, group);
  testing_support::TwoThreads threads;
  kvevict::AttentionOptions options;
  options.key_splits = 2;
  options.parallel_for = threads.parallel_for();
  typename Table<Storage>::Rows partial(group, d);
  const auto g = t.kernel_args().with_split_scratch(partial.data());
  for (auto _ : state) {
    kvevict::attend_group(g, options);
    benchmark::DoNotOptimize(t.out.data());
  }
  state.SetBytesProcessed(state.iterations() * t.bytes());
}

/// A prefill chunk of `queries` tokens of one GQA group, the newest of n keys (causal within the chunk),
/// through the matrix products (products = 1: AttentionOptions::product_queries) or one dot product per query
/// row (0), for the products' speed-up in one run. Counter: the FMAs of both products, as for a decode step.
void BM_AttentionChunk(benchmark::State& state) {
  using Rows = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int n = static_cast<int>(state.range(0)), d = static_cast<int>(state.range(1));
  const int group = static_cast<int>(state.range(2)), queries = static_cast<int>(state.range(3));
  const Rows k = Rows::Random(n, d), v = Rows::Random(n, d), q = Rows::Random(queries, group * d);
  Rows out(queries, group * d), probs(queries * group, n);
  std::vector<std::int64_t> key_pos(std::size_t(n), 0), query_pos(std::size_t(queries), 0);
  for (int j = 0; j < n; ++j) key_pos[std::size_t(j)] = j;
  for (int t = 0; t < queries; ++t) query_pos[std::size_t(t)] = n - queries + t;
  kvevict::AttentionOptions options;
  if (state.range(4) == 0) options.product_queries = std::numeric_limits<int>::max();
  const auto g = kvevict::GroupAttention<float>{}
                     .with_queries(q.data(), q.cols(), query_pos.data(), queries)
                     .with_cache(k.data(), v.data(), key_pos.data(), n)
                     .with_heads(group, d)
                     .with_weights(probs.data())
                     .with_output(out.data(), out.cols());
  for (auto _ : state) {
    kvevict::attend_group(g, options);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["fma"] =
      benchmark::Counter(2.0 * double(n) * group * d * queries, benchmark::Counter::kIsIterationInvariantRate);
}

/// Reads the K and V bytes once, as 64-bit words summed: what the kernel must at least pay to read them.
template <class Storage>
void BM_ReadOnlyPass(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), d = static_cast<int>(state.range(1));
  Table<Storage> t(n, d, 1);
  const std::size_t words = std::size_t(t.k.size()) * sizeof(Storage) / sizeof(std::uint64_t);
  auto sum = [words](const void* bytes) {
    const auto* w = static_cast<const std::uint64_t*>(bytes);
    std::uint64_t s = 0;
    for (std::size_t i = 0; i < words; ++i) s += w[i];
    return s;
  };
  for (auto _ : state) {
    std::uint64_t s = sum(t.k.data()) + sum(t.v.data());
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(state.iterations() * t.bytes());
}

/// Twelve independent vectors of float FMAs as wide as the compiler's vector unit (8 floats with AVX2): enough
/// chains to cover the FMA latency on two ports, few enough to stay in registers. The counter is FMAs per
/// second on one core.
void BM_FmaPeak(benchmark::State& state) {
  constexpr int kLanes = 96, kSteps = 1024;
  alignas(64) float acc[kLanes];
  for (int i = 0; i < kLanes; ++i) acc[i] = 0.5f + 1e-3f * float(i);
  const float mul = 0.999f, add = 1e-4f;
  for (auto _ : state) {
    for (int s = 0; s < kSteps; ++s)
      for (float& a : acc) a = std::fma(a, mul, add);
    benchmark::DoNotOptimize(acc);
    benchmark::ClobberMemory();
  }
  state.counters["fma"] = benchmark::Counter(double(kLanes) * kSteps, benchmark::Counter::kIsIterationInvariantRate);
}

void kernel_sizes(benchmark::internal::Benchmark* b) {
  for (int d : {64, 128})
    for (int group : {1, 3, 4, 8})
      for (int n = 256; n <= 262144; n *= 4) b->Args({n, d, group});
}

void chunk_sizes(benchmark::internal::Benchmark* b) {
  for (int d : {64, 128})
    for (int queries : {16, 64})
      for (int n : {512, 4096})
        for (int products : {0, 1}) b->Args({n, d, 3, queries, products});
}

void pass_sizes(benchmark::internal::Benchmark* b) {
  for (int d : {64, 128})
    for (int n = 256; n <= 262144; n *= 4) b->Args({n, d});
}

BENCHMARK(BM_FmaPeak);
BENCHMARK_TEMPLATE(BM_AttentionKernel, float)->Apply(kernel_sizes);
BENCHMARK_TEMPLATE(BM_AttentionKernel, Eigen::half)->Apply(kernel_sizes);
BENCHMARK_TEMPLATE(BM_AttentionKernel, Eigen::bfloat16)->Apply(kernel_sizes);
void split_sizes(benchmark::internal::Benchmark* b) {
  for (int n : {65536, 262144}) b->Args({n, 128, 3})->UseRealTime();
}
BENCHMARK_TEMPLATE(BM_AttentionKernelTwoThreads, float)->Apply(split_sizes);
BENCHMARK_TEMPLATE(BM_AttentionKernelTwoThreads, Eigen::half)->Apply(split_sizes);
BENCHMARK(BM_AttentionChunk)->Apply(chunk_sizes);
BENCHMARK_TEMPLATE(BM_ReadOnlyPass, float)->Apply(pass_sizes);
BENCHMARK_TEMPLATE(BM_ReadOnlyPass, Eigen::half)->Apply(pass_sizes);
BENCHMARK_TEMPLATE(BM_ReadOnlyPass, Eigen::bfloat16)->Apply(pass_sizes);

}  // namespace
