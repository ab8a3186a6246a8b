// SPDX-License-Identifier: Apache-2.0
// Streams a text through SmolLM2 token by token, once per (policy, budget), all side by side so the
// weights are read once per step. Reports the perplexity of every run overall and per bucket of tokens, each
// with a 95% block-bootstrap interval, compares runs in pairs, and writes per-token NLL and per-bucket
// perplexity as CSV.
//
//   kvevict_eval --model M.gguf --text emma.txt,persuasion.txt --tokens 4096 --budgets 128,256,512
//                --policies dense,window,recompute,streaming,h2o,ahakv,l2 [--bucket 1024]
//                [--compare h2o/128,streaming/128] [--csv nll.csv] [--bucket-csv buckets.csv]
//
// `kvevict_eval --help` lists every option. Policy names: dense, window, recompute, streaming (4 sinks),
// streaming:N (N sinks), streaming-nl (four newline tokens put before the text serve as the sinks), h2o,
// ahakv, l2. Runs are labelled policy/budget (h2o/128); dense keeps every token and is labelled dense.
//
// Intervals: the NLL of consecutive tokens is correlated, so tokens are resampled in blocks of 128 consecutive
// tokens (1000 resamples, fixed seed); the interval is the 2.5% and 97.5% quantiles of exp(mean NLL). A
// paired comparison resamples the same blocks for both runs, on the tokens both scored.
//
// Recompute (sliding window with recompute) is O(L^2) per token, so it is scored on some tokens only: every
// --recompute-every tokens, or every token of --recompute-range; the summary gives every other run's
// perplexity on exactly those tokens. Its time per token compares fairly with StreamingLLM timed alone
// (--time-alone), not with a step of the side-by-side stream, which serves every run at once.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli.hpp"
#include "model.hpp"
#include "probe.hpp"
#include "stats.hpp"
#include "tokenizer.hpp"

namespace {

using llama::block_bootstrap;
using llama::Estimate;
using llama::kBlock;
using llama::kMinBlocks;
constexpr int kTimeAloneSteps = 128;

// ---------------------------------------------------------------------------------------------- options

struct Options {
  std::string model, csv, bucket_csv, attention_map, kv_type = "f32";
  std::vector<std::string> texts;
  long skip_chars = 0;
  int tokens = 1024, recompute_every = 64, recompute_first = 0, recompute_count = 0;
  int bucket = 1024, threads = 0;
  bool time_alone = false;
  std::vector<int> budgets{128, 256, 512};
  std::vector<std::string> policies{"dense", "window", "recompute", "streaming", "h2o", "ahakv", "l2"};
  std::vector<std::pair<std::string, std::string>> compare;
  std::vector<std::pair<std::string, int>> run_tokens;  // (run label or "*", tokens), later entries win

  /// Tokens the run labelled `label` reads: --tokens unless --run-tokens (or --dense-tokens) says less.
  int tokens_for(const std::string& label) const {
    int n = tokens;
    for (const auto& [which, count] : run_tokens)
      if (which == "*" || which == label) n = count;
    return n;
  }
};

const char* const kUsage =
    "usage: kvevict_eval --model FILE.gguf --text FILE[,FILE...] [options]\n"
    "  --model FILE.gguf        the model (GGUF, llama architecture)\n"
    "  --text FILE[,FILE...]    text files, concatenated in order into one stream, a blank line between\n"
    "  --tokens N               text tokens to stream (default 1024)\n"
    "  --skip-chars N           start the stream N characters into the text (default 0)\n"
    "  --budgets B[,B...]       cache budgets in tokens (default 128,256,512)\n"
    "  --policies P[,P...]      dense, window, recompute, streaming, streaming:N, streaming-nl, h2o, ahakv, l2,\n"
    "                           snapkv, tova,\n"
    "                           h2o+sinks, ahakv+sinks (4 sinks), l2+recent (32 newest), pyramid-h2o,\n"
    "                           pyramid-ahakv (PyramidKV budgets), adakv-h2o, adakv-ahakv (AdaKV budgets),\n"
    "                           h2o-cachepos, ahakv-cachepos (positions within the cache)\n"
    "                           (default dense,window,recompute,streaming,h2o,ahakv,l2)\n"
    "  --dense-tokens N         dense reads only the first N tokens and then drops out (default: all)\n"
    "  --run-tokens L=N[,L=N]   run L (a label such as streaming/1024, or * for every run) reads only the\n"
    "                           first N tokens; later entries win: *=32768,streaming/1024=200000\n"
    "  --recompute-every N      score recompute every N tokens (default 64)\n"
    "  --recompute-range F:C    score recompute on every token F .. F+C-1 instead (F >= budget + 2; C of 512\n"
    "                           or more gives intervals)\n"
    "  --time-alone             also time StreamingLLM alone (one sequence) at each recompute budget\n"
    "  --bucket N               perplexity per bucket of N tokens, with 95% intervals (default 1024)\n"
    "  --compare A,B[;C,D...]   paired comparison of two runs (labels such as h2o/128); repeatable\n"
    "  --csv FILE               per-token NLL: token,id,one column per run\n"
    "  --bucket-csv FILE        run,policy,budget,bucket_first,bucket_last,tokens,ppl,ppl_lo,ppl_hi\n"
    "  --attention-map FILE     dense's mean attention to the first 16 tokens, per layer\n"
    "  --threads N              threads (default: all cores)\n"
    "  --kv-type T              how the caches store K and V: f32, f16 or bf16 (default f32)\n"
    "  -h, --help               this text\n";

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "kvevict_eval: " << why << "\n" << kUsage;
  std::exit(2);
}

