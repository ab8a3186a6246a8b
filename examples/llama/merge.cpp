// SPDX-License-Identifier: Apache-2.0
// KV head compression on the real model as a trade-off curve ("Effectively Compress KV Heads for LLM", Yu et al.,
// arXiv 2406.07056). Calibrated on one text, evaluated on others:
//  1. each layer's cost: the calibration perplexity with that layer alone merged (3 kv heads into 1), by SVD and
//     by mean pooling, beside the share of the calibration K/V the merge cannot reconstruct;
//  2. the curve: the cheapest layers merged first until a target share of the K/V bytes is saved, perplexity
//     on each evaluation text with a 95% interval and the paired ratio to the original, both merges, with and
//     without the training-free repair (the output projection re-fitted by least squares,
//     kvevict::repair_output_projection);
//  3. equal memory: StreamingLLM, H2O and AhaKV on the original model at budget B against the merged model at
//     the budget that takes the same K/V bytes (a layer with fewer kv heads holds more tokens in them).
// Every model computes attention with float weights (the originals dequantised, as a merge leaves them), so a
// merged model differs from the original only in what the merge changed.
//
//   kvevict_merge --model M.gguf --calibration emma.txt --text persuasion.txt,prideprejudice.txt
//                 [--calibration-tokens 4096] [--criterion-tokens 1024] [--tokens 2048]
//                 [--saved 0,10,20,33,50,67] [--ridges 1e-3,1e-2,0.1,1,10,100]
//                 [--equal-memory 33,67 --policies streaming,h2o,ahakv --budgets 128,256 --stream-tokens 2048]
//                 [--curve-csv curve.csv] [--layers-csv layers.csv] [--threads N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cli.hpp"
#include "model.hpp"
#include "stats.hpp"
#include "tokenizer.hpp"

namespace {

using kvevict::HeadMergeMethod;

struct Options {
  std::string model, calibration, curve_csv, layers_csv, equal_csv;
  std::vector<std::string> texts;
  int calibration_tokens = 4096, criterion_tokens = 1024, tokens = 2048, stream_tokens = 2048, threads = 0, heads = 1;
  std::vector<double> saved{0, 10, 20, 33, 50, 67}, equal_memory, ridges{1e-3, 1e-2, 1e-1, 1, 10, 100};
  std::vector<std::string> policies{"streaming", "h2o", "ahakv"};
  std::vector<int> budgets{128, 256};
};

const char* const kUsage =
    "usage: kvevict_merge --model FILE.gguf --calibration FILE --text FILE[,FILE...] [options]\n"
    "  --model FILE.gguf        the model (GGUF, llama architecture)\n"
    "  --calibration FILE       text whose first tokens fit the merges, rank the layers and fit the repair\n"
    "  --text FILE[,FILE...]    evaluation texts, each read from its start\n"
    "  --calibration-tokens N   calibration tokens (default 4096)\n"
    "  --criterion-tokens N     of which the first N rank the layers (default 1024)\n"
    "  --tokens N               evaluation tokens per text for the curve (default 2048)\n"
    "  --heads N                kv heads a merged layer keeps (a divisor of the model's; default 1)\n"
    "  --saved P[,P...]         curve points: percent of the K/V bytes saved (default 0,10,20,33,50,67)\n"
    "  --ridges R[,R...]        the repair's shrinkage towards the merged projection; with several, each layer's\n"
    "                           is chosen on held-out calibration tokens (default 1e-3,1e-2,0.1,1,10,100)\n"
    "  --equal-memory P[,P...]  curve points at which to run the policies at equal K/V bytes (default none)\n"
    "  --policies P[,P...]      streaming, h2o, ahakv (default all three)\n"
    "  --budgets B[,B...]       the original model's budgets (default 128,256)\n"
    "  --stream-tokens N        tokens streamed per text for the equal-memory runs (default 2048)\n"
    "  --curve-csv FILE         "
    "text,method,repair,saved_target,layers,saved,ppl,ppl_lo,ppl_hi,ratio,ratio_lo,ratio_hi\n"
    "  --layers-csv FILE        layer,method,cost,key_error,value_error,repair_before,repair_after,ridge\n"
    "  --equal-csv FILE         text,policy,model,original_budget,budget,kv_bytes,ppl,ppl_lo,ppl_hi,ratio,ratio_lo,\n"
    "                           ratio_hi\n"
    "  --threads N              threads (default: all cores)\n"
    "  -h, --help               this text\n";

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "kvevict_merge: " << why << "\n" << kUsage;
  std::exit(2);
}

