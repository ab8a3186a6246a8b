// SPDX-License-Identifier: Apache-2.0
// A Llama-family forward pass on Eigen that keeps its K/V in kvevict caches: RMSNorm, RoPE (applied by the
// cache, in the file's adjacent-pair layout), GQA attention through KVCache, SwiGLU, tied output. Several
// sequences, each with its own cache and policy, run through one call so the weights are read once per step.
#ifndef KVEVICT_EXAMPLES_LLAMA_MODEL_HPP
#define KVEVICT_EXAMPLES_LLAMA_MODEL_HPP

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <kvevict/kvevict.hpp>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <kvevict/head_merge.hpp>
#include "gguf.hpp"
#include "quant.hpp"
#include "threads.hpp"

namespace llama {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A weight matrix: quantised blocks read in place from the mapped file (the fast path), or floats (a type
/// without a quantised product, or a matrix the engine rewrote, as merge_kv_heads does).
class Weight {
 public:
  Weight() = default;
  explicit Weight(const gguf::TensorInfo& t) {
    if (t.type == gguf::Type::Q4_0 || t.type == gguf::Type::Q4_1 || t.type == gguf::Type::Q8_0) {
      quantised_ = quant::QuantMatrix(t);
    } else {
      dense_.resize(Eigen::Index(t.n_elements / t.dims[0]), Eigen::Index(t.dims[0]));
      gguf::dequantize(t, dense_.data());
    }
  }
  explicit Weight(Matrix dense) : dense_(std::move(dense)) {}

  bool quantised() const { return dense_.size() == 0; }
  Eigen::Index rows() const { return quantised() ? Eigen::Index(quantised_.rows()) : dense_.rows(); }
  Eigen::Index cols() const { return quantised() ? Eigen::Index(quantised_.cols()) : dense_.cols(); }
  /// The matrix as floats (a copy when quantised).
  Matrix dense() const {
    if (!quantised()) return dense_;
    Matrix m(rows(), cols());
    for (Eigen::Index r = 0; r < rows(); ++r) quantised_.dequantize_row(r, m.row(r).data());
    return m;
  }
  void row(Eigen::Index r, float* out) const {
    if (quantised())
      quantised_.dequantize_row(r, out);
    else
      Eigen::Map<Eigen::RowVectorXf>(out, dense_.cols()) = dense_.row(r);
  }
  /// Rows [first, last) of out = W x: quantised weights take x rounded to blocks (`xq`), float weights x itself.
  void multiply_rows(const Eigen::MatrixXf& x, const quant::Activations& xq, Eigen::Index first, Eigen::Index last,
                     Eigen::MatrixXf& out) const {
    if (quantised()) {
      quantised_.multiply_rows(xq, first, last, out.data(), out.rows());
    } else {
      out.middleRows(first, last - first).noalias() = dense_.middleRows(first, last - first) * x;
    }
  }

 private:
  quant::QuantMatrix quantised_;
  Matrix dense_;
};

struct Config {
  int n_layers, n_embd, n_heads, n_kv_heads, head_dim, n_ff, vocab;
  double rms_eps, rope_theta;
};

/// What a forward pass saw in every layer, one row per token (see Model::forward): the attention's normalised
/// inputs, keys (before RoPE), values and outputs (before W_o).
struct Taps {
  std::vector<Matrix> inputs, keys, values, attention;
};

/// One sequence's cache, whatever its policy: the engine needs one virtual call per layer and sequence,
/// so the policy can be chosen at run time; inside, KVCache is fully static.
class SequenceCache {
 public:
  virtual ~SequenceCache() = default;
  virtual void forward(int layer, const Eigen::Ref<const Matrix>& q, const Eigen::Ref<const Matrix>& k,
                       const Eigen::Ref<const Matrix>& v, Eigen::Ref<Matrix> out) = 0;
  /// The three parts of forward(), for prompt compression: append and attend chunk by chunk, evict once.
  virtual void append(int layer, const Eigen::Ref<const Matrix>& k, const Eigen::Ref<const Matrix>& v) = 0;
  virtual void attend(int layer, const Eigen::Ref<const Matrix>& q, Eigen::Ref<Matrix> out) = 0;
  virtual void evict(int layer) = 0;
  /// A copy to go on from here: a prompt's shared beginning is read once and forked.
  virtual std::unique_ptr<SequenceCache> clone() const = 0;
  virtual void clear() = 0;
  virtual int size(int layer, int kv_head) const = 0;
  /// Positions of the tokens (layer, kv_head) holds, in slot order.
  virtual std::vector<std::int64_t> positions(int layer, int kv_head) const = 0;
  virtual int max_chunk() const = 0;
};

template <class Storage, class Policy>
class CacheOf final : public SequenceCache {
 public:
  CacheOf(const kvevict::Shape& shape, const Policy& policy, const kvevict::CacheOptions& options)
      : cache(shape, policy, options) {}
  void forward(int layer, const Eigen::Ref<const Matrix>& q, const Eigen::Ref<const Matrix>& k,
               const Eigen::Ref<const Matrix>& v, Eigen::Ref<Matrix> out) override {
    cache.forward(layer, q, k, v, out);
  }
  void append(int layer, const Eigen::Ref<const Matrix>& k, const Eigen::Ref<const Matrix>& v) override {
    cache.append(layer, k, v);
  }
  void attend(int layer, const Eigen::Ref<const Matrix>& q, Eigen::Ref<Matrix> out) override {
    cache.attend(layer, q, out);
  }
  void evict(int layer) override { cache.evict(layer); }
  std::unique_ptr<SequenceCache> clone() const override { return std::make_unique<CacheOf>(*this); }
  void clear() override { cache.clear(); }
  int size(int layer, int kv_head) const override { return cache.size(layer, kv_head); }
  std::vector<std::int64_t> positions(int layer, int kv_head) const override {
    const auto& slots = cache.head(layer, kv_head).slots();
    std::vector<std::int64_t> held;
    for (int s = 0; s < slots.capacity(); ++s)
      if (slots.occupied(s)) held.push_back(slots.position(s));
    return held;
  }
  int max_chunk() const override { return cache.options().max_chunk; }
  kvevict::KVCache<Storage, Policy> cache;
};

/// The cache of a model whose layers keep different numbers of kv heads (some merged, see
/// Model::merge_layer_kv_heads): one cache per head count, each layer sent to its own under its rank there.
/// A policy that depends on the layer index (Pyramid's schedule) sees that rank, not the model's layer.
class LayeredCache final : public SequenceCache {
 public:
  /// `route[layer]` = (part, layer within the part).
  LayeredCache(std::vector<std::unique_ptr<SequenceCache>> parts, std::vector<std::pair<int, int>> route)
      : parts_(std::move(parts)), route_(std::move(route)) {}
  void forward(int layer, const Eigen::Ref<const Matrix>& q, const Eigen::Ref<const Matrix>& k,
               const Eigen::Ref<const Matrix>& v, Eigen::Ref<Matrix> out) override {
    part(layer).forward(local(layer), q, k, v, out);
  }
  void append(int layer, const Eigen::Ref<const Matrix>& k, const Eigen::Ref<const Matrix>& v) override {
    part(layer).append(local(layer), k, v);
  }
  void attend(int layer, const Eigen::Ref<const Matrix>& q, Eigen::Ref<Matrix> out) override {
    part(layer).attend(local(layer), q, out);
  }
  void evict(int layer) override { part(layer).evict(local(layer)); }
  std::unique_ptr<SequenceCache> clone() const override {
    std::vector<std::unique_ptr<SequenceCache>> copies;
    for (const auto& p : parts_) copies.push_back(p->clone());
    return std::make_unique<LayeredCache>(std::move(copies), route_);
  }
  void clear() override {
    for (auto& p : parts_) p->clear();
  }
  int size(int layer, int kv_head) const override { return part(layer).size(local(layer), kv_head); }
  std::vector<std::int64_t> positions(int layer, int kv_head) const override {
    return part(layer).positions(local(layer), kv_head);
  }
  int max_chunk() const override { return parts_.front()->max_chunk(); }

 private:
  SequenceCache& part(int layer) const { return *parts_[std::size_t(route_.at(std::size_t(layer)).first)]; }
  int local(int layer) const { return route_[std::size_t(layer)].second; }

  std::vector<std::unique_ptr<SequenceCache>> parts_;
  std::vector<std::pair<int, int>> route_;
};

/// How the engine's caches store K and V.
enum class KvType { f32, f16, bf16 };

inline KvType parse_kv_type(const std::string& name) {
  if (name == "f32") return KvType::f32;
  if (name == "f16") return KvType::f16;
  if (name == "bf16") return KvType::bf16;
  throw std::invalid_argument("kv type: expected f32, f16 or bf16, got " + name);
}

/// Tokens of one sequence to run in one call, with the cache they extend.
struct Segment {
  SequenceCache* cache;
  const int* tokens;
  int n_tokens;
};

class Model {
 public:
  explicit Model(const gguf::File& file) {
    if (file.get<std::string>("general.architecture") != "llama")
      throw gguf::GgufError("only the llama architecture is supported");
    // Every count is checked before it sizes or divides anything: a model file is input like any other.
    c_.n_layers = count(file, "llama.block_count");
    c_.n_embd = count(file, "llama.embedding_length");
    c_.n_heads = count(file, "llama.attention.head_count");
    c_.n_kv_heads = count(file, "llama.attention.head_count_kv");
    c_.n_ff = count(file, "llama.feed_forward_length");
    if (c_.n_embd % c_.n_heads != 0 || (c_.n_embd / c_.n_heads) % 2 != 0)
      throw gguf::GgufError("llama.attention.head_count: " + std::to_string(c_.n_heads) +
                            " does not split llama.embedding_length = " + std::to_string(c_.n_embd) +
                            " into heads of even width");
    if (c_.n_heads % c_.n_kv_heads != 0)
      throw gguf::GgufError("llama.attention.head_count_kv: " + std::to_string(c_.n_kv_heads) +
                            " does not divide llama.attention.head_count = " + std::to_string(c_.n_heads));
    c_.head_dim = c_.n_embd / c_.n_heads;
    c_.rms_eps =
        positive("llama.attention.layer_norm_rms_epsilon", file.number("llama.attention.layer_norm_rms_epsilon"));
    c_.rope_theta = file.has("llama.rope.freq_base")
                        ? positive("llama.rope.freq_base", file.number("llama.rope.freq_base"))
                        : 10000.0;
    if (file.has("llama.rope.dimension_count") && file.integer("llama.rope.dimension_count") != c_.head_dim)
      throw gguf::GgufError("partial RoPE is not supported");
    // The tokenizer's ids index the embedding: it must have a row for each.
    const int vocab = file.has("tokenizer.ggml.tokens")
                          ? int(file.get<std::vector<std::string>>("tokenizer.ggml.tokens").size())
                          : -1;
    embed_ = weight(file, "token_embd.weight", vocab, c_.n_embd);
    c_.vocab = int(embed_.rows());
    output_norm_ = load(file, "output_norm.weight", 1, c_.n_embd);
    for (int l = 0; l < c_.n_layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      Layer layer;
      layer.attn_norm = load(file, p + "attn_norm.weight", 1, c_.n_embd);
      layer.ffn_norm = load(file, p + "ffn_norm.weight", 1, c_.n_embd);
      layer.wq = weight(file, p + "attn_q.weight", c_.n_embd, c_.n_embd);
      layer.n_kv_heads = c_.n_kv_heads;
      layer.wk = weight(file, p + "attn_k.weight", c_.n_kv_heads * c_.head_dim, c_.n_embd);
      layer.wv = weight(file, p + "attn_v.weight", c_.n_kv_heads * c_.head_dim, c_.n_embd);
      layer.wo = weight(file, p + "attn_output.weight", c_.n_embd, c_.n_embd);
      layer.gate = weight(file, p + "ffn_gate.weight", c_.n_ff, c_.n_embd);
      layer.up = weight(file, p + "ffn_up.weight", c_.n_ff, c_.n_embd);
      layer.down = weight(file, p + "ffn_down.weight", c_.n_embd, c_.n_ff);
      layers_.push_back(std::move(layer));
    }
  }

  const Config& config() const { return c_; }

  /// Turns every weight into floats: the slow reference engine, whose products round nothing (no activation
  /// is rounded to 8 bits), for checks that need exact arithmetic.
  void dequantize() {
    embed_ = Weight(embed_.dense());
    for (Layer& w : layers_)
      for (Weight* m : {&w.wq, &w.wk, &w.wv, &w.wo, &w.gate, &w.up, &w.down}) *m = Weight(m->dense());
  }

  /// Turns the attention's weights (W_q, W_k, W_v, W_o) into floats, as a merge does for the layers it
  /// rewrites: a model merged in some layers then differs from the original in those layers only.
  void dequantize_attention() {
    for (Layer& w : layers_)
      for (Weight* m : {&w.wq, &w.wk, &w.wv, &w.wo}) *m = Weight(m->dense());
  }

  /// Threads for the matrix products and for attending several sequences at once (the caller's included).
  void set_threads(int n) { pool_ = std::make_shared<ThreadPool>(n); }
  int threads() const { return pool_->size(); }

  kvevict::Shape shape(int budget) const {
    return kvevict::Shape{c_.n_layers, c_.n_heads, c_.n_kv_heads, c_.head_dim, budget};
  }
  kvevict::CacheOptions cache_options(int max_chunk = 64, int max_prompt = 0) const {
    kvevict::CacheOptions o;
    o.max_chunk = max_chunk;
    o.max_prompt = max_prompt;
    o.rope = kvevict::Rope(c_.head_dim, c_.rope_theta, kvevict::RopeLayout::adjacent);  // GGUF's Q/K permutation
    // One sequence alone spreads a layer's attention over the engine's threads: its kv heads while they are
    // short, each head's keys once they are long (sequences side by side already fill the threads, and the pool
    // then runs either in place).
    o.attention.key_splits = std::min(pool_->size(), 256);
    o.attention.parallel_heads = true;
    o.attention.parallel_for = [pool = pool_](int n, kvevict::TaskRef task) {
      pool->parallel_for(n, [task](int i) { task(i); });
    };
    return o;
  }
  /// The storage of the K/V of every cache made from now on.
  void set_kv_type(KvType type) { kv_type_ = type; }
  KvType kv_type() const { return kv_type_; }

  /// Kv heads of one layer (fewer than the file's where merged).
  int kv_heads(int layer) const { return layers_.at(std::size_t(layer)).n_kv_heads; }
  /// Bytes of K and V one token takes across all layers, at `budget` tokens per (layer, kv head).
  std::int64_t kv_bytes_per_token() const {
    std::int64_t heads = 0;
    for (const Layer& w : layers_) heads += w.n_kv_heads;
    return heads * 2 * c_.head_dim * (kv_type_ == KvType::f32 ? 4 : 2);
  }

  /// A cache for one sequence: `budget` tokens per (layer, kv head). Layers that keep different numbers of kv
  /// heads get one cache per count behind a LayeredCache.
  template <class Policy>
  std::unique_ptr<SequenceCache> make_cache(int budget, const Policy& policy = Policy{}, int max_chunk = 64,
                                            int max_prompt = 0) const {
    const kvevict::CacheOptions o = cache_options(max_chunk, max_prompt);
    std::vector<int> counts;  // distinct kv head counts, in layer order
    for (const Layer& w : layers_)
      if (std::find(counts.begin(), counts.end(), w.n_kv_heads) == counts.end()) counts.push_back(w.n_kv_heads);
    if (counts.size() == 1) return make_part(shape(budget).with_kv_heads(counts[0]), policy, o);
    std::vector<std::unique_ptr<SequenceCache>> parts;
    std::vector<std::pair<int, int>> route(layers_.size());
    for (std::size_t i = 0; i < counts.size(); ++i) {
      int n = 0;
      for (std::size_t l = 0; l < layers_.size(); ++l)
        if (layers_[l].n_kv_heads == counts[i]) route[l] = {int(i), n++};
      parts.push_back(make_part(shape(budget).with_layers(n).with_kv_heads(counts[i]), policy, o));
    }
    return std::make_unique<LayeredCache>(std::move(parts), std::move(route));
  }

  template <class Policy>
  std::unique_ptr<SequenceCache> make_part(const kvevict::Shape& s, const Policy& policy,
                                           const kvevict::CacheOptions& o) const {
    switch (kv_type_) {
      case KvType::f16:
        return std::make_unique<CacheOf<Eigen::half, Policy>>(s, policy, o);
      case KvType::bf16:
        return std::make_unique<CacheOf<Eigen::bfloat16, Policy>>(s, policy, o);
      case KvType::f32:
        break;
    }
    return std::make_unique<CacheOf<float, Policy>>(s, policy, o);
  }

  /// Runs every segment through the model; returns logits of each segment's last token (segment order),
  /// or of every token when `all_logits`: a view of the model's own buffer, valid until the next forward (copy
  /// it into a Matrix to keep it). Not reentrant: one forward at a time per model and its copies.
  /// @pre each segment fits its cache's max_chunk. `taps`, when given, receives what each layer saw (Taps).
  Eigen::Map<const Matrix> forward(const std::vector<Segment>& segments, bool all_logits = false,
                                   Taps* taps = nullptr) const {
    // Activations are column-major, one column per token: W * X puts the long dimension (the weight's rows)
    // where Eigen splits work across threads, and a column-major (width x T) block is exactly the row-major
    // (T x width) matrix the cache takes, so no copies between the two. The buffers are the model's and keep
    // their size between calls, so a step of decode allocates nothing (the logits of sixteen sequences are 3 MB,
    // which a fresh allocation would fault in page by page every step).
    using Columns = Eigen::MatrixXf;
    int rows = 0;
    for (const auto& s : segments) rows += s.n_tokens;
    Workspace& work = work_;
    Columns &x = work.x, &h = work.h, &q = work.q, &k = work.k, &v = work.v, &attn = work.attn, &gate = work.gate,
            &up = work.up, &tmp_embd = work.tmp_embd, &last = work.last, &logits = work.logits;
    quant::Activations& hq = work.hq;
    const int kv_width = c_.n_kv_heads * c_.head_dim;
    x.resize(c_.n_embd, rows);
    for (Columns* m : {&h, &q, &attn, &tmp_embd}) m->resize(c_.n_embd, rows);
    for (Columns* m : {&k, &v}) m->resize(kv_width, rows);
    for (Columns* m : {&gate, &up}) m->resize(c_.n_ff, rows);
    {
      int r = 0;
      for (const auto& s : segments)
        for (int t = 0; t < s.n_tokens; ++t) embed_.row(s.tokens[t], x.col(r++).data());
    }
    auto as_rows = [](Columns& m, int first, int n) {
      return Eigen::Map<Matrix>(m.data() + std::ptrdiff_t(first) * m.rows(), n, m.rows());
    };
    std::vector<int>& first = work.first;
    first.assign(segments.size() + 1, 0);
    for (std::size_t i = 0; i < segments.size(); ++i) first[i + 1] = first[i] + segments[i].n_tokens;
    for (int l = 0; l < c_.n_layers; ++l) {
      const Layer& w = layers_[std::size_t(l)];
      rms_norm(x, w.attn_norm, h);
      multiply({{&w.wq, &q}, {&w.wk, &k}, {&w.wv, &v}}, h, hq);
      if (taps) {
        for (auto* list : {&taps->inputs, &taps->keys, &taps->values}) list->resize(layers_.size());
        taps->inputs[std::size_t(l)] = h.transpose();
        taps->keys[std::size_t(l)] = k.transpose();
        taps->values[std::size_t(l)] = v.transpose();
      }
      // Sequences own separate caches, so they attend in parallel.
      pool_->parallel_for(int(segments.size()), [&](int i) {
        const auto& s = segments[std::size_t(i)];
        const int f = first[std::size_t(i)];
        s.cache->forward(l, as_rows(q, f, s.n_tokens), as_rows(k, f, s.n_tokens), as_rows(v, f, s.n_tokens),
                         as_rows(attn, f, s.n_tokens));
      });
      if (taps) {
        taps->attention.resize(layers_.size());
        taps->attention[std::size_t(l)] = attn.transpose();
      }
      multiply({{&w.wo, &tmp_embd}}, attn, hq);
      x += tmp_embd;
      rms_norm(x, w.ffn_norm, h);
      multiply({{&w.gate, &gate}, {&w.up, &up}}, h, hq);
      gate = (gate.array() / (1.0f + (-gate.array()).exp()) * up.array()).matrix();  // SiLU(gate) * up
      multiply({{&w.down, &tmp_embd}}, gate, hq);
      x += tmp_embd;
    }
    rms_norm(x, output_norm_, h);
    if (all_logits) {
      multiply({{&embed_, &logits}}, h, hq);
    } else {
      last.resize(c_.n_embd, Eigen::Index(segments.size()));
      for (std::size_t i = 0; i < segments.size(); ++i) last.col(Eigen::Index(i)) = h.col(first[i + 1] - 1);
      multiply({{&embed_, &logits}}, last, hq);
    }
    // Column-major (vocab x n) is row-major (n x vocab): one row of logits per token, no copy.
    return Eigen::Map<const Matrix>(logits.data(), logits.cols(), logits.rows());
  }

  /// What every layer saw of `n` tokens of text read from the start, in double (Taps' fields, all tokens
  /// in one matrix per layer): the calibration data of kvevict::fit_head_merge and the output repair.
  struct Calibration {
    std::vector<Eigen::MatrixXd> inputs, keys, values, attention;
  };
  Calibration calibrate(const int* tokens, int n) const {
    auto cache = make_cache<kvevict::Dense>(n);
    Calibration all;
    Taps chunk;
    for (int t = 0; t < n; t += cache->max_chunk()) {
      const int rows = std::min(cache->max_chunk(), n - t);
      forward({Segment{cache.get(), tokens + t, rows}}, false, &chunk);
      for (auto [to, from] : {std::pair{&all.inputs, &chunk.inputs},
                              {&all.keys, &chunk.keys},
                              {&all.values, &chunk.values},
                              {&all.attention, &chunk.attention}}) {
        to->resize(layers_.size());
        for (std::size_t l = 0; l < layers_.size(); ++l) {
          Eigen::MatrixXd& m = (*to)[l];
          m.conservativeResize(t + rows, (*from)[l].cols());
          m.bottomRows(rows) = (*from)[l].cast<double>();
        }
      }
    }
    return all;
  }

  /// Merges the kv heads of every layer as `merges[layer]` says: afterwards the model has merges[0].n_merged
  /// kv heads and a cache that many times smaller.
  void merge_kv_heads(const std::vector<kvevict::HeadMerge>& merges) {
    for (std::size_t l = 0; l < layers_.size(); ++l) merge_layer_kv_heads(int(l), merges.at(l));
  }

  /// Merges the kv heads of one layer, folding the maps into its W_q, W_k, W_v and W_o (which become floats);
  /// every other layer is left as it is, bit for bit.
  void merge_layer_kv_heads(int layer, const kvevict::HeadMerge& m) {
    Layer& w = layers_.at(std::size_t(layer));
    if (m.n_kv_heads != w.n_kv_heads || m.head_dim != c_.head_dim)
      throw std::invalid_argument("merge of layer " + std::to_string(layer) + ": expected a merge of " +
                                  std::to_string(w.n_kv_heads) + " heads of width " + std::to_string(c_.head_dim) +
                                  ", got " + std::to_string(m.n_kv_heads) + " of width " + std::to_string(m.head_dim));
    const int d = c_.head_dim, q_per_kv = c_.n_heads / w.n_kv_heads;
    Matrix wq = w.wq.dense(), wo = w.wo.dense();
    const Matrix old_k = w.wk.dense(), old_v = w.wv.dense();
    Matrix wk = Matrix::Zero(Eigen::Index(m.n_merged) * d, c_.n_embd), wv = wk;
    for (int old = 0; old < w.n_kv_heads; ++old) {
      const auto g = Eigen::Index(old / m.group()) * d, rows = Eigen::Index(old) * d;
      wk.middleRows(g, d) += (m.key_in[std::size_t(old)] * old_k.middleRows(rows, d).cast<double>()).cast<float>();
      wv.middleRows(g, d) += (m.value_in[std::size_t(old)] * old_v.middleRows(rows, d).cast<double>()).cast<float>();
    }
    for (int h = 0; h < c_.n_heads; ++h) {
      const auto old = std::size_t(h / q_per_kv);
      const auto block = Eigen::Index(h) * d;
      wq.middleRows(block, d) = (m.key_in[old] * wq.middleRows(block, d).cast<double>()).cast<float>();
      wo.middleCols(block, d) = (wo.middleCols(block, d).cast<double>() * m.value_out[old]).cast<float>();
    }
    w.wq = Weight(std::move(wq));
    w.wk = Weight(std::move(wk));
    w.wv = Weight(std::move(wv));
    w.wo = Weight(std::move(wo));
    w.n_kv_heads = m.n_merged;
    c_.n_kv_heads = 0;  // the largest count left in any layer: the cache shape of tools that take one
    for (const Layer& l : layers_) c_.n_kv_heads = std::max(c_.n_kv_heads, l.n_kv_heads);
  }

  /// The attention outputs (before W_o) that one layer gives for `inputs`, its normalised inputs for a text
  /// read from the start (one row per token, as Calibration::inputs holds them): what this layer would output
  /// if every layer before it were the original's.
  Eigen::MatrixXd layer_attention(int layer, const Eigen::MatrixXd& inputs) const {
    const Layer& w = layers_.at(std::size_t(layer));
    const int n = int(inputs.rows()), chunk = 64;
    CacheOf<float, kvevict::Dense> cache(shape(n).with_layers(1).with_kv_heads(w.n_kv_heads), kvevict::Dense{},
                                         cache_options(chunk));
    Eigen::MatrixXd out(n, c_.n_embd);
    Eigen::MatrixXf x, q, k, v, attn(c_.n_embd, chunk);
    quant::Activations xq;
    for (int t = 0; t < n; t += chunk) {
      const int rows = std::min(chunk, n - t);
      x = inputs.middleRows(t, rows).transpose().cast<float>();
      multiply({{&w.wq, &q}, {&w.wk, &k}, {&w.wv, &v}}, x, xq);
      attn.resize(c_.n_embd, rows);
      auto as_rows = [rows](Eigen::MatrixXf& m) { return Eigen::Map<Matrix>(m.data(), rows, m.rows()); };
      cache.forward(0, as_rows(q), as_rows(k), as_rows(v), as_rows(attn));
      out.middleRows(t, rows) = attn.transpose().cast<double>();
    }
    return out;
  }

  /// A layer's output projection W_o (n_embd x n_embd), as floats, and its replacement (kvevict's output
  /// repair after a merge).
  Matrix output_projection(int layer) const { return layers_.at(std::size_t(layer)).wo.dense(); }
  void set_output_projection(int layer, Matrix wo) {
    if (wo.rows() != c_.n_embd || wo.cols() != c_.n_embd)
      throw std::invalid_argument("output projection of layer " + std::to_string(layer) + ": expected " +
                                  std::to_string(c_.n_embd) + "x" + std::to_string(c_.n_embd));
    layers_.at(std::size_t(layer)).wo = Weight(std::move(wo));
  }

  /// Feeds `n` tokens of one sequence in chunks of its max_chunk; returns the last token's logits.
  Eigen::RowVectorXf prefill(SequenceCache& cache, const int* tokens, int n) const {
    Matrix logits;
    for (int t = 0; t < n; t += cache.max_chunk()) {
      const int chunk = std::min(cache.max_chunk(), n - t);
      logits = forward({Segment{&cache, tokens + t, chunk}});
    }
    return logits.row(0);
  }

 private:
  struct Layer {
    Eigen::RowVectorXf attn_norm, ffn_norm;
    Weight wq, wk, wv, wo, gate, up, down;
    int n_kv_heads = 0;
  };

  // out = W x for each (W, out) of `products` (at most three), all with the same input: x is rounded to 8-bit blocks
  // once, and the rows of every product are shared out to the threads in one parallel loop (one fork and join instead
  // of one per product). Each weight row is read once and dotted with all columns while in cache.
  void multiply(std::initializer_list<std::pair<const Weight*, Eigen::MatrixXf*>> products, const Eigen::MatrixXf& x,
                quant::Activations& xq) const {
    xq.quantize(x.data(), int(x.rows()), int(x.cols()));
    // Blocks of rows, numbered through the products one after another: first[i] is product i's first.
    std::array<int, 4> first{};
    std::array<Eigen::Index, 3> block_rows{};
    const auto* list = products.begin();
    const int n_products = int(products.size());
    for (int i = 0; i < n_products; ++i) {
      auto& [w, out] = list[i];
      out->resize(w->rows(), x.cols());
      block_rows[std::size_t(i)] = rows_per_task(w->rows(), x.cols());
      first[std::size_t(i) + 1] =
          first[std::size_t(i)] + int((w->rows() + block_rows[std::size_t(i)] - 1) / block_rows[std::size_t(i)]);
    }
    pool_->parallel_for(first[std::size_t(n_products)], [&](int b) {
      int i = 0;
      while (b >= first[std::size_t(i) + 1]) ++i;
      const auto& [w, out] = list[i];
      const Eigen::Index n = block_rows[std::size_t(i)];
      const Eigen::Index r = Eigen::Index(b - first[std::size_t(i)]) * n;
      w->multiply_rows(x, xq, r, std::min(r + n, w->rows()), *out);
    });
  }

  // Rows per task. A wide batch's columns make each row work enough, and 32 rows keep every thread busy to the
  // end. With a few columns (decode, or sixteen sequences side by side) a call finishes before its rows arrive
  // from memory, and threads taking turns with 32-row blocks started every call on rows nobody had asked for
  // yet: each product is then cut into about four tasks per thread, long runs of rows (decode 1.3-1.9x faster,
  // sixteen columns about 1.06x; docs/PERFORMANCE.md).
  Eigen::Index rows_per_task(Eigen::Index rows, Eigen::Index cols) const {
    constexpr Eigen::Index kBatchRows = 32;
    if (cols > 16) return kBatchRows;
    const Eigen::Index per_task = rows / (Eigen::Index(pool_->size()) * 4);
    return std::max(kBatchRows, (per_task + 15) / 16 * 16);
  }

  static Weight weight(const gguf::File& file, const std::string& name, int rows, int cols) {
    const auto& t = file.tensor(name);
    check_shape(t, rows, cols);
    return Weight(t);
  }

  static int count(const gguf::File& file, const std::string& key) {
    constexpr std::int64_t kLargest = 1 << 20;  // far beyond any model's layers, widths or heads
    const std::int64_t n = file.integer(key);
    if (n < 1 || n > kLargest)
      throw gguf::GgufError(key + ": expected in [1, " + std::to_string(kLargest) + "], got " + std::to_string(n));
    return int(n);
  }

  static double positive(const std::string& key, double value) {
    if (!(value > 0.0) || !std::isfinite(value))
      throw gguf::GgufError(key + ": expected a finite value > 0, got " + std::to_string(value));
    return value;
  }

  static void check_shape(const gguf::TensorInfo& t, int rows, int cols) {
    if (t.dims.empty() || t.dims[0] == 0)
      throw gguf::GgufError("tensor " + t.name + ": expected " + std::to_string(rows) + "x" + std::to_string(cols) +
                            ", got an empty shape");
    const auto n_cols = Eigen::Index(t.dims[0]);
    const auto n_rows = Eigen::Index(t.n_elements / t.dims[0]);
    if ((rows >= 0 && n_rows != rows) || (cols >= 0 && n_cols != cols))
      throw gguf::GgufError("tensor " + t.name + ": expected " + (rows >= 0 ? std::to_string(rows) : "any") + "x" +
                            std::to_string(cols) + ", got " + std::to_string(n_rows) + "x" + std::to_string(n_cols));
  }

  static Matrix load(const gguf::File& file, const std::string& name, int rows, int cols) {
    const auto& t = file.tensor(name);
    check_shape(t, rows, cols);
    const auto n_cols = Eigen::Index(t.dims[0]);
    const auto n_rows = Eigen::Index(t.n_elements / t.dims[0]);
    Matrix m(n_rows, n_cols);
    gguf::dequantize(t, m.data());
    return m;
  }

  void rms_norm(const Eigen::MatrixXf& x, const Eigen::RowVectorXf& weight, Eigen::MatrixXf& out) const {
    for (Eigen::Index r = 0; r < x.cols(); ++r) {
      const float scale = 1.0f / std::sqrt(x.col(r).squaredNorm() / float(x.rows()) + float(c_.rms_eps));
      out.col(r) = (x.col(r) * scale).cwiseProduct(weight.transpose());
    }
  }

  // forward's buffers, one column per token.
  struct Workspace {
    Eigen::MatrixXf x, h, q, k, v, attn, gate, up, tmp_embd, last, logits;
    quant::Activations hq;
    std::vector<int> first;  // each segment's first column
  };

  Config c_{};
  KvType kv_type_ = KvType::f32;
  mutable Workspace work_;
  std::shared_ptr<ThreadPool> pool_ = std::make_shared<ThreadPool>();  // shared by copies of the model
  Weight embed_;
  Eigen::RowVectorXf output_norm_;
  std::vector<Layer> layers_;
};

/// -log p(target) from a row of logits.
inline double nll(const Eigen::Ref<const Eigen::RowVectorXf>& logits, int target) {
  const double m = double(logits.maxCoeff());
  const double lse = m + std::log((logits.array().cast<double>() - m).exp().sum());
  return lse - double(logits[target]);
}

/// -log p(ids[t] | ids[0..t)) for every t >= 1 with a dense cache (prefill in chunks); entry 0 is NaN.
inline std::vector<double> dense_nll(const Model& model, const std::vector<int>& ids) {
  auto cache = model.make_cache<kvevict::Dense>(int(ids.size()));
  std::vector<double> out(ids.size(), NAN);
  for (std::size_t t = 0; t + 1 < ids.size(); t += 64) {
    const int n = int(std::min<std::size_t>(64, ids.size() - 1 - t));
    const Matrix logits = model.forward({Segment{cache.get(), &ids[t], n}}, true);
    for (int r = 0; r < n; ++r) out[t + std::size_t(r) + 1] = nll(logits.row(r), ids[t + std::size_t(r) + 1]);
  }
  return out;
}

/// Perplexity of ids[1..n) with a dense cache, each token predicted from all before it.
inline double dense_perplexity(const Model& model, const std::vector<int>& ids) {
  const std::vector<double> nlls = dense_nll(model, ids);
  double total = 0;
  for (std::size_t t = 1; t < nlls.size(); ++t) total += nlls[t];
  return std::exp(total / double(ids.size() - 1));
}

}  // namespace llama

#endif  // KVEVICT_EXAMPLES_LLAMA_MODEL_HPP