using cli::split;
long strict_long(const std::string& v) { return cli::number<long>(v); }
int strict_int(const std::string& v) { return cli::number<int>(v); }

// "a,b;c,d" -> (a, b), (c, d)
void add_pairs(const std::string& v, std::vector<std::pair<std::string, std::string>>& out) {
  for (const auto& pair : split(v, ';')) {
    const auto labels = split(pair);
    if (labels.size() != 2) usage("--compare takes pairs of runs, A,B: " + pair);
    out.emplace_back(labels[0], labels[1]);
  }
}

std::vector<int> recompute_targets(const Options& opt);

// What make() builds, besides streaming:N.
const char* const kPolicyNames[] = {"dense",     "window",      "recompute",    "streaming",     "streaming-nl",
                                    "h2o",       "ahakv",       "l2",           "snapkv",        "tova",
                                    "h2o+sinks", "ahakv+sinks", "l2+recent",    "pyramid-h2o",   "pyramid-ahakv",
                                    "adakv-h2o", "adakv-ahakv", "h2o-cachepos", "ahakv-cachepos"};

// Every policy name, before the model is read.
void check_policies(const Options& o) {
  for (const std::string& name : o.policies) {
    if (name.rfind("streaming:", 0) == 0) {
      int sinks = -1;
      try {
        sinks = strict_int(name.substr(10));
      } catch (const std::logic_error&) {
      }
      if (sinks < 0) usage("--policies: bad number of sinks in " + name + " (a count >= 0)");
      continue;
    }
    if (std::find(std::begin(kPolicyNames), std::end(kPolicyNames), name) == std::end(kPolicyNames))
      usage("--policies: unknown policy " + name);
  }
  if (std::find(o.policies.begin(), o.policies.end(), "recompute") != o.policies.end() && recompute_targets(o).empty())
    usage(
        "--recompute-every: recompute has no token to score: --tokens is below --recompute-every + 2; raise "
        "--tokens, or leave recompute out of --policies (the default policies include it)");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (a == "--time-alone") {
      o.time_alone = true;
      continue;
    }
    if (!cli::has_value(argc, argv, i)) usage("missing value after " + a);
    const std::string v = argv[++i];
    try {
      if (a == "--model")
        o.model = v;
      else if (a == "--text")
        o.texts = split(v);
      else if (a == "--csv")
        o.csv = v;
      else if (a == "--bucket-csv")
        o.bucket_csv = v;
      else if (a == "--attention-map")
        o.attention_map = v;
      else if (a == "--tokens")
        o.tokens = strict_int(v);
      else if (a == "--dense-tokens")
        o.run_tokens.emplace_back("dense", strict_int(v));  // the same as --run-tokens dense=N
      else if (a == "--run-tokens") {
        for (const auto& entry : split(v)) {
          const auto eq = entry.find('=');
          if (eq == std::string::npos) usage("--run-tokens takes LABEL=N entries: " + entry);
          o.run_tokens.emplace_back(entry.substr(0, eq), strict_int(entry.substr(eq + 1)));
        }
      } else if (a == "--skip-chars")
        o.skip_chars = strict_long(v);
      else if (a == "--recompute-every")
        o.recompute_every = strict_int(v);
      else if (a == "--recompute-range") {
        const auto colon = v.find(':');
        if (colon == std::string::npos) usage("--recompute-range takes FIRST:COUNT");
        o.recompute_first = strict_int(v.substr(0, colon));
        o.recompute_count = strict_int(v.substr(colon + 1));
        if (o.recompute_first < 1 || o.recompute_count < 1)
          usage("--recompute-range: FIRST and COUNT must be positive");
      } else if (a == "--bucket")
        o.bucket = strict_int(v);
      else if (a == "--threads")
        o.threads = strict_int(v);
      else if (a == "--kv-type")
        o.kv_type = v;
      else if (a == "--compare")
        add_pairs(v, o.compare);
      else if (a == "--policies")
        o.policies = split(v);
      else if (a == "--budgets") {
        o.budgets.clear();
        for (const auto& b : split(v)) o.budgets.push_back(strict_int(b));
      } else
        usage("unknown option " + a);
    } catch (const std::logic_error&) {
      usage("bad value for " + a + ": " + v);
    }
  }
  if (o.model.empty() || o.texts.empty()) usage("--model and --text are required");
  if (o.policies.empty()) usage("--policies names no policy");
  if (o.budgets.empty()) usage("--budgets names no budget");
  // An output that cannot be written fails now, not after the run.
  for (const auto& [option, path] : {std::pair<const char*, const std::string&>{"--csv", o.csv},
                                     {"--bucket-csv", o.bucket_csv},
                                     {"--attention-map", o.attention_map}})
    if (!path.empty() && !std::ofstream(path, std::ios::app)) usage(std::string(option) + ": cannot write " + path);
  if (o.tokens < 2) usage("--tokens must be at least 2");
  for (const auto& [label, n] : o.run_tokens)
    if (n < 2 || n > o.tokens) usage("--run-tokens " + label + " must be in [2, --tokens]");
  if (o.recompute_every < 1) usage("--recompute-every must be at least 1");
  if (o.recompute_count > 0 && o.recompute_first + o.recompute_count > o.tokens)
    usage("--recompute-range goes past --tokens");
  if (o.bucket < 1) usage("--bucket must be at least 1");
  if (o.threads < 0) usage("--threads must be positive");
  if (o.kv_type != "f32" && o.kv_type != "f16" && o.kv_type != "bf16") usage("--kv-type must be f32, f16 or bf16");
  for (int b : o.budgets)
    if (b < 1) usage("budgets must be positive");
  check_policies(o);
  return o;
}

