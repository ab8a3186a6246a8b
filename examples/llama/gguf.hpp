// SPDX-License-Identifier: Apache-2.0
// A GGUF v3 reader: memory-mapped, every offset and size checked against the file before use, so a
// truncated or corrupt file gives a GgufError naming what is wrong and where, never a crash.
#ifndef KVEVICT_EXAMPLES_LLAMA_GGUF_HPP
#define KVEVICT_EXAMPLES_LLAMA_GGUF_HPP

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace gguf {

class GgufError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Tensor types this reader can dequantise (ggml's numbering).
enum class Type : std::uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8 };

inline const char* type_name(std::uint32_t t) {
  switch (t) {
    case 0:
      return "F32";
    case 1:
      return "F16";
    case 2:
      return "Q4_0";
    case 3:
      return "Q4_1";
    case 8:
      return "Q8_0";
    default:
      return nullptr;
  }
}

/// Bytes per block and values per block of a type.
inline std::pair<std::size_t, std::size_t> block_layout(Type t) {
  switch (t) {
    case Type::F32:
      return {4, 1};
    case Type::F16:
      return {2, 1};
    case Type::Q4_0:
      return {18, 32};
    case Type::Q4_1:
      return {20, 32};
    case Type::Q8_0:
      return {34, 32};
  }
  return {0, 1};
}

using Value = std::variant<std::int64_t, double, bool, std::string, std::vector<std::string>, std::vector<std::int64_t>,
                           std::vector<double>>;

struct TensorInfo {
  std::string name;
  std::vector<std::uint64_t> dims;  // dims[0] is the fastest-varying (row length)
  Type type;
  std::uint64_t offset;  // from the start of the data section
  std::uint64_t n_elements;
  std::uint64_t n_bytes;
  const std::uint8_t* data;
};

/// A read-only mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY);
    if (fd_ < 0) throw GgufError("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    void* p = MAP_FAILED;
    if (::fstat(fd_, &st) == 0) {
      size_ = static_cast<std::size_t>(st.st_size);
      p = size_ ? ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0) : nullptr;
    }
    if (p == MAP_FAILED) {
      ::close(fd_);
      throw GgufError("cannot map " + path);
    }
    data_ = static_cast<const std::uint8_t*>(p);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  int fd_ = -1;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Reads little-endian values and refuses to step past the end.
class Cursor {
 public:
  Cursor(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::size_t pos() const { return pos_; }
  std::size_t remaining() const { return size_ - pos_; }

  void need(std::uint64_t n, const char* what) const {
    if (n > remaining())
      throw GgufError(std::string("truncated or corrupt file: ") + what + " needs " + std::to_string(n) +
                      " bytes at offset " + std::to_string(pos_) + ", only " + std::to_string(remaining()) + " left");
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const auto n = read<std::uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  void skip(std::uint64_t n, const char* what) {
    need(n, what);
    pos_ += static_cast<std::size_t>(n);
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

class File {
 public:
  explicit File(const std::string& path) : map_(path) { parse(); }

  const std::map<std::string, Value>& metadata() const { return metadata_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  std::uint32_t version() const { return version_; }

  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  template <class T>
  const T& get(const std::string& key) const {
    auto it = metadata_.find(key);
    if (it == metadata_.end()) throw GgufError("missing metadata key " + key);
    if (const T* v = std::get_if<T>(&it->second)) return *v;
    throw GgufError("metadata key " + key + " has another type");
  }
  std::int64_t integer(const std::string& key) const { return get<std::int64_t>(key); }
  double number(const std::string& key) const {
    auto it = metadata_.find(key);
    if (it != metadata_.end())
      if (const auto* i = std::get_if<std::int64_t>(&it->second)) return double(*i);
    return get<double>(key);
  }
  const TensorInfo& tensor(const std::string& name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return t;
    throw GgufError("missing tensor " + name);
  }

 private:
  void parse() {
    Cursor c(map_.data(), map_.size());
    const auto magic = c.read<std::uint32_t>("magic");
    if (magic != 0x46554747u) throw GgufError("not a GGUF file (bad magic)");
    version_ = c.read<std::uint32_t>("version");
    if (version_ != 3 && version_ != 2) throw GgufError("unsupported GGUF version " + std::to_string(version_));
    const auto n_tensors = c.read<std::uint64_t>("tensor count");
    const auto n_kv = c.read<std::uint64_t>("metadata count");
    // Every entry takes at least 8 bytes: counts beyond that are corrupt, whatever memory would allow.
    if (n_kv > c.remaining() / 8 || n_tensors > c.remaining() / 8)
      throw GgufError("truncated or corrupt file: header counts exceed the file");
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      std::string key = c.string("metadata key");
      const auto type = c.read<std::uint32_t>("metadata type");
      Value v = value(c, type);
      if (!metadata_.emplace(key, std::move(v)).second)
        throw GgufError("corrupt metadata: key " + key + " appears twice");
    }
    std::uint64_t alignment = 32;
    if (has("general.alignment")) {
      const std::int64_t a = integer("general.alignment");
      if (a <= 0 || a > kMaxAlignment || (a & (a - 1)) != 0)
        throw GgufError("general.alignment: expected a power of two in [1, " + std::to_string(kMaxAlignment) +
                        "], got " + std::to_string(a));
      alignment = std::uint64_t(a);
    }
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      TensorInfo t;
      t.name = c.string("tensor name");
      const auto n_dims = c.read<std::uint32_t>("tensor dims");
      if (n_dims == 0 || n_dims > 4)
        throw GgufError("tensor " + t.name + ": bad dimension count " + std::to_string(n_dims));
      t.n_elements = 1;
      for (std::uint32_t d = 0; d < n_dims; ++d) {
        const auto n = c.read<std::uint64_t>("tensor dim");
        if (n == 0 || n > (1ull << 40) || t.n_elements > (1ull << 40) / n)
          throw GgufError("tensor " + t.name + ": dimension out of range");
        t.dims.push_back(n);
        t.n_elements *= n;
      }
      const auto type = c.read<std::uint32_t>("tensor type");
      if (!type_name(type)) throw GgufError("tensor " + t.name + ": unsupported type " + std::to_string(type));
      t.type = static_cast<Type>(type);
      t.offset = c.read<std::uint64_t>("tensor offset");
      if (t.offset % alignment != 0)
        throw GgufError("tensor " + t.name + ": offset " + std::to_string(t.offset) +
                        " is not a multiple of the alignment " + std::to_string(alignment));
      const auto [block_bytes, block_values] = block_layout(t.type);
      if (t.dims[0] % block_values != 0) throw GgufError("tensor " + t.name + ": row not a whole number of blocks");
      t.n_bytes = t.n_elements / block_values * block_bytes;
      tensors_.push_back(std::move(t));
    }
    const std::uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
    const std::uint64_t data_size = data_start <= map_.size() ? map_.size() - data_start : 0;
    for (auto& t : tensors_) {
      // Compared without adding, so that no sum wraps and the message prints the numbers of the file.
      if (t.offset > data_size || t.n_bytes > data_size - t.offset)
        throw GgufError("truncated or corrupt file: tensor " + t.name + " needs " + std::to_string(t.n_bytes) +
                        " bytes at offset " + std::to_string(t.offset) + " of a data section of " +
                        std::to_string(data_size) + " bytes");
      t.data = map_.data() + data_start + t.offset;
    }
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->offset != b->offset ? a->offset < b->offset : a->name < b->name;
    });
    for (std::size_t i = 1; i < by_offset.size(); ++i) {
      const TensorInfo &a = *by_offset[i - 1], &b = *by_offset[i];
      if (b.offset < a.offset + a.n_bytes)
        throw GgufError("corrupt file: tensors " + a.name + " and " + b.name + " overlap at offset " +
                        std::to_string(b.offset));
    }
    std::vector<const std::string*> names;
    for (const auto& t : tensors_) names.push_back(&t.name);
    std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
    for (std::size_t i = 1; i < names.size(); ++i)
      if (*names[i] == *names[i - 1]) throw GgufError("corrupt file: tensor " + *names[i] + " appears twice");
  }

  static constexpr std::int64_t kMaxAlignment = 1 << 16;

  static Value value(Cursor& c, std::uint32_t type) {
    switch (type) {
      case 0:
        return std::int64_t(c.read<std::uint8_t>("u8"));
      case 1:
        return std::int64_t(c.read<std::int8_t>("i8"));
      case 2:
        return std::int64_t(c.read<std::uint16_t>("u16"));
      case 3:
        return std::int64_t(c.read<std::int16_t>("i16"));
      case 4:
        return std::int64_t(c.read<std::uint32_t>("u32"));
      case 5:
        return std::int64_t(c.read<std::int32_t>("i32"));
      case 6:
        return double(c.read<float>("f32"));
      case 7:
        return c.read<std::uint8_t>("bool") != 0;
      case 8:
        return c.string("string");
      case 9:
        return array(c);
      case 10:
        return std::int64_t(c.read<std::uint64_t>("u64"));
      case 11:
        return c.read<std::int64_t>("i64");
      case 12:
        return c.read<double>("f64");
      default:
        throw GgufError("corrupt metadata: unknown value type " + std::to_string(type));
    }
  }

  static Value array(Cursor& c) {
    const auto type = c.read<std::uint32_t>("array type");
    const auto n = c.read<std::uint64_t>("array length");
    // The smallest element of the type: a string is at least its 8-byte length.
    const std::uint64_t least = type == 8                                ? 8
                                : type == 0 || type == 1 || type == 7    ? 1
                                : type == 2 || type == 3                 ? 2
                                : type == 10 || type == 11 || type == 12 ? 8
                                                                         : 4;
    if (n > c.remaining() / least)
      throw GgufError("truncated or corrupt file: an array of " + std::to_string(n) + " elements exceeds the " +
                      std::to_string(c.remaining()) + " bytes left");
    // Never reserve more than the elements the file can hold, nor much memory up front: a string vector
    // reserved at n would take 32 bytes of memory per 8 bytes of file.
    const auto reserve = std::size_t(std::min<std::uint64_t>(n, 1 << 16));
    if (type == 8) {
      std::vector<std::string> v;
      v.reserve(reserve);
      for (std::uint64_t i = 0; i < n; ++i) v.push_back(c.string("array string"));
      return v;
    }
    if (type == 6 || type == 12) {
      std::vector<double> v;
      v.reserve(reserve);
      for (std::uint64_t i = 0; i < n; ++i)
        v.push_back(type == 6 ? double(c.read<float>("f32")) : c.read<double>("f64"));
      return v;
    }
    if (type == 9 || type > 12)
      throw GgufError("corrupt metadata: unsupported array element type " + std::to_string(type));
    std::vector<std::int64_t> v;
    v.reserve(reserve);
    for (std::uint64_t i = 0; i < n; ++i) {
      Value x = value(c, type);
      v.push_back(std::holds_alternative<bool>(x) ? std::int64_t(std::get<bool>(x)) : std::get<std::int64_t>(x));
    }
    return v;
  }

  MappedFile map_;
  std::uint32_t version_ = 0;
  std::map<std::string, Value> metadata_;
  std::vector<TensorInfo> tensors_;
};

/// IEEE half to float.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Dequantises `t` into `out` (t.n_elements floats), row after row.
inline void dequantize(const TensorInfo& t, float* out) {
  const std::uint8_t* p = t.data;
  auto f16 = [](const std::uint8_t* b) {
    std::uint16_t h;
    std::memcpy(&h, b, 2);
    return half_to_float(h);
  };
  switch (t.type) {
    case Type::F32:
      std::memcpy(out, p, t.n_elements * 4);
      return;
    case Type::F16:
      for (std::uint64_t i = 0; i < t.n_elements; ++i) out[i] = f16(p + 2 * i);
      return;
    case Type::Q4_0:
    case Type::Q4_1:
    case Type::Q8_0:
      for (std::uint64_t b = 0; b < t.n_elements / 32; ++b, out += 32) {
        if (t.type == Type::Q8_0) {
          const float d = f16(p);
          for (int i = 0; i < 32; ++i) out[i] = d * float(static_cast<std::int8_t>(p[2 + i]));
          p += 34;
          continue;
        }
        const bool has_min = t.type == Type::Q4_1;
        const float d = f16(p), m = has_min ? f16(p + 2) : -8.0f * d;
        const std::uint8_t* q = p + (has_min ? 4 : 2);
        for (int i = 0; i < 16; ++i) {  // low nibbles are values 0..15, high nibbles 16..31
          out[i] = d * float(q[i] & 0x0F) + m;
          out[i + 16] = d * float(q[i] >> 4) + m;
        }
        p += has_min ? 20 : 18;
      }
      return;
  }
}

}  // namespace gguf

#endif  // KVEVICT_EXAMPLES_LLAMA_GGUF_HPP
