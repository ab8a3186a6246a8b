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
#include <type_traits>

namespace kvevict {

/// The facts about a storage type; specialised for the four kvevict supports.
template <class Storage>
struct storage_traits {
  static constexpr bool supported = false;
};

template <>
struct storage_traits<float> {
  static constexpr bool supported = true;
  using compute = float;
  static constexpr double unit_roundoff = 0x1p-24;
  static constexpr double largest = 3.4028234663852886e38;
  static constexpr const char* name = "f32";
};

template <>
struct storage_traits<double> {
  static constexpr bool supported = true;
  using compute = double;
  static constexpr double unit_roundoff = 0x1p-53;
  static constexpr double largest = 1.7976931348623157e308;
  static constexpr const char* name = "f64";
};

template <>
struct storage_traits<Eigen::half> {
  static constexpr bool supported = true;
  using compute = float;
  static constexpr double unit_roundoff = 0x1p-11;
  static constexpr double largest = 65504.0;  // beyond it a stored value becomes infinite
  static constexpr const char* name = "f16";
};

template <>
struct storage_traits<Eigen::bfloat16> {
  static constexpr bool supported = true;
  using compute = float;
  static constexpr double unit_roundoff = 0x1p-8;
  static constexpr double largest = 3.3895313892515355e38;
  static constexpr const char* name = "bf16";
};

/// The type a cache stored as `Storage` computes in: float, or double for double storage.
template <class Storage>
using compute_type_t = typename storage_traits<Storage>::compute;

/// True for float, double, Eigen::half and Eigen::bfloat16.
template <class Storage>
inline constexpr bool is_storage_type_v = storage_traits<Storage>::supported;

}  // namespace kvevict

#endif  // KVEVICT_STORAGE_HPP
