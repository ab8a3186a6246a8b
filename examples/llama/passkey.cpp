// SPDX-License-Identifier: Apache-2.0
// Retrieval through every policy on the real model: a needle sentence holding a random five-digit number is
// hidden at a depth of an Austen haystack, the question asks for it, and greedy decoding must give it back.
//
//   kvevict_passkey --model M.gguf --text emma.txt [--contexts 512,1024,2048,4096] [--depths 0,25,50,75,100]
//                   [--keys 10] [--budgets 128,512,25%] [--policies window,streaming,h2o,ahakv,l2,snapkv,tova]
//                   [--mode compress|stream] [--question prompt|after] [--csv out.csv] [--seed 1] [--threads N]
//
// The prompt, in SmolLM2-Instruct's chat template, `context` tokens in all:
//   <|im_start|>user\n{haystack, the needle " The special magic number is 12345. " at the depth}\n\nWhat is the
//   special magic number mentioned in the text above?<|im_end|>\n<|im_start|>assistant\nThe special magic number is
// The needle and question are RULER's (Hsieh et al., arXiv 2404.06654). With them the dense model finds the
// number at every depth; with the older "The pass key is N. Remember it." it misses most needles in the
// middle of a 1K context, so that wording measures the model, not the cache.
//
// Modes (--mode):
//   compress  The prompt up to the end of the question is prefilled once with full attention: dense attends,
//             its output goes on through the model, and every policy's cache appends the same keys and values
//             and observes the weights its policy reads (all of them for H2O and AhaKV; the last 64 queries
//             for SnapKV, whose observation window is the last 32, and TOVA, which reads the last; none for
//             window, StreamingLLM and L2, which rank by position or key). Then each cache is compressed once
//             to its budget (CacheOptions::max_prompt, one evict() per layer), and the assistant's turn and
//             the answer are decoded through it without further eviction (as SnapKV and kvpress do: the
//             compressed prompt plus the few decoded tokens).
//             --question after leaves the question out of the compressed part: it is read after the
//             compression, as kvpress's question-agnostic presses do, so no policy has seen it when it chose.
//   stream    The whole prompt streams through each cache in chunks of 64, evicting as it goes.
// Dense holds everything and is the ceiling. Every key of a cell shares the text before its needle: that part
// is read once and every cache is forked (copied) for each key.
// Budgets are token counts (128) or shares of the compressed prompt (25%).
// CSV: mode,question,policy,budget,context,depth,key,answer,correct
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "cli.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace {

using llama::Matrix;
using llama::SequenceCache;

// ---------------------------------------------------------------------------------------------- options

struct Options {
  std::string model, text, csv, mode = "compress", question = "prompt";
  std::vector<int> contexts{512, 1024, 2048, 4096};
  std::vector<int> depths{0, 25, 50, 75, 100};  // percent
  std::vector<std::string> budgets{"128", "512"};
  std::vector<std::string> policies{"window", "streaming", "h2o", "ahakv", "l2", "snapkv", "tova"};
  int keys = 10;
  unsigned seed = 1;
  int threads = 0;
  bool read_every_chunk = false;
  bool check_watchers = false;
};

const char* const kUsage =
    "usage: kvevict_passkey --model FILE.gguf --text FILE [options]\n"
    "  --model FILE.gguf       the model (SmolLM2-Instruct's chat template is used)\n"
    "  --text FILE             the haystack, read from its start\n"
    "  --contexts N[,N...]     prompt lengths in tokens (default 512,1024,2048,4096)\n"
    "  --depths P[,P...]       where the needle goes, in percent of the haystack (default 0,25,50,75,100)\n"
    "  --keys N                random numbers per cell (default 10)\n"
    "  --budgets B[,B...]      tokens (128) or shares of the compressed prompt (25%) (default 128,512)\n"
    "  --policies P[,P...]     window, streaming, h2o, ahakv, l2, snapkv, tova (dense always runs)\n"
    "  --mode M                compress (prefill once, compress to the budget) or stream (default compress)\n"
    "  --question Q            compress mode: the question is in the compressed prompt (prompt, default)\n"
    "                          or read after the compression (after)\n"
    "  --csv FILE              one row per answer: mode,question,policy,budget,context,depth,key,answer,correct\n"
    "  --seed N                seed of the numbers (default 1)\n"
    "  --threads N             threads (default: all cores)\n"
    "  --read-every-chunk      compress mode: every policy attends every chunk, not just those it reads\n"
    "                          (the same kept tokens, slower: a check of the shortcut)\n"
    "  --check-watchers        compress mode: also run each policy that watches dense's prefill in a cache of its\n"
    "                          own, attending the chunks it reads, and stop unless both keep the same tokens\n"
    "  -h, --help              this text\n";

[[noreturn]] void usage(const std::string& message) {
  std::cerr << "kvevict_passkey: " << message << "\n" << kUsage;
  std::exit(2);
}

