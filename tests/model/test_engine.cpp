// SPDX-License-Identifier: Apache-2.0
// The example engine against llama.cpp's outputs on the same file (tests/golden, made by
// scripts/make_golden.sh), and the StreamingLLM paper's headline claim on real text.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>

#include "model.hpp"
#include "model_assets.hpp"
#include "tokenizer.hpp"

namespace {

struct Engine {
  gguf::File file{assets::model()};
  llama::Model model{file};
  llama::Tokenizer tokenizer{file};
};

const Engine& engine() {
  static const Engine e;
  return e;
}

std::string golden(const std::string& name) { return assets::read(std::string(KVEVICT_GOLDEN_DIR) + "/" + name); }

std::string unescape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
  }
  return out;
}

TEST(Engine, TokenizerMatchesLlamaCppOnAustenPassages) {
  std::istringstream lines(golden("tokens.txt"));
  int passages = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string novel, colon;
    std::size_t first = 0, length = 0;
    in >> novel >> first >> length >> colon;
    const std::vector<int> expected = assets::ints(in);
    const std::string text = assets::read(assets::novel(novel)).substr(first, length);
    EXPECT_EQ(engine().tokenizer.encode(text), expected) << novel << " from " << first;
    EXPECT_EQ(engine().tokenizer.decode(expected), text);
    ++passages;
  }
  EXPECT_EQ(passages, 6);
}

// The engine computes as llama.cpp does on the CPU (weights in their quantised blocks, activations rounded to
// 8-bit blocks with half-precision scales) but sums in another order, keeps K/V in float where llama.cpp keeps
// half precision, and runs its own RoPE, norms and softmax: each logit carries a small error of arithmetic.
// Most of it comes from rounding the activations to 8 bits: where two builds' floats differ in the last bit, a
// value can round to the other side in its block, and that step is up to 1/254 of the block's largest value.
// So the error depends on how the build's float kernels sum, not only on the model. Measured on the eight
// prompts of logits.txt, same CPU: largest 0.60, rms 0.19 with AVX2 code (-march=native -mno-avx512f); largest
// 1.03, rms 0.31 with AVX-512 code (Eigen's 16-wide float kernels); largest 0.70, rms 0.29 once the
// quantised products also ran on AVX-512. Along the passages of the next test every build agrees with
// llama.cpp as closely (top-1 94.7-96.5%, perplexity within 0.3%). kLogitTolerance is
// 1.5 times the largest seen; the rms, which one unlucky logit does not move, must stay below kLogitRms (1.5
// times the largest rms). A top-1 token can differ from llama.cpp's only where llama.cpp's lead over its
// runner-up is below twice the tolerance.
constexpr double kLogitTolerance = 1.5;
constexpr double kLogitRms = 0.5;

TEST(Engine, NextTokenLogitsMatchLlamaCpp) {
  std::istringstream lines(golden("logits.txt"));
  double largest = 0.0, sum_squares = 0.0;
  int prompts = 0, same_top1 = 0, compared = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("prompt ", 0) != 0) continue;
    const std::string prompt = unescape(line.substr(7));
    std::string ids_line, top_line;
    std::getline(lines, ids_line);
    std::getline(lines, top_line);
    std::istringstream ids_in(ids_line.substr(4));
    const std::vector<int> ids = assets::ints(ids_in);
    ASSERT_EQ(engine().tokenizer.encode(prompt), ids) << prompt;
    auto cache = engine().model.make_cache<kvevict::Dense>(int(ids.size()));
    const Eigen::RowVectorXf logits = engine().model.prefill(*cache, ids.data(), int(ids.size()));
    std::vector<std::pair<int, double>> top;
    std::istringstream top_in(top_line.substr(4));
    for (std::string pair; top_in >> pair;)
      top.emplace_back(std::stoi(pair.substr(0, pair.find(':'))), std::stod(pair.substr(pair.find(':') + 1)));
    ASSERT_GE(top.size(), 2u);
    for (const auto& [id, expected] : top) {
      const double difference = double(logits[id]) - expected;
      largest = std::max(largest, std::abs(difference));
      sum_squares += difference * difference;
      ++compared;
    }
    Eigen::Index mine;
    logits.maxCoeff(&mine);
    same_top1 += int(mine) == top[0].first;
    if (top[0].second - top[1].second > 2 * kLogitTolerance) {
      EXPECT_EQ(int(mine), top[0].first) << prompt;
    }
    ++prompts;
  }
  EXPECT_EQ(prompts, 8);
  const double rms = std::sqrt(sum_squares / std::max(compared, 1));
  std::printf(
      "logit difference over llama.cpp's top 20: largest %.4f, rms %.4f over %d; same top-1 on %d of %d "
      "prompts\n",
      largest, rms, compared, same_top1, prompts);
  EXPECT_LT(largest, kLogitTolerance);
  EXPECT_LT(rms, kLogitRms);
}

