// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_SLOTS_HPP
#define KVEVICT_SLOTS_HPP

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <vector>

namespace kvevict {

/// Position stored in a slot that holds no token.
inline constexpr std::int64_t kFreeSlot = -1;

/// The cell table of one (layer, kv head): which token each slot holds and at which position its key is
/// rotated. Slots are reused: an evicted slot goes on a free list and the next token takes it, so nothing
/// is ever compacted. Insert and erase are O(1); the table allocates only in its constructor.
class SlotTable {
 public:
  SlotTable() = default;
  explicit SlotTable(int capacity)
      : position_(static_cast<std::size_t>(capacity), kFreeSlot),
        rotated_at_(static_cast<std::size_t>(capacity), kFreeSlot) {
    free_.reserve(static_cast<std::size_t>(capacity));
    clear();
  }

  /// Frees every slot; allocates nothing.
  void clear() {
    std::fill(position_.begin(), position_.end(), kFreeSlot);
    std::fill(rotated_at_.begin(), rotated_at_.end(), kFreeSlot);
    free_.clear();
    for (int s = capacity() - 1; s >= 0; --s) free_.push_back(s);  // slot 0 is handed out first
    high_water_ = 0;
  }

  int capacity() const { return static_cast<int>(position_.size()); }
  int size() const { return capacity() - static_cast<int>(free_.size()); }
  bool full() const { return free_.empty(); }
  /// One past the highest slot used since clear(): slots from here on are free. Slots are handed out from 0
  /// up and freed ones reused first, so until the cache first fills this is its size, and attention over a
  /// cache with a large capacity costs what it holds, not what it could hold.
  int high_water() const { return high_water_; }

  /// Original (token) positions per slot; kFreeSlot where empty. Length capacity().
  const std::int64_t* positions() const { return position_.data(); }
  std::int64_t position(int slot) const { return position_[idx(slot)]; }
  bool occupied(int slot) const { return position_[idx(slot)] != kFreeSlot; }
  /// The position the slot's key is rotated at (differs from position() only in in-cache position mode).
  std::int64_t rotated_at(int slot) const { return rotated_at_[idx(slot)]; }

  /// The slot the next insert() returns. @pre !full()
  int next_free() const {
    assert(!full());
    return free_.back();
  }
  /// Puts a token in the next free slot and returns that slot. @pre !full()
  int insert(std::int64_t position) {
    const int slot = next_free();
    free_.pop_back();
    high_water_ = std::max(high_water_, slot + 1);
    position_[idx(slot)] = position;
    rotated_at_[idx(slot)] = position;
    return slot;
  }
  /// Frees an occupied slot. @pre occupied(slot)
  void erase(int slot) {
    assert(occupied(slot));
    position_[idx(slot)] = kFreeSlot;
    rotated_at_[idx(slot)] = kFreeSlot;
    free_.push_back(slot);
  }
  void set_rotated_at(int slot, std::int64_t position) { rotated_at_[idx(slot)] = position; }

 private:
  static std::size_t idx(int slot) { return static_cast<std::size_t>(slot); }

  std::vector<std::int64_t> position_;
  std::vector<std::int64_t> rotated_at_;
  std::vector<int> free_;
  int high_water_ = 0;
};

}  // namespace kvevict

#endif  // KVEVICT_SLOTS_HPP
