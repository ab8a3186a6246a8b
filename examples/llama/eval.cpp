// SPDX-License-Identifier: Apache-2.0
// Streams a text through SmolLM2 token by token, once per (policy, budget), all side by side so the
// weights are read once per step; reports perplexity per run, writes per-token NLL as CSV.
//
//   kvevict_eval --model M.gguf --text novel.txt --tokens 4096 --budgets 128,256,512
//                --policies dense,window,recompute,streaming,h2o,ahakv,l2 [--csv nll.csv]
// Policy names: dense, window, recompute, streaming (4 sinks), streaming:N (N sinks), streaming-nl
// (four newline tokens put before the text serve as the sinks), h2o, ahakv, l2. Recompute is O(L^2) per token
// and is evaluated every --recompute-every tokens only; its table entry compares with dense on those tokens.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "model.hpp"
#include "probe.hpp"
#include "tokenizer.hpp"

namespace {

struct Options {
  std::string model, text, csv, attention_map;
  long skip_chars = 0;
  int tokens = 1024, recompute_every = 64, threads = 0;
  std::vector<int> budgets{128, 256, 512};
  std::vector<std::string> policies{"dense", "window", "recompute", "streaming", "h2o", "ahakv", "l2"};
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "kvevict_eval: " << why
            << "\nusage: kvevict_eval --model FILE.gguf --text FILE.txt [--tokens N] [--skip-chars N]\n"
               "       [--budgets 128,256,512] [--policies dense,window,recompute,streaming,h2o,ahakv,l2]\n"
               "       [--recompute-every N] [--csv NLL.csv] [--attention-map MAP.csv]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage("missing value after " + a);
    const std::string v = argv[++i];
    try {
      if (a == "--model")
        o.model = v;
      else if (a == "--text")
        o.text = v;
      else if (a == "--csv")
        o.csv = v;
      else if (a == "--attention-map")
        o.attention_map = v;
      else if (a == "--tokens")
        o.tokens = std::stoi(v);
      else if (a == "--skip-chars")
        o.skip_chars = std::stol(v);
      else if (a == "--recompute-every")
        o.recompute_every = std::stoi(v);
      else if (a == "--policies")
        o.policies = split(v);
      else if (a == "--budgets") {
        o.budgets.clear();
        for (const auto& b : split(v)) o.budgets.push_back(std::stoi(b));
      } else
        usage("unknown option " + a);
    } catch (const std::logic_error&) {
      usage("bad value for " + a + ": " + v);
    }
  }
  if (o.model.empty() || o.text.empty()) usage("--model and --text are required");
  if (o.tokens < 2) usage("--tokens must be at least 2");
  if (o.recompute_every < 1) usage("--recompute-every must be at least 1");
  return o;
}

struct Run {
  std::string label;
  int budget = 0;
  std::unique_ptr<llama::SequenceCache> cache;
  std::vector<int> prefix;  // tokens fed before the text (streaming-nl's sinks)
  std::vector<double> nll;  // per text token; NaN where not evaluated
};

std::unique_ptr<llama::SequenceCache> make(const llama::Model& m, const std::string& name, int budget) {
  if (name == "window") return m.make_cache<kvevict::Window>(budget, {}, 4);
  if (name == "streaming" || name == "streaming-nl") return m.make_cache(budget, kvevict::StreamingLLM{4}, 4);
  if (name.rfind("streaming:", 0) == 0)
    return m.make_cache(budget, kvevict::StreamingLLM{std::stoi(name.substr(10))}, 4);
  if (name == "h2o") return m.make_cache<kvevict::H2O>(budget, {}, 4);
  if (name == "ahakv") return m.make_cache<kvevict::AhaKV>(budget, {}, 4);
  if (name == "l2") return m.make_cache<kvevict::L2Norm>(budget, {}, 4);
  if (name == "recompute") return m.make_cache<kvevict::SlidingWindowRecompute>(budget, {}, 64);
  usage("unknown policy " + name);
}

double ppl(const std::vector<double>& nll, const std::vector<double>* mask = nullptr) {
  double sum = 0;
  long n = 0;
  for (std::size_t i = 0; i < nll.size(); ++i)
    if (!std::isnan(nll[i]) && (!mask || !std::isnan((*mask)[i]))) {
      sum += nll[i];
      ++n;
    }
  return n ? std::exp(sum / double(n)) : NAN;
}

