// Host twin of segment clustering (segment_cluster.h): planted clusters are found exactly,
// every output has the documented form (a permutation, clusters contiguous and numbered in
// order, tokens ascending in a cluster) for any size, the chain follows similarity, and bad
// parameters are rejected before anything is written. Outputs are poisoned before each run,
// with guard entries past each segment's end that must stay poisoned.
#include "kernels/segment_cluster.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "tests/testing/half_bits.h"
#include "tests/testing/poison.h"

namespace kvtier {
namespace {

using testing_util::IsPoisoned;
using testing_util::Poisoned;

constexpr int kGuard = 4;  // poisoned entries after each segment's outputs

using testing_util::Bits;

// Segments stored as the KV heads of prefill rows [rows, heads, D]: segment h's token t is
// row t, head h (key_stride = heads * D).
struct Batch {
  Batch(DType dtype, int dim, std::vector<int32_t> tokens)
      : dtype(dtype), dim(dim), heads(static_cast<int>(tokens.size())), n(std::move(tokens)) {
    rows = std::max(1, *std::max_element(n.begin(), n.end()));
    keys.assign(static_cast<size_t>(rows) * heads * dim, Bits(dtype, 0.0f));
    order.resize(heads);
    cluster_of.resize(heads);
  }

  void Set(int head, int t, int d, float x) {
    keys[(static_cast<size_t>(t) * heads + head) * dim + d] = Bits(dtype, x);
  }

  // Params over fresh poisoned outputs.
  SegmentClusterParams Params(int max_tokens = 0) {
    key_ptrs.clear();
    order_ptrs.clear();
    cluster_ptrs.clear();
    for (int h = 0; h < heads; ++h) {
      order[h].assign(n[h] + kGuard, Poisoned<int32_t>());
      cluster_of[h].assign(n[h] + kGuard, Poisoned<int32_t>());
      key_ptrs.push_back(keys.data() + static_cast<size_t>(h) * dim);
      order_ptrs.push_back(order[h].data());
      cluster_ptrs.push_back(cluster_of[h].data());
    }
    num_clusters.assign(heads, Poisoned<int32_t>());
    SegmentClusterParams p;
    p.dtype = dtype;
    p.head_dim = dim;
    p.num_segments = heads;
    p.max_tokens = max_tokens > 0 ? max_tokens : rows;
    p.keys = key_ptrs.data();
    p.key_stride = static_cast<int64_t>(heads) * dim;
    p.num_tokens = n.data();
    p.order = order_ptrs.data();
    p.cluster_of = cluster_ptrs.data();
    p.num_clusters = num_clusters.data();
    return p;
  }

