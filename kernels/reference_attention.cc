#include "kernels/reference_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Items with more tokens than this are split into page-aligned chunks that run in parallel,
// so that one long sequence uses every core. The split depends only on the parameters, never
// on the thread count, so results are the same on any machine.
constexpr int64_t kChunkTokens = 4096;

constexpr int kMaxHeadDim = 256;  // the largest head_dim that validation accepts
constexpr int kLseChunk = 16;     // tokens per chunk_lse row

bool IsOutputDType(DType dtype) {
  return dtype == DType::kFP32 || dtype == DType::kBF16 || dtype == DType::kFP16;
}

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("PagedDecodeParams: ", message));
}

absl::Status ValidateAttention(const PagedDecodeParams& p) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) {
    return Invalid(absl::StrCat("dtype is ", DTypeName(p.dtype), "; expected bf16 or fp16"));
  }
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256) {
    return Invalid(absl::StrCat("head_dim is ", p.head_dim, "; expected 64, 128 or 256"));
  }
  if (p.page_size < 1) {
    return Invalid(absl::StrCat("page_size is ", p.page_size, "; expected >= 1"));
  }
  if (p.group_size < 1) {
    return Invalid(absl::StrCat("group_size is ", p.group_size, "; expected >= 1"));
  }
  if (p.num_items < 0) {
    return Invalid(absl::StrCat("num_items is ", p.num_items, "; expected >= 0"));
  }
  if (!std::isfinite(p.softmax_scale)) {
    return Invalid(absl::StrCat("softmax_scale is ", p.softmax_scale, "; expected finite"));
  }
  if (!IsOutputDType(p.out_dtype)) {
    return Invalid(absl::StrCat("out_dtype is ", static_cast<int>(p.out_dtype),
                                "; expected fp32, bf16 or fp16"));
  }
  if (p.chunk_lse != nullptr && p.page_size % kLseChunk != 0) {
    return Invalid(
        absl::StrCat("page_size is ", p.page_size, "; chunk_lse needs a multiple of ", kLseChunk));
  }
  if (p.num_items == 0) return absl::OkStatus();  // nothing is read or written

  const std::pair<const void*, const char*> required[] = {{p.q, "q"},
                                                          {p.page_offsets, "page_offsets"},
                                                          {p.last_page_tokens, "last_page_tokens"},
                                                          {p.out, "out"},
                                                          {p.lse, "lse"}};
  for (const auto& [pointer, name] : required) {
    if (pointer == nullptr) return Invalid(absl::StrCat(name, " is null"));
  }
  if (p.page_offsets[0] != 0) {
    return Invalid(absl::StrCat("page_offsets[0] is ", p.page_offsets[0], "; expected 0"));
  }
  for (int i = 0; i < p.num_items; ++i) {
    const int32_t begin = p.page_offsets[i];
    const int32_t end = p.page_offsets[i + 1];
    if (end < begin) {
      return Invalid(absl::StrCat("page_offsets[", i + 1, "] is ", end, ", below page_offsets[", i,
                                  "] = ", begin, "; expected non-decreasing"));
    }
    const int32_t last = p.last_page_tokens[i];
    if (end > begin && (last < 1 || last > p.page_size)) {
      return Invalid(absl::StrCat("last_page_tokens[", i, "] is ", last, "; expected in [1, ",
                                  p.page_size, "] (page_size)"));
    }
  }
  const int32_t total_pages = p.page_offsets[p.num_items];
  if (total_pages > 0) {
    if (p.k_pages == nullptr) return Invalid("k_pages is null");
    if (p.v_pages == nullptr) return Invalid("v_pages is null");
    for (int32_t j = 0; j < total_pages; ++j) {
      if (p.k_pages[j] == nullptr) return Invalid(absl::StrCat("k_pages[", j, "] is null"));
      if (p.v_pages[j] == nullptr) return Invalid(absl::StrCat("v_pages[", j, "] is null"));
    }
  }
  return absl::OkStatus();
}