void progress(const char* what, long done, long total, double seconds) {
  if (!isatty(STDERR_FILENO)) return;
  const int width = 40, filled = int(width * done / std::max(1L, total));
  const double rate = double(done) / std::max(seconds, 1e-9);
  std::fprintf(stderr, "\r%-10s [%.*s%*s] %ld/%ld  %.1f/s  eta %.0fs ", what, filled,
               "########################################", width - filled, "", done, total, rate,
               double(total - done) / std::max(rate, 1e-9));
  if (done == total) std::fprintf(stderr, "\n");
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  try {
    const gguf::File file(opt.model);
    const llama::Model model(file);
    const llama::Tokenizer tokenizer(file);
    std::ifstream in(opt.text);
    if (!in) usage("cannot read " + opt.text);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    if (opt.skip_chars < 0 || std::size_t(opt.skip_chars) >= text.size()) usage("--skip-chars beyond the text");
    // Tokenise a generous slice, keep the first `tokens`.
    std::vector<int> ids = tokenizer.encode(text.substr(std::size_t(opt.skip_chars), std::size_t(opt.tokens) * 8));
    if (int(ids.size()) < opt.tokens) usage("the text has only " + std::to_string(ids.size()) + " tokens there");
    ids.resize(std::size_t(opt.tokens));
    const int newline = tokenizer.encode("\n").at(0);

    std::vector<Run> runs, recompute;
    std::shared_ptr<llama::AttentionTable> table;
    for (const auto& name : opt.policies) {
      if (name == "dense") {
        Run r{"dense", opt.tokens, nullptr, {}, {}};
        if (!opt.attention_map.empty()) {
          table = std::make_shared<llama::AttentionTable>();
          table->n_layers = model.config().n_layers;
          table->n_first = 16;
          table->n_kv_heads = model.config().n_kv_heads;
          table->sum.assign(std::size_t(table->n_layers * table->n_first), 0.0);
          table->queries.assign(std::size_t(table->n_layers), 0);
          llama::AttentionProbe probe;
          probe.table = table;
          probe.min_query = 64;
          r.cache = model.make_cache(opt.tokens, probe, 4);
        } else {
          r.cache = model.make_cache<kvevict::Dense>(opt.tokens, {}, 4);
        }
        runs.push_back(std::move(r));
        continue;
      }
      for (int b : opt.budgets) {
        Run r{name + "/" + std::to_string(b), b, make(model, name, b), {}, {}};
        if (name == "streaming-nl") r.prefix.assign(4, newline);
        (name == "recompute" ? recompute : runs).push_back(std::move(r));
      }
    }
    for (auto& r : runs) r.nll.assign(ids.size(), NAN);
    for (auto& r : recompute) r.nll.assign(ids.size(), NAN);

    std::cerr << "model: " << model.config().n_layers << " layers, " << model.config().n_heads << "/"
              << model.config().n_kv_heads << " heads; text: " << ids.size() << " tokens; " << runs.size()
              << " streaming runs side by side";
    if (!recompute.empty()) std::cerr << ", " << recompute.size() << " recompute runs every " << opt.recompute_every;
    std::cerr << "\n";

    const auto start = std::chrono::steady_clock::now();
    auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    for (auto& r : runs)
      if (!r.prefix.empty()) model.prefill(*r.cache, r.prefix.data(), int(r.prefix.size()));
    if (!runs.empty()) {
      std::vector<llama::Segment> segments(runs.size());
      for (int t = 0; t + 1 < opt.tokens; ++t) {
        for (std::size_t i = 0; i < runs.size(); ++i)
          segments[i] = llama::Segment{runs[i].cache.get(), &ids[std::size_t(t)], 1};
        const llama::Matrix logits = model.forward(segments);
        for (std::size_t i = 0; i < runs.size(); ++i)
          runs[i].nll[std::size_t(t + 1)] = llama::nll(logits.row(Eigen::Index(i)), ids[std::size_t(t + 1)]);
        progress("stream", t + 1, opt.tokens - 1, seconds());
      }
    }
    const double stream_seconds = seconds();
    long recompute_steps = 0, recompute_done = 0;
    for (int t = opt.recompute_every; t + 1 < opt.tokens; t += opt.recompute_every)
      recompute_steps += long(recompute.size());
    for (auto& r : recompute)
      for (int t = opt.recompute_every; t + 1 < opt.tokens; t += opt.recompute_every) {
        // The protocol: re-prefill the window before token t into a cleared cache, then token t itself.
        const auto range = kvevict::SlidingWindowRecompute::recompute_range(t, r.budget);
        const int begin = range.empty() ? 0 : int(range.begin);
        r.cache->clear();
        const Eigen::RowVectorXf logits = model.prefill(*r.cache, &ids[std::size_t(begin)], t + 1 - begin);
        r.nll[std::size_t(t + 1)] = llama::nll(logits, ids[std::size_t(t + 1)]);
        progress("recompute", ++recompute_done, recompute_steps, seconds() - stream_seconds);
      }
    const double total_seconds = seconds();

    const Run* dense = nullptr;
    for (const auto& r : runs)
      if (r.label == "dense") dense = &r;
    std::printf("%-22s %10s  %s\n", "run", "ppl", "note");
    for (const auto& r : runs) std::printf("%-22s %10.3f\n", r.label.c_str(), ppl(r.nll));
    for (const auto& r : recompute) {
      std::printf("%-22s %10.3f  on %ld tokens", r.label.c_str(), ppl(r.nll), recompute_steps / long(recompute.size()));
      if (dense) std::printf("; dense on the same tokens %.3f", ppl(dense->nll, &r.nll));
      std::printf("\n");
    }
    std::printf(
        "summary: %d tokens, %zu streaming runs in %.1f s (%.1f steps/s, %.1f sequence-tokens/s), "
        "%ld recompute evaluations in %.1f s\n",
        opt.tokens, runs.size(), stream_seconds, (opt.tokens - 1) / std::max(stream_seconds, 1e-9),
        double(runs.size()) * (opt.tokens - 1) / std::max(stream_seconds, 1e-9), recompute_steps,
        total_seconds - stream_seconds);

    if (!opt.csv.empty()) {
      std::ofstream csv(opt.csv);
      csv << "token,id";
      for (const auto& r : runs) csv << "," << r.label;
      for (const auto& r : recompute) csv << "," << r.label;
      csv << "\n";
      for (std::size_t t = 1; t < ids.size(); ++t) {
        csv << t << "," << ids[t];
        for (const auto* group : {&runs, &recompute})
          for (const auto& r : *group) {
            csv << ",";
            if (!std::isnan(r.nll[t])) csv << r.nll[t];
          }
        csv << "\n";
      }
    }
    if (table) {
      std::ofstream map(opt.attention_map);
      map << "layer";
      for (int p = 0; p < table->n_first; ++p) map << ",pos" << p;
      map << "\n";
      for (int l = 0; l < table->n_layers; ++l) {
        map << l;
        for (int p = 0; p < table->n_first; ++p) map << "," << table->mean(l, p);
        map << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "kvevict_eval: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
