// SPDX-License-Identifier: Apache-2.0
// The tokenizer of the real model on any bytes: encode either names a byte that has no token (TextError) or
// gives ids that decode to exactly the input, through pre-tokenizer pieces that are the input cut in order.
// libFuzzer's -timeout bounds the time per input, so a quadratic path shows up as a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gguf.hpp"
#include "tokenizer.hpp"

namespace {
const llama::Tokenizer& tokenizer() {
  static const gguf::File file([] {
    const char* dir = std::getenv("KVEVICT_ASSETS");
    const char* home = std::getenv("HOME");
    return std::string(dir && *dir ? dir : std::string(home ? home : ".") + "/.cache/kvevict") +
           "/SmolLM2-135M-Instruct.Q4_1.gguf";
  }());
  static const llama::Tokenizer t(file);
  return t;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::string joined;
  for (const std::string& piece : llama::Tokenizer::pre_tokenize(text)) {
    if (piece.empty()) std::abort();
    joined += piece;
  }
  if (joined != text) std::abort();
  std::vector<int> ids;
  try {
    ids = tokenizer().encode(text);
  } catch (const llama::TextError&) {
    return 0;
  }
  if (tokenizer().decode(ids) != text) {
    std::fprintf(stderr, "round trip failed on %zu bytes\n", size);
    std::abort();
  }
  return 0;
}
