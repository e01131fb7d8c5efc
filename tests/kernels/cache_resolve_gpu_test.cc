// LaunchCacheResolve and LaunchCacheScoreUpdate against their host twins: the same batch of
// caches lives on the GPU and on the host; every step both resolve the same drifting,
// overlapping selections and get the same attention mass, and every array (directory and
// outputs, poisoned before each step) must match bit for bit. The GPU directory is also
// checked for consistency on its own. Shapes cover one slot per thread, several slots per
// thread, the benchmark shape and the limits.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/cache_resolve.h"
#include "tests/testing/drifting_selections.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr uint8_t kPoisonByte = 0xAB;
constexpr int32_t kPoison = static_cast<int32_t>(0xABABABABu);

using testing_util::DriftingSelections;

// Host arrays of a batch; the device mirror has the same layout.
struct HostArrays {
  HostArrays(int32_t items, int32_t slots, int32_t pages, int32_t selected, bool with_map)
      : slot_page(int64_t{items} * slots, -1),
        last_use(int64_t{items} * slots, 0),
        score(int64_t{items} * slots, 0.0f),
        page_slot(with_map ? int64_t{items} * pages : 0, -1),
        selected(int64_t{items} * selected, 0),
        num_selected(items, 0),
        selected_slots(int64_t{items} * selected, kPoison),
        miss_pages(int64_t{items} * selected, kPoison),
        miss_slots(int64_t{items} * selected, kPoison),
        hit_count(items, kPoison),
        miss_count(items, kPoison),
        hit_slots(int64_t{items} * selected, kPoison),
        mass(int64_t{items} * selected, 0.0f) {}

  void PoisonOutputs() {
    for (auto* v :
         {&selected_slots, &miss_pages, &miss_slots, &hit_count, &miss_count, &hit_slots}) {
      std::fill(v->begin(), v->end(), kPoison);
    }
  }

  std::vector<int32_t> slot_page, last_use;
  std::vector<float> score;
  std::vector<int32_t> page_slot, selected, num_selected;
  std::vector<int32_t> selected_slots, miss_pages, miss_slots, hit_count, miss_count, hit_slots;
  std::vector<float> mass;
};

template <typename T>
size_t Bytes(const std::vector<T>& v) {
  return v.size() * sizeof(T);
}

struct Shape {
  int32_t items, slots, pages, selected, steps;
  bool with_map;
};

constexpr char kSubject[] = "GPU cache resolve tests";

class CacheResolveGpuTest
    : public GpuStreamTestBase<::testing::TestWithParam<std::tuple<CachePolicy, Shape>>> {
 protected:
  CacheResolveGpuTest() : GpuStreamTestBase(kSubject) {}
};

// Device buffers for every array of `h`.
struct DeviceArrays {
  absl::Status Allocate(const HostArrays& h) {
    struct Entry {
      DeviceBuffer* buffer;
      size_t bytes;
    };
    for (const Entry& e :
         {Entry{&slot_page, Bytes(h.slot_page)}, Entry{&last_use, Bytes(h.last_use)},
          Entry{&score, Bytes(h.score)}, Entry{&page_slot, Bytes(h.page_slot)},
          Entry{&selected, Bytes(h.selected)}, Entry{&num_selected, Bytes(h.num_selected)},
          Entry{&selected_slots, Bytes(h.selected_slots)}, Entry{&miss_pages, Bytes(h.miss_pages)},
          Entry{&miss_slots, Bytes(h.miss_slots)}, Entry{&hit_count, Bytes(h.hit_count)},
          Entry{&miss_count, Bytes(h.miss_count)}, Entry{&hit_slots, Bytes(h.hit_slots)},
          Entry{&mass, Bytes(h.mass)}}) {
      auto buffer = DeviceBuffer::Allocate(e.bytes);
      if (!buffer.ok()) return buffer.status();
      *e.buffer = std::move(*buffer);
    }
    return absl::OkStatus();
  }
  DeviceBuffer slot_page, last_use, score, page_slot, selected, num_selected, selected_slots,
      miss_pages, miss_slots, hit_count, miss_count, hit_slots, mass;
};

CacheResolveParams MakeParams(const Shape& s, CachePolicy policy, int32_t step, int32_t* slot_page,
                              int32_t* last_use, float* score, int32_t* page_slot,
                              const int32_t* selected, const int32_t* num_selected,
                              int32_t* selected_slots, int32_t* miss_pages, int32_t* miss_slots,
                              int32_t* hit_count, int32_t* miss_count) {
  CacheResolveParams p;
  p.directory = {slot_page, last_use, score,  s.with_map ? page_slot : nullptr,
                 s.items,   s.slots,  s.pages};
  p.selected_pages = selected;
  p.num_selected = num_selected;
  p.max_selected = s.selected;
  p.step = step;
  p.policy = policy;
  p.selected_slots = selected_slots;
  p.miss_pages = miss_pages;
  p.miss_slots = miss_slots;
  p.hit_count = hit_count;
  p.miss_count = miss_count;
  return p;
}

template <typename T>
void Download(const DeviceBuffer& d, std::vector<T>& v, cudaStream_t stream) {
  ASSERT_CUDA_OK(cudaMemcpyAsync(v.data(), d.data(), Bytes(v), cudaMemcpyDeviceToHost, stream));
}
template <typename T>
void Upload(const std::vector<T>& v, const DeviceBuffer& d, cudaStream_t stream) {
  ASSERT_CUDA_OK(cudaMemcpyAsync(d.data(), v.data(), Bytes(v), cudaMemcpyHostToDevice, stream));
}

// Bit-for-bit equality of two arrays, naming the first difference.
template <typename T>
::testing::AssertionResult SameBits(const char* what, const std::vector<T>& gpu,
                                    const std::vector<T>& twin) {
  if (std::memcmp(gpu.data(), twin.data(), Bytes(gpu)) == 0) {
    return ::testing::AssertionSuccess();
  }
  size_t i = 0;
  while (std::memcmp(&gpu[i], &twin[i], sizeof(T)) == 0) ++i;
  return ::testing::AssertionFailure()
         << what << " differs first at index " << i << ": gpu " << gpu[i] << ", twin " << twin[i];
}

// The GPU's directory on its own: no page in two slots, page_slot agrees, selected pages
// resident where selected_slots says, counts add up.
void ExpectConsistent(const Shape& s, const HostArrays& g) {
  for (int32_t item = 0; item < s.items; ++item) {
    std::set<int32_t> held;
    for (int32_t slot = 0; slot < s.slots; ++slot) {
      const int32_t page = g.slot_page[int64_t{item} * s.slots + slot];
      if (page < 0) continue;
      ASSERT_TRUE(held.insert(page).second) << "item " << item << ": page " << page << " twice";
      if (s.with_map) {
        ASSERT_EQ(g.page_slot[int64_t{item} * s.pages + page], slot);
      }
    }
    if (s.with_map) {
      int64_t mapped = 0;
      for (int32_t page = 0; page < s.pages; ++page) {
        mapped += g.page_slot[int64_t{item} * s.pages + page] >= 0;
      }
      ASSERT_EQ(mapped, static_cast<int64_t>(held.size())) << "item " << item;
    }
    const int32_t n = g.num_selected[item];
    ASSERT_EQ(g.hit_count[item] + g.miss_count[item], n);
    for (int32_t i = 0; i < n; ++i) {
      const int32_t slot = g.selected_slots[int64_t{item} * s.selected + i];
      ASSERT_TRUE(slot >= 0 && slot < s.slots) << "item " << item << " entry " << i;
      ASSERT_EQ(g.slot_page[int64_t{item} * s.slots + slot],
                g.selected[int64_t{item} * s.selected + i]);
    }
  }
}

TEST_P(CacheResolveGpuTest, MatchesTwinOverDriftingSteps) {
  const auto [policy, s] = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << CachePolicyName(policy) << ", " << s.items << " items x "
                                  << s.slots << " slots, " << s.selected << " selected, seed "
                                  << seed);
  std::mt19937_64 rng(seed);
  const cudaStream_t stream = stream_.get();
  HostArrays twin(s.items, s.slots, s.pages, s.selected, s.with_map);
  HostArrays gpu = twin;
  DeviceArrays d;
  ASSERT_TRUE(d.Allocate(twin).ok());
  Upload(twin.slot_page, d.slot_page, stream);
  Upload(twin.last_use, d.last_use, stream);
  Upload(twin.score, d.score, stream);
  if (s.with_map) Upload(twin.page_slot, d.page_slot, stream);
  DriftingSelections selections(s.items, s.pages, s.selected * 3 / 4, s.selected,
                                /*keep=*/0.8, seed + 1);
  std::uniform_real_distribution<float> uniform_mass(0.001f, 1.0f);
  int64_t hits = 0, misses = 0;
  for (int32_t step = 0; step < s.steps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    for (int32_t item = 0; item < s.items; ++item) {
      const std::vector<int32_t>& sel = selections.Next(item);
      std::copy(sel.begin(), sel.end(), twin.selected.begin() + int64_t{item} * s.selected);
      twin.num_selected[item] = static_cast<int32_t>(sel.size());
    }
    twin.PoisonOutputs();
    Upload(twin.selected, d.selected, stream);
    Upload(twin.num_selected, d.num_selected, stream);
    for (const DeviceBuffer* out : {&d.selected_slots, &d.miss_pages, &d.miss_slots, &d.hit_count,
                                    &d.miss_count, &d.hit_slots}) {
      ASSERT_CUDA_OK(cudaMemsetAsync(out->data(), kPoisonByte, out->size(), stream));
    }
    CacheResolveParams device_params = MakeParams(
        s, policy, step, d.slot_page.as<int32_t>(), d.last_use.as<int32_t>(), d.score.as<float>(),
        d.page_slot.as<int32_t>(), d.selected.as<int32_t>(), d.num_selected.as<int32_t>(),
        d.selected_slots.as<int32_t>(), d.miss_pages.as<int32_t>(), d.miss_slots.as<int32_t>(),
        d.hit_count.as<int32_t>(), d.miss_count.as<int32_t>());
    device_params.hit_slots = d.hit_slots.as<int32_t>();
    const absl::Status launched = LaunchCacheResolve(device_params, stream);
    ASSERT_TRUE(launched.ok()) << launched;

    // Attention mass for the selected pages; the decay exercises the score update's first
    // pass every other step.
    for (float& m : twin.mass) m = uniform_mass(rng);
    Upload(twin.mass, d.mass, stream);
    CacheScoreUpdateParams update;
    update.num_items = s.items;
    update.num_slots = s.slots;
    update.max_selected = s.selected;
    update.decay = step % 2 == 0 ? 0.9f : 1.0f;
    // The update runs after the resolve's outputs were copied back (they are what it reads).
    gpu.selected = twin.selected;
    gpu.num_selected = twin.num_selected;
    Download(d.selected_slots, gpu.selected_slots, stream);
    Download(d.miss_pages, gpu.miss_pages, stream);
    Download(d.miss_slots, gpu.miss_slots, stream);
    Download(d.hit_count, gpu.hit_count, stream);
    Download(d.miss_count, gpu.miss_count, stream);
    Download(d.hit_slots, gpu.hit_slots, stream);
    Download(d.slot_page, gpu.slot_page, stream);
    Download(d.last_use, gpu.last_use, stream);
    if (s.with_map) Download(d.page_slot, gpu.page_slot, stream);
    update.slot_score = d.score.as<float>();
    update.selected_slots = d.selected_slots.as<int32_t>();
    update.num_selected = d.num_selected.as<int32_t>();
    update.mass = d.mass.as<float>();
    const absl::Status updated = LaunchCacheScoreUpdate(update, stream);
    ASSERT_TRUE(updated.ok()) << updated;
    Download(d.score, gpu.score, stream);
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));

    CacheResolveParams host_params =
        MakeParams(s, policy, step, twin.slot_page.data(), twin.last_use.data(), twin.score.data(),
                   twin.page_slot.data(), twin.selected.data(), twin.num_selected.data(),
                   twin.selected_slots.data(), twin.miss_pages.data(), twin.miss_slots.data(),
                   twin.hit_count.data(), twin.miss_count.data());
    host_params.hit_slots = twin.hit_slots.data();
    ASSERT_TRUE(ReferenceCacheResolve(host_params).ok());
    // Entries past an item's hit count stay poisoned on both sides: compare everything.
    ASSERT_TRUE(SameBits("hit_slots", gpu.hit_slots, twin.hit_slots));
    ASSERT_TRUE(SameBits("selected_slots", gpu.selected_slots, twin.selected_slots));
    ASSERT_TRUE(SameBits("miss_pages", gpu.miss_pages, twin.miss_pages));
    ASSERT_TRUE(SameBits("miss_slots", gpu.miss_slots, twin.miss_slots));
    ASSERT_TRUE(SameBits("hit_count", gpu.hit_count, twin.hit_count));
    ASSERT_TRUE(SameBits("miss_count", gpu.miss_count, twin.miss_count));
    ASSERT_TRUE(SameBits("slot_page", gpu.slot_page, twin.slot_page));
    // last_use of empty slots is meaningless but both sides leave it alone: compare it all.
    ASSERT_TRUE(SameBits("slot_last_use", gpu.last_use, twin.last_use));
    if (s.with_map) {
      ASSERT_TRUE(SameBits("page_slot", gpu.page_slot, twin.page_slot));
    }
    ExpectConsistent(s, gpu);
    for (int32_t item = 0; item < s.items; ++item) {
      hits += gpu.hit_count[item];
      misses += gpu.miss_count[item];
    }

    update.slot_score = twin.score.data();
    update.selected_slots = twin.selected_slots.data();
    update.num_selected = twin.num_selected.data();
    update.mass = twin.mass.data();
    ASSERT_TRUE(ReferenceCacheScoreUpdate(update).ok());
    ASSERT_TRUE(SameBits("slot_score", gpu.score, twin.score));
  }
  EXPECT_GT(hits, 0);
  EXPECT_GT(misses, 0);
}

