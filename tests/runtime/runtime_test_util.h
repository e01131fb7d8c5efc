// What the KvCache tests share (host backend in runtime_test, CUDA backend in gpu_test): a
// host model of every token a KvCache stores, random inputs, a driver that feeds one cache and
// its model identically, and the oracles: exact attention in double over any token subset,
// the hot-set geometry of kernels/decode_plan.h, Quest page-bound scores in double. The step
// schedules are in runtime_schedules.h, the page-cache model in page_cache_model.h.
// Header-only; no CUDA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "kernels/base/cache_policy.h"
#include "kernels/base/dtype.h"
#include "runtime/core/options.h"
#include "runtime/core/tensor.h"
#include "runtime/kv_cache.h"

namespace kvtier::runtime_test {

#define KVTIER_RT_ASSERT_OK(expr)                          \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (false)
#define KVTIER_RT_EXPECT_OK(expr)                          \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    EXPECT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (false)

// A NaN of a 16-bit dtype (bf16 or fp16).
inline uint16_t NaNBits(DType dtype) { return dtype == DType::kBF16 ? 0x7FC0 : 0x7E00; }

// Unit roundoff of an output dtype (0 for fp32).
inline double Roundoff(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return 0x1p-8;
    case DType::kFP16:
      return 0x1p-11;
    case DType::kFP32:
      return 0.0;
  }
  return 0.0;
}

// `n` random elements of a 16-bit `dtype`, rounded from an approximately normal distribution
// with standard deviation `scale` (a sum of four uniforms from one 64-bit draw: cheap enough
// for long contexts, tails cut at 3.46 sigma).
inline std::vector<uint16_t> RandomElements(DType dtype, size_t n, std::mt19937_64& rng,
                                            float scale = 1.0f) {
  std::vector<uint16_t> out(n);
  const float unit = scale * 1.7320508f / 65536.0f;  // sqrt(3 / 4 * 4) / 2^16
  for (uint16_t& e : out) {
    const uint64_t x = rng();
    const float sum =
        static_cast<float>((x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48)) -
        2.0f * 65535.0f;
    StoreFromFloat(dtype, sum * unit, &e, 0);
  }
  return out;
}

// Page geometry of a KvCache (kernels/decode_plan.h): a sequence of `tokens` tokens has
// Pages(tokens) pages; its hot pages are the sinks [0, min(S, n)) and the window
// [max(S, n - W), n); its cold pages, the index's candidates, are [S, ColdEnd(tokens)).
struct Geometry {
  int P = 16;
  int S = 0;
  int W = 1;
  explicit Geometry(const Options& o)
      : P(o.page_size), S(o.sink_tokens / o.page_size), W(o.window_tokens / o.page_size) {}
  int64_t Pages(int64_t tokens) const { return (tokens + P - 1) / P; }
  int64_t ColdEnd(int64_t tokens) const { return std::max<int64_t>(S, Pages(tokens) - W); }
  int64_t NumCold(int64_t tokens) const { return ColdEnd(tokens) - S; }
  // Token positions of the hot set, ascending.
  std::vector<int64_t> HotTokens(int64_t tokens) const {
    std::vector<int64_t> out;
    const int64_t n = Pages(tokens);
    const int64_t sink_end = std::min<int64_t>(S, n) * P;
    for (int64_t t = 0; t < std::min(sink_end, tokens); ++t) out.push_back(t);
    for (int64_t t = ColdEnd(tokens) * P; t < tokens; ++t) out.push_back(t);
    return out;
  }
  // Token positions of pages `pages` (all full), in page order.
  std::vector<int64_t> PageTokens(absl::Span<const int32_t> pages) const {
    std::vector<int64_t> out;
    for (int32_t page : pages) {
      for (int64_t t = int64_t{page} * P; t < int64_t{page + 1} * P; ++t) out.push_back(t);
    }
    return out;
  }
  std::vector<int32_t> AllCold(int64_t tokens) const {
    std::vector<int32_t> out;
    for (int64_t j = S; j < ColdEnd(tokens); ++j) out.push_back(static_cast<int32_t>(j));
    return out;
  }
};

