// SPDX-License-Identifier: Apache-2.0
// The example engine's quantised matrix products beside a read-only pass over the same weight bytes: how
// close the integer dot products come to the memory bound, in cache (a layer's FFN matrix, 0.5 MB) and from
// memory (48 MB, past the last-level cache), for one activation column (decode) and several (batched).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "quant.hpp"

namespace {

struct Weights {
  std::vector<std::uint8_t> bytes;
  llama::quant::QuantMatrix matrix;
  Weights(gguf::Type type, std::int64_t rows, int cols) {
    const auto [block_bytes, values] = gguf::block_layout(type);
    const std::size_t blocks = std::size_t(rows) * std::size_t(cols) / values;
    bytes.resize(blocks * block_bytes);
    std::mt19937 rng(1);
    for (auto& b : bytes) b = std::uint8_t(rng());
    const std::uint16_t scale = 0x2C00;  // fp16 0.0625: finite scales and minimums
    for (std::size_t b = 0; b < blocks; ++b) {
      std::memcpy(&bytes[b * block_bytes], &scale, 2);
      if (type == gguf::Type::Q4_1) std::memcpy(&bytes[b * block_bytes + 2], &scale, 2);
    }
    gguf::TensorInfo info{"w",         {std::uint64_t(cols), std::uint64_t(rows)}, type,
                          0,           std::uint64_t(rows) * std::uint64_t(cols),  bytes.size(),
                          bytes.data()};
    matrix = llama::quant::QuantMatrix(info);
  }
};

// Args: type, rows, activation columns, rows per call (0: all; the engine shares rows out to its threads 32 at a
// time). SmolLM2's rows are 576 values wide (1536 for ffn_down).
void BM_QuantProduct(benchmark::State& state) {
  const auto type = static_cast<gguf::Type>(state.range(0));
  const int cols = 576, n_cols = static_cast<int>(state.range(2));
  const std::int64_t chunk = state.range(3) > 0 ? state.range(3) : state.range(1);
  Weights w(type, state.range(1), cols);
  std::vector<float> x(std::size_t(cols) * std::size_t(n_cols));
  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  llama::quant::Activations xq;
  xq.quantize(x.data(), cols, n_cols);
  std::vector<float> out(std::size_t(w.matrix.rows()) * std::size_t(n_cols));
  for (auto _ : state) {
    for (std::int64_t r = 0; r < w.matrix.rows(); r += chunk)
      w.matrix.multiply_rows(xq, r, std::min(r + chunk, w.matrix.rows()), out.data(), w.matrix.rows());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * std::int64_t(w.bytes.size()));
  state.counters["MACs/s"] = benchmark::Counter(double(w.matrix.rows()) * cols * n_cols * double(state.iterations()),
                                                benchmark::Counter::kIsRate);
  state.SetLabel(llama::quant::implementation());
}

/// Reads the same bytes once and sums them as 64-bit words: the floor a product over them must pay.
void BM_ReadOnlyPass(benchmark::State& state) {
  Weights w(static_cast<gguf::Type>(state.range(0)), state.range(1), 576);
  const std::size_t words = w.bytes.size() / 8;
  std::vector<std::uint64_t> data(words);
  std::memcpy(data.data(), w.bytes.data(), words * 8);
  for (auto _ : state) {
    std::uint64_t sum = std::accumulate(data.begin(), data.end(), std::uint64_t{0});
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(state.iterations() * std::int64_t(words * 8));
}

constexpr int kQ4_1 = int(gguf::Type::Q4_1), kQ8_0 = int(gguf::Type::Q8_0);

void products(benchmark::internal::Benchmark* b) {
  for (int type : {kQ4_1, kQ8_0})
    for (int rows : {1536, 131072})
      for (int n_cols : {1, 4, 16, 64})
        if (rows == 1536 || n_cols <= 4) b->Args({type, rows, n_cols, 0});
  for (int type : {kQ4_1, kQ8_0}) b->Args({type, 131072, 16, 32});  // sixteen sequences side by side
}
void passes(benchmark::internal::Benchmark* b) {
  for (int type : {kQ4_1, kQ8_0})
    for (int rows : {1536, 131072}) b->Args({type, rows});
}

BENCHMARK(BM_QuantProduct)->Apply(products);
BENCHMARK(BM_ReadOnlyPass)->Apply(passes);

}  // namespace
