// A device copy of an EstimationLists batch (estimation_lists.h) for the GPU tests that launch
// estimation on it (estimation_gpu_test.cc, split_centroid_gpu_test.cc): every array uploaded
// once, and the batch's parameters with each host array replaced by its copy. Header-only;
// for test code built with KVTIER_WITH_CUDA.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/base/cuda_handles.h"
#include "kernels/estimation.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier::testing_util {

class DeviceEstimationLists {
 public:
  // Copies `batch` as it is now; `batch` must outlive this copy (Params reads its host
  // parameters). With `list_count` / `exclude_count` non-empty, the device holds those counts
  // instead of the batch's (e.g. counts outside [0, stride] that the kernel clamps).
  explicit DeviceEstimationLists(const EstimationLists& batch,
                                 const std::vector<int32_t>& list_count = {},
                                 const std::vector<int32_t>& exclude_count = {})
      : batch_(batch),
        q_(Upload(batch.q())),
        keys_(Upload(batch.keys())),
        spreads_(Upload(batch.spreads().empty() ? std::vector<float>(1) : batch.spreads())),
        shifts_(Upload(batch.shifts().empty() ? std::vector<float>(1) : batch.shifts())),
        logits_(Upload(batch.logits().empty() ? std::vector<float>(1) : batch.logits())),
        means_(Upload(batch.means())),
        counts_(Upload(batch.counts())),
        ids_(Upload(batch.ids())),
        list_count_(Upload(list_count.empty() ? batch.list_count() : list_count)),
        flat_(Upload(batch.flat())),
        offsets_(Upload(batch.offsets())),
        exclude_(Upload(batch.exclude())),
        exclude_count_(Upload(exclude_count.empty() ? batch.exclude_count() : exclude_count)) {
    std::vector<const void*> keys, means;
    std::vector<const float*> spreads;
    std::vector<const int32_t*> counts;
    for (int i = 0; i < batch.num_items(); ++i) {
      keys.push_back(keys_.as<uint16_t>() + batch.key_at()[i]);
      spreads.push_back(spreads_.as<float>() + batch.count_at()[i]);
      means.push_back(means_.as<uint16_t>() + batch.mean_at()[i]);
      counts.push_back(counts_.as<int32_t>() + batch.count_at()[i]);
    }
    key_ptr_ = Upload(keys);
    spread_ptr_ = Upload(spreads);
    mean_ptr_ = Upload(means);
    count_ptr_ = Upload(counts);
  }

  // batch.Params(out, lse, addressing, exclusion) over the device copies, writing to the
  // device arrays `out` [rows, D] and `lse` [rows].
  EstimationParams Params(float* out, float* lse,
                          ListAddressing addressing = ListAddressing::kStride,
                          bool exclusion = true) const {
    const EstimationParams host = batch_.Params(nullptr, nullptr, addressing, exclusion);
    EstimationParams p = host;
    p.q = q_.data();
    if (addressing == ListAddressing::kStride) {
      p.cluster_ids = ids_.as<int32_t>();
      p.list_count = list_count_.as<int32_t>();
    } else {
      p.cluster_ids = flat_.as<int32_t>();
      p.cluster_offsets = offsets_.as<int32_t>();
    }
    if (host.exclude_ids != nullptr) {
      p.exclude_ids = exclude_.as<int32_t>();
      p.exclude_count = exclude_count_.as<int32_t>();
    }
    p.key_mean = host.key_mean != nullptr ? key_ptr_.as<const void*>() : nullptr;
    if (host.logits != nullptr) p.logits = logits_.as<float>();
    p.value_mean = mean_ptr_.as<const void*>();
    p.count = count_ptr_.as<const int32_t*>();
    if (host.key_spread != nullptr) p.key_spread = spread_ptr_.as<const float*>();
    if (host.value_shift != nullptr) p.value_shift = shifts_.as<float>();
    p.out = out;
    p.lse = lse;
    return p;
  }

 private:
  const EstimationLists& batch_;
  DeviceBuffer q_, keys_, spreads_, shifts_, logits_, means_, counts_, ids_, list_count_, flat_,
      offsets_, exclude_, exclude_count_;
  DeviceBuffer key_ptr_, spread_ptr_, mean_ptr_, count_ptr_;
};

}  // namespace kvtier::testing_util