int strict_int(const std::string& option, const std::string& v) {
  long n = -1;
  try {
    n = cli::number<long>(v);
  } catch (const std::logic_error&) {
  }
  if (n < 0 || n > (1 << 24)) usage("bad value for " + option + ": " + v);
  return int(n);
}

using cli::split;

std::vector<int> int_list(const std::string& option, const std::string& v) {
  std::vector<int> out;
  for (const auto& item : split(v)) out.push_back(strict_int(option, item));
  if (out.empty()) usage(option + " names nothing");
  return out;
}

const char* const kPolicies[] = {"window", "streaming", "h2o", "ahakv", "l2", "snapkv", "tova"};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (a == "--read-every-chunk" || a == "--check-watchers") {
      (a == "--read-every-chunk" ? o.read_every_chunk : o.check_watchers) = true;
      continue;
    }
    if (!cli::has_value(argc, argv, i)) usage(a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--model")
      o.model = v;
    else if (a == "--text")
      o.text = v;
    else if (a == "--csv")
      o.csv = v;
    else if (a == "--contexts")
      o.contexts = int_list(a, v);
    else if (a == "--depths")
      o.depths = int_list(a, v);
    else if (a == "--keys")
      o.keys = strict_int(a, v);
    else if (a == "--budgets")
      o.budgets = split(v);
    else if (a == "--policies")
      o.policies = split(v);
    else if (a == "--mode")
      o.mode = v;
    else if (a == "--question")
      o.question = v;
    else if (a == "--seed")
      o.seed = unsigned(strict_int(a, v));
    else if (a == "--threads")
      o.threads = strict_int(a, v);
    else
      usage("unknown option " + a);
  }
  if (o.model.empty() || o.text.empty()) usage("--model and --text are required");
  if (o.mode != "compress" && o.mode != "stream") usage("--mode must be compress or stream, got " + o.mode);
  if (o.question != "prompt" && o.question != "after") usage("--question must be prompt or after, got " + o.question);
  if (o.keys < 1) usage("--keys must be at least 1");
  for (int c : o.contexts)
    if (c < 192 || c > 8192) usage("--contexts: each in [192, 8192] (SmolLM2's window), got " + std::to_string(c));
  for (int d : o.depths)
    if (d > 100) usage("--depths: each in [0, 100], got " + std::to_string(d));
  if (o.budgets.empty()) usage("--budgets names no budget");
  for (const auto& b : o.budgets) {
    const bool share = !b.empty() && b.back() == '%';
    const int n = strict_int("--budgets", share ? b.substr(0, b.size() - 1) : b);
    if (n < 1 || (share && n > 100)) usage("--budgets: a count >= 1 or a share in [1%, 100%], got " + b);
  }
  for (const auto& p : o.policies)
    if (std::find(std::begin(kPolicies), std::end(kPolicies), p) == std::end(kPolicies))
      usage("--policies: unknown policy " + p);
  return o;
}

// ----------------------------------------------------------------------------------------------- prompt

// One prompt in three parts: read once per cell and forked; read per key (with `shared`, the compressed
// prompt); read after the compression.
struct Prompt {
  std::vector<int> shared, compressed, decoded;
};

class PromptBuilder {
 public:
  PromptBuilder(const llama::Tokenizer& tok, const std::string& text, bool question_in_prompt)
      : tok_(tok), question_in_prompt_(question_in_prompt) {
    const int im_start = tok.id("<|im_start|>"), im_end = tok.id("<|im_end|>");
    header_ = {im_start};
    append(header_, "user\n");
    question_ = tok.encode("\n\nWhat is the special magic number mentioned in the text above?");
    question_.push_back(im_end);
    append(question_, "\n");
    assistant_ = {im_start};
    append(assistant_, "assistant\nThe special magic number is");
    haystack_ = tok.encode(text.substr(0, std::min<std::size_t>(text.size(), 8192 * 8)));
  }

  /// The prompt of `context` tokens with `key` at `depth` percent of the haystack; `needle_at` receives the
  /// needle's first position.
  Prompt build(int context, int depth, int key, int* needle_at = nullptr) const {
    const std::vector<int> needle = tok_.encode(" The special magic number is " + std::to_string(key) + ". ");
    const int fixed = int(header_.size() + needle.size() + question_.size() + assistant_.size());
    const int n_hay = context - fixed;
    if (n_hay < 64 || n_hay > int(haystack_.size()))
      usage("--contexts: " + std::to_string(context) + " leaves " + std::to_string(n_hay) +
            " haystack tokens (at least 64, at most the text's " + std::to_string(haystack_.size()) + ")");
    const int at = sentence_end_before(int(std::lround(depth / 100.0 * n_hay)));
    std::vector<int> all = header_;
    all.insert(all.end(), haystack_.begin(), haystack_.begin() + at);
    if (needle_at) *needle_at = int(all.size());
    all.insert(all.end(), needle.begin(), needle.end());
    all.insert(all.end(), haystack_.begin() + at, haystack_.begin() + n_hay);
    if (question_in_prompt_) all.insert(all.end(), question_.begin(), question_.end());
    Prompt p;
    // The part shared by every key ends at the needle, and leaves at least one 64-token chunk per key (SnapKV's
    // window and TOVA's query are the last chunk's).
    const std::size_t shared = std::min(header_.size() + std::size_t(at), all.size() - 64);
    p.shared.assign(all.begin(), all.begin() + std::ptrdiff_t(shared));
    p.compressed.assign(all.begin() + std::ptrdiff_t(shared), all.end());
    if (!question_in_prompt_) p.decoded = question_;
    p.decoded.insert(p.decoded.end(), assistant_.begin(), assistant_.end());
    return p;
  }

