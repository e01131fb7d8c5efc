// Host twin of the row gather (row_gather.cu) and the checks both share.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "kernels/row_gather.h"

namespace kvtier {
namespace {

template <typename... Parts>
absl::Status Invalid(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("RowGatherParams: ", parts...));
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

namespace internal {

absl::Status ValidateRowGatherShape(const RowGatherParams& p) {
  if (p.num_tokens < 0) return Invalid("num_tokens is ", p.num_tokens, "; expected >= 0");
  if (p.num_heads < 1) return Invalid("num_heads is ", p.num_heads, "; expected >= 1");
  if (p.row_bytes <= 0 || p.row_bytes % 16 != 0) {
    return Invalid("row_bytes is ", p.row_bytes, "; expected a positive multiple of 16");
  }
  if (p.segment_begin < 0 || p.segment_tokens < 0 ||
      int64_t{p.segment_begin} + p.segment_tokens > p.num_tokens) {
    return Invalid("segment [", p.segment_begin, ", ", int64_t{p.segment_begin} + p.segment_tokens,
                   ") is not inside the ", p.num_tokens, " rows");
  }
  if (p.position_base < 0) return Invalid("position_base is ", p.position_base, "; expected >= 0");
  if (p.num_tokens == 0) return absl::OkStatus();
  if (p.src[0] == nullptr || p.dst[0] == nullptr) return Invalid("src[0] and dst[0] must be set");
  if ((p.src[1] == nullptr) != (p.dst[1] == nullptr)) {
    return Invalid("src[1] and dst[1] must both be set or both be null");
  }
  for (int a = 0; a < 2; ++a) {
    if (!Aligned16(p.src[a]) || !Aligned16(p.dst[a])) {
      return Invalid("src[", a, "] / dst[", a, "] must be 16-byte aligned");
    }
  }
  if (p.segment_tokens > 0 && p.order == nullptr) return Invalid("order is null");
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferenceRowGather(const RowGatherParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateRowGatherShape(p));
  if (p.num_tokens == 0) return absl::OkStatus();
  for (int h = 0; p.segment_tokens > 0 && h < p.num_heads; ++h) {
    if (p.order[h] == nullptr) return Invalid("order[", h, "] is null");
    if (p.positions != nullptr && p.positions[h] == nullptr) {
      return Invalid("positions[", h, "] is null");
    }
    for (int32_t t = 0; t < p.segment_tokens; ++t) {
      const int32_t from = p.order[h][t];
      if (from < 0 || from >= p.segment_tokens) {
        return Invalid("order[", h, "][", t, "] is ", from, "; expected in [0, ", p.segment_tokens,
                       ")");
      }
    }
  }
  const int64_t rb = p.row_bytes;
  const int64_t h_count = p.num_heads;
  for (int a = 0; a < 2; ++a) {
    if (p.src[a] == nullptr) continue;
    const auto* src = static_cast<const std::byte*>(p.src[a]);
    auto* dst = static_cast<std::byte*>(p.dst[a]);
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      const bool permuted = t >= p.segment_begin && t < p.segment_begin + p.segment_tokens;
      for (int64_t h = 0; h < h_count; ++h) {
        const int64_t from = permuted ? p.segment_begin + p.order[h][t - p.segment_begin] : t;
        std::memcpy(dst + (t * h_count + h) * rb, src + (from * h_count + h) * rb,
                    static_cast<size_t>(rb));
      }
    }
  }
  if (p.positions != nullptr) {
    for (int h = 0; h < p.num_heads; ++h) {
      for (int32_t t = 0; t < p.segment_tokens; ++t) {
        p.positions[h][t] = static_cast<int32_t>(p.position_base + p.order[h][t] + 1);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier
