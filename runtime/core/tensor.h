// Non-owning views of tensors handed across the API: pointer, shape, strides (in elements),
// dtype and where the memory lives. A view never owns or frees its memory; the caller keeps
// the memory alive for as long as the call that receives the view.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/base/dtype.h"

namespace kvtier {

enum class MemorySpace : uint8_t { kHost, kDevice };

using Dims = absl::InlinedVector<int64_t, 4>;

// Shared part of ConstTensor and MutableTensor. `Pointer` is `const void*` or `void*`.
template <typename Pointer>
struct TensorView {
  Pointer data = nullptr;
  DType dtype = DType::kBF16;
  Dims shape;
  Dims strides;  // in elements; empty means row-major contiguous
  MemorySpace space = MemorySpace::kHost;

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t NumElements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  // Stride of dimension `dim` in elements (row-major when `strides` is empty).
  int64_t Stride(int dim) const { return strides.empty() ? RowMajorStride(dim) : strides[dim]; }
  bool IsContiguous() const {
    for (int i = 0; i < rank(); ++i) {
      if (shape[i] != 1 && Stride(i) != RowMajorStride(i)) return false;
    }
    return true;
  }
  int64_t RowMajorStride(int dim) const {
    int64_t stride = 1;
    for (int i = rank() - 1; i > dim; --i) stride *= shape[i];
    return stride;
  }
};

struct ConstTensor : TensorView<const void*> {};
struct MutableTensor : TensorView<void*> {};

// Contiguous row-major views.
ConstTensor MakeConstTensor(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                            MemorySpace space = MemorySpace::kHost);
MutableTensor MakeMutableTensor(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                MemorySpace space = MemorySpace::kHost);

// "[4, 8, 128] bf16 host" for error messages.
std::string DescribeTensor(const TensorView<const void*>& tensor);

// Shape expectation for one argument: a dimension of -1 accepts any extent.
struct TensorSpec {
  Dims shape;
  DType dtype;
  bool require_contiguous = true;
};

// OK when `tensor` is non-null and matches `spec`; otherwise InvalidArgument naming the
// argument, what was expected and what was given.
absl::Status CheckTensor(absl::string_view argument, const TensorView<const void*>& tensor,
                         const TensorSpec& spec);
inline absl::Status CheckTensor(absl::string_view argument, const MutableTensor& tensor,
                                const TensorSpec& spec) {
  TensorView<const void*> view{tensor.data, tensor.dtype, tensor.shape, tensor.strides,
                               tensor.space};
  return CheckTensor(argument, view, spec);
}

}  // namespace kvtier
