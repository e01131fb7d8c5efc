// Element types of stored KV and queries, and exact host conversions to and from float.
// bf16 and fp16 are stored as raw 16-bit patterns (uint16_t) on the host; the conversions
// round to nearest even, keep NaN a NaN, overflow to Inf and handle subnormals exactly.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace kvtier {

enum class DType : uint8_t { kBF16, kFP16, kFP32 };

// Bytes per element.
constexpr size_t DTypeSize(DType dtype) { return dtype == DType::kFP32 ? 4 : 2; }
const char* DTypeName(DType dtype);

// Widening conversions are exact and inline: the host twins call them per element.
inline float BF16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}
inline float FP16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0x1F) {  // Inf or NaN
    return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  }
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}
uint16_t FloatToBF16(float value);
uint16_t FloatToFP16(float value);

// Element `index` of an array of `dtype` at `data`, as float.
inline float LoadAsFloat(DType dtype, const void* data, size_t index) {
  switch (dtype) {
    case DType::kBF16:
      return BF16ToFloat(static_cast<const uint16_t*>(data)[index]);
    case DType::kFP16:
      return FP16ToFloat(static_cast<const uint16_t*>(data)[index]);
    case DType::kFP32:
      return static_cast<const float*>(data)[index];
  }
  return 0.0f;  // unreachable: every enumerator is handled above
}

// Stores `value` rounded to `dtype` as element `index` of the array at `data`.
inline void StoreFromFloat(DType dtype, float value, void* data, size_t index) {
  switch (dtype) {
    case DType::kBF16:
      static_cast<uint16_t*>(data)[index] = FloatToBF16(value);
      return;
    case DType::kFP16:
      static_cast<uint16_t*>(data)[index] = FloatToFP16(value);
      return;
    case DType::kFP32:
      static_cast<float*>(data)[index] = value;
      return;
  }
}

}  // namespace kvtier
