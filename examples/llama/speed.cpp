// SPDX-License-Identifier: Apache-2.0
// The engine's speed on the real model, each figure from one run:
//   decode     one sequence, one token per step after a 16-token prompt and 16 warm-up steps (tokens/s)
//   prefill    512 tokens in chunks of 64 (tokens/s)
//   batched    N sequences side by side, StreamingLLM caches at budget 256, one token each per step
//              (sequence-tokens/s: what kvevict_eval does when it compares policies)
//   recompute  sliding window with recompute against StreamingLLM alone, seconds per token at each budget
//
//   kvevict_speed --model M.gguf --text novel.txt [--threads 2] [--sequences 16] [--budgets 256,1024]
//                 [--decode-steps 240]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One token per step through `caches` side by side, `steps` times; returns seconds.
double decode(const llama::Model& model, const std::vector<llama::SequenceCache*>& caches, const std::vector<int>& ids,
              int first, int steps) {
  std::vector<llama::Segment> segments(caches.size());
  const auto start = std::chrono::steady_clock::now();
  for (int t = first; t < first + steps; ++t) {
    for (std::size_t i = 0; i < caches.size(); ++i) segments[i] = llama::Segment{caches[i], &ids[std::size_t(t)], 1};
    model.forward(segments);
  }
  return seconds_since(start);
}

constexpr const char* kUsage =
    "usage: kvevict_speed --model M.gguf --text novel.txt [options]\n"
    "The engine's speed on the real model: decode, prefill, N sequences side by side, and sliding window with\n"
    "recompute against StreamingLLM at each budget.\n"
    "  --threads N           worker threads (default: the model's, one per core)\n"
    "  --sequences N         sequences side by side in the batched run, 1-1024 (default 16)\n"
    "  --budgets B[,B...]    budgets of the recompute runs, 1-8192 (default 256,1024)\n"
    "  --decode-steps N      steps of the decode run, 1-4000 (default 240; more for a profile of decode)\n"
    "  -h, --help            this text\n";

int usage(const std::string& why) {
  std::cerr << "kvevict_speed: " << why << " (--help)\n";
  return 2;
}

// `v` as an int in [low, high]; std::invalid_argument naming the range otherwise.
int bounded(const std::string& v, int low, int high) {
  int n = 0;
  try {
    n = cli::number<int>(v);
  } catch (const std::exception&) {
    n = low - 1;
  }
  if (n < low || n > high)
    throw std::invalid_argument("expected an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                                "], got " + v);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, text_path;
  int threads = 0, sequences = 16, decode_steps = 240;
  std::vector<int> budgets{256, 1024};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (!cli::has_value(argc, argv, i)) return usage("missing value after " + a);
    const std::string v = argv[++i];
    try {
      if (a == "--model") {
        model_path = v;
      } else if (a == "--text") {
        text_path = v;
      } else if (a == "--threads") {
        threads = bounded(v, 1, 256);
      } else if (a == "--sequences") {
        sequences = bounded(v, 1, 1024);
      } else if (a == "--decode-steps") {
        decode_steps = bounded(v, 1, 4000);
      } else if (a == "--budgets") {
        budgets.clear();
        for (const auto& b : cli::split(v)) budgets.push_back(bounded(b, 1, 8192));
        if (budgets.empty()) return usage("--budgets names no budget");
      } else {
        return usage("unknown option " + a);
      }
    } catch (const std::invalid_argument& e) {
      return usage(a + ": " + e.what());
    }
  }
  if (model_path.empty() || text_path.empty()) return usage("--model and --text are required");
  try {
    const gguf::File file(model_path);
    llama::Model model(file);
    if (threads > 0) model.set_threads(threads);
    const llama::Tokenizer tokenizer(file);
    std::ifstream in(text_path);
    if (!in) throw std::runtime_error("cannot read " + text_path);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::vector<int> ids = tokenizer.encode(llama::normalize_text(ss.str().substr(0, 40000)));
    if (ids.size() < 4096)
      throw std::runtime_error(text_path + " gives " + std::to_string(ids.size()) +
                               " tokens in its first 40,000 characters; the speed runs need 4096");
    for (int b : budgets)  // the recompute runs read up to token b + 128
      if (std::size_t(b) + 129 > ids.size())
        throw std::runtime_error("--budgets " + std::to_string(b) + " needs " + std::to_string(b + 129) +
                                 " tokens of text; " + text_path + " gives " + std::to_string(ids.size()) +
                                 " in its first 40,000 characters");
    std::printf("kvevict engine, %s products, %d threads\n", llama::quant::implementation(), model.threads());

    {  // decode
      auto cache = model.make_cache<kvevict::Dense>(32 + decode_steps, {}, 16);
      model.prefill(*cache, ids.data(), 16);
      decode(model, {cache.get()}, ids, 16, 16);  // warm-up
      const double s = decode(model, {cache.get()}, ids, 32, decode_steps);
      std::printf("decode:    %8.1f tokens/s (one sequence, dense cache)\n", decode_steps / s);
    }
    {  // prefill
      auto cache = model.make_cache<kvevict::Dense>(512, {}, 64);
      const auto start = std::chrono::steady_clock::now();
      model.prefill(*cache, ids.data(), 512);
      std::printf("prefill:   %8.1f tokens/s (512 tokens, chunks of 64)\n", 512 / seconds_since(start));
    }
    {  // batched
      std::vector<std::unique_ptr<llama::SequenceCache>> owned;
      std::vector<llama::SequenceCache*> caches;
      for (int i = 0; i < sequences; ++i) {
        owned.push_back(model.make_cache(256, kvevict::StreamingLLM{4}, 1));
        caches.push_back(owned.back().get());
      }
      decode(model, caches, ids, 0, 300);  // fill past the budget: every step evicts
      const int steps = 64;
      const double s = decode(model, caches, ids, 300, steps);
      std::printf("batched:   %8.1f sequence-tokens/s (%d sequences, StreamingLLM at 256, %.1f steps/s)\n",
                  sequences * steps / s, sequences, steps / s);
    }
    for (int b : budgets) {  // recompute against StreamingLLM alone
      auto streaming = model.make_cache(b, kvevict::StreamingLLM{4}, 64);
      model.prefill(*streaming, ids.data(), b + 64);
      const int steps = 64;
      const double stream_s = decode(model, {streaming.get()}, ids, b + 64, steps) / steps;
      auto recompute = model.make_cache<kvevict::SlidingWindowRecompute>(b, {}, 64);
      const int tokens = 4;
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < tokens; ++i) {
        const int t = b + 64 + i;  // the window before token t, then t: what recompute does for every token
        const auto range = kvevict::SlidingWindowRecompute::recompute_range(t, b);
        recompute->clear();
        const int begin = range.empty() ? 0 : int(range.begin);
        model.prefill(*recompute, &ids[std::size_t(begin)], t + 1 - begin);
      }
      const double recompute_s = seconds_since(start) / tokens;
      std::printf("budget %4d: recompute %.4f s/token, StreamingLLM %.4f s/token: recompute/StreamingLLM %.1fx\n", b,
                  recompute_s, stream_s, recompute_s / stream_s);
    }
  } catch (const std::exception& e) {
    std::cerr << "kvevict_speed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
