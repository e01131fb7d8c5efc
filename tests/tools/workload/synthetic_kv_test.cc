// Each property of the synthetic workload, measured on generated data with plain double
// precision host code: it holds when its knob is on and disappears when it is off.
#include "tools/workload/synthetic_kv.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/dtype.h"

namespace kvtier::workload {
namespace {

constexpr int kPageSize = 16;

SyntheticOptions BaseOptions() {
  SyntheticOptions o;
  o.shape.num_layers = 2;
  o.shape.num_query_heads = 8;
  o.shape.num_kv_heads = 2;
  o.shape.head_dim = 64;
  o.shape.dtype = DType::kBF16;
  o.seed = 7;
  return o;
}

// Every property off: isotropic noise keys, independent queries, i.i.d. values.
SyntheticOptions AllOff() {
  SyntheticOptions o = BaseOptions();
  o.mean_offset.enabled = false;
  o.clusters.enabled = false;
  o.queries.out_of_distribution = false;
  o.sinks.enabled = false;
  o.recency.enabled = false;
  o.drift.enabled = false;
  o.values.cluster_correlated = false;
  return o;
}

std::unique_ptr<SyntheticWorkload> Make(const SyntheticOptions& o) {
  auto w = SyntheticWorkload::Create(o);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? std::move(w).value() : nullptr;
}

// K and V of positions [0, tokens) of one (sequence, layer) as float, [t][kv_head][d].
struct Kv {
  int tokens = 0, heads = 0, dim = 0;
  std::vector<float> k, v;
  const float* key(int t, int h) const { return &k[(static_cast<size_t>(t) * heads + h) * dim]; }
  const float* value(int t, int h) const { return &v[(static_cast<size_t>(t) * heads + h) * dim]; }
};

std::vector<float> ToFloat(DType dtype, const std::vector<uint16_t>& raw) {
  std::vector<float> out(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) out[i] = LoadAsFloat(dtype, raw.data(), i);
  return out;
}

Kv Generate(const SyntheticWorkload& w, SeqId seq, int layer, int tokens) {
  const ModelShape& s = w.options().shape;
  Kv kv{tokens, s.num_kv_heads, s.head_dim, {}, {}};
  std::vector<uint16_t> k(static_cast<size_t>(tokens) * s.num_kv_heads * s.head_dim);
  std::vector<uint16_t> v(k.size());
  EXPECT_TRUE(w.Prompt(seq, layer, tokens, k.data(), v.data()).ok());
  kv.k = ToFloat(s.dtype, k);
  kv.v = ToFloat(s.dtype, v);
  return kv;
}

// [query head][d]
std::vector<float> QueryOf(const SyntheticWorkload& w, SeqId seq, int layer, int64_t position) {
  const ModelShape& s = w.options().shape;
  std::vector<uint16_t> q(static_cast<size_t>(s.num_query_heads) * s.head_dim);
  EXPECT_TRUE(w.Query(seq, layer, position, q.data()).ok());
  return ToFloat(s.dtype, q);
}

double Dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

double Dist2(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += (static_cast<double>(a[i]) - b[i]) * (a[i] - b[i]);
  return s;
}

// Inner products of query `q` with keys 0..position of KV head `h`.
std::vector<double> Scores(const Kv& kv, const float* q, int h, int position) {
  std::vector<double> s(static_cast<size_t>(position) + 1);
  for (int t = 0; t <= position; ++t) s[t] = Dot(q, kv.key(t, h), kv.dim);
  return s;
}

// Softmax weights of query `q` over keys 0..position of KV head `h`.
std::vector<double> Attention(const Kv& kv, const float* q, int h, int position, double scale) {
  std::vector<double> p = Scores(kv, q, h, position);
  const double mx = *std::max_element(p.begin(), p.end());
  double sum = 0;
  for (double& x : p) sum += x = std::exp(scale * (x - mx));
  for (double& x : p) x /= sum;
  return p;
}

std::vector<int> TopIndices(const std::vector<double>& x, int k, bool largest = true) {
  std::vector<int> idx(x.size());
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min<int>(k, static_cast<int>(idx.size()));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int a, int b) { return largest ? x[a] > x[b] : x[a] < x[b]; });
  idx.resize(k);
  return idx;
}

