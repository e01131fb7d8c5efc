#include "runtime/core/tensor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace kvtier {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// Backing store for views; the tests never read through the pointers.
uint16_t storage[4096];

TEST(MakeTensorTest, ConstViewIsRowMajorAndNonOwning) {
  const ConstTensor t = MakeConstTensor(storage, DType::kFP16, {4, 8, 128});
  EXPECT_EQ(t.data, storage);
  EXPECT_EQ(t.dtype, DType::kFP16);
  EXPECT_THAT(t.shape, ElementsAre(4, 8, 128));
  EXPECT_TRUE(t.strides.empty());
  EXPECT_EQ(t.space, MemorySpace::kHost);
  EXPECT_EQ(t.rank(), 3);
}

TEST(MakeTensorTest, MutableViewKeepsTheMemorySpace) {
  const MutableTensor t = MakeMutableTensor(storage, DType::kFP32, {2, 3}, MemorySpace::kDevice);
  EXPECT_EQ(t.data, storage);
  EXPECT_EQ(t.dtype, DType::kFP32);
  EXPECT_THAT(t.shape, ElementsAre(2, 3));
  EXPECT_TRUE(t.strides.empty());
  EXPECT_EQ(t.space, MemorySpace::kDevice);
}

TEST(TensorViewTest, NumElements) {
  EXPECT_EQ(MakeConstTensor(storage, DType::kBF16, {4, 8, 128}).NumElements(), 4096);
  EXPECT_EQ(MakeConstTensor(storage, DType::kBF16, {7}).NumElements(), 7);
  EXPECT_EQ(MakeConstTensor(storage, DType::kBF16, {}).NumElements(), 1);  // a scalar
  EXPECT_EQ(MakeConstTensor(storage, DType::kBF16, {3, 0, 5}).NumElements(), 0);
  // Beyond 32 bits: the count is int64.
  EXPECT_EQ(MakeConstTensor(storage, DType::kBF16, {1 << 20, 1 << 20}).NumElements(),
            int64_t{1} << 40);
}

TEST(TensorViewTest, RowMajorStridesWhenNoneAreGiven) {
  const ConstTensor t = MakeConstTensor(storage, DType::kBF16, {4, 8, 128});
  EXPECT_EQ(t.Stride(0), 8 * 128);
  EXPECT_EQ(t.Stride(1), 128);
  EXPECT_EQ(t.Stride(2), 1);
  EXPECT_TRUE(t.IsContiguous());
}

TEST(TensorViewTest, ExplicitStrides) {
  ConstTensor t = MakeConstTensor(storage, DType::kBF16, {2, 3, 4});
  t.strides = {12, 4, 1};  // the row-major strides, spelled out
  EXPECT_EQ(t.Stride(0), 12);
  EXPECT_EQ(t.Stride(1), 4);
  EXPECT_EQ(t.Stride(2), 1);
  EXPECT_TRUE(t.IsContiguous());

  t.strides = {24, 4, 1};  // padded outer dimension
  EXPECT_EQ(t.Stride(0), 24);
  EXPECT_FALSE(t.IsContiguous());

  t.strides = {12, 1, 3};  // last two dimensions transposed
  EXPECT_FALSE(t.IsContiguous());

  t.strides = {12, 4, 2};  // every other element
  EXPECT_FALSE(t.IsContiguous());
}

TEST(TensorViewTest, StrideOfAnExtentOneDimensionDoesNotMatter) {
  ConstTensor t = MakeConstTensor(storage, DType::kBF16, {2, 1, 4});
  t.strides = {4, 999, 1};
  EXPECT_TRUE(t.IsContiguous());
  t.strides = {5, 999, 1};
  EXPECT_FALSE(t.IsContiguous());
}

TEST(TensorViewTest, MutableViewHasTheSameGeometry) {
  MutableTensor t = MakeMutableTensor(storage, DType::kFP16, {3, 5});
  EXPECT_EQ(t.NumElements(), 15);
  EXPECT_EQ(t.Stride(0), 5);
  EXPECT_TRUE(t.IsContiguous());
  t.strides = {8, 1};
  EXPECT_EQ(t.Stride(0), 8);
  EXPECT_FALSE(t.IsContiguous());
}

TEST(DescribeTensorTest, ShapeDtypeAndSpace) {
  EXPECT_EQ(DescribeTensor(MakeConstTensor(storage, DType::kBF16, {4, 8, 128})),
            "[4, 8, 128] bf16 host");
  EXPECT_EQ(DescribeTensor(MakeConstTensor(storage, DType::kFP32, {2}, MemorySpace::kDevice)),
            "[2] fp32 device");
  EXPECT_EQ(DescribeTensor(MakeConstTensor(storage, DType::kFP16, {})), "[] fp16 host");
}

TEST(DescribeTensorTest, ShowsNegativeExtentsAsTheyAre) {
  // A tensor's shape is described as given: "*" is only for wildcards in a spec.
  EXPECT_EQ(DescribeTensor(MakeConstTensor(storage, DType::kBF16, {-3, 4})), "[-3, 4] bf16 host");
}