// Along two passages (256 tokens of Emma, 512 of Persuasion): the same top-1 wherever llama.cpp leads by more
// than 2 * kLogitTolerance, and perplexity within 1% of llama.cpp's on the same tokens. Measured: see the
// printout (top-1 agreement over all positions, the disagreements' largest lead, perplexity of both). llama.cpp
// itself, rerun on a machine with another instruction set, agrees with this file on 246 of 256 Emma tokens
// (scripts/llama_self_agreement.sh), so the bound is on the leads, not on the count.
TEST(Engine, TopOneAndPerplexityAgreeWithLlamaCppAlongPassages) {
  std::istringstream lines(golden("passage_top1.txt"));
  int passages = 0;
  std::string name;
  std::vector<int> ids, top1;
  std::vector<double> lead, nll;
  auto check = [&] {
    ASSERT_EQ(ids.size(), top1.size());
    ASSERT_EQ(ids.size(), lead.size());
    ASSERT_EQ(ids.size(), nll.size() + 1);
    auto cache = engine().model.make_cache<kvevict::Dense>(int(ids.size()));
    int agree = 0;
    double largest_lead_missed = 0, mine = 0, theirs = 0;
    for (std::size_t t = 0; t < ids.size(); t += 64) {
      const int n = int(std::min<std::size_t>(64, ids.size() - t));
      const llama::Matrix logits = engine().model.forward({llama::Segment{cache.get(), &ids[t], n}}, true);
      for (int r = 0; r < n; ++r) {
        const std::size_t i = t + std::size_t(r);
        Eigen::Index best;
        logits.row(r).maxCoeff(&best);
        agree += int(best) == top1[i];
        if (int(best) != top1[i]) {
          largest_lead_missed = std::max(largest_lead_missed, lead[i]);
          EXPECT_LT(lead[i], 2 * kLogitTolerance) << name << ": top-1 differs at token " << i;
        }
        if (i + 1 < ids.size()) {
          mine += llama::nll(logits.row(r), ids[i + 1]);
          theirs += nll[i];
        }
      }
    }
    const double n = double(nll.size()), ppl = std::exp(mine / n), reference = std::exp(theirs / n);
    std::printf(
        "%s: top-1 agreement with llama.cpp %d of %zu (%.1f%%), largest lead where they differ %.3f; "
        "perplexity %.3f, llama.cpp %.3f (%+.2f%%)\n",
        name.c_str(), agree, ids.size(), 100.0 * agree / double(ids.size()), largest_lead_missed, ppl, reference,
        100 * (ppl / reference - 1));
    EXPECT_NEAR(ppl / reference, 1.0, 0.01) << name;
    ++passages;
  };
  for (std::string line; std::getline(lines, line);) {
    std::istringstream in(line.substr(line.find(' ') + 1));
    if (line.rfind("passage ", 0) == 0) {
      if (!ids.empty()) check();
      name = line.substr(8);
      ids.clear();
      top1.clear();
      lead.clear();
      nll.clear();
    }
    if (line.rfind("ids ", 0) == 0) ids = assets::ints(in);
    if (line.rfind("top1 ", 0) == 0) top1 = assets::ints(in);
    for (double x; line.rfind("lead ", 0) == 0 && in >> x;) lead.push_back(x);
    for (double x; line.rfind("nll ", 0) == 0 && in >> x;) nll.push_back(x);
  }
  if (!ids.empty()) check();
  EXPECT_EQ(passages, 2);
}

