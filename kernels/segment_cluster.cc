// Host twin of segment clustering (segment_cluster.cu), the checks both share and the
// workspace layout. The steps are numbered as in segment_cluster.h.
#include "kernels/segment_cluster.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace {

template <typename... Parts>
absl::Status Invalid(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("SegmentClusterParams: ", parts...));
}

size_t RoundUp(size_t x, size_t to) { return (x + to - 1) / to * to; }

// fp16 rounding, as the kernel stores unit keys and centroids.
float RoundToHalf(float x) { return FP16ToFloat(FloatToFP16(x)); }

// One segment's state: unit keys x [n, D] and centroids c [k, D], fp16 values held as float.
class Segment {
 public:
  Segment(const SegmentClusterParams& p, int segment)
      : p_(p),
        n_(p.num_tokens[segment]),
        k_(internal::ClusterCount(n_, p.tokens_per_cluster)),
        dim_(p.head_dim) {
    UnitKeys(p.keys[segment]);
  }

  // Steps 2 to 4; writes order (and cluster_of, num_clusters when set) of `segment`.
  void Cluster(int segment) {
    c_.resize(static_cast<size_t>(k_) * dim_);
    for (int j = 0; j < k_; ++j) {
      const float* seed = &x_[static_cast<size_t>(internal::SeedToken(j, n_, k_)) * dim_];
      std::copy(seed, seed + dim_, &c_[static_cast<size_t>(j) * dim_]);
    }
    for (int round = 0; round < p_.iterations; ++round) {
      Assign();
      if (round + 1 == p_.iterations) break;
      Update();
      if (round + 2 < p_.iterations) Repair();
    }
    Output(segment);
  }

 private:
  // Step 1.
  void UnitKeys(const void* keys) {
    x_.assign(static_cast<size_t>(n_) * dim_, 0.0f);
    degenerate_.assign(n_, 1);
    std::vector<float> key(static_cast<size_t>(n_) * dim_);
    std::vector<uint8_t> finite(n_, 1);
    for (int t = 0; t < n_; ++t) {
      for (int d = 0; d < dim_; ++d) {
        const float v = LoadAsFloat(p_.dtype, keys, static_cast<size_t>(t) * p_.key_stride + d);
        key[static_cast<size_t>(t) * dim_ + d] = v;
        if (!std::isfinite(v)) finite[t] = 0;
      }
    }
    std::vector<float> mean(dim_, 0.0f);
    const int num_finite = static_cast<int>(std::count(finite.begin(), finite.end(), 1));
    if (p_.center && num_finite > 0) {
      for (int d = 0; d < dim_; ++d) {
        double sum = 0.0;
        for (int t = 0; t < n_; ++t) {
          if (finite[t]) sum += key[static_cast<size_t>(t) * dim_ + d];
        }
        mean[d] = static_cast<float>(sum / num_finite);
      }
    }
    for (int t = 0; t < n_; ++t) {
      if (!finite[t]) continue;
      float* row = &key[static_cast<size_t>(t) * dim_];
      float norm2 = 0.0f;
      for (int d = 0; d < dim_; ++d) {
        row[d] -= mean[d];
        norm2 += row[d] * row[d];
      }
      if (!(norm2 > 0.0f) || !std::isfinite(norm2)) continue;
      const float norm = std::sqrt(norm2);
      for (int d = 0; d < dim_; ++d)
        x_[static_cast<size_t>(t) * dim_ + d] = RoundToHalf(row[d] / norm);
      degenerate_[t] = 0;
    }
  }

  // sims[j] = x_t . c_j for every centroid j, fp32 sums in channel order (c_t_ = c transposed).
  void Similarities(const float* x, std::vector<float>& sims) const {
    sims.assign(k_, 0.0f);
    for (int d = 0; d < dim_; ++d) {
      const float xd = x[d];
      const float* column = &c_t_[static_cast<size_t>(d) * k_];
      for (int j = 0; j < k_; ++j) sims[j] += xd * column[j];
    }
  }

  void Transpose() {
    c_t_.resize(c_.size());
    for (int j = 0; j < k_; ++j) {
      for (int d = 0; d < dim_; ++d) {
        c_t_[static_cast<size_t>(d) * k_ + j] = c_[static_cast<size_t>(j) * dim_ + d];
      }
    }
  }

  // Step 3a: assignment_ and best_ (the similarity to the chosen centroid), sizes_.
  void Assign() {
    Transpose();
    assignment_.resize(n_);
    best_.resize(n_);
    sizes_.assign(k_, 0);
    std::vector<float> sims;
    for (int t = 0; t < n_; ++t) {
      Similarities(&x_[static_cast<size_t>(t) * dim_], sims);
      int arg = 0;
      for (int j = 1; j < k_; ++j) {
        if (sims[j] > sims[arg]) arg = j;
      }
      assignment_[t] = arg;
      best_[t] = sims[arg];
      ++sizes_[arg];
    }
  }