  DType dtype;
  int dim, heads, rows;
  std::vector<int32_t> n;
  std::vector<uint16_t> keys;
  std::vector<std::vector<int32_t>> order, cluster_of;
  std::vector<int32_t> num_clusters;
  std::vector<const void*> key_ptrs;
  std::vector<int32_t*> order_ptrs, cluster_ptrs;
};

// The documented form of one segment's outputs.
void ExpectForm(const Batch& b, int h, int tokens_per_cluster = 16) {
  SCOPED_TRACE(testing::Message() << "segment " << h << " n " << b.n[h]);
  const int n = b.n[h];
  const std::vector<int32_t>& order = b.order[h];
  const std::vector<int32_t>& cluster_of = b.cluster_of[h];
  const int clusters = b.num_clusters[h];
  for (int i = n; i < n + kGuard; ++i) {
    ASSERT_TRUE(IsPoisoned(order[i])) << "order written past n at " << i;
    ASSERT_TRUE(IsPoisoned(cluster_of[i])) << "cluster_of written past n at " << i;
  }
  if (n == 0) {
    ASSERT_EQ(clusters, 0);
    return;
  }
  ASSERT_GE(clusters, 1);
  ASSERT_LE(clusters, (n + tokens_per_cluster - 1) / tokens_per_cluster);
  std::vector<int> seen(n, 0);
  for (int p = 0; p < n; ++p) {
    ASSERT_GE(order[p], 0) << "position " << p;
    ASSERT_LT(order[p], n) << "position " << p;
    ASSERT_EQ(seen[order[p]]++, 0) << "token " << order[p] << " twice";
  }
  std::vector<int> used(clusters, 0);
  for (int p = 0; p < n; ++p) {
    const int id = cluster_of[order[p]];
    ASSERT_GE(id, 0) << "token " << order[p];
    ASSERT_LT(id, clusters) << "token " << order[p];
    ++used[id];
    if (p > 0) {
      const int previous = cluster_of[order[p - 1]];
      ASSERT_LE(previous, id) << "cluster ids not in order at position " << p;
      if (previous == id) {
        ASSERT_LT(order[p - 1], order[p]) << "not ascending at " << p;
      }
    }
  }
  for (int id = 0; id < clusters; ++id) ASSERT_GT(used[id], 0) << "cluster " << id << " empty";
}

// Planted clusters in segment h: `clusters` random unit directions (scaled by 2, plus a
// shared offset), `size` tokens each with noise of norm ~`noise`, tokens in random order.
// Returns each token's planted cluster.
std::vector<int> Plant(Batch& b, int h, int clusters, int size, float noise, float offset,
                       std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const int dim = b.dim;
  std::vector<float> dirs(static_cast<size_t>(clusters) * dim), shift(dim);
  for (auto& v : shift) v = offset * normal(rng);
  for (int c = 0; c < clusters; ++c) {
    double norm2 = 0.0;
    for (int d = 0; d < dim; ++d) norm2 += std::pow(dirs[c * dim + d] = normal(rng), 2);
    for (int d = 0; d < dim; ++d) dirs[c * dim + d] /= static_cast<float>(std::sqrt(norm2));
  }
  std::vector<int> label(clusters * size);
  for (size_t t = 0; t < label.size(); ++t) label[t] = static_cast<int>(t) / size;
  std::shuffle(label.begin(), label.end(), rng);
  const float sigma = noise / std::sqrt(static_cast<float>(dim));
  for (size_t t = 0; t < label.size(); ++t) {
    for (int d = 0; d < dim; ++d) {
      b.Set(h, static_cast<int>(t), d,
            2.0f * (dirs[label[t] * dim + d] + sigma * normal(rng)) + shift[d]);
    }
  }
  return label;
}

// cluster_of induces exactly the planted partition.
void ExpectPartition(const std::vector<int>& label, const std::vector<int32_t>& cluster_of) {
  std::map<int, int> id_of_label, label_of_id;
  for (size_t t = 0; t < label.size(); ++t) {
    const auto [a, fresh_a] = id_of_label.emplace(label[t], cluster_of[t]);
    ASSERT_EQ(a->second, cluster_of[t]) << "planted cluster " << label[t] << " split";
    const auto [b, fresh_b] = label_of_id.emplace(cluster_of[t], label[t]);
    ASSERT_EQ(b->second, label[t]) << "output cluster " << cluster_of[t] << " mixes two";
  }
}

TEST(SegmentClusterReferenceTest, RecoversPlantedClusters) {
  uint32_t seed = 1;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128}) {
      // 16 tokens a planted cluster (tokens_per_cluster), so k equals the planted count.
      const std::vector<int> planted = {1, 2, 16, 40, 63};
      std::vector<int32_t> tokens;
      for (int c : planted) tokens.push_back(16 * c);
      Batch b(dtype, dim, tokens);
      std::mt19937 rng(seed++);
      std::vector<std::vector<int>> labels;
      for (size_t h = 0; h < planted.size(); ++h) {
        labels.push_back(Plant(b, static_cast<int>(h), planted[h], 16, 0.1f, 0.5f, rng));
      }
      SegmentClusterParams p = b.Params();
      ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
      for (size_t h = 0; h < planted.size(); ++h) {
        SCOPED_TRACE(testing::Message()
                     << DTypeName(dtype) << " D " << dim << " planted " << planted[h]);
        ExpectForm(b, static_cast<int>(h));
        EXPECT_EQ(b.num_clusters[h], planted[h]);
        ExpectPartition(labels[h], b.cluster_of[h]);
      }
    }
  }
}

TEST(SegmentClusterReferenceTest, CentringRemovesASharedOffset) {
  // An offset 10 times the keys' spread: uncentred, every cosine is near 1.
  Batch b(DType::kBF16, 128, {32 * 16});
  std::mt19937 rng(7);
  const std::vector<int> label = Plant(b, 0, 32, 16, 0.1f, 20.0f, rng);
  SegmentClusterParams p = b.Params();
  ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
  ExpectForm(b, 0);
  ExpectPartition(label, b.cluster_of[0]);
}

TEST(SegmentClusterReferenceTest, OutputHasTheFormForAnySize) {
  uint32_t seed = 100;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      // Mixed sizes in one batch, random keys sharing a mean offset.
      Batch b(dtype, dim, {0, 1, 15, 16, 17, 1000, 2, 33});
      std::mt19937 rng(seed++);
      std::normal_distribution<float> normal;
      std::vector<float> shift(dim);
      for (auto& v : shift) v = 2.0f * normal(rng);
      for (int h = 0; h < b.heads; ++h) {
        for (int t = 0; t < b.n[h]; ++t) {
          for (int d = 0; d < dim; ++d) b.Set(h, t, d, shift[d] + normal(rng));
        }
      }
      for (bool center : {true, false}) {
        SegmentClusterParams p = b.Params();
        p.center = center;
        ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
        for (int h = 0; h < b.heads; ++h) ExpectForm(b, h);
        EXPECT_EQ(b.num_clusters[1], 1);  // one token, one cluster
      }
    }
  }
}