double Overlap(const std::vector<int>& a, const std::vector<int>& b) {
  const std::set<int> sa(a.begin(), a.end());
  int both = 0;
  for (int i : b) both += sa.count(i);
  return static_cast<double>(both) / static_cast<double>(a.size());
}

// ---------------------------------------------------------------- the shared data set

constexpr int kTokens = 8192;
constexpr SeqId kSeq = 3;
constexpr int kLayer = 1;
// Queries at the last positions of the generated range: each attends to 0..position.
std::vector<int> QueryPositions(int count, int stride) {
  std::vector<int> p;
  for (int i = 0; i < count; ++i) p.push_back(kTokens - 1 - i * stride);
  return p;
}

// Average over queries and query heads of `f(weights, kv_head, position)`.
template <typename F>
double MeanOverQueries(const SyntheticWorkload& w, const Kv& kv, const std::vector<int>& positions,
                       F f) {
  const ModelShape& s = w.options().shape;
  double sum = 0;
  int n = 0;
  for (int p : positions) {
    const std::vector<float> q = QueryOf(w, kSeq, kLayer, p);
    for (int qh = 0; qh < s.num_query_heads; ++qh) {
      const int h = qh / s.group_size();
      sum +=
          f(Attention(kv, &q[static_cast<size_t>(qh) * s.head_dim], h, p, w.softmax_scale()), h, p);
      ++n;
    }
  }
  return sum / n;
}

// ---------------------------------------------------------------- keys

// |mean key| / mean |key| over one KV head's keys.
double MeanOffsetShare(const Kv& kv, int h) {
  std::vector<double> mean(kv.dim, 0.0);
  double norms = 0;
  for (int t = 0; t < kv.tokens; ++t) {
    const float* k = kv.key(t, h);
    for (int d = 0; d < kv.dim; ++d) mean[d] += k[d];
    norms += std::sqrt(Dot(k, k, kv.dim));
  }
  double m2 = 0;
  for (double x : mean) m2 += (x / kv.tokens) * (x / kv.tokens);
  return std::sqrt(m2) / (norms / kv.tokens);
}

TEST(SyntheticKvTest, KeysShareAMeanOffset) {
  SyntheticOptions o = BaseOptions();
  // Off, the keys' sample mean is that of the ~85 runs' centres and offsets the range holds
  // (runs of ~96 tokens), ~0.1-0.17 of the key norm, not an offset.
  const Kv on = Generate(*Make(o), kSeq, kLayer, kTokens);
  o.mean_offset.enabled = false;
  const Kv off = Generate(*Make(o), kSeq, kLayer, kTokens);
  for (int h = 0; h < 2; ++h) {
    const double share_on = MeanOffsetShare(on, h), share_off = MeanOffsetShare(off, h);
    std::printf("mean offset share, head %d: on %.3f off %.3f\n", h, share_on, share_off);
    EXPECT_GT(share_on, 0.3);
    EXPECT_LT(share_on, 0.65);
    EXPECT_LT(share_off, 0.2);
  }
}