using cli::split;

template <class T>
T number(const std::string& option, const std::string& v) {
  try {
    return cli::number<T>(v);
  } catch (const std::logic_error&) {
    usage("bad value for " + option + ": " + v);
  }
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (!cli::has_value(argc, argv, i)) usage("missing value after " + a);
    const std::string v = argv[++i];
    if (a == "--model")
      o.model = v;
    else if (a == "--calibration")
      o.calibration = v;
    else if (a == "--text")
      o.texts = split(v);
    else if (a == "--calibration-tokens")
      o.calibration_tokens = number<int>(a, v);
    else if (a == "--tokens")
      o.tokens = number<int>(a, v);
    else if (a == "--stream-tokens")
      o.stream_tokens = number<int>(a, v);
    else if (a == "--heads")
      o.heads = number<int>(a, v);
    else if (a == "--threads")
      o.threads = number<int>(a, v);
    else if (a == "--criterion-tokens")
      o.criterion_tokens = number<int>(a, v);
    else if (a == "--saved" || a == "--equal-memory" || a == "--ridges") {
      auto& list = a == "--saved" ? o.saved : a == "--ridges" ? o.ridges : o.equal_memory;
      list.clear();
      for (const auto& p : split(v)) list.push_back(number<double>(a, p));
    } else if (a == "--policies")
      o.policies = split(v);
    else if (a == "--budgets") {
      o.budgets.clear();
      for (const auto& b : split(v)) o.budgets.push_back(number<int>(a, b));
    } else if (a == "--curve-csv")
      o.curve_csv = v;
    else if (a == "--layers-csv")
      o.layers_csv = v;
    else if (a == "--equal-csv")
      o.equal_csv = v;
    else
      usage("unknown option " + a);
  }
  if (o.model.empty() || o.calibration.empty() || o.texts.empty())
    usage("--model, --calibration and --text are required");
  if (o.calibration_tokens < 64) usage("--calibration-tokens must be at least 64");
  if (o.tokens < 2 || o.stream_tokens < 2) usage("--tokens and --stream-tokens must be at least 2");
  if (o.heads < 1) usage("--heads must be at least 1");
  if (o.threads < 0) usage("--threads must be positive");
  if (o.criterion_tokens < 2) usage("--criterion-tokens must be at least 2");
  if (o.ridges.empty()) usage("--ridges names no ridge");
  for (double r : o.ridges)
    if (!(r >= 0) || !std::isfinite(r)) usage("--ridges must be finite and >= 0");
  for (double p : o.saved)
    if (p < 0 || p > 100) usage("--saved: percentages in [0, 100]");
  for (double p : o.equal_memory)
    if (std::find(o.saved.begin(), o.saved.end(), p) == o.saved.end()) usage("--equal-memory: points of --saved");
  for (const auto& p : o.policies)
    if (p != "streaming" && p != "h2o" && p != "ahakv") usage("--policies: streaming, h2o or ahakv, not " + p);
  for (int b : o.budgets)
    if (b < 1) usage("--budgets must be positive");
  for (const std::string* path : {&o.curve_csv, &o.layers_csv, &o.equal_csv})
    if (!path->empty() && !std::ofstream(*path, std::ios::app)) usage("cannot write " + *path);
  return o;
}

std::vector<int> read_tokens(const llama::Tokenizer& tokenizer, const std::string& path, int n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = llama::normalize_text(ss.str());
  std::vector<int> ids = tokenizer.encode(text.substr(0, std::size_t(n) * 8));
  if (int(ids.size()) < n) usage(path + " has only " + std::to_string(ids.size()) + " tokens");
  ids.resize(std::size_t(n));
  return ids;
}

std::string name_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const std::string file = slash == std::string::npos ? path : path.substr(slash + 1);
  return file.substr(0, file.find('.'));
}

const char* method_name(HeadMergeMethod m) { return m == HeadMergeMethod::svd ? "svd" : "mean"; }

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string interval(double lo, double hi, const char* format) {
  if (std::isnan(lo)) return "";
  char buf[64];
  const std::string f = std::string("[") + format + ", " + format + "]";
  std::snprintf(buf, sizeof buf, f.c_str(), lo, hi);
  return buf;
}

