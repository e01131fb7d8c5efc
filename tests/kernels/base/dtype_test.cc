// Tests of the host bf16 / fp16 conversions against an independent reference that knows
// nothing of bit tricks: values are decoded from the IEEE 754 definition in double, and a
// float is rounded by finding its two representable neighbours in a sorted table of all
// values and comparing it with their midpoint (ties to the even pattern).

#include "kernels/base/dtype.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace kvtier {
namespace {

// A 16-bit binary floating-point format: 1 sign bit, `exponent_bits`, `mantissa_bits`.
struct Format {
  const char* name;
  int exponent_bits;
  int mantissa_bits;
  float (*decode)(uint16_t);
  uint16_t (*encode)(float);

  int bias() const { return (1 << (exponent_bits - 1)) - 1; }
  uint32_t max_exponent_field() const { return (1u << exponent_bits) - 1; }
  uint16_t inf_pattern() const {
    return static_cast<uint16_t>(max_exponent_field() << mantissa_bits);
  }
  uint16_t quiet_bit() const { return static_cast<uint16_t>(1u << (mantissa_bits - 1)); }
  uint16_t exponent_field(uint16_t bits) const {
    return static_cast<uint16_t>((bits >> mantissa_bits) & max_exponent_field());
  }
  uint16_t mantissa_field(uint16_t bits) const {
    return static_cast<uint16_t>(bits & ((1u << mantissa_bits) - 1));
  }
  bool IsNaNPattern(uint16_t bits) const {
    return exponent_field(bits) == max_exponent_field() && mantissa_field(bits) != 0;
  }

  // Magnitude of a non-negative pattern from the definition. The Inf pattern is given the
  // value it would have with an unbounded exponent, 2^(emax + 1): IEEE 754 rounds an
  // overflowing value as if the exponent range were unbounded, so Inf is the next
  // "neighbour" above the largest finite value for rounding purposes.
  double UnboundedMagnitude(uint16_t bits) const {
    const int exponent = exponent_field(bits);
    const int mantissa = mantissa_field(bits);
    if (exponent == 0) return std::ldexp(static_cast<double>(mantissa), 1 - bias() - mantissa_bits);
    return std::ldexp(static_cast<double>((1 << mantissa_bits) + mantissa),
                      exponent - bias() - mantissa_bits);
  }

  // Value of any pattern (NaN, Inf, signed zero included).
  double ReferenceDecode(uint16_t bits) const {
    const bool negative = (bits & 0x8000u) != 0;
    const uint16_t magnitude_bits = bits & 0x7FFFu;
    double magnitude;
    if (IsNaNPattern(magnitude_bits)) {
      magnitude = std::numeric_limits<double>::quiet_NaN();
    } else if (magnitude_bits == inf_pattern()) {
      magnitude = std::numeric_limits<double>::infinity();
    } else {
      magnitude = UnboundedMagnitude(magnitude_bits);
    }
    return negative ? -magnitude : magnitude;
  }
};

void PrintTo(const Format* format, std::ostream* os) { *os << format->name; }

const Format kFP16{"fp16", 5, 10, &FP16ToFloat, &FloatToFP16};
const Format kBF16{"bf16", 8, 7, &BF16ToFloat, &FloatToBF16};

// Round-to-nearest-even reference for non-NaN `value`.
class ReferenceRounder {
 public:
  explicit ReferenceRounder(const Format& format) : format_(format) {
    // Non-negative patterns 0 .. Inf are in increasing order of value.
    for (uint32_t bits = 0; bits <= format.inf_pattern(); ++bits) {
      magnitudes_.push_back(format.UnboundedMagnitude(static_cast<uint16_t>(bits)));
    }
  }

  uint16_t Round(float value) const {
    const uint16_t sign = std::signbit(value) ? 0x8000u : 0u;
    const double magnitude = std::fabs(static_cast<double>(value));
    if (magnitude >= magnitudes_.back()) return sign | format_.inf_pattern();
    const auto upper = std::lower_bound(magnitudes_.begin(), magnitudes_.end(), magnitude);
    const auto hi = static_cast<uint16_t>(upper - magnitudes_.begin());
    if (*upper == magnitude) return sign | hi;
    const uint16_t lo = hi - 1;
    // Neighbours have at most 12 significant bits, so their sum is exact in double.
    const double midpoint = (magnitudes_[lo] + magnitudes_[hi]) / 2;
    uint16_t nearest;
    if (magnitude < midpoint) {
      nearest = lo;
    } else if (magnitude > midpoint) {
      nearest = hi;
    } else {
      nearest = (lo % 2 == 0) ? lo : hi;
    }
    return sign | nearest;
  }