// Label-free clustering measure: after k-means with C centres (Lloyd, 8 rounds, seeded from
// evenly spaced keys), the mean ratio of a key's distance to its nearest centre to its
// distance to the second nearest. ~1 for structureless data, well below 1 for clusters.
double KMeansDistanceRatio(const Kv& kv, int h, int clusters) {
  const int dim = kv.dim;
  std::vector<float> centres(static_cast<size_t>(clusters) * dim);
  for (int c = 0; c < clusters; ++c) {
    std::copy_n(kv.key(c * (kv.tokens / clusters), h), dim, &centres[c * dim]);
  }
  std::vector<int> own(kv.tokens);
  double ratio = 0;
  for (int round = 0; round < 9; ++round) {
    ratio = 0;
    for (int t = 0; t < kv.tokens; ++t) {
      double best = 1e300, second = 1e300;
      for (int c = 0; c < clusters; ++c) {
        const double d = Dist2(kv.key(t, h), &centres[c * dim], dim);
        if (d < best) {
          second = best;
          best = d;
          own[t] = c;
        } else if (d < second) {
          second = d;
        }
      }
      ratio += std::sqrt(best / second);
    }
    if (round == 8) break;
    std::vector<double> sum(centres.size(), 0.0);
    std::vector<int> count(clusters, 0);
    for (int t = 0; t < kv.tokens; ++t) {
      ++count[own[t]];
      for (int d = 0; d < dim; ++d) sum[own[t] * dim + d] += kv.key(t, h)[d];
    }
    for (int c = 0; c < clusters; ++c) {
      if (count[c] == 0) continue;
      for (int d = 0; d < dim; ++d)
        centres[c * dim + d] = static_cast<float>(sum[c * dim + d] / count[c]);
    }
  }
  return ratio / kv.tokens;
}

TEST(SyntheticKvTest, KeysFormClustersOfTopicRuns) {
  SyntheticOptions o = BaseOptions();
  o.clusters.num_clusters = 32;
  auto w = Make(o);
  const Kv on = Generate(*w, kSeq, kLayer, 4096);
  o.clusters.enabled = false;
  const Kv off = Generate(*Make(o), kSeq, kLayer, 4096);
  const double ratio_on = KMeansDistanceRatio(on, 0, 32);
  const double ratio_off = KMeansDistanceRatio(off, 0, 32);
  // Runs: adjacent tokens share their cluster far more often than chance (1/32).
  int same = 0, labelled = 0;
  for (int t = o.sinks.num_tokens; t + 1 < 4096; ++t) {
    const int a = w->KeyCluster(kSeq, kLayer, 0, t), b = w->KeyCluster(kSeq, kLayer, 0, t + 1);
    ASSERT_GE(a, 0);
    ASSERT_LT(a, 32);
    same += a == b;
    ++labelled;
  }
  const double adjacent_same = static_cast<double>(same) / labelled;
  std::printf("k-means nearest/second distance ratio: on %.3f off %.3f; adjacent same %.3f\n",
              ratio_on, ratio_off, adjacent_same);
  EXPECT_LT(ratio_on, 0.8);
  EXPECT_GT(ratio_off, 0.9);
  EXPECT_GT(adjacent_same, 0.9);
  auto off_w = Make(o);
  EXPECT_EQ(off_w->KeyCluster(kSeq, kLayer, 0, 100), -1);
}

// ---------------------------------------------------------------- queries

// Mean share of a query's 100 top keys by inner product among its 100 nearest keys by L2.
double TopIpNearestL2Overlap(const SyntheticWorkload& w, const Kv& kv) {
  const ModelShape& s = w.options().shape;
  double sum = 0;
  int n = 0;
  for (int p : QueryPositions(8, 97)) {
    const std::vector<float> q = QueryOf(w, kSeq, kLayer, p);
    for (int qh = 0; qh < s.num_query_heads; ++qh) {
      const float* qv = &q[static_cast<size_t>(qh) * s.head_dim];
      const int h = qh / s.group_size();
      std::vector<double> dist(static_cast<size_t>(p) + 1);
      for (int t = 0; t <= p; ++t) dist[t] = Dist2(qv, kv.key(t, h), s.head_dim);
      sum += Overlap(TopIndices(Scores(kv, qv, h, p), 100), TopIndices(dist, 100, false));
      ++n;
    }
  }
  return sum / n;
}

TEST(SyntheticKvTest, QueriesLieOutsideTheKeysDistribution) {
  SyntheticOptions o = BaseOptions();
  auto on = Make(o);
  const double overlap_on = TopIpNearestL2Overlap(*on, Generate(*on, kSeq, kLayer, kTokens));
  o.queries.out_of_distribution = false;
  auto off = Make(o);
  const double overlap_off = TopIpNearestL2Overlap(*off, Generate(*off, kSeq, kLayer, kTokens));
  std::printf("top-100 inner product vs 100 nearest L2 overlap: on %.3f off %.3f\n", overlap_on,
              overlap_off);
  EXPECT_LT(overlap_on, 0.4);
  EXPECT_GT(overlap_off, 0.6);
}

