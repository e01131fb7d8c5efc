// Host bytes at a 16-byte aligned address, as pages and vector loads need. Test code only.
#pragma once

#include <cstddef>
#include <vector>

namespace kvtier {

class AlignedBytes {
 public:
  explicit AlignedBytes(size_t bytes) : chunks_((bytes + 15) / 16), bytes_(bytes) {}
  std::byte* data() { return reinterpret_cast<std::byte*>(chunks_.data()); }
  size_t size() const { return bytes_; }

 private:
  struct alignas(16) Chunk {
    std::byte b[16];
  };
  std::vector<Chunk> chunks_;
  size_t bytes_;
};

}  // namespace kvtier