TEST(SegmentClusterReferenceTest, FullSegment) {
  Batch b(DType::kBF16, 64, {kMaxSegmentTokens});
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (int t = 0; t < kMaxSegmentTokens; ++t) {
    for (int d = 0; d < 64; ++d) b.Set(0, t, d, 1.0f + normal(rng));
  }
  SegmentClusterParams p = b.Params();
  ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
  ExpectForm(b, 0);
  // Most clusters survive: 512 seeds, ~16 tokens each.
  EXPECT_GT(b.num_clusters[0], 400);
}

TEST(SegmentClusterReferenceTest, OtherClusterSizesAndIterations) {
  Batch b(DType::kFP16, 64, {500, 77});
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (int h = 0; h < 2; ++h) {
    for (int t = 0; t < b.n[h]; ++t) {
      for (int d = 0; d < 64; ++d) b.Set(h, t, d, normal(rng));
    }
  }
  for (int tokens_per_cluster : {1, 5, 64, 1000}) {
    for (int iterations : {1, 2, 3, 25}) {
      SCOPED_TRACE(testing::Message()
                   << "tokens_per_cluster " << tokens_per_cluster << " iterations " << iterations);
      SegmentClusterParams p = b.Params();
      p.tokens_per_cluster = tokens_per_cluster;
      p.iterations = iterations;
      ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
      ExpectForm(b, 0, tokens_per_cluster);
      ExpectForm(b, 1, tokens_per_cluster);
      if (tokens_per_cluster == 1000) {
        EXPECT_EQ(b.num_clusters[0], 1);
      }
    }
  }
}

TEST(SegmentClusterReferenceTest, ChainFollowsSimilarity) {
  // Twelve clusters along a great circle, 0.25 rad apart, tokens in random order: the chain
  // walks the arc, so consecutive output clusters are arc neighbours except at most once
  // (greedy from an inner cluster runs to one end, then jumps back).
  const int dim = 128, clusters = 12;
  Batch b(DType::kBF16, dim, {clusters * 16});
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> u(dim), v(dim);
  for (auto& x : u) x = normal(rng);
  for (auto& x : v) x = normal(rng);
  auto normalise = [&](std::vector<float>& w) {
    double s = 0.0;
    for (float x : w) s += x * x;
    for (float& x : w) x /= static_cast<float>(std::sqrt(s));
  };
  normalise(u);
  double dot = 0.0;
  for (int d = 0; d < dim; ++d) dot += u[d] * v[d];
  for (int d = 0; d < dim; ++d) v[d] -= static_cast<float>(dot) * u[d];
  normalise(v);
  std::vector<int> label(clusters * 16);
  for (size_t t = 0; t < label.size(); ++t) label[t] = static_cast<int>(t) / 16;
  std::shuffle(label.begin(), label.end(), rng);
  for (size_t t = 0; t < label.size(); ++t) {
    const float angle = 0.25f * label[t];
    for (int d = 0; d < dim; ++d) {
      const float x = std::cos(angle) * u[d] + std::sin(angle) * v[d];
      b.Set(0, static_cast<int>(t), d, x + 0.02f / std::sqrt(128.0f) * normal(rng));
    }
  }
  SegmentClusterParams p = b.Params();
  p.center = false;
  ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
  ExpectForm(b, 0);
  ExpectPartition(label, b.cluster_of[0]);
  std::vector<int> arc_of_id(clusters);
  for (size_t t = 0; t < label.size(); ++t) arc_of_id[b.cluster_of[0][t]] = label[t];
  int jumps = 0;
  for (int id = 1; id < clusters; ++id) jumps += std::abs(arc_of_id[id] - arc_of_id[id - 1]) != 1;
  EXPECT_LE(jumps, 1);
}

TEST(SegmentClusterReferenceTest, NonFiniteAndDegenerateKeysStillGiveAPermutation) {
  const int dim = 64;
  Batch b(DType::kFP16, dim, {300, 50, 40, 20});
  std::mt19937 rng(13);
  std::normal_distribution<float> normal;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (int t = 0; t < 300; ++t) {  // a few NaN and Inf tokens among random ones
    for (int d = 0; d < dim; ++d) {
      b.Set(0, t, d, t % 7 == 0 && d == 3 ? nan : (t % 11 == 0 && d == 5 ? inf : normal(rng)));
    }
  }
  for (int t = 0; t < 50; ++t) {  // every token NaN
    for (int d = 0; d < dim; ++d) b.Set(1, t, d, nan);
  }
  for (int t = 0; t < 40; ++t) {  // equal keys: centred, all zero
    for (int d = 0; d < dim; ++d) b.Set(2, t, d, 0.5f);
  }
  for (int t = 0; t < 20; ++t) {  // near fp16's largest value
    for (int d = 0; d < dim; ++d) b.Set(3, t, d, (t % 2 ? 60000.0f : -60000.0f) * (d % 3 - 1));
  }
  // bf16 keys whose squares overflow fp32: degenerate, except the small ones.
  Batch big(DType::kBF16, dim, {30});
  for (int t = 0; t < 30; ++t) {
    for (int d = 0; d < dim; ++d) big.Set(0, t, d, (t % 3 ? 1e30f : 1.0f) * normal(rng));
  }
  for (bool center : {true, false}) {
    SegmentClusterParams p = b.Params();
    p.center = center;
    ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
    for (int h = 0; h < b.heads; ++h) ExpectForm(b, h);
    p = big.Params();
    p.center = center;
    ASSERT_TRUE(ReferenceSegmentCluster(p).ok());
    ExpectForm(big, 0);
  }
}