 private:
  void append(std::vector<int>& ids, const std::string& text) const {
    const std::vector<int> more = tok_.encode(text);
    ids.insert(ids.end(), more.begin(), more.end());
  }
  // The needle goes between sentences: after the last full stop at most 64 tokens before `at`.
  int sentence_end_before(int at) const {
    for (int i = at; i > 0 && i > at - 64; --i)
      if (tok_.token(haystack_[std::size_t(i - 1)]).find('.') != std::string::npos) return i;
    return at;
  }

  const llama::Tokenizer& tok_;
  bool question_in_prompt_;
  std::vector<int> header_, question_, assistant_, haystack_;
};

// ------------------------------------------------------------------------------------------------- runs

// The weights a policy reads when a prompt is compressed once: SnapKV and TOVA read only the newest queries,
// so their kept set is the same as if every chunk were attended (--check-watchers verifies it on the real
// model: ctest example.passkey_compression_shortcut), and the attention skipped is most of a prompt's cost.
// Window and L2 read none: they rank by position and by key.
enum class Reads { none, last_chunk, all };

// Every policy but StreamingLLM watches dense's prefill (below) and decodes over a copy of the rows it kept.
// StreamingLLM moves the keys it keeps to positions within the cache, which dense's rows do not have: it
// reads the prompt into a cache of its own.
bool watches_dense(const std::string& name) { return name != "streaming"; }

std::unique_ptr<SequenceCache> make_cache(const llama::Model& m, const std::string& name, int budget, int max_prompt) {
  if (name == "window") return m.make_cache<kvevict::Window>(budget, {}, 64, max_prompt);
  if (name == "streaming") return m.make_cache(budget, kvevict::StreamingLLM{4}, 64, max_prompt);
  if (name == "h2o") return m.make_cache<kvevict::H2O>(budget, {}, 64, max_prompt);
  if (name == "ahakv") return m.make_cache<kvevict::AhaKV>(budget, {}, 64, max_prompt);
  if (name == "l2") return m.make_cache<kvevict::L2Norm>(budget, {}, 64, max_prompt);
  if (name == "snapkv") return m.make_cache<kvevict::SnapKV>(budget, {}, 64, max_prompt);
  if (name == "tova") return m.make_cache<kvevict::TOVA>(budget, {}, 64, max_prompt);
  usage("unknown policy " + name);
}

Reads reads_of(const std::string& name) {
  if (name == "h2o" || name == "ahakv") return Reads::all;
  if (name == "snapkv" || name == "tova") return Reads::last_chunk;
  return Reads::none;
}

// ------------------------------------------------------------------------------ one attention, many policies

// The policies read the prompt from dense's prefill instead of storing and attending it again: each keeps its
// own Evictor per head (kvevict's contract for memory it does not own) over dense's slots, fed through Tee, a
// dense policy that shows every token and every weight it sees to them. The slots agree because nothing is
// evicted while the prompt is read.
class Watcher {
 public:
  virtual ~Watcher() = default;
  virtual void admit(int layer, int kv_head, const kvevict::TokenView<float>& token) = 0;
  virtual void observe(int layer, int kv_head, const kvevict::AttentionView<float>& weights) = 0;
  /// Evicts every head to its budget; the kept keys must not move (positions as in the prompt).
  virtual void compress() = 0;
  virtual const std::int64_t* positions(int layer, int kv_head) const = 0;
  virtual std::unique_ptr<Watcher> clone() const = 0;
  Reads reads = Reads::all;
};

