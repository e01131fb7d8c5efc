// Poison values for test outputs: written before a call so that an element the call should
// have written and did not stands out (and a float poison is a NaN, which never passes).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace kvtier::testing_util {

inline constexpr uint8_t kPoisonByte = 0xAB;
inline constexpr uint32_t kPoisonFloatBits = 0x7FABABABu;  // a NaN

// A value of T with every byte kPoisonByte (floats: the NaN kPoisonFloatBits).
template <typename T>
T Poisoned() {
  T value;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(&value, &kPoisonFloatBits, sizeof(T));
  } else {
    std::memset(&value, kPoisonByte, sizeof(T));
  }
  return value;
}

template <typename T>
bool IsPoisoned(const T& value) {
  const T poison = Poisoned<T>();
  return std::memcmp(&value, &poison, sizeof(T)) == 0;
}

}  // namespace kvtier::testing_util