// ---------------------------------------------------------------- sinks and recency

TEST(SyntheticKvTest, FirstTokensAreAttentionSinks) {
  SyntheticOptions o = BaseOptions();
  auto share = [&](const SyntheticOptions& opts) {
    auto w = Make(opts);
    const Kv kv = Generate(*w, kSeq, kLayer, kTokens);
    return MeanOverQueries(*w, kv, QueryPositions(8, 61),
                           [&](const std::vector<double>& a, int, int) {
                             return std::accumulate(a.begin(), a.begin() + o.sinks.num_tokens, 0.0);
                           });
  };
  const double on = share(o);
  o.sinks.enabled = false;
  const double off = share(o);
  const double token_share = static_cast<double>(o.sinks.num_tokens) / kTokens;
  std::printf("attention mass of the first %d tokens (token share %.5f): on %.3f off %.5f\n",
              o.sinks.num_tokens, token_share, on, off);
  EXPECT_GT(on, 100 * token_share);
  EXPECT_GT(on, 0.1);
  EXPECT_LT(off, 5 * token_share);
}

TEST(SyntheticKvTest, RecentKeysScoreHigher) {
  SyntheticOptions o = BaseOptions();
  const int recent = o.recency.window_tokens;
  auto share = [&](const SyntheticOptions& opts) {
    auto w = Make(opts);
    const Kv kv = Generate(*w, kSeq, kLayer, kTokens);
    return MeanOverQueries(*w, kv, QueryPositions(8, 61),
                           [&](const std::vector<double>& a, int, int p) {
                             return std::accumulate(a.begin() + (p + 1 - recent), a.end(), 0.0);
                           });
  };
  const double on = share(o);
  o.recency.enabled = false;
  const double off = share(o);
  const double token_share = static_cast<double>(recent) / kTokens;
  std::printf("attention mass of the last %d tokens (token share %.3f): on %.3f off %.3f\n", recent,
              token_share, on, off);
  EXPECT_GT(on, 4 * token_share);
  EXPECT_LT(off, 2 * token_share);
}

// ---------------------------------------------------------------- needles

TEST(SyntheticKvTest, PlantedNeedleIsItsQuerysTopKey) {
  SyntheticOptions o = BaseOptions();
  o.needles = {
      {kLayer, 0, 1000, kTokens - 1}, {kLayer, 1, 5000, kTokens - 40}, {0, 1, 77, kTokens - 40}};
  auto w = Make(o);
  ASSERT_EQ(w->needles().size(), 3u);
  o.needles.clear();
  auto without = Make(o);
  const ModelShape& s = o.shape;
  for (const Needle& n : w->needles()) {
    for (auto* wl : {w.get(), without.get()}) {
      const Kv kv = Generate(*wl, kSeq, n.layer, kTokens);
      const std::vector<float> q = QueryOf(*wl, kSeq, n.layer, n.query_position);
      for (int j = 0; j < s.group_size(); ++j) {
        const int qh = n.kv_head * s.group_size() + j;
        const std::vector<double> a =
            Attention(kv, &q[static_cast<size_t>(qh) * s.head_dim], n.kv_head,
                      static_cast<int>(n.query_position), wl->softmax_scale());
        const int top = TopIndices(a, 1)[0];
        if (wl == w.get()) {
          EXPECT_EQ(top, n.key_position) << "query head " << qh;
          if (j == 0) {
            std::printf("needle at %lld (layer %d, kv head %d): weight %.3f\n",
                        static_cast<long long>(n.key_position), n.layer, n.kv_head,
                        a[n.key_position]);
          }
        } else {
          EXPECT_NE(top, n.key_position) << "query head " << qh;
          EXPECT_LT(a[n.key_position], 0.01);
        }
      }
    }
  }
  EXPECT_EQ(w->KeyCluster(kSeq, kLayer, 0, 1000), -1);
}