// What a KvCache should hold: per sequence and layer, every token's K and V, [tokens, Hk, D]
// as dtype bits.
struct LayerKv {
  std::vector<uint16_t> k, v;
  int64_t tokens = 0;
};

class KvModel {
 public:
  explicit KvModel(const ModelShape& shape) : shape_(shape) {}

  void Add(SeqId seq) { seqs_[seq].assign(static_cast<size_t>(shape_.num_layers), LayerKv{}); }
  void Remove(SeqId seq) { seqs_.erase(seq); }
  bool Has(SeqId seq) const { return seqs_.contains(seq); }
  void Append(SeqId seq, int layer, const uint16_t* k, const uint16_t* v, int64_t n) {
    LayerKv& kv = seqs_.at(seq)[static_cast<size_t>(layer)];
    const size_t row = static_cast<size_t>(shape_.num_kv_heads) * shape_.head_dim;
    kv.k.insert(kv.k.end(), k, k + n * row);
    kv.v.insert(kv.v.end(), v, v + n * row);
    kv.tokens += n;
  }
  const LayerKv& Get(SeqId seq, int layer) const {
    return seqs_.at(seq)[static_cast<size_t>(layer)];
  }
  int64_t Tokens(SeqId seq, int layer) const { return Get(seq, layer).tokens; }
  std::vector<SeqId> Sequences() const {
    std::vector<SeqId> out;
    for (const auto& [seq, layers] : seqs_) out.push_back(seq);
    return out;
  }
  // Host-store frames the stored tokens need: ceil(tokens / P) per (sequence, layer, KV head).
  int64_t HostPagesNeeded(int page_size) const {
    int64_t pages = 0;
    for (const auto& [seq, layers] : seqs_) {
      for (const LayerKv& kv : layers) {
        pages += (kv.tokens + page_size - 1) / page_size * shape_.num_kv_heads;
      }
    }
    return pages;
  }
  const ModelShape& shape() const { return shape_; }

 private:
  ModelShape shape_;
  std::map<SeqId, std::vector<LayerKv>> seqs_;
};

// Exact attention, in double, of the query rows `q` ([Hq, D] dtype bits) of one batch entry:
// query head h attends, with KV head kh = h / G, to the tokens attend[kh] of `kv`. Returns
// out [Hq, D]. With `token_mass`: (*token_mass)[kh][j] = the attention share token attend[kh][j]
// received, summed over the G query heads of kh.
inline std::vector<double> ExactAttention(const ModelShape& shape, double scale, const LayerKv& kv,
                                          const uint16_t* q,
                                          const std::vector<std::vector<int64_t>>& attend,
                                          std::vector<std::vector<double>>* token_mass = nullptr) {
  const int d = shape.head_dim;
  const int hk = shape.num_kv_heads;
  const int g = shape.group_size();
  const DType dt = shape.dtype;
  std::vector<double> out(static_cast<size_t>(shape.num_query_heads) * d, 0.0);
  if (token_mass != nullptr) token_mass->assign(static_cast<size_t>(hk), {});
  for (int kh = 0; kh < hk; ++kh) {
    const std::vector<int64_t>& tokens = attend[static_cast<size_t>(kh)];
    if (token_mass != nullptr) (*token_mass)[kh].assign(tokens.size(), 0.0);
    for (int gi = 0; gi < g; ++gi) {
      const int h = kh * g + gi;
      std::vector<double> logit(tokens.size());
      double max_logit = -std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < tokens.size(); ++j) {
        const size_t base = (static_cast<size_t>(tokens[j]) * hk + kh) * d;
        double dot = 0;
        for (int i = 0; i < d; ++i) {
          dot += static_cast<double>(LoadAsFloat(dt, q, static_cast<size_t>(h) * d + i)) *
                 LoadAsFloat(dt, kv.k.data(), base + i);
        }
        logit[j] = scale * dot;
        max_logit = std::max(max_logit, logit[j]);
      }
      double sum = 0;
      for (double& l : logit) {
        l = std::exp(l - max_logit);
        sum += l;
      }
      for (size_t j = 0; j < tokens.size(); ++j) {
        const double p = logit[j] / sum;
        if (token_mass != nullptr) (*token_mass)[kh][j] += p;
        const size_t base = (static_cast<size_t>(tokens[j]) * hk + kh) * d;
        for (int i = 0; i < d; ++i) {
          out[static_cast<size_t>(h) * d + i] += p * LoadAsFloat(dt, kv.v.data(), base + i);
        }
      }
    }
  }
  return out;
}

