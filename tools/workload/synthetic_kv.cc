#include "tools/workload/synthetic_kv.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>
#include <numeric>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "kernels/base/dtype.h"

namespace kvtier::workload {
namespace {

// Recency planes and their frequencies as multiples of pi / window_tokens: unevenly spaced,
// so the cosines do not realign soon after the window; eight planes keep the far-away
// oscillation (std ~ peak / sqrt(2 * planes)) small.
constexpr int kPlanes = 8;
constexpr std::array<double, kPlanes> kPlaneFrequency = {1.0,  0.85, 0.72, 0.61,
                                                         0.52, 0.44, 0.37, 0.31};
// Special directions: mean offset u, sink z, then the recency planes' 2 * kPlanes vectors.
constexpr int kMeanDir = 0;
constexpr int kSinkDir = 1;
constexpr int kFirstPlaneDir = 2;
constexpr int kSpecialDirs = 2 + 2 * kPlanes;
// Share of the keys' non-offset variance reserved for the recency planes.
constexpr double kRecencyVarianceShare = 0.1;

// Stream tags: each kind of random draw has its own counter-based stream.
enum Tag : uint64_t {
  kTagHead = 1,
  kTagNeedle,
  kTagRunBoundary,
  kTagRunCluster,
  kTagToken,
  kTagAnchor,
  kTagJitter,
};

uint64_t Mix(uint64_t x) {  // SplitMix64's finaliser: a bijection with good avalanche
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// The seed of one stream, from the workload seed and up to five coordinates.
uint64_t StreamSeed(uint64_t seed, uint64_t tag, uint64_t a = 0, uint64_t b = 0, uint64_t c = 0,
                    uint64_t d = 0, uint64_t e = 0) {
  uint64_t h = Mix(seed ^ 0x6A09E667F3BCC909ull);
  for (uint64_t x : {tag, a, b, c, d, e}) h = Mix(h ^ Mix(x + 0x9E3779B97F4A7C15ull));
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    state_ += 0x9E3779B97F4A7C15ull;
    return Mix(state_);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1p-53; }  // [0, 1)
  // Approximately standard normal: the sum of four 16-bit uniforms, centred and scaled to
  // unit variance (Irwin-Hall); one 64-bit draw each, which keeps prompt generation fast.
  float Gaussian() {
    const uint64_t x = Next();
    const uint32_t sum =
        static_cast<uint32_t>(x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
    constexpr float kScale = 1.7320508f / 65536.0f;  // sqrt(3) / 2^16
    return (static_cast<float>(sum) + 2.0f - 131072.0f) * kScale;
  }

 private:
  uint64_t state_;
};

double Dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

void Axpy(float alpha, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

class Problems {
 public:
  template <typename T>
  void Add(absl::string_view field, const T& value, absl::string_view allowed) {
    problems_.push_back(absl::StrCat(field, " = ", value, ": ", allowed));
  }
  absl::Status ToStatus() const {
    if (problems_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("invalid synthetic workload options: ", absl::StrJoin(problems_, "; ")));
  }

 private:
  std::vector<std::string> problems_;
};

bool InRange(double x, double lo, double hi) { return std::isfinite(x) && x >= lo && x <= hi; }

absl::Status Validate(const SyntheticOptions& o) {
  Problems p;
  if (absl::Status s = ValidateModelShape(o.shape); !s.ok()) {
    p.Add("shape", "{...}", s.message());
  }
  if (!std::isfinite(o.softmax_scale) || o.softmax_scale < 0) {
    p.Add("softmax_scale", o.softmax_scale, "must be >= 0 (0: 1 / sqrt(head_dim))");
  }
  if (!InRange(o.mean_offset.share, 0, 0.95)) {
    p.Add("mean_offset.share", o.mean_offset.share, "must be in [0, 0.95]");
  }
  if (o.clusters.num_clusters < 1 || o.clusters.num_clusters > 4096) {
    p.Add("clusters.num_clusters", o.clusters.num_clusters, "must be in [1, 4096]");
  }
  if (!InRange(o.clusters.share, 0, 0.95)) {
    p.Add("clusters.share", o.clusters.share, "must be in [0, 0.95]");
  }
  if (!InRange(o.clusters.run_share, 0, 1)) {
    p.Add("clusters.run_share", o.clusters.run_share, "must be in [0, 1]");
  }
  if (!InRange(o.key_rms, 1e-3, 1e3)) p.Add("key_rms", o.key_rms, "must be in [0.001, 1000]");
  if (!InRange(o.clusters.mean_run_tokens, 1, 1e9)) {
    p.Add("clusters.mean_run_tokens", o.clusters.mean_run_tokens, "must be >= 1");
  }
  if (!InRange(o.queries.offset_jitter, 0, 1)) {
    p.Add("queries.offset_jitter", o.queries.offset_jitter, "must be in [0, 1]");
  }
  if (o.queries.topics < 1 || o.queries.topics > std::max(1, o.clusters.num_clusters)) {
    p.Add("queries.topics", o.queries.topics,
          absl::StrCat("must be in [1, clusters.num_clusters = ", o.clusters.num_clusters, "]"));
  }
  if (!InRange(o.queries.topic_logit, 0, 1e3)) {
    p.Add("queries.topic_logit", o.queries.topic_logit, "must be in [0, 1000]");
  }
  if (!InRange(o.queries.noise_logit, 0, 1e3)) {
    p.Add("queries.noise_logit", o.queries.noise_logit, "must be in [0, 1000]");
  }
  if (o.sinks.num_tokens < 1 || o.sinks.num_tokens > 4096) {
    p.Add("sinks.num_tokens", o.sinks.num_tokens, "must be in [1, 4096]");
  }
  if (!InRange(o.sinks.logit, 0, 1e3)) p.Add("sinks.logit", o.sinks.logit, "must be in [0, 1000]");
  if (!InRange(o.recency.logit, 0, 1e3)) {
    p.Add("recency.logit", o.recency.logit, "must be in [0, 1000]");
  }
  if (o.recency.window_tokens < 1) {
    p.Add("recency.window_tokens", o.recency.window_tokens, "must be >= 1");
  }
  if (o.drift.steps < 1) p.Add("drift.steps", o.drift.steps, "must be >= 1");
  if (!InRange(o.drift.jitter, 0, 1)) p.Add("drift.jitter", o.drift.jitter, "must be in [0, 1]");
  if (!InRange(o.values.share, 0, 1)) p.Add("values.share", o.values.share, "must be in [0, 1]");
  if (!InRange(o.needle_logit, 0, 1e3)) {
    p.Add("needle_logit", o.needle_logit, "must be in [0, 1000]");
  }
  const int64_t first_key = o.sinks.enabled ? o.sinks.num_tokens : 0;
  for (size_t i = 0; i < o.needles.size(); ++i) {
    const Needle& n = o.needles[i];
    const std::string f = absl::StrCat("needles[", i, "].");
    if (n.layer < 0 || n.layer >= o.shape.num_layers) {
      p.Add(f + "layer", n.layer, absl::StrCat("must be in [0, ", o.shape.num_layers, ")"));
    }
    if (n.kv_head < 0 || n.kv_head >= o.shape.num_kv_heads) {
      p.Add(f + "kv_head", n.kv_head, absl::StrCat("must be in [0, ", o.shape.num_kv_heads, ")"));
    }
    if (n.key_position < first_key) {
      p.Add(f + "key_position", n.key_position,
            absl::StrCat("must be >= ", first_key, " (not a sink)"));
    }
    if (n.query_position <= n.key_position) {
      p.Add(f + "query_position", n.query_position,
            absl::StrCat("must be > key_position (", n.key_position, ")"));
    }
    for (size_t j = 0; j < i; ++j) {
      const Needle& m = o.needles[j];
      if (m.layer != n.layer || m.kv_head != n.kv_head) continue;
      if (m.key_position == n.key_position) {
        p.Add(f + "key_position", n.key_position, absl::StrCat("repeats needles[", j, "]'s"));
      }
      if (m.query_position == n.query_position) {
        p.Add(f + "query_position", n.query_position, absl::StrCat("repeats needles[", j, "]'s"));
      }
    }
  }
  return p.ToStatus();
}

}  // namespace

// Directions of one (layer, KV head), shared by every sequence.
struct SyntheticWorkload::Head {
  std::vector<float> special;        // [kSpecialDirs, D], distinct unit coordinate vectors
  std::vector<uint8_t> content;      // [D], 1 for the channels outside `special`
  std::vector<float> centres;        // [C, D], unit, orthogonal to `special`
  std::vector<float> value_centres;  // [C, D], unit variance per element
  struct Planted {
    int needle = 0;                // index into options.needles
    std::vector<float> direction;  // unit, orthogonal to `special`
    std::vector<float> value;
  };
  std::vector<Planted> needles;
};

namespace {

// Magnitudes derived from the options, in the units of the model in the header (expected
// key norm sqrt(D)).
struct Magnitudes {
  float mean = 0;          // m: length of the shared offset
  float jitter = 0;        // j: std of the offset length per token
  float equal_norm2 = 0;   // in-distribution queries: every key's squared norm
  float centre = 0;        // r: centre length (0 when clusters are off)
  float noise = 0;         // per-content-channel std of key content besides the centre
  float run = 0;           // ... of it, the per-channel std of the run offset
  float token = 0;         // ... and of the per-token noise
  float plane = 0;         // A: key amplitude per recency plane (0 when off)
  float sink_key = 0;      // S: sink keys' length along z
  float sink_query = 0;    // b: queries' length along z (0 when sinks are off)
  float plane_query = 0;   // B: query amplitude per recency plane (0 when off)
  float topic = 0;         // a: query length per unit topic weight
  float query_noise = 0;   // g: per-element std of query noise in the content space
  float needle_key = 0;    // needle keys' length along their direction
  float needle_query = 0;  // needle queries' length along it
};

Magnitudes ComputeMagnitudes(const SyntheticOptions& o, float scale) {
  const double d = o.shape.head_dim;
  const double norm2 = o.key_rms * o.key_rms * d;  // expected squared key norm
  Magnitudes g;
  g.mean = o.mean_offset.enabled ? static_cast<float>(o.mean_offset.share * std::sqrt(norm2)) : 0;
  // Reserved whether or not queries are out of distribution, so that the toggle leaves
  // attention unchanged.
  g.jitter = static_cast<float>(o.queries.offset_jitter * std::sqrt(norm2));
  // What the offset leaves of the key's variance; at least a tenth so content never vanishes.
  const double rest =
      std::max(0.1 * norm2, norm2 - double{g.mean} * g.mean - double{g.jitter} * g.jitter);
  const double content = (1.0 - kRecencyVarianceShare) * rest;
  // The nominal centre length is used by queries whether or not keys have clusters, so that
  // switching clusters off changes the keys only.
  const double centre_nominal = std::sqrt(o.clusters.share * content);
  g.centre = o.clusters.enabled ? static_cast<float>(centre_nominal) : 0.0f;
  // The rest of the content, spread over the content channels: per-channel std of the run
  // offset and of the token noise.
  const double content_dims = d - kSpecialDirs;
  const double spread = (1.0 - o.clusters.share) * content / content_dims;
  g.noise = static_cast<float>(std::sqrt(spread));
  const double run_share = o.clusters.enabled ? o.clusters.run_share : 0.0;
  g.run = static_cast<float>(std::sqrt(run_share * spread));
  g.token = static_cast<float>(std::sqrt((1.0 - run_share) * spread));
  g.plane = o.recency.enabled
                ? static_cast<float>(std::sqrt(kRecencyVarianceShare * rest / kPlanes))
                : 0.0f;
  g.plane_query =
      o.recency.enabled ? static_cast<float>(o.recency.logit / (scale * g.plane * kPlanes)) : 0.0f;
  g.sink_key = static_cast<float>(std::sqrt(content));
  g.sink_query = o.sinks.enabled ? static_cast<float>(o.sinks.logit / (scale * g.sink_key)) : 0.0f;
  g.topic = static_cast<float>(o.queries.topic_logit / (scale * std::max(centre_nominal, 1e-3)));
  g.query_noise = static_cast<float>(
      o.queries.noise_logit / (scale * std::max<double>(g.noise, 1e-3) * std::sqrt(content_dims)));
  g.needle_key = static_cast<float>(std::sqrt(content));
  g.equal_norm2 = static_cast<float>(g.mean > 0 ? norm2 : 2.0 * rest);
  g.needle_query = static_cast<float>(o.needle_logit / (scale * g.needle_key));
  return g;
}

// Removes the special directions' components from `x` (the content subspace projection).
void ProjectOutSpecial(const std::vector<float>& special, int dim, float* x) {
  for (int s = 0; s < kSpecialDirs; ++s) {
    const float* b = special.data() + static_cast<size_t>(s) * dim;
    Axpy(static_cast<float>(-Dot(b, x, dim)), b, x, dim);
  }
}

void Normalize(float* x, int dim) {
  const double n = std::sqrt(Dot(x, x, dim));
  for (int i = 0; i < dim; ++i) x[i] = static_cast<float>(x[i] / n);
}

bool IsRunStart(uint64_t seed, SeqId seq, int64_t t, double mean_run_tokens) {
  if (t == 0) return true;
  return Rng(StreamSeed(seed, kTagRunBoundary, seq, static_cast<uint64_t>(t))).Uniform() <
         1.0 / mean_run_tokens;
}

}  // namespace

SyntheticWorkload::SyntheticWorkload(const SyntheticOptions& options) : options_(options) {}
SyntheticWorkload::~SyntheticWorkload() = default;

absl::StatusOr<std::unique_ptr<SyntheticWorkload>> SyntheticWorkload::Create(
    const SyntheticOptions& options) {
  if (absl::Status s = Validate(options); !s.ok()) return s;
  std::unique_ptr<SyntheticWorkload> w(new SyntheticWorkload(options));
  const ModelShape& shape = options.shape;
  const int dim = shape.head_dim;
  const int clusters = options.clusters.num_clusters;
  w->scale_ =
      options.softmax_scale > 0 ? options.softmax_scale : 1.0f / std::sqrt(static_cast<float>(dim));
  w->heads_.resize(static_cast<size_t>(shape.num_layers) * shape.num_kv_heads);
  for (int layer = 0; layer < shape.num_layers; ++layer) {
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      Head& head = w->heads_[static_cast<size_t>(layer) * shape.num_kv_heads + h];
      Rng rng(StreamSeed(options.seed, kTagHead, static_cast<uint64_t>(layer),
                         static_cast<uint64_t>(h)));
      // Special directions are channels (coordinate axes) drawn without replacement, as in
      // trained models: RoPE rotates fixed channel pairs and the shared offset and the sink
      // sit in a few large channels. Content (centres, run offsets, token noise, query
      // noise) lives in the other channels, so a page's per-channel key range is not widened
      // where the query's large recency and sink components are.
      std::vector<int> channels(dim);
      std::iota(channels.begin(), channels.end(), 0);
      for (int i = dim - 1; i > 0; --i) {
        std::swap(channels[i], channels[rng.Next() % static_cast<uint64_t>(i + 1)]);
      }
      head.special.assign(static_cast<size_t>(kSpecialDirs) * dim, 0.0f);
      head.content.assign(dim, 1);
      for (int s = 0; s < kSpecialDirs; ++s) {
        head.special[static_cast<size_t>(s) * dim + channels[s]] = 1.0f;
        head.content[channels[s]] = 0;
      }
      head.centres.resize(static_cast<size_t>(clusters) * dim);
      head.value_centres.resize(static_cast<size_t>(clusters) * dim);
      for (int c = 0; c < clusters; ++c) {
        float* x = head.centres.data() + static_cast<size_t>(c) * dim;
        for (int i = 0; i < dim; ++i) x[i] = rng.Gaussian();
        ProjectOutSpecial(head.special, dim, x);
        Normalize(x, dim);
        float* v = head.value_centres.data() + static_cast<size_t>(c) * dim;
        for (int i = 0; i < dim; ++i) v[i] = rng.Gaussian();
      }
    }
  }
  for (size_t i = 0; i < options.needles.size(); ++i) {
    const Needle& n = options.needles[i];
    Head& head = w->heads_[static_cast<size_t>(n.layer) * shape.num_kv_heads + n.kv_head];
    Rng rng(StreamSeed(options.seed, kTagNeedle, static_cast<uint64_t>(n.layer),
                       static_cast<uint64_t>(n.kv_head), static_cast<uint64_t>(n.key_position)));
    Head::Planted planted;
    planted.needle = static_cast<int>(i);
    planted.direction.resize(dim);
    planted.value.resize(dim);
    for (int j = 0; j < dim; ++j) planted.direction[j] = rng.Gaussian();
    ProjectOutSpecial(head.special, dim, planted.direction.data());
    Normalize(planted.direction.data(), dim);
    for (int j = 0; j < dim; ++j) planted.value[j] = rng.Gaussian();
    head.needles.push_back(std::move(planted));
  }
  return w;
}

int SyntheticWorkload::KeyCluster(SeqId seq, int layer, int kv_head, int64_t position) const {
  const SyntheticOptions& o = options_;
  if (!o.clusters.enabled || layer < 0 || layer >= o.shape.num_layers || kv_head < 0 ||
      kv_head >= o.shape.num_kv_heads || position < 0) {
    return -1;
  }
  if (o.sinks.enabled && position < o.sinks.num_tokens) return -1;
  const Head& head = heads_[static_cast<size_t>(layer) * o.shape.num_kv_heads + kv_head];
  for (const Head::Planted& p : head.needles) {
    if (o.needles[p.needle].key_position == position) return -1;
  }
  int64_t start = position;
  while (!IsRunStart(o.seed, seq, start, o.clusters.mean_run_tokens)) --start;
  return static_cast<int>(
      Rng(StreamSeed(o.seed, kTagRunCluster, seq, static_cast<uint64_t>(layer),
                     static_cast<uint64_t>(kv_head), static_cast<uint64_t>(start)))
          .Next() %
      static_cast<uint64_t>(o.clusters.num_clusters));
}

absl::Status SyntheticWorkload::Kv(SeqId seq, int layer, int64_t first, int64_t num_tokens,
                                   void* k_out, void* v_out) const {
  const SyntheticOptions& o = options_;
  const ModelShape& shape = o.shape;
  if (layer < 0 || layer >= shape.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer = ", layer, ": must be in [0, ", shape.num_layers, ")"));
  }
  if (first < 0 || num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("first = ", first, ", num_tokens = ", num_tokens, ": both must be >= 0"));
  }
  if (num_tokens == 0) return absl::OkStatus();
  if (k_out == nullptr || v_out == nullptr) {
    return absl::InvalidArgumentError("k_out and v_out must be non-null");
  }
  const int dim = shape.head_dim;
  const int kv_heads = shape.num_kv_heads;
  const Magnitudes g = ComputeMagnitudes(o, scale_);
  const double value_share = o.values.cluster_correlated && o.clusters.enabled ? o.values.share : 0;
  const float value_centre = static_cast<float>(std::sqrt(value_share));
  const float value_noise = static_cast<float>(std::sqrt(1.0 - value_share));

