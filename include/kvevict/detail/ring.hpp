// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_DETAIL_RING_HPP
#define KVEVICT_DETAIL_RING_HPP

#include <cassert>
#include <cstddef>
#include <vector>

namespace kvevict::detail {

/// A fixed-capacity double-ended queue on one allocation made up front. Erasing in the middle shifts the
/// shorter side, so erasing near either end costs O(distance to that end).
template <class T>
class Ring {
 public:
  Ring() = default;
  explicit Ring(int capacity) : data_(static_cast<std::size_t>(capacity)) {}

  int size() const { return size_; }
  bool empty() const { return size_ == 0; }
  int capacity() const { return static_cast<int>(data_.size()); }
  void clear() { head_ = size_ = 0; }
  /// Empties the ring and gives it `capacity` slots, reusing its storage when it is large enough.
  void reset(int capacity) {
    data_.resize(static_cast<std::size_t>(capacity));
    clear();
  }

  const T& operator[](int i) const { return data_[index(i)]; }
  T& operator[](int i) { return data_[index(i)]; }

  void push_back(const T& value) {
    assert(size_ < capacity());
    data_[index(size_)] = value;
    ++size_;
  }
  T pop_front() {
    assert(size_ > 0);
    T value = data_[index(0)];
    head_ = (head_ + 1) % capacity();
    --size_;
    return value;
  }
  void erase_at(int i) {
    assert(i >= 0 && i < size_);
    if (i < size_ - 1 - i) {
      for (int k = i; k > 0; --k) (*this)[k] = (*this)[k - 1];
      head_ = (head_ + 1) % capacity();
    } else {
      for (int k = i; k < size_ - 1; ++k) (*this)[k] = (*this)[k + 1];
    }
    --size_;
  }

 private:
  std::size_t index(int i) const { return static_cast<std::size_t>((head_ + i) % capacity()); }

  std::vector<T> data_;
  int head_ = 0;
  int size_ = 0;
};

}  // namespace kvevict::detail

#endif  // KVEVICT_DETAIL_RING_HPP