  const std::vector<double>& magnitudes() const { return magnitudes_; }

 private:
  const Format& format_;
  std::vector<double> magnitudes_;
};

float Pow2(int exponent) { return std::ldexp(1.0f, exponent); }

// ---------------------------------------------------------------------------------------
// Parameterised over the two 16-bit formats.

class HalfFormatTest : public testing::TestWithParam<const Format*> {
 protected:
  const Format& format() const { return *GetParam(); }
};

// Every pattern decodes to the value the IEEE 754 definition gives it, exactly.
TEST_P(HalfFormatTest, DecodeMatchesDefinitionForAllPatterns) {
  const Format& f = format();
  int failures = 0;
  for (uint32_t i = 0; i <= 0xFFFF; ++i) {
    const auto bits = static_cast<uint16_t>(i);
    const float got = f.decode(bits);
    const double want = f.ReferenceDecode(bits);
    const bool ok = std::isnan(want) ? (std::isnan(got) && std::signbit(got) == std::signbit(want))
                                     : (static_cast<double>(got) == want &&
                                        std::signbit(got) == std::signbit(want));
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << f.name << " pattern 0x" << std::hex << i << " decodes to " << got
                    << ", expected " << want;
    }
  }
  EXPECT_EQ(failures, 0);
}

// Exhaustive round trip bits -> float -> bits. Non-NaN patterns (zeros of both signs,
// subnormals, normals, +-Inf) must come back bit for bit. NaN patterns: the float must be a
// NaN with the pattern's sign, and the pattern it encodes to must be a quiet NaN (quiet bit
// set) with the same sign. For bf16 the payload is kept as well: p comes back as p | quiet
// bit. For fp16 the payload is not kept (FloatToFP16 returns the canonical quiet NaN), so
// only NaN-ness, sign and quietness are checked.
TEST_P(HalfFormatTest, ExhaustiveRoundTrip) {
  const Format& f = format();
  int failures = 0;
  for (uint32_t i = 0; i <= 0xFFFF; ++i) {
    const auto bits = static_cast<uint16_t>(i);
    const float value = f.decode(bits);
    const uint16_t back = f.encode(value);
    bool ok;
    if (f.IsNaNPattern(bits)) {
      ok = std::isnan(value) && std::signbit(value) == ((bits & 0x8000u) != 0) &&
           f.IsNaNPattern(back) && (back & 0x8000u) == (bits & 0x8000u) &&
           (back & f.quiet_bit()) != 0;
      if (&f == &kBF16) ok = ok && back == (bits | f.quiet_bit());
    } else {
      ok = back == bits;
    }
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << f.name << " pattern 0x" << std::hex << i << " -> " << value << " -> 0x"
                    << back;
    }
  }
  EXPECT_EQ(failures, 0);
}

// Every midpoint between two adjacent non-negative values (including the midpoint between
// the largest finite value and the Inf "neighbour", the overflow threshold) is an exact tie
// that must go to the even pattern; one float step below it rounds down, one step above
// rounds up. Both signs.
TEST_P(HalfFormatTest, AllMidpointsRoundToNearestEven) {
  const Format& f = format();
  const ReferenceRounder reference(f);
  const std::vector<double>& m = reference.magnitudes();
  int failures = 0;
  int checked = 0;
  auto expect = [&](float value, uint16_t want) {
    const uint16_t got = f.encode(value);
    if (got != want && ++failures <= 10) {
      ADD_FAILURE() << f.name << ": " << std::hexfloat << value << " encodes to 0x" << std::hex
                    << got << ", expected 0x" << want;
    }
  };
  for (size_t lo = 0; lo + 1 < m.size(); ++lo) {
    const double midpoint = (m[lo] + m[lo + 1]) / 2;
    if (midpoint > FLT_MAX) continue;  // bf16's overflow threshold is beyond float's range
    const auto mid = static_cast<float>(midpoint);
    ASSERT_EQ(static_cast<double>(mid), midpoint) << "midpoints are exact in float";
    const auto lo_bits = static_cast<uint16_t>(lo);
    const auto hi_bits = static_cast<uint16_t>(lo + 1);
    const uint16_t even = (lo % 2 == 0) ? lo_bits : hi_bits;
    const float below = std::nextafter(mid, 0.0f);
    const float above = std::nextafter(mid, std::numeric_limits<float>::infinity());
    expect(mid, even);
    expect(-mid, 0x8000u | even);
    expect(below, lo_bits);
    expect(-below, 0x8000u | lo_bits);
    expect(above, hi_bits);
    expect(-above, 0x8000u | hi_bits);
    ++checked;
  }
  EXPECT_EQ(failures, 0);
  EXPECT_GT(checked, 30000);
}