// ---------------------------------------------------------------- drift

// Mean overlap of the top-k keys by attention weight of queries `gap` positions apart.
double TopKeyOverlap(const SyntheticWorkload& w, const Kv& kv, int gap) {
  const ModelShape& s = w.options().shape;
  double sum = 0;
  int n = 0;
  for (int p : QueryPositions(6, 131)) {
    const std::vector<float> qa = QueryOf(w, kSeq, kLayer, p - gap);
    const std::vector<float> qb = QueryOf(w, kSeq, kLayer, p);
    for (int qh = 0; qh < s.num_query_heads; ++qh) {
      const int h = qh / s.group_size();
      // Both over the same keys (0..p - gap), so only the query moves.
      const auto a = Scores(kv, &qa[static_cast<size_t>(qh) * s.head_dim], h, p - gap);
      const auto b = Scores(kv, &qb[static_cast<size_t>(qh) * s.head_dim], h, p - gap);
      sum += Overlap(TopIndices(a, 64), TopIndices(b, 64));
      ++n;
    }
  }
  return sum / n;
}

TEST(SyntheticKvTest, QueriesDriftSlowly) {
  SyntheticOptions o = BaseOptions();
  auto on = Make(o);
  const Kv kv_on = Generate(*on, kSeq, kLayer, kTokens);
  const double adjacent_on = TopKeyOverlap(*on, kv_on, 1);
  const double far_on = TopKeyOverlap(*on, kv_on, 4 * o.drift.steps);
  o.drift.enabled = false;
  auto off = Make(o);
  const Kv kv_off = Generate(*off, kSeq, kLayer, kTokens);
  const double adjacent_off = TopKeyOverlap(*off, kv_off, 1);
  const double far_off = TopKeyOverlap(*off, kv_off, 4 * o.drift.steps);
  std::printf("top-64 key overlap: drift on adjacent %.3f far %.3f; off adjacent %.3f far %.3f\n",
              adjacent_on, far_on, adjacent_off, far_off);
  EXPECT_GT(adjacent_on, 0.6);
  EXPECT_GT(adjacent_on, far_on + 0.3);
  // Off, adjacent queries share only what their positions give them (sinks, recent keys).
  EXPECT_LT(adjacent_off, 0.3);
  EXPECT_GT(adjacent_on, adjacent_off + 0.4);
}

// ---------------------------------------------------------------- values

// Mean |attention output| / rms value norm.
double OutputNormRatio(const SyntheticWorkload& w, const Kv& kv) {
  double value_norm = 0;
  for (int t = 0; t < kv.tokens; ++t) value_norm += Dot(kv.value(t, 0), kv.value(t, 0), kv.dim);
  value_norm = std::sqrt(value_norm / kv.tokens);
  return MeanOverQueries(w, kv, QueryPositions(8, 61),
                         [&](const std::vector<double>& a, int h, int) {
                           std::vector<double> out(kv.dim, 0.0);
                           for (size_t t = 0; t < a.size(); ++t) {
                             for (int d = 0; d < kv.dim; ++d)
                               out[d] += a[t] * kv.value(static_cast<int>(t), h)[d];
                           }
                           double n = 0;
                           for (double x : out) n += x * x;
                           return std::sqrt(n);
                         }) /
         value_norm;
}

TEST(SyntheticKvTest, ValuesGiveAttentionOutputsOfSize) {
  SyntheticOptions o = BaseOptions();
  o.sinks.enabled = false;  // sinks concentrate mass on 4 tokens, which hides the effect
  auto on = Make(o);
  const double ratio_on = OutputNormRatio(*on, Generate(*on, kSeq, kLayer, kTokens));
  o.values.cluster_correlated = false;
  auto off = Make(o);
  const double ratio_off = OutputNormRatio(*off, Generate(*off, kSeq, kLayer, kTokens));
  std::printf("|attention output| / rms |value|: correlated %.3f independent %.3f\n", ratio_on,
              ratio_off);
  EXPECT_GT(ratio_on, 0.4);
  EXPECT_GT(ratio_on, 1.5 * ratio_off);
}

