// SPDX-License-Identifier: Apache-2.0
// GPT-2-style byte-level BPE from GGUF metadata (tokenizer.ggml.tokens / merges), with the "smollm"
// pre-tokenizer: every digit on its own, then the GPT-2 split
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// written out as a scanner. Unicode classes are approximated by ranges (Latin, Greek, Cyrillic, CJK
// letters; ASCII digits): exact for ASCII text such as the Austen novels.
#ifndef KVEVICT_EXAMPLES_LLAMA_TOKENIZER_HPP
#define KVEVICT_EXAMPLES_LLAMA_TOKENIZER_HPP

#include <cstdint>
#include <queue>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "gguf.hpp"

namespace llama {

/// Text as the tokenizer expects it: no UTF-8 byte-order mark, and "\n" line endings (Windows "\r\n" and
/// old Mac "\r" become "\n"). Everything else is left as it is.
inline std::string normalize_text(const std::string& text) {
  const std::string bom = "\xEF\xBB\xBF";
  std::size_t i = text.compare(0, bom.size(), bom) == 0 ? bom.size() : 0;
  std::string out;
  out.reserve(text.size() - i);
  for (; i < text.size(); ++i) {
    if (text[i] != '\r') {
      out += text[i];
      continue;
    }
    out += '\n';
    if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
  }
  return out;
}

/// Text the vocabulary cannot express: a byte that has no token. The message names the byte and its offset.
class TextError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Byte-level BPE. Round trip: decode(encode(s)) == s for every byte string s whose bytes all have a token,
/// invalid UTF-8 included: an invalid byte is a piece of its own, passed through as its byte token, never
/// rewritten. `missing_bytes()` lists the bytes without a token (SmolLM2 lacks 21: six control bytes, and
/// C0 C1 F1 F2 F5-FF, which UTF-8 text almost never holds). encode() costs O(n log n) in the bytes of its
/// longest piece and O(n) otherwise, whatever the input.
class Tokenizer {
 public:
  explicit Tokenizer(const gguf::File& file) {
    if (file.get<std::string>("tokenizer.ggml.model") != "gpt2")
      throw gguf::GgufError("tokenizer: only the gpt2 (byte-level BPE) model is supported");
    tokens_ = file.get<std::vector<std::string>>("tokenizer.ggml.tokens");
    for (std::size_t i = 0; i < tokens_.size(); ++i) id_[tokens_[i]] = int(i);
    const auto& merges = file.get<std::vector<std::string>>("tokenizer.ggml.merges");
    for (std::size_t i = 0; i < merges.size(); ++i) rank_[merges[i]] = int(i);
    for (int b = 0; b < 256; ++b) {
      byte_to_symbol_[b] = utf8(byte_codepoint(b));
      symbol_to_byte_[byte_to_symbol_[b]] = b;
      if (id_.count(byte_to_symbol_[b]) == 0) missing_bytes_.push_back(static_cast<unsigned char>(b));
    }
  }

  int vocab_size() const { return int(tokens_.size()); }
  /// @throws std::out_of_range naming the id and the vocabulary size
  const std::string& token(int id) const {
    if (id < 0 || id >= vocab_size())
      throw std::out_of_range("token id: expected in [0, " + std::to_string(vocab_size()) + "), got " +
                              std::to_string(id));
    return tokens_[std::size_t(id)];
  }
  /// The id of the token spelled `piece`: a chat template's control tokens, such as "<|im_start|>", which
  /// encode() never produces from text. @throws std::out_of_range naming the piece when there is none
  int id(const std::string& piece) const {
    const auto it = id_.find(piece);
    if (it == id_.end()) throw std::out_of_range("token: the vocabulary has no token " + piece);
    return it->second;
  }
  /// Bytes with no token of their own, so text containing them cannot be encoded.
  const std::vector<unsigned char>& missing_bytes() const { return missing_bytes_; }

  /// @throws TextError naming the first byte of `text` that has no token, before any work is done
  std::vector<int> encode(const std::string& text) const {
    if (!missing_bytes_.empty()) {
      bool missing[256] = {};
      for (unsigned char b : missing_bytes_) missing[b] = true;
      for (std::size_t i = 0; i < text.size(); ++i)
        if (missing[static_cast<unsigned char>(text[i])])
          throw TextError("text: byte " + hex(static_cast<unsigned char>(text[i])) + " at offset " + std::to_string(i) +
                          " has no token in this vocabulary");
    }
    std::vector<int> ids;
    for (const std::string& piece : pre_tokenize(text)) {
      if (piece.size() > kCachedPieceBytes) {  // long runs are rare: not worth the memory of remembering them
        const std::vector<int> piece_ids = bpe(piece);
        ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
        continue;
      }
      auto cached = cache_.find(piece);
      if (cached == cache_.end()) {
        if (cache_.size() >= kCachedPieces) cache_.clear();  // bounded memory over an endless stream of words
        cached = cache_.emplace(piece, bpe(piece)).first;
      }
      ids.insert(ids.end(), cached->second.begin(), cached->second.end());
    }
    return ids;
  }