  // Run starts are shared by every head of the sequence: find them once for the range.
  std::vector<int64_t> run_start(static_cast<size_t>(num_tokens));
  if (o.clusters.enabled) {
    int64_t start = first;
    while (!IsRunStart(o.seed, seq, start, o.clusters.mean_run_tokens)) --start;
    for (int64_t i = 0; i < num_tokens; ++i) {
      if (i > 0 && IsRunStart(o.seed, seq, first + i, o.clusters.mean_run_tokens)) {
        start = first + i;
      }
      run_start[static_cast<size_t>(i)] = start;
    }
  }

  std::vector<float> k(dim), v(dim), run_offset(dim);
  for (int h = 0; h < kv_heads; ++h) {
    const Head& head = heads_[static_cast<size_t>(layer) * kv_heads + h];
    const float* u = head.special.data() + static_cast<size_t>(kMeanDir) * dim;
    const float* z = head.special.data() + static_cast<size_t>(kSinkDir) * dim;
    int64_t cached_run = -1;
    int cluster = 0;
    for (int64_t i = 0; i < num_tokens; ++i) {
      const int64_t t = first + i;
      Rng rng(StreamSeed(o.seed, kTagToken, seq, static_cast<uint64_t>(layer),
                         static_cast<uint64_t>(h), static_cast<uint64_t>(t)));
      const float offset = g.mean + g.jitter * rng.Gaussian();
      const bool negative = rng.Next() & 1;  // the side of u, when keys have no mean offset
      // Per-token noise in the content channels only (the special channels carry the
      // offset, sink and recency terms alone).
      for (int j = 0; j < dim; ++j) k[j] = head.content[j] ? g.token * rng.Gaussian() : 0.0f;
      for (int j = 0; j < dim; ++j) v[j] = value_noise * rng.Gaussian();

      const Head::Planted* needle = nullptr;
      for (const Head::Planted& p : head.needles) {
        if (o.needles[p.needle].key_position == t) needle = &p;
      }
      if (o.sinks.enabled && t < o.sinks.num_tokens) {
        Axpy(g.sink_key, z, k.data(), dim);
      } else if (needle != nullptr) {
        Axpy(g.needle_key, needle->direction.data(), k.data(), dim);
        for (int j = 0; j < dim; ++j) v[j] = needle->value[j];
      } else if (o.clusters.enabled) {
        const int64_t run = run_start[static_cast<size_t>(i)];
        if (run != cached_run) {
          cached_run = run;
          Rng run_rng(StreamSeed(o.seed, kTagRunCluster, seq, static_cast<uint64_t>(layer),
                                 static_cast<uint64_t>(h), static_cast<uint64_t>(run)));
          cluster =
              static_cast<int>(run_rng.Next() % static_cast<uint64_t>(o.clusters.num_clusters));
          for (int j = 0; j < dim; ++j) run_offset[j] = g.run * run_rng.Gaussian();
          ProjectOutSpecial(head.special, dim, run_offset.data());
        }
        Axpy(g.centre, head.centres.data() + static_cast<size_t>(cluster) * dim, k.data(), dim);
        Axpy(1.0f, run_offset.data(), k.data(), dim);
        Axpy(value_centre, head.value_centres.data() + static_cast<size_t>(cluster) * dim, v.data(),
             dim);
      }
      if (g.plane > 0) {
        for (int p = 0; p < kPlanes; ++p) {
          const double angle = kPlaneFrequency[p] * std::numbers::pi * static_cast<double>(t) /
                               o.recency.window_tokens;
          const float* a = head.special.data() + static_cast<size_t>(kFirstPlaneDir + 2 * p) * dim;
          Axpy(static_cast<float>(g.plane * std::cos(angle)), a, k.data(), dim);
          Axpy(static_cast<float>(g.plane * std::sin(angle)), a + dim, k.data(), dim);
        }
      }
      // The coordinate along u: invisible to attention (queries are orthogonal to u).
      // Out of distribution it varies on its own, so key norms vary and L2 ranks differ from
      // inner-product ranks; in distribution it gives every key the same norm, so they agree
      // (the reduction of maximum inner product search to nearest neighbour search).
      const double along_u = Dot(u, k.data(), dim);
      Axpy(static_cast<float>(-along_u), u, k.data(), dim);
      float coordinate = offset + static_cast<float>(along_u);
      if (!o.queries.out_of_distribution) {
        coordinate = static_cast<float>(
            std::sqrt(std::max(0.0, g.equal_norm2 - Dot(k.data(), k.data(), dim))));
        if (g.mean == 0 && negative) coordinate = -coordinate;
      }
      Axpy(coordinate, u, k.data(), dim);
      const size_t base = (static_cast<size_t>(i) * kv_heads + h) * dim;
      for (int j = 0; j < dim; ++j) {
        StoreFromFloat(shape.dtype, k[j], k_out, base + j);
        StoreFromFloat(shape.dtype, v[j], v_out, base + j);
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// One independent query state of the drift process: `topics` cluster directions with weights
// (1 for the first, U[0.3, 0.7] for the rest) times the topic length, plus content noise.
// The topics come from `group_rng`, shared by the query heads of a KV head (GQA heads attend
// to related things); weights and noise from the head's own `rng`.
void AddAnchor(Rng group_rng, Rng rng, const std::vector<float>& special,
               const std::vector<float>& centres, int num_clusters, int topics, const Magnitudes& g,
               int dim, float weight, float* out) {
  std::vector<float> x(dim, 0.0f);
  for (int i = 0; i < topics; ++i) {
    const int c = static_cast<int>(group_rng.Next() % static_cast<uint64_t>(num_clusters));
    const float w = i == 0 ? 1.0f : static_cast<float>(0.3 + 0.4 * rng.Uniform());
    Axpy(g.topic * w, centres.data() + static_cast<size_t>(c) * dim, x.data(), dim);
  }
  std::vector<float> n(dim);
  for (int j = 0; j < dim; ++j) n[j] = g.query_noise * rng.Gaussian();
  ProjectOutSpecial(special, dim, n.data());
  for (int j = 0; j < dim; ++j) out[j] += weight * (x[j] + n[j]);
}

}  // namespace

absl::Status SyntheticWorkload::Query(SeqId seq, int layer, int64_t position, void* q_out) const {
  const SyntheticOptions& o = options_;
  const ModelShape& shape = o.shape;
  if (layer < 0 || layer >= shape.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer = ", layer, ": must be in [0, ", shape.num_layers, ")"));
  }
  if (position < 0) {
    return absl::InvalidArgumentError(absl::StrCat("position = ", position, ": must be >= 0"));
  }
  if (q_out == nullptr) return absl::InvalidArgumentError("q_out must be non-null");
  const int dim = shape.head_dim;
  const int group = shape.group_size();
  const Magnitudes g = ComputeMagnitudes(o, scale_);
  const int clusters = o.clusters.num_clusters;
  const int topics = o.queries.topics;

  std::vector<float> q(dim);
  for (int qh = 0; qh < shape.num_query_heads; ++qh) {
    const int h = qh / group;
    const Head& head = heads_[static_cast<size_t>(layer) * shape.num_kv_heads + h];
    std::fill(q.begin(), q.end(), 0.0f);
    // A query head's draws, and (group = true) those its KV head's group shares.
    auto head_rng = [&](uint64_t tag, int64_t index, bool group) {
      const uint64_t who =
          group ? (uint64_t{1} << 32) + static_cast<uint64_t>(h) : static_cast<uint64_t>(qh);
      return Rng(StreamSeed(o.seed, tag, seq, static_cast<uint64_t>(layer), who,
                            static_cast<uint64_t>(index)));
    };
    auto add_anchor = [&](uint64_t tag, int64_t index, double weight) {
      AddAnchor(head_rng(tag, index, true), head_rng(tag, index, false), head.special, head.centres,
                clusters, topics, g, dim, static_cast<float>(weight), q.data());
    };
    if (o.drift.enabled) {
      // Constant angular speed from anchor k to anchor k + 1 over `steps` positions: the
      // weights (cos, sin) keep the variance of two independent states constant.
      const int64_t steps = o.drift.steps;
      const int64_t k = position / steps;
      const double phase = 0.5 * std::numbers::pi * static_cast<double>(position % steps) /
                           static_cast<double>(steps);
      const double keep = std::sqrt(1.0 - o.drift.jitter * o.drift.jitter);
      add_anchor(kTagAnchor, k, keep * std::cos(phase));
      add_anchor(kTagAnchor, k + 1, keep * std::sin(phase));
      if (o.drift.jitter > 0) add_anchor(kTagJitter, position, o.drift.jitter);
    } else {
      add_anchor(kTagJitter, position, 1.0);
    }
    for (const Head::Planted& p : head.needles) {
      if (o.needles[p.needle].query_position == position) {
        Axpy(g.needle_query, p.direction.data(), q.data(), dim);
      }
    }
    Axpy(g.sink_query, head.special.data() + static_cast<size_t>(kSinkDir) * dim, q.data(), dim);
    if (g.plane_query > 0) {
      for (int p = 0; p < kPlanes; ++p) {
        const double angle = kPlaneFrequency[p] * std::numbers::pi * static_cast<double>(position) /
                             o.recency.window_tokens;
        const float* a = head.special.data() + static_cast<size_t>(kFirstPlaneDir + 2 * p) * dim;
        Axpy(static_cast<float>(g.plane_query * std::cos(angle)), a, q.data(), dim);
        Axpy(static_cast<float>(g.plane_query * std::sin(angle)), a + dim, q.data(), dim);
      }
    }
    const size_t base = static_cast<size_t>(qh) * dim;
    for (int j = 0; j < dim; ++j) StoreFromFloat(shape.dtype, q[j], q_out, base + j);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::workload