  // Step 3b.
  void Update() {
    std::vector<float> sums(c_.size(), 0.0f);
    for (int t = 0; t < n_; ++t) {
      float* sum = &sums[static_cast<size_t>(assignment_[t]) * dim_];
      for (int d = 0; d < dim_; ++d) sum[d] += x_[static_cast<size_t>(t) * dim_ + d];
    }
    for (int j = 0; j < k_; ++j) {
      const float* sum = &sums[static_cast<size_t>(j) * dim_];
      float norm2 = 0.0f;
      for (int d = 0; d < dim_; ++d) norm2 += sum[d] * sum[d];
      if (!(norm2 > 0.0f)) continue;
      const float norm = std::sqrt(norm2);
      for (int d = 0; d < dim_; ++d)
        c_[static_cast<size_t>(j) * dim_ + d] = RoundToHalf(sum[d] / norm);
    }
  }

  // Step 3c, after Update: best_ still holds the similarities of the assignment.
  void Repair() {
    if (k_ < 2) return;
    Transpose();
    const int tpc = p_.tokens_per_cluster;
    std::vector<int> smalls, larges;
    std::vector<float> sims;
    for (int j = 0; j < k_; ++j) {
      Similarities(&c_[static_cast<size_t>(j) * dim_], sims);
      int nearest = -1;
      for (int i = 0; i < k_; ++i) {
        if (i != j && (nearest < 0 || sims[i] > sims[nearest])) nearest = i;
      }
      if (internal::IsSmallCluster(sizes_[j], tpc) &&
          internal::RanksBelow(sizes_[j], j, sizes_[nearest], nearest)) {
        smalls.push_back(j);
      }
    }
    // Least similar non-degenerate token of each cluster (the similarity of step a).
    std::vector<int> farthest(k_, -1);
    for (int t = 0; t < n_; ++t) {
      if (degenerate_[t]) continue;
      int& f = farthest[assignment_[t]];
      if (f < 0 || best_[t] < best_[f]) f = t;
    }
    for (int j = 0; j < k_; ++j) {
      if (internal::IsLargeCluster(sizes_[j], tpc) && farthest[j] >= 0) larges.push_back(j);
    }
    std::sort(smalls.begin(), smalls.end(),
              [&](int a, int b) { return sizes_[a] != sizes_[b] ? sizes_[a] < sizes_[b] : a < b; });
    std::sort(larges.begin(), larges.end(),
              [&](int a, int b) { return sizes_[a] != sizes_[b] ? sizes_[a] > sizes_[b] : a < b; });
    const size_t pairs = std::min(smalls.size(), larges.size());
    for (size_t i = 0; i < pairs; ++i) {
      const float* x = &x_[static_cast<size_t>(farthest[larges[i]]) * dim_];
      std::copy(x, x + dim_, &c_[static_cast<size_t>(smalls[i]) * dim_]);
    }
  }

  // Step 4, with the centroids of the last assignment.
  void Output(int segment) {
    Transpose();
    std::vector<int> chain;
    std::vector<uint8_t> visited(k_);
    for (int j = 0; j < k_; ++j) visited[j] = sizes_[j] == 0;
    int current = -1;
    for (int j = 0; j < k_ && current < 0; ++j) {
      if (!visited[j]) current = j;
    }
    std::vector<float> sims;
    while (current >= 0) {
      chain.push_back(current);
      visited[current] = 1;
      Similarities(&c_[static_cast<size_t>(current) * dim_], sims);
      int next = -1;
      for (int j = 0; j < k_; ++j) {
        if (!visited[j] && (next < 0 || sims[j] > sims[next])) next = j;
      }
      current = next;
    }
    std::vector<int> output_id(k_, -1), start(chain.size() + 1, 0);
    for (size_t r = 0; r < chain.size(); ++r) {
      output_id[chain[r]] = static_cast<int>(r);
      start[r + 1] = start[r] + sizes_[chain[r]];
    }
    int32_t* order = p_.order[segment];
    int32_t* cluster_of = p_.cluster_of != nullptr ? p_.cluster_of[segment] : nullptr;
    for (int t = 0; t < n_; ++t) {
      const int id = output_id[assignment_[t]];
      order[start[id]++] = t;
      if (cluster_of != nullptr) cluster_of[t] = id;
    }
    if (p_.num_clusters != nullptr) p_.num_clusters[segment] = static_cast<int32_t>(chain.size());
  }

  const SegmentClusterParams& p_;
  const int n_, k_, dim_;
  std::vector<float> x_, c_, c_t_, best_;
  std::vector<uint8_t> degenerate_;
  std::vector<int32_t> assignment_, sizes_;
};