template <class Policy>
class WatcherOf final : public Watcher {
 public:
  WatcherOf(const llama::Model& model, const Policy& policy, int budget, int capacity, Reads r)
      : n_kv_(model.config().n_kv_heads) {
    reads = r;
    const auto& c = model.config();
    for (int l = 0; l < c.n_layers; ++l)
      for (int h = 0; h < c.n_kv_heads; ++h)
        heads_.emplace_back(policy, kvevict::HeadContext{}
                                        .with_layer(l, c.n_layers)
                                        .with_kv_head(h)
                                        .with_budget(budget)
                                        .with_capacity(capacity)
                                        .with_head_dim(c.head_dim)
                                        .with_group_size(c.n_heads / c.n_kv_heads));
  }
  void admit(int layer, int kv_head, const kvevict::TokenView<float>& token) override {
    auto& head = at(layer, kv_head);
    if (head.next_free_slot() != token.slot) throw std::logic_error("a watcher's slots left dense's");
    head.admit(token.position, token.key, token.value);
  }
  void observe(int layer, int kv_head, const kvevict::AttentionView<float>& w) override {
    auto& head = at(layer, kv_head);
    head.observe(kvevict::AttentionView<float>{w.probs, w.logits, w.scale, w.query_positions, w.n_queries, w.group,
                                               head.view()});
  }
  void compress() override {
    for (auto& head : heads_) {
      head.evict_to_budget();
      head.move_keys([](int, std::int64_t, std::int64_t, std::int64_t) {
        throw std::logic_error("a watched policy moved a key");
      });
    }
  }
  const std::int64_t* positions(int layer, int kv_head) const override {
    return heads_[std::size_t(layer * n_kv_ + kv_head)].slots().positions();
  }
  std::unique_ptr<Watcher> clone() const override { return std::make_unique<WatcherOf>(*this); }

 private:
  kvevict::Evictor<Policy>& at(int layer, int kv_head) { return heads_[std::size_t(layer * n_kv_ + kv_head)]; }
  int n_kv_;
  std::vector<kvevict::Evictor<Policy>> heads_;
};

std::unique_ptr<Watcher> make_watcher(const llama::Model& m, const std::string& name, int budget, int capacity,
                                      Reads reads) {
  if (name == "window")
    return std::make_unique<WatcherOf<kvevict::Window>>(m, kvevict::Window{}, budget, capacity, reads);
  if (name == "l2") return std::make_unique<WatcherOf<kvevict::L2Norm>>(m, kvevict::L2Norm{}, budget, capacity, reads);
  if (name == "h2o") return std::make_unique<WatcherOf<kvevict::H2O>>(m, kvevict::H2O{}, budget, capacity, reads);
  if (name == "ahakv") return std::make_unique<WatcherOf<kvevict::AhaKV>>(m, kvevict::AhaKV{}, budget, capacity, reads);
  if (name == "snapkv")
    return std::make_unique<WatcherOf<kvevict::SnapKV>>(m, kvevict::SnapKV{}, budget, capacity, reads);
  if (name == "tova") return std::make_unique<WatcherOf<kvevict::TOVA>>(m, kvevict::TOVA{}, budget, capacity, reads);
  usage("no watcher for policy " + name);
}

// Which watchers dense's prefill feeds now (none while decoding), and whether this is the prompt's last chunk.
// The watchers keep separate state, so they observe side by side on the engine's threads.
struct Switchboard {
  std::vector<Watcher*> watchers;
  bool last_chunk = false;
  std::function<void(int, kvevict::TaskRef)> parallel_for;
  std::vector<Watcher*> reading;  // scratch of observe()

  template <class Task>
  void for_each(const std::vector<Watcher*>& ws, Task&& task) {
    auto one = [&](int i) { task(*ws[std::size_t(i)]); };
    parallel_for(int(ws.size()), kvevict::TaskRef(one));
  }
};

/// Dense, showing what it sees to the switchboard's watchers.
struct Tee {
  static constexpr bool evicts = false;
  static constexpr bool needs_logits = true;  // AhaKV reads logits
  std::shared_ptr<Switchboard> board;
  int layer = 0, kv_head = 0;

  std::vector<float> widened;  // a 16-bit token's key and value rows as float, for the watchers

  void init(const kvevict::HeadContext& c) {
    layer = c.layer;
    kv_head = c.kv_head;
    widened.resize(2 * std::size_t(c.head_dim));
  }
  int select(const kvevict::SlotView&) const noexcept { return -1; }
  bool protects(std::int64_t, std::int64_t) const noexcept { return true; }
  // A 16-bit cache hands over its stored rows; the watchers read float.
  template <class Stored>
  void on_append(const kvevict::TokenView<Stored>& token) {
    if constexpr (std::is_same_v<Stored, float>) {
      for (Watcher* w : board->watchers) w->admit(layer, kv_head, token);
    } else {
      const std::size_t d = std::size_t(token.head_dim);
      for (std::size_t i = 0; i < d; ++i) {
        widened[i] = float(token.key[i]);
        widened[d + i] = float(token.value[i]);
      }
      on_append(
          kvevict::TokenView<float>{token.slot, token.position, widened.data(), widened.data() + d, token.head_dim});
    }
  }
  void observe(const kvevict::AttentionView<float>& weights) {
    auto& reading = board->reading;
    reading.clear();
    for (Watcher* w : board->watchers)
      if (w->reads == Reads::all || (w->reads == Reads::last_chunk && board->last_chunk)) reading.push_back(w);
    board->for_each(reading, [&](Watcher& w) { w.observe(layer, kv_head, weights); });
  }
};

