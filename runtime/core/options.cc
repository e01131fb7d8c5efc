#include "runtime/core/options.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace kvtier {
namespace {

// Group sizes the CUDA kernels are specialised for.
constexpr int kMaxGroupSize = 16;
constexpr int kMaxSelectedPages = 4096;
// Pages the index scores per (sequence, layer, KV head): block_select.h's kMaxSelectBlocks.
constexpr int kMaxPagesPerSequence = 65536;

class Problems {
 public:
  explicit Problems(absl::string_view what) : what_(what) {}
  template <typename T>
  void Add(absl::string_view field, const T& value, absl::string_view allowed) {
    problems_.push_back(absl::StrCat(field, " = ", value, ": ", allowed));
  }
  absl::Status ToStatus() const {
    if (problems_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("invalid ", what_, ": ", absl::StrJoin(problems_, "; ")));
  }

 private:
  std::string what_;
  std::vector<std::string> problems_;
};

void CheckShape(const ModelShape& shape, Problems& p) {
  if (shape.num_layers < 1) p.Add("shape.num_layers", shape.num_layers, "must be >= 1");
  if (shape.num_query_heads < 1) {
    p.Add("shape.num_query_heads", shape.num_query_heads, "must be >= 1");
  }
  if (shape.num_kv_heads < 1) {
    p.Add("shape.num_kv_heads", shape.num_kv_heads, "must be >= 1");
  } else if (shape.num_query_heads >= 1) {
    if (shape.num_query_heads % shape.num_kv_heads != 0) {
      p.Add("shape.num_kv_heads", shape.num_kv_heads,
            absl::StrCat("must divide shape.num_query_heads (", shape.num_query_heads, ")"));
    } else if (shape.group_size() > kMaxGroupSize) {
      p.Add("shape.num_kv_heads", shape.num_kv_heads,
            absl::StrCat("query heads per KV head (", shape.group_size(), ") must be at most ",
                         kMaxGroupSize));
    }
  }
  if (shape.head_dim != 64 && shape.head_dim != 128 && shape.head_dim != 256) {
    p.Add("shape.head_dim", shape.head_dim, "allowed 64, 128 or 256");
  }
  if (shape.dtype != DType::kBF16 && shape.dtype != DType::kFP16) {
    p.Add("shape.dtype", DTypeName(shape.dtype), "allowed bf16 or fp16");
  }
}

}  // namespace

absl::Status ValidateModelShape(const ModelShape& shape) {
  Problems p("model shape");
  CheckShape(shape, p);
  return p.ToStatus();
}

float Options::EffectiveSoftmaxScale() const {
  if (softmax_scale > 0.0f) return softmax_scale;
  return shape.head_dim > 0 ? 1.0f / std::sqrt(static_cast<float>(shape.head_dim)) : 0.0f;
}