TEST(SegmentClusterReferenceTest, RejectsBadParametersNamingTheField) {
  Batch b(DType::kBF16, 64, {20, 10});
  auto expect_invalid = [&](SegmentClusterParams p, const std::string& field) {
    const absl::Status status = ReferenceSegmentCluster(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field << ": " << status;
    EXPECT_NE(std::string(status.message()).find(field), std::string::npos) << status;
    for (int h = 0; h < b.heads; ++h) {
      for (int32_t x : b.order[h]) ASSERT_TRUE(IsPoisoned(x)) << field << ": order written";
      for (int32_t x : b.cluster_of[h]) ASSERT_TRUE(IsPoisoned(x)) << field << ": written";
    }
    for (int32_t x : b.num_clusters) ASSERT_TRUE(IsPoisoned(x)) << field << ": written";
  };
  SegmentClusterParams p = b.Params();
  p.dtype = DType::kFP32;
  expect_invalid(p, "dtype");
  p = b.Params();
  p.head_dim = 96;
  expect_invalid(p, "head_dim");
  p = b.Params();
  p.num_segments = -1;
  expect_invalid(p, "num_segments");
  p = b.Params();
  p.max_tokens = kMaxSegmentTokens + 1;
  expect_invalid(p, "max_tokens");
  p = b.Params();
  p.max_tokens = 0;
  expect_invalid(p, "max_tokens");
  p = b.Params();
  p.tokens_per_cluster = 0;
  expect_invalid(p, "tokens_per_cluster");
  p = b.Params(kMaxSegmentTokens);
  p.tokens_per_cluster = 4;  // 2048 clusters
  expect_invalid(p, "tokens_per_cluster");
  p = b.Params();
  p.iterations = 0;
  expect_invalid(p, "iterations");
  p = b.Params();
  p.key_stride = 63;
  expect_invalid(p, "key_stride");
  p = b.Params();
  p.keys = nullptr;
  expect_invalid(p, "keys");
  p = b.Params();
  p.num_tokens = nullptr;
  expect_invalid(p, "num_tokens");
  p = b.Params();
  p.order = nullptr;
  expect_invalid(p, "order");
  // Per-segment entries (the twin checks them; the kernel clamps num_tokens).
  p = b.Params(15);
  expect_invalid(p, "num_tokens[0]");
  p = b.Params();
  b.key_ptrs[1] = nullptr;
  expect_invalid(p, "keys[1]");
  p = b.Params();
  b.order_ptrs[1] = nullptr;
  expect_invalid(p, "order[1]");
  p = b.Params();
  b.cluster_ptrs[0] = nullptr;
  expect_invalid(p, "cluster_of[0]");
  // No segments: nothing to do, OK.
  p = b.Params();
  p.num_segments = 0;
  EXPECT_TRUE(ReferenceSegmentCluster(p).ok());
}

TEST(SegmentClusterReferenceTest, WorkspaceBytes) {
  SegmentClusterParams p;
  p.head_dim = 128;
  p.max_tokens = kMaxSegmentTokens;
  p.key_stride = 1024;
  p.num_segments = 8;
  const size_t bytes = SegmentClusterWorkspaceBytes(p);
  EXPECT_GT(bytes, 8 * (size_t{3} << 20));  // ~3.4 MiB a segment, as documented
  EXPECT_LT(bytes, 8 * (size_t{7} << 21));
  EXPECT_EQ(bytes % 256, 0u);
  p.num_segments = 16;
  EXPECT_EQ(SegmentClusterWorkspaceBytes(p), 2 * bytes);
  p.head_dim = 80;
  EXPECT_EQ(SegmentClusterWorkspaceBytes(p), 0u);
  p.head_dim = 128;
  p.tokens_per_cluster = 2;
  EXPECT_EQ(SegmentClusterWorkspaceBytes(p), 0u);
}

}  // namespace
}  // namespace kvtier
