// The KvCache runtime (host backend) on the learned-attention dumps of ../shared/data/attention
// (format and figures in that folder's README): each dump's real keys and values prefilled, its
// 256 real queries decoded one step at a time, and at the README's 32 sampled queries
//  - the attention mass captured by the hot set plus the pages the page-bounds index selected
//    (KvCache::Inspect) held to within 0.02 of the README's "bounds 2%" column at the same
//    budget (issue 4's criterion, here end to end through Prefill and Decode);
//  - the selection equal to the kernel-level index (the summary and selection twins) on the
//    dump's pages, so that the pipeline's incremental summaries and ranges add nothing;
//  - Decode's output equal to exact attention (double) restricted to those tokens;
// and, with a budget covering every page, Decode's output equal to full attention.
//
// Protocol (tests/tools/workload/attention_dump_test.cc, "Captured attention mass, README
// protocol", read the same way), with the runtime's own hot set and budget where they differ:
//  - The 32 sampled queries are indices 0, 8, ..., 248. Every one of the 256 queries is
//    decoded (the page cache evolves as in a real decode), only the 32 are measured: computing
//    the exact softmax in double is the expensive part, and it is what the README averages.
//  - Query i at position q_pos[i] sees n = q_pos[i] + 1 tokens, in 16-token pages from token 0.
//  - Hot set: the runtime's (kv_cache.h): the sink pages [0, 4) and the window pages
//    [max(4, N - 64), N), N = ceil(n / 16) pages including the partial last one. The README
//    widens its window to every page holding one of the last 1024 tokens, so where n is not a
//    multiple of 16 (every sampled query here) the runtime's window is one page shorter and
//    that boundary page is one more candidate of the index.
//  - Budget: budget.max_pages = floor(0.02 * tokens / 16), the README's budget at the full
//    context (10 pages at 8K, 30 at 24K), fixed for the run; the README recomputes it per
//    query (9 pages for the 8K dumps' first 8 sampled queries). Both differences move the
//    figures by far less than the 0.02 tolerance.
//  - Captured mass of a query head: its exact softmax mass (double, scale 1/sqrt(64)) on the
//    hot tokens plus the selected pages' tokens; averaged over the 4 heads of each KV head,
//    both KV heads and the 32 queries. The output error (printed, not asserted: the README
//    gives it for the centroid index only) is the relative L2 error of Decode's fp32 output
//    against exact full attention, per (query, KV head) over its 4 heads' outputs together,
//    averaged over the 64 of them: the reading that reproduces the README's centroid
//    output-error column (within 0.7 points, with the centroid selection as its README row
//    describes it), where averaging per-head errors gives up to twice its diffuse figures.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "kernels/block_select.h"
#include "runtime/core/options.h"
#include "runtime/core/tensor.h"
#include "runtime/kv_cache.h"
#include "tbb/parallel_for.h"
#include "tests/testing/attention_dumps.h"
#include "tools/workload/attention_dump.h"