// A watcher's compressed cache for decoding: a copy of the rows of dense's keys and values that the policy
// kept, in dense's order, with room after them for as many new tokens as dense has. It never evicts: what
// is decoded after a compression is a few tokens.
class KeptCopy final : public SequenceCache {
 public:
  KeptCopy(const llama::Model& model, const kvevict::KVCache<float, Tee>& dense, const Watcher& watcher)
      : options_(model.cache_options()),
        d_(model.config().head_dim),
        group_(model.config().n_heads / model.config().n_kv_heads) {
    options_.attention.key_splits = 1;
    const auto& c = model.config();
    for (int l = 0; l < c.n_layers; ++l) {
      for (int h = 0; h < c.n_kv_heads; ++h) {
        const int held = int(dense.head(l, h).slots().high_water()), room = dense.capacity(l) - held;
        const std::int64_t* p = watcher.positions(l, h);
        const int kept = int(std::count_if(p, p + held, [](std::int64_t q) { return q != kvevict::kFreeSlot; }));
        const auto& k = dense.keys(l, h);
        const auto& v = dense.values(l, h);
        keys_.emplace_back(kept + room, d_);
        values_.emplace_back(kept + room, d_);
        positions_.emplace_back(std::size_t(kept + room), kvevict::kFreeSlot);
        for (int s = 0, row = 0; s < held; ++s) {
          if (p[s] == kvevict::kFreeSlot) continue;
          keys_.back().row(row) = k.row(s);
          values_.back().row(row) = v.row(s);
          positions_.back()[std::size_t(row++)] = p[s];
        }
        used_.push_back(kept);
      }
      n_seen_.push_back(dense.n_seen(l));
    }
    n_kv_ = c.n_kv_heads;
  }
  void forward(int layer, const Eigen::Ref<const Matrix>& q, const Eigen::Ref<const Matrix>& k,
               const Eigen::Ref<const Matrix>& v, Eigen::Ref<Matrix> out) override {
    const int t_count = int(q.rows());
    const std::int64_t first = n_seen_[std::size_t(layer)];
    queries_ = q;
    query_pos_.resize(std::size_t(t_count));
    for (int t = 0; t < t_count; ++t) {
      query_pos_[std::size_t(t)] = first + t;
      for (int h = 0; h < int(q.cols()) / d_; ++h) options_.rope.rotate(queries_.row(t).data() + h * d_, first + t);
    }
    for (int kv = 0; kv < n_kv_; ++kv) {
      const std::size_t i = std::size_t(layer * n_kv_ + kv);
      for (int t = 0; t < t_count; ++t) {
        const int row = used_[i]++;
        if (row >= keys_[i].rows()) throw std::logic_error("KeptCopy: no room left after the prompt");
        keys_[i].row(row) = k.row(t).segment(kv * d_, d_);
        options_.rope.rotate(keys_[i].row(row).data(), first + t);
        values_[i].row(row) = v.row(t).segment(kv * d_, d_);
        positions_[i][std::size_t(row)] = first + t;
      }
      probs_.resize(t_count * group_, keys_[i].rows());
      const auto g =
          kvevict::GroupAttention<float, float>{}
              .with_queries(queries_.data() + kv * group_ * d_, queries_.outerStride(), query_pos_.data(), t_count)
              .with_cache(keys_[i].data(), values_[i].data(), positions_[i].data(), int(keys_[i].rows()), used_[i])
              .with_heads(group_, d_)
              .with_weights(probs_.data(), nullptr)
              .with_output(out.data() + kv * group_ * d_, out.outerStride());
      kvevict::attend_group(g, options_.attention, kv * group_);
    }
    n_seen_[std::size_t(layer)] = first + t_count;
  }
  void append(int, const Eigen::Ref<const Matrix>&, const Eigen::Ref<const Matrix>&) override { unused(); }
  void attend(int, const Eigen::Ref<const Matrix>&, Eigen::Ref<Matrix>) override { unused(); }
  void evict(int) override {}
  std::unique_ptr<SequenceCache> clone() const override { unused(); }
  void clear() override { unused(); }
  int size(int layer, int kv_head) const override { return int(positions(layer, kv_head).size()); }
  std::vector<std::int64_t> positions(int layer, int kv_head) const override {
    std::vector<std::int64_t> held;
    for (std::int64_t p : positions_[std::size_t(layer * n_kv_ + kv_head)])
      if (p >= 0) held.push_back(p);
    return held;
  }
  int max_chunk() const override { return 64; }

 private:
  [[noreturn]] static void unused() { throw std::logic_error("KeptCopy only runs forward()"); }
  kvevict::CacheOptions options_;
  int d_, group_, n_kv_ = 0;
  std::vector<Matrix> keys_, values_;
  std::vector<std::vector<std::int64_t>> positions_;
  std::vector<int> used_;
  std::vector<std::int64_t> n_seen_;
  std::vector<std::int64_t> query_pos_;
  Matrix queries_, probs_;
};

