// A seeded synthetic KV/query generator whose attention behaves like a trained LLM's.
//
// No model weights are available to kvtier's tests, tools and benchmarks, and random
// Gaussian keys and queries give diffuse attention that no index can exploit. This generator
// plants, on purpose and each behind its own switch, the properties that measured attention
// of trained models shows (../shared/data/attention/README.md):
//
//   property            | knob                        | what it does
//   --------------------|-----------------------------|------------------------------------
//   key mean offset     | mean_offset                 | every key of a (layer, KV head)
//                       |                             | shares an offset vector holding
//                       |                             | `share` of the key norm (README:
//                       |                             | 0.3-0.65)
//   key clusters        | clusters                    | keys lie around `num_clusters`
//                       |                             | centres per (layer, KV head); runs
//                       |                             | of ~`mean_run_tokens` consecutive
//                       |                             | tokens share a centre (topics) and
//                       |                             | a run offset (passages)
//   out-of-distribution | queries.out_of_distribution | queries carry none of the keys'
//   queries             |                             | mean offset, and key norms vary in
//                       |                             | a direction queries ignore: nearest
//                       |                             | keys by L2 are not the top keys by
//                       |                             | inner product (off: equal key
//                       |                             | norms, so L2 ranks = IP ranks)
//   attention sinks     | sinks                       | the first `num_tokens` keys score
//                       |                             | `logit` nats above a typical key
//                       |                             | for every query
//   recency bias        | recency                     | keys score up to `logit` nats more
//                       |                             | the closer they are to the query,
//                       |                             | fading over ~`window_tokens`
//   needles             | needles                     | a planted key that one later query
//                       |                             | ranks first by inner product
//   query drift         | drift                       | the query of a head moves slowly
//                       |                             | from position to position, so
//                       |                             | adjacent steps select overlapping
//                       |                             | pages
//   values              | values                      | values lean towards a per-cluster
//                       |                             | mean, so attention outputs are not
//                       |                             | ~0
//
// The model, per (layer, KV head). The special directions are channels (coordinate axes,
// drawn per head): the mean channel u, the sink channel z and channel pairs for the recency
// planes, as in trained models, where RoPE rotates fixed channel pairs and the shared offset
// and sinks sit in a few large channels. The other channels hold the content:
//   key(t)   = x_t u + r c_{cluster(t)} + run_offset + A rope_t + s_t z + noise_t
//   query(p) = a * topics(p) + query_noise(p) + b z + B rope_p [+ needle direction]
// where rope_t puts a unit vector in each recency plane at angle theta_i * t (so key and
// query meet as sum_i cos(theta_i (p - t)), a RoPE-like relative-position term), topics(p)
// mixes a few cluster directions, (topics, query noise) follow the drift process, x_t is the
// offset m plus jitter (or the norm-equalising value when queries are in distribution), and
// sinks (s_t > 0) and needles replace the centre and run terms. Centres, run offsets and
// the noise terms lie in the content channels only.
//
// Calibration: with the defaults, attention is concentrated like the dumps' concentrated
// heads (tests/tools/workload/synthetic_calibration_test.cc): at 8K tokens the README's
// measure (hot set plus 2% of 16-token pages) captures ~0.90 of the mass with the true best
// pages, and pages ranked by per-channel min/max bounds come within ~0.03 of that. Bounds
// stay tight because a page's tokens differ by token noise of the same size everywhere
// (runs of ~96 tokens, so few pages straddle a topic change, whose per-channel ranges are
// wide) and because queries' non-topic parts are small: the recency and sink terms sit in
// their own channels, and the query noise is modest (`noise_logit`).
//
// Magnitudes are set from the knobs in attention-logit units (nats, at `softmax_scale`);
// keys' expected norm is key_rms * sqrt(head_dim). Gaussian draws are approximate (a sum of four
// uniforms: unit variance, tails cut at 3.46 sigma).
//
// Determinism: every number is a pure function of (seed, sequence, layer, head, position)
// and the options, through counter-based hashing; calls may come in any order, from any
// thread, and give the same bytes. Different seeds (or sequences, layers, heads) give
// independent data.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/options.h"
#include "runtime/core/sequence_id.h"

