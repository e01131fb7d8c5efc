// A first end-to-end check of the KvCache on the host backend: prefill, decode with a budget
// that covers every page, compare with exact attention.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/core/cuda_device.h"
#include "runtime/core/dtype.h"
#include "runtime/kv_cache.h"

namespace kvtier {
namespace {

void RunFullBudget(Backend backend) {
  Options o;
  o.shape = {1, 4, 2, 64, DType::kBF16};
  o.page_size = 16;
  o.sink_tokens = 16;
  o.window_tokens = 32;
  o.budget.max_pages = 64;
  o.cache_slots_per_budget = 1.0;
  o.max_sequences = 4;
  o.max_batch_size = 2;
  o.max_sequence_tokens = 1024;
  o.max_prefill_chunk_tokens = 64;
  o.host_memory_bytes = 8 << 20;
  o.backend = backend;
  o.gpu_memory_bytes = int64_t{1} << 30;
  auto created = KvCache::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  KvCache& cache = **created;
  const int hk = 2, hq = 4, d = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const int lengths[2] = {300, 77};
  std::vector<std::vector<float>> keys(2), values(2);  // [t, hk, d] as floats (bf16-rounded)
  for (int s = 0; s < 2; ++s) {
    ASSERT_TRUE(cache.AddSequence(s + 10).ok());
    std::vector<uint16_t> k(lengths[s] * hk * d), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = FloatToBF16(normal(rng));
      v[i] = FloatToBF16(normal(rng));
      keys[s].push_back(BF16ToFloat(k[i]));
      values[s].push_back(BF16ToFloat(v[i]));
    }
    // Two chunks, the first not page aligned.
    const int first = 37;
    auto st = cache.Prefill(s + 10, 0, MakeConstTensor(k.data(), DType::kBF16, {first, hk, d}),
                            MakeConstTensor(v.data(), DType::kBF16, {first, hk, d}), {}, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    st = cache.Prefill(s + 10, 0,
                       MakeConstTensor(k.data() + first * hk * d, DType::kBF16,
                                       {lengths[s] - first, hk, d}),
                       MakeConstTensor(v.data() + first * hk * d, DType::kBF16,
                                       {lengths[s] - first, hk, d}),
                       {}, nullptr);
    ASSERT_TRUE(st.ok()) << st;
  }
  for (int step = 0; step < 40; ++step) {
    std::vector<uint16_t> q(2 * hq * d), kn(2 * hk * d), vn(2 * hk * d);
    std::vector<float> qf(q.size());
    for (size_t i = 0; i < q.size(); ++i) {
      q[i] = FloatToBF16(normal(rng));
      qf[i] = BF16ToFloat(q[i]);
    }
    for (int s = 0; s < 2; ++s) {
      for (int i = 0; i < hk * d; ++i) {
        kn[s * hk * d + i] = FloatToBF16(normal(rng));
        vn[s * hk * d + i] = FloatToBF16(normal(rng));
        keys[s].push_back(BF16ToFloat(kn[s * hk * d + i]));
        values[s].push_back(BF16ToFloat(vn[s * hk * d + i]));
      }
    }
    std::vector<float> out(2 * hq * d, NAN);
    const SeqId seqs[2] = {10, 11};
    auto st = cache.Decode(0, seqs, MakeConstTensor(q.data(), DType::kBF16, {2, hq, d}),
                           MakeConstTensor(kn.data(), DType::kBF16, {2, hk, d}),
                           MakeConstTensor(vn.data(), DType::kBF16, {2, hk, d}),
                           MakeMutableTensor(out.data(), DType::kFP32, {2, hq, d}), nullptr);
    ASSERT_TRUE(st.ok()) << st;
    double max_err = 0;
    for (int s = 0; s < 2; ++s) {
      const int t = static_cast<int>(keys[s].size() / (hk * d));
      for (int h = 0; h < hq; ++h) {
        const int kvh = h / 2;
        std::vector<double> logits(t);
        double mx = -1e300;
        for (int j = 0; j < t; ++j) {
          double dot = 0;
          for (int c = 0; c < d; ++c) {
            dot += double(qf[(s * hq + h) * d + c]) * keys[s][(j * hk + kvh) * d + c];
          }
          logits[j] = dot / 8.0;
          mx = std::max(mx, logits[j]);
        }
        double sum = 0;
        for (double& l : logits) sum += (l = std::exp(l - mx));
        for (int c = 0; c < d; ++c) {
          double o_ = 0;
          for (int j = 0; j < t; ++j) o_ += logits[j] * values[s][(j * hk + kvh) * d + c];
          o_ /= sum;
          max_err = std::max(max_err, std::abs(o_ - out[(s * hq + h) * d + c]));
        }
      }
    }
    // The CUDA kernel rounds probabilities to bf16 for P.V (decode_attention.h).
    ASSERT_LT(max_err, backend == Backend::kHost ? 1e-4 : 2e-2) << "step " << step;
  }
  const Stats stats = cache.GetStats();
  const LayerStats total = stats.Total();
  EXPECT_GT(total.pages_selected, 0);
  EXPECT_EQ(total.pages_selected, total.page_hits + total.page_misses);
  EXPECT_GT(total.page_hits, 0);
}

TEST(KvCacheSmokeTest, FullBudgetEqualsExactAttention) { RunFullBudget(Backend::kHost); }

TEST(KvCacheSmokeTest, FullBudgetEqualsExactAttentionCuda) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  RunFullBudget(Backend::kCuda);
}

}  // namespace
}  // namespace kvtier
