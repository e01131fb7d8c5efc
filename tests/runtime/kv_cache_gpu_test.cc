// KvCache on the CUDA backend against the host backend, step by step on identical inputs:
// the outputs agree within the attention kernel's tolerance (it rounds P to the input dtype
// for P.V), and the selections, hit and miss counts and cache directories agree exactly (the
// select and resolve kernels are bit-identical to their twins; only the score policy's
// scores come from attention and may break a near tie differently). With host- and
// device-memory tensors, every policy; exactness with a full budget; a Decode captured in a
// CUDA graph; and Llama-like shapes with long contexts. Skips without a device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "runtime/kv_cache.h"
#include "tests/runtime/runtime_schedules.h"
#include "tests/runtime/runtime_test_util.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

using runtime_test::AnyNaN;
using runtime_test::CudaTolerance;
using runtime_test::DecodeInputs;
using runtime_test::Driver;
using runtime_test::ExpectClose;
using runtime_test::Geometry;
using runtime_test::PoisonedBuffer;
using runtime_test::ToFloat;
using runtime_test::Uniform;

Options BaseOptions(int g, int head_dim, DType dtype, CachePolicy policy, Backend backend) {
  Options o;
  o.shape.num_layers = 2;
  o.shape.num_kv_heads = 2;
  o.shape.num_query_heads = 2 * g;
  o.shape.head_dim = head_dim;
  o.shape.dtype = dtype;
  o.page_size = 16;
  o.sink_tokens = 16;
  o.window_tokens = 64;
  o.budget.max_pages = 6;
  o.cache_slots_per_budget = 1.5;
  o.cache_policy = policy;
  o.host_memory_bytes = int64_t{128} << 20;
  o.gpu_memory_bytes = int64_t{2} << 30;
  o.max_sequences = 6;
  o.max_batch_size = 4;
  o.max_sequence_tokens = 4096;
  o.max_prefill_chunk_tokens = 256;
  o.backend = backend;
  return o;
}

// Device copies of one step's inputs and a poisoned device output.
struct DeviceStep {
  DeviceBuffer q, k, v, out;
  size_t out_elements = 0;
  DType out_dtype = DType::kFP32;
};

DeviceStep UploadStep(const DecodeInputs& in, DType out_dtype, size_t out_elements) {
  DeviceStep s;
  s.q = Upload(in.q);
  s.k = Upload(in.k);
  s.v = Upload(in.v);
  const std::vector<std::byte> poison = PoisonedBuffer(out_dtype, out_elements);
  s.out = Upload(poison);
  s.out_elements = out_elements;
  s.out_dtype = out_dtype;
  return s;
}

// Decode on `d` with device tensors from `s` on `stream` (recorded in d's model on success).
absl::Status DecodeOnDevice(Driver& d, int layer, const std::vector<SeqId>& seqs,
                            const DecodeInputs& in, const DeviceStep& s, cudaStream_t stream) {
  const ModelShape& sh = d.shape();
  const int64_t b = static_cast<int64_t>(seqs.size());
  absl::Status status = d.cache().Decode(
      layer, seqs,
      MakeConstTensor(s.q.data(), sh.dtype, {b, sh.num_query_heads, sh.head_dim},
                      MemorySpace::kDevice),
      MakeConstTensor(s.k.data(), sh.dtype, {b, sh.num_kv_heads, sh.head_dim},
                      MemorySpace::kDevice),
      MakeConstTensor(s.v.data(), sh.dtype, {b, sh.num_kv_heads, sh.head_dim},
                      MemorySpace::kDevice),
      MakeMutableTensor(s.out.data(), s.out_dtype, {b, sh.num_query_heads, sh.head_dim},
                        MemorySpace::kDevice),
      stream);
  if (status.ok()) d.RecordDecode(layer, seqs, in);
  return status;
}