// How far top-1 agreement can go without llama.cpp's exact arithmetic: the engine against itself along the
// Emma passage, with K/V stored as half (llama.cpp's cache type) and as float. Rounding K and V to half is a
// perturbation of the size of the two engines' differences (each activation row is then rounded to 8 bits,
// where a last-bit change can move a value a whole step); measured: the same top-1 on 247 of 256 tokens
// (96.5%, every difference where the float cache led by at most 0.164), rms difference over all logits 0.21:
// the same agreement as the engine has with llama.cpp on this passage. So top-1 agreement with llama.cpp above
// that would take its arithmetic bit for bit. Bound: the one of the llama.cpp tests above, the same top-1
// wherever the float cache leads by more than 2 x kLogitTolerance. The perplexity ratio is printed, not
// bounded: over 255 tokens it is noise of the size measured here (+0.8%); RESULTS' K/V-type table gives it
// over 4096 tokens with an interval.
TEST(Engine, HalfKvMovesTopOneOnlyAtNearTies) {
  std::istringstream lines(golden("passage_top1.txt"));
  std::vector<int> ids;
  for (std::string line; std::getline(lines, line) && ids.empty();) {
    std::istringstream in(line.substr(line.find(' ') + 1));
    if (line.rfind("ids ", 0) == 0) ids = assets::ints(in);  // the first passage: Emma
  }
  ASSERT_EQ(ids.size(), 256u);
  llama::Model model{engine().file};
  std::vector<llama::Matrix> logits;
  for (const auto type : {llama::KvType::f32, llama::KvType::f16}) {
    model.set_kv_type(type);
    auto cache = model.make_cache<kvevict::Dense>(int(ids.size()));
    llama::Matrix all(Eigen::Index(ids.size()), model.config().vocab);
    for (std::size_t t = 0; t < ids.size(); t += 64)
      all.middleRows(Eigen::Index(t), 64) = model.forward({llama::Segment{cache.get(), &ids[t], 64}}, true);
    logits.push_back(std::move(all));
  }
  int agree = 0;
  double nll_float = 0, nll_half = 0, largest_lead_missed = 0;
  for (Eigen::Index r = 0; r < logits[0].rows(); ++r) {
    Eigen::Index top_float, top_half;
    logits[0].row(r).maxCoeff(&top_float);
    logits[1].row(r).maxCoeff(&top_half);
    agree += top_float == top_half;
    if (top_float != top_half) {
      Eigen::RowVectorXf row = logits[0].row(r);
      const float best = row[top_float];
      row[top_float] = -INFINITY;
      const double lead = double(best - row.maxCoeff());
      largest_lead_missed = std::max(largest_lead_missed, lead);
      EXPECT_LT(lead, 2 * kLogitTolerance) << "top-1 differs at token " << r;
    }
    if (std::size_t(r) + 1 < ids.size()) {
      nll_float += llama::nll(logits[0].row(r), ids[std::size_t(r) + 1]);
      nll_half += llama::nll(logits[1].row(r), ids[std::size_t(r) + 1]);
    }
  }
  const double rms = std::sqrt((logits[0] - logits[1]).squaredNorm() / double(logits[0].size()));
  const double n = double(ids.size() - 1), ratio = std::exp((nll_half - nll_float) / n);
  std::printf(
      "half K/V against float K/V along Emma: the same top-1 on %d of %zu (%.1f%%), largest float lead where "
      "they differ %.3f, rms logit difference %.3f, perplexity ratio %.4f\n",
      agree, ids.size(), 100.0 * agree / double(ids.size()), largest_lead_missed, rms, ratio);
}