// One policy at one budget: its cache, or until its prompt is compressed, what watches dense's prefill for it.
struct Run {
  std::string policy, budget_label;
  int budget = 0;
  Reads reads = Reads::all;
  std::unique_ptr<SequenceCache> cache;
  std::unique_ptr<Watcher> watcher;
  Run fork() const {
    return Run{
        policy, budget_label, budget, reads, cache ? cache->clone() : nullptr, watcher ? watcher->clone() : nullptr};
  }
};

// The prompt read once for every policy: dense attends and its output goes on through the model; every
// policy's cache appends the same keys and values and attends the chunks whose weights it reads (with
// --read-every-chunk; otherwise the policies that read weights watch dense's).
class SharedPrefill final : public SequenceCache {
 public:
  SharedPrefill(SequenceCache& dense, std::vector<Run>& runs) : dense_(dense), runs_(runs) {}
  bool last_chunk = false;

  void forward(int layer, const Eigen::Ref<const Matrix>& q, const Eigen::Ref<const Matrix>& k,
               const Eigen::Ref<const Matrix>& v, Eigen::Ref<Matrix> out) override {
    dense_.forward(layer, q, k, v, out);  // feeds the watchers through Tee
    scratch_.resize(q.rows(), q.cols());
    for (Run& r : runs_) {
      if (!r.cache) continue;
      r.cache->append(layer, k, v);
      // A cache beside a watcher (--check-watchers) reads every chunk: the reference for both shortcuts.
      if (r.reads == Reads::all || r.watcher || (r.reads == Reads::last_chunk && last_chunk))
        r.cache->attend(layer, q, scratch_);
    }
  }
  void append(int, const Eigen::Ref<const Matrix>&, const Eigen::Ref<const Matrix>&) override { unused(); }
  void attend(int, const Eigen::Ref<const Matrix>&, Eigen::Ref<Matrix>) override { unused(); }
  void evict(int) override { unused(); }
  std::unique_ptr<SequenceCache> clone() const override { unused(); }
  void clear() override { unused(); }
  int size(int layer, int kv_head) const override { return dense_.size(layer, kv_head); }
  std::vector<std::int64_t> positions(int layer, int kv_head) const override {
    return dense_.positions(layer, kv_head);
  }
  int max_chunk() const override { return dense_.max_chunk(); }

 private:
  [[noreturn]] static void unused() { throw std::logic_error("SharedPrefill only runs forward()"); }
  SequenceCache& dense_;
  std::vector<Run>& runs_;
  Matrix scratch_;
};

// After a compression: appends and attends, never evicts (the decoded tokens are few).
class Growing final : public SequenceCache {
 public:
  explicit Growing(std::unique_ptr<SequenceCache> cache) : owned_(std::move(cache)), cache_(*owned_) {}
  void forward(int layer, const Eigen::Ref<const Matrix>& q, const Eigen::Ref<const Matrix>& k,
               const Eigen::Ref<const Matrix>& v, Eigen::Ref<Matrix> out) override {
    cache_.append(layer, k, v);
    cache_.attend(layer, q, out);
  }
  void append(int layer, const Eigen::Ref<const Matrix>& k, const Eigen::Ref<const Matrix>& v) override {
    cache_.append(layer, k, v);
  }
  void attend(int layer, const Eigen::Ref<const Matrix>& q, Eigen::Ref<Matrix> out) override {
    cache_.attend(layer, q, out);
  }
  void evict(int) override {}
  std::unique_ptr<SequenceCache> clone() const override { throw std::logic_error("Growing is not copied"); }
  void clear() override { cache_.clear(); }
  int size(int layer, int kv_head) const override { return cache_.size(layer, kv_head); }
  std::vector<std::int64_t> positions(int layer, int kv_head) const override {
    return cache_.positions(layer, kv_head);
  }
  int max_chunk() const override { return cache_.max_chunk(); }

 private:
  std::unique_ptr<SequenceCache> owned_;
  SequenceCache& cache_;
};

constexpr int kChunk = 64;

// Reads `ids` into each cache side by side, in chunks of kChunk; returns each one's logits of the last token.
Matrix read_side_by_side(const llama::Model& model, Run& dense, std::vector<Run>& runs, const std::vector<int>& ids) {
  Matrix logits;
  for (std::size_t t = 0; t < ids.size(); t += kChunk) {
    const int n = int(std::min<std::size_t>(kChunk, ids.size() - t));
    std::vector<llama::Segment> segments{{dense.cache.get(), &ids[t], n}};
    for (Run& r : runs) segments.push_back({r.cache.get(), &ids[t], n});
    logits = model.forward(segments);
  }
  return logits;
}

