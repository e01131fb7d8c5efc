#include "runtime/core/tensor.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvtier {

ConstTensor MakeConstTensor(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                            MemorySpace space) {
  ConstTensor t;
  t.data = data;
  t.dtype = dtype;
  t.shape.assign(shape.begin(), shape.end());
  t.space = space;
  return t;
}

MutableTensor MakeMutableTensor(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                MemorySpace space) {
  MutableTensor t;
  t.data = data;
  t.dtype = dtype;
  t.shape.assign(shape.begin(), shape.end());
  t.space = space;
  return t;
}

namespace {
// A spec's dimensions: "*" for a wildcard (negative) extent.
std::string DescribeSpecDims(const Dims& dims) {
  return absl::StrCat("[",
                      absl::StrJoin(dims, ", ",
                                    [](std::string* out, int64_t d) {
                                      absl::StrAppend(out,
                                                      d < 0 ? std::string("*") : absl::StrCat(d));
                                    }),
                      "]");
}
}  // namespace

std::string DescribeTensor(const TensorView<const void*>& tensor) {
  // Extents print as given (no wildcards), so a negative extent shows in error messages.
  return absl::StrCat("[", absl::StrJoin(tensor.shape, ", "), "] ", DTypeName(tensor.dtype), " ",
                      tensor.space == MemorySpace::kHost ? "host" : "device");
}

absl::Status CheckTensor(absl::string_view argument, const TensorView<const void*>& tensor,
                         const TensorSpec& spec) {
  auto mismatch = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat(argument, ": ", what, "; expected ", DescribeSpecDims(spec.shape), " ",
                     DTypeName(spec.dtype), ", got ", DescribeTensor(tensor)));
  };
  if (tensor.rank() != static_cast<int>(spec.shape.size())) return mismatch("wrong rank");
  for (int i = 0; i < tensor.rank(); ++i) {
    if (tensor.shape[i] < 0) return mismatch(absl::StrCat("negative extent in dimension ", i));
    if (spec.shape[i] >= 0 && tensor.shape[i] != spec.shape[i]) {
      return mismatch(absl::StrCat("wrong extent in dimension ", i));
    }
  }
  if (tensor.dtype != spec.dtype) return mismatch("wrong dtype");
  if (!tensor.strides.empty() && tensor.strides.size() != tensor.shape.size()) {
    return mismatch("strides and shape have different ranks");
  }
  if (spec.require_contiguous && !tensor.IsContiguous()) return mismatch("not contiguous");
  if (tensor.data == nullptr && tensor.NumElements() > 0) return mismatch("null data pointer");
  return absl::OkStatus();
}

}  // namespace kvtier
