// SPDX-License-Identifier: Apache-2.0
// The GGUF reader on the real file, and on truncated and bit-flipped copies of it: a clear GgufError,
// never a crash (this suite also runs under AddressSanitizer); and the tokenizer's text handling.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "gguf.hpp"
#include "model.hpp"
#include "model_assets.hpp"
#include "tokenizer.hpp"

namespace {

std::string temp_path(const char* tag) {
  return ::testing::TempDir() + "kvevict_" + tag + "_" + std::to_string(::getpid()) + ".gguf";
}

const std::string& model_bytes() {
  static const std::string bytes = assets::read(assets::model());
  return bytes;
}

void write_prefix(const std::string& to, std::size_t n) {
  std::ofstream out(to, std::ios::binary);
  out.write(model_bytes().data(), std::streamsize(std::min(n, model_bytes().size())));
}

TEST(Gguf, ReadsTheRealFile) {
  const gguf::File f(assets::model());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get<std::string>("general.architecture"), "llama");
  EXPECT_EQ(f.integer("llama.block_count"), 30);
  EXPECT_EQ(f.integer("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(f.tensors().size(), 272u);
  const auto& embd = f.tensor("token_embd.weight");
  EXPECT_EQ(embd.type, gguf::Type::Q8_0);
  EXPECT_EQ(embd.dims, (std::vector<std::uint64_t>{576, 49152}));
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight").type, gguf::Type::Q4_1);
}

TEST(Gguf, DequantisesQ4_1AndQ8_0BlocksByTheirFormulas) {
  // Q4_1: d = 0.5, m = -1, nibbles 0..15 -> d*q + m; Q8_0: d = 0.25, q = -3 -> -0.75.
  std::uint8_t q41[20] = {0x00, 0x38, 0x00, 0xBC};  // fp16 0.5, fp16 -1.0
  for (int i = 0; i < 16; ++i) q41[4 + i] = std::uint8_t(i | ((15 - i) << 4));
  gguf::TensorInfo t{"t", {32}, gguf::Type::Q4_1, 0, 32, 20, q41};
  float out[32];
  gguf::dequantize(t, out);
  EXPECT_FLOAT_EQ(out[0], -1.0f);
  EXPECT_FLOAT_EQ(out[15], 6.5f);
  EXPECT_FLOAT_EQ(out[16], 6.5f);  // high nibble of byte 0 is 15
  EXPECT_FLOAT_EQ(out[31], -1.0f);
  std::uint8_t q80[34] = {0x00, 0x34};  // fp16 0.25
  q80[2] = std::uint8_t(-3);
  gguf::TensorInfo t8{"t8", {32}, gguf::Type::Q8_0, 0, 32, 34, q80};
  gguf::dequantize(t8, out);
  EXPECT_FLOAT_EQ(out[0], -0.75f);
  EXPECT_FLOAT_EQ(out[1], 0.0f);
}

TEST(Gguf, TruncatedCopiesGiveAClearError) {
  const std::string path = temp_path("truncated");
  const std::size_t size = model_bytes().size();
  for (std::size_t n : {std::size_t(0), std::size_t(3), std::size_t(8), std::size_t(23), std::size_t(100),
                        std::size_t(5000), std::size_t(1000000), std::size_t(1785000), size / 2, size - 1}) {
    write_prefix(path, n);
    try {
      gguf::File f(path);
      ADD_FAILURE() << "a copy cut at " << n << " bytes was accepted";
    } catch (const gguf::GgufError& e) {
      const std::string what = e.what();
      EXPECT_TRUE(what.find("truncated or corrupt file") != std::string::npos ||
                  what.find("not a GGUF") != std::string::npos)
          << "cut at " << n << ": " << what;
    }
  }
  std::remove(path.c_str());
}

TEST(Gguf, BitFlippedHeadersNeverCrash) {
  const std::string path = temp_path("flipped");
  const std::string& original = model_bytes();
  { std::ofstream(path, std::ios::binary).write(original.data(), std::streamsize(original.size())); }
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::mt19937 rng(2026);
  // The header and tensor table (the first ~1.8 MB) are what the reader interprets; tensor data is just bytes.
  std::uniform_int_distribution<std::size_t> where(0, 1785000);
  int rejected = 0, accepted = 0;
  for (int i = 0; i < 60; ++i) {
    const std::size_t at = i < 24 ? std::size_t(i) : where(rng);  // every byte of the fixed header, then anywhere
    const auto flipped = static_cast<char>(original[at] ^ (1 << (i % 8)));
    ASSERT_EQ(::pwrite(fd, &flipped, 1, off_t(at)), 1);
    try {
      gguf::File f(path);
      ++accepted;  // a flip inside a string or a value can leave a valid file
    } catch (const gguf::GgufError&) {
      ++rejected;
    }
    ASSERT_EQ(::pwrite(fd, &original[at], 1, off_t(at)), 1);
  }
  ::close(fd);
  std::remove(path.c_str());
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(rejected + accepted, 60);
}

TEST(Gguf, MissingFileIsNamed) {
  try {
    gguf::File f("/nonexistent/model.gguf");
    FAIL();
  } catch (const gguf::GgufError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.gguf"), std::string::npos);
  }
}

// A small GGUF file built field by field, to state one corruption at a time.
struct TinyGguf {
  struct Tensor {
    std::string name;
    std::uint64_t offset;
  };
  std::vector<std::string> metadata;  // encoded entries
  std::vector<Tensor> tensors;        // each one F32 tensor of 8 values (32 bytes)
  std::uint64_t data_bytes = 64;

  static std::string str(const std::string& s) { return bytes(std::uint64_t(s.size())) + s; }
  template <class T>
  static std::string bytes(T v) {
    return std::string(reinterpret_cast<const char*>(&v), sizeof v);
  }
  TinyGguf& u32(const std::string& key, std::uint32_t v) {
    metadata.push_back(str(key) + bytes(std::uint32_t(4)) + bytes(v));
    return *this;
  }
  TinyGguf& i64(const std::string& key, std::int64_t v) {
    metadata.push_back(str(key) + bytes(std::uint32_t(11)) + bytes(v));
    return *this;
  }
  TinyGguf& array_of_strings(const std::string& key, std::uint64_t claimed_length) {
    metadata.push_back(str(key) + bytes(std::uint32_t(9)) + bytes(std::uint32_t(8)) + bytes(claimed_length) + str("a"));
    return *this;
  }
  TinyGguf& tensor(const std::string& name, std::uint64_t offset) {
    tensors.push_back({name, offset});
    return *this;
  }

  // Loads the file; the GgufError's message, or "no error".
  std::string error() const {
    std::string f = bytes(std::uint32_t(0x46554747u)) + bytes(std::uint32_t(3)) + bytes(std::uint64_t(tensors.size())) +
                    bytes(std::uint64_t(metadata.size()));
    for (const auto& m : metadata) f += m;
    for (const auto& t : tensors)
      f += str(t.name) + bytes(std::uint32_t(1)) + bytes(std::uint64_t(8)) + bytes(std::uint32_t(0)) + bytes(t.offset);
    f.resize((f.size() + 31) / 32 * 32 + data_bytes, '\0');
    const std::string path = temp_path("tiny");
    { std::ofstream(path, std::ios::binary).write(f.data(), std::streamsize(f.size())); }
    std::string message = "no error";
    try {
      gguf::File file(path);
    } catch (const gguf::GgufError& e) {
      message = e.what();
    }
    std::remove(path.c_str());
    return message;
  }
};

TEST(Gguf, AWellFormedTinyFileIsRead) {
  EXPECT_EQ(TinyGguf{}.u32("a", 1).tensor("x", 0).tensor("y", 32).error(), "no error");
}

TEST(Gguf, DuplicateKeysAndTensorNamesAreRefused) {
  EXPECT_EQ(TinyGguf{}.u32("a", 1).u32("a", 2).error(), "corrupt metadata: key a appears twice");
  EXPECT_EQ(TinyGguf{}.tensor("x", 0).tensor("x", 32).error(), "corrupt file: tensor x appears twice");
}

TEST(Gguf, OverlappingAndUnalignedTensorsAreRefused) {
  EXPECT_EQ(TinyGguf{}.tensor("x", 0).tensor("y", 0).error(), "corrupt file: tensors x and y overlap at offset 0");
  EXPECT_EQ(TinyGguf{}.i64("general.alignment", 16).tensor("x", 16).tensor("y", 32).error(),
            "corrupt file: tensors x and y overlap at offset 32");
  EXPECT_EQ(TinyGguf{}.tensor("x", 8).error(), "tensor x: offset 8 is not a multiple of the alignment 32");
  for (std::int64_t bad : {std::int64_t(0), std::int64_t(-32), std::int64_t(24), std::int64_t(1) << 40})
    EXPECT_EQ(TinyGguf{}.i64("general.alignment", bad).error(),
              "general.alignment: expected a power of two in [1, 65536], got " + std::to_string(bad));
}

TEST(Gguf, AnOffsetNearTheTopOfTheRangeIsReportedWithoutWrapping) {
  const std::uint64_t near_top = ~std::uint64_t(0) - 31;  // a multiple of 32
  EXPECT_EQ(TinyGguf{}.tensor("x", near_top).error(), "truncated or corrupt file: tensor x needs 32 bytes at offset " +
                                                          std::to_string(near_top) + " of a data section of 64 bytes");
}

TEST(Gguf, AHugeArrayLengthIsAnErrorNotAnAllocation) {
  // 2^40 strings of at least 8 bytes each cannot be in a file of a few hundred bytes; reserving them would
  // have asked for 32 TiB.
  const std::string message = TinyGguf{}.array_of_strings("list", std::uint64_t(1) << 40).error();
  EXPECT_NE(message.find("an array of 1099511627776 elements exceeds the"), std::string::npos) << message;
  // Fewer elements than bytes left, but more than the bytes left could hold at 8 bytes per string.
  TinyGguf roomy;
  roomy.data_bytes = 4000;
  const std::string fewer = roomy.array_of_strings("list", 1000).error();
  EXPECT_NE(fewer.find("an array of 1000 elements exceeds the"), std::string::npos) << fewer;
}

TEST(Gguf, TheFuzzSeedIsACompleteModel) {
  // tests/fuzz/make_seeds.py writes it; fuzzing starts from it, so it must reach the forward pass.
  const gguf::File file(std::string(KVEVICT_GOLDEN_DIR) + "/../fuzz/corpus/gguf/tiny_model.gguf");
  const llama::Tokenizer tokenizer(file);
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("the theory")), "the theory");
  llama::Model model(file);
  model.set_threads(1);
  EXPECT_EQ(model.config().n_layers, 1);
  EXPECT_EQ(model.config().vocab, 260);
  auto cache = model.make_cache<kvevict::StreamingLLM>(2, kvevict::StreamingLLM{1}, 4);
  const std::vector<int> tokens{1, 259, 42};
  const llama::Matrix logits = model.forward({llama::Segment{cache.get(), tokens.data(), 3}});
  EXPECT_EQ(logits.size(), 260);
  EXPECT_TRUE(logits.allFinite());
}