std::vector<float> DownloadOut(const DeviceStep& s) {
  const std::vector<std::byte> bytes =
      Download<std::byte>(s.out, s.out_elements * DTypeSize(s.out_dtype));
  return ToFloat(s.out_dtype, bytes.data(), s.out_elements);
}

// Random bf16/fp16 rows for long contexts, faster than a normal distribution: uniform with
// unit variance from a xorshift generator.
std::vector<uint16_t> FastRandom(DType dtype, size_t n, uint64_t seed) {
  std::vector<uint16_t> out(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (uint16_t& e : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const float u = static_cast<float>(x >> 40) * 0x1p-24f;  // [0, 1)
    StoreFromFloat(dtype, (2.0f * u - 1.0f) * 1.7320508f, &e, 0);
  }
  return out;
}

// Compares the two caches' page caches for `batch` after a step: selections, hits and misses
// and directories exactly. For the score policy a directory may diverge where two candidate
// scores (which come from attention) were nearly equal; then that item is no longer compared.
void ExpectSameCaches(const Driver& cuda, const Driver& host, int layer,
                      const std::vector<SeqId>& batch,
                      std::map<std::pair<SeqId, int>, KvCache::CacheInspection>* host_before,
                      std::set<std::pair<SeqId, int>>* diverged, const std::string& what) {
  const bool score_policy = host.options().cache_policy == CachePolicy::kLowestScore;
  for (SeqId seq : batch) {
    for (int kh = 0; kh < host.shape().num_kv_heads; ++kh) {
      const std::string where = absl::StrCat(what, ", seq ", seq, ", kv head ", kh);
      absl::StatusOr<KvCache::CacheInspection> xc = cuda.cache().Inspect(seq, layer, kh);
      absl::StatusOr<KvCache::CacheInspection> xh = host.cache().Inspect(seq, layer, kh);
      ASSERT_TRUE(xc.ok()) << where << ": " << xc.status();
      ASSERT_TRUE(xh.ok()) << where << ": " << xh.status();
      // The selection does not depend on the cache: always bit-identical.
      ASSERT_EQ(xc->selected_pages, xh->selected_pages) << where << ": selections differ";
      EXPECT_EQ(xc->hits + xc->misses, static_cast<int32_t>(xc->selected_pages.size())) << where;
      const auto key = std::make_pair(seq, layer * 1000 + kh);
      if (diverged->contains(key)) continue;
      if (xc->slot_page != xh->slot_page || xc->hits != xh->hits) {
        bool near_tie = false;
        auto it = host_before->find(key);
        if (score_policy && it != host_before->end()) {
          std::vector<float> scores;
          const KvCache::CacheInspection& before = it->second;
          for (size_t s = 0; s < before.slot_page.size(); ++s) {
            if (before.slot_page[s] >= 0) scores.push_back(before.slot_score[s]);
          }
          std::sort(scores.begin(), scores.end());
          for (size_t i = 1; i < scores.size(); ++i) {
            near_tie |= scores[i] - scores[i - 1] <= 1e-2f * std::max(1.0f, scores[i]);
          }
        }
        if (near_tie) {
          diverged->insert(key);  // a near tie of attention-derived scores broke differently
          continue;
        }
        ADD_FAILURE() << where << ": directories or hit counts differ (CUDA hits " << xc->hits
                      << ", host hits " << xh->hits << ")";
        continue;
      }
      EXPECT_EQ(xc->misses, xh->misses) << where;
      EXPECT_EQ(xc->slot_last_use, xh->slot_last_use) << where;
      for (size_t s = 0; s < xc->slot_score.size(); ++s) {
        if (xh->slot_page[s] < 0) continue;
        EXPECT_NEAR(xc->slot_score[s], xh->slot_score[s],
                    2e-2 * std::max(1.0f, std::abs(xh->slot_score[s])))
            << where << ", slot " << s;
      }
      (*host_before)[key] = *xh;
    }
  }
}

// ---- CUDA equals host, step by step ------------------------------------------------------

struct StepCase {
  CachePolicy policy;
  bool device_tensors;
  int g;
  int head_dim;
  DType dtype;
  int sink;
  int window;
  uint64_t seed;
};

class KvCacheCudaVsHostTest : public GpuStreamTestBase<::testing::TestWithParam<StepCase>> {
 protected:
  KvCacheCudaVsHostTest() : GpuStreamTestBase("KvCache CUDA backend tests") {}
};

TEST_P(KvCacheCudaVsHostTest, StepByStep) {
  const StepCase c = GetParam();
  Options ho = BaseOptions(c.g, c.head_dim, c.dtype, c.policy, Backend::kHost);
  ho.sink_tokens = c.sink;
  ho.window_tokens = c.window;
  Options co = ho;
  co.backend = Backend::kCuda;
  absl::StatusOr<std::unique_ptr<Driver>> hc = Driver::Create(ho);
  ASSERT_TRUE(hc.ok()) << hc.status();
  absl::StatusOr<std::unique_ptr<Driver>> cc = Driver::Create(co);
  ASSERT_TRUE(cc.ok()) << cc.status();
  Driver& host = **hc;
  Driver& cuda = **cc;
  EXPECT_GT(cuda.cache().GetStats().gpu_bytes_reserved, 0);
  EXPECT_LE(cuda.cache().GetStats().gpu_bytes_reserved, co.gpu_memory_bytes);
  std::mt19937_64 rng(c.seed);
  const int hq = ho.shape.num_query_heads, d = ho.shape.head_dim;

  SeqId next_seq = 1;
  std::vector<SeqId> live;
  auto add_sequence = [&] {
    const SeqId seq = next_seq++;
    ASSERT_OK(host.Add(seq));
    ASSERT_OK(cuda.Add(seq));
    const int64_t tokens = rng() % 4 == 0 ? Uniform(rng, 1, 80) : Uniform(rng, 100, 3000);
    for (int layer = 0; layer < ho.shape.num_layers; ++layer) {
      for (int64_t done = 0; done < tokens;) {
        const int64_t chunk = std::min<int64_t>(tokens - done, Uniform(rng, 1, 700) | 1);
        const std::vector<uint16_t> k = host.RandomRows(chunk, rng),
                                    v = host.RandomRows(chunk, rng);
        ASSERT_OK(host.Prefill(seq, layer, k, v));
        ASSERT_OK(cuda.Prefill(seq, layer, k, v));  // host-memory prefill input
        done += chunk;
      }
    }
    live.push_back(seq);
  };
  for (int i = 0; i < 4; ++i) {
    add_sequence();
    if (HasFatalFailure()) return;
  }

  std::map<std::pair<SeqId, int>, KvCache::CacheInspection> before;
  std::set<std::pair<SeqId, int>> diverged;
  for (int step = 0; step < 60; ++step) {
    if (step % 15 == 14) {
      const size_t victim = rng() % live.size();
      ASSERT_OK(host.Remove(live[victim]));
      ASSERT_OK(cuda.Remove(live[victim]));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
      add_sequence();
      if (HasFatalFailure()) return;
    }
    const int layer = static_cast<int>(rng() % ho.shape.num_layers);
    std::vector<SeqId> batch = live;
    std::shuffle(batch.begin(), batch.end(), rng);
    batch.resize(static_cast<size_t>(Uniform(rng, 1, 4)));
    constexpr DType kOut[] = {DType::kFP32, DType::kBF16, DType::kFP16};
    const DType out_dtype = kOut[rng() % 3];
    const DecodeInputs in = host.RandomDecodeInputs(batch.size(), rng, 2.0f);
    const size_t n_out = batch.size() * hq * d;
    std::vector<float> want, got;
    ASSERT_OK(host.Decode(layer, batch, in, out_dtype, &want));
    if (c.device_tensors) {
      const DeviceStep s = UploadStep(in, out_dtype, n_out);
      ASSERT_OK(DecodeOnDevice(cuda, layer, batch, in, s, stream()));
      ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
      got = DownloadOut(s);
    } else {
      ASSERT_OK(cuda.Decode(layer, batch, in, out_dtype, &got));  // host memory, stream null
    }
    const std::string what =
        absl::StrCat("step ", step, ", layer ", layer, ", out ", DTypeName(out_dtype));
    ASSERT_FALSE(AnyNaN(got)) << what << ": unwritten (NaN) output";
    std::vector<double> want_d(want.begin(), want.end());
    const double tol = CudaTolerance(c.dtype, out_dtype);
    ExpectClose(got, want_d, tol, tol, what);
    ExpectSameCaches(cuda, host, layer, batch, &before, &diverged, what);
    if (HasFailure()) return;
  }
  // Counters: selections are identical, so pages_selected agrees exactly.
  const LayerStats sc = cuda.cache().GetStats().Total(), sh = host.cache().GetStats().Total();
  EXPECT_EQ(sc.pages_selected, sh.pages_selected);
  EXPECT_EQ(sc.decode_steps, sh.decode_steps);
  EXPECT_EQ(sc.prefill_tokens, sh.prefill_tokens);
  EXPECT_EQ(sc.pages_selected, sc.page_hits + sc.page_misses);
  if (diverged.empty()) {
    EXPECT_EQ(sc.page_hits, sh.page_hits);
    EXPECT_EQ(sc.page_misses, sh.page_misses);
  }
  EXPECT_EQ(cuda.cache().GetStats().host_pages_used, host.cache().GetStats().host_pages_used);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, KvCacheCudaVsHostTest,
    ::testing::Values(
        StepCase{CachePolicy::kLeastRecentlyUsed, true, 4, 128, DType::kBF16, 16, 64, 1},
        StepCase{CachePolicy::kLeastRecentlyUsed, false, 2, 64, DType::kFP16, 64, 16, 2},
        StepCase{CachePolicy::kLowestScore, true, 8, 128, DType::kFP16, 16, 64, 3},
        StepCase{CachePolicy::kLowestScore, false, 1, 128, DType::kBF16, 0, 16, 4},
        StepCase{CachePolicy::kLastSelection, true, 2, 128, DType::kBF16, 64, 128, 5},
        StepCase{CachePolicy::kLastSelection, false, 4, 64, DType::kBF16, 32, 32, 6}),
    [](const ::testing::TestParamInfo<StepCase>& info) {
      const StepCase& c = info.param;
      return absl::StrCat(c.policy == CachePolicy::kLeastRecentlyUsed ? "LRU"
                          : c.policy == CachePolicy::kLowestScore     ? "LowestScore"
                                                                      : "LastSelection",
                          c.device_tensors ? "_device" : "_host", "_G", c.g, "_D", c.head_dim, "_",
                          DTypeName(c.dtype), "_S", c.sink, "_W", c.window);
    });

// ---- Exactness with a full budget on CUDA ------------------------------------------------

class KvCacheCudaTest : public GpuStreamTest {
 protected:
  KvCacheCudaTest() : GpuStreamTest("KvCache CUDA backend tests") {}
};

TEST_F(KvCacheCudaTest, FullBudgetEqualsExactAttention) {
  for (const DType dtype : {DType::kBF16, DType::kFP16}) {
    Options o = BaseOptions(4, 128, dtype, CachePolicy::kLowestScore, Backend::kCuda);
    o.max_sequence_tokens = 2048;
    o.budget.max_pages = 128;
    o.cache_slots_per_budget = 1.0;
    absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
    ASSERT_TRUE(created.ok()) << created.status();
    Driver& d = **created;
    std::mt19937_64 rng(dtype == DType::kBF16 ? 71 : 72);
    const std::vector<SeqId> seqs = {1, 2, 3, 4};
    for (SeqId seq : seqs) {
      ASSERT_OK(d.Add(seq));
      const int64_t tokens = seq == 2 ? 50 : Uniform(rng, 300, 1900);
      for (int layer = 0; layer < 2; ++layer)
        ASSERT_OK(d.PrefillRandom(seq, layer, tokens, rng, 333));
    }
    for (int step = 0; step < 8; ++step) {
      const int layer = step % 2;
      const DType out_dtype = step % 3 == 0 ? DType::kFP32 : dtype;
      const DecodeInputs in = d.RandomDecodeInputs(seqs.size(), rng);
      const DeviceStep s = UploadStep(in, out_dtype, seqs.size() * o.shape.num_query_heads * 128);
      ASSERT_OK(DecodeOnDevice(d, layer, seqs, in, s, stream()));
      ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
      const std::vector<float> got = DownloadOut(s);
      const std::string what = absl::StrCat(DTypeName(dtype), " step ", step);
      ASSERT_FALSE(AnyNaN(got)) << what;
      const double tol = CudaTolerance(dtype, out_dtype);
      ExpectClose(got, d.Reference(layer, seqs, in, nullptr), tol, tol, what);
    }
  }
}

// A device budget too small for the plan: ResourceExhausted with the breakdown.
TEST_F(KvCacheCudaTest, TooSmallGpuBudget) {
  Options o = BaseOptions(4, 128, DType::kBF16, CachePolicy::kLowestScore, Backend::kCuda);
  o.gpu_memory_bytes = 1 << 20;
  absl::StatusOr<std::unique_ptr<KvCache>> created = KvCache::Create(o);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), absl::StatusCode::kResourceExhausted) << created.status();
  for (const char* word : {"gpu_memory_bytes", "max_sequences", "would fit"}) {
    EXPECT_TRUE(absl::StrContains(created.status().message(), word)) << created.status();
  }
}

// kv_cache.h lets every call take its own stream. Layers decoded back to back on two streams
// (no host synchronisation between them) must give what one stream gives: kvtier's shared
// step scratch must not be used by two calls at once.
TEST_F(KvCacheCudaTest, DecodesOnTwoStreamsEqualOneStream) {
  Options o = BaseOptions(4, 128, DType::kBF16, CachePolicy::kLeastRecentlyUsed, Backend::kCuda);
  o.window_tokens = 512;
  o.budget.max_pages = 32;
  absl::StatusOr<std::unique_ptr<Driver>> cx = Driver::Create(o);
  ASSERT_TRUE(cx.ok()) << cx.status();
  absl::StatusOr<std::unique_ptr<Driver>> cy = Driver::Create(o);
  ASSERT_TRUE(cy.ok()) << cy.status();
  Driver& two = **cx;
  Driver& one = **cy;
  ASSERT_OK_AND_ASSIGN(CudaStream other, CudaStream::Create());
  ASSERT_OK_AND_ASSIGN(CudaStream blocker, CudaStream::Create());
  ASSERT_OK_AND_ASSIGN(CudaEvent gate, CudaEvent::Create(cudaEventDisableTiming));
  std::mt19937_64 rng(101);
  const std::vector<SeqId> seqs = {1, 2, 3, 4};
  for (SeqId seq : seqs) {
    ASSERT_OK(two.Add(seq));
    ASSERT_OK(one.Add(seq));
    for (int layer = 0; layer < 2; ++layer) {
      const std::vector<uint16_t> k = two.RandomRows(3500, rng), v = two.RandomRows(3500, rng);
      ASSERT_OK(two.Prefill(seq, layer, k, v));
      ASSERT_OK(one.Prefill(seq, layer, k, v));
    }
  }
  const size_t n_out = seqs.size() * o.shape.num_query_heads * o.shape.head_dim;
  int64_t mismatched_steps = 0;
  for (int step = 0; step < 8; ++step) {
    DecodeInputs in[2];
    std::vector<DeviceStep> sx, sy;
    for (int layer = 0; layer < 2; ++layer) {
      in[layer] = two.RandomDecodeInputs(seqs.size(), rng, 2.0f);
      sx.push_back(UploadStep(in[layer], DType::kFP32, n_out));
      sy.push_back(UploadStep(in[layer], DType::kFP32, n_out));
    }
    // Both streams wait behind a host function, so that the two layers' work is queued
    // before either starts and then runs concurrently.
    ASSERT_CUDA_OK(cudaLaunchHostFunc(
        blocker.get(), [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); },
        nullptr));
    ASSERT_CUDA_OK(cudaEventRecord(gate.get(), blocker.get()));
    ASSERT_CUDA_OK(cudaStreamWaitEvent(stream(), gate.get(), 0));
    ASSERT_CUDA_OK(cudaStreamWaitEvent(other.get(), gate.get(), 0));
    ASSERT_OK(DecodeOnDevice(two, 0, seqs, in[0], sx[0], stream()));
    ASSERT_OK(DecodeOnDevice(two, 1, seqs, in[1], sx[1], other.get()));
    ASSERT_OK(DecodeOnDevice(one, 0, seqs, in[0], sy[0], stream()));
    ASSERT_OK(DecodeOnDevice(one, 1, seqs, in[1], sy[1], stream()));
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    for (int layer = 0; layer < 2; ++layer) {
      const std::vector<float> got = DownloadOut(sx[layer]), want = DownloadOut(sy[layer]);
      double max_error = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        max_error = std::max(max_error, std::abs(static_cast<double>(got[i]) - want[i]));
      }
      if (got != want) {
        ++mismatched_steps;
        ADD_FAILURE() << "step " << step << ", layer " << layer
                      << ": two streams differ from one (max error " << max_error << ")";
      }
    }
  }
  EXPECT_EQ(mismatched_steps, 0);
}