// ---------------------------------------------------------------------------------------

TEST(CheckTensorTest, MatchingTensorIsOk) {
  const ConstTensor t = MakeConstTensor(storage, DType::kBF16, {4, 8, 128});
  EXPECT_TRUE(CheckTensor("keys", t, TensorSpec{{4, 8, 128}, DType::kBF16}).ok());
}

TEST(CheckTensorTest, WildcardDimensionsAcceptAnyExtent) {
  const TensorSpec spec{{-1, 8, -1}, DType::kFP16};
  EXPECT_TRUE(CheckTensor("q", MakeConstTensor(storage, DType::kFP16, {1, 8, 64}), spec).ok());
  EXPECT_TRUE(CheckTensor("q", MakeConstTensor(storage, DType::kFP16, {32, 8, 1}), spec).ok());
  EXPECT_TRUE(CheckTensor("q", MakeConstTensor(storage, DType::kFP16, {0, 8, 0}), spec).ok());
  // The fixed dimension is still checked.
  EXPECT_EQ(CheckTensor("q", MakeConstTensor(storage, DType::kFP16, {1, 4, 64}), spec).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CheckTensorTest, WrongRank) {
  const absl::Status status = CheckTensor("queries", MakeConstTensor(storage, DType::kBF16, {4, 8}),
                                          TensorSpec{{4, 8, -1}, DType::kBF16});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status), "queries: wrong rank; expected [4, 8, *] bf16, got [4, 8] bf16 host");
}

TEST(CheckTensorTest, WrongExtent) {
  const absl::Status status =
      CheckTensor("values", MakeConstTensor(storage, DType::kBF16, {4, 16, 128}),
                  TensorSpec{{4, 8, 128}, DType::kBF16});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status),
            "values: wrong extent in dimension 1; expected [4, 8, 128] bf16, got [4, 16, 128] "
            "bf16 host");
}

TEST(CheckTensorTest, WrongDtype) {
  const absl::Status status =
      CheckTensor("keys", MakeConstTensor(storage, DType::kFP16, {2, 64}, MemorySpace::kDevice),
                  TensorSpec{{2, 64}, DType::kBF16});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status), "keys: wrong dtype; expected [2, 64] bf16, got [2, 64] fp16 device");
}

TEST(CheckTensorTest, NonContiguousWhenContiguityIsRequired) {
  ConstTensor t = MakeConstTensor(storage, DType::kBF16, {4, 128});
  t.strides = {256, 1};
  const absl::Status status = CheckTensor("out", t, TensorSpec{{4, 128}, DType::kBF16});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("out: not contiguous"));
  EXPECT_THAT(Message(status), HasSubstr("expected [4, 128] bf16, got [4, 128] bf16 host"));

  // Accepted when the spec allows strided views.
  EXPECT_TRUE(CheckTensor("out", t, TensorSpec{{4, 128}, DType::kBF16, false}).ok());
}

TEST(CheckTensorTest, StridesOfAnotherRank) {
  ConstTensor t = MakeConstTensor(storage, DType::kBF16, {4, 128});
  t.strides = {128};
  const absl::Status status = CheckTensor("out", t, TensorSpec{{4, 128}, DType::kBF16, false});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("out: strides and shape have different ranks"));
}

TEST(CheckTensorTest, NullDataWithElements) {
  const absl::Status status = CheckTensor("keys", MakeConstTensor(nullptr, DType::kBF16, {2, 3}),
                                          TensorSpec{{2, 3}, DType::kBF16});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status), "keys: null data pointer; expected [2, 3] bf16, got [2, 3] bf16 host");
}

TEST(CheckTensorTest, NullDataWithoutElementsIsOk) {
  EXPECT_TRUE(CheckTensor("keys", MakeConstTensor(nullptr, DType::kBF16, {0, 3}),
                          TensorSpec{{-1, 3}, DType::kBF16})
                  .ok());
}

TEST(CheckTensorTest, NegativeExtent) {
  const absl::Status status =
      CheckTensor("lengths", MakeConstTensor(storage, DType::kFP32, {-3, 4}),
                  TensorSpec{{-1, 4}, DType::kFP32});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status),
            "lengths: negative extent in dimension 0; expected [*, 4] fp32, got [-3, 4] fp32 host");
}

TEST(CheckTensorTest, MutableTensorOverload) {
  MutableTensor t = MakeMutableTensor(storage, DType::kFP16, {8, 64}, MemorySpace::kDevice);
  EXPECT_TRUE(CheckTensor("out", t, TensorSpec{{8, 64}, DType::kFP16}).ok());
  const absl::Status status = CheckTensor("out", t, TensorSpec{{8, 128}, DType::kFP16});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status),
            "out: wrong extent in dimension 1; expected [8, 128] fp16, got [8, 64] fp16 device");
  t.strides = {128, 1};
  EXPECT_THAT(Message(CheckTensor("out", t, TensorSpec{{8, 64}, DType::kFP16})),
              HasSubstr("not contiguous"));
}

}  // namespace
}  // namespace kvtier