absl::Status ValidateOptions(const Options& o) {
  Problems p("kvtier options");
  CheckShape(o.shape, p);

  const bool page_ok = IsSupportedPageSize(o.page_size);
  if (!page_ok) p.Add("page_size", o.page_size, "must be a power of two: 16, 32 or 64");
  if (o.sink_tokens < 0) {
    p.Add("sink_tokens", o.sink_tokens, "must be >= 0");
  } else if (page_ok && o.sink_tokens % o.page_size != 0) {
    p.Add("sink_tokens", o.sink_tokens,
          absl::StrCat("must be a multiple of page_size (", o.page_size, ")"));
  }
  if (o.window_tokens < 1) {
    p.Add("window_tokens", o.window_tokens, "must be >= 1 page");
  } else if (page_ok && o.window_tokens % o.page_size != 0) {
    p.Add("window_tokens", o.window_tokens,
          absl::StrCat("must be a positive multiple of page_size (", o.page_size, ")"));
  }

  if (o.budget.max_pages < 1 || o.budget.max_pages > kMaxSelectedPages) {
    p.Add("budget.max_pages", o.budget.max_pages,
          absl::StrCat("must be in [1, ", kMaxSelectedPages, "]"));
  }
  if (!(o.budget.mass_target >= 0.0 && o.budget.mass_target <= 1.0)) {
    p.Add("budget.mass_target", o.budget.mass_target, "must be 0 (top-k by count) or in (0, 1]");
  }
  switch (o.index) {
    case IndexKind::kPageBounds:
      if (o.budget.mass_target > 0 && o.budget.mass_target <= 1.0) {
        p.Add("budget.mass_target", o.budget.mass_target,
              "the page-bounds index selects by count only (a bound is not a mass): use 0, or "
              "index = wave, which selects by estimated mass");
      }
      if (o.budget.estimate_pages != 0) {
        p.Add("budget.estimate_pages", o.budget.estimate_pages,
              "the page-bounds index has no estimation zone: use 0, or index = wave");
      }
      if (o.budget.estimate_rest) {
        p.Add("budget.estimate_rest", "true",
              "the page-bounds index has no estimation zone: use false, or index = wave");
      }
      break;
    case IndexKind::kWave:
      if (o.budget.estimate_pages < 0 || o.budget.estimate_pages > kMaxSelectedPages) {
        p.Add("budget.estimate_pages", o.budget.estimate_pages,
              absl::StrCat("must be in [0, ", kMaxSelectedPages, "]"));
      } else if (o.budget.max_pages >= 1 &&
                 o.budget.max_pages + o.budget.estimate_pages > kMaxSelectedPages) {
        p.Add("budget.estimate_pages", o.budget.estimate_pages,
              absl::StrCat("budget.max_pages + budget.estimate_pages must be at most ",
                           kMaxSelectedPages));
      } else if (o.budget.estimate_rest && o.budget.estimate_pages != 0) {
        p.Add("budget.estimate_pages", o.budget.estimate_pages,
              "must be 0 with budget.estimate_rest (the zone is then every page not retrieved)");
      }
      break;
    default:
      p.Add("index", static_cast<int>(o.index), "allowed kPageBounds or kWave");
  }
  if (!(o.cache_slots_per_budget >= 1.0 && std::isfinite(o.cache_slots_per_budget))) {
    p.Add("cache_slots_per_budget", o.cache_slots_per_budget,
          "must be >= 1: the cache must hold one step's whole selection");
  }
  switch (o.cache_policy) {
    case CachePolicy::kLeastRecentlyUsed:
    case CachePolicy::kLowestScore:
    case CachePolicy::kLastSelection:
    case CachePolicy::kNone:
      break;
    default:
      p.Add("cache_policy", static_cast<int>(o.cache_policy),
            "allowed kLeastRecentlyUsed, kLowestScore, kLastSelection or kNone");
  }
  if (o.host_memory_bytes <= 0) {
    p.Add("host_memory_bytes", o.host_memory_bytes, "must be > 0");
  }
  if (o.gpu_memory_bytes <= 0) p.Add("gpu_memory_bytes", o.gpu_memory_bytes, "must be > 0");
  if (o.max_sequences < 1) p.Add("max_sequences", o.max_sequences, "must be >= 1");
  if (o.max_batch_size < 1) {
    p.Add("max_batch_size", o.max_batch_size, "must be >= 1");
  } else if (o.max_sequences >= 1 && o.max_batch_size > o.max_sequences) {
    p.Add("max_batch_size", o.max_batch_size,
          absl::StrCat("must be <= max_sequences (", o.max_sequences, ")"));
  }
  if (o.max_sequence_tokens < 1) {
    p.Add("max_sequence_tokens", o.max_sequence_tokens, "must be >= 1");
  } else if (page_ok && o.max_sequence_tokens / o.page_size > kMaxPagesPerSequence) {
    p.Add("max_sequence_tokens", o.max_sequence_tokens,
          absl::StrCat("must be at most ", kMaxPagesPerSequence, " pages of page_size (",
                       int64_t{kMaxPagesPerSequence} * o.page_size, " tokens)"));
  }
  if (o.max_prefill_chunk_tokens < 1) {
    p.Add("max_prefill_chunk_tokens", o.max_prefill_chunk_tokens, "must be >= 1 page");
  } else if (page_ok && o.max_prefill_chunk_tokens % o.page_size != 0) {
    p.Add("max_prefill_chunk_tokens", o.max_prefill_chunk_tokens,
          absl::StrCat("must be a multiple of page_size (", o.page_size, ")"));
  }
  if (!(o.score_decay > 0.0f && o.score_decay <= 1.0f)) {
    p.Add("score_decay", o.score_decay, "must be in (0, 1]");
  }
  if (!(o.hbm_bytes_per_second > 0 && std::isfinite(o.hbm_bytes_per_second))) {
    p.Add("hbm_bytes_per_second", o.hbm_bytes_per_second, "must be finite and > 0");
  }
  if (!(o.pcie_bytes_per_second > 0 && std::isfinite(o.pcie_bytes_per_second))) {
    p.Add("pcie_bytes_per_second", o.pcie_bytes_per_second, "must be finite and > 0");
  }
  if (!(o.softmax_scale >= 0.0f && std::isfinite(o.softmax_scale))) {
    p.Add("softmax_scale", o.softmax_scale, "must be finite and >= 0 (0: 1/sqrt(head_dim))");
  }
  switch (o.backend) {
    case Backend::kCuda:
    case Backend::kHost:
      break;
    default:
      p.Add("backend", static_cast<int>(o.backend), "allowed kCuda or kHost");
  }
  if (o.device_id < 0) p.Add("device_id", o.device_id, "must be >= 0");
  return p.ToStatus();
}

}  // namespace kvtier