std::string plural(long n, const std::string& what) { return std::to_string(n) + " " + what + (n == 1 ? "" : "s"); }

// ------------------------------------------------------------------------------------------------- text

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.empty()) usage("--text: " + path + " is empty or not a file");
  return text;
}

// The files in order, normalised, one blank line between them.
std::string read_stream(const std::vector<std::string>& paths) {
  std::string stream;
  for (const auto& path : paths) {
    if (!stream.empty()) {
      while (!stream.empty() && stream.back() == '\n') stream.pop_back();
      stream += "\n\n";
    }
    stream += llama::normalize_text(read_file(path));
  }
  return stream;
}

// The first `n` tokens from `skip` characters in. Only a slice is tokenised (about 4 characters a token in
// English prose; 8 to spare), grown when it comes out short; a few tokens beyond `n` are asked for so that
// the cut at the slice's end cannot change the tokens kept.
std::vector<int> tokenize(const llama::Tokenizer& tokenizer, const std::string& text, long skip, int n) {
  if (skip < 0 || std::size_t(skip) >= text.size()) usage("--skip-chars beyond the text");
  const std::size_t available = text.size() - std::size_t(skip);
  for (std::size_t chars = std::size_t(n) * 8;; chars *= 2) {
    const bool whole = chars >= available;
    std::vector<int> ids = tokenizer.encode(text.substr(std::size_t(skip), std::min(chars, available)));
    if (int(ids.size()) >= n + 16 || (whole && int(ids.size()) >= n)) {
      ids.resize(std::size_t(n));
      return ids;
    }
    if (whole) usage("the text has only " + std::to_string(ids.size()) + " tokens there");
  }
}

// -------------------------------------------------------------------------------------------------- runs