namespace kvtier::workload {

// A planted needle: the key at `key_position` of (`layer`, `kv_head`) gets a direction of
// its own, and the query at `query_position` of each query head of that KV head's group gets
// a strong component along it, so that query's top key by inner product is the needle.
// Planted in every sequence. With a prompt of n tokens, the query belongs to decode step
// `query_position - n` (it attends to positions 0..query_position).
struct Needle {
  int layer = 0;
  int kv_head = 0;
  int64_t key_position = 0;    // >= sinks.num_tokens when sinks are on
  int64_t query_position = 0;  // > key_position
};

struct SyntheticOptions {
  // Layers, heads, head_dim and dtype (bf16 or fp16) of everything generated.
  ModelShape shape;
  uint64_t seed = 1;
  // The softmax scale the logit knobs are calibrated for; 0 means 1 / sqrt(head_dim).
  float softmax_scale = 0.0f;
  // Root mean square of key elements: keys' expected norm is key_rms * sqrt(head_dim). The
  // learned-attention dumps have 1.6-2.4; queries come out shorter than keys, as there.
  double key_rms = 2.0;

  struct MeanOffset {
    bool enabled = true;
    // Length of the shared offset as a share of the keys' expected norm, in [0, 0.95].
    // Off: keys are centred on 0.
    double share = 0.5;
  } mean_offset;

  struct Clusters {
    bool enabled = true;
    int num_clusters = 64;  // centres per (layer, KV head), 1..4096
    // Share of a key's non-offset variance that its centre holds, in [0, 0.95]; the rest is
    // per-token noise. Off: keys are the offset, recency and noise only.
    double share = 0.5;
    // Share of the rest that a run shares (a per-run offset, so that a query prefers some
    // passages of a topic over others), in [0, 1]; the remainder is per-token noise. Run
    // offsets differ between adjacent runs, so a larger share widens the per-channel ranges
    // of pages that straddle runs against the others and loosens page bounds.
    double run_share = 0.3;
    // Consecutive tokens form runs (a new run starts at each position with probability
    // 1 / mean_run_tokens, the same boundaries for every layer and head of a sequence); a
    // run draws one centre per (layer, KV head). >= 1; 1 gives a fresh centre every token.
    double mean_run_tokens = 96.0;
  } clusters;

  struct Queries {
    // Queries never have a component along the keys' mean direction u, so a key's
    // coordinate along u is invisible to attention; this switch only sets that coordinate,
    // and attention is the same either way.
    // On: the coordinate is the mean offset plus noise of relative std `offset_jitter` (of
    // the key norm): key norms vary in ways queries do not see, so a query's nearest keys by
    // L2 are not its top keys by inner product (queries are short next to keys, as in the
    // learned-attention dumps, so the key norm weighs heavily in L2 distance).
    // Off: the coordinate gives every key the same norm (the reduction of maximum inner
    // product search to nearest-neighbour search), so L2 ranks equal inner-product ranks.
    bool out_of_distribution = true;
    double offset_jitter = 0.15;  // in [0, 1]
    // Each query mixes `topics` cluster directions (weights 1 and U[0.3, 0.7]); a key of its
    // main topic's cluster scores `topic_logit` nats above a key of an unrelated cluster. The
    // query heads of one KV head share their topics (GQA heads attend to related things) and
    // differ in weights and noise.
    int topics = 2;  // 1..num_clusters
    double topic_logit = 7.0;
    // Std (nats) of the logits that the query's own noise direction adds across keys:
    // token-level preferences inside and across clusters. The noise direction is spread
    // over every content channel, so it also widens page bounds (sum over channels of
    // |q_d| times the page's range): 1.0 roughly halves bounds' captured mass at 8K.
    double noise_logit = 0.5;
  } queries;

  struct Sinks {
    bool enabled = true;
    int num_tokens = 4;  // the first tokens, 1..4096
    double logit = 9.0;  // how many nats above a typical key every query scores them
  } sinks;

