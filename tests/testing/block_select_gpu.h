// A block-selection batch (kernels/block_select.h) in host memory for the GPU tests that
// compare LaunchBlockSelect with its twin (block_select_gpu_test.cc, split_centroid_gpu_test.cc),
// every item's summaries in one pool so that a device copy keeps each item's offsets, and the
// check itself: the twin and the kernel evaluate every score with the same fp32 operations in
// the same order, so the selections must be identical, entry for entry, -1 padding included.
// The tests fill the arrays. Header-only; for test code built with KVTIER_WITH_CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/block_select.h"
#include "tests/testing/block_select_oracle.h"
#include "tests/testing/gpu_test_util.h"
#include "tests/testing/poison.h"

namespace kvtier::testing_util {

struct BlockSelectPool : BlockSelectShape {
  explicit BlockSelectPool(const BlockSelectShape& shape) : BlockSelectShape(shape) {}

  int num_items() const { return static_cast<int>(begins.size()); }

  // Runs the twin on the host arrays and the kernel on a device copy (selections poisoned on
  // both sides, the workspace NaN garbage) with these settings, and expects the same count and
  // the same entries for every item; with zone_k > 0 the same for the zone, and with
  // keep_logits (kCentroid) the same bits in every entry of BlockSelectParams::logits
  // (candidates written, the rest still the poison).
  void Check(BlockSelectMode mode, int k, float mass_target, cudaStream_t stream, int zone_k = 0,
             bool keep_logits = false) const {
    SCOPED_TRACE(testing::Message()
                 << "kind " << static_cast<int>(kind) << " parts " << parts << " dtype "
                 << DTypeName(dtype) << " D " << dim << " G " << group << " mode "
                 << static_cast<int>(mode) << " k " << k << " target " << mass_target << " zone "
                 << zone_k << (keep_logits ? " logits" : ""));
    const int n = num_items();
    BlockSelectParams p = Settings(n, max_blocks, mode, k, mass_target);
    p.zone_k = zone_k;
    const size_t logit_count =
        keep_logits ? static_cast<size_t>(n) * group * parts * max_blocks : 0;
    std::vector<float> want_logits(logit_count, Poisoned<float>());

    // Host twin. A count the twin left unwritten differs from the kernel's poison.
    std::vector<const void*> host_summaries;
    std::vector<const int32_t*> host_counts;
    for (int i = 0; i < n; ++i) {
      host_summaries.push_back(pool.data() + summary_offset[i]);
      host_counts.push_back(counts.data() + count_offset[i]);
    }
    std::vector<int32_t> want(static_cast<size_t>(n) * k, kPoisonInt), want_count(n, -5);
    BlockSelectParams host = p;
    host.q = q.data();
    host.block_begin = begins.data();
    host.block_end = ends.data();
    SetSummaries(host, host_summaries.data(), host_counts.data());
    host.selected = want.data();
    host.num_selected = want_count.data();
    std::vector<int32_t> want_zone(static_cast<size_t>(n) * zone_k, kPoisonInt),
        want_zone_count(n, -5);
    host.zone_selected = want_zone.data();
    host.zone_count = want_zone_count.data();
    if (keep_logits) host.logits = want_logits.data();
    ASSERT_OK(ReferenceBlockSelect(host));
    if (keep_logits) {
      size_t written = 0;
      for (float x : want_logits) written += std::isnan(x) ? 0 : 1;
      ASSERT_GT(written, 0u) << "the twin wrote no logits";
    }

    // Device.
    DeviceBuffer d_q = Upload(q), d_begin = Upload(begins), d_end = Upload(ends);
    DeviceBuffer d_pool = Upload(pool), d_counts = Upload(counts);
    std::vector<const void*> dev_summaries;
    std::vector<const int32_t*> dev_counts;
    for (int i = 0; i < n; ++i) {
      dev_summaries.push_back(d_pool.as<uint16_t>() + summary_offset[i]);
      dev_counts.push_back(d_counts.as<int32_t>() + count_offset[i]);
    }
    DeviceBuffer d_summary_ptrs = Upload(dev_summaries), d_count_ptrs = Upload(dev_counts);
    DeviceBuffer selected = Upload(std::vector<int32_t>(want.size(), kPoisonInt));
    DeviceBuffer num_selected = Upload(std::vector<int32_t>(n, kPoisonInt));
    p.workspace_bytes = BlockSelectWorkspaceBytes(p);
    ASSERT_GT(p.workspace_bytes, 0u);
    ASSERT_OK_AND_ASSIGN(DeviceBuffer workspace, DeviceBuffer::Allocate(p.workspace_bytes));
    ASSERT_CUDA_OK(cudaMemset(workspace.data(), 0xFF, workspace.size()));  // NaN garbage
    p.q = d_q.data();
    p.block_begin = d_begin.as<int32_t>();
    p.block_end = d_end.as<int32_t>();
    SetSummaries(p, d_summary_ptrs.as<const void*>(), d_count_ptrs.as<const int32_t*>());
    p.selected = selected.as<int32_t>();
    p.num_selected = num_selected.as<int32_t>();
    DeviceBuffer zone = Upload(std::vector<int32_t>(want_zone.size() + 1, kPoisonInt));
    DeviceBuffer zone_count = Upload(std::vector<int32_t>(n, kPoisonInt));
    p.zone_selected = zone.as<int32_t>();
    p.zone_count = zone_count.as<int32_t>();
    DeviceBuffer logits = Upload(std::vector<float>(logit_count + 1, Poisoned<float>()));
    if (keep_logits) p.logits = logits.as<float>();
    p.workspace = workspace.data();
    ASSERT_OK(LaunchBlockSelect(p, stream));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
    ExpectRows("selected", Download<int32_t>(selected, want.size()),
               Download<int32_t>(num_selected, n), want, want_count, k);
    if (zone_k > 0) {
      ExpectRows("zone", Download<int32_t>(zone, want_zone.size()),
                 Download<int32_t>(zone_count, n), want_zone, want_zone_count, zone_k);
    }
    if (keep_logits) {
      const std::vector<float> got_logits = Download<float>(logits, logit_count);
      for (size_t j = 0; j < logit_count; ++j) {
        ASSERT_EQ(std::bit_cast<uint32_t>(got_logits[j]), std::bit_cast<uint32_t>(want_logits[j]))
            << "logit " << j << ": " << got_logits[j] << " against " << want_logits[j];
      }
    }
    {
      // The two kernels one at a time (LaunchBlockScoring, then LaunchBlockSelectScored on
      // what it left): the same selections, zone and logits.
      DeviceBuffer selected_two = Upload(std::vector<int32_t>(want.size(), kPoisonInt));
      DeviceBuffer zone_two = Upload(std::vector<int32_t>(want_zone.size() + 1, kPoisonInt));
      DeviceBuffer logits_two = Upload(std::vector<float>(logit_count + 1, Poisoned<float>()));
      BlockSelectParams two = p;
      two.selected = selected_two.as<int32_t>();
      two.zone_selected = zone_two.as<int32_t>();
      if (keep_logits) two.logits = logits_two.as<float>();
      ASSERT_CUDA_OK(cudaMemset(workspace.data(), 0xFF, workspace.size()));
      ASSERT_CUDA_OK(cudaMemset(num_selected.data(), 0x7E, n * sizeof(int32_t)));
      ASSERT_CUDA_OK(cudaMemset(zone_count.data(), 0x7E, n * sizeof(int32_t)));
      ASSERT_OK(LaunchBlockScoring(two, stream));
      ASSERT_OK(LaunchBlockSelectScored(two, stream));
      ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
      ExpectRows("scored, then selected", Download<int32_t>(selected_two, want.size()),
                 Download<int32_t>(num_selected, n), want, want_count, k);
      if (zone_k > 0) {
        ExpectRows("zone, scored then selected", Download<int32_t>(zone_two, want_zone.size()),
                   Download<int32_t>(zone_count, n), want_zone, want_zone_count, zone_k);
      }
      if (keep_logits) {
        const std::vector<float> got_logits = Download<float>(logits_two, logit_count);
        for (size_t j = 0; j < logit_count; ++j) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got_logits[j]), std::bit_cast<uint32_t>(want_logits[j]))
              << "two passes' logit " << j;
        }
      }
    }
    if (zone_k == 0) return;

    // The zone taken apart: the retrieval alone (zone_k 0), then the zone-only call on the
    // workspace it left, both sides; the same selections again.
    std::vector<int32_t> host_zone(want_zone.size(), kPoisonInt), host_zone_count(n, -5);
    host.zone_selected = host_zone.data();
    host.zone_count = host_zone_count.data();
    ASSERT_OK(ReferenceBlockSelectZone(host));
    ExpectRows("twin's zone-only call", host_zone, host_zone_count, want_zone, want_zone_count,
               zone_k);
    BlockSelectParams retrieval = p;
    retrieval.zone_k = 0;
    DeviceBuffer selected_again = Upload(std::vector<int32_t>(want.size(), kPoisonInt));
    DeviceBuffer zone_again = Upload(std::vector<int32_t>(want_zone.size() + 1, kPoisonInt));
    ASSERT_CUDA_OK(cudaMemset(workspace.data(), 0xFF, workspace.size()));
    ASSERT_CUDA_OK(cudaMemset(num_selected.data(), 0x7E, n * sizeof(int32_t)));
    ASSERT_CUDA_OK(cudaMemset(zone_count.data(), 0x7E, n * sizeof(int32_t)));
    retrieval.selected = selected_again.as<int32_t>();
    ASSERT_OK(LaunchBlockSelect(retrieval, stream));
    p.zone_selected = zone_again.as<int32_t>();
    ASSERT_OK(LaunchBlockSelectZone(p, stream));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
    ExpectRows("selected without the zone", Download<int32_t>(selected_again, want.size()),
               Download<int32_t>(num_selected, n), want, want_count, k);
    ExpectRows("zone-only call", Download<int32_t>(zone_again, want_zone.size()),
               Download<int32_t>(zone_count, n), want_zone, want_zone_count, zone_k);
  }

  static constexpr int32_t kPoisonInt = 0x7E7E7E7E;  // no valid index or count

  static void ExpectRows(const char* what, const std::vector<int32_t>& got,
                         const std::vector<int32_t>& got_count, const std::vector<int32_t>& want,
                         const std::vector<int32_t>& want_count, int width) {
    for (size_t i = 0; i < want_count.size(); ++i) {
      ASSERT_EQ(got_count[i], want_count[i]) << what << ": item " << i;
      for (int j = 0; j < width; ++j) {
        const size_t at = i * width + j;
        ASSERT_EQ(got[at], want[at]) << what << ": item " << i << " entry " << j;
      }
    }
  }

  int max_blocks = 1;       // the largest item's blocks, at least 1
  std::vector<uint16_t> q;  // [items, G, D]
  // Item i's summaries from summary_offset[i]: [blocks, 2, D] bounds (kPageBounds) or
  // [blocks, parts, D] mean keys (kCentroid); its token counts (kCentroid) [blocks, parts] from
  // count_offset[i].
  std::vector<uint16_t> pool;
  std::vector<int32_t> counts;
  std::vector<size_t> summary_offset, count_offset;
  std::vector<int32_t> begins, ends;  // item i's candidates: [begins[i], ends[i])

 private:
  void SetSummaries(BlockSelectParams& p, const void* const* summaries,
                    const int32_t* const* item_counts) const {
    if (kind == BlockScoreKind::kPageBounds) {
      p.bounds = summaries;
    } else {
      p.key_mean = summaries;
      p.count = item_counts;
    }
  }
};

}  // namespace kvtier::testing_util