struct Run {
  std::string label, policy;
  int budget = 0;
  int end = 0;  // reads text tokens [0, end)
  std::unique_ptr<llama::SequenceCache> cache;
  std::vector<int> prefix;  // tokens fed before the text (streaming-nl's sinks)
  std::vector<double> nll;  // per text token; NaN where not scored
  double seconds = 0;       // recompute: wall time of its evaluations
};

struct Runs {
  std::vector<Run> stream;     // side by side, one token per step
  std::vector<Run> recompute;  // one at a time, on chosen tokens
  std::shared_ptr<llama::AttentionTable> table;

  std::vector<const Run*> all() const {
    std::vector<const Run*> out;
    for (const auto* group : {&stream, &recompute})
      for (const auto& r : *group) out.push_back(&r);
    return out;
  }
  const Run* find(const std::string& label) const {
    for (const Run* r : all())
      if (r->label == label) return r;
    return nullptr;
  }
};

std::unique_ptr<llama::SequenceCache> make(const llama::Model& m, const std::string& name, int budget) {
  if (name == "window") return m.make_cache<kvevict::Window>(budget, {}, 4);
  if (name == "streaming" || name == "streaming-nl") return m.make_cache(budget, kvevict::StreamingLLM{4}, 4);
  if (name.rfind("streaming:", 0) == 0) {
    try {
      return m.make_cache(budget, kvevict::StreamingLLM{strict_int(name.substr(10))}, 4);
    } catch (const std::logic_error&) {
      usage("bad number of sinks in " + name);
    }
  }
  if (name == "h2o") return m.make_cache<kvevict::H2O>(budget, {}, 4);
  if (name == "ahakv") return m.make_cache<kvevict::AhaKV>(budget, {}, 4);
  if (name == "l2") return m.make_cache<kvevict::L2Norm>(budget, {}, 4);
  if (name == "snapkv") return m.make_cache<kvevict::SnapKV>(budget, {}, 4);
  if (name == "tova") return m.make_cache<kvevict::TOVA>(budget, {}, 4);
  // Compositions and budget schedules (kvevict/policies/protected.hpp, kvevict/budgets.hpp).
  if (name == "h2o+sinks") return m.make_cache(budget, kvevict::with_sinks(kvevict::H2O{}, 4), 4);
  if (name == "ahakv+sinks") return m.make_cache(budget, kvevict::with_sinks(kvevict::AhaKV{}, 4), 4);
  if (name == "l2+recent") return m.make_cache(budget, kvevict::with_recent(kvevict::L2Norm{}, 32), 4);
  if (name == "pyramid-h2o") return m.make_cache<kvevict::Pyramid<kvevict::H2O>>(budget, {}, 4);
  if (name == "pyramid-ahakv") return m.make_cache<kvevict::Pyramid<kvevict::AhaKV>>(budget, {}, 4);
  if (name == "adakv-h2o") return m.make_cache<kvevict::AdaptiveHeads<kvevict::H2O>>(budget, {}, 4);
  if (name == "adakv-ahakv") return m.make_cache<kvevict::AdaptiveHeads<kvevict::AhaKV>>(budget, {}, 4);
  if (name == "h2o-cachepos") return m.make_cache<kvevict::CachePositions<kvevict::H2O>>(budget, {}, 4);
  if (name == "ahakv-cachepos") return m.make_cache<kvevict::CachePositions<kvevict::AhaKV>>(budget, {}, 4);
  if (name == "recompute") return m.make_cache<kvevict::SlidingWindowRecompute>(budget, {}, 64);
  usage("unknown policy " + name);
}

// Dense keeps every token it reads: its budget is its token count. With --attention-map its cache records
// where attention goes.
Run make_dense(const llama::Model& model, const Options& opt, Runs& runs) {
  Run r;
  r.label = r.policy = "dense";
  r.budget = r.end = opt.tokens_for("dense");
  if (opt.attention_map.empty()) {
    r.cache = model.make_cache<kvevict::Dense>(r.budget, {}, 4);
    return r;
  }
  auto table = std::make_shared<llama::AttentionTable>();
  table->n_layers = model.config().n_layers;
  table->n_first = 16;
  table->n_kv_heads = model.config().n_kv_heads;
  table->sum.assign(std::size_t(table->n_layers * table->n_first), 0.0);
  table->queries.assign(std::size_t(table->n_layers), 0);
  llama::AttentionProbe probe;
  probe.table = table;
  probe.min_query = 64;
  r.cache = model.make_cache(r.budget, probe, 4);
  runs.table = table;
  return r;
}