  struct Recency {
    bool enabled = true;
    // Peak bonus (nats) of the key at the query's own position over the far-away average;
    // the bonus fades over ~window_tokens (eight RoPE-like planes with frequencies between
    // 0.31 and 1 times pi / window_tokens; far away it averages 0 and oscillates with a std
    // of about a quarter of `logit`).
    double logit = 5.0;
    int window_tokens = 256;  // >= 1
  } recency;

  struct Drift {
    // On: a query head's topics and noise turn into an independent draw over `steps`
    // positions (constant angular speed between independent anchor states), plus a
    // per-position jitter of relative size `jitter`. Off: every position draws an
    // independent query.
    bool enabled = true;
    int steps = 64;       // >= 1
    double jitter = 0.2;  // in [0, 1]
  } drift;

  struct Values {
    // On: a value is `share` (of its variance) its run's per-cluster mean vector plus noise,
    // so attention focused on a cluster gives an output of the size of that mean. Off (or
    // clusters off): values are i.i.d. noise. Values have unit variance per element.
    bool cluster_correlated = true;
    double share = 0.5;  // in [0, 1]
  } values;

  // Nats by which a needle's query scores its needle above a typical key.
  double needle_logit = 32.0;
  std::vector<Needle> needles;
};

// Thread-safe after Create: every method is const and keeps no state.
class SyntheticWorkload {
 public:
  // InvalidArgument naming every bad field ("clusters.num_clusters = 0: must be ...").
  static absl::StatusOr<std::unique_ptr<SyntheticWorkload>> Create(const SyntheticOptions& options);

  ~SyntheticWorkload();
  SyntheticWorkload(const SyntheticWorkload&) = delete;
  SyntheticWorkload& operator=(const SyntheticWorkload&) = delete;

  const SyntheticOptions& options() const { return options_; }
  const std::vector<Needle>& needles() const { return options_.needles; }
  float softmax_scale() const { return scale_; }

  // Keys and values of positions [first, first + num_tokens) of (seq, layer), written to
  // host buffers `k_out` and `v_out`, each [num_tokens, num_kv_heads, head_dim] of
  // shape.dtype (caller-owned, num_tokens * num_kv_heads * head_dim elements).
  // InvalidArgument for a layer out of range, first < 0 or num_tokens < 0, or null buffers
  // with num_tokens > 0; nothing is written then.
  absl::Status Kv(SeqId seq, int layer, int64_t first, int64_t num_tokens, void* k_out,
                  void* v_out) const;
  // The prompt: positions [0, num_tokens).
  absl::Status Prompt(SeqId seq, int layer, int64_t num_tokens, void* k_out, void* v_out) const {
    return Kv(seq, layer, 0, num_tokens, k_out, v_out);
  }
  // The token appended at `position` (a decode step): [num_kv_heads, head_dim] each.
  absl::Status DecodeKv(SeqId seq, int layer, int64_t position, void* k_out, void* v_out) const {
    return Kv(seq, layer, position, 1, k_out, v_out);
  }

  // The query of the token at `position`, which attends to keys 0..position (its own key
  // included): [num_query_heads, head_dim] of shape.dtype into `q_out`. Query head h uses KV
  // head h / group_size. With a prompt of n tokens, decode step s has position n + s.
  absl::Status Query(SeqId seq, int layer, int64_t position, void* q_out) const;

  // The cluster that the key at `position` of (seq, layer, kv_head) was drawn around, or -1
  // when clusters are off or the position is a sink or a needle. For tests and tools.
  int KeyCluster(SeqId seq, int layer, int kv_head, int64_t position) const;

 private:
  struct Head;  // per (layer, KV head) directions, built once by Create
  explicit SyntheticWorkload(const SyntheticOptions& options);

  SyntheticOptions options_;
  float scale_ = 0.0f;
  std::vector<Head> heads_;  // [layer * num_kv_heads + kv_head]
};

}  // namespace kvtier::workload
