#include "kernels/base/status.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier {
namespace {

// Counts how often a status-producing expression is evaluated.
struct Counter {
  int calls = 0;
  absl::Status Next(absl::Status status) {
    ++calls;
    return status;
  }
  template <typename T>
  absl::StatusOr<T> NextOr(absl::StatusOr<T> value) {
    ++calls;
    return value;
  }
};

// ---------------------------------------------------------------------------------------
// KVTIER_RETURN_IF_ERROR

// Returns `first` if it is an error, else `second` if that is, else OK; `reached` records how
// far the function got.
absl::Status TwoSteps(Counter& counter, absl::Status first, absl::Status second, int& reached) {
  reached = 0;
  KVTIER_RETURN_IF_ERROR(counter.Next(std::move(first)));
  reached = 1;
  KVTIER_RETURN_IF_ERROR(counter.Next(std::move(second)));
  reached = 2;
  return absl::OkStatus();
}

TEST(ReturnIfErrorTest, ContinuesOnOk) {
  Counter counter;
  int reached = -1;
  EXPECT_TRUE(TwoSteps(counter, absl::OkStatus(), absl::OkStatus(), reached).ok());
  EXPECT_EQ(reached, 2);
  EXPECT_EQ(counter.calls, 2);  // each argument evaluated exactly once
}

TEST(ReturnIfErrorTest, ReturnsTheFirstErrorEarly) {
  Counter counter;
  int reached = -1;
  const absl::Status status =
      TwoSteps(counter, absl::NotFoundError("first"), absl::InternalError("second"), reached);
  EXPECT_EQ(status, absl::NotFoundError("first"));
  EXPECT_EQ(reached, 0);
  EXPECT_EQ(counter.calls, 1);
}

TEST(ReturnIfErrorTest, ReturnsALaterErrorUnchanged) {
  Counter counter;
  int reached = -1;
  const absl::Status status =
      TwoSteps(counter, absl::OkStatus(), absl::ResourceExhaustedError("full"), reached);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "full");
  EXPECT_EQ(reached, 1);
  EXPECT_EQ(counter.calls, 2);
}

// Usable in a function returning StatusOr: the Status converts.
absl::StatusOr<int> ReturnIfErrorInStatusOr(absl::Status status) {
  KVTIER_RETURN_IF_ERROR(status);
  return 7;
}

TEST(ReturnIfErrorTest, WorksInAFunctionReturningStatusOr) {
  EXPECT_EQ(ReturnIfErrorInStatusOr(absl::OkStatus()).value(), 7);
  EXPECT_EQ(ReturnIfErrorInStatusOr(absl::AbortedError("x")).status(), absl::AbortedError("x"));
}

// The macro is one statement: it works as the body of an unbraced if/else.
absl::Status InUnbracedIf(bool check, absl::Status status) {
  if (check)
    KVTIER_RETURN_IF_ERROR(status);
  else
    return absl::CancelledError("not checked");
  return absl::OkStatus();
}

TEST(ReturnIfErrorTest, IsASingleStatement) {
  EXPECT_TRUE(InUnbracedIf(true, absl::OkStatus()).ok());
  EXPECT_EQ(InUnbracedIf(true, absl::DataLossError("d")).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(InUnbracedIf(false, absl::OkStatus()).code(), absl::StatusCode::kCancelled);
}

// ---------------------------------------------------------------------------------------
// KVTIER_ASSIGN_OR_RETURN

absl::StatusOr<std::unique_ptr<int>> MakeInt(int value) { return std::make_unique<int>(value); }

// Move-only value, declared with `auto`.
absl::StatusOr<int> TakeUnique(Counter& counter, absl::StatusOr<std::unique_ptr<int>> input,
                               int& reached) {
  reached = 0;
  KVTIER_ASSIGN_OR_RETURN(auto pointer, counter.NextOr(std::move(input)));
  reached = 1;
  static_assert(std::is_same_v<decltype(pointer), std::unique_ptr<int>>);
  if (pointer == nullptr) return absl::InternalError("moved-from value");
  return *pointer;
}

TEST(AssignOrReturnTest, MovesAMoveOnlyValueIntoAuto) {
  Counter counter;
  int reached = -1;
  const absl::StatusOr<int> result = TakeUnique(counter, MakeInt(42), reached);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, 42);
  EXPECT_EQ(reached, 1);
  EXPECT_EQ(counter.calls, 1);
}

TEST(AssignOrReturnTest, PropagatesTheError) {
  Counter counter;
  int reached = -1;
  const absl::StatusOr<int> result =
      TakeUnique(counter, absl::FailedPreconditionError("no value"), reached);
  EXPECT_EQ(result.status(), absl::FailedPreconditionError("no value"));
  EXPECT_EQ(reached, 0);
  EXPECT_EQ(counter.calls, 1);
}

// Into a variable declared earlier, in a function returning plain Status.
absl::Status AssignToExisting(Counter& counter, absl::StatusOr<std::string> input,
                              std::string& out) {
  std::string value = "unchanged";
  KVTIER_ASSIGN_OR_RETURN(value, counter.NextOr(std::move(input)));
  out = value;
  return absl::OkStatus();
}

TEST(AssignOrReturnTest, AssignsToAnExistingVariable) {
  Counter counter;
  std::string out;
  EXPECT_TRUE(AssignToExisting(counter, std::string("hello"), out).ok());
  EXPECT_EQ(out, "hello");
  EXPECT_EQ(counter.calls, 1);

  out = "untouched";
  EXPECT_EQ(AssignToExisting(counter, absl::NotFoundError("gone"), out),
            absl::NotFoundError("gone"));
  EXPECT_EQ(out, "untouched");
  EXPECT_EQ(counter.calls, 2);
}

// Two uses in one scope need distinct temporaries (they are named after the line).
absl::StatusOr<int> SumOfTwo(Counter& counter, absl::StatusOr<std::unique_ptr<int>> a,
                             absl::StatusOr<std::unique_ptr<int>> b) {
  KVTIER_ASSIGN_OR_RETURN(auto first, counter.NextOr(std::move(a)));
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<int> second, counter.NextOr(std::move(b)));
  return *first + *second;
}

TEST(AssignOrReturnTest, TwoUsesInOneFunction) {
  Counter counter;
  const absl::StatusOr<int> sum = SumOfTwo(counter, MakeInt(3), MakeInt(4));
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum, 7);
  EXPECT_EQ(counter.calls, 2);

  Counter failing_first;
  EXPECT_EQ(SumOfTwo(failing_first, absl::UnavailableError("a"), MakeInt(4)).status(),
            absl::UnavailableError("a"));
  EXPECT_EQ(failing_first.calls, 1);

  Counter failing_second;
  EXPECT_EQ(SumOfTwo(failing_second, MakeInt(3), absl::UnavailableError("b")).status(),
            absl::UnavailableError("b"));
  EXPECT_EQ(failing_second.calls, 2);
}

}  // namespace
}  // namespace kvtier
