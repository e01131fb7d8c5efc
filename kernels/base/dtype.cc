#include "kernels/base/dtype.h"

#include <bit>
#include <cmath>

namespace kvtier {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return "bf16";
    case DType::kFP16:
      return "fp16";
    case DType::kFP32:
      return "fp32";
  }
  return "unknown";
}

uint16_t FloatToBF16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) {
    // Keep the sign and force a quiet-NaN mantissa bit so truncation cannot make it Inf.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Round to nearest, ties to even, on the 16 bits that are dropped.
  const uint32_t lsb = (bits >> 16) & 1u;
  bits += 0x7FFFu + lsb;
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t FloatToFP16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  if (std::isnan(value)) return static_cast<uint16_t>(sign | 0x7E00u);
  const float magnitude = std::fabs(value);
  // Values at or above 65520 round to Inf (65504 is the largest finite half).
  if (magnitude >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00u);
  if (magnitude < 6.103515625e-05f) {
    // Subnormal range: the result is round(magnitude * 2^24) units of 2^-24. The product is
    // exact in float and nearbyint rounds ties to even in the default rounding mode.
    const float units = std::nearbyint(magnitude * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(units));
  }
  // Normal range: drop 13 mantissa bits with round-to-nearest-even; a carry into the
  // exponent is the correct result (up to Inf, excluded above).
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  const uint32_t lsb = (abs_bits >> 13) & 1u;
  const uint32_t rounded = abs_bits + 0x0FFFu + lsb;
  const uint32_t half = ((rounded >> 23) - 112u) << 10 | ((rounded >> 13) & 0x3FFu);
  return static_cast<uint16_t>(sign | half);
}

}  // namespace kvtier