// Reads `ids` once for every cache (compress mode), the last chunk a full one where there is room.
void read_shared(const llama::Model& model, Run& dense, std::vector<Run>& runs, const std::vector<int>& ids,
                 bool ends_the_prompt, Switchboard& board) {
  SharedPrefill shared(*dense.cache, runs);
  const std::size_t n = ids.size();
  std::size_t t = 0;
  while (t < n) {
    const std::size_t first = (n - t) % kChunk;  // a short chunk first, so the last is a full one
    const int rows = int(first != 0 ? first : kChunk);
    shared.last_chunk = board.last_chunk = ends_the_prompt && t + std::size_t(rows) == n;
    model.forward({llama::Segment{&shared, &ids[t], rows}});
    t += std::size_t(rows);
  }
}

// -------------------------------------------------------------------------------------------- the grid

// --check-watchers: the policy's own cache, compressed, against the watcher that read dense's prefill.
void check_same_tokens(SequenceCache& own, const SequenceCache& watched, const Run& r, const llama::Config& c) {
  for (int l = 0; l < c.n_layers; ++l) {
    own.evict(l);
    for (int h = 0; h < c.n_kv_heads; ++h) {
      auto a = own.positions(l, h), b = watched.positions(l, h);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      if (a != b)
        throw std::runtime_error("--check-watchers: " + r.policy + "/" + r.budget_label +
                                 " keeps other tokens at layer " + std::to_string(l) + " head " + std::to_string(h) +
                                 " when it watches dense");
    }
  }
  std::fprintf(stderr, "%s/%s: the same tokens in every head\n", r.policy.c_str(), r.budget_label.c_str());
}

struct Answer {
  std::string policy, budget;
  int context, depth, key;
  std::string text;
  bool correct;
};

int argmax(const Eigen::Ref<const Eigen::RowVectorXf>& row) {
  Eigen::Index best = 0;
  row.maxCoeff(&best);
  return int(best);
}

bool is_answer(const std::string& text, int key) {
  std::size_t i = 0;
  while (i < text.size() && text[i] == ' ') ++i;
  const std::string digits = std::to_string(key);
  if (text.compare(i, digits.size(), digits) != 0) return false;
  const std::size_t after = i + digits.size();
  return after == text.size() || !std::isdigit(static_cast<unsigned char>(text[after]));
}

