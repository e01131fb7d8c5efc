// Calibration of the synthetic workload's DEFAULT options against the learned-attention dumps
// (../shared/data/attention/README.md): the attention mass that a 2% budget of 16-token
// pages captures when the pages are the true best ones (oracle) and when they are ranked by
// per-page, per-channel min/max key bounds, the way kvtier's page index ranks them.
//
// On the dumps' concentrated heads, the README's measure (hot set of the first 64 and last
// 1024 tokens plus the 2% budget) gives oracle ~0.88-0.93 with bounds within 0.006-0.018 of
// it. Measured the same way over the whole causal context with no hot set, the same dumps give
// oracle 0.68-0.86 with bounds 0.06-0.13 below it. Both measures are computed and asserted
// here, in double from the bf16 values the generator emits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "tools/workload/synthetic_kv.h"

namespace kvtier::workload {
namespace {

constexpr int kPageSize = 16;
constexpr double kBudgetShare = 0.02;
// The README's hot set: always attended, outside the page budget.
constexpr int kHotFirst = 64;
constexpr int kHotLast = 1024;

// Mean captured attention mass: `oracle` by the pages of most true mass, `bounds` by the pages
// of the highest summed bound scores; each over the whole context (`*_all`) and as the hot set
// plus pages chosen among the rest (`*_hot`, the README's measure).
struct Capture {
  double oracle_all = 0, bounds_all = 0, oracle_hot = 0, bounds_hot = 0;
};

// The `budget` entries of `candidates` with the largest `score`.
std::vector<int> TopPages(const std::vector<double>& score, std::vector<int> candidates,
                          int budget) {
  const int k = std::min<int>(budget, static_cast<int>(candidates.size()));
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(),
                    [&](int a, int b) { return score[a] > score[b]; });
  candidates.resize(k);
  return candidates;
}

// Generates a prompt of `prompt_tokens` tokens plus the decode steps up to the last query for
// each layer of `w`, and measures `num_queries` queries at decode steps 0, stride, 2 * stride,
// ... (each attends causally to 0..position). Per query and KV head, the group's query heads
// choose pages together: oracle by the page mass summed over the group, bounds by the sum over
// the group of sum_d max(q_d * min_d, q_d * max_d). Mass is averaged over the group's heads, the
// KV heads, the queries and the layers.
Capture MeasureCapture(const SyntheticWorkload& w, SeqId seq, int prompt_tokens, int num_queries,
                       int stride) {
  const ModelShape& s = w.options().shape;
  const int dim = s.head_dim, kv_heads = s.num_kv_heads, group = s.group_size();
  const int tokens = prompt_tokens + (num_queries - 1) * stride + 1;
  const size_t row = static_cast<size_t>(kv_heads) * dim;
  const double scale = w.softmax_scale();
  Capture c;
  int samples = 0;
  for (int layer = 0; layer < s.num_layers; ++layer) {
    std::vector<uint16_t> k_raw(tokens * row), v_raw(tokens * row);
    EXPECT_TRUE(w.Prompt(seq, layer, prompt_tokens, k_raw.data(), v_raw.data()).ok());
    for (int t = prompt_tokens; t < tokens; ++t) {
      EXPECT_TRUE(w.DecodeKv(seq, layer, t, &k_raw[t * row], &v_raw[t * row]).ok());
    }
    std::vector<double> keys(k_raw.size());
    for (size_t i = 0; i < keys.size(); ++i) keys[i] = LoadAsFloat(s.dtype, k_raw.data(), i);
    auto key = [&](int t, int h) { return &keys[t * row + static_cast<size_t>(h) * dim]; };

    for (int i = 0; i < num_queries; ++i) {
      const int position = prompt_tokens + i * stride;
      const int context = position + 1;
      const int pages = (context + kPageSize - 1) / kPageSize;
      const int budget = static_cast<int>(std::ceil(kBudgetShare * pages));
      auto page_end = [&](int page) { return std::min(context, (page + 1) * kPageSize); };
      auto hot = [&](int t) { return t < kHotFirst || t >= context - kHotLast; };
      std::vector<uint16_t> q_raw(static_cast<size_t>(s.num_query_heads) * dim);
      EXPECT_TRUE(w.Query(seq, layer, position, q_raw.data()).ok());
      std::vector<double> q(q_raw.size());
      for (size_t j = 0; j < q.size(); ++j) q[j] = LoadAsFloat(s.dtype, q_raw.data(), j);

      for (int h = 0; h < kv_heads; ++h) {
        // Per-page, per-channel key bounds over the query's causal context.
        std::vector<double> lo(static_cast<size_t>(pages) * dim, 1e300);
        std::vector<double> hi(static_cast<size_t>(pages) * dim, -1e300);
        for (int t = 0; t < context; ++t) {
          const double* k = key(t, h);
          double* l = &lo[static_cast<size_t>(t / kPageSize) * dim];
          double* u = &hi[static_cast<size_t>(t / kPageSize) * dim];
          for (int d = 0; d < dim; ++d) {
            l[d] = std::min(l[d], k[d]);
            u[d] = std::max(u[d], k[d]);
          }
        }
        std::vector<std::vector<double>> weights(group, std::vector<double>(context));
        std::vector<double> page_mass(pages, 0.0), cold_mass(pages, 0.0), bound(pages, 0.0);
        for (int j = 0; j < group; ++j) {
          const double* qh = &q[static_cast<size_t>(h * group + j) * dim];
          std::vector<double>& a = weights[j];
          for (int t = 0; t < context; ++t) {
            a[t] = scale * std::inner_product(qh, qh + dim, key(t, h), 0.0);
          }
          const double top = *std::max_element(a.begin(), a.end());
          double sum = 0;
          for (double& x : a) sum += x = std::exp(x - top);
          for (int t = 0; t < context; ++t) {
            a[t] /= sum;
            page_mass[t / kPageSize] += a[t];
            if (!hot(t)) cold_mass[t / kPageSize] += a[t];
          }
          for (int p = 0; p < pages; ++p) {
            const double* l = &lo[static_cast<size_t>(p) * dim];
            const double* u = &hi[static_cast<size_t>(p) * dim];
            for (int d = 0; d < dim; ++d) bound[p] += std::max(qh[d] * l[d], qh[d] * u[d]);
          }
        }
        std::vector<int> all_pages(pages), cold_pages;
        std::iota(all_pages.begin(), all_pages.end(), 0);
        for (int p = 0; p < pages; ++p) {
          bool all_hot = true;
          for (int t = p * kPageSize; t < page_end(p); ++t) all_hot = all_hot && hot(t);
          if (!all_hot) cold_pages.push_back(p);
        }
        const std::vector<int> oracle_all = TopPages(page_mass, all_pages, budget);
        const std::vector<int> bounds_all = TopPages(bound, all_pages, budget);
        const std::vector<int> oracle_hot = TopPages(cold_mass, cold_pages, budget);
        const std::vector<int> bounds_hot = TopPages(bound, cold_pages, budget);
        for (int j = 0; j < group; ++j) {
          const std::vector<double>& a = weights[j];
          double hot_mass = 0;
          for (int t = 0; t < context; ++t) hot_mass += hot(t) ? a[t] : 0.0;
          // Mass of the picked pages, plus the hot set's when `with_hot` (then only the picked
          // pages' cold tokens count, so nothing is counted twice).
          auto captured = [&](const std::vector<int>& picked, bool with_hot) {
            double m = with_hot ? hot_mass : 0.0;
            for (int p : picked) {
              for (int t = p * kPageSize; t < page_end(p); ++t) {
                m += with_hot && hot(t) ? 0.0 : a[t];
              }
            }
            return m;
          };
          c.oracle_all += captured(oracle_all, false);
          c.bounds_all += captured(bounds_all, false);
          c.oracle_hot += captured(oracle_hot, true);
          c.bounds_hot += captured(bounds_hot, true);
          ++samples;
        }
      }
    }
  }
  c.oracle_all /= samples;
  c.bounds_all /= samples;
  c.oracle_hot /= samples;
  c.bounds_hot /= samples;
  return c;
}

// A llama-like shape (head_dim 128, GQA group 4, bf16) with two layers and two KV heads;
// everything else is the generator's defaults.
SyntheticOptions LlamaLikeDefaults() {
  SyntheticOptions o;
  o.shape.num_layers = 2;
  o.shape.num_query_heads = 8;
  o.shape.num_kv_heads = 2;
  o.shape.head_dim = 128;
  o.shape.dtype = DType::kBF16;
  return o;
}

TEST(SyntheticCalibrationTest, DefaultsAreConcentratedAndPageBoundsNearTheOracle) {
  auto w = SyntheticWorkload::Create(LlamaLikeDefaults());
  ASSERT_TRUE(w.ok()) << w.status();
  // 8K-token prompt; 16 queries over 136 decode steps, so the drift's phases are mixed.
  const Capture c = MeasureCapture(**w, /*seq=*/1, /*prompt_tokens=*/8192, /*num_queries=*/16,
                                   /*stride=*/9);
  std::printf(
      "8K context, 2%% of 16-token pages: hot set + pages (README): oracle %.3f bounds %.3f; "
      "whole context: oracle %.3f bounds %.3f\n",
      c.oracle_hot, c.bounds_hot, c.oracle_all, c.bounds_all);
  // The README's concentrated regime is oracle 0.88-0.93 with bounds within 0.02 of it;
  // asserted with margins (the gap is 0.019 here, 0.02-0.045 with other seeds).
  EXPECT_GE(c.oracle_hot, 0.80);
  EXPECT_GE(c.bounds_hot, c.oracle_hot - 0.04);
  // Whole context, no hot set: at least as index-friendly as the dumps' concentrated heads.
  EXPECT_GE(c.oracle_all, 0.75);
  EXPECT_GE(c.bounds_all, c.oracle_all - 0.06);
}

}  // namespace
}  // namespace kvtier::workload
