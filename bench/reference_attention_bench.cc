// Rate of the host twin of paged decode attention, the host backend's decode attention: GQA
// group 4, head_dim 128, bf16, 16-token pages; batch x KV heads x tokens per sequence from the
// arguments (a typical batch, and one 128K-token item that takes the chunked path). Reports
// K/V bytes read per second and sequence tokens attended per second (all KV heads of one
// layer), in wall time since the work runs on every core (oneTBB; `threads` says how many).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/decode_attention.h"
#include "kernels/reference_attention.h"
#include "tbb/task_arena.h"

namespace kvtier {
namespace {

constexpr int kGroup = 4;
constexpr int kHeadDim = 128;
constexpr int kPageSize = 16;

void BM_ReferencePagedDecode(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const int num_items = batch * static_cast<int>(state.range(1));
  const int64_t tokens = state.range(2);
  const int64_t pages_per_item = (tokens + kPageSize - 1) / kPageSize;
  const int64_t page_elements = int64_t{kPageSize} * kHeadDim;

  // Random bf16 K/V in one arena, pages in order; values do not affect the work done.
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.2f, 1.0f);
  std::vector<uint16_t> table(4096);
  for (uint16_t& bits : table) bits = FloatToBF16(normal(rng));
  auto fill = [&](std::vector<uint16_t>& data) {
    for (size_t e = 0; e < data.size(); ++e) data[e] = table[(e * 2654435761u >> 7) % 4096];
  };
  std::vector<uint16_t> q(int64_t{num_items} * kGroup * kHeadDim);
  std::vector<uint16_t> k(num_items * pages_per_item * page_elements);
  std::vector<uint16_t> v(k.size());
  fill(q);
  fill(k);
  fill(v);
  std::vector<const void*> k_pages, v_pages;
  std::vector<int32_t> page_offsets{0}, last_page_tokens;
  for (int i = 0; i < num_items; ++i) {
    for (int64_t p = 0; p < pages_per_item; ++p) {
      const int64_t offset = (i * pages_per_item + p) * page_elements;
      k_pages.push_back(k.data() + offset);
      v_pages.push_back(v.data() + offset);
    }
    page_offsets.push_back(static_cast<int32_t>(k_pages.size()));
    last_page_tokens.push_back(static_cast<int32_t>(tokens - (pages_per_item - 1) * kPageSize));
  }
  std::vector<float> out(q.size()), lse(int64_t{num_items} * kGroup);

  PagedDecodeParams params;
  params.dtype = DType::kBF16;
  params.head_dim = kHeadDim;
  params.page_size = kPageSize;
  params.group_size = kGroup;
  params.softmax_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  params.num_items = num_items;
  params.q = q.data();
  params.k_pages = k_pages.data();
  params.v_pages = v_pages.data();
  params.page_offsets = page_offsets.data();
  params.last_page_tokens = last_page_tokens.data();
  params.out = out.data();
  params.lse = lse.data();

  for (auto _ : state) {
    if (const absl::Status status = ReferencePagedDecodeAttention(params); !status.ok()) {
      state.SkipWithError(std::string(status.message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double kv_bytes = 2.0 * num_items * tokens * kHeadDim * DTypeSize(DType::kBF16);
  const double iterations = static_cast<double>(state.iterations());
  state.counters["kv_bytes_per_s"] = benchmark::Counter(
      kv_bytes * iterations, benchmark::Counter::kIsRate, benchmark::Counter::kIs1024);
  state.counters["tokens_per_s"] = benchmark::Counter(
      static_cast<double>(batch) * tokens * iterations, benchmark::Counter::kIsRate);
  state.counters["threads"] = tbb::this_task_arena::max_concurrency();
}

BENCHMARK(BM_ReferencePagedDecode)
    ->ArgNames({"batch", "kv_heads", "tokens"})
    ->Args({4, 8, 8 << 10})
    ->Args({4, 8, 32 << 10})
    ->Args({1, 1, 128 << 10})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
