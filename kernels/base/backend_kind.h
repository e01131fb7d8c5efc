// Which implementation of the kernel set runs a KvCache's steps.
#pragma once

#include <cstdint>

namespace kvtier {

enum class Backend : uint8_t {
  kCuda,  // the product: kernels on the GPU
  kHost,  // the kernels' host twins; runs without a GPU
};

}  // namespace kvtier
