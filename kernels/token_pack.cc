// Host twin of the token pack (token_pack.cu) and the checks both share.
#include "kernels/token_pack.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

namespace internal {

absl::Status ValidateTokenPackShape(const TokenPackParams& p) {
  auto invalid = [](const char* field, int64_t value, absl::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("token pack: ", field, " is ", value, ", expected ", expected));
  };
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) {
    return absl::InvalidArgumentError(
        absl::StrCat("token pack: dtype is ", DTypeName(p.dtype), ", expected bf16 or fp16"));
  }
  if (p.num_kv_heads < 1) return invalid("num_kv_heads", p.num_kv_heads, ">= 1");
  const int64_t row_bytes = int64_t{p.head_dim} * static_cast<int64_t>(DTypeSize(p.dtype));
  if (p.head_dim < 1 || row_bytes % 16 != 0) {
    return invalid("head_dim", p.head_dim, "positive, with rows a multiple of 16 bytes");
  }
  if (p.page_size < 1) return invalid("page_size", p.page_size, ">= 1");
  if (p.num_tokens < 0) return invalid("num_tokens", p.num_tokens, ">= 0");
  if (p.first_position < 0 ||
      p.first_position > std::numeric_limits<int64_t>::max() - p.num_tokens) {
    return invalid("first_position", p.first_position, ">= 0, with the run's end in int64");
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  struct Field {
    const char* name;
    const void* ptr;
  };
  for (const Field& f : {Field{"k", p.k}, Field{"v", p.v}, Field{"k_pages", p.k_pages},
                         Field{"v_pages", p.v_pages}}) {
    if (f.ptr == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("token pack: ", f.name, " is null for ", p.num_tokens, " tokens"));
    }
  }
  if (!Aligned16(p.k) || !Aligned16(p.v)) {
    return absl::InvalidArgumentError("token pack: k and v must be 16-byte aligned");
  }
  if (reinterpret_cast<uintptr_t>(p.k_pages) % alignof(void*) != 0 ||
      reinterpret_cast<uintptr_t>(p.v_pages) % alignof(void*) != 0) {
    return absl::InvalidArgumentError("token pack: k_pages and v_pages arrays must be aligned");
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferenceTokenPack(const TokenPackParams& p) {
  if (absl::Status status = internal::ValidateTokenPackShape(p); !status.ok()) return status;
  if (p.num_tokens == 0) return absl::OkStatus();
  const int64_t heads = p.num_kv_heads;
  const int64_t entries = TokenPackPages(p.first_position, p.num_tokens, p.page_size) * heads;
  // Every entry first, so bad input writes nothing.
  for (int64_t e = 0; e < entries; ++e) {
    for (const auto& [pages, name] : {std::pair{p.k_pages, "k_pages"}, {p.v_pages, "v_pages"}}) {
      if (pages[e] == nullptr || !Aligned16(pages[e])) {
        return absl::InvalidArgumentError(
            absl::StrCat("token pack: ", name, "[", e, "] (page ", e / heads, ", KV head ",
                         e % heads, ") is ", pages[e] == nullptr ? "null" : "not 16-byte aligned"));
      }
    }
  }
  const size_t row_bytes = static_cast<size_t>(p.head_dim) * DTypeSize(p.dtype);
  const int64_t first_page = p.first_position / p.page_size;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t position = p.first_position + t;
    const int64_t page = position / p.page_size - first_page;
    const size_t offset = static_cast<size_t>(position % p.page_size) * row_bytes;
    for (int64_t h = 0; h < heads; ++h) {
      const size_t src = static_cast<size_t>(t * heads + h) * row_bytes;
      std::memcpy(static_cast<std::byte*>(p.k_pages[page * heads + h]) + offset,
                  static_cast<const std::byte*>(p.k) + src, row_bytes);
      std::memcpy(static_cast<std::byte*>(p.v_pages[page * heads + h]) + offset,
                  static_cast<const std::byte*>(p.v) + src, row_bytes);
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier
