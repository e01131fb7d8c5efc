// KvCache on the host backend: every documented error of every call and of Create, each
// checked to change nothing by comparing with a twin cache fed identically except for the bad
// call (exhausted store and token limit included).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cache_resolve.h"
#include "runtime/kv_cache.h"
#include "tests/runtime/page_cache_model.h"
#include "tests/runtime/runtime_schedules.h"
#include "tests/runtime/runtime_test_util.h"

namespace kvtier {
namespace {

using runtime_test::AnyNaN;
using runtime_test::DecodeInputs;
using runtime_test::Driver;
using runtime_test::ExpectClose;
using runtime_test::ExpectTopK;
using runtime_test::Geometry;
using runtime_test::HostOptions;
using runtime_test::HostRelTolerance;
using runtime_test::kHostAbsTolerance;
using runtime_test::PageCacheModel;
using runtime_test::QuestScores;
using runtime_test::RandomBatch;
using runtime_test::RandomOutDType;
using runtime_test::Uniform;

#define ASSERT_OK(expr) KVTIER_RT_ASSERT_OK(expr)
#define EXPECT_OK(expr) KVTIER_RT_EXPECT_OK(expr)

// ---- 5. Bad input -------------------------------------------------------------------------

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 std::initializer_list<const char*> words, const std::string& call) {
  EXPECT_EQ(status.code(), code) << call << ": " << status;
  for (const char* word : words) {
    EXPECT_TRUE(absl::StrContains(status.message(), word))
        << call << ": message \"" << status.message() << "\" does not mention \"" << word << "\"";
  }
}

// Two caches fed identically; bad calls go to `a` only, and afterwards `a` must be
// indistinguishable from `b`.
class TwinCacheTest : public ::testing::Test {
 protected:
  static Options TwinOptions() {
    Options o = HostOptions(2, 64, DType::kBF16, 16, 16, 32);
    o.max_sequences = 4;
    o.max_batch_size = 2;
    o.max_sequence_tokens = 512;
    o.budget.max_pages = 3;
    return o;
  }

  void Create(const Options& o) {
    absl::StatusOr<std::unique_ptr<Driver>> a = Driver::Create(o);
    ASSERT_TRUE(a.ok()) << a.status();
    absl::StatusOr<std::unique_ptr<Driver>> b = Driver::Create(o);
    ASSERT_TRUE(b.ok()) << b.status();
    a_ = *std::move(a);
    b_ = *std::move(b);
  }

  // The same call on both; both must succeed.
  void Add(SeqId seq) {
    ASSERT_OK(a_->Add(seq));
    ASSERT_OK(b_->Add(seq));
  }
  void Remove(SeqId seq) {
    ASSERT_OK(a_->Remove(seq));
    ASSERT_OK(b_->Remove(seq));
  }
  void Prefill(SeqId seq, int layer, int64_t tokens) {
    const std::vector<uint16_t> k = a_->RandomRows(tokens, rng_);
    const std::vector<uint16_t> v = a_->RandomRows(tokens, rng_);
    ASSERT_OK(a_->Prefill(seq, layer, k, v));
    ASSERT_OK(b_->Prefill(seq, layer, k, v));
  }
  void Decode(int layer, const std::vector<SeqId>& seqs, const std::string& what) {
    const DecodeInputs in = a_->RandomDecodeInputs(seqs.size(), rng_, 2.0f);
    std::vector<float> out_a, out_b;
    ASSERT_OK(a_->Decode(layer, seqs, in, DType::kFP32, &out_a));
    ASSERT_OK(b_->Decode(layer, seqs, in, DType::kFP32, &out_b));
    EXPECT_EQ(out_a, out_b) << what << ": outputs differ from the untouched twin";
    EXPECT_FALSE(AnyNaN(out_a)) << what;
  }

  // a == b: token counts, host store, statistics, and (with `decode`) a decode of `batch`
  // in every layer: same outputs, selections and cache directories.
  void ExpectTwinsEqual(const std::string& what, const std::vector<SeqId>& batch,
                        bool decode = true) {
    for (SeqId seq : b_->model().Sequences()) {
      for (int layer = 0; layer < b_->shape().num_layers; ++layer) {
        absl::StatusOr<int64_t> na = a_->cache().NumTokens(seq, layer);
        ASSERT_TRUE(na.ok()) << what << ": " << na.status();
        EXPECT_EQ(*na, b_->model().Tokens(seq, layer)) << what << ": seq " << seq;
      }
    }
    EXPECT_EQ(a_->model().Sequences(), b_->model().Sequences()) << what;
    const Stats sa = a_->cache().GetStats(), sb = b_->cache().GetStats();
    EXPECT_EQ(sa.host_pages_used, sb.host_pages_used) << what;
    EXPECT_EQ(sa.num_sequences, sb.num_sequences) << what;
    const LayerStats ta = sa.Total(), tb = sb.Total();
    EXPECT_EQ(ta.decode_steps, tb.decode_steps) << what;
    EXPECT_EQ(ta.decode_items, tb.decode_items) << what;
    EXPECT_EQ(ta.prefill_tokens, tb.prefill_tokens) << what;
    EXPECT_EQ(ta.pages_selected, tb.pages_selected) << what;
    EXPECT_EQ(ta.page_misses, tb.page_misses) << what;
    EXPECT_EQ(ta.bytes_written_back, tb.bytes_written_back) << what;
    if (!decode) return;
    for (int layer = 0; layer < b_->shape().num_layers; ++layer) {
      Decode(layer, batch, what);
      if (HasFatalFailure()) return;
      for (SeqId seq : batch) {
        for (int kh = 0; kh < b_->shape().num_kv_heads; ++kh) {
          absl::StatusOr<KvCache::CacheInspection> xa = a_->cache().Inspect(seq, layer, kh);
          absl::StatusOr<KvCache::CacheInspection> xb = b_->cache().Inspect(seq, layer, kh);
          ASSERT_TRUE(xa.ok() && xb.ok()) << what;
          EXPECT_EQ(xa->selected_pages, xb->selected_pages) << what;
          EXPECT_EQ(xa->hits, xb->hits) << what;
          EXPECT_EQ(xa->misses, xb->misses) << what;
          EXPECT_EQ(xa->slot_page, xb->slot_page) << what;
          EXPECT_EQ(xa->slot_last_use, xb->slot_last_use) << what;
          EXPECT_EQ(xa->slot_score, xb->slot_score) << what;
        }
      }
    }
  }

  ConstTensor Rows(const std::vector<uint16_t>& data, int64_t n, int heads, int d,
                   DType dtype = DType::kBF16, MemorySpace space = MemorySpace::kHost) {
    return MakeConstTensor(data.data(), dtype, {n, heads, d}, space);
  }

  std::unique_ptr<Driver> a_, b_;
  std::mt19937_64 rng_{41};
};

// Every Prefill, Decode, AddSequence, RemoveSequence, NumTokens and Inspect error: the
// documented code, a message naming the problem, and nothing changed.
TEST_F(TwinCacheTest, BadCallsReturnTheirErrorAndChangeNothing) {
  const Options o = TwinOptions();
  Create(o);
  if (HasFatalFailure()) return;
  const int hk = o.shape.num_kv_heads, hq = o.shape.num_query_heads, d = o.shape.head_dim;
  // s1, s2 prefilled in both layers (s2 ends mid-page); s3 only in layer 0; s4 empty.
  constexpr SeqId s1 = 11, s2 = 22, s3 = 33, s4 = 44, unknown = 999;
  for (SeqId seq : {s1, s2, s3, s4}) Add(seq);
  for (int layer = 0; layer < 2; ++layer) {
    Prefill(s1, layer, 200);
    Prefill(s2, layer, 77);
  }
  Prefill(s3, 0, 40);
  if (HasFatalFailure()) return;
  const std::vector<SeqId> pair = {s1, s2};
  ExpectTwinsEqual("setup", pair);
  KvCache& a = a_->cache();

  // ---- Prefill: 5 tokens into s1 layer 0 unless the case says otherwise.
  const int64_t n = 5;
  const std::vector<uint16_t> k = a_->RandomRows(n, rng_), v = a_->RandomRows(n, rng_);
  const std::vector<uint16_t> big(static_cast<size_t>((n + 1) * hk * 2 * d + 4096), 0x3F80);
  const std::vector<uint16_t> q(static_cast<size_t>(n * hq * d), 0x3F80);
  const ConstTensor none;
  ExpectError(a.Prefill(unknown, 0, Rows(k, n, hk, d), Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kNotFound, {"999"}, "Prefill unknown sequence");
  ExpectError(a.Prefill(s1, -1, Rows(k, n, hk, d), Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Prefill layer -1");
  ExpectError(a.Prefill(s1, 2, Rows(k, n, hk, d), Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Prefill layer 2");
  ExpectError(a.Prefill(s1, 0, MakeConstTensor(k.data(), DType::kBF16, {n * hk, d}),
                        Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k"}, "Prefill k rank 2");
  ExpectError(a.Prefill(s1, 0, Rows(big, n, hk + 1, d), Rows(big, n, hk + 1, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k"}, "Prefill k heads");
  ExpectError(a.Prefill(s1, 0, Rows(big, n, hk, 2 * d), Rows(big, n, hk, 2 * d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k"}, "Prefill k head_dim");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d, DType::kFP16), Rows(v, n, hk, d, DType::kFP16),
                        none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k", "dtype"}, "Prefill k fp16");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(big, n + 1, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill v"}, "Prefill v tokens");
  ExpectError(
      a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(big, n / 2, hk, d, DType::kFP32), none, nullptr),
      absl::StatusCode::kInvalidArgument, {"Prefill v"}, "Prefill v fp32");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(v, n, hk, d),
                        MakeConstTensor(q.data(), DType::kBF16, {n, hq + 1, d}), nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill q"}, "Prefill q heads");
  ExpectError(a.Prefill(s1, 0, MakeConstTensor(k.data(), DType::kBF16, {0, hk, d}),
                        MakeConstTensor(v.data(), DType::kBF16, {0, hk, d}), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill"}, "Prefill 0 tokens");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d, DType::kBF16, MemorySpace::kDevice),
                        Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k", "device"}, "Prefill k device");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d),
                        Rows(v, n, hk, d, DType::kBF16, MemorySpace::kDevice), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill v", "device"}, "Prefill v device");
  ExpectError(
      a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(v, n, hk, d),
                MakeConstTensor(q.data(), DType::kBF16, {n, hq, d}, MemorySpace::kDevice), nullptr),
      absl::StatusCode::kInvalidArgument, {"Prefill q", "device"}, "Prefill q device");
  ExpectError(a.Prefill(s1, 0, MakeConstTensor(nullptr, DType::kBF16, {n, hk, d}),
                        Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k", "null"}, "Prefill k null");
  {
    ConstTensor strided = Rows(big, n, hk, d);
    strided.strides = {int64_t{2} * hk * d, d, 1};  // every other token
    ExpectError(a.Prefill(s1, 0, strided, Rows(v, n, hk, d), none, nullptr),
                absl::StatusCode::kInvalidArgument, {"Prefill k", "contiguous"},
                "Prefill k strided");
  }
  {
    const int64_t too_many = o.max_sequence_tokens - 200 + 1;
    const std::vector<uint16_t> rows = a_->RandomRows(too_many, rng_);
    ExpectError(
        a.Prefill(s1, 0, Rows(rows, too_many, hk, d), Rows(rows, too_many, hk, d), none, nullptr),
        absl::StatusCode::kResourceExhausted, {"max_sequence_tokens"},
        "Prefill beyond max_sequence_tokens");
  }
  ExpectTwinsEqual("after bad Prefill calls", pair);

  // ---- Decode: batch {s1, s2} in layer 0 unless the case says otherwise.
  const int64_t bsz = 2;
  const DecodeInputs in = a_->RandomDecodeInputs(3, rng_);
  std::vector<float> out(static_cast<size_t>(3 * hq * d), 0.0f);
  auto qt = [&](int64_t b, int heads = -1, DType dt = DType::kBF16,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeConstTensor(in.q.data(), dt, {b, heads < 0 ? hq : heads, d}, sp);
  };
  auto kt = [&](int64_t b, int heads = -1, DType dt = DType::kBF16,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeConstTensor(in.k.data(), dt, {b, heads < 0 ? hk : heads, d}, sp);
  };
  auto vt = [&](int64_t b, int heads = -1, DType dt = DType::kBF16,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeConstTensor(in.v.data(), dt, {b, heads < 0 ? hk : heads, d}, sp);
  };
  auto ot = [&](int64_t b, int heads = -1, DType dt = DType::kFP32,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeMutableTensor(out.data(), dt, {b, heads < 0 ? hq : heads, d}, sp);
  };
  auto decode = [&](int layer, std::vector<SeqId> seqs, const ConstTensor& q_,
                    const ConstTensor& k_, const ConstTensor& v_, const MutableTensor& o_) {
    return a.Decode(layer, seqs, q_, k_, v_, o_, nullptr);
  };
  ExpectError(decode(-1, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Decode layer -1");
  ExpectError(decode(2, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Decode layer 2");
  ExpectError(decode(0, {s1, s2, s3}, qt(3), kt(3), vt(3), ot(3)),
              absl::StatusCode::kInvalidArgument, {"max_batch_size"}, "Decode batch 3 > 2");
  ExpectError(decode(0, pair, qt(1), kt(bsz), vt(bsz), ot(bsz)), absl::StatusCode::kInvalidArgument,
              {"Decode q"}, "Decode q batch");
  ExpectError(decode(0, pair, qt(bsz, hk), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode q"}, "Decode q heads");
  ExpectError(decode(0, pair, qt(bsz, -1, DType::kFP16), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode q", "dtype"}, "Decode q fp16");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz, hq), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode k_new"}, "Decode k_new heads");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(bsz, -1, DType::kFP16), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode v_new"}, "Decode v_new fp16");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(3), ot(bsz)), absl::StatusCode::kInvalidArgument,
              {"Decode v_new"}, "Decode v_new batch");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz, hk)),
              absl::StatusCode::kInvalidArgument, {"Decode out"}, "Decode out heads");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(bsz), ot(1)), absl::StatusCode::kInvalidArgument,
              {"Decode out"}, "Decode out batch");
  ExpectError(
      decode(0, pair, qt(bsz, -1, DType::kBF16, MemorySpace::kDevice), kt(bsz), vt(bsz), ot(bsz)),
      absl::StatusCode::kInvalidArgument, {"Decode q", "device"}, "Decode q device");
  ExpectError(
      decode(0, pair, qt(bsz), kt(bsz, -1, DType::kBF16, MemorySpace::kDevice), vt(bsz), ot(bsz)),
      absl::StatusCode::kInvalidArgument, {"Decode k_new", "device"}, "Decode k_new device");
  ExpectError(
      decode(0, pair, qt(bsz), kt(bsz), vt(bsz, -1, DType::kBF16, MemorySpace::kDevice), ot(bsz)),
      absl::StatusCode::kInvalidArgument, {"Decode v_new", "device"}, "Decode v_new device");
  ExpectError(
      decode(0, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz, -1, DType::kFP32, MemorySpace::kDevice)),
      absl::StatusCode::kInvalidArgument, {"Decode out", "device"}, "Decode out device");
  ExpectError(decode(0, {s1, unknown}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kNotFound, {"999"}, "Decode unknown sequence");
  ExpectError(decode(0, {s1, s1}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"11"}, "Decode sequence twice");
  ExpectError(decode(1, {s1, s3}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kFailedPrecondition, {"33"}, "Decode layer not prefilled");
  ExpectError(decode(0, {s4}, qt(1), kt(1), vt(1), ot(1)), absl::StatusCode::kFailedPrecondition,
              {"44"}, "Decode empty sequence");
  ExpectTwinsEqual("after bad Decode calls", pair);

  // ---- Sequences, NumTokens, Inspect.
  ExpectError(a.AddSequence(s1), absl::StatusCode::kAlreadyExists, {"11"}, "AddSequence twice");
  ExpectError(a.AddSequence(55), absl::StatusCode::kResourceExhausted, {"max_sequences"},
              "AddSequence beyond max_sequences");
  ExpectError(a.RemoveSequence(unknown), absl::StatusCode::kNotFound, {"999"},
              "RemoveSequence unknown");
  ExpectError(a.NumTokens(unknown, 0).status(), absl::StatusCode::kNotFound, {"999"},
              "NumTokens unknown");
  ExpectError(a.NumTokens(s1, 2).status(), absl::StatusCode::kInvalidArgument, {"layer"},
              "NumTokens layer");
  ExpectError(a.Inspect(unknown, 0, 0).status(), absl::StatusCode::kNotFound, {"999"},
              "Inspect unknown");
  ExpectError(a.Inspect(s1, -1, 0).status(), absl::StatusCode::kInvalidArgument, {"layer"},
              "Inspect layer");
  ExpectError(a.Inspect(s1, 0, hk).status(), absl::StatusCode::kInvalidArgument, {"kv_head"},
              "Inspect kv_head");
  ExpectTwinsEqual("after bad sequence calls", pair);

  // A removed sequence is unknown everywhere, and its id can be used again.
  Remove(s2);
  ExpectError(a.NumTokens(s2, 0).status(), absl::StatusCode::kNotFound, {"22"},
              "NumTokens removed");
  ExpectError(decode(0, {s1, s2}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)), absl::StatusCode::kNotFound,
              {"22"}, "Decode removed sequence");
  Add(s2);
  ExpectError(decode(0, {s1, s2}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kFailedPrecondition, {"22"}, "Decode re-added sequence");
  for (int layer = 0; layer < 2; ++layer) Prefill(s2, layer, 300);
  ExpectTwinsEqual("after re-adding", pair);
}

// Host store and max_sequence_tokens exhaustion, for Prefill and for Decode when a page must
// start (all or nothing over the batch).
TEST_F(TwinCacheTest, ExhaustedStoreAndTokenLimitChangeNothing) {
  Options o = TwinOptions();
  o.max_sequence_tokens = 256;
  const int p = o.page_size, hk = o.shape.num_kv_heads;
  // s1 64 tokens (4 pages), s2 48 tokens (3 pages), ballast 240 tokens (15 pages), both
  // layers: (4 + 3 + 15) * 2 layers * 2 heads = 88 frames; room for 3 more.
  const int64_t frames = 88 + 3;
  o.host_memory_bytes = frames * 2 * PageBytes(o.shape, p);
  Create(o);
  if (HasFatalFailure()) return;
  ASSERT_EQ(a_->cache().GetStats().host_pages_capacity, frames);
  constexpr SeqId s1 = 1, s2 = 2, ballast = 3;
  for (SeqId seq : {s1, s2, ballast}) Add(seq);
  for (int layer = 0; layer < 2; ++layer) {
    Prefill(s1, layer, 64);
    Prefill(s2, layer, 48);
    Prefill(ballast, layer, 240);
  }
  if (HasFatalFailure()) return;
  ASSERT_EQ(a_->cache().GetStats().host_pages_used, 88);
  KvCache& a = a_->cache();
  const int d = o.shape.head_dim, hq = o.shape.num_query_heads;

  // Prefill of 40 tokens into s1 needs 3 pages per KV head: 6 frames, 3 free.
  {
    const std::vector<uint16_t> rows = a_->RandomRows(40, rng_);
    const ConstTensor t = MakeConstTensor(rows.data(), DType::kBF16, {40, hk, d});
    ExpectError(a.Prefill(s1, 0, t, t, ConstTensor{}, nullptr),
                absl::StatusCode::kResourceExhausted, {"host store"}, "Prefill, store full");
  }
  // Decode of {s2, s1}: both start a page (4 frames), 3 free: nothing may be taken.
  const DecodeInputs in = a_->RandomDecodeInputs(2, rng_);
  std::vector<float> out(static_cast<size_t>(2 * hq * d));
  auto decode = [&](std::vector<SeqId> seqs, int64_t b) {
    return a.Decode(0, seqs, MakeConstTensor(in.q.data(), DType::kBF16, {b, hq, d}),
                    MakeConstTensor(in.k.data(), DType::kBF16, {b, hk, d}),
                    MakeConstTensor(in.v.data(), DType::kBF16, {b, hk, d}),
                    MakeMutableTensor(out.data(), DType::kFP32, {b, hq, d}), nullptr);
  };
  ExpectError(decode({s2, s1}, 2), absl::StatusCode::kResourceExhausted, {"host store"},
              "Decode, store full");
  EXPECT_EQ(a.GetStats().host_pages_used, 88) << "a failed Decode took frames";
  ExpectTwinsEqual("after store-full calls", {}, /*decode=*/false);

  // max_sequence_tokens: the ballast reaches 256 tokens in layer 0 (16 pages: 2 frames).
  Prefill(ballast, 0, 16);
  if (HasFatalFailure()) return;
  ExpectError(decode({s2, ballast}, 2), absl::StatusCode::kResourceExhausted,
              {"max_sequence_tokens"}, "Decode at max_sequence_tokens");
  {
    const std::vector<uint16_t> rows = a_->RandomRows(1, rng_);
    const ConstTensor t = MakeConstTensor(rows.data(), DType::kBF16, {1, hk, d});
    ExpectError(a.Prefill(ballast, 0, t, t, ConstTensor{}, nullptr),
                absl::StatusCode::kResourceExhausted, {"max_sequence_tokens"},
                "Prefill at max_sequence_tokens");
  }
  ExpectTwinsEqual("after token-limit calls", {}, /*decode=*/false);

  // With room again, both caches decode identically.
  Remove(ballast);
  ExpectTwinsEqual("after freeing the store", {s2, s1});
  EXPECT_EQ(a.GetStats().host_pages_used, b_->model().HostPagesNeeded(p));
}

// Create refuses bad options with InvalidArgument naming every bad field, and configurations
// that cannot run.
TEST(KvCacheCreateTest, BadOptions) {
  Options o = HostOptions(2, 64, DType::kBF16, 16, 16, 32);
  ASSERT_TRUE(KvCache::Create(o).ok());

  Options bad = o;
  bad.shape.head_dim = 96;
  bad.page_size = 24;
  bad.window_tokens = 0;
  bad.budget.max_pages = 0;
  bad.max_batch_size = bad.max_sequences + 1;
  bad.score_decay = 0.0f;
  absl::StatusOr<std::unique_ptr<KvCache>> created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument,
              {"shape.head_dim", "page_size", "window_tokens", "budget.max_pages", "max_batch_size",
               "score_decay"},
              "Create with six bad fields");

  bad = o;
  bad.shape.num_kv_heads = 3;  // does not divide 4 query heads
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument, {"num_kv_heads"},
              "Create with Hk not dividing Hq");

  bad = o;
  bad.shape.num_layers = 0;
  bad.sink_tokens = 8;  // not a multiple of 16
  bad.cache_slots_per_budget = 0.5;
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument,
              {"shape.num_layers", "sink_tokens", "cache_slots_per_budget"},
              "Create with three bad fields");

  // More cache slots than the resolve supports.
  bad = o;
  bad.budget.max_pages = 4096;
  bad.cache_slots_per_budget = 32;
  bad.max_sequence_tokens = 4096 * 16;
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << created.status();

  // A host store below one page frame per KV head.
  bad = o;
  bad.host_memory_bytes = PageBytes(o.shape, o.page_size);
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument, {"host_memory_bytes"},
              "Create with a tiny host store");

  // The CUDA backend with a device budget far too small: ResourceExhausted with the
  // breakdown (checked before any device is touched), or FailedPrecondition without a device.
  bad = o;
  bad.backend = Backend::kCuda;
  bad.gpu_memory_bytes = 4096;
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  if (created.status().code() == absl::StatusCode::kResourceExhausted) {
    ExpectError(created.status(), absl::StatusCode::kResourceExhausted,
                {"gpu_memory_bytes", "max_sequences"}, "Create with a tiny GPU budget");
  } else {
    EXPECT_EQ(created.status().code(), absl::StatusCode::kFailedPrecondition) << created.status();
  }
}

// budget.mass_target is documented ("select the fewest pages whose estimated share reaches
// this target") but the page-bounds index has no mass estimate and Decode always selects the
// top max_pages: a cache created with a mass target must either honour it or be refused.
TEST(KvCacheCreateTest, MassTargetIsRefusedByThePageBoundsIndex) {
  Options o = HostOptions(2, 64, DType::kBF16, 16, 16, 32);
  o.budget.mass_target = 0.5;
  absl::StatusOr<std::unique_ptr<KvCache>> created = KvCache::Create(o);
  ASSERT_FALSE(created.ok()) << "a mass target is accepted and then silently ignored";
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument, {"mass_target"},
              "Create with a mass target");
}

}  // namespace
}  // namespace kvtier
