// Carving aligned arrays out of one block of backend memory, so that a module describes its
// arrays once: the same sequence of Take calls on a counting Carver sizes the block (for a
// memory plan, before anything is allocated) and on a real one carves it, and the two never
// disagree.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier::internal {

// Rounds up to the 256-byte alignment every carved array keeps.
constexpr int64_t AlignUp(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// Carves aligned arrays out of one block of backend memory (256-byte aligned, as
// StepBackend::Allocate returns it), or (base == nullptr) only counts the bytes the same
// sequence of Take calls needs; every pointer it then returns is null.
class Carver {
 public:
  explicit Carver(std::byte* base) : base_(base) {}
  template <typename T>
  T* Take(int64_t count) {
    std::byte* p = base_ != nullptr ? base_ + used_ : nullptr;
    used_ += AlignUp(count * static_cast<int64_t>(sizeof(T)));
    return reinterpret_cast<T*>(p);
  }
  std::byte* Bytes(int64_t bytes) { return Take<std::byte>(bytes); }
  int64_t used() const { return used_; }

 private:
  std::byte* base_;
  int64_t used_ = 0;
};

}  // namespace kvtier::internal