// ------------------------------------------------------------------------------------- merging and repair

/// The original model and what calibration saw in it: merges for every layer by each method, the original
/// attention block's outputs (the repair's target), and each merged layer's repaired output projection.
struct Calibrated {
  const llama::Model& original;
  llama::Model::Calibration seen;
  std::map<HeadMergeMethod, std::vector<kvevict::HeadMerge>> merges;
  std::vector<Eigen::MatrixXd> target;  // per layer: A_o W_o^T on the calibration tokens
  std::map<HeadMergeMethod, std::vector<llama::Matrix>> repaired;
};

/// The repair of one merged layer, fitted locally: the merged layer's attention outputs for the original's
/// inputs against the original block's outputs, so each layer mends its own merge and none compensates for
/// another (which would count the same error twice once both are repaired). The ridge is chosen among
/// `ridges` by the error on the last quarter of the calibration tokens after a fit on the first three
/// quarters, then the fit is repeated on all of them.
struct Repair {
  Eigen::MatrixXd projection;
  double ridge = 0, before = 0, after = 0;  // calibration error |A W^T - T|^2 with W_0 and with the fit
};

Repair fit_repair(const llama::Model& merged, int layer, const Calibrated& c, const std::vector<double>& ridges) {
  const Eigen::MatrixXd a = merged.layer_attention(layer, c.seen.inputs[std::size_t(layer)]);
  const Eigen::MatrixXd& t = c.target[std::size_t(layer)];
  const Eigen::MatrixXd w0 = merged.output_projection(layer).cast<double>();
  Repair r;
  const Eigen::Index fit = a.rows() * 3 / 4, held = a.rows() - fit;
  double best = std::numeric_limits<double>::infinity();
  for (double ridge : ridges) {
    if (ridges.size() == 1) {
      r.ridge = ridge;
      break;
    }
    const Eigen::MatrixXd w = kvevict::repair_output_projection(a.topRows(fit), t.topRows(fit), w0, ridge);
    const double error = (a.bottomRows(held) * w.transpose() - t.bottomRows(held)).squaredNorm();
    if (error < best) {
      best = error;
      r.ridge = ridge;
    }
  }
  r.projection = kvevict::repair_output_projection(a, t, w0, r.ridge);
  r.before = (a * w0.transpose() - t).squaredNorm();
  r.after = (a * r.projection.transpose() - t).squaredNorm();
  return r;
}

/// The original with `layers` merged by `method`, and with `repair` their output projections repaired.
llama::Model merged_model(const Calibrated& c, HeadMergeMethod method, const std::vector<int>& layers, bool repair) {
  llama::Model m = c.original;
  for (int l : layers) {
    m.merge_layer_kv_heads(l, c.merges.at(method)[std::size_t(l)]);
    if (repair) m.set_output_projection(l, c.repaired.at(method)[std::size_t(l)]);
  }
  return m;
}

/// Layers merged to save `percent` of the K/V bytes: each merged layer saves (n_kv - heads) / (n_layers n_kv)
/// of them; the fewest layers that reach the target (all of them at most).
int layers_for(double percent, const llama::Config& c, int heads) {
  const double per_layer = double(c.n_kv_heads - heads) / double(c.n_layers * c.n_kv_heads);
  return std::min(c.n_layers, int(std::ceil(percent / 100.0 / per_layer - 1e-9)));
}

// --------------------------------------------------------------------------------------------- streaming

/// Every cache reads the text one token per step, side by side; NLL per token and cache (entry 0 NaN).
std::vector<std::vector<double>> stream(const llama::Model& model,
                                        std::vector<std::unique_ptr<llama::SequenceCache>>& caches,
                                        const std::vector<int>& ids) {
  std::vector<std::vector<double>> nll(caches.size(), std::vector<double>(ids.size(), NAN));
  std::vector<llama::Segment> segments;
  for (std::size_t t = 0; t + 1 < ids.size(); ++t) {
    segments.clear();
    for (auto& c : caches) segments.push_back({c.get(), &ids[t], 1});
    const llama::Matrix logits = model.forward(segments);
    for (std::size_t i = 0; i < caches.size(); ++i) nll[i][t + 1] = llama::nll(logits.row(Eigen::Index(i)), ids[t + 1]);
  }
  return nll;
}