// Quest page-bound scores, in double, of KV head kh's G query rows of `q` ([Hq, D] bits)
// against pages [begin, end) of `kv`: score_j = sum over heads and channels of
// q * (q >= 0 ? max_j : min_j). `magnitude` gets each score's sum of |terms| (for rounding
// tolerances).
inline std::vector<double> QuestScores(const ModelShape& shape, int page_size, const LayerKv& kv,
                                       const uint16_t* q, int kh, int64_t begin, int64_t end,
                                       std::vector<double>* magnitude) {
  const int d = shape.head_dim;
  const int hk = shape.num_kv_heads;
  const int g = shape.group_size();
  const DType dt = shape.dtype;
  std::vector<double> scores;
  magnitude->clear();
  for (int64_t page = begin; page < end; ++page) {
    std::vector<double> lo(static_cast<size_t>(d), std::numeric_limits<double>::infinity());
    std::vector<double> hi(static_cast<size_t>(d), -std::numeric_limits<double>::infinity());
    for (int64_t t = page * page_size; t < (page + 1) * page_size; ++t) {
      const size_t base = (static_cast<size_t>(t) * hk + kh) * d;
      for (int i = 0; i < d; ++i) {
        const double x = LoadAsFloat(dt, kv.k.data(), base + i);
        lo[i] = std::min(lo[i], x);
        hi[i] = std::max(hi[i], x);
      }
    }
    double score = 0, mag = 0;
    for (int gi = 0; gi < g; ++gi) {
      for (int i = 0; i < d; ++i) {
        const double qi = LoadAsFloat(dt, q, static_cast<size_t>(kh * g + gi) * d + i);
        const double term = qi * (qi >= 0 ? hi[i] : lo[i]);
        score += term;
        mag += std::abs(term);
      }
    }
    scores.push_back(score);
    magnitude->push_back(mag);
  }
  return scores;
}

// Expects `selected` (absolute page indexes) to be the top min(k, n) of `scores` (pages
// begin + j), ranked by score descending: every selected page scores at least as high as
// every unselected one, up to fp32 rounding of the scores (the kernel's twin sums in fp32).
inline void ExpectTopK(absl::Span<const int32_t> selected, int64_t begin,
                       const std::vector<double>& scores, const std::vector<double>& magnitude,
                       int k, const std::string& what) {
  const int64_t n = static_cast<int64_t>(scores.size());
  ASSERT_EQ(static_cast<int64_t>(selected.size()), std::min<int64_t>(k, n))
      << what << ": selected count";
  std::vector<bool> is_selected(static_cast<size_t>(n), false);
  for (size_t i = 0; i < selected.size(); ++i) {
    ASSERT_GE(selected[i], begin) << what << ": selected page below the cold range";
    ASSERT_LT(selected[i], begin + n) << what << ": selected page beyond the cold range";
    if (i > 0) {
      ASSERT_LT(selected[i - 1], selected[i]) << what << ": not ascending";
    }
    is_selected[static_cast<size_t>(selected[i] - begin)] = true;
  }
  double worst_selected = std::numeric_limits<double>::infinity();
  double best_unselected = -std::numeric_limits<double>::infinity();
  int64_t worst_page = -1, best_page = -1;
  for (int64_t j = 0; j < n; ++j) {
    const double tol = 1e-5 * magnitude[j] + 1e-6;
    if (is_selected[j] && scores[j] + tol < worst_selected) {
      worst_selected = scores[j] + tol;
      worst_page = begin + j;
    }
    if (!is_selected[j] && scores[j] - tol > best_unselected) {
      best_unselected = scores[j] - tol;
      best_page = begin + j;
    }
  }
  EXPECT_GE(worst_selected, best_unselected)
      << what << ": page " << best_page << " (bound ~" << best_unselected
      << ") was not selected but scores above selected page " << worst_page << " (bound ~"
      << worst_selected << ")";
}