const Shape kShapes[] = {
    // Fewer slots than threads; 1,000 steps; with the page -> slot map.
    {16, 48, 300, 16, 1000, true},
    // Several slots per thread, not a multiple of the block.
    {8, 1000, 5000, 300, 200, true},
    // The benchmark's shape: 32 x 8 items, 4x slots, 64K pages, no map.
    {256, 512, 65536, 128, 60, false},
    // 4,096 selected (the limit) in 16,384 slots: full after ~16 steps, then evicting.
    {2, 16384, 200000, 4096, 30, true},
    // 65,536 slots (the limit): 256 slots per thread.
    {1, 65536, 200000, 4096, 10, false},
};

INSTANTIATE_TEST_SUITE_P(PoliciesAndShapes, CacheResolveGpuTest,
                         ::testing::Combine(::testing::Values(CachePolicy::kLeastRecentlyUsed,
                                                              CachePolicy::kLowestScore,
                                                              CachePolicy::kLastSelection),
                                            ::testing::ValuesIn(kShapes)),
                         [](const auto& info) {
                           const CachePolicy policy = std::get<0>(info.param);
                           const Shape s = std::get<1>(info.param);
                           const char* name = policy == CachePolicy::kLeastRecentlyUsed ? "Lru"
                                              : policy == CachePolicy::kLowestScore
                                                  ? "LowestScore"
                                                  : "LastSelection";
                           return std::string(name) + "_" + std::to_string(s.items) + "x" +
                                  std::to_string(s.slots) + "slots_" + std::to_string(s.selected) +
                                  "sel";
                         });

// A decode step captured once in a CUDA graph (resolve, then score update) and replayed
// every step: the launchers neither allocate nor synchronise, and the step number comes from
// device memory (step_ptr), so replays advance time. Equal to the twin at every replay.
class CacheResolveGraphGpuTest : public GpuStreamTestBase<::testing::TestWithParam<CachePolicy>> {
 protected:
  CacheResolveGraphGpuTest() : GpuStreamTestBase(kSubject) {}
};