namespace kvtier {
namespace {

using workload::AttentionDump;

// The README's table: captured attention mass at a 2% page budget.
using testing_util::DumpPath;
using testing_util::DumpsPresent;
using testing_util::kReadme;
using testing_util::ReadmeRow;

constexpr int kPageSize = 16;
constexpr int kSinkTokens = 64;
constexpr int kWindowTokens = 1024;
constexpr int kSampleStride = 8;  // queries 0, 8, ..., 248
constexpr double kBudgetShare = 0.02;
constexpr SeqId kSeq = 17;
// Decode's output against exact attention over the same tokens: the host twins accumulate in
// double from the same fp16 inputs and round the hot and selected partials (and their LSEs)
// to float before the merge, so a few float roundings (~1e-7 relative) separate the two.
constexpr double kOutputTolerance = 1e-5;

// Rows [begin, end) of the dump's keys or values in the API's layout [tokens, Hk, D] (the
// dump stores [Hk, tokens, D]).
std::vector<uint16_t> TokenRows(const AttentionDump& dump, bool keys, int begin, int end) {
  const int hk = dump.kv_heads(), dim = dump.head_dim();
  std::vector<uint16_t> rows(static_cast<size_t>(end - begin) * hk * dim);
  for (int t = begin; t < end; ++t) {
    for (int h = 0; h < hk; ++h) {
      const uint16_t* src = keys ? dump.key(h, t) : dump.value(h, t);
      std::copy_n(src, dim, rows.begin() + (static_cast<size_t>(t - begin) * hk + h) * dim);
    }
  }
  return rows;
}

struct RunConfig {
  int budget_pages = 0;
  double cache_slots_per_budget = 4.0;
  // Compare each selection with the kernel-level index on the dump's own pages.
  bool check_against_kernel_index = true;
};

// One measured (sampled) decode step.
struct Sample {
  int query = 0;                               // index into the dump's queries
  int position = 0;                            // its q_pos: the step appended this token
  std::vector<float> out;                      // [Hq, D] Decode's fp32 output
  std::vector<std::vector<int32_t>> selected;  // [Hk] Inspect's pages
};

struct Figures {
  double hot = 0.0;       // mass on the hot set alone
  double captured = 0.0;  // hot set + selected pages
  // Relative L2 errors of Decode's output: against full attention, per item (the G heads of a
  // KV head together) averaged over the items, and the largest per query head; against
  // attention over the hot and selected tokens, the largest per query head.
  double output_error = 0.0;
  double max_output_error = 0.0;
  double max_restricted_error = 0.0;
  double hit_rate = 0.0;  // page cache, over all decode steps
  int gap_tokens = 0;     // tokens decoded between non-consecutive queries
  double seconds = 0.0;
};

// Hot-set geometry of a step that leaves n tokens stored (kv_cache.h).
struct StepGeometry {
  int cold_begin = 0;  // candidate pages [cold_begin, cold_end)
  int cold_end = 0;
  int window_begin = 0;  // first hot token of the window
};
StepGeometry Geometry(int n) {
  const int sink_pages = kSinkTokens / kPageSize;
  const int window_pages = kWindowTokens / kPageSize;
  const int pages = (n + kPageSize - 1) / kPageSize;
  StepGeometry g;
  g.cold_begin = sink_pages;
  g.cold_end = std::max(sink_pages, pages - window_pages);
  g.window_begin = g.cold_end * kPageSize;
  return g;
}

// The kernel-level page-bounds index on the dump's pages: summaries of every page (the
// summary twin) and the top `k` of [cold_begin, cold_end) per KV head (the selection twin).
class KernelIndex {
 public:
  explicit KernelIndex(const AttentionDump& dump)
      : dump_(dump), pages_((dump.tokens() + kPageSize - 1) / kPageSize) {
    status_ = testing_util::DumpPageBounds(dump, kPageSize, &bounds_);
  }
  const absl::Status& status() const { return status_; }

  // Per KV head, the selected pages (ascending) of query `query` over n stored tokens.
  absl::StatusOr<std::vector<std::vector<int32_t>>> Select(int query, int n, int k) const {
    const int dim = dump_.head_dim(), hk = dump_.kv_heads(), group = dump_.group_size();
    const StepGeometry geo = Geometry(n);
    std::vector<uint16_t> q(static_cast<size_t>(hk) * group * dim);
    for (int h = 0; h < dump_.q_heads(); ++h) {
      std::copy_n(dump_.query(h, query), dim, q.begin() + static_cast<size_t>(h) * dim);
    }
    std::vector<int32_t> begin(hk, geo.cold_begin), end(hk, geo.cold_end);
    std::vector<const void*> item_bounds(hk);
    for (int h = 0; h < hk; ++h) {
      item_bounds[h] = bounds_.data() + static_cast<size_t>(h) * pages_ * 2 * dim;
    }
    std::vector<int32_t> selected(static_cast<size_t>(hk) * k, -7), count(hk, -7);
    BlockSelectParams params;
    params.kind = BlockScoreKind::kPageBounds;
    params.mode = BlockSelectMode::kTopK;
    params.dtype = DType::kFP16;
    params.head_dim = dim;
    params.group_size = group;
    params.softmax_scale = dump_.softmax_scale();
    params.num_items = hk;
    params.max_blocks = pages_;
    params.k = k;
    params.q = q.data();
    params.block_begin = begin.data();
    params.block_end = end.data();
    params.bounds = item_bounds.data();
    params.selected = selected.data();
    params.num_selected = count.data();
    const absl::Status status = ReferenceBlockSelect(params);
    if (!status.ok()) return status;
    std::vector<std::vector<int32_t>> result(hk);
    for (int h = 0; h < hk; ++h) {
      const auto row = selected.begin() + static_cast<ptrdiff_t>(h) * k;
      result[h].assign(row, row + std::clamp(count[h], 0, k));
      std::sort(result[h].begin(), result[h].end());
    }
    return result;
  }

