// SPDX-License-Identifier: Apache-2.0
// KV head compression on the real model: calibrate on one text, merge SmolLM2's 3 kv heads per layer into
// fewer (by SVD, and by mean pooling as the baseline), and compare perplexity on another text.
//
//   kvevict_merge --model M.gguf --calibration emma.txt --text persuasion.txt [--heads 1]
//                 [--calibration-tokens 2048] [--tokens 1024]
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "model.hpp"
#include "tokenizer.hpp"

namespace {

std::string read(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, calibration, text;
  int heads = 1, calibration_tokens = 2048, tokens = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model")
      model_path = v;
    else if (a == "--calibration")
      calibration = v;
    else if (a == "--text")
      text = v;
    else if (a == "--heads")
      heads = std::stoi(v);
    else if (a == "--calibration-tokens")
      calibration_tokens = std::stoi(v);
    else if (a == "--tokens")
      tokens = std::stoi(v);
    else {
      std::cerr << "kvevict_merge: unknown option " << a << "\n";
      return 2;
    }
  }
  if (model_path.empty() || calibration.empty() || text.empty()) {
    std::cerr << "usage: kvevict_merge --model M.gguf --calibration A.txt --text B.txt [--heads 1]\n"
                 "       [--calibration-tokens 2048] [--tokens 1024]\n";
    return 2;
  }
  try {
    const gguf::File file(model_path);
    llama::Model model(file);
    model.dequantize();  // merged weights are floats: compare every model on the float path
    const llama::Tokenizer tokenizer(file);
    std::vector<int> calib = tokenizer.encode(read(calibration).substr(0, std::size_t(calibration_tokens) * 8));
    std::vector<int> eval = tokenizer.encode(read(text).substr(0, std::size_t(tokens) * 8));
    if (int(calib.size()) < calibration_tokens || int(eval.size()) < tokens) throw std::runtime_error("text too short");
    calib.resize(std::size_t(calibration_tokens));
    eval.resize(std::size_t(tokens));
    const auto kv = model.calibration_kv(calib.data(), calibration_tokens);
    const auto& c = model.config();
    std::printf("%-28s %8s %14s\n", "model", "kv heads", "perplexity");
    std::printf("%-28s %8d %14.3f\n", "original", c.n_kv_heads, llama::dense_perplexity(model, eval));
    for (auto method : {kvevict::HeadMergeMethod::svd, kvevict::HeadMergeMethod::mean}) {
      std::vector<kvevict::HeadMerge> merges;
      for (const auto& [k, v] : kv)
        merges.push_back(
            kvevict::fit_head_merge(k, v, c.n_kv_heads, heads, c.head_dim, kvevict::RopeLayout::adjacent, method));
      llama::Model merged = model;
      merged.merge_kv_heads(merges);
      std::printf("%-28s %8d %14.3f\n",
                  method == kvevict::HeadMergeMethod::svd ? "merged by SVD" : "merged by mean pooling",
                  merged.config().n_kv_heads, llama::dense_perplexity(merged, eval));
    }
  } catch (const std::exception& e) {
    std::cerr << "kvevict_merge: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