TEST_P(CacheResolveGraphGpuTest, GraphReplayedStepsMatchTwin) {
  const CachePolicy policy = GetParam();
  const Shape s{8, 64, 400, 24, 200, true};
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << CachePolicyName(policy) << ", seed " << seed);
  std::mt19937_64 rng(seed);
  const cudaStream_t stream = stream_.get();
  HostArrays twin(s.items, s.slots, s.pages, s.selected, s.with_map);
  HostArrays gpu = twin;
  DeviceArrays d;
  ASSERT_TRUE(d.Allocate(twin).ok());
  auto d_step = DeviceBuffer::Allocate(sizeof(int32_t));
  ASSERT_TRUE(d_step.ok());
  Upload(twin.slot_page, d.slot_page, stream);
  Upload(twin.last_use, d.last_use, stream);
  Upload(twin.score, d.score, stream);
  Upload(twin.page_slot, d.page_slot, stream);

  CacheResolveParams device_params = MakeParams(
      s, policy, /*step=*/-1, d.slot_page.as<int32_t>(), d.last_use.as<int32_t>(),
      d.score.as<float>(), d.page_slot.as<int32_t>(), d.selected.as<int32_t>(),
      d.num_selected.as<int32_t>(), d.selected_slots.as<int32_t>(), d.miss_pages.as<int32_t>(),
      d.miss_slots.as<int32_t>(), d.hit_count.as<int32_t>(), d.miss_count.as<int32_t>());
  device_params.step_ptr = d_step->as<int32_t>();
  CacheScoreUpdateParams update;
  update.num_items = s.items;
  update.num_slots = s.slots;
  update.max_selected = s.selected;
  update.decay = 0.9f;
  update.slot_score = d.score.as<float>();
  update.selected_slots = d.selected_slots.as<int32_t>();
  update.num_selected = d.num_selected.as<int32_t>();
  update.mass = d.mass.as<float>();

  cudaGraph_t graph = nullptr;
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const absl::Status resolve_captured = LaunchCacheResolve(device_params, stream);
  const absl::Status update_captured = LaunchCacheScoreUpdate(update, stream);
  ASSERT_CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(resolve_captured.ok()) << resolve_captured;
  ASSERT_TRUE(update_captured.ok()) << update_captured;
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  DriftingSelections selections(s.items, s.pages, s.selected * 3 / 4, s.selected,
                                /*keep=*/0.8, seed + 1);
  std::uniform_real_distribution<float> uniform_mass(0.001f, 1.0f);
  std::vector<int32_t> step_value(1);
  for (int32_t step = 0; step < s.steps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    for (int32_t item = 0; item < s.items; ++item) {
      const std::vector<int32_t>& sel = selections.Next(item);
      std::copy(sel.begin(), sel.end(), twin.selected.begin() + int64_t{item} * s.selected);
      twin.num_selected[item] = static_cast<int32_t>(sel.size());
    }
    for (float& m : twin.mass) m = uniform_mass(rng);
    step_value[0] = 3 * step + 1;
    twin.PoisonOutputs();
    Upload(twin.selected, d.selected, stream);
    Upload(twin.num_selected, d.num_selected, stream);
    Upload(twin.mass, d.mass, stream);
    Upload(step_value, *d_step, stream);
    for (const DeviceBuffer* out :
         {&d.selected_slots, &d.miss_pages, &d.miss_slots, &d.hit_count, &d.miss_count}) {
      ASSERT_CUDA_OK(cudaMemsetAsync(out->data(), kPoisonByte, out->size(), stream));
    }
    ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream));
    Download(d.selected_slots, gpu.selected_slots, stream);
    Download(d.miss_pages, gpu.miss_pages, stream);
    Download(d.miss_slots, gpu.miss_slots, stream);
    Download(d.slot_page, gpu.slot_page, stream);
    Download(d.last_use, gpu.last_use, stream);
    Download(d.page_slot, gpu.page_slot, stream);
    Download(d.score, gpu.score, stream);
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));

    CacheResolveParams host_params =
        MakeParams(s, policy, /*step=*/-1, twin.slot_page.data(), twin.last_use.data(),
                   twin.score.data(), twin.page_slot.data(), twin.selected.data(),
                   twin.num_selected.data(), twin.selected_slots.data(), twin.miss_pages.data(),
                   twin.miss_slots.data(), twin.hit_count.data(), twin.miss_count.data());
    host_params.step_ptr = step_value.data();
    ASSERT_TRUE(ReferenceCacheResolve(host_params).ok());
    CacheScoreUpdateParams host_update = update;
    host_update.slot_score = twin.score.data();
    host_update.selected_slots = twin.selected_slots.data();
    host_update.num_selected = twin.num_selected.data();
    host_update.mass = twin.mass.data();
    ASSERT_TRUE(ReferenceCacheScoreUpdate(host_update).ok());
    ASSERT_TRUE(SameBits("selected_slots", gpu.selected_slots, twin.selected_slots));
    ASSERT_TRUE(SameBits("miss_pages", gpu.miss_pages, twin.miss_pages));
    ASSERT_TRUE(SameBits("miss_slots", gpu.miss_slots, twin.miss_slots));
    ASSERT_TRUE(SameBits("slot_page", gpu.slot_page, twin.slot_page));
    ASSERT_TRUE(SameBits("slot_last_use", gpu.last_use, twin.last_use));
    ASSERT_TRUE(SameBits("page_slot", gpu.page_slot, twin.page_slot));
    ASSERT_TRUE(SameBits("slot_score", gpu.score, twin.score));
  }
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, CacheResolveGraphGpuTest,
                         ::testing::Values(CachePolicy::kLeastRecentlyUsed,
                                           CachePolicy::kLowestScore, CachePolicy::kLastSelection));