Runs make_runs(const llama::Model& model, const Options& opt, int newline) {
  Runs runs;
  for (const auto& name : opt.policies) {
    if (name == "dense") {
      runs.stream.push_back(make_dense(model, opt, runs));
      continue;
    }
    for (int b : opt.budgets) {
      Run r;
      r.label = name + "/" + std::to_string(b);
      r.policy = name;
      r.budget = b;
      r.end = opt.tokens_for(r.label);
      r.cache = make(model, name, b);
      if (name == "streaming-nl") r.prefix.assign(4, newline);
      (name == "recompute" ? runs.recompute : runs.stream).push_back(std::move(r));
    }
  }
  for (const Run* r : runs.all())
    if (runs.find(r->label) != r) usage("run " + r->label + " is asked for twice");
  for (auto* group : {&runs.stream, &runs.recompute})
    for (auto& r : *group) r.nll.assign(std::size_t(opt.tokens), NAN);
  return runs;
}

// Text tokens recompute scores (each predicted from the window before it).
std::vector<int> recompute_targets(const Options& opt) {
  std::vector<int> targets;
  if (opt.recompute_count > 0) {
    for (int i = opt.recompute_first; i < opt.recompute_first + opt.recompute_count; ++i) targets.push_back(i);
  } else {
    for (int t = opt.recompute_every; t + 1 < opt.tokens; t += opt.recompute_every) targets.push_back(t + 1);
  }
  return targets;
}