 private:
  const AttentionDump& dump_;
  const int pages_;
  std::vector<uint16_t> bounds_;
  absl::Status status_;
};

// Creates a KvCache for the dump, prefills [0, q_pos[0]), decodes every query and returns the
// sampled steps (Decode's output and Inspect's selection) in `samples`.
void DecodeDump(const AttentionDump& dump, const RunConfig& config, std::vector<Sample>* samples,
                Figures* figures) {
  const int hq = dump.q_heads(), hk = dump.kv_heads(), dim = dump.head_dim();
  const absl::Span<const int32_t> q_pos = dump.query_positions();
  ASSERT_GT(dump.num_queries(), 0);

  Options options;
  options.shape.num_layers = 1;
  options.shape.num_query_heads = hq;
  options.shape.num_kv_heads = hk;
  options.shape.head_dim = dim;
  options.shape.dtype = DType::kFP16;
  options.page_size = kPageSize;
  options.sink_tokens = kSinkTokens;
  options.window_tokens = kWindowTokens;
  options.budget.max_pages = config.budget_pages;
  options.cache_slots_per_budget = config.cache_slots_per_budget;
  options.cache_policy = CachePolicy::kLowestScore;
  // Every page of the dump plus a page per KV head of slack (a K and a V page per frame).
  const int64_t frames = (int64_t{dump.tokens()} / kPageSize + 2) * hk;
  options.host_memory_bytes = frames * 2 * PageBytes(options.shape, kPageSize);
  options.max_sequences = 1;
  options.max_batch_size = 1;
  options.max_sequence_tokens = dump.tokens();
  options.backend = Backend::kHost;
  auto created = KvCache::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  KvCache& cache = **created;
  ASSERT_TRUE(cache.AddSequence(kSeq).ok());

  // Prefill [0, q_pos[0]) in four chunks whose boundaries fall inside pages (each chunk
  // continues the previous one's partial page); at 24K tokens three of them are longer than
  // max_prefill_chunk_tokens, which the runtime then stores in pieces.
  const int prompt = q_pos[0];
  ASSERT_GT(prompt, 0);
  const std::vector<int> ends = {prompt * 3 / 20 + 5, prompt / 2 + 7, prompt * 4 / 5 + 11, prompt};
  int done = 0;
  for (const int end : ends) {
    if (end <= done) continue;
    const std::vector<uint16_t> k = TokenRows(dump, /*keys=*/true, done, end);
    const std::vector<uint16_t> v = TokenRows(dump, /*keys=*/false, done, end);
    const absl::Status status = cache.Prefill(
        kSeq, 0, MakeConstTensor(k.data(), DType::kFP16, {end - done, hk, dim}),
        MakeConstTensor(v.data(), DType::kFP16, {end - done, hk, dim}), ConstTensor{}, nullptr);
    ASSERT_TRUE(status.ok()) << status;
    done = end;
  }
  ASSERT_EQ(cache.NumTokens(kSeq, 0).value_or(-1), prompt);

  // Decode: step i appends token q_pos[i] and attends query i. The dumps' positions are the
  // last 256, consecutive; should a dump skip positions, the skipped tokens are decoded with
  // the next query (outputs unused) so that each measured step still sees tokens 0..q_pos[i].
  std::vector<uint16_t> q(static_cast<size_t>(hq) * dim), k(static_cast<size_t>(hk) * dim),
      v(static_cast<size_t>(hk) * dim);
  std::vector<float> out(static_cast<size_t>(hq) * dim);
  int stored = prompt;
  int64_t expected_selected = 0;  // pages the index must select over all steps and KV heads
  for (int i = 0; i < dump.num_queries(); ++i) {
    SCOPED_TRACE(absl::StrCat("query ", i, " at position ", q_pos[i]));
    ASSERT_GE(q_pos[i], stored) << "query positions must increase";
    for (int h = 0; h < hq; ++h) {
      std::copy_n(dump.query(h, i), dim, q.begin() + static_cast<size_t>(h) * dim);
    }
    while (stored <= q_pos[i]) {
      for (int h = 0; h < hk; ++h) {
        std::copy_n(dump.key(h, stored), dim, k.begin() + static_cast<size_t>(h) * dim);
        std::copy_n(dump.value(h, stored), dim, v.begin() + static_cast<size_t>(h) * dim);
      }
      std::fill(out.begin(), out.end(), std::numeric_limits<float>::quiet_NaN());
      const SeqId seqs[] = {kSeq};
      const absl::Status status =
          cache.Decode(0, seqs, MakeConstTensor(q.data(), DType::kFP16, {1, hq, dim}),
                       MakeConstTensor(k.data(), DType::kFP16, {1, hk, dim}),
                       MakeConstTensor(v.data(), DType::kFP16, {1, hk, dim}),
                       MakeMutableTensor(out.data(), DType::kFP32, {1, hq, dim}), nullptr);
      ASSERT_TRUE(status.ok()) << status;
      if (stored < q_pos[i]) ++figures->gap_tokens;
      ++stored;
      const StepGeometry step = Geometry(stored);
      expected_selected +=
          int64_t{hk} * std::min(config.budget_pages, step.cold_end - step.cold_begin);
    }
    ASSERT_EQ(cache.NumTokens(kSeq, 0).value_or(-1), q_pos[i] + 1);
    if (i % kSampleStride != 0) continue;
    Sample sample;
    sample.query = i;
    sample.position = q_pos[i];
    sample.out = out;
    const StepGeometry geo = Geometry(q_pos[i] + 1);
    const int expected = std::min(config.budget_pages, geo.cold_end - geo.cold_begin);
    for (int h = 0; h < hk; ++h) {
      auto inspection = cache.Inspect(kSeq, 0, h);
      ASSERT_TRUE(inspection.ok()) << inspection.status();
      const std::vector<int32_t>& pages = inspection->selected_pages;
      // A full budget of distinct candidate pages, ascending, each a hit or a miss.
      EXPECT_EQ(static_cast<int>(pages.size()), expected) << "KV head " << h;
      EXPECT_TRUE(std::is_sorted(pages.begin(), pages.end())) << "KV head " << h;
      EXPECT_EQ(std::adjacent_find(pages.begin(), pages.end()), pages.end()) << "KV head " << h;
      for (const int32_t page : pages) {
        EXPECT_TRUE(page >= geo.cold_begin && page < geo.cold_end)
            << "KV head " << h << ": selected page " << page << " outside the candidates ["
            << geo.cold_begin << ", " << geo.cold_end << ")";
      }
      EXPECT_EQ(inspection->hits + inspection->misses, static_cast<int>(pages.size()))
          << "KV head " << h;
      sample.selected.push_back(pages);
    }
    samples->push_back(std::move(sample));
  }
  const LayerStats total = cache.GetStats().Total();
  EXPECT_EQ(total.decode_steps, dump.num_queries() + figures->gap_tokens);
  EXPECT_EQ(total.pages_selected, expected_selected);
  EXPECT_EQ(total.page_hits + total.page_misses, total.pages_selected);
  figures->hit_rate = total.hit_rate();
}

// The exact figures of the sampled steps (double, every query head).
Figures Measure(const AttentionDump& dump, const std::vector<Sample>& samples) {
  const int hq = dump.q_heads(), dim = dump.head_dim(), tokens = dump.tokens();
  // Exact widening of keys and values, once.
  std::vector<float> keys(dump.keys().size()), values(dump.values().size());
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = FP16ToFloat(dump.keys()[i]);
  for (size_t i = 0; i < values.size(); ++i) values[i] = FP16ToFloat(dump.values()[i]);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));