// Log-sum-exp merge, in double, of `num_parts` partial results of one query row: part j has
// log-sum-exp lse_of(j) and output row out_of(j) (head_dim values). Writes the merged row to
// out[0, head_dim) and returns the merged log-sum-exp. A part with lse = -inf holds no tokens
// and contributes nothing (its row is not read); with no other part the row is 0 and the lse
// -inf. A NaN lse makes the whole row NaN (std::max-style comparisons would drop it).
template <typename LseOf, typename OutOf>
double MergeRow(int num_parts, int head_dim, LseOf lse_of, OutOf out_of, double* out) {
  double max_lse = -kInf;
  bool any_nan = false;
  for (int j = 0; j < num_parts; ++j) {
    const double lse = lse_of(j);
    if (std::isnan(lse)) any_nan = true;
    if (lse > max_lse) max_lse = lse;
  }
  if (any_nan) {
    std::fill(out, out + head_dim, kNaN);
    return kNaN;
  }
  std::fill(out, out + head_dim, 0.0);
  if (max_lse == -kInf) return -kInf;
  double weight_sum = 0.0;
  for (int j = 0; j < num_parts; ++j) {
    const double lse = lse_of(j);
    if (lse == -kInf) continue;
    const double weight = std::exp(lse - max_lse);  // NaN if max_lse is +inf: propagates
    weight_sum += weight;
    const auto* part = out_of(j);
    for (int d = 0; d < head_dim; ++d) out[d] += weight * static_cast<double>(part[d]);
  }
  for (int d = 0; d < head_dim; ++d) out[d] /= weight_sum;
  return max_lse + std::log(weight_sum);
}

// Token t of a K or V page, widened to double (exactly: bf16 and fp16 fit in float, float in
// double). The dtype is resolved once per row so the element loop stays a plain conversion.
void LoadRow(DType dtype, const void* page, int64_t t, int dim, double* row) {
  const size_t first = static_cast<size_t>(t) * dim;
  switch (dtype) {
    case DType::kBF16: {
      const uint16_t* bits = static_cast<const uint16_t*>(page) + first;
      for (int d = 0; d < dim; ++d) row[d] = BF16ToFloat(bits[d]);
      return;
    }
    case DType::kFP16: {
      const uint16_t* bits = static_cast<const uint16_t*>(page) + first;
      for (int d = 0; d < dim; ++d) row[d] = FP16ToFloat(bits[d]);
      return;
    }
    case DType::kFP32:
      break;  // not a K/V dtype: validation rejects it
  }
  for (int d = 0; d < dim; ++d) row[d] = LoadAsFloat(dtype, page, first + d);
}