// The StreamingLLM claim on real text (Pride and Prejudice, 512 tokens from chapter 1, cache of 64):
// window attention collapses once the text passes the budget; four attention sinks hold it near dense.
// Measured: dense 16.52, window 252.49 (15.3x), StreamingLLM 19.48 (1.18x). Bounds: window > 3x
// dense, StreamingLLM < 1.35x dense.
TEST(Engine, WindowCollapsesWhileAttentionSinksHold) {
  const auto& e = engine();
  const std::string text = assets::read(assets::novel("prideprejudice"));
  std::vector<int> ids = e.tokenizer.encode(text.substr(text.find("It is a truth"), 4000));
  ids.resize(512);
  std::vector<std::unique_ptr<llama::SequenceCache>> caches;
  caches.push_back(e.model.make_cache<kvevict::Dense>(512, {}, 1));
  caches.push_back(e.model.make_cache<kvevict::Window>(64, {}, 1));
  caches.push_back(e.model.make_cache(64, kvevict::StreamingLLM{4}, 1));
  std::vector<double> nll(caches.size(), 0.0);
  for (std::size_t t = 0; t + 1 < ids.size(); ++t) {
    std::vector<llama::Segment> segments;
    for (auto& c : caches) segments.push_back({c.get(), &ids[t], 1});
    const llama::Matrix logits = e.model.forward(segments);
    for (std::size_t i = 0; i < caches.size(); ++i) nll[i] += llama::nll(logits.row(Eigen::Index(i)), ids[t + 1]);
  }
  const double n = double(ids.size() - 1);
  const double dense = std::exp(nll[0] / n), window = std::exp(nll[1] / n), streaming = std::exp(nll[2] / n);
  std::printf("perplexity: dense %.2f, window %.2f, streaming_llm %.2f\n", dense, window, streaming);
  EXPECT_GT(window, 3.0 * dense);
  EXPECT_LT(streaming, 1.35 * dense);
  EXPECT_EQ(caches[1]->size(29, 2), 64);
}

// Runs side by side must not depend on where they sit in the batch: the quantised products take columns in
// tiles of two with a one-column tail, and every tile shape must round alike, or two runs of the same policy
// (or two policies before their first eviction) would score differently. Five identical sequences (two full
// tiles and a tail), 24 tokens each, one prefill chunk of 8 (all columns in one product), then decode.
TEST(Engine, RunsSideBySideDoNotDependOnTheirPlaceInTheBatch) {
  const auto& e = engine();
  const std::vector<int> ids = e.tokenizer.encode(
      "It is a truth universally acknowledged, that a single man in "
      "possession of a good fortune, must be in want of a wife.");
  ASSERT_GE(ids.size(), 24u);
  std::vector<std::unique_ptr<llama::SequenceCache>> caches;
  for (int i = 0; i < 5; ++i) caches.push_back(e.model.make_cache<kvevict::Dense>(32, {}, 8));
  for (std::size_t t = 0; t < 24;) {
    const int n = t == 0 ? 8 : 1;
    std::vector<llama::Segment> segments;
    for (auto& c : caches) segments.push_back({c.get(), &ids[t], n});
    const llama::Matrix logits = e.model.forward(segments);
    for (Eigen::Index i = 1; i < logits.rows(); ++i)
      ASSERT_TRUE(logits.row(i) == logits.row(0)) << "sequence " << i << " at token " << t;
    t += std::size_t(n);
  }
}