  struct Row {
    double hot = 0.0, captured = 0.0;
    double squared_error = 0.0, squared_norm = 0.0;  // against full attention
    double restricted_error = 0.0;  // relative, against attention over hot + selected
  };
  std::vector<Row> rows(samples.size() * hq);
  tbb::parallel_for(0, static_cast<int>(rows.size()), [&](int r) {
    const Sample& s = samples[r / hq];
    const int head = r % hq;
    const int kv_head = dump.kv_head_of(head);
    const int n = s.position + 1;
    const StepGeometry geo = Geometry(n);
    std::vector<char> kept_page((n + kPageSize - 1) / kPageSize, 0);
    for (const int32_t page : s.selected[kv_head]) {
      if (page >= 0 && page < static_cast<int>(kept_page.size())) kept_page[page] = 1;
    }

    std::vector<double> q(dim), logit(n);
    const uint16_t* qh = dump.query(head, s.query);
    for (int d = 0; d < dim; ++d) q[d] = FP16ToFloat(qh[d]);
    double max_logit = -std::numeric_limits<double>::infinity();
    for (int t = 0; t < n; ++t) {
      const float* kt = keys.data() + (static_cast<size_t>(kv_head) * tokens + t) * dim;
      double dot = 0.0;
      for (int d = 0; d < dim; ++d) dot += q[d] * kt[d];
      logit[t] = scale * dot;
      max_logit = std::max(max_logit, logit[t]);
    }
    std::vector<double> full(dim, 0.0), kept(dim, 0.0);
    double z = 0.0, z_hot = 0.0, z_kept = 0.0;
    for (int t = 0; t < n; ++t) {
      const double w = std::exp(logit[t] - max_logit);
      const bool hot = t < kSinkTokens || t >= geo.window_begin;
      const bool in = hot || kept_page[t / kPageSize] != 0;
      const float* vt = values.data() + (static_cast<size_t>(kv_head) * tokens + t) * dim;
      z += w;
      for (int d = 0; d < dim; ++d) full[d] += w * vt[d];
      if (hot) z_hot += w;
      if (in) {
        z_kept += w;
        for (int d = 0; d < dim; ++d) kept[d] += w * vt[d];
      }
    }
    const float* o = s.out.data() + static_cast<size_t>(head) * dim;
    double err = 0.0, norm = 0.0, r_err = 0.0, r_norm = 0.0;
    for (int d = 0; d < dim; ++d) {
      const double f = full[d] / z, k = kept[d] / z_kept;
      err += (o[d] - f) * (o[d] - f);
      norm += f * f;
      r_err += (o[d] - k) * (o[d] - k);
      r_norm += k * k;
    }
    rows[r].hot = z_hot / z;
    rows[r].captured = z_kept / z;
    rows[r].squared_error = err;
    rows[r].squared_norm = norm;
    rows[r].restricted_error = std::sqrt(r_err / r_norm);
  });

