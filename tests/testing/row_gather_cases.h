// The case of one row gather (kernels/row_gather.h) that its tests share (the twin against a
// plain loop in row_gather_test.cc, the kernel against the twin in row_gather_gpu_test.cc),
// and its description for failure messages. Header-only; no CUDA.
#pragma once

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvtier::testing_util {

// `tokens` rows of `row_bytes` bytes per KV head (`heads` of them); the segment
// [segment_begin, segment_begin + segment_tokens) is gathered in a random order per head; K
// only or K and V; positions written (from position_base) or not.
struct GatherCase {
  int32_t tokens = 0;
  int32_t heads = 1;
  int32_t row_bytes = 16;
  int32_t segment_begin = 0;
  int32_t segment_tokens = 0;
  bool two_arrays = true;
  bool positions = true;
  int64_t position_base = 0;
};

inline std::string Describe(const GatherCase& c) {
  return absl::StrCat(c.tokens, " tokens x ", c.heads, " heads x ", c.row_bytes,
                      " bytes, segment [", c.segment_begin, ", ",
                      c.segment_begin + c.segment_tokens, ")",
                      c.two_arrays ? ", K and V" : ", K only",
                      c.positions ? ", positions from " : "", c.positions ? c.position_base : 0);
}

}  // namespace kvtier::testing_util