  /// @throws std::out_of_range naming the first id outside the vocabulary
  std::string decode(const std::vector<int>& ids) const {
    std::string out;
    for (int id : ids) {
      const std::string& t = token(id);
      for (std::size_t i = 0; i < t.size();) {
        const std::size_t n = utf8_length(static_cast<unsigned char>(t[i]));
        auto it = symbol_to_byte_.find(t.substr(i, n));
        if (it != symbol_to_byte_.end())
          out.push_back(char(it->second));
        else
          out += t.substr(i, n);
        i += n;
      }
    }
    return out;
  }

  /// The pieces BPE runs on: consecutive substrings of `text` that together are the whole of it.
  static std::vector<std::string> pre_tokenize(const std::string& text) {
    const std::vector<Unit> units = decode_utf8(text);
    std::vector<std::string> pieces;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= units.size(); ++i) {  // digits split off first, each on its own
      if (i < units.size() && !is_number(units[i].codepoint)) continue;
      gpt2_split(text, units, start, i, pieces);
      if (i < units.size()) pieces.push_back(text.substr(units[i].begin, units[i].size));
      start = i + 1;
    }
    return pieces;
  }

 private:
  static bool is_space(std::uint32_t c) {
    return c == ' ' || (c >= 9 && c <= 13) || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
  }
  static bool is_number(std::uint32_t c) {
    return (c >= '0' && c <= '9') || c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE);
  }
  static bool is_letter(std::uint32_t c) {
    if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (c == 0xAA || c == 0xB5 || c == 0xBA) return true;
    if (c >= 0xC0 && c <= 0x24F) return c != 0xD7 && c != 0xF7;
    return (c >= 0x370 && c <= 0x3FF && c != 0x37E && c != 0x387) || (c >= 0x400 && c <= 0x52F) ||
           (c >= 0x1E00 && c <= 0x1FFF) || (c >= 0x3040 && c <= 0x30FF) || (c >= 0x4E00 && c <= 0x9FFF) ||
           (c >= 0xAC00 && c <= 0xD7A3);
  }

  // One code point of the text, or one byte of it that is not valid UTF-8 (codepoint kInvalid).
  struct Unit {
    std::uint32_t codepoint;
    std::size_t begin, size;
  };
  // Outside Unicode, so neither a letter, a number nor a space: an invalid byte is punctuation-like.
  static constexpr std::uint32_t kInvalid = 0x110000;
  static constexpr std::size_t kCachedPieceBytes = 64, kCachedPieces = 1 << 16;

  // GPT-2's split of units [begin, end).
  static void gpt2_split(const std::string& text, const std::vector<Unit>& units, std::size_t begin, std::size_t end,
                         std::vector<std::string>& out) {
    auto at = [&](std::size_t i) -> std::uint32_t { return i < end ? units[i].codepoint : 0; };
    auto emit = [&](std::size_t from, std::size_t to) {
      out.push_back(text.substr(units[from].begin, units[to - 1].begin + units[to - 1].size - units[from].begin));
    };
    auto other = [&](std::uint32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); };
    std::size_t i = begin;
    while (i < end) {
      const std::uint32_t c = units[i].codepoint;
      if (c == '\'' && i + 1 < end) {
        const std::uint32_t n1 = at(i + 1), n2 = at(i + 2);
        if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
          emit(i, i + 2);
          i += 2;
          continue;
        }
        if (i + 2 < end && ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l'))) {
          emit(i, i + 3);
          i += 3;
          continue;
        }
      }
      const std::size_t j = (c == ' ' && i + 1 < end) ? i + 1 : i;  // the optional leading space
      const std::uint32_t head = units[j].codepoint;
      std::size_t k = j;
      if (is_letter(head)) {
        while (k < end && is_letter(units[k].codepoint)) ++k;
      } else if (is_number(head)) {
        while (k < end && is_number(units[k].codepoint)) ++k;
      } else if (other(head)) {
        while (k < end && other(units[k].codepoint)) ++k;
      }
      if (k > j) {
        emit(i, k);
        i = k;
        continue;
      }
      // Whitespace: \s+(?!\S) leaves the last space of a run for the token after it; else \s+.
      std::size_t w = i;
      while (w < end && is_space(units[w].codepoint)) ++w;
      if (w < end && w - i > 1) w -= 1;
      emit(i, w);
      i = w;
    }
  }

  // Byte-level BPE of one piece: merge the adjacent pair of lowest rank (the leftmost on a tie) until no
  // pair is in the merge table. Symbols form a linked list over the piece and the candidate pairs a heap, so
  // a piece of n bytes costs O(n log n): a long run of dashes or spaces is a single piece.
  std::vector<int> bpe(const std::string& piece) const {
    struct Symbol {
      std::size_t begin, size;  // in `text`; size 0 once merged into its left neighbour
      int prev, next;           // -1 at either end
    };
    struct Pair {
      int rank, left, right;
      std::size_t size;  // of the merged symbol: tells a stale entry (a neighbour has changed) from a live one
    };
    std::string text;  // the piece as byte symbols
    std::vector<Symbol> symbols;
    for (char c : piece) {
      const std::string& s = byte_to_symbol_[static_cast<unsigned char>(c)];
      symbols.push_back({text.size(), s.size(), int(symbols.size()) - 1, int(symbols.size()) + 1});
      text += s;
    }
    if (symbols.empty()) return {};
    symbols.back().next = -1;
    auto after = [](const Pair& a, const Pair& b) { return a.rank != b.rank ? a.rank > b.rank : a.left > b.left; };
    std::priority_queue<Pair, std::vector<Pair>, decltype(after)> pairs(after);
    auto consider = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const Symbol &l = symbols[std::size_t(left)], &r = symbols[std::size_t(right)];
      auto it = rank_.find(text.substr(l.begin, l.size) + " " + text.substr(r.begin, r.size));
      if (it != rank_.end()) pairs.push({it->second, left, right, l.size + r.size});
    };
    for (int i = 0; i + 1 < int(symbols.size()); ++i) consider(i, i + 1);
    while (!pairs.empty()) {
      const Pair p = pairs.top();
      pairs.pop();
      Symbol &l = symbols[std::size_t(p.left)], &r = symbols[std::size_t(p.right)];
      if (l.size == 0 || l.next != p.right || l.size + r.size != p.size) continue;  // stale: merged since
      l.size += r.size;
      r.size = 0;
      l.next = r.next;
      if (r.next >= 0) symbols[std::size_t(r.next)].prev = p.left;
      consider(l.prev, p.left);
      consider(p.left, l.next);
    }
    std::vector<int> ids;
    for (int i = 0; i >= 0; i = symbols[std::size_t(i)].next) {
      const std::string s = text.substr(symbols[std::size_t(i)].begin, symbols[std::size_t(i)].size);
      auto it = id_.find(s);
      if (it != id_.end()) {
        ids.push_back(it->second);
        continue;
      }
      for (std::size_t k = 0; k < s.size();) {  // not in the vocabulary: one token per byte symbol
        const std::size_t n = utf8_length(static_cast<unsigned char>(s[k]));
        ids.push_back(id_.at(s.substr(k, n)));
        k += n;
      }
    }
    return ids;
  }

  // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
  static std::uint32_t byte_codepoint(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return std::uint32_t(b);
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++n;
    return std::uint32_t(256 + n);
  }
  static std::size_t utf8_length(unsigned char lead) {
    return lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 1;
  }
  static std::string utf8(std::uint32_t c) {
    std::string s;
    if (c < 0x80) {
      s += char(c);
    } else if (c < 0x800) {
      s += char(0xC0 | (c >> 6));
      s += char(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      s += char(0xE0 | (c >> 12));
      s += char(0x80 | ((c >> 6) & 0x3F));
      s += char(0x80 | (c & 0x3F));
    } else {
      s += char(0xF0 | (c >> 18));
      s += char(0x80 | ((c >> 12) & 0x3F));
      s += char(0x80 | ((c >> 6) & 0x3F));
      s += char(0x80 | (c & 0x3F));
    }
    return s;
  }
  // The text as code points, each with its bytes; a byte that does not start a valid UTF-8 sequence (bad
  // lead, missing or bad continuation, overlong, surrogate, beyond U+10FFFF) is a unit of its own.
  static std::vector<Unit> decode_utf8(const std::string& text) {
    std::vector<Unit> out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) {
      const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
      const unsigned char lead = byte(i);
      std::size_t n = lead < 0x80                    ? 1
                      : lead >= 0xC2 && lead <= 0xDF ? 2
                      : lead >= 0xE0 && lead <= 0xEF ? 3
                      : lead >= 0xF0 && lead <= 0xF4 ? 4
                                                     : 0;
      std::uint32_t c = n == 1 ? lead : lead & (0xFFu >> (n + 1));
      for (std::size_t k = 1; k < n; ++k) {
        if (i + k >= text.size() || (byte(i + k) & 0xC0) != 0x80) {
          n = 0;
          break;
        }
        c = (c << 6) | (byte(i + k) & 0x3Fu);
      }
      const bool overlong = (n == 3 && c < 0x800) || (n == 4 && c < 0x10000);
      if (n == 0 || overlong || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) {
        out.push_back({kInvalid, i, 1});
        ++i;
        continue;
      }
      out.push_back({c, i, n});
      i += n;
    }
    return out;
  }
  static std::string hex(unsigned char b) {
    const char* digits = "0123456789ABCDEF";
    return std::string("0x") + digits[b >> 4] + digits[b & 15];
  }

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int> id_, rank_;
  std::string byte_to_symbol_[256];
  std::unordered_map<std::string, int> symbol_to_byte_;
  std::vector<unsigned char> missing_bytes_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

}  // namespace llama

#endif  // KVEVICT_EXAMPLES_LLAMA_TOKENIZER_HPP