  // A maximum that keeps NaN (an unwritten output element) so that the comparison fails.
  auto max_keep_nan = [](double a, double b) {
    return std::isnan(a) || std::isnan(b) ? std::numeric_limits<double>::quiet_NaN()
                                          : std::max(a, b);
  };
  Figures f;
  for (const Row& row : rows) {
    f.hot += row.hot;
    f.captured += row.captured;
    f.max_output_error =
        max_keep_nan(f.max_output_error, std::sqrt(row.squared_error / row.squared_norm));
    f.max_restricted_error = max_keep_nan(f.max_restricted_error, row.restricted_error);
  }
  f.hot /= static_cast<double>(rows.size());
  f.captured /= static_cast<double>(rows.size());
  // The output error of an item (sampled query, KV head): the relative L2 error of its G heads'
  // outputs taken together. Averaged over the items, this is the reading of the README's
  // "output error" that reproduces its centroid columns (per-head errors averaged instead
  // weigh heads with near-zero outputs heavily and come out up to twice as large).
  const int group = dump.group_size();
  const int items = static_cast<int>(rows.size()) / group;
  for (int item = 0; item < items; ++item) {
    double err = 0.0, norm = 0.0;
    for (int g = 0; g < group; ++g) {
      // Rows are (sample, query head); query heads of one KV head are consecutive.
      err += rows[item * group + g].squared_error;
      norm += rows[item * group + g].squared_norm;
    }
    f.output_error += std::sqrt(err / norm);
  }
  f.output_error /= items;
  return f;
}

// Decodes the dump, checks the selections against the kernel-level index and returns the
// figures.
void RunDump(const AttentionDump& dump, const RunConfig& config, Figures* figures) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<Sample> samples;
  DecodeDump(dump, config, &samples, figures);
  if (::testing::Test::HasFatalFailure()) return;
  ASSERT_EQ(static_cast<int>(samples.size()),
            (dump.num_queries() + kSampleStride - 1) / kSampleStride);
  if (config.check_against_kernel_index) {
    const KernelIndex index(dump);
    ASSERT_TRUE(index.status().ok()) << index.status();
    for (const Sample& s : samples) {
      auto expected = index.Select(s.query, s.position + 1, config.budget_pages);
      ASSERT_TRUE(expected.ok()) << expected.status();
      for (int h = 0; h < dump.kv_heads(); ++h) {
        EXPECT_EQ(s.selected[h], (*expected)[h])
            << "query " << s.query << ", KV head " << h
            << ": the runtime's selection differs from the kernel-level index on the same pages";
      }
    }
  }
  const Figures measured = Measure(dump, samples);
  figures->hot = measured.hot;
  figures->captured = measured.captured;
  figures->output_error = measured.output_error;
  figures->max_output_error = measured.max_output_error;
  figures->max_restricted_error = measured.max_restricted_error;
  figures->seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The page-bounds index through the whole runtime captures within 0.02 of the README's
