// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_STORAGE_HPP
#define KVEVICT_STORAGE_HPP

/// @file
/// The types K and V can be stored in, and the type each computes in.
///
/// Decode attention reads every kept key and value once per step, so its time is the bytes of the cache:
/// 16-bit storage halves both the memory and the time. A 16-bit cache computes in float: queries, outputs,
/// attention weights and everything a policy sees are float; only the stored rows are 16-bit, converted
/// to float a block at a time inside the kernel (never into a float copy of the cache).
///
/// | Storage          | bytes | computes in | rounding of a stored value | range          |
/// |------------------|-------|-------------|----------------------------|----------------|
/// | float            | 4     | float       | 2^-24 relative             | 3.4e38         |
/// | double           | 8     | double      | 2^-53 relative             | 1.8e308        |
/// | Eigen::half      | 2     | float       | 2^-11 relative             | 65504          |
/// | Eigen::bfloat16  | 2     | float       | 2^-8 relative              | 3.4e38         |

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <type_traits>

namespace kvevict {

namespace detail {
template <class Storage, class... Supported>
inline constexpr bool one_of_v = (std::is_same_v<Storage, Supported> || ...);
}  // namespace detail

/// The facts about a storage type, from std::numeric_limits (which Eigen specialises for half and bfloat16).
template <class Storage>
struct storage_traits {
  static constexpr bool supported = detail::one_of_v<Storage, float, double, Eigen::half, Eigen::bfloat16>;
  /// double for double storage, float for the rest.
  using compute = std::conditional_t<std::is_same_v<Storage, double>, double, float>;
  /// The largest relative error of rounding a value to Storage: 2^-digits. From the digits, not epsilon():
  /// Eigen 3.4's epsilon() for half is 2^-13 where it should be 2^-10.
  static double unit_roundoff() { return std::ldexp(1.0, -std::numeric_limits<Storage>::digits); }
  /// The largest finite value; beyond it a stored value becomes infinite.
  static double largest() { return double((std::numeric_limits<Storage>::max)()); }
  static constexpr const char* name = std::is_same_v<Storage, float>         ? "f32"
                                      : std::is_same_v<Storage, double>      ? "f64"
                                      : std::is_same_v<Storage, Eigen::half> ? "f16"
                                                                             : "bf16";
};

/// The type a cache stored as `Storage` computes in: float, or double for double storage.
template <class Storage>
using compute_type_t = typename storage_traits<Storage>::compute;

/// True for float, double, Eigen::half and Eigen::bfloat16.
template <class Storage>
inline constexpr bool is_storage_type_v = storage_traits<Storage>::supported;

}  // namespace kvevict

#endif  // KVEVICT_STORAGE_HPP