// Random floats: uniformly random bit patterns (every exponent, NaNs and Infs included) and
// random floats whose exponent lies in and just around the format's range.
TEST_P(HalfFormatTest, RandomFloatsRoundToNearestRepresentable) {
  const Format& f = format();
  const ReferenceRounder reference(f);
  std::mt19937 rng(20240611);
  const int min_exponent = 1 - f.bias() - f.mantissa_bits - 2;  // below half the min subnormal
  const int max_exponent = f.bias() + 1;                        // beyond the overflow threshold
  std::uniform_int_distribution<uint32_t> any_bits;
  std::uniform_int_distribution<int> exponent_dist(min_exponent, std::min(max_exponent, 127));
  std::uniform_int_distribution<uint32_t> mantissa_dist(0, (1u << 23) - 1);
  int failures = 0;
  constexpr int kSamples = 1 << 19;
  for (int i = 0; i < 2 * kSamples; ++i) {
    float value;
    if (i < kSamples) {
      value = std::bit_cast<float>(any_bits(rng));
    } else {
      const float significand = 1.0f + std::ldexp(static_cast<float>(mantissa_dist(rng)), -23);
      value = std::ldexp(significand, exponent_dist(rng));
      if (rng() & 1u) value = -value;
    }
    const uint16_t got = f.encode(value);
    bool ok;
    uint16_t want = 0;
    if (std::isnan(value)) {
      ok = f.IsNaNPattern(got) && ((got & 0x8000u) != 0) == std::signbit(value);
    } else {
      want = reference.Round(value);
      ok = got == want;
    }
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << f.name << ": " << std::hexfloat << value << " encodes to 0x" << std::hex
                    << got << ", reference 0x" << want;
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(HalfFormatTest, SpecialValues) {
  const Format& f = format();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f.encode(0.0f), 0x0000);
  EXPECT_EQ(f.encode(-0.0f), 0x8000);
  EXPECT_EQ(f.encode(inf), f.inf_pattern());
  EXPECT_EQ(f.encode(-inf), 0x8000 | f.inf_pattern());

  const float zero = f.decode(0x0000);
  const float negative_zero = f.decode(0x8000);
  EXPECT_EQ(zero, 0.0f);
  EXPECT_FALSE(std::signbit(zero));
  EXPECT_EQ(negative_zero, 0.0f);
  EXPECT_TRUE(std::signbit(negative_zero));
  EXPECT_EQ(f.decode(f.inf_pattern()), inf);
  EXPECT_EQ(f.decode(0x8000 | f.inf_pattern()), -inf);

  const uint16_t nan = f.encode(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(f.IsNaNPattern(nan));
  EXPECT_EQ(nan & 0x8000, 0);
  const uint16_t negative_nan = f.encode(-std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(f.IsNaNPattern(negative_nan));
  EXPECT_EQ(negative_nan & 0x8000, 0x8000);
  // A signalling NaN whose payload lives only in the low float bits must not truncate to Inf.
  const uint16_t snan = f.encode(std::bit_cast<float>(0x7F800001u));
  EXPECT_TRUE(f.IsNaNPattern(snan)) << std::hex << snan;
  const uint16_t negative_snan = f.encode(std::bit_cast<float>(0xFF800001u));
  EXPECT_TRUE(f.IsNaNPattern(negative_snan)) << std::hex << negative_snan;
  EXPECT_EQ(negative_snan & 0x8000, 0x8000);
}

INSTANTIATE_TEST_SUITE_P(Formats, HalfFormatTest, testing::Values(&kFP16, &kBF16),
                         [](const testing::TestParamInfo<const Format*>& info) {
                           return std::string(info.param->name);
                         });

// ---------------------------------------------------------------------------------------
// fp16, case by case.

TEST(FP16Test, DecodesKnownValues) {
  EXPECT_EQ(FP16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(FP16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(FP16ToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(FP16ToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(FP16ToFloat(0x0001), Pow2(-24));
  EXPECT_EQ(FP16ToFloat(0x03FF), 1023.0f * Pow2(-24));
  EXPECT_EQ(FP16ToFloat(0x0400), Pow2(-14));
  EXPECT_EQ(FP16ToFloat(0x8001), -Pow2(-24));
}

TEST(FP16Test, TiesRoundToEven) {
  // 1 + 2^-11 lies halfway between 1 (0x3C00, even) and 1 + 2^-10 (0x3C01).
  EXPECT_EQ(FloatToFP16(1.0f + Pow2(-11)), 0x3C00);
  // 1 + 3 * 2^-11 lies halfway between 0x3C01 and 0x3C02 (even).
  EXPECT_EQ(FloatToFP16(1.0f + 3.0f * Pow2(-11)), 0x3C02);
  EXPECT_EQ(FloatToFP16(-(1.0f + 3.0f * Pow2(-11))), 0xBC02);
  // Just off the tie goes to the nearer neighbour.
  EXPECT_EQ(FloatToFP16(1.0f + Pow2(-11) + Pow2(-20)), 0x3C01);
  EXPECT_EQ(FloatToFP16(1.0f + 3.0f * Pow2(-11) - Pow2(-20)), 0x3C01);
  // 2049 is halfway between 2048 (0x6800, even) and 2050 (0x6801); 2051 between 2050 and 2052.
  EXPECT_EQ(FloatToFP16(2049.0f), 0x6800);
  EXPECT_EQ(FloatToFP16(2051.0f), 0x6802);
  // A tie whose rounding carries into the exponent: 2 - 2^-11 is halfway between
  // 0x3FFF (2 - 2^-10, odd) and 0x4000 (2.0, even).
  EXPECT_EQ(FloatToFP16(2.0f - Pow2(-11)), 0x4000);
}

TEST(FP16Test, OverflowToInfinity) {
  EXPECT_EQ(FloatToFP16(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToFP16(-65504.0f), 0xFBFF);
  // 65520 is halfway between 65504 (odd pattern) and the next step 65536 (Inf): tie -> Inf.
  EXPECT_EQ(FloatToFP16(65520.0f), 0x7C00);
  EXPECT_EQ(FloatToFP16(-65520.0f), 0xFC00);
  EXPECT_EQ(FloatToFP16(65519.99f), 0x7BFF);
  EXPECT_EQ(FloatToFP16(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(FloatToFP16(65536.0f), 0x7C00);
  EXPECT_EQ(FloatToFP16(1e10f), 0x7C00);
  EXPECT_EQ(FloatToFP16(FLT_MAX), 0x7C00);
  EXPECT_EQ(FloatToFP16(-FLT_MAX), 0xFC00);
}

TEST(FP16Test, Subnormals) {
  const float tiny = Pow2(-24);  // smallest fp16 subnormal
  EXPECT_EQ(FloatToFP16(tiny), 0x0001);
  EXPECT_EQ(FloatToFP16(-tiny), 0x8001);
  // Half of it is a tie between 0 (even) and 2^-24: rounds to zero, keeping the sign.
  EXPECT_EQ(FloatToFP16(tiny / 2), 0x0000);
  EXPECT_EQ(FloatToFP16(-tiny / 2), 0x8000);
  EXPECT_EQ(FloatToFP16(std::nextafter(tiny / 2, 1.0f)), 0x0001);
  EXPECT_EQ(FloatToFP16(0.75f * tiny), 0x0001);
  EXPECT_EQ(FloatToFP16(0.25f * tiny), 0x0000);
  // 1.5 and 2.5 units: ties to 2 units (even).
  EXPECT_EQ(FloatToFP16(1.5f * tiny), 0x0002);
  EXPECT_EQ(FloatToFP16(2.5f * tiny), 0x0002);
  // Float subnormals are far below fp16's range.
  EXPECT_EQ(FloatToFP16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToFP16(-std::numeric_limits<float>::denorm_min()), 0x8000);
  // Largest subnormal, smallest normal, and the tie between them (goes to the normal 0x0400).
  EXPECT_EQ(FloatToFP16(1023.0f * tiny), 0x03FF);
  EXPECT_EQ(FloatToFP16(Pow2(-14)), 0x0400);
  EXPECT_EQ(FloatToFP16(1023.5f * tiny), 0x0400);
  EXPECT_EQ(FloatToFP16(std::nextafter(1023.5f * tiny, 0.0f)), 0x03FF);
  EXPECT_EQ(FloatToFP16(std::nextafter(Pow2(-14), 0.0f)), 0x0400);
  // Smallest normal plus a half step (2^-25) is a tie to the even 0x0400.
  EXPECT_EQ(FloatToFP16(Pow2(-14) + Pow2(-25)), 0x0400);
  EXPECT_EQ(FloatToFP16(Pow2(-14) + 3.0f * Pow2(-25)), 0x0402);
}

// ---------------------------------------------------------------------------------------
// bf16, case by case.

TEST(BF16Test, DecodesKnownValues) {
  EXPECT_EQ(BF16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(BF16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(BF16ToFloat(0x7F7F), std::ldexp(255.0f, 120));  // largest finite
  EXPECT_EQ(BF16ToFloat(0x0080), FLT_MIN);                  // smallest normal
  EXPECT_EQ(BF16ToFloat(0x0001), Pow2(-133));               // smallest subnormal
}

TEST(BF16Test, TiesRoundToEven) {
  // 1 + 2^-8 is halfway between 1 (0x3F80, even) and 1 + 2^-7 (0x3F81).
  EXPECT_EQ(FloatToBF16(1.0f + Pow2(-8)), 0x3F80);
  EXPECT_EQ(FloatToBF16(1.0f + 3.0f * Pow2(-8)), 0x3F82);
  EXPECT_EQ(FloatToBF16(-(1.0f + 3.0f * Pow2(-8))), 0xBF82);
  EXPECT_EQ(FloatToBF16(1.0f + Pow2(-8) + Pow2(-20)), 0x3F81);
  EXPECT_EQ(FloatToBF16(1.0f + 3.0f * Pow2(-8) - Pow2(-20)), 0x3F81);
  // Carry into the exponent: halfway between 2 - 2^-7 (0x3FFF) and 2 (0x4000, even).
  EXPECT_EQ(FloatToBF16(2.0f - Pow2(-8)), 0x4000);
}

TEST(BF16Test, OverflowToInfinity) {
  const float largest = std::ldexp(255.0f, 120);  // 0x7F7F
  EXPECT_EQ(FloatToBF16(largest), 0x7F7F);
  // The overflow threshold 2^128 - 2^119 is exact in float; it is a tie between the odd
  // 0x7F7F and Inf, so it and everything above it, up to FLT_MAX, becomes Inf.
  const float threshold = std::ldexp(511.0f, 119);
  EXPECT_EQ(FloatToBF16(threshold), 0x7F80);
  EXPECT_EQ(FloatToBF16(-threshold), 0xFF80);
  EXPECT_EQ(FloatToBF16(std::nextafter(threshold, 0.0f)), 0x7F7F);
  EXPECT_EQ(FloatToBF16(FLT_MAX), 0x7F80);
  EXPECT_EQ(FloatToBF16(-FLT_MAX), 0xFF80);
}

TEST(BF16Test, Subnormals) {
  const float tiny = Pow2(-133);  // smallest bf16 subnormal
  EXPECT_EQ(FloatToBF16(tiny), 0x0001);
  EXPECT_EQ(FloatToBF16(-tiny), 0x8001);
  EXPECT_EQ(FloatToBF16(tiny / 2), 0x0000);  // tie to even (zero)
  EXPECT_EQ(FloatToBF16(-tiny / 2), 0x8000);
  EXPECT_EQ(FloatToBF16(0.75f * tiny), 0x0001);
  EXPECT_EQ(FloatToBF16(1.5f * tiny), 0x0002);
  EXPECT_EQ(FloatToBF16(2.5f * tiny), 0x0002);
  EXPECT_EQ(FloatToBF16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToBF16(127.0f * tiny), 0x007F);  // largest subnormal
  EXPECT_EQ(FloatToBF16(FLT_MIN), 0x0080);        // smallest normal
  EXPECT_EQ(FloatToBF16(127.5f * tiny), 0x0080);  // tie between them, to the even normal
  EXPECT_EQ(FloatToBF16(std::nextafter(127.5f * tiny, 0.0f)), 0x007F);
}

// ---------------------------------------------------------------------------------------
// Typed access and metadata.

TEST(DTypeTest, SizeAndName) {
  static_assert(DTypeSize(DType::kBF16) == 2);
  static_assert(DTypeSize(DType::kFP16) == 2);
  static_assert(DTypeSize(DType::kFP32) == 4);
  EXPECT_STREQ(DTypeName(DType::kBF16), "bf16");
  EXPECT_STREQ(DTypeName(DType::kFP16), "fp16");
  EXPECT_STREQ(DTypeName(DType::kFP32), "fp32");
  EXPECT_STREQ(DTypeName(static_cast<DType>(17)), "unknown");
}

TEST(DTypeTest, LoadAsFloatReadsTheIndexedElement) {
  const uint16_t bf16[] = {0x3F80, 0xC000, 0x7F80};
  EXPECT_EQ(LoadAsFloat(DType::kBF16, bf16, 0), 1.0f);
  EXPECT_EQ(LoadAsFloat(DType::kBF16, bf16, 1), -2.0f);
  EXPECT_EQ(LoadAsFloat(DType::kBF16, bf16, 2), std::numeric_limits<float>::infinity());
  const uint16_t fp16[] = {0x3C00, 0x7BFF, 0x0001};
  EXPECT_EQ(LoadAsFloat(DType::kFP16, fp16, 0), 1.0f);
  EXPECT_EQ(LoadAsFloat(DType::kFP16, fp16, 1), 65504.0f);
  EXPECT_EQ(LoadAsFloat(DType::kFP16, fp16, 2), Pow2(-24));
  const float fp32[] = {0.1f, -3.5f, 1e-40f};
  EXPECT_EQ(LoadAsFloat(DType::kFP32, fp32, 0), 0.1f);
  EXPECT_EQ(LoadAsFloat(DType::kFP32, fp32, 1), -3.5f);
  EXPECT_EQ(LoadAsFloat(DType::kFP32, fp32, 2), 1e-40f);
}

TEST(DTypeTest, StoreFromFloatRoundsAndWritesOnlyTheIndexedElement) {
  constexpr uint16_t kPoison16 = 0xDEAD;
  uint16_t bf16[4] = {kPoison16, kPoison16, kPoison16, kPoison16};
  StoreFromFloat(DType::kBF16, 1.0f + Pow2(-8), bf16, 1);  // tie -> 1.0
  StoreFromFloat(DType::kBF16, -FLT_MAX, bf16, 2);
  EXPECT_EQ(bf16[0], kPoison16);
  EXPECT_EQ(bf16[1], 0x3F80);
  EXPECT_EQ(bf16[2], 0xFF80);
  EXPECT_EQ(bf16[3], kPoison16);
  EXPECT_EQ(LoadAsFloat(DType::kBF16, bf16, 1), 1.0f);

  uint16_t fp16[4] = {kPoison16, kPoison16, kPoison16, kPoison16};
  StoreFromFloat(DType::kFP16, 65520.0f, fp16, 1);
  StoreFromFloat(DType::kFP16, 0.333333f, fp16, 2);
  EXPECT_EQ(fp16[0], kPoison16);
  EXPECT_EQ(fp16[1], 0x7C00);
  EXPECT_EQ(fp16[2], 0x3555);
  EXPECT_EQ(fp16[3], kPoison16);
  EXPECT_EQ(LoadAsFloat(DType::kFP16, fp16, 2), 0.333251953125f);

  const float kPoison32 = -12345.0f;
  float fp32[4] = {kPoison32, kPoison32, kPoison32, kPoison32};
  StoreFromFloat(DType::kFP32, 0.1f, fp32, 1);
  StoreFromFloat(DType::kFP32, 1e-40f, fp32, 2);
  EXPECT_EQ(fp32[0], kPoison32);
  EXPECT_EQ(fp32[1], 0.1f);  // fp32 is stored as is, no rounding
  EXPECT_EQ(fp32[2], 1e-40f);
  EXPECT_EQ(fp32[3], kPoison32);
  EXPECT_EQ(LoadAsFloat(DType::kFP32, fp32, 2), 1e-40f);
}

}  // namespace
}  // namespace kvtier
