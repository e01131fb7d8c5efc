// One element of a 16-bit KV dtype (bf16 or fp16) to and from float, for test fixtures that
// keep keys, values and summaries as raw bits. Header-only.
#pragma once

#include <cstdint>

#include "kernels/base/dtype.h"

namespace kvtier::testing_util {

// x rounded to the dtype (nearest even), as bits.
inline uint16_t Bits(DType dtype, float x) {
  return dtype == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x);
}
// The value of bits b of the dtype (exact).
inline float Value(DType dtype, uint16_t b) {
  return dtype == DType::kBF16 ? BF16ToFloat(b) : FP16ToFloat(b);
}

}  // namespace kvtier::testing_util