// KV head compression on the real model: calibrated on Emma, evaluated on 256 tokens of Pride and Prejudice.
// Merging into as many heads as before changes nothing; merging SmolLM2's 3 kv heads into 1 keeps it usable
// by SVD and destroys it by mean pooling. Measured: original 17.96, 3->3 17.96, SVD 3->1 105.83, mean
// pooling 3->1 11082.2.
// Bounds: 3->3 within 0.1%; SVD below 10x the original; mean pooling above 10x SVD.
TEST(Engine, MergingKvHeadsOnTheRealModel) {
  const auto& e = engine();
  std::vector<int> calib = e.tokenizer.encode(assets::read(assets::novel("emma")).substr(0, 4000));
  calib.resize(512);
  const std::string text = assets::read(assets::novel("prideprejudice"));
  std::vector<int> ids = e.tokenizer.encode(text.substr(text.find("It is a truth"), 2000));
  ids.resize(256);
  const auto seen = e.model.calibrate(calib.data(), int(calib.size()));
  // Merged weights are floats and take unrounded activations (the quantised products round them to 8 bits),
  // so the merges are compared on the float engine, where a 3->3 merge is exact up to float rounding.
  llama::Model reference = e.model;
  reference.dequantize();
  auto perplexity = [&](const std::vector<kvevict::HeadMerge>& merges) {
    llama::Model m = reference;
    m.merge_kv_heads(merges);
    EXPECT_EQ(m.config().n_kv_heads, merges[0].n_merged);
    return llama::dense_perplexity(m, ids);
  };
  auto merged = [&](int heads, kvevict::HeadMergeMethod method) {
    std::vector<kvevict::HeadMerge> merges;
    for (std::size_t l = 0; l < seen.keys.size(); ++l)
      merges.push_back(
          kvevict::fit_head_merge(seen.keys[l], seen.values[l], 3, heads, 64, kvevict::RopeLayout::adjacent, method));
    return perplexity(merges);
  };
  // Merged attention weights are floats and take unrounded activations, where the quantised originals take
  // activations rounded to 8 bits: the exact comparison for a 3->3 merge is the identity merge, which takes
  // the same float path.
  const Eigen::MatrixXd eye = Eigen::MatrixXd::Identity(64, 64);
  const std::vector<kvevict::HeadMerge> identity(
      seen.keys.size(), kvevict::HeadMerge{3, 3, 64, {eye, eye, eye}, {eye, eye, eye}, {eye, eye, eye}});
  const double original = perplexity(identity);
  const double same = merged(3, kvevict::HeadMergeMethod::svd);
  const double svd = merged(1, kvevict::HeadMergeMethod::svd), mean = merged(1, kvevict::HeadMergeMethod::mean);
  std::printf("perplexity: original %.2f, 3->3 %.2f, SVD 3->1 %.2f, mean pooling 3->1 %.1f\n", original, same, svd,
              mean);
  EXPECT_NEAR(same, original, 1e-3 * original);
  EXPECT_LT(svd, 10.0 * original);
  EXPECT_GT(mean, 10.0 * svd);
}
}  // namespace

namespace {

// Past the trained window (SmolLM2's llama.context_length is 8192): StreamingLLM's positions are ranks within
// its cache, never beyond the budget, so a cache that has streamed 8192 tokens must predict the next ones as
// well as one that started 1024 tokens earlier: at budget 256 both end up holding the same 252 recent tokens
// and differ only in which four tokens are their sinks (the paper finds any initial tokens serve). A mistake in
// long-stream bookkeeping (positions, sink re-rotation, slot reuse) shows as a gap between the two. 9217
// tokens of Emma in chunks of 64; perplexity of tokens 8192-9216 from both caches. Measured: see the printout;
// bound 5%.
TEST(Engine, StreamingLlmHoldsPastTheTrainedWindow) {
  const auto& e = engine();
  std::vector<int> ids =
      e.tokenizer.encode(llama::normalize_text(assets::read(assets::novel("emma"))).substr(0, 60000));
  ASSERT_GE(ids.size(), 9217u);
  ids.resize(9217);
  auto perplexity_past_window = [&](std::size_t first) {
    auto cache = e.model.make_cache(256, kvevict::StreamingLLM{4}, 64);
    double past = 0;
    for (std::size_t t = first; t + 1 < ids.size(); t += 64) {
      const int n = int(std::min<std::size_t>(64, ids.size() - 1 - t));
      const llama::Matrix logits = e.model.forward({llama::Segment{cache.get(), &ids[t], n}}, true);
      for (int r = 0; r < n; ++r)
        if (t + std::size_t(r) + 1 >= 8192) past += llama::nll(logits.row(r), ids[t + std::size_t(r) + 1]);
    }
    return std::exp(past / 1025);
  };
  const double long_stream = perplexity_past_window(0), fresh = perplexity_past_window(7168);
  std::printf(
      "StreamingLLM at 256 on tokens 8192-9216: %.3f after streaming from token 0, %.3f from token 7168 "
      "(ratio %.4f)\n",
      long_stream, fresh, long_stream / fresh);
  EXPECT_NEAR(long_stream / fresh, 1.0, 0.05);
}

}  // namespace
