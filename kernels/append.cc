// Host twins of the append and write-back kernels (append.cu) and the checks both share.
#include "kernels/append.h"

#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier {
namespace internal {
namespace {

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

absl::Status ValidateAppendShape(const AppendParams& p) {
  auto invalid = [](const char* field, int64_t value, absl::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("append: ", field, " is ", value, ", expected ", expected));
  };
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) {
    return absl::InvalidArgumentError(
        absl::StrCat("append: dtype is ", DTypeName(p.dtype), ", expected bf16 or fp16"));
  }
  if (p.batch < 0) return invalid("batch", p.batch, ">= 0");
  if (p.num_kv_heads < 1) return invalid("num_kv_heads", p.num_kv_heads, ">= 1");
  if (p.page_size < 1) return invalid("page_size", p.page_size, ">= 1");
  const int64_t row_bytes = int64_t{p.head_dim} * static_cast<int64_t>(DTypeSize(p.dtype));
  if (p.head_dim < 1 || row_bytes % 16 != 0) {
    return invalid("head_dim", p.head_dim, "positive, with rows a multiple of 16 bytes");
  }
  if (p.batch == 0) return absl::OkStatus();
  struct Field {
    const char* name;
    const void* ptr;
  };
  for (const Field& f :
       {Field{"k_new", p.k_new}, Field{"v_new", p.v_new}, Field{"k_pages", p.k_pages},
        Field{"v_pages", p.v_pages}, Field{"rows", p.rows}}) {
    if (f.ptr == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("append: ", f.name, " is null for a batch of ", p.batch));
    }
  }
  if (!Aligned16(p.k_new) || !Aligned16(p.v_new)) {
    return absl::InvalidArgumentError("append: k_new and v_new must be 16-byte aligned");
  }
  if (reinterpret_cast<uintptr_t>(p.k_pages) % alignof(void*) != 0 ||
      reinterpret_cast<uintptr_t>(p.v_pages) % alignof(void*) != 0) {
    return absl::InvalidArgumentError("append: k_pages and v_pages arrays must be aligned");
  }
  return absl::OkStatus();
}

absl::Status ValidateWriteBackShape(const WriteBackParams& p) {
  if (p.num_pages < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("write-back: num_pages is ", p.num_pages, ", expected >= 0"));
  }
  if (p.page_bytes <= 0 || p.page_bytes % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("write-back: page_bytes is ", p.page_bytes,
                                                   ", expected a positive multiple of 16"));
  }
  if (p.num_pages == 0) return absl::OkStatus();
  struct Field {
    const char* name;
    const void* ptr;
  };
  for (const Field& f : {Field{"k_src", p.k_src}, Field{"v_src", p.v_src}, Field{"k_dst", p.k_dst},
                         Field{"v_dst", p.v_dst}}) {
    if (f.ptr == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("write-back: ", f.name, " is null for ", p.num_pages, " pages"));
    }
    if (reinterpret_cast<uintptr_t>(f.ptr) % alignof(void*) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("write-back: the ", f.name, " array is not pointer-aligned"));
    }
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferenceAppend(const AppendParams& p) {
  if (absl::Status status = internal::ValidateAppendShape(p); !status.ok()) return status;
  const int64_t entries = int64_t{p.batch} * p.num_kv_heads;
  for (int32_t b = 0; b < p.batch; ++b) {
    if (p.rows[b] < 0 || p.rows[b] >= p.page_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("append: rows[", b, "] is ", p.rows[b], ", expected 0..", p.page_size - 1));
    }
  }
  for (int64_t e = 0; e < entries; ++e) {
    if (p.k_pages[e] == nullptr || p.v_pages[e] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("append: window page of entry ", e, " (sequence ", e / p.num_kv_heads,
                       ", KV head ", e % p.num_kv_heads, ") is null"));
    }
  }
  const size_t row_bytes = static_cast<size_t>(p.head_dim) * DTypeSize(p.dtype);
  for (int64_t e = 0; e < entries; ++e) {
    const size_t offset = static_cast<size_t>(p.rows[e / p.num_kv_heads]) * row_bytes;
    std::memcpy(static_cast<std::byte*>(p.k_pages[e]) + offset,
                static_cast<const std::byte*>(p.k_new) + e * row_bytes, row_bytes);
    std::memcpy(static_cast<std::byte*>(p.v_pages[e]) + offset,
                static_cast<const std::byte*>(p.v_new) + e * row_bytes, row_bytes);
  }
  return absl::OkStatus();
}

absl::Status ReferenceWriteBack(const WriteBackParams& p) {
  if (absl::Status status = internal::ValidateWriteBackShape(p); !status.ok()) return status;
  for (int32_t i = 0; i < p.num_pages; ++i) {
    if (p.k_dst[i] == nullptr) continue;
    if (p.v_dst[i] == nullptr || p.k_src[i] == nullptr || p.v_src[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "write-back: entry ", i, " has a destination but a null v_dst, k_src or v_src"));
    }
  }
  const size_t bytes = static_cast<size_t>(p.page_bytes);
  for (int32_t i = 0; i < p.num_pages; ++i) {
    if (p.k_dst[i] == nullptr) continue;
    std::memcpy(p.k_dst[i], p.k_src[i], bytes);
    std::memcpy(p.v_dst[i], p.v_src[i], bytes);
  }
  return absl::OkStatus();
}

}  // namespace kvtier