// A copy of the real file with `bytes` written at the offset `locate` finds, loaded as a model: the error it
// gives (or "no error").
template <class Locate>
std::string model_error_with(Locate&& locate, const std::string& bytes) {
  std::string edited = model_bytes();
  const std::size_t at = locate(edited);
  if (at == std::string::npos) return "field not found";
  edited.replace(at, bytes.size(), bytes);
  const std::string path = temp_path("edited");
  { std::ofstream(path, std::ios::binary).write(edited.data(), std::streamsize(edited.size())); }
  std::string message = "no error";
  try {
    const gguf::File file(path);
    llama::Model model(file);
  } catch (const gguf::GgufError& e) {
    message = e.what();
  }
  std::remove(path.c_str());
  return message;
}

template <class T>
std::string bytes_of(T value) {
  return std::string(reinterpret_cast<const char*>(&value), sizeof value);
}

// Where the value of a metadata key starts: after the key's bytes and its 4-byte type.
std::size_t value_of(const std::string& file, const std::string& key) {
  const std::string quoted = bytes_of(std::uint64_t(key.size())) + key;
  const std::size_t at = file.find(quoted);
  return at == std::string::npos ? at : at + quoted.size() + 4;
}

TEST(ModelValidation, AHeadCountOfZeroIsNamedNotDividedBy) {
  const std::string message = model_error_with(
      [](const std::string& f) { return value_of(f, "llama.attention.head_count"); }, bytes_of(std::uint32_t(0)));
  EXPECT_NE(message.find("llama.attention.head_count: expected in [1, 1048576], got 0"), std::string::npos) << message;
}