int budget_of(const std::string& spec, int compressed_length) {
  if (spec.back() == '%') return std::max(1, int(std::lround(std::stoi(spec) / 100.0 * compressed_length)));
  return std::stoi(spec);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Every key of one cell (context, depth): the shared part read once, then each key on forked caches.
std::vector<Answer> run_cell(const llama::Model& model, const llama::Tokenizer& tok, const PromptBuilder& builder,
                             const Options& opt, int context, int depth, const std::vector<int>& keys) {
  const bool compress = opt.mode == "compress";
  const Prompt first = builder.build(context, depth, keys[0]);
  const int compressed_length = int(first.shared.size() + first.compressed.size());
  const int dense_budget = context + 16;
  auto board = std::make_shared<Switchboard>();
  board->parallel_for = model.cache_options().attention.parallel_for;
  Run dense{
      "dense",
      "-",
      dense_budget,
      Reads::all,
      compress ? model.make_cache(dense_budget, Tee{board, 0, 0, {}}) : model.make_cache<kvevict::Dense>(dense_budget),
      nullptr};
  const int dense_capacity = dense_budget + dense.cache->max_chunk();
  std::vector<Run> runs;
  for (const auto& name : opt.policies)
    for (const auto& spec : opt.budgets) {
      Run r{name,    spec,   budget_of(spec, compressed_length), opt.read_every_chunk ? Reads::all : reads_of(name),
            nullptr, nullptr};
      if (compress && !opt.read_every_chunk && watches_dense(name))
        r.watcher = make_watcher(model, name, r.budget, std::max(dense_capacity, r.budget), r.reads);
      if (!r.watcher || opt.check_watchers)
        r.cache = make_cache(model, name, r.budget, compress ? compressed_length : 0);
      runs.push_back(std::move(r));
    }
  auto watch = [&](std::vector<Run>& rs) {
    board->watchers.clear();
    for (Run& r : rs)
      if (r.watcher) board->watchers.push_back(r.watcher.get());
  };
  if (compress) {
    watch(runs);
    read_shared(model, dense, runs, first.shared, false, *board);
  } else {
    read_side_by_side(model, dense, runs, first.shared);
  }

  std::vector<Answer> answers;
  for (int key : keys) {
    const Prompt p = builder.build(context, depth, key);
    Run d = dense.fork();
    std::vector<Run> forks;
    for (const Run& r : runs) forks.push_back(r.fork());
    if (compress) {
      watch(forks);
      read_shared(model, d, forks, p.compressed, true, *board);
      board->watchers.clear();  // dense decodes on its own
      const auto& dense_cache = dynamic_cast<const llama::CacheOf<float, Tee>&>(*d.cache).cache;
      std::vector<Watcher*> watchers;
      for (Run& r : forks)
        if (r.watcher) watchers.push_back(r.watcher.get());
      board->for_each(watchers, [](Watcher& w) { w.compress(); });
      for (Run& r : forks) {
        if (r.watcher) {
          auto kept = std::make_unique<KeptCopy>(model, dense_cache, *r.watcher);
          if (r.cache) check_same_tokens(*r.cache, *kept, r, model.config());
          r.cache = std::move(kept);
          continue;
        }
        for (int l = 0; l < model.config().n_layers; ++l) r.cache->evict(l);
        r.cache = std::make_unique<Growing>(std::move(r.cache));
      }
    } else {
      read_side_by_side(model, d, forks, p.compressed);
    }
    Matrix logits = read_side_by_side(model, d, forks, p.decoded);
    const std::size_t n_runs = forks.size() + 1;
    std::vector<std::vector<int>> out(n_runs);
    constexpr int kAnswerTokens = 6;  // five digits and what follows them
    for (int step = 0; step < kAnswerTokens; ++step) {
      std::vector<int> next(n_runs);
      for (std::size_t i = 0; i < n_runs; ++i) next[i] = argmax(logits.row(Eigen::Index(i)));
      for (std::size_t i = 0; i < n_runs; ++i) out[i].push_back(next[i]);
      if (step + 1 == kAnswerTokens) break;
      std::vector<llama::Segment> segments{{d.cache.get(), &next[0], 1}};
      for (std::size_t i = 0; i < forks.size(); ++i) segments.push_back({forks[i].cache.get(), &next[i + 1], 1});
      logits = model.forward(segments);
    }
    for (std::size_t i = 0; i < n_runs; ++i) {
      const Run& r = i == 0 ? d : forks[i - 1];
      const std::string text = tok.decode(out[i]);
      answers.push_back(Answer{r.policy, r.budget_label, context, depth, key, text, is_answer(text, key)});
    }
  }
  return answers;
}

std::string csv_text(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c == '\n' ? ' ' : c);
  return out + "\"";
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  std::ofstream csv;
  try {
    const gguf::File file(opt.model);
    llama::Model model(file);
    const llama::Tokenizer tok(file);
    model.set_threads(opt.threads > 0 ? opt.threads : int(std::max(1u, std::thread::hardware_concurrency())));
    std::ifstream in(opt.text, std::ios::binary);
    if (!in) usage("--text: cannot read " + opt.text);
    std::stringstream text;
    text << in.rdbuf();
    const PromptBuilder builder(tok, text.str(), opt.question == "prompt");
    if (!opt.csv.empty()) {  // opened once the model and text have loaded: a typo in either keeps an old file
      csv.open(opt.csv);
      if (!csv) usage("--csv: cannot write " + opt.csv);
      csv << "mode,question,policy,budget,context,depth,key,answer,correct\n";
    }

    std::mt19937 rng(opt.seed);
    std::uniform_int_distribution<int> number(10000, 99999);
    std::map<std::pair<std::string, std::string>, std::map<int, std::pair<int, int>>> score;  // run -> context
    std::vector<std::pair<std::string, std::string>> order;
    std::printf("mode %s, question %s, %d keys per cell\n", opt.mode.c_str(), opt.question.c_str(), opt.keys);
    for (int context : opt.contexts) {
      const auto start = std::chrono::steady_clock::now();
      for (int depth : opt.depths) {
        std::vector<int> keys(std::size_t(opt.keys));
        for (int& k : keys) k = number(rng);
        for (const Answer& a : run_cell(model, tok, builder, opt, context, depth, keys)) {
          const auto run = std::make_pair(a.policy, a.budget);
          if (score.find(run) == score.end()) order.push_back(run);
          auto& [right, total] = score[run][context];
          right += a.correct;
          ++total;
          if (csv)
            csv << opt.mode << ',' << opt.question << ',' << a.policy << ',' << a.budget << ',' << a.context << ','
                << a.depth << ',' << a.key << ',' << csv_text(a.text) << ',' << int(a.correct) << '\n';
        }
      }
      if (csv) csv.flush();
      std::printf("context %d: %.1f s\n", context, seconds_since(start));
      std::fflush(stdout);
    }
    std::printf("\n%-10s %-7s", "policy", "budget");
    for (int c : opt.contexts) std::printf(" %7d", c);
    std::printf("   (share of needles found)\n");
    for (const auto& run : order) {
      std::printf("%-10s %-7s", run.first.c_str(), run.second.c_str());
      for (int c : opt.contexts) {
        const auto [right, total] = score[run][c];
        std::printf(" %7.2f", double(right) / total);
      }
      std::printf("\n");
    }
  } catch (const std::exception& e) {
    std::cerr << "kvevict_passkey: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
