// The per-item score row of the score policy's update kernels (cache_resolve.cu's
// CacheScoreUpdate, decode_plan.cu's UpdatePageScores), shared by both.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtier::internal {

// The score row of `item` (row item_rows[item], or row `item` without item_rows), after every
// slot of it has been multiplied by `decay` (no pass when decay == 1), or nullptr when the
// item's row breaks the contract (< 0, or >= num_rows when num_rows > 0): the caller then
// writes nothing. Called by every thread of the item's block, `threads` of them; the decay
// pass ends with a barrier, so the row is ready for any thread on return.
__device__ __forceinline__ float* DecayedScoreRow(float* slot_score, const int32_t* item_rows,
                                                  int32_t num_rows, int32_t item, int32_t num_slots,
                                                  float decay, int threads) {
  int64_t row = item;
  if (item_rows != nullptr) {
    row = item_rows[item];
    if (row < 0 || (num_rows > 0 && row >= num_rows)) return nullptr;
  }
  float* score = slot_score + row * num_slots;
  if (decay != 1.0f) {
    for (int32_t s = threadIdx.x; s < num_slots; s += threads) {
      score[s] = __fmul_rn(score[s], decay);
    }
    __syncthreads();
  }
  return score;
}

}  // namespace kvtier::internal
