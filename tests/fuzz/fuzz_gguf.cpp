// SPDX-License-Identifier: Apache-2.0
// The GGUF reader and the example engine's model validation on any bytes: a file is either refused with a
// GgufError or accepted, and then its tokenizer and model are built and run on a few tokens. Anything else
// (a crash, a sanitizer report, another exception type, an allocation beyond the limit) is a finding.
// Seeds: a tiny but complete model and a header alone (tests/fuzz/make_seeds.py).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // The reader maps a path: give it the bytes as an anonymous file.
  const int fd = ::memfd_create("fuzz.gguf", 0);
  if (fd < 0) return 0;
  for (std::size_t done = 0; done < size;) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) {
      ::close(fd);
      return 0;
    }
    done += std::size_t(n);
  }
  try {
    const gguf::File file("/proc/self/fd/" + std::to_string(fd));
    try {
      const llama::Tokenizer tokenizer(file);
      tokenizer.decode(tokenizer.encode("the theory"));
    } catch (const llama::TextError&) {
      // a vocabulary without these bytes: named, as it should be
    }
    llama::Model model(file);
    model.set_threads(1);
    const int vocab = model.config().vocab;
    const std::vector<int> tokens{0, vocab - 1, vocab / 2};
    auto cache = model.make_cache<kvevict::StreamingLLM>(2, kvevict::StreamingLLM{1}, 4);
    model.forward({llama::Segment{cache.get(), tokens.data(), int(tokens.size())}});
  } catch (const gguf::GgufError&) {
  }
  ::close(fd);
  return 0;
}