// |got - want| <= rel * |want| + abs for every element; NaN fails. Reports the first few.
inline void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double rel,
                        double abs, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double error = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(error <= rel * std::abs(want[i]) + abs)) {
      ++bad;
      if (reported++ < 5) {
        ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", want " << want[i]
                      << " (error " << error << ", bound " << rel * std::abs(want[i]) + abs << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements off";
}

// One decode step's inputs for a batch: q [B, Hq, D], k_new and v_new [B, Hk, D] (dtype bits).
struct DecodeInputs {
  std::vector<uint16_t> q, k, v;
};

// Converts `n` elements of an `out` buffer of `dtype` to float.
inline std::vector<float> ToFloat(DType dtype, const void* data, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = LoadAsFloat(dtype, data, i);
  return out;
}

// A buffer of `n` elements of `dtype`, every element NaN.
inline std::vector<std::byte> PoisonedBuffer(DType dtype, size_t n) {
  std::vector<std::byte> buffer(n * DTypeSize(dtype));
  for (size_t i = 0; i < n; ++i) {
    if (dtype == DType::kFP32) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(buffer.data() + 4 * i, &nan, 4);
    } else {
      const uint16_t bits = NaNBits(dtype);
      std::memcpy(buffer.data() + 2 * i, &bits, 2);
    }
  }
  return buffer;
}

inline int64_t Uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// fp32, bf16 or fp16, uniformly.
inline DType RandomOutDType(std::mt19937_64& rng) {
  constexpr DType kOut[] = {DType::kFP32, DType::kBF16, DType::kFP16};
  return kOut[rng() % 3];
}

// A random batch of 1..max distinct sequences of `live`, in random order.
inline std::vector<SeqId> RandomBatch(std::vector<SeqId> live, int max, std::mt19937_64& rng) {
  std::shuffle(live.begin(), live.end(), rng);
  live.resize(static_cast<size_t>(Uniform(rng, 1, std::min<int64_t>(max, live.size()))));
  return live;
}

inline bool AnyNaN(const std::vector<float>& v) {
  return std::any_of(v.begin(), v.end(), [](float x) { return std::isnan(x); });
}

// A small host-backend configuration: 2 layers, 2 KV heads of group `g`, the page-bounds
// index with a budget of 4 pages, sequences of up to 2048 tokens.
inline Options HostOptions(int g, int head_dim, DType dtype, int page, int sink, int window) {
  Options o;
  o.shape.num_layers = 2;
  o.shape.num_kv_heads = 2;
  o.shape.num_query_heads = 2 * g;
  o.shape.head_dim = head_dim;
  o.shape.dtype = dtype;
  o.page_size = page;
  o.sink_tokens = sink;
  o.window_tokens = window;
  o.budget.max_pages = 4;
  o.cache_slots_per_budget = 2.0;
  o.cache_policy = CachePolicy::kLowestScore;
  o.host_memory_bytes = int64_t{64} << 20;
  o.gpu_memory_bytes = int64_t{1} << 30;
  o.max_sequences = 6;
  o.max_batch_size = 4;
  o.max_sequence_tokens = 2048;
  o.max_prefill_chunk_tokens = 64;
  o.backend = Backend::kHost;
  return o;
}

// Tolerance of a CUDA-backend output against the host twin's or exact attention, relative to
// max(|want|, 1): the attention kernel rounds P to the input dtype for P.V (in both the hot
// and the selected part), and both outputs are rounded to out_dtype.
inline double CudaTolerance(DType dtype, DType out_dtype) {
  const double p_rounding = dtype == DType::kBF16 ? 0x1p-8 : 0x1p-10;
  return 2 * p_rounding + 2 * Roundoff(out_dtype) + 1e-5;
}

// Per query row (`dim` consecutive elements): ||got - want||_2 <= bound * ||want||_2 (the
// relative error of an attention output); NaN fails. Reports the first few rows over.
inline void ExpectRowRelativeError(const std::vector<float>& got, const std::vector<double>& want,
                                   int dim, double bound, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t row = 0; row * dim < got.size(); ++row) {
    double error = 0, norm = 0;
    for (size_t i = row * dim; i < (row + 1) * dim; ++i) {
      error += (got[i] - want[i]) * (got[i] - want[i]);
      norm += want[i] * want[i];
    }
    if (!(std::sqrt(error) <= bound * std::sqrt(norm)) && reported++ < 5) {
      ADD_FAILURE() << what << ": query row " << row << " has relative error "
                    << std::sqrt(error / norm) << ", bound " << bound;
    }
  }
}

// Drives one KvCache with host-memory tensors and keeps its KvModel in step: a call that
// succeeds is recorded in the model, one that fails is not.
class Driver {
 public:
  static absl::StatusOr<std::unique_ptr<Driver>> Create(const Options& options) {
    absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(options);
    if (!cache.ok()) return cache.status();
    return std::unique_ptr<Driver>(new Driver(options, *std::move(cache)));
  }

  KvCache& cache() { return *cache_; }
  const KvCache& cache() const { return *cache_; }
  const KvModel& model() const { return model_; }
  const Options& options() const { return options_; }
  const ModelShape& shape() const { return options_.shape; }
  const Geometry& geometry() const { return geometry_; }

  absl::Status Add(SeqId seq) {
    absl::Status status = cache_->AddSequence(seq);
    if (status.ok()) model_.Add(seq);
    return status;
  }
  absl::Status Remove(SeqId seq) {
    absl::Status status = cache_->RemoveSequence(seq);
    if (status.ok()) model_.Remove(seq);
    return status;
  }

  // Random K or V rows of `tokens` tokens, [tokens, Hk, D].
  std::vector<uint16_t> RandomRows(int64_t tokens, std::mt19937_64& rng) const {
    return RandomElements(
        shape().dtype, static_cast<size_t>(tokens) * shape().num_kv_heads * shape().head_dim, rng);
  }
  DecodeInputs RandomDecodeInputs(size_t batch, std::mt19937_64& rng, float q_scale = 1.0f) const {
    DecodeInputs in;
    const size_t d = static_cast<size_t>(shape().head_dim);
    in.q = RandomElements(shape().dtype, batch * shape().num_query_heads * d, rng, q_scale);
    in.k = RandomElements(shape().dtype, batch * shape().num_kv_heads * d, rng);
    in.v = RandomElements(shape().dtype, batch * shape().num_kv_heads * d, rng);
    return in;
  }

  absl::Status Prefill(SeqId seq, int layer, const std::vector<uint16_t>& k,
                       const std::vector<uint16_t>& v) {
    const int64_t row = int64_t{shape().num_kv_heads} * shape().head_dim;
    const int64_t n = static_cast<int64_t>(k.size()) / row;
    const ConstTensor kt =
        MakeConstTensor(k.data(), shape().dtype, {n, shape().num_kv_heads, shape().head_dim});
    const ConstTensor vt =
        MakeConstTensor(v.data(), shape().dtype, {n, shape().num_kv_heads, shape().head_dim});
    absl::Status status = cache_->Prefill(seq, layer, kt, vt, ConstTensor{}, nullptr);
    if (status.ok()) model_.Append(seq, layer, k.data(), v.data(), n);
    return status;
  }
  // Prefills `tokens` random tokens into `layer` of `seq` in chunks of random odd sizes.
  absl::Status PrefillRandom(SeqId seq, int layer, int64_t tokens, std::mt19937_64& rng,
                             int64_t max_chunk = 0) {
    int64_t done = 0;
    while (done < tokens) {
      int64_t chunk = tokens - done;
      if (max_chunk > 0) {
        chunk =
            std::min<int64_t>(chunk, std::uniform_int_distribution<int64_t>(1, max_chunk)(rng) | 1);
      }
      const std::vector<uint16_t> k = RandomRows(chunk, rng);
      const std::vector<uint16_t> v = RandomRows(chunk, rng);
      absl::Status status = Prefill(seq, layer, k, v);
      if (!status.ok()) return status;
      done += chunk;
    }
    return absl::OkStatus();
  }

