// SPDX-License-Identifier: Apache-2.0
// The C++ side of the Python tests: runs one policy over K/V and queries read from a file, straight through
// kvevict::KVCache (no binding code), and writes every output and the final kept positions and scores, so
// that test_against_cpp.py can ask whether the same run through Python gives the same bits.
//
// usage: kvevict_trace POLICY KV_TYPE N_LAYERS N_Q_HEADS N_KV_HEADS HEAD_DIM BUDGET N_TOKENS MODE IN OUT
//   MODE: stream (a chunk of 8, then one token per step, forward()) or compress (max_prompt = N_TOKENS,
//   append + attend in chunks of 8, one evict() at the end).
//   IN: float32, per layer: queries N_TOKENS x (n_q * d), keys and values N_TOKENS x (n_kv * d).
//   OUT: outputs per layer (N_TOKENS x n_q * d; float32, or float64 for KV_TYPE f64, which computes in double
//   on the same inputs), then per (layer, kv head): int64 count, int64 positions (ascending), float64 scores
//   (NaN for policies without one).
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <kvevict/budgets.hpp>
#include <kvevict/kvevict.hpp>
#include <kvevict/policies/cache_positions.hpp>
#include <kvevict/policies/protected.hpp>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr int kChunk = 8;

struct Run {
  kvevict::Shape shape;
  int n_tokens = 0;
  bool compress = false;
  std::vector<Matrix> q, k, v;
};

template <class Storage, class Policy>
int trace(const Run& run, const Policy& policy, const char* out_path) {
  kvevict::CacheOptions options;
  options.max_chunk = kChunk;
  if (run.compress) options.max_prompt = run.n_tokens;
  using Cache = kvevict::KVCache<Storage, Policy>;
  using Compute = typename Cache::Matrix;
  Cache cache(run.shape, policy, options);
  std::ofstream out(out_path, std::ios::binary);
  for (int layer = 0; layer < run.shape.n_layers; ++layer) {
    Compute o(run.n_tokens, run.q[std::size_t(layer)].cols());
    const Compute q = run.q[std::size_t(layer)].cast<typename Cache::Scalar>();
    const Compute k = run.k[std::size_t(layer)].cast<typename Cache::Scalar>();
    const Compute v = run.v[std::size_t(layer)].cast<typename Cache::Scalar>();
    for (int t = 0; t < run.n_tokens;) {
      const int n = run.compress ? std::min(kChunk, run.n_tokens - t) : (t == 0 ? std::min(kChunk, run.n_tokens) : 1);
      Compute chunk_out(n, q.cols());
      if (run.compress) {
        cache.append(layer, k.middleRows(t, n), v.middleRows(t, n));
        cache.attend(layer, q.middleRows(t, n), chunk_out);
      } else {
        cache.forward(layer, q.middleRows(t, n), k.middleRows(t, n), v.middleRows(t, n), chunk_out);
      }
      o.middleRows(t, n) = chunk_out;
      t += n;
    }
    if (run.compress) cache.evict(layer);
    out.write(reinterpret_cast<const char*>(o.data()),
              std::streamsize(o.size()) * std::streamsize(sizeof(typename Cache::Scalar)));
  }
  for (int layer = 0; layer < run.shape.n_layers; ++layer)
    for (int h = 0; h < run.shape.n_kv_heads; ++h) {
      const auto& head = cache.head(layer, h);
      std::vector<std::pair<std::int64_t, int>> held;
      for (int s = 0; s < head.slots().capacity(); ++s)
        if (head.slots().occupied(s)) held.emplace_back(head.slots().position(s), s);
      std::sort(held.begin(), held.end());
      const auto count = std::int64_t(held.size());
      out.write(reinterpret_cast<const char*>(&count), sizeof count);
      for (const auto& [position, slot] : held) out.write(reinterpret_cast<const char*>(&position), sizeof position);
      for (const auto& [position, slot] : held) {
        double score = std::numeric_limits<double>::quiet_NaN();
        if constexpr (kvevict::policy_traits<Policy>::scores) score = head.policy().score(slot);
        out.write(reinterpret_cast<const char*>(&score), sizeof score);
      }
    }
  return out ? 0 : 1;
}

