// kvtier-demo: a small batched decode on the host store and the reference attention (the
// host backend's kernels). Prefills a batch of sequences with random keys and values, then
// decodes: each step appends the new token's K/V to every layer and attends every query
// head over all stored pages. It also splits each sequence into its hot set (sink + recent
// window) and the rest, attends the two parts separately and merges them by log-sum-exp:
// the merged output must equal full attention, which the demo checks and prints.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "kernels/reference_attention.h"
#include "offload/host_store.h"
#include "runtime/core/status.h"

ABSL_FLAG(int, batch, 4, "sequences decoded together");
ABSL_FLAG(int, context, 8192, "prompt tokens per sequence");
ABSL_FLAG(int, steps, 8, "decode steps");
ABSL_FLAG(int, layers, 2, "layers (Llama-3-8B attention shape otherwise: 32 q, 8 KV heads, D 128)");
ABSL_FLAG(int, sink, 64, "sink tokens of the hot set");
ABSL_FLAG(int, window, 1024, "recent-window tokens of the hot set");
ABSL_FLAG(uint32_t, seed, 1, "random seed");

namespace kvtier {
namespace {

constexpr int kPageSize = 16;

// Random bf16 rows with a shared mean offset per channel, as real keys have. Each value is
// an Irwin-Hall sum of four random bytes, scaled to unit variance: close to normal and cheap
// enough that prefilling many megabytes stays fast.
void FillRandom(std::vector<uint16_t>& data, std::mt19937& rng, float offset_scale) {
  constexpr float kMean = 4 * 127.5f;
  const float inv_std = 1.0f / std::sqrt(4 * (256.0f * 256.0f - 1) / 12);
  float offsets[128];
  for (int c = 0; c < 128; ++c) offsets[c] = offset_scale * std::sin(static_cast<float>(c));
  for (size_t i = 0; i < data.size(); ++i) {
    const uint32_t r = rng();
    const float sum =
        static_cast<float>((r & 0xFF) + ((r >> 8) & 0xFF) + ((r >> 16) & 0xFF) + (r >> 24));
    data[i] = FloatToBF16((sum - kMean) * inv_std + offsets[i % 128]);
  }
}

// One partial-attention batch over chosen pages of every (sequence, KV head).
struct PageBatch {
  std::vector<const void*> k_pages, v_pages;
  std::vector<int32_t> offsets{0}, last_tokens;
  void Add(const PageArena& arena, const std::vector<FrameId>& frames, size_t begin, size_t end,
           int last_page_tokens) {
    for (size_t p = begin; p < end; ++p) {
      k_pages.push_back(arena.KPage(frames[p]));
      v_pages.push_back(arena.VPage(frames[p]));
    }
    offsets.push_back(static_cast<int32_t>(k_pages.size()));
    last_tokens.push_back(end > begin ? last_page_tokens : kPageSize);
  }
  absl::Status Attend(const ModelShape& shape, const std::vector<uint16_t>& q, float scale,
                      std::vector<float>& out, std::vector<float>& lse) const {
    PagedDecodeParams p;
    p.dtype = shape.dtype;
    p.head_dim = shape.head_dim;
    p.page_size = kPageSize;
    p.group_size = shape.group_size();
    p.softmax_scale = scale;
    p.num_items = static_cast<int>(last_tokens.size());
    p.q = q.data();
    p.k_pages = k_pages.data();
    p.v_pages = v_pages.data();
    p.page_offsets = offsets.data();
    p.last_page_tokens = last_tokens.data();
    out.assign(static_cast<size_t>(p.num_items) * p.group_size * p.head_dim, NAN);
    lse.assign(static_cast<size_t>(p.num_items) * p.group_size, NAN);
    p.out = out.data();
    p.lse = lse.data();
    return ReferencePagedDecodeAttention(p);
  }
};

absl::Status Run() {
  const int batch = absl::GetFlag(FLAGS_batch);
  const int context = absl::GetFlag(FLAGS_context);
  const int steps = absl::GetFlag(FLAGS_steps);
  const int sink = absl::GetFlag(FLAGS_sink);
  const int window = absl::GetFlag(FLAGS_window);
  if (batch < 1 || context < 1 || steps < 0 || sink < 0 || window < kPageSize ||
      sink % kPageSize != 0 || window % kPageSize != 0) {
    return absl::InvalidArgumentError(
        "need --batch >= 1, --context >= 1, --steps >= 0, and --sink, --window multiples of "
        "16 with --window >= 16");
  }
  const ModelShape shape{.num_layers = absl::GetFlag(FLAGS_layers),
                         .num_query_heads = 32,
                         .num_kv_heads = 8,
                         .head_dim = 128,
                         .dtype = DType::kBF16};
  KVTIER_RETURN_IF_ERROR(ValidateModelShape(shape));
  const int64_t total_tokens = int64_t{context} + steps;
  const int64_t pages = int64_t{batch} * shape.num_layers * shape.num_kv_heads *
                        ((total_tokens + kPageSize - 1) / kPageSize);
  KVTIER_ASSIGN_OR_RETURN(
      std::unique_ptr<HostStore> store,
      HostStore::Create({.shape = shape,
                         .page_size = kPageSize,
                         .capacity_bytes = pages * 2 * PageBytes(shape, kPageSize),
                         .device_id = 0}));
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const int hk = shape.num_kv_heads, d = shape.head_dim;
  std::mt19937 rng(absl::GetFlag(FLAGS_seed));

  std::printf("kvtier-demo: batched decode on the host store and the reference attention\n");
  std::printf("shape: %d layers, %d query heads, %d KV heads, head_dim %d, bf16; %d-token pages\n",
              shape.num_layers, shape.num_query_heads, hk, d, kPageSize);
  const PinnedBuffer& buffer = store->arena().buffer();
  std::printf("host store: %.1f MiB, NUMA node %d (%s, %s), %s\n",
              static_cast<double>(buffer.size()) / (1 << 20), buffer.placement().node,
              buffer.placement().bound ? "bound" : "not bound", buffer.placement().how.c_str(),
              buffer.pinned() ? "pinned" : "not pinned (no GPU)");

  // Prefill.
  const auto prefill_start = std::chrono::steady_clock::now();
  std::vector<uint16_t> k(static_cast<size_t>(context) * hk * d), v(k.size());
  for (int b = 0; b < batch; ++b) {
    KVTIER_RETURN_IF_ERROR(store->AddSequence(static_cast<SeqId>(b)));
    for (int layer = 0; layer < shape.num_layers; ++layer) {
      FillRandom(k, rng, 0.5f);
      FillRandom(v, rng, 0.0f);
      KVTIER_RETURN_IF_ERROR(
          store->Append(b, layer, MakeConstTensor(k.data(), shape.dtype, {context, hk, d}),
                        MakeConstTensor(v.data(), shape.dtype, {context, hk, d})));
    }
  }
  const double prefill_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - prefill_start).count();
  std::printf("prefill: batch %d x %d tokens x %d layers stored in %.2f s\n\n", batch, context,
              shape.num_layers, prefill_s);