// ---------------------------------------------------------------- realism

struct Captured {
  double oracle = 0, random = 0;
};

// README-style: per KV head, the hot set (first 64 + last 1024 tokens of the query's causal
// context) plus 2% of the context's 16-token pages, chosen by the true page mass summed over
// the group's query heads (oracle) or at random; the share of the exact mass they hold,
// averaged over the group's heads and the queries.
Captured CapturedMass(const SyntheticWorkload& w, const Kv& kv, int sink, int window) {
  const ModelShape& s = w.options().shape;
  const int group = s.group_size();
  std::mt19937 rng(11);
  Captured c;
  int n = 0;
  for (int p : QueryPositions(8, 73)) {
    const std::vector<float> q = QueryOf(w, kSeq, kLayer, p);
    const int context = p + 1;
    const int pages = (context + kPageSize - 1) / kPageSize;
    const int budget = std::max(1, static_cast<int>(std::lround(0.02 * pages)));
    for (int h = 0; h < s.num_kv_heads; ++h) {
      std::vector<std::vector<double>> a(group);
      for (int j = 0; j < group; ++j) {
        a[j] = Attention(kv, &q[static_cast<size_t>(h * group + j) * s.head_dim], h, p,
                         w.softmax_scale());
      }
      auto hot = [&](int t) { return t < sink || t >= context - window; };
      std::vector<double> page_mass(pages, 0.0);
      std::vector<int> candidates;
      for (int pg = 0; pg < pages; ++pg) {
        bool all_hot = true;
        for (int t = pg * kPageSize; t < std::min(context, (pg + 1) * kPageSize); ++t) {
          all_hot = all_hot && hot(t);
          for (int j = 0; j < group; ++j) page_mass[pg] += hot(t) ? 0.0 : a[j][t];
        }
        if (!all_hot) candidates.push_back(pg);
      }
      std::vector<double> cand_mass;
      for (int pg : candidates) cand_mass.push_back(page_mass[pg]);
      std::vector<int> random_pick = candidates;
      std::shuffle(random_pick.begin(), random_pick.end(), rng);
      random_pick.resize(std::min<size_t>(budget, random_pick.size()));
      std::vector<int> oracle_pick;
      for (int i : TopIndices(cand_mass, budget)) oracle_pick.push_back(candidates[i]);
      for (int j = 0; j < group; ++j) {
        double hot_mass = 0;
        for (int t = 0; t < context; ++t) hot_mass += hot(t) ? a[j][t] : 0.0;
        auto picked = [&](const std::vector<int>& pick) {
          double m = hot_mass;
          for (int pg : pick) {
            for (int t = pg * kPageSize; t < std::min(context, (pg + 1) * kPageSize); ++t) {
              m += hot(t) ? 0.0 : a[j][t];
            }
          }
          return m;
        };
        c.oracle += picked(oracle_pick);
        c.random += picked(random_pick);
        ++n;
      }
    }
  }
  c.oracle /= n;
  c.random /= n;
  return c;
}

TEST(SyntheticKvTest, TwoPercentOraclePagesCaptureMostMass) {
  auto on = Make(BaseOptions());
  const Kv kv_on = Generate(*on, kSeq, kLayer, kTokens);
  const Captured with_hot = CapturedMass(*on, kv_on, 64, 1024);
  const Captured pages_only = CapturedMass(*on, kv_on, 0, 0);
  auto off = Make(AllOff());
  const Kv kv_off = Generate(*off, kSeq, kLayer, kTokens);
  const Captured off_hot = CapturedMass(*off, kv_off, 64, 1024);
  const Captured off_pages = CapturedMass(*off, kv_off, 0, 0);
  std::printf(
      "captured mass, hot set + 2%% pages: on oracle %.3f random %.3f; off oracle %.3f random "
      "%.3f\ncaptured mass, 2%% pages only: on oracle %.3f random %.3f; off oracle %.3f random "
      "%.3f\n",
      with_hot.oracle, with_hot.random, off_hot.oracle, off_hot.random, pages_only.oracle,
      pages_only.random, off_pages.oracle, off_pages.random);
  EXPECT_GT(with_hot.oracle, 0.6);
  EXPECT_GT(with_hot.oracle, with_hot.random + 0.2);
  EXPECT_GT(pages_only.oracle, 3 * pages_only.random);
  EXPECT_LT(off_hot.oracle, 0.4);
}

