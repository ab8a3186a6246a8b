// SPDX-License-Identifier: Apache-2.0
// Command-line pieces the example tools share: lists and numbers read strictly, so that "12abc" or "2k" is an
// error rather than 12 or 2.
#ifndef KVEVICT_EXAMPLES_LLAMA_CLI_HPP
#define KVEVICT_EXAMPLES_LLAMA_CLI_HPP

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace cli {

/// The items of a list such as "128,256,512", empty items dropped.
inline std::vector<std::string> split(const std::string& s, char separator = ',') {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, separator);)
    if (!item.empty()) out.push_back(item);
  return out;
}

/// Whether option argv[i] has a value after it: a next argument that is not itself an option, so that
/// "--model --text t.txt" is a missing model rather than a model named "--text".
inline bool has_value(int argc, char** argv, int i) {
  return i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0;
}

/// The whole of `v` as an int, long or finite double: std::invalid_argument if anything is left over, nothing
/// is a number or the double is NaN or infinite (which would pass every range check written as a < x < b's
/// negation), std::out_of_range beyond the type.
template <class T>
T number(const std::string& v) {
  static_assert(std::is_same_v<T, int> || std::is_same_v<T, long> || std::is_same_v<T, double>);
  std::size_t used = 0;
  T x{};
  if constexpr (std::is_same_v<T, double>) {
    x = std::stod(v, &used);
    if (!std::isfinite(x)) throw std::invalid_argument("not a finite number");
  } else {
    const long n = std::stol(v, &used);
    if (n < long(std::numeric_limits<T>::min()) || n > long(std::numeric_limits<T>::max()))
      throw std::out_of_range("beyond the type");
    x = T(n);
  }
  if (used != v.size()) throw std::invalid_argument("trailing characters");
  return x;
}

}  // namespace cli

#endif  // KVEVICT_EXAMPLES_LLAMA_CLI_HPP