// ---- CUDA graph capture of a Decode --------------------------------------------------------

class KvCacheGraphTest : public GpuStreamTestBase<::testing::TestWithParam<cudaStreamCaptureMode>> {
 protected:
  KvCacheGraphTest() : GpuStreamTestBase("KvCache CUDA graph tests") {}
};

// Two identical caches; one decodes a step normally, the other captures the same step in a
// graph and launches it once. Outputs, selections and directories agree, and both caches keep
// working afterwards.
TEST_P(KvCacheGraphTest, CapturedDecodeEqualsDirectDecode) {
  const cudaStreamCaptureMode mode = GetParam();
  const Options o = BaseOptions(4, 128, DType::kBF16, CachePolicy::kLowestScore, Backend::kCuda);
  absl::StatusOr<std::unique_ptr<Driver>> ca = Driver::Create(o);
  ASSERT_TRUE(ca.ok()) << ca.status();
  absl::StatusOr<std::unique_ptr<Driver>> cb = Driver::Create(o);
  ASSERT_TRUE(cb.ok()) << cb.status();
  Driver& direct = **ca;
  Driver& captured = **cb;
  std::mt19937_64 rng(81);
  const std::vector<SeqId> seqs = {1, 2, 3};
  for (SeqId seq : seqs) {
    ASSERT_OK(direct.Add(seq));
    ASSERT_OK(captured.Add(seq));
    // 1 token short of a page boundary for seq 1: the captured step writes a page back.
    const int64_t tokens = seq == 1 ? 16 * 40 - 1 : Uniform(rng, 200, 2000);
    for (int layer = 0; layer < 2; ++layer) {
      const std::vector<uint16_t> k = direct.RandomRows(tokens, rng),
                                  v = direct.RandomRows(tokens, rng);
      ASSERT_OK(direct.Prefill(seq, layer, k, v));
      ASSERT_OK(captured.Prefill(seq, layer, k, v));
    }
  }
  const size_t n_out = seqs.size() * o.shape.num_query_heads * o.shape.head_dim;
  // A few ordinary steps first, so that the caches hold pages.
  for (int step = 0; step < 3; ++step) {
    const DecodeInputs in = direct.RandomDecodeInputs(seqs.size(), rng, 2.0f);
    const DeviceStep s = UploadStep(in, DType::kBF16, n_out);
    ASSERT_OK(DecodeOnDevice(direct, 0, seqs, in, s, stream()));
    ASSERT_OK(DecodeOnDevice(captured, 0, seqs, in, s, stream()));
  }
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));

  const DecodeInputs in = direct.RandomDecodeInputs(seqs.size(), rng, 2.0f);
  const DeviceStep sa = UploadStep(in, DType::kBF16, n_out);
  const DeviceStep sb = UploadStep(in, DType::kBF16, n_out);
  ASSERT_OK(DecodeOnDevice(direct, 0, seqs, in, sa, stream()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));

  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream(), mode));
  const absl::Status status = DecodeOnDevice(captured, 0, seqs, in, sb, stream());
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream(), &graph);
  // A failed capture leaves its error as the thread's last CUDA error, which the next kernel
  // launch check would report; clear it so that a failure here stays in this test.
  (void)cudaGetLastError();
  ASSERT_OK(status);
  ASSERT_CUDA_OK(end);
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  // Nothing ran during capture.
  EXPECT_TRUE(AnyNaN(DownloadOut(sb))) << "the output was written before the graph ran";
  ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  const std::vector<float> want = DownloadOut(sa), got = DownloadOut(sb);
  ASSERT_FALSE(AnyNaN(got)) << "graph left the output unwritten";
  EXPECT_EQ(got, want) << "captured step differs from the direct one";
  (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);

  // The caches agree, and both go on working.
  std::map<std::pair<SeqId, int>, KvCache::CacheInspection> before;
  std::set<std::pair<SeqId, int>> diverged;
  ExpectSameCaches(captured, direct, 0, seqs, &before, &diverged, "after the graph");
  EXPECT_TRUE(diverged.empty());
  for (int step = 0; step < 2; ++step) {
    const DecodeInputs next = direct.RandomDecodeInputs(seqs.size(), rng, 2.0f);
    const DeviceStep na = UploadStep(next, DType::kFP32, n_out);
    const DeviceStep nb = UploadStep(next, DType::kFP32, n_out);
    ASSERT_OK(DecodeOnDevice(direct, 0, seqs, next, na, stream()));
    ASSERT_OK(DecodeOnDevice(captured, 0, seqs, next, nb, stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
    EXPECT_EQ(DownloadOut(nb), DownloadOut(na)) << "step " << step << " after the graph";
  }
  const Stats stats = captured.cache().GetStats();
  EXPECT_EQ(stats.Total().decode_steps, direct.cache().GetStats().Total().decode_steps);
  EXPECT_EQ(stats.Total().pages_selected, direct.cache().GetStats().Total().pages_selected);
  for (SeqId seq : seqs) {
    ASSERT_OK(captured.Remove(seq));
    ASSERT_OK(direct.Remove(seq));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, KvCacheGraphTest,
                         ::testing::Values(cudaStreamCaptureModeRelaxed,
                                           cudaStreamCaptureModeThreadLocal),
                         [](const ::testing::TestParamInfo<cudaStreamCaptureMode>& info) {
                           return info.param == cudaStreamCaptureModeRelaxed ? "Relaxed"
                                                                             : "ThreadLocal";
                         });

// ---- Llama-like shapes ---------------------------------------------------------------------

// 8 KV heads of group 4, D 128, bf16, contexts of 8K to 32K tokens, batch 6: a few steps,
// CUDA against the host twins.
TEST_F(KvCacheCudaTest, LlamaLikeShapesMatchHost) {
  Options ho;
  ho.shape.num_layers = 1;
  ho.shape.num_kv_heads = 8;
  ho.shape.num_query_heads = 32;
  ho.shape.head_dim = 128;
  ho.shape.dtype = DType::kBF16;
  ho.page_size = 16;
  ho.sink_tokens = 64;
  ho.window_tokens = 1024;
  ho.budget.max_pages = 128;
  ho.cache_slots_per_budget = 2.0;
  ho.cache_policy = CachePolicy::kLeastRecentlyUsed;
  ho.max_sequences = 6;
  ho.max_batch_size = 6;
  ho.max_sequence_tokens = 32 * 1024 + 64;
  ho.max_prefill_chunk_tokens = 4096;
  ho.host_memory_bytes = int64_t{1} << 30;
  ho.gpu_memory_bytes = int64_t{8} << 30;
  ho.backend = Backend::kHost;
  Options co = ho;
  co.backend = Backend::kCuda;
  absl::StatusOr<std::unique_ptr<Driver>> hc = Driver::Create(ho);
  ASSERT_TRUE(hc.ok()) << hc.status();
  absl::StatusOr<std::unique_ptr<Driver>> cc = Driver::Create(co);
  ASSERT_TRUE(cc.ok()) << cc.status();
  Driver& host = **hc;
  Driver& cuda = **cc;
  std::mt19937_64 rng(91);
  const std::vector<SeqId> seqs = {1, 2, 3, 4, 5, 6};
  const int64_t lengths[] = {8192, 32 * 1024, 12345, 20000, 8191, 16001};
  for (size_t i = 0; i < seqs.size(); ++i) {
    ASSERT_OK(host.Add(seqs[i]));
    ASSERT_OK(cuda.Add(seqs[i]));
    const size_t elements = static_cast<size_t>(lengths[i]) * 8 * 128;
    const std::vector<uint16_t> k = FastRandom(DType::kBF16, elements, 2 * i + 1);
    const std::vector<uint16_t> v = FastRandom(DType::kBF16, elements, 2 * i + 2);
    ASSERT_OK(host.Prefill(seqs[i], 0, k, v));
    // Device-memory prefill input for the CUDA cache.
    const DeviceBuffer dk = Upload(k), dv = Upload(v);
    const ConstTensor tk =
        MakeConstTensor(dk.data(), DType::kBF16, {lengths[i], 8, 128}, MemorySpace::kDevice);
    const ConstTensor tv =
        MakeConstTensor(dv.data(), DType::kBF16, {lengths[i], 8, 128}, MemorySpace::kDevice);
    ASSERT_OK(cuda.cache().Prefill(seqs[i], 0, tk, tv, ConstTensor{}, stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));  // before dk, dv are freed
  }
  std::map<std::pair<SeqId, int>, KvCache::CacheInspection> before;
  std::set<std::pair<SeqId, int>> diverged;
  const size_t n_out = seqs.size() * 32 * 128;
  for (int step = 0; step < 4; ++step) {
    const DecodeInputs in = host.RandomDecodeInputs(seqs.size(), rng, 2.0f);
    std::vector<float> want;
    ASSERT_OK(host.Decode(0, seqs, in, DType::kBF16, &want));
    const DeviceStep s = UploadStep(in, DType::kBF16, n_out);
    ASSERT_OK(DecodeOnDevice(cuda, 0, seqs, in, s, stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
    const std::vector<float> got = DownloadOut(s);
    const std::string what = absl::StrCat("step ", step);
    ASSERT_FALSE(AnyNaN(got)) << what;
    std::vector<double> want_d(want.begin(), want.end());
    const double tol = CudaTolerance(DType::kBF16, DType::kBF16);
    ExpectClose(got, want_d, tol, tol, what);
    ExpectSameCaches(cuda, host, 0, seqs, &before, &diverged, what);
    if (HasFailure()) return;
  }
  EXPECT_TRUE(diverged.empty());
  const Stats stats = cuda.cache().GetStats();
  EXPECT_EQ(stats.host_pages_used, host.model().HostPagesNeeded(16));
  EXPECT_GT(stats.DecodeBoundMs(), 0.0);
}

}  // namespace
}  // namespace kvtier