// ---------------------------------------------------------------- determinism

TEST(SyntheticKvTest, SameInputsGiveSameBytesInAnyOrder) {
  SyntheticOptions o = BaseOptions();
  o.shape.dtype = DType::kFP16;
  o.needles = {{0, 1, 300, 700}};
  auto a = Make(o);
  auto b = Make(o);
  const ModelShape& s = o.shape;
  const size_t row = static_cast<size_t>(s.num_kv_heads) * s.head_dim;
  constexpr int kN = 600;
  std::vector<uint16_t> k1(kN * row), v1(kN * row);
  ASSERT_TRUE(a->Prompt(9, 0, kN, k1.data(), v1.data()).ok());
  // The same tokens from another instance, one by one in reverse order, after other calls.
  std::vector<uint16_t> q_first(static_cast<size_t>(s.num_query_heads) * s.head_dim);
  ASSERT_TRUE(b->Query(9, 0, 700, q_first.data()).ok());
  std::vector<uint16_t> k2(kN * row), v2(kN * row), scratch(kN * row);
  ASSERT_TRUE(b->Prompt(4, 1, kN, scratch.data(), scratch.data()).ok());
  for (int t = kN - 1; t >= 0; --t) {
    ASSERT_TRUE(b->DecodeKv(9, 0, t, &k2[t * row], &v2[t * row]).ok());
  }
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(v1, v2);
  // A chunk from the middle equals the same positions of the whole prompt.
  std::vector<uint16_t> k3(100 * row), v3(100 * row);
  ASSERT_TRUE(b->Kv(9, 0, 250, 100, k3.data(), v3.data()).ok());
  EXPECT_TRUE(std::equal(k3.begin(), k3.end(), k1.begin() + 250 * row));
  EXPECT_TRUE(std::equal(v3.begin(), v3.end(), v1.begin() + 250 * row));
  // Queries: same bytes in any order and instance.
  for (int p : {700, 3, 699, 701}) {
    std::vector<uint16_t> qa(q_first.size()), qb(q_first.size());
    ASSERT_TRUE(a->Query(9, 0, p, qa.data()).ok());
    ASSERT_TRUE(b->Query(9, 0, p, qb.data()).ok());
    EXPECT_EQ(qa, qb);
    if (p == 700) {
      EXPECT_EQ(qa, q_first);
    }
  }
  // Other seeds, sequences and layers differ.
  SyntheticOptions other = o;
  other.seed = o.seed + 1;
  auto c = Make(other);
  std::vector<uint16_t> k4(kN * row), v4(kN * row), q4(q_first.size());
  ASSERT_TRUE(c->Prompt(9, 0, kN, k4.data(), v4.data()).ok());
  ASSERT_TRUE(c->Query(9, 0, 700, q4.data()).ok());
  EXPECT_NE(k1, k4);
  EXPECT_NE(v1, v4);
  EXPECT_NE(q_first, q4);
  ASSERT_TRUE(a->Prompt(10, 0, kN, k4.data(), v4.data()).ok());
  EXPECT_NE(k1, k4);
  ASSERT_TRUE(a->Prompt(9, 1, kN, k4.data(), v4.data()).ok());
  EXPECT_NE(k1, k4);
}