// Directory indirection: 24 items mapped (in random order) to scattered rows of a 100-row
// directory whose other rows hold random junk. Every step GPU and twin resolve and update
// scores through item_rows; every array, the untouched rows and the unused output entries
// included, must match bit for bit, and the untouched rows must keep their junk.
class CacheResolveItemRowsGpuTest
    : public GpuStreamTestBase<::testing::TestWithParam<CachePolicy>> {
 protected:
  CacheResolveItemRowsGpuTest() : GpuStreamTestBase(kSubject) {}
};

TEST_P(CacheResolveItemRowsGpuTest, ScatteredRowsOfALargerDirectoryMatchTwin) {
  const CachePolicy policy = GetParam();
  constexpr int32_t kItems = 24;
  // 100 directory rows (Shape's items) of 200 slots, 3000 pages, 64 selected, 60 steps.
  const Shape s{100, 200, 3000, 64, 60, true};
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << CachePolicyName(policy) << ", seed " << seed);
  std::mt19937_64 rng(seed);
  const cudaStream_t stream = stream_.get();
  std::vector<int32_t> all_rows(s.items);
  std::iota(all_rows.begin(), all_rows.end(), 0);
  std::shuffle(all_rows.begin(), all_rows.end(), rng);
  const std::vector<int32_t> rows(all_rows.begin(), all_rows.begin() + kItems);
  std::vector<bool> mapped(s.items, false);
  for (int32_t r : rows) mapped[r] = true;

  HostArrays twin(s.items, s.slots, s.pages, s.selected, s.with_map);
  std::uniform_int_distribution<int32_t> junk(-1000, 1000000);
  for (int32_t r = 0; r < s.items; ++r) {
    if (mapped[r]) continue;
    for (int32_t slot = 0; slot < s.slots; ++slot) {
      const int64_t i = int64_t{r} * s.slots + slot;
      twin.slot_page[i] = junk(rng);
      twin.last_use[i] = junk(rng);
      twin.score[i] = static_cast<float>(junk(rng)) * 0.5f;
    }
    for (int32_t page = 0; page < s.pages; ++page) {
      twin.page_slot[int64_t{r} * s.pages + page] = junk(rng);
    }
  }
  const HostArrays initial = twin;
  HostArrays gpu = twin;
  DeviceArrays d;
  ASSERT_TRUE(d.Allocate(twin).ok());
  DeviceBuffer d_rows = kvtier::Upload(rows);
  Upload(twin.slot_page, d.slot_page, stream);
  Upload(twin.last_use, d.last_use, stream);
  Upload(twin.score, d.score, stream);
  Upload(twin.page_slot, d.page_slot, stream);

  DriftingSelections selections(kItems, s.pages, s.selected * 3 / 4, s.selected, /*keep=*/0.8,
                                seed + 1);
  std::uniform_real_distribution<float> uniform_mass(0.001f, 1.0f);
  int64_t hits = 0, misses = 0;
  for (int32_t step = 0; step < s.steps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    for (int32_t item = 0; item < kItems; ++item) {
      const std::vector<int32_t>& sel = selections.Next(item);
      std::copy(sel.begin(), sel.end(), twin.selected.begin() + int64_t{item} * s.selected);
      twin.num_selected[item] = static_cast<int32_t>(sel.size());
    }
    for (float& m : twin.mass) m = uniform_mass(rng);
    twin.PoisonOutputs();
    Upload(twin.selected, d.selected, stream);
    Upload(twin.num_selected, d.num_selected, stream);
    Upload(twin.mass, d.mass, stream);
    for (const DeviceBuffer* out :
         {&d.selected_slots, &d.miss_pages, &d.miss_slots, &d.hit_count, &d.miss_count}) {
      ASSERT_CUDA_OK(cudaMemsetAsync(out->data(), kPoisonByte, out->size(), stream));
    }
    CacheResolveParams device_params = MakeParams(
        s, policy, step, d.slot_page.as<int32_t>(), d.last_use.as<int32_t>(), d.score.as<float>(),
        d.page_slot.as<int32_t>(), d.selected.as<int32_t>(), d.num_selected.as<int32_t>(),
        d.selected_slots.as<int32_t>(), d.miss_pages.as<int32_t>(), d.miss_slots.as<int32_t>(),
        d.hit_count.as<int32_t>(), d.miss_count.as<int32_t>());
    device_params.directory.num_items = kItems;
    device_params.directory.num_rows = s.items;
    device_params.item_rows = d_rows.as<int32_t>();
    ASSERT_OK(LaunchCacheResolve(device_params, stream));
    CacheScoreUpdateParams update;
    update.num_items = kItems;
    update.num_slots = s.slots;
    update.max_selected = s.selected;
    update.decay = step % 2 == 0 ? 0.9f : 1.0f;
    update.item_rows = d_rows.as<int32_t>();
    update.num_rows = s.items;
    update.slot_score = d.score.as<float>();
    update.selected_slots = d.selected_slots.as<int32_t>();
    update.num_selected = d.num_selected.as<int32_t>();
    update.mass = d.mass.as<float>();
    ASSERT_OK(LaunchCacheScoreUpdate(update, stream));
    gpu.selected = twin.selected;
    gpu.num_selected = twin.num_selected;
    Download(d.selected_slots, gpu.selected_slots, stream);
    Download(d.miss_pages, gpu.miss_pages, stream);
    Download(d.miss_slots, gpu.miss_slots, stream);
    Download(d.hit_count, gpu.hit_count, stream);
    Download(d.miss_count, gpu.miss_count, stream);
    Download(d.slot_page, gpu.slot_page, stream);
    Download(d.last_use, gpu.last_use, stream);
    Download(d.page_slot, gpu.page_slot, stream);
    Download(d.score, gpu.score, stream);
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));

    CacheResolveParams host_params =
        MakeParams(s, policy, step, twin.slot_page.data(), twin.last_use.data(), twin.score.data(),
                   twin.page_slot.data(), twin.selected.data(), twin.num_selected.data(),
                   twin.selected_slots.data(), twin.miss_pages.data(), twin.miss_slots.data(),
                   twin.hit_count.data(), twin.miss_count.data());
    host_params.directory.num_items = kItems;
    host_params.directory.num_rows = s.items;
    host_params.item_rows = rows.data();
    ASSERT_OK(ReferenceCacheResolve(host_params));
    update.item_rows = rows.data();
    update.slot_score = twin.score.data();
    update.selected_slots = twin.selected_slots.data();
    update.num_selected = twin.num_selected.data();
    update.mass = twin.mass.data();
    ASSERT_OK(ReferenceCacheScoreUpdate(update));
    ASSERT_TRUE(SameBits("selected_slots", gpu.selected_slots, twin.selected_slots));
    ASSERT_TRUE(SameBits("miss_pages", gpu.miss_pages, twin.miss_pages));
    ASSERT_TRUE(SameBits("miss_slots", gpu.miss_slots, twin.miss_slots));
    ASSERT_TRUE(SameBits("hit_count", gpu.hit_count, twin.hit_count));
    ASSERT_TRUE(SameBits("miss_count", gpu.miss_count, twin.miss_count));
    ASSERT_TRUE(SameBits("slot_page", gpu.slot_page, twin.slot_page));
    ASSERT_TRUE(SameBits("slot_last_use", gpu.last_use, twin.last_use));
    ASSERT_TRUE(SameBits("page_slot", gpu.page_slot, twin.page_slot));
    ASSERT_TRUE(SameBits("slot_score", gpu.score, twin.score));
    for (int32_t r = 0; r < s.items; ++r) {
      if (mapped[r]) continue;
      const int64_t slots = int64_t{r} * s.slots, pages = int64_t{r} * s.pages;
      ASSERT_TRUE(std::equal(gpu.slot_page.begin() + slots, gpu.slot_page.begin() + slots + s.slots,
                             initial.slot_page.begin() + slots))
          << "row " << r;
      ASSERT_TRUE(std::equal(gpu.last_use.begin() + slots, gpu.last_use.begin() + slots + s.slots,
                             initial.last_use.begin() + slots))
          << "row " << r;
      ASSERT_EQ(std::memcmp(gpu.score.data() + slots, initial.score.data() + slots,
                            s.slots * sizeof(float)),
                0)
          << "row " << r;
      ASSERT_TRUE(std::equal(gpu.page_slot.begin() + pages, gpu.page_slot.begin() + pages + s.pages,
                             initial.page_slot.begin() + pages))
          << "row " << r;
    }
    for (int32_t item = 0; item < kItems; ++item) {
      hits += gpu.hit_count[item];
      misses += gpu.miss_count[item];
    }
  }
  EXPECT_GT(hits, 0);
  EXPECT_GT(misses, 0);
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, CacheResolveItemRowsGpuTest,
                         ::testing::Values(CachePolicy::kLeastRecentlyUsed,
                                           CachePolicy::kLowestScore, CachePolicy::kLastSelection));