// q . k in double. Four partial sums (dim is a multiple of 4) let the additions overlap
// instead of waiting on one chain; any order is exact enough for a result rounded to float.
double Dot(const double* q, const double* k, int dim) {
  double partial[4] = {0.0, 0.0, 0.0, 0.0};
  for (int d = 0; d < dim; d += 4) {
    for (int lane = 0; lane < 4; ++lane) partial[lane] += q[d + lane] * k[d + lane];
  }
  return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

// Exact attention of the G query rows of `item` (q: G x head_dim values, in double) over the
// tokens of pages [page_begin, page_end) (global indexes into k_pages / v_pages), in double:
// writes each head's softmax-weighted sum of V to out[g * head_dim, (g + 1) * head_dim) and
// its log-sum-exp of the logits to lse[g]. The range must hold at least one page. Each K and
// V row is widened once and used by all G heads. Two plain passes: the G logits of every
// token and each head's maximum, then the max-subtracted exponentials. With chunk_lse, also
// the log-sum-exp of each 16-token chunk of these pages (-inf for chunks without tokens).
void AttendPages(const PagedDecodeParams& p, int item, const double* q, int64_t page_begin,
                 int64_t page_end, double* out, double* lse) {
  const int64_t dim = p.head_dim;
  const int64_t group = p.group_size;
  const int64_t item_last_page = p.page_offsets[item + 1] - 1;
  auto tokens_in = [&](int64_t page) -> int64_t {
    return page == item_last_page ? p.last_page_tokens[item] : p.page_size;
  };
  const double scale = p.softmax_scale;

  double row[kMaxHeadDim];
  std::vector<double> logits;  // [token][g]
  logits.reserve((page_end - page_begin) * p.page_size * group);
  std::vector<double> max_logit(group, -kInf);
  for (int64_t page = page_begin; page < page_end; ++page) {
    const void* k = p.k_pages[page];
    for (int64_t t = 0; t < tokens_in(page); ++t) {
      LoadRow(p.dtype, k, t, p.head_dim, row);
      for (int64_t g = 0; g < group; ++g) {
        const double logit = scale * Dot(q + g * dim, row, p.head_dim);
        logits.push_back(logit);
        if (logit > max_logit[g]) max_logit[g] = logit;
      }
    }
  }

  if (p.chunk_lse != nullptr) {
    const int64_t chunks_per_page = p.page_size / kLseChunk;
    size_t first = 0;  // logits index of the page's first token
    for (int64_t page = page_begin; page < page_end; ++page) {
      const int64_t tokens = tokens_in(page);
      for (int64_t c = 0; c < chunks_per_page; ++c) {
        float* row = p.chunk_lse + (page * chunks_per_page + c) * group;
        const int64_t begin = std::min(tokens, c * kLseChunk);
        const int64_t end = std::min(tokens, begin + kLseChunk);
        for (int64_t g = 0; g < group; ++g) {
          // Max-subtracted like the item's lse; a NaN logit makes the chunk's sum NaN.
          double max_logit = -kInf;
          for (int64_t t = begin; t < end; ++t) {
            max_logit = std::max(max_logit, logits[first + t * group + g]);
          }
          double chunk_sum = 0.0;
          for (int64_t t = begin; t < end; ++t) {
            chunk_sum += std::exp(logits[first + t * group + g] - max_logit);
          }
          row[g] = begin == end ? -std::numeric_limits<float>::infinity()
                                : static_cast<float>(max_logit + std::log(chunk_sum));
        }
      }
      first += static_cast<size_t>(tokens * group);
    }
  }

  std::fill(out, out + group * dim, 0.0);
  std::vector<double> sum(group, 0.0);
  size_t index = 0;
  for (int64_t page = page_begin; page < page_end; ++page) {
    const void* v = p.v_pages[page];
    for (int64_t t = 0; t < tokens_in(page); ++t) {
      LoadRow(p.dtype, v, t, p.head_dim, row);
      for (int64_t g = 0; g < group; ++g) {
        // A NaN logit is never the maximum but makes its exponential, and so the sums, NaN.
        const double weight = std::exp(logits[index++] - max_logit[g]);
        sum[g] += weight;
        double* head_out = out + g * dim;
        for (int64_t d = 0; d < dim; ++d) head_out[d] += weight * row[d];
      }
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    double* head_out = out + g * dim;
    for (int64_t d = 0; d < dim; ++d) head_out[d] /= sum[g];
    lse[g] = max_logit[g] + std::log(sum[g]);
  }
}

// Attention of all G query heads of `item`, written to params.out / params.lse. Long items
// are split into page-aligned chunks computed in parallel and merged in chunk order.
void AttendItem(const PagedDecodeParams& p, int item) {
  const int64_t dim = p.head_dim;
  const int64_t group = p.group_size;
  const int64_t first_row = static_cast<int64_t>(item) * group;
  const int64_t page_begin = p.page_offsets[item];
  const int64_t page_end = p.page_offsets[item + 1];
  if (page_begin == page_end) {
    for (int64_t e = 0; e < group * dim; ++e) {
      StoreFromFloat(p.out_dtype, 0.0f, p.out, first_row * dim + e);
    }
    std::fill(p.lse + first_row, p.lse + first_row + group,
              -std::numeric_limits<float>::infinity());
    return;
  }

  std::vector<double> q(group * dim);
  for (int64_t e = 0; e < group * dim; ++e) q[e] = LoadAsFloat(p.dtype, p.q, first_row * dim + e);

  const int64_t num_pages = page_end - page_begin;
  const int64_t num_tokens = (num_pages - 1) * p.page_size + p.last_page_tokens[item];
  const int64_t chunk_pages = std::max<int64_t>(1, kChunkTokens / p.page_size);
  const int64_t num_chunks =
      num_tokens > kChunkTokens ? (num_pages + chunk_pages - 1) / chunk_pages : 1;
  std::vector<double> result(group * dim);  // [g][d]
  std::vector<double> lse(group);
  if (num_chunks == 1) {
    AttendPages(p, item, q.data(), page_begin, page_end, result.data(), lse.data());
  } else {
    std::vector<double> chunk_out(num_chunks * group * dim);  // [chunk][g][d]
    std::vector<double> chunk_lse(num_chunks * group);        // [chunk][g]
    tbb::parallel_for(int64_t{0}, num_chunks, [&](int64_t c) {
      const int64_t first = page_begin + c * chunk_pages;
      const int64_t last = std::min(page_end, first + chunk_pages);
      AttendPages(p, item, q.data(), first, last, chunk_out.data() + c * group * dim,
                  chunk_lse.data() + c * group);
    });
    for (int64_t g = 0; g < group; ++g) {
      lse[g] = MergeRow(
          static_cast<int>(num_chunks), p.head_dim, [&](int c) { return chunk_lse[c * group + g]; },
          [&](int c) { return chunk_out.data() + (c * group + g) * dim; }, result.data() + g * dim);
    }
  }
  // Rounded to float once, then (bf16 / fp16 outputs) to the output dtype.
  for (int64_t e = 0; e < group * dim; ++e) {
    StoreFromFloat(p.out_dtype, static_cast<float>(result[e]), p.out, first_row * dim + e);
  }
  for (int64_t g = 0; g < group; ++g) p.lse[first_row + g] = static_cast<float>(lse[g]);
}

absl::Status ValidateMerge(const MergeParams& p) {
  auto invalid = [](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat("MergeParams: ", message));
  };
  if (p.num_parts < 1) {
    return invalid(absl::StrCat("num_parts is ", p.num_parts, "; expected >= 1"));
  }
  if (p.num_rows < 1) return invalid(absl::StrCat("num_rows is ", p.num_rows, "; expected >= 1"));
  if (p.head_dim < 1) return invalid(absl::StrCat("head_dim is ", p.head_dim, "; expected >= 1"));
  if (p.part_out == nullptr) return invalid("part_out is null");
  if (p.part_lse == nullptr) return invalid("part_lse is null");
  if (p.out == nullptr) return invalid("out is null");
  if (p.lse == nullptr) return invalid("lse is null");
  if (!IsOutputDType(p.out_dtype)) {
    return invalid(absl::StrCat("out_dtype is ", static_cast<int>(p.out_dtype),
                                "; expected fp32, bf16 or fp16"));
  }
  // Outputs and inputs are byte ranges; std::less orders pointers into different arrays.
  struct Range {
    const char* name;
    int j;  // part index, or -1 for an output
    const char* begin;
    int64_t bytes;
  };
  auto overlap = [](const Range& a, const Range& b) {
    const std::less<const char*> less;
    return less(a.begin, b.begin + b.bytes) && less(b.begin, a.begin + a.bytes);
  };
  auto bytes_of = [](const void* pointer) { return static_cast<const char*>(pointer); };
  auto describe = [](const Range& r) {
    return r.j < 0 ? std::string(r.name) : absl::StrCat(r.name, "[", r.j, "]");
  };
  const int64_t row_values = static_cast<int64_t>(p.num_rows) * p.head_dim;
  const int64_t out_bytes = row_values * static_cast<int64_t>(DTypeSize(p.out_dtype));
  const int64_t lse_bytes = static_cast<int64_t>(p.num_rows) * sizeof(float);
  const Range outputs[] = {{"out", -1, bytes_of(p.out), out_bytes},
                           {"lse", -1, bytes_of(p.lse), lse_bytes}};
  if (overlap(outputs[0], outputs[1])) return invalid("out and lse overlap");
  for (int j = 0; j < p.num_parts; ++j) {
    if (p.part_out[j] == nullptr) return invalid(absl::StrCat("part_out[", j, "] is null"));
    if (p.part_lse[j] == nullptr) return invalid(absl::StrCat("part_lse[", j, "] is null"));
    const Range inputs[] = {
        {"part_out", j, bytes_of(p.part_out[j]), row_values * static_cast<int64_t>(sizeof(float))},
        {"part_lse", j, bytes_of(p.part_lse[j]), lse_bytes}};
    for (const Range& output : outputs) {
      for (const Range& input : inputs) {
        if (overlap(output, input)) {
          return invalid(absl::StrCat(describe(output), " overlaps ", describe(input),
                                      "; outputs may alias no input"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ReferencePagedDecodeAttention(const PagedDecodeParams& params) {
  KVTIER_RETURN_IF_ERROR(ValidateAttention(params));
  tbb::parallel_for(tbb::blocked_range<int>(0, params.num_items), [&](const auto& items) {
    for (int item = items.begin(); item < items.end(); ++item) AttendItem(params, item);
  });
  return absl::OkStatus();
}

absl::Status ReferenceMergePartials(const MergeParams& params) {
  KVTIER_RETURN_IF_ERROR(ValidateMerge(params));
  const int64_t dim = params.head_dim;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, params.num_rows), [&](const auto& rows) {
    std::vector<double> merged(dim);
    for (int64_t row = rows.begin(); row < rows.end(); ++row) {
      const double lse = MergeRow(
          params.num_parts, params.head_dim,
          [&](int j) { return static_cast<double>(params.part_lse[j][row]); },
          [&](int j) { return params.part_out[j] + row * dim; }, merged.data());
      for (int64_t d = 0; d < dim; ++d) {
        StoreFromFloat(params.out_dtype, static_cast<float>(merged[d]), params.out, row * dim + d);
      }
      params.lse[row] = static_cast<float>(lse);
    }
  });
  return absl::OkStatus();
}

}  // namespace kvtier