TEST(SyntheticKvTest, FillsBf16AndFp16WithFiniteNumbers) {
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    SyntheticOptions o = BaseOptions();
    o.shape.head_dim = 128;
    o.shape.dtype = dtype;
    o.needles = {{0, 0, 10, 20}};
    auto w = Make(o);
    const size_t row = static_cast<size_t>(o.shape.num_kv_heads) * o.shape.head_dim;
    std::vector<uint16_t> k(64 * row), v(64 * row), q(8 * 128);
    ASSERT_TRUE(w->Prompt(1, 0, 64, k.data(), v.data()).ok());
    ASSERT_TRUE(w->Query(1, 0, 20, q.data()).ok());
    for (const auto* buf : {&k, &v, &q}) {
      for (size_t i = 0; i < buf->size(); ++i) {
        ASSERT_TRUE(std::isfinite(LoadAsFloat(dtype, buf->data(), i))) << DTypeName(dtype);
      }
    }
  }
}

// ---------------------------------------------------------------- errors

void ExpectInvalid(const SyntheticOptions& o, const char* field) {
  auto w = SyntheticWorkload::Create(o);
  ASSERT_FALSE(w.ok()) << field;
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find(field), absl::string_view::npos) << w.status();
}

TEST(SyntheticKvTest, BadOptionsAreInvalidArgumentNamingTheField) {
  SyntheticOptions o = BaseOptions();
  o.shape.head_dim = 96;
  ExpectInvalid(o, "shape.head_dim");
  o = BaseOptions();
  o.shape.dtype = DType::kFP32;
  ExpectInvalid(o, "shape.dtype");
  o = BaseOptions();
  o.mean_offset.share = 1.5;
  ExpectInvalid(o, "mean_offset.share");
  o = BaseOptions();
  o.clusters.num_clusters = 0;
  ExpectInvalid(o, "clusters.num_clusters");
  o = BaseOptions();
  o.clusters.mean_run_tokens = 0.5;
  ExpectInvalid(o, "clusters.mean_run_tokens");
  o = BaseOptions();
  o.queries.topics = 100;
  ExpectInvalid(o, "queries.topics");
  o = BaseOptions();
  o.queries.topic_logit = std::nan("");
  ExpectInvalid(o, "queries.topic_logit");
  o = BaseOptions();
  o.sinks.num_tokens = 0;
  ExpectInvalid(o, "sinks.num_tokens");
  o = BaseOptions();
  o.recency.window_tokens = 0;
  ExpectInvalid(o, "recency.window_tokens");
  o = BaseOptions();
  o.drift.steps = 0;
  ExpectInvalid(o, "drift.steps");
  o = BaseOptions();
  o.drift.jitter = -0.1;
  ExpectInvalid(o, "drift.jitter");
  o = BaseOptions();
  o.values.share = 2;
  ExpectInvalid(o, "values.share");
  o = BaseOptions();
  o.softmax_scale = -1;
  ExpectInvalid(o, "softmax_scale");
  o = BaseOptions();
  o.needles = {{5, 0, 10, 20}};
  ExpectInvalid(o, "needles[0].layer");
  o.needles = {{0, 2, 10, 20}};
  ExpectInvalid(o, "needles[0].kv_head");
  o.needles = {{0, 0, 2, 20}};  // a sink
  ExpectInvalid(o, "needles[0].key_position");
  o.needles = {{0, 0, 30, 20}};
  ExpectInvalid(o, "needles[0].query_position");
  o.needles = {{0, 0, 30, 40}, {0, 0, 31, 40}};
  ExpectInvalid(o, "needles[1].query_position");
}

TEST(SyntheticKvTest, BadCallsAreInvalidArgument) {
  auto w = Make(BaseOptions());
  std::vector<uint16_t> buf(8 * 64 * 4);
  EXPECT_EQ(w->Prompt(0, 2, 1, buf.data(), buf.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->Kv(0, 0, -1, 1, buf.data(), buf.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->Prompt(0, 0, 1, nullptr, buf.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(w->Prompt(0, 0, 0, nullptr, nullptr).ok());
  EXPECT_EQ(w->Query(0, -1, 5, buf.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->Query(0, 0, -5, buf.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->Query(0, 0, 5, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::workload