template <class Storage>
int by_policy(const std::string& name, const Run& run, const char* out) {
  using namespace kvevict;
  if (name == "dense") return trace<Storage>(run, Dense{}, out);
  if (name == "window") return trace<Storage>(run, Window{}, out);
  if (name == "recompute") return trace<Storage>(run, SlidingWindowRecompute{}, out);
  if (name == "streaming_llm") return trace<Storage>(run, StreamingLLM{4}, out);
  if (name == "h2o") return trace<Storage>(run, H2O{}, out);
  if (name == "ahakv") return trace<Storage>(run, AhaKV{}, out);
  if (name == "l2_norm") return trace<Storage>(run, L2Norm{}, out);
  if (name == "snapkv") return trace<Storage>(run, SnapKV{}, out);
  if (name == "tova") return trace<Storage>(run, TOVA{}, out);
  if (name == "h2o+sinks") return trace<Storage>(run, with_sinks(H2O{}, 4), out);
  if (name == "window+sinks") return trace<Storage>(run, with_sinks(Window{}, 2), out);
  if (name == "pyramid-h2o") return trace<Storage>(run, Pyramid<H2O>(H2O{}), out);
  if (name == "pyramid-streaming_llm") return trace<Storage>(run, Pyramid<StreamingLLM>(StreamingLLM{1}), out);
  if (name == "adakv-ahakv") return trace<Storage>(run, AdaptiveHeads<AhaKV>(AhaKV{}), out);
  if (name == "adakv-tova") return trace<Storage>(run, AdaptiveHeads<TOVA>(TOVA{}), out);
  if (name == "cachepos-h2o") return trace<Storage>(run, CachePositions<H2O>(H2O{}), out);
  if (name == "cachepos-l2_norm") return trace<Storage>(run, CachePositions<L2Norm>(L2Norm{}), out);
  std::fprintf(stderr, "kvevict_trace: unknown policy %s\n", name.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 12) {
    std::fprintf(stderr,
                 "usage: kvevict_trace POLICY KV_TYPE N_LAYERS N_Q N_KV HEAD_DIM BUDGET N_TOKENS MODE IN OUT\n");
    return 2;
  }
  Run run;
  run.shape = kvevict::Shape{}
                  .with_layers(std::atoi(argv[3]))
                  .with_q_heads(std::atoi(argv[4]))
                  .with_kv_heads(std::atoi(argv[5]))
                  .with_head_dim(std::atoi(argv[6]))
                  .with_budget(std::atoi(argv[7]));
  run.n_tokens = std::atoi(argv[8]);
  run.compress = std::string(argv[9]) == "compress";
  std::ifstream in(argv[10], std::ios::binary);
  const int qw = run.shape.n_q_heads * run.shape.head_dim, kw = run.shape.n_kv_heads * run.shape.head_dim;
  for (int layer = 0; layer < run.shape.n_layers; ++layer) {
    run.q.emplace_back(run.n_tokens, qw);
    run.k.emplace_back(run.n_tokens, kw);
    run.v.emplace_back(run.n_tokens, kw);
    for (Matrix* m : {&run.q.back(), &run.k.back(), &run.v.back()})
      in.read(reinterpret_cast<char*>(m->data()), std::streamsize(m->size()) * std::streamsize(sizeof(float)));
  }
  if (!in) {
    std::fprintf(stderr, "kvevict_trace: %s is shorter than the shape says\n", argv[10]);
    return 2;
  }
  const std::string type = argv[2];
  if (type == "f16") return by_policy<Eigen::half>(argv[1], run, argv[11]);
  if (type == "bf16") return by_policy<Eigen::bfloat16>(argv[1], run, argv[11]);
  if (type == "f64") return by_policy<double>(argv[1], run, argv[11]);
  return by_policy<float>(argv[1], run, argv[11]);
}