/// The most tokens the original model's K/V bytes at `budget` hold in `m`.
int tokens_in(int budget, const llama::Model& original, const llama::Model& m) {
  return int(std::int64_t(budget) * original.kv_bytes_per_token() / m.kv_bytes_per_token());
}

std::unique_ptr<llama::SequenceCache> make(const llama::Model& m, const std::string& policy, int budget) {
  if (policy == "streaming") return m.make_cache(budget, kvevict::StreamingLLM{4}, 4);
  if (policy == "h2o") return m.make_cache<kvevict::H2O>(budget, {}, 4);
  return m.make_cache<kvevict::AhaKV>(budget, {}, 4);
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  try {
    const auto start = std::chrono::steady_clock::now();
    const gguf::File file(opt.model);
    llama::Model original(file);
    if (opt.threads > 0) original.set_threads(opt.threads);
    original.dequantize_attention();
    const llama::Tokenizer tokenizer(file);
    const llama::Config& c = original.config();
    if (c.n_kv_heads % opt.heads != 0 || opt.heads >= c.n_kv_heads)
      usage("--heads: a divisor of the model's " + std::to_string(c.n_kv_heads) + " kv heads, below it");
    const std::vector<int> calib = read_tokens(tokenizer, opt.calibration, opt.calibration_tokens);
    std::vector<std::vector<int>> texts;
    for (const auto& path : opt.texts)
      texts.push_back(read_tokens(tokenizer, path, std::max(opt.tokens, opt.stream_tokens)));

    Calibrated cal{original, original.calibrate(calib.data(), int(calib.size())), {}, {}, {}};
    for (int l = 0; l < c.n_layers; ++l) {
      const auto& k = cal.seen.keys[std::size_t(l)];
      const auto& v = cal.seen.values[std::size_t(l)];
      for (auto method : {HeadMergeMethod::svd, HeadMergeMethod::mean})
        cal.merges[method].push_back(
            kvevict::fit_head_merge(k, v, c.n_kv_heads, opt.heads, c.head_dim, kvevict::RopeLayout::adjacent, method));
      cal.target.push_back(cal.seen.attention[std::size_t(l)] *
                           original.output_projection(l).cast<double>().transpose());
    }
    std::fprintf(stderr, "calibrated on %d tokens of %s in %.0f s\n", opt.calibration_tokens,
                 name_of(opt.calibration).c_str(), seconds_since(start));

    // 1. Each layer's cost, merged alone, on the calibration text; its repair.
    const std::vector<int> criterion(calib.begin(), calib.begin() + std::min(opt.criterion_tokens, int(calib.size())));
    const double calib_ppl = llama::dense_perplexity(original, criterion);
    std::printf(
        "each layer merged alone (%d kv heads into %d): cost = calibration perplexity (first %zu tokens of %s, "
        "%.3f unmerged) / unmerged - 1; K, V lost = share of the calibration K/V the merge cannot reconstruct; "
        "repair = calibration error of the output repair / the merge's, with the ridge chosen on held-out tokens\n",
        c.n_kv_heads, opt.heads, criterion.size(), name_of(opt.calibration).c_str(), calib_ppl);
    std::printf("%5s  %10s %7s %7s %7s %7s  %10s %7s %7s %7s %7s\n", "layer", "svd cost", "K lost", "V lost", "repair",
                "ridge", "mean cost", "K lost", "V lost", "repair", "ridge");
    std::map<HeadMergeMethod, std::vector<double>> cost;
    std::ofstream layers_csv;
    if (!opt.layers_csv.empty()) {
      layers_csv.open(opt.layers_csv);
      layers_csv << "layer,method,cost,key_error,value_error,repair_before,repair_after,ridge\n";
    }
    for (int l = 0; l < c.n_layers; ++l) {
      std::printf("%5d ", l);
      for (auto method : {HeadMergeMethod::svd, HeadMergeMethod::mean}) {
        const llama::Model m = merged_model(cal, method, {l}, false);
        cost[method].push_back(llama::dense_perplexity(m, criterion) / calib_ppl - 1.0);
        const kvevict::HeadMergeError error = kvevict::head_merge_error(
            cal.seen.keys[std::size_t(l)], cal.seen.values[std::size_t(l)], cal.merges[method][std::size_t(l)]);
        const Repair r = fit_repair(m, l, cal, opt.ridges);
        cal.repaired[method].push_back(r.projection.cast<float>());
        std::printf(" %+9.2f%% %7.3f %7.3f %7.3f %7.0e ", 100 * cost[method].back(), error.keys, error.values,
                    r.after / r.before, r.ridge);
        if (layers_csv)
          layers_csv << l << "," << method_name(method) << "," << cost[method].back() << "," << error.keys << ","
                     << error.values << "," << r.before << "," << r.after << "," << r.ridge << "\n";
      }
      std::printf("\n");
      std::fflush(stdout);
    }
    std::fprintf(stderr, "layers ranked and repairs fitted at %.0f s\n", seconds_since(start));
    std::map<HeadMergeMethod, std::vector<int>> order;  // cheapest first
    for (auto method : {HeadMergeMethod::svd, HeadMergeMethod::mean}) {
      auto& o = order[method];
      for (int l = 0; l < c.n_layers; ++l) o.push_back(l);
      std::stable_sort(o.begin(), o.end(),
                       [&](int a, int b) { return cost[method][std::size_t(a)] < cost[method][std::size_t(b)]; });
      std::printf("%s order (cheapest first):", method_name(method));
      for (int l : o) std::printf(" %d", l);
      std::printf("\n");
    }
    std::fflush(stdout);

    // 2. The curve.
    std::vector<std::vector<double>> original_nll;
    for (const auto& ids : texts)
      original_nll.push_back(llama::dense_nll(original, std::vector<int>(ids.begin(), ids.begin() + opt.tokens)));
    std::ofstream curve_csv;
    if (!opt.curve_csv.empty()) {
      curve_csv.open(opt.curve_csv);
      curve_csv << "text,method,repair,saved_target,layers,saved,ppl,ppl_lo,ppl_hi,ratio,ratio_lo,ratio_hi\n";
    }
    std::printf(
        "\nthe curve: perplexity on the first %d tokens of each text (95%% interval: block bootstrap, blocks of %d "
        "tokens) and the paired ratio to the original\n",
        opt.tokens, llama::kBlock);
    std::printf("%-18s %7s %7s %6s %7s  ", "text", "saved", "layers", "method", "repair");
    std::printf("%9s %-20s %8s %-18s\n", "ppl", "95% interval", "ratio", "95% interval");
    std::map<double, llama::Model> kept;  // saved -> the SVD model, repaired, for part 3
    for (double saved : opt.saved) {
      const int k = layers_for(saved, c, opt.heads);
      const double actual = 100.0 * k * (c.n_kv_heads - opt.heads) / double(c.n_layers * c.n_kv_heads);
      for (auto method : {HeadMergeMethod::svd, HeadMergeMethod::mean}) {
        const std::vector<int> layers(order[method].begin(), order[method].begin() + k);
        for (bool repair : {false, true}) {
          if (k == 0 && (repair || method == HeadMergeMethod::mean)) continue;  // the original, once
          const llama::Model m = merged_model(cal, method, layers, repair);
          for (std::size_t t = 0; t < texts.size(); ++t) {
            const std::vector<double> nll =
                k == 0 ? original_nll[t]
                       : llama::dense_nll(m, std::vector<int>(texts[t].begin(), texts[t].begin() + opt.tokens));
            const llama::Estimate e = llama::block_bootstrap(nll, 1, nll.size());
            const llama::Estimate r = llama::paired_difference(nll, original_nll[t], 1, nll.size());
            std::printf("%-18s %6.1f%% %7d %6s %7s  %9.3f %-20s %8.4f %-18s\n", name_of(opt.texts[t]).c_str(), actual,
                        k, k == 0 ? "-" : method_name(method), repair ? "yes" : "no", e.ppl(),
                        interval(e.ppl_lo(), e.ppl_hi(), "%.3f").c_str(), r.ppl(),
                        interval(r.ppl_lo(), r.ppl_hi(), "%.4f").c_str());
            if (curve_csv)
              curve_csv << name_of(opt.texts[t]) << "," << (k == 0 ? "none" : method_name(method)) << ","
                        << (repair ? 1 : 0) << "," << saved << "," << k << "," << actual << "," << e.ppl() << ","
                        << e.ppl_lo() << "," << e.ppl_hi() << "," << r.ppl() << "," << r.ppl_lo() << "," << r.ppl_hi()
                        << "\n";
          }
          std::fflush(stdout);
          if (method == HeadMergeMethod::svd && (repair || k == 0) &&
              std::find(opt.equal_memory.begin(), opt.equal_memory.end(), saved) != opt.equal_memory.end())
            kept.emplace(saved, m);
        }
      }
    }

    std::fprintf(stderr, "curve done at %.0f s\n", seconds_since(start));

    // 3. Equal memory: the original at budget B against each kept merged model at the budget with the same bytes.
    if (!opt.equal_memory.empty()) {
      std::ofstream equal_csv;
      if (!opt.equal_csv.empty()) {
        equal_csv.open(opt.equal_csv);
        equal_csv << "text,policy,model,original_budget,budget,kv_bytes,ppl,ppl_lo,ppl_hi,ratio,ratio_lo,ratio_hi\n";
      }
      std::printf(
          "\nequal memory: %d tokens streamed one at a time; K/V bytes = budget x bytes per token; the merged "
          "models (SVD, repaired) get the budget that fills the original's bytes; ratio = perplexity / the "
          "original's at the same bytes and policy, paired\n",
          opt.stream_tokens);
      std::printf("%-18s %-10s %-14s %7s %10s  %9s %-20s %8s %-18s\n", "text", "policy", "model", "budget", "K/V bytes",
                  "ppl", "95% interval", "ratio", "95% interval");
      std::vector<std::pair<std::string, const llama::Model*>> models{{"original", &original}};
      for (const auto& [saved, m] : kept) {
        char label[32];
        std::snprintf(label, sizeof label, "merged %.0f%%", saved);
        models.emplace_back(label, &m);
      }
      for (std::size_t t = 0; t < texts.size(); ++t) {
        const std::vector<int> ids(texts[t].begin(), texts[t].begin() + opt.stream_tokens);
        std::map<std::pair<std::string, int>, std::vector<double>> reference;  // (policy, bytes budget) -> nll
        for (const auto& [label, m] : models) {
          const auto ts = std::chrono::steady_clock::now();
          std::vector<std::unique_ptr<llama::SequenceCache>> caches;
          std::vector<std::pair<std::string, int>> runs;  // (policy, original budget)
          // Dense first: head compression alone, every token kept.
          caches.push_back(m->make_cache<kvevict::Dense>(int(ids.size()), {}, 4));
          runs.emplace_back("dense", int(ids.size()));
          for (const auto& p : opt.policies)
            for (int b : opt.budgets) {
              caches.push_back(make(*m, p, tokens_in(b, original, *m)));
              runs.emplace_back(p, b);
            }
          const auto nll = stream(*m, caches, ids);
          for (std::size_t i = 0; i < runs.size(); ++i) {
            const auto& [p, b] = runs[i];
            const int budget = p == "dense" ? b : tokens_in(b, original, *m);
            if (label == "original") reference[runs[i]] = nll[i];
            const llama::Estimate e = llama::block_bootstrap(nll[i], 1, nll[i].size());
            const llama::Estimate r = llama::paired_difference(nll[i], reference[runs[i]], 1, nll[i].size());
            const std::int64_t bytes = std::int64_t(budget) * m->kv_bytes_per_token();
            std::printf("%-18s %-10s %-14s %7d %10lld  %9.3f %-20s %8.4f %-18s\n", name_of(opt.texts[t]).c_str(),
                        p.c_str(), label.c_str(), budget, static_cast<long long>(bytes), e.ppl(),
                        interval(e.ppl_lo(), e.ppl_hi(), "%.3f").c_str(), r.ppl(),
                        interval(r.ppl_lo(), r.ppl_hi(), "%.4f").c_str());
            if (equal_csv)
              equal_csv << name_of(opt.texts[t]) << "," << p << "," << label << "," << b << "," << budget << ","
                        << bytes << "," << e.ppl() << "," << e.ppl_lo() << "," << e.ppl_hi() << "," << r.ppl() << ","
                        << r.ppl_lo() << "," << r.ppl_hi() << "\n";
          }
          std::fprintf(stderr, "%s on %s: %zu runs of %d tokens side by side in %.0f s\n", label.c_str(),
                       name_of(opt.texts[t]).c_str(), runs.size(), opt.stream_tokens, seconds_since(ts));
          std::fflush(stdout);
        }
      }
    }
    std::printf("\ntime: %.0f s\n", seconds_since(start));
  } catch (const std::exception& e) {
    std::cerr << "kvevict_merge: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