  // Decode with host tensors; `out` (float) gets the poisoned-then-written output.
  absl::Status Decode(int layer, const std::vector<SeqId>& seqs, const DecodeInputs& in,
                      DType out_dtype, std::vector<float>* out) {
    const int64_t b = static_cast<int64_t>(seqs.size());
    const int64_t hq = shape().num_query_heads, hk = shape().num_kv_heads, d = shape().head_dim;
    const size_t n_out = static_cast<size_t>(b * hq * d);
    std::vector<std::byte> buffer = PoisonedBuffer(out_dtype, n_out);
    absl::Status status =
        cache_->Decode(layer, seqs, MakeConstTensor(in.q.data(), shape().dtype, {b, hq, d}),
                       MakeConstTensor(in.k.data(), shape().dtype, {b, hk, d}),
                       MakeConstTensor(in.v.data(), shape().dtype, {b, hk, d}),
                       MakeMutableTensor(buffer.data(), out_dtype, {b, hq, d}), nullptr);
    if (out != nullptr) *out = ToFloat(out_dtype, buffer.data(), n_out);
    if (status.ok()) RecordDecode(layer, seqs, in);
    return status;
  }
  // Records a successful Decode made outside Decode() (e.g. with device tensors).
  void RecordDecode(int layer, const std::vector<SeqId>& seqs, const DecodeInputs& in) {
    const size_t row = static_cast<size_t>(shape().num_kv_heads) * shape().head_dim;
    for (size_t b = 0; b < seqs.size(); ++b) {
      model_.Append(seqs[b], layer, in.k.data() + b * row, in.v.data() + b * row, 1);
    }
  }

  // The selected pages of the last Decode of `layer`, per batch entry and KV head, from
  // Inspect.
  absl::StatusOr<std::vector<std::vector<KvCache::CacheInspection>>> InspectBatch(
      int layer, const std::vector<SeqId>& seqs) const {
    std::vector<std::vector<KvCache::CacheInspection>> out(seqs.size());
    for (size_t b = 0; b < seqs.size(); ++b) {
      for (int kh = 0; kh < shape().num_kv_heads; ++kh) {
        absl::StatusOr<KvCache::CacheInspection> inspection = cache_->Inspect(seqs[b], layer, kh);
        if (!inspection.ok()) return inspection.status();
        out[b].push_back(*std::move(inspection));
      }
    }
    return out;
  }