TEST(ModelValidation, AnEmbeddingShorterThanTheVocabularyIsRefused) {
  // token_embd.weight with 1000 rows where the tokenizer has 49152 ids: the second dimension of its tensor
  // info (name, then a u32 count of dimensions, then u64 dimensions) edited in place.
  const std::string message = model_error_with(
      [](const std::string& f) {
        const std::string name = "token_embd.weight";
        const std::size_t at = f.find(bytes_of(std::uint64_t(name.size())) + name);
        return at == std::string::npos ? at : at + 8 + name.size() + 4 + 8;
      },
      bytes_of(std::uint64_t(1000)));
  EXPECT_NE(message.find("tensor token_embd.weight: expected 49152x576, got 1000x576"), std::string::npos) << message;
}

const llama::Tokenizer& tokenizer() {
  static const gguf::File file(assets::model());
  static const llama::Tokenizer t(file);
  return t;
}

TEST(Tokenizer, NormalizeTextStripsTheByteOrderMarkAndUnifiesLineEndings) {
  EXPECT_EQ(llama::normalize_text("\xEF\xBB\xBFOne\r\nTwo\rThree\n\r\nFour"), "One\nTwo\nThree\n\nFour");
  EXPECT_EQ(llama::normalize_text("a\r"), "a\n");
  EXPECT_EQ(llama::normalize_text("\r\r\n\n"), "\n\n\n");
  EXPECT_EQ(llama::normalize_text(""), "");
  EXPECT_EQ(llama::normalize_text("\xEF\xBB"), "\xEF\xBB");            // not a whole mark: left alone
  EXPECT_EQ(llama::normalize_text("x\xEF\xBB\xBF"), "x\xEF\xBB\xBF");  // a mark only counts at the start
  EXPECT_EQ(llama::normalize_text("caf\xC3\xA9\tand tea\n"), "caf\xC3\xA9\tand tea\n");
}