// ------------------------------------------------------------------------------------------------ timing

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string duration(double s) {
  char buf[64];
  const long t = long(std::lround(s));
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

// A bar on a terminal; otherwise (a log file) a plain line at most every 10 seconds, so a long redirected run
// is not silent.
class Progress {
 public:
  Progress(const char* what, const char* unit, long total)
      : what_(what), unit_(unit), total_(total), tty_(isatty(STDERR_FILENO) != 0) {}

  void operator()(long done) {
    const double s = seconds_since(start_);
    const double rate = double(done) / std::max(s, 1e-9);
    const double eta = double(total_ - done) / std::max(rate, 1e-9);
    if (tty_) {
      const int width = 40, filled = int(width * done / std::max(1L, total_));
      std::fprintf(stderr, "\r%-10s [%.*s%*s] %ld/%ld  %.1f/s  eta %s ", what_, filled,
                   "########################################", width - filled, "", done, total_, rate,
                   duration(eta).c_str());
      if (done == total_) std::fprintf(stderr, "\n");
      return;
    }
    if (done < total_ && s - last_ < 10) return;
    last_ = s;
    std::fprintf(stderr, "%s: %ld/%ld %s, %.2f steps/s, %s elapsed, eta %s\n", what_, done, total_, unit_, rate,
                 duration(s).c_str(), duration(eta).c_str());
  }

 private:
  const char* what_;
  const char* unit_;
  long total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  double last_ = 0;
};

// ------------------------------------------------------------------------------------------------ engine

struct StreamTime {
  double seconds = 0;
  long steps = 0;
};

// Every stream run reads one token per step, all in one forward pass; a run drops out once past its end.
StreamTime stream(const llama::Model& model, std::vector<Run>& runs, const std::vector<int>& ids) {
  const auto start = std::chrono::steady_clock::now();
  for (auto& r : runs)
    if (!r.prefix.empty()) model.prefill(*r.cache, r.prefix.data(), int(r.prefix.size()));
  const int steps = int(ids.size()) - 1;
  Progress progress("stream", "tokens", steps);
  std::vector<llama::Segment> segments;
  std::vector<Run*> active;
  StreamTime time;
  for (int t = 0; t < steps; ++t, ++time.steps) {
    segments.clear();
    active.clear();
    for (auto& r : runs)
      if (t + 1 < r.end) {
        segments.push_back(llama::Segment{r.cache.get(), &ids[std::size_t(t)], 1});
        active.push_back(&r);
      }
    if (active.empty()) break;
    const llama::Matrix logits = model.forward(segments);
    for (std::size_t i = 0; i < active.size(); ++i)
      active[i]->nll[std::size_t(t + 1)] = llama::nll(logits.row(Eigen::Index(i)), ids[std::size_t(t + 1)]);
    progress(t + 1);
  }
  time.seconds = seconds_since(start);
  return time;
}

// Sliding window with recompute on each target token i: the window before it (recompute_range of t = i - 1)
// re-prefilled into a cleared cache, then token i - 1 itself; scores token i.
void recompute(const llama::Model& model, std::vector<Run>& runs, const std::vector<int>& ids,
               const std::vector<int>& targets) {
  Progress progress("recompute", "tokens", long(runs.size() * targets.size()));
  long done = 0;
  for (auto& r : runs) {
    const auto start = std::chrono::steady_clock::now();
    for (int i : targets) {
      const int t = i - 1;
      const auto range = kvevict::SlidingWindowRecompute::recompute_range(t, r.budget);
      const int begin = range.empty() ? 0 : int(range.begin);
      r.cache->clear();
      const Eigen::RowVectorXf logits = model.prefill(*r.cache, &ids[std::size_t(begin)], t + 1 - begin);
      r.nll[std::size_t(i)] = llama::nll(logits, ids[std::size_t(i)]);
      progress(++done);
    }
    r.seconds = seconds_since(start);
  }
}

// Seconds per token of StreamingLLM decoding alone (one sequence) on a full cache: the fair denominator for
// recompute's seconds per token. The cache is full (warm = budget) unless the text is shorter than the budget,
// so the steps and the tokens before them are printed with the time.
struct AloneTime {
  int warm, steps;
  double seconds_per_token;
};
AloneTime streaming_alone(const llama::Model& model, const std::vector<int>& ids, int budget) {
  auto cache = model.make_cache(budget, kvevict::StreamingLLM{4}, 64);
  const int warm = std::min(budget, int(ids.size()) - 2);
  model.prefill(*cache, ids.data(), warm);
  const int steps = std::min(kTimeAloneSteps, int(ids.size()) - warm);
  const auto start = std::chrono::steady_clock::now();
  for (int t = warm; t < warm + steps; ++t) model.forward({llama::Segment{cache.get(), &ids[std::size_t(t)], 1}});
  return {warm, steps, seconds_since(start) / steps};
}

// -------------------------------------------------------------------------------------------- statistics

struct Bucket {
  std::size_t first, end;  // text tokens [first, end)
};

// [1, N), [N, 2N), ... up to the end of the stream.
std::vector<Bucket> buckets(int tokens, int n) {
  std::vector<Bucket> out;
  for (int b = 0; b < tokens; b += n)
    out.push_back({std::size_t(std::max(b, 1)), std::size_t(std::min(b + n, tokens))});
  return out;
}

// ------------------------------------------------------------------------------------------------ output

std::string interval(const Estimate& e, const char* format = "%.2f") {
  if (std::isnan(e.lo)) return "";
  char lo[32], hi[32];
  std::snprintf(lo, sizeof lo, format, e.ppl_lo());
  std::snprintf(hi, sizeof hi, format, e.ppl_hi());
  return std::string("[") + lo + ", " + hi + "]";
}

void print_row(const std::string& name, const Estimate& e, const std::string& note = "") {
  if (e.tokens == 0) {
    std::printf("%-30s %10s  %-20s %8d  %s\n", name.c_str(), "-", "", 0, note.c_str());
    return;
  }
  std::printf("%-30s %10.3f  %-20s %8ld  %s\n", name.c_str(), e.ppl(), interval(e).c_str(), e.tokens, note.c_str());
}

void print_summary(const Options& opt, const Runs& runs, const std::vector<int>& targets) {
  const std::size_t n = std::size_t(opt.tokens);
  std::printf(
      "\nperplexity over the stream, K/V stored as %s (95%% interval: block bootstrap, blocks of %d tokens; "
      "none with fewer than %d blocks)\n",
      opt.kv_type.c_str(), kBlock, kMinBlocks);
  std::printf("%-30s %10s  %-20s %8s  %s\n", "run", "ppl", "95% interval", "tokens", "note");
  for (const auto& r : runs.stream)
    print_row(r.label, block_bootstrap(r.nll, 1, n),
              r.end < opt.tokens ? "tokens 1-" + std::to_string(r.end - 1) + " only" : "");
  for (const auto& r : runs.recompute) {
    const std::string where = opt.recompute_count > 0 ? "every token " + std::to_string(opt.recompute_first) + "-" +
                                                            std::to_string(targets.back())
                                                      : "every " + std::to_string(opt.recompute_every) + " tokens";
    print_row(r.label, block_bootstrap(r.nll, 1, n), where);
    for (const auto& o : runs.stream)  // every other run on exactly the same tokens
      if (o.label == "dense" || o.budget == r.budget)
        print_row("  " + o.label + ", same tokens", block_bootstrap(o.nll, 1, n, &r.nll));
  }
}

void print_buckets(const Options& opt, const Runs& runs) {
  std::printf(
      "\nperplexity per bucket of %d tokens (95%% interval: block bootstrap, blocks of %d tokens; none "
      "with fewer than %d blocks)\n",
      opt.bucket, kBlock, kMinBlocks);
  const auto bs = buckets(opt.tokens, opt.bucket);
  for (const Run* r : runs.all()) {
    std::printf("%s\n", r->label.c_str());
    for (const auto& b : bs)
      print_row("  " + std::to_string(b.first) + "-" + std::to_string(b.end - 1),
                block_bootstrap(r->nll, b.first, b.end));
    print_row("  all", block_bootstrap(r->nll, 1, std::size_t(opt.tokens)));
  }
}

void print_comparisons(const Options& opt, const Runs& runs) {
  if (opt.compare.empty()) return;
  std::printf(
      "\npaired comparisons on the tokens both runs scored (95%% interval: the same blocks of %d tokens "
      "resampled for both)\n",
      kBlock);
  std::printf("%-36s %8s %10s  %-22s %8s  %-18s %s\n", "A vs B", "tokens", "NLL A-B", "95% interval", "ppl A/B",
              "95% interval", "verdict");
  for (const auto& [a, b] : opt.compare) {
    const Run *ra = runs.find(a), *rb = runs.find(b);
    const Estimate e = llama::paired_difference(ra->nll, rb->nll, 1, std::size_t(opt.tokens));
    const std::string pair = a + " vs " + b;
    if (e.tokens == 0) {
      std::printf("%-36s %8d  no token scored by both\n", pair.c_str(), 0);
      continue;
    }
    char nll_interval[64] = "";
    if (!std::isnan(e.lo)) std::snprintf(nll_interval, sizeof nll_interval, "[%+.4f, %+.4f]", e.lo, e.hi);
    const char* verdict = std::isnan(e.lo) ? "too few blocks"
                          : e.hi < 0       ? "A lower"
                          : e.lo > 0       ? "B lower"
                                           : "no difference shown";
    std::printf("%-36s %8ld %+10.4f  %-22s %8.4f  %-18s %s\n", pair.c_str(), e.tokens, e.mean, nll_interval, e.ppl(),
                interval(e, "%.4f").c_str(), verdict);
  }
}

void print_times(const Options& opt, const llama::Model& model, const Runs& runs, const std::vector<int>& ids,
                 const StreamTime& stream, std::size_t targets) {
  std::printf("\n");
  if (stream.steps > 0)
    std::printf("time: %s side by side, %ld steps in %.1f s: %.4f s per step\n",
                plural(long(runs.stream.size()), "streaming run").c_str(), stream.steps, stream.seconds,
                stream.seconds / double(stream.steps));
  std::vector<int> alone_budgets;
  for (const auto& r : runs.recompute) {
    std::printf("time: %s: %s in %.1f s: %.4f s per scored token\n", r.label.c_str(),
                plural(long(targets), "scored token").c_str(), r.seconds, r.seconds / double(targets));
    alone_budgets.push_back(r.budget);
  }
  if (!opt.time_alone) {
    if (!runs.recompute.empty())
      std::printf(
          "time: a side-by-side step serves every run at once; for a fair recompute/streaming ratio time "
          "StreamingLLM alone (--time-alone, or --policies streaming --budgets B on its own)\n");
    return;
  }
  if (alone_budgets.empty()) alone_budgets = opt.budgets;
  for (int b : alone_budgets) {
    const AloneTime alone = streaming_alone(model, ids, b);
    std::printf("time: streaming/%d alone (one sequence, %d steps after %d tokens): %.4f s per token", b, alone.steps,
                alone.warm, alone.seconds_per_token);
    for (const auto& r : runs.recompute)
      if (r.budget == b)
        std::printf("; recompute/%d costs %.1fx that", b, r.seconds / double(targets) / alone.seconds_per_token);
    std::printf("\n");
  }
}

void write_nll_csv(const std::string& path, const Runs& runs, const std::vector<int>& ids) {
  std::ofstream csv(path);
  csv << "token,id";
  for (const Run* r : runs.all()) csv << "," << r->label;
  csv << "\n";
  for (std::size_t t = 1; t < ids.size(); ++t) {
    csv << t << "," << ids[t];
    for (const Run* r : runs.all()) {
      csv << ",";
      if (!std::isnan(r->nll[t])) csv << r->nll[t];
    }
    csv << "\n";
  }
}

void write_bucket_csv(const Options& opt, const Runs& runs) {
  std::ofstream csv(opt.bucket_csv);
  csv << "run,policy,budget,bucket_first,bucket_last,tokens,ppl,ppl_lo,ppl_hi\n";
  const auto bs = buckets(opt.tokens, opt.bucket);
  for (const Run* r : runs.all())
    for (const auto& b : bs) {
      const Estimate e = block_bootstrap(r->nll, b.first, b.end);
      csv << r->label << "," << r->policy << "," << r->budget << "," << b.first << "," << b.end - 1 << "," << e.tokens
          << ",";
      if (e.tokens) csv << e.ppl();
      csv << ",";
      if (!std::isnan(e.lo))
        csv << e.ppl_lo() << "," << e.ppl_hi();
      else
        csv << ",";
      csv << "\n";
    }
}

void write_attention_map(const std::string& path, const llama::AttentionTable& table) {
  std::ofstream map(path);
  map << "layer";
  for (int p = 0; p < table.n_first; ++p) map << ",pos" << p;
  map << "\n";
  for (int l = 0; l < table.n_layers; ++l) {
    map << l;
    for (int p = 0; p < table.n_first; ++p) map << "," << table.mean(l, p);
    map << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  try {
    const gguf::File file(opt.model);
    llama::Model model(file);
    if (opt.threads > 0) model.set_threads(opt.threads);
    model.set_kv_type(llama::parse_kv_type(opt.kv_type));
    const int threads = model.threads();
    const llama::Tokenizer tokenizer(file);
    const auto tokenize_start = std::chrono::steady_clock::now();
    const std::vector<int> ids = tokenize(tokenizer, read_stream(opt.texts), opt.skip_chars, opt.tokens);
    const double tokenize_seconds = seconds_since(tokenize_start);
    const int newline = tokenizer.encode("\n").at(0);

    Runs runs = make_runs(model, opt, newline);
    for (const auto& [a, b] : opt.compare)
      for (const auto& label : {a, b})
        if (!runs.find(label)) usage("--compare: no run " + label + " (runs are labelled like h2o/128, or dense)");
    for (const auto& entry : opt.run_tokens)
      if (entry.first != "*" && !runs.find(entry.first))
        usage("--run-tokens: no run " + entry.first + " (runs are labelled like h2o/128, or dense; * for all)");
    std::vector<int> targets;
    if (!runs.recompute.empty()) {
      targets = recompute_targets(opt);
      for (const auto& r : runs.recompute)
        if (opt.recompute_count > 0 && opt.recompute_first < r.budget + 2)
          usage("--recompute-range must start at budget + 2 or later (" + std::to_string(r.budget + 2) + " for " +
                r.label + "): earlier tokens see the whole text");
    }

    std::cerr << "model: " << model.config().n_layers << " layers, " << model.config().n_heads << "/"
              << model.config().n_kv_heads << " heads; text: " << ids.size() << " tokens (tokenised in "
              << std::lround(tokenize_seconds * 1000) << " ms); " << plural(long(runs.stream.size()), "streaming run")
              << " side by side";
    if (!runs.recompute.empty())
      std::cerr << ", " << plural(long(runs.recompute.size()), "recompute run") << " on "
                << plural(long(targets.size()), "token");
    std::cerr << "; " << plural(threads, "thread") << "; K/V stored as " << opt.kv_type << "\n";

    const StreamTime stream_time = stream(model, runs.stream, ids);
    recompute(model, runs.recompute, ids, targets);

    print_summary(opt, runs, targets);
    print_buckets(opt, runs);
    print_comparisons(opt, runs);
    print_times(opt, model, runs, ids, stream_time, targets.size());
    if (!opt.csv.empty()) write_nll_csv(opt.csv, runs, ids);
    if (!opt.bucket_csv.empty()) write_bucket_csv(opt, runs);
    if (runs.table) write_attention_map(opt.attention_map, *runs.table);
  } catch (const std::exception& e) {
    std::cerr << "kvevict_eval: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