// Shapes the kernel cannot run are rejected before anything is launched.
class CacheResolveGpuValidationTest : public GpuTest {
 protected:
  CacheResolveGpuValidationTest() : GpuTest(kSubject) {}
};

TEST_F(CacheResolveGpuValidationTest, SelectionLargerThanCacheIsInvalidArgument) {
  auto stream = CudaStream::Create();
  ASSERT_TRUE(stream.ok());
  Shape s{1, 8, 100, 9, 1, false};
  int32_t dummy[64] = {};
  float score[64] = {};
  CacheResolveParams p = MakeParams(s, CachePolicy::kLeastRecentlyUsed, 0, dummy, dummy, score,
                                    nullptr, dummy, dummy, dummy, dummy, dummy, dummy, dummy);
  absl::Status status = LaunchCacheResolve(p, stream->get());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find("max_selected"), std::string::npos) << status;
  p.max_selected = 4;
  p.directory.num_slots = kMaxCacheSlots + 1;
  EXPECT_EQ(LaunchCacheResolve(p, stream->get()).code(), absl::StatusCode::kInvalidArgument);
  p.directory.num_items = 0;  // nothing to do: OK, nothing launched
  p.directory.num_slots = 8;
  EXPECT_TRUE(LaunchCacheResolve(p, stream->get()).ok());
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream->get()));
  ASSERT_CUDA_OK(cudaGetLastError());
}

}  // namespace
}  // namespace kvtier