  std::printf("%5s %10s %10s %12s %22s %12s\n", "step", "context", "ms", "tokens/s",
              "max|merged - full|", "checksum");
  std::vector<uint16_t> q(static_cast<size_t>(batch) * shape.num_query_heads * d);
  std::vector<uint16_t> k_new(static_cast<size_t>(hk) * d), v_new(k_new.size());
  std::vector<float> full_out, full_lse, hot_out, hot_lse, rest_out, rest_lse, merged_out,
      merged_lse;
  for (int step = 0; step < steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    double max_diff = 0.0, checksum = 0.0;
    for (int layer = 0; layer < shape.num_layers; ++layer) {
      PageBatch full, hot, rest;
      for (int b = 0; b < batch; ++b) {
        FillRandom(k_new, rng, 0.5f);
        FillRandom(v_new, rng, 0.0f);
        KVTIER_RETURN_IF_ERROR(
            store->Append(b, layer, MakeConstTensor(k_new.data(), shape.dtype, {1, hk, d}),
                          MakeConstTensor(v_new.data(), shape.dtype, {1, hk, d})));
        KVTIER_ASSIGN_OR_RETURN(int64_t tokens, store->NumTokens(b, layer));
        const int last = static_cast<int>((tokens - 1) % kPageSize) + 1;
        for (int h = 0; h < hk; ++h) {
          KVTIER_ASSIGN_OR_RETURN(std::vector<FrameId> frames, store->Pages(b, layer, h));
          const size_t n = frames.size();
          // Hot set: sink pages and the pages of the last `window` tokens; rest in between.
          const size_t sink_end = std::min(n, static_cast<size_t>(sink / kPageSize));
          const size_t window_begin =
              std::max(sink_end, n - std::min(n, static_cast<size_t>(window / kPageSize)));
          full.Add(store->arena(), frames, 0, n, last);
          hot.Add(store->arena(), frames, 0, sink_end, kPageSize);  // a full page list
          rest.Add(store->arena(), frames, sink_end, window_begin, kPageSize);
          hot.k_pages.insert(hot.k_pages.end(), full.k_pages.end() - (n - window_begin),
                             full.k_pages.end());
          hot.v_pages.insert(hot.v_pages.end(), full.v_pages.end() - (n - window_begin),
                             full.v_pages.end());
          hot.offsets.back() = static_cast<int32_t>(hot.k_pages.size());
          hot.last_tokens.back() = n > sink_end ? last : kPageSize;
        }
      }
      FillRandom(q, rng, 0.0f);
      KVTIER_RETURN_IF_ERROR(full.Attend(shape, q, scale, full_out, full_lse));
      KVTIER_RETURN_IF_ERROR(hot.Attend(shape, q, scale, hot_out, hot_lse));
      KVTIER_RETURN_IF_ERROR(rest.Attend(shape, q, scale, rest_out, rest_lse));
      const float* part_out[] = {hot_out.data(), rest_out.data()};
      const float* part_lse[] = {hot_lse.data(), rest_lse.data()};
      merged_out.assign(full_out.size(), NAN);
      merged_lse.assign(full_lse.size(), NAN);
      KVTIER_RETURN_IF_ERROR(ReferenceMergePartials({.num_parts = 2,
                                                     .num_rows = static_cast<int>(full_lse.size()),
                                                     .head_dim = d,
                                                     .part_out = part_out,
                                                     .part_lse = part_lse,
                                                     .out = merged_out.data(),
                                                     .lse = merged_lse.data()}));
      for (size_t i = 0; i < full_out.size(); ++i) {
        max_diff = std::max(max_diff, std::fabs(double{merged_out[i]} - full_out[i]));
        checksum += full_out[i];
      }
      if (!(max_diff < 1e-4)) {
        return absl::InternalError(absl::StrFormat(
            "merged hot-set + rest attention differs from full attention by %g", max_diff));
      }
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("%5d %10lld %10.1f %12.1f %22.2e %12.4f\n", step,
                static_cast<long long>(context + step + 1), ms, batch / (ms / 1e3), max_diff,
                checksum);
  }
  const HostStoreUsage usage = store->Usage();
  std::printf(
      "\nhost store: %lld of %lld pages used; every step's merged output matched full "
      "attention\n",
      static_cast<long long>(usage.used_pages), static_cast<long long>(usage.capacity_pages));
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvtier-demo: batched decode on the host store and the reference attention");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = kvtier::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "kvtier-demo: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