TEST(Tokenizer, AWindowsCopyOfANovelTokenisesLikeTheOriginalOnceNormalised) {
  const std::string passage = assets::read(assets::novel("persuasion")).substr(0, 3000);
  std::string windows = "\xEF\xBB\xBF";
  for (char c : passage) {
    if (c == '\n') windows += '\r';
    windows += c;
  }
  EXPECT_NE(tokenizer().encode(windows), tokenizer().encode(passage));
  EXPECT_EQ(tokenizer().encode(llama::normalize_text(windows)), tokenizer().encode(passage));
}

TEST(Tokenizer, LongPiecesAreNotQuadratic) {
  // A run of dashes or spaces is a single pre-tokenizer piece; BPE on it took seconds per 20 KB when every
  // merge rescanned the piece.
  for (const std::string& text : {std::string(100000, '-'), "a" + std::string(100000, ' ') + "b"}) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int> ids = tokenizer().encode(text);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(tokenizer().decode(ids), text);
    EXPECT_LT(ids.size(), text.size() / 8);
    EXPECT_LT(seconds, 5.0);
  }
}

TEST(Tokenizer, EveryByteStringWhoseBytesHaveTokensRoundTrips) {
  // Random bytes are mostly invalid UTF-8 (stray continuations, truncated and overlong sequences, surrogates,
  // lead bytes F5-FF): each such byte passes through as its own byte token, never rewritten.
  std::vector<unsigned char> usable;
  for (int b = 0; b < 256; ++b)
    if (std::find(tokenizer().missing_bytes().begin(), tokenizer().missing_bytes().end(), b) ==
        tokenizer().missing_bytes().end())
      usable.push_back(static_cast<unsigned char>(b));
  std::mt19937 rng(11);
  std::uniform_int_distribution<std::size_t> pick(0, usable.size() - 1), length(0, 40);
  for (int i = 0; i < 3000; ++i) {
    std::string text;
    for (std::size_t n = length(rng); n > 0; --n) text += static_cast<char>(usable[pick(rng)]);
    ASSERT_EQ(tokenizer().decode(tokenizer().encode(text)), text) << "string " << i;
  }
  for (const std::string& invalid :
       {std::string("\xC3"
                    "A"),
        std::string("\xE2\x82"), std::string("\xED\xA0\x80"), std::string("\xF0\x82\x82\xAC"),
        std::string("\xE0\x80\xAF"), std::string("\x80\x80")})
    EXPECT_EQ(tokenizer().decode(tokenizer().encode("x" + invalid + "y")), "x" + invalid + "y");
}

TEST(Tokenizer, AByteWithoutATokenIsNamedWithItsOffset) {
  ASSERT_FALSE(tokenizer().missing_bytes().empty());  // SmolLM2's vocabulary lacks a few control bytes
  const unsigned char byte = tokenizer().missing_bytes().front();
  static const char* digits = "0123456789ABCDEF";
  const std::string hex = std::string("0x") + digits[byte >> 4] + digits[byte & 15];
  try {
    tokenizer().encode(std::string("Emma ") + char(byte));
    FAIL() << "encoded byte " << hex;
  } catch (const llama::TextError& e) {
    EXPECT_EQ(std::string(e.what()), "text: byte " + hex + " at offset 5 has no token in this vocabulary");
  }
}

TEST(Tokenizer, DecodeNamesAnIdOutsideTheVocabulary) {
  for (int id : {-1, 49152, 1 << 30}) {
    try {
      tokenizer().decode({1, id});
      FAIL() << id;
    } catch (const std::out_of_range& e) {
      EXPECT_EQ(std::string(e.what()), "token id: expected in [0, 49152), got " + std::to_string(id));
    }
  }
}
}  // namespace