  // Exact attention of the step just decoded (already recorded in the model) for the batch
  // `seqs` with queries in.q: each entry attends to its hot set plus, per KV head,
  // (*selected)[b][kh] (absolute page indexes), or every cold page when `selected` is null.
  // With `page_mass`: per entry and KV head, the mass each listed selected page received.
  std::vector<double> Reference(
      int layer, const std::vector<SeqId>& seqs, const DecodeInputs& in,
      const std::vector<std::vector<std::vector<int32_t>>>* selected,
      std::vector<std::vector<std::vector<double>>>* page_mass = nullptr) const {
    const size_t hq = static_cast<size_t>(shape().num_query_heads);
    const size_t d = static_cast<size_t>(shape().head_dim);
    const int hk = shape().num_kv_heads;
    std::vector<double> out;
    out.reserve(seqs.size() * hq * d);
    if (page_mass != nullptr) page_mass->assign(seqs.size(), {});
    for (size_t b = 0; b < seqs.size(); ++b) {
      const LayerKv& kv = model_.Get(seqs[b], layer);
      const std::vector<int64_t> hot = geometry_.HotTokens(kv.tokens);
      std::vector<std::vector<int64_t>> attend(static_cast<size_t>(hk));
      std::vector<size_t> selected_from(static_cast<size_t>(hk));
      for (int kh = 0; kh < hk; ++kh) {
        const std::vector<int32_t> pages =
            selected != nullptr ? (*selected)[b][kh] : geometry_.AllCold(kv.tokens);
        attend[kh] = hot;
        selected_from[kh] = hot.size();
        const std::vector<int64_t> extra = geometry_.PageTokens(pages);
        attend[kh].insert(attend[kh].end(), extra.begin(), extra.end());
      }
      std::vector<std::vector<double>> token_mass;
      const std::vector<double> o =
          ExactAttention(shape(), options_.EffectiveSoftmaxScale(), kv, in.q.data() + b * hq * d,
                         attend, page_mass != nullptr ? &token_mass : nullptr);
      out.insert(out.end(), o.begin(), o.end());
      if (page_mass != nullptr) {
        (*page_mass)[b].assign(static_cast<size_t>(hk), {});
        for (int kh = 0; kh < hk; ++kh) {
          const size_t pages = (attend[kh].size() - selected_from[kh]) / geometry_.P;
          for (size_t e = 0; e < pages; ++e) {
            double m = 0;
            for (int t = 0; t < geometry_.P; ++t) {
              m += token_mass[kh][selected_from[kh] + e * geometry_.P + t];
            }
            (*page_mass)[b][kh].push_back(m);
          }
        }
      }
    }
    return out;
  }

  // Exact attention of the step just decoded (already recorded in the model) for the batch
  // `seqs` with queries in.q: each entry attends to its hot set plus, per KV head, the token
  // positions extra[b][kh] (e.g. Inspect's selected_positions: any cold positions, in any
  // order).
  std::vector<double> ReferenceAt(
      int layer, const std::vector<SeqId>& seqs, const DecodeInputs& in,
      const std::vector<std::vector<std::vector<int64_t>>>& extra) const {
    const size_t hq = static_cast<size_t>(shape().num_query_heads);
    const size_t d = static_cast<size_t>(shape().head_dim);
    std::vector<double> out;
    out.reserve(seqs.size() * hq * d);
    for (size_t b = 0; b < seqs.size(); ++b) {
      const LayerKv& kv = model_.Get(seqs[b], layer);
      const std::vector<int64_t> hot = geometry_.HotTokens(kv.tokens);
      std::vector<std::vector<int64_t>> attend;
      for (int kh = 0; kh < shape().num_kv_heads; ++kh) {
        attend.push_back(hot);
        attend.back().insert(attend.back().end(), extra[b][kh].begin(), extra[b][kh].end());
      }
      const std::vector<double> o = ExactAttention(shape(), options_.EffectiveSoftmaxScale(), kv,
                                                   in.q.data() + b * hq * d, attend);
      out.insert(out.end(), o.begin(), o.end());
    }
    return out;
  }

 private:
  Driver(const Options& options, std::unique_ptr<KvCache> cache)
      : options_(options), geometry_(options), cache_(std::move(cache)), model_(options.shape) {}

  Options options_;
  Geometry geometry_;
  std::unique_ptr<KvCache> cache_;
  KvModel model_;
};

// Host-backend tolerance of a Decode output against ExactAttention: the twins compute in
// double and round each partial result to fp32 once, then the merged result to out_dtype.
inline double HostRelTolerance(DType out_dtype) { return Roundoff(out_dtype) + 2e-6; }
inline constexpr double kHostAbsTolerance = 1e-5;

}  // namespace kvtier::runtime_test
