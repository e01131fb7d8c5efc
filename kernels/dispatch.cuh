// The one way kernels turn runtime sizes and dtypes into compile-time constants. A value
// outside the supported set returns Unimplemented naming what was asked and what exists;
// nothing is launched silently.
//
//   return DispatchInt<64, 128, 256>("head_dim", p.head_dim, [&](auto head_dim) {
//     return DispatchKvDType(p.dtype, [&](auto element) {
//       using T = typename decltype(element)::type;
//       return LaunchTyped<T, decltype(head_dim)::value>(p, stream);
//     });
//   });
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/dtype.h"

namespace kvtier {

// The device element type of a kvtier dtype.
template <typename T>
struct ElementTag {
  using type = T;
};

// Calls `f(std::integral_constant<int, V>{})` for the V in `kValues` equal to `value`.
template <int... kValues, typename F>
absl::Status DispatchInt(const char* what, int value, F&& f) {
  absl::Status status;
  auto call = [&](auto constant) {
    (void)(status = f(constant));  // nvcc flags the discarded Status& of operator=
    return true;
  };
  const bool found = ((value == kValues && call(std::integral_constant<int, kValues>{})) || ...);
  if (found) return status;
  return absl::UnimplementedError(absl::StrCat(
      what, " = ", value, " is not supported; supported: ", absl::StrJoin({kValues...}, ", ")));
}

// Calls `f(ElementTag<__nv_bfloat16>{})` or `f(ElementTag<__half>{})` for the KV dtype.
template <typename F>
absl::Status DispatchKvDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBF16:
      return f(ElementTag<__nv_bfloat16>{});
    case DType::kFP16:
      return f(ElementTag<__half>{});
    default:
      return absl::UnimplementedError(
          absl::StrCat("dtype ", DTypeName(dtype), " is not supported for K/V: bf16 or fp16"));
  }
}

// Calls `f(ElementTag<float | __nv_bfloat16 | __half>{})` for an output dtype.
template <typename F>
absl::Status DispatchOutputDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFP32:
      return f(ElementTag<float>{});
    case DType::kBF16:
      return f(ElementTag<__nv_bfloat16>{});
    case DType::kFP16:
      return f(ElementTag<__half>{});
  }
  return absl::UnimplementedError("unknown output dtype");
}

}  // namespace kvtier