// "bounds 2%" column (issue 4's criterion), and Decode's output is exact attention over what
// it kept.
TEST(AttentionDumpRuntimeTest, PageBoundsBudgetMatchesReadme) {
  std::string why;
  if (!DumpsPresent(&why)) GTEST_SKIP() << why;
  constexpr double kMassTolerance = 0.02;
  std::printf("%-16s %6s %7s %6s %6s %9s %9s %10s %6s %6s\n", "dump", "budget", "hot", "mass",
              "[bnds]", "[oracle]", "out err", "exact err", "hits", "secs");
  for (const ReadmeRow& row : kReadme) {
    SCOPED_TRACE(row.dump);
    auto dump = AttentionDump::Load(DumpPath(row.dump));
    ASSERT_TRUE(dump.ok()) << dump.status();
    RunConfig config;
    config.budget_pages = static_cast<int>(std::floor(kBudgetShare * dump->tokens() / kPageSize));
    Figures f;
    RunDump(*dump, config, &f);
    if (HasFatalFailure()) return;
    std::printf("%-16s %6d %7.4f %6.4f %6.3f %9.3f %8.2f%% %10.2e %5.1f%% %6.1f\n", row.dump,
                config.budget_pages, f.hot, f.captured, row.bounds_2, row.oracle_2,
                100.0 * f.output_error, f.max_restricted_error, 100.0 * f.hit_rate, f.seconds);
    std::fflush(stdout);
    EXPECT_NEAR(f.captured, row.bounds_2, kMassTolerance);
    EXPECT_LE(f.hot, f.captured);
    EXPECT_LE(f.max_restricted_error, kOutputTolerance)
        << "Decode's output differs from exact attention over the hot and selected tokens";
    EXPECT_EQ(f.gap_tokens, 0) << "the dump's query positions are not consecutive";
  }
}

// With a budget covering every page the index selects every cold page, and Decode's output
// is full attention (ARCHITECTURE.md: "when the budget covers every block, the output equals
// full attention up to floating-point rounding").
TEST(AttentionDumpRuntimeTest, FullBudgetEqualsFullAttention) {
  std::string why;
  if (!DumpsPresent(&why)) GTEST_SKIP() << why;
  const char* name = "code_dev8k_L6";  // the least concentrated 8K dump
  auto dump = AttentionDump::Load(DumpPath(name));
  ASSERT_TRUE(dump.ok()) << dump.status();
  RunConfig config;
  config.budget_pages = (dump->tokens() + kPageSize - 1) / kPageSize;
  config.cache_slots_per_budget = 1.0;
  config.check_against_kernel_index = false;  // the selection is checked below: all candidates
  Figures f;
  std::vector<Sample> samples;
  const auto start = std::chrono::steady_clock::now();
  DecodeDump(*dump, config, &samples, &f);
  if (HasFatalFailure()) return;
  for (const Sample& s : samples) {
    const StepGeometry geo = Geometry(s.position + 1);
    std::vector<int32_t> all(geo.cold_end - geo.cold_begin);
    for (int j = 0; j < static_cast<int>(all.size()); ++j) all[j] = geo.cold_begin + j;
    for (int h = 0; h < dump->kv_heads(); ++h) {
      EXPECT_EQ(s.selected[h], all) << "query " << s.query << ", KV head " << h;
    }
  }
  const Figures m = Measure(*dump, samples);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%-16s full budget %d pages: mass %.12f, out err max %.2e, hits %.1f%%, %.1f s\n",
              name, config.budget_pages, m.captured, m.max_output_error, 100.0 * f.hit_rate,
              seconds);
  EXPECT_NEAR(m.captured, 1.0, 1e-12);
  EXPECT_LE(m.max_output_error, kOutputTolerance);
  EXPECT_LE(m.max_restricted_error, kOutputTolerance);
  // Every cold page fits the cache: after the first selection only pages that leave the window
  // miss (one per KV head every 16 steps).
  EXPECT_GT(f.hit_rate, 0.99);
}

}  // namespace
}  // namespace kvtier