absl::Status ValidateSegments(const SegmentClusterParams& p) {
  for (int i = 0; i < p.num_segments; ++i) {
    const int32_t n = p.num_tokens[i];
    if (n < 0 || n > p.max_tokens) {
      return Invalid("num_tokens[", i, "] is ", n, "; expected in [0, max_tokens = ", p.max_tokens,
                     "]");
    }
    if (n == 0) continue;
    if (p.keys[i] == nullptr) return Invalid("keys[", i, "] is null");
    if (p.order[i] == nullptr) return Invalid("order[", i, "] is null");
    if (p.cluster_of != nullptr && p.cluster_of[i] == nullptr) {
      return Invalid("cluster_of[", i, "] is null");
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

absl::Status ValidateSegmentClusterShape(const SegmentClusterParams& p) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) {
    return Invalid("dtype is ", DTypeName(p.dtype), "; expected bf16 or fp16");
  }
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256) {
    return Invalid("head_dim is ", p.head_dim, "; expected 64, 128 or 256");
  }
  if (p.num_segments < 0 || p.num_segments > kMaxClusterSegments) {
    return Invalid("num_segments is ", p.num_segments, "; expected in [0, ", kMaxClusterSegments,
                   "]");
  }
  if (p.max_tokens < 1 || p.max_tokens > kMaxSegmentTokens) {
    return Invalid("max_tokens is ", p.max_tokens, "; expected in [1, ", kMaxSegmentTokens, "]");
  }
  if (p.tokens_per_cluster < 1) {
    return Invalid("tokens_per_cluster is ", p.tokens_per_cluster, "; expected >= 1");
  }
  if (ClusterCount(p.max_tokens, p.tokens_per_cluster) > kMaxSegmentClusters) {
    return Invalid("tokens_per_cluster is ", p.tokens_per_cluster, ": max_tokens ", p.max_tokens,
                   " would make ", ClusterCount(p.max_tokens, p.tokens_per_cluster),
                   " clusters; expected at most ", kMaxSegmentClusters);
  }
  if (p.iterations < 1 || p.iterations > 1000) {
    return Invalid("iterations is ", p.iterations, "; expected in [1, 1000]");
  }
  if (p.key_stride < p.head_dim) {
    return Invalid("key_stride is ", p.key_stride, "; expected >= head_dim = ", p.head_dim);
  }
  if (p.num_segments == 0) return absl::OkStatus();
  if (p.keys == nullptr) return Invalid("keys is null");
  if (p.num_tokens == nullptr) return Invalid("num_tokens is null");
  if (p.order == nullptr) return Invalid("order is null");
  return absl::OkStatus();
}

SegmentClusterLayout SegmentClusterWorkspaceLayout(const SegmentClusterParams& p) {
  SegmentClusterLayout l;
  l.tokens_pad = static_cast<int>(RoundUp(p.max_tokens, 128));
  l.tiles = l.tokens_pad / 128;
  l.chunks = l.tokens_pad / 64;
  l.clusters_pad = static_cast<int>(RoundUp(ClusterCount(p.max_tokens, p.tokens_per_cluster), 64));
  const size_t tokens = l.tokens_pad, clusters = l.clusters_pad, dim = p.head_dim;
  size_t at = 0;
  auto place = [&](size_t bytes) {
    const size_t offset = at;
    at = RoundUp(at + bytes, 256);
    return offset;
  };
  l.unit_keys = place(tokens * dim * 2);
  l.centroids = place(clusters * dim * 2);
  l.similarity = place(clusters * clusters * 4);
  l.tile_counts = place(static_cast<size_t>(l.tiles) * clusters * 4);
  l.mean_sums = place(static_cast<size_t>(l.chunks) * dim * 4);
  l.chunk_finite = place(static_cast<size_t>(l.chunks) * 4);
  l.degenerate = place(tokens);
  l.assignment = place(tokens * 4);
  l.tile_rank = place(tokens * 4);
  l.members = place(tokens * 4);
  l.sizes = place(clusters * 4);
  l.starts = place(clusters * 4);
  l.nearest = place(clusters * 4);
  l.chain_start = place(clusters * 4);
  l.output_id = place(clusters * 4);
  l.farthest = place(clusters * 8);
  l.segment_bytes = at;
  return l;
}

}  // namespace internal

size_t SegmentClusterWorkspaceBytes(const SegmentClusterParams& params) {
  SegmentClusterParams p = params;
  p.num_segments = 0;  // sizes only: no pointers needed
  if (!internal::ValidateSegmentClusterShape(p).ok() || params.num_segments < 0) return 0;
  return static_cast<size_t>(params.num_segments) *
         internal::SegmentClusterWorkspaceLayout(p).segment_bytes;
}

absl::Status ReferenceSegmentCluster(const SegmentClusterParams& params) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateSegmentClusterShape(params));
  if (params.num_segments == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(ValidateSegments(params));
  tbb::parallel_for(tbb::blocked_range<int>(0, params.num_segments, 1), [&](const auto& range) {
    for (int i = range.begin(); i < range.end(); ++i) {
      if (params.num_tokens[i] == 0) {
        if (params.num_clusters != nullptr) params.num_clusters[i] = 0;
        continue;
      }
      Segment segment(params, i);
      segment.Cluster(i);
    }
  });
  return absl::OkStatus();
}

}  // namespace kvtier
