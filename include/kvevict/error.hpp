// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_ERROR_HPP
#define KVEVICT_ERROR_HPP

#include <sstream>
#include <stdexcept>
#include <string>

namespace kvevict {

/// Thrown for every rejected argument. The message names the parameter, what was expected and what was
/// given, e.g. "kvevict: budget: expected >= sinks + 1 = 5, got 4". Whoever throws it has changed nothing.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class Got>
[[noreturn]] void fail(const char* parameter, const std::string& expected, const Got& got) {
  std::ostringstream message;
  message << "kvevict: " << parameter << ": expected " << expected << ", got " << got;
  throw InvalidArgument(message.str());
}

/// Throws unless lo <= value <= hi: "parameter: expected in [lo, hi]<note>, got value".
template <class T>
void require_in(const char* parameter, T value, T lo, T hi, const char* note = "") {
  if (value < lo || value > hi)
    fail(parameter, "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]" + note, value);
}

}  // namespace detail

/// Throws InvalidArgument unless `condition` holds; `expected` and `got` are evaluated only on failure, so
/// checks on the per-token path build no strings.
#define KVEVICT_REQUIRE(condition, parameter, expected, got)                   \
  do {                                                                         \
    if (!(condition)) ::kvevict::detail::fail((parameter), (expected), (got)); \
  } while (false)
}  // namespace kvevict

#endif  // KVEVICT_ERROR_HPP
