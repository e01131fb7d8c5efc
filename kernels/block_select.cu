// Block selection on the GPU (contract in block_select.h; the scoring kernel in
// block_score.cu).
//
// Selection kernel: one thread block of kSelectThreads per item and selection (the retrieval,
// and the zone when there is one: the two run side by side). kCentroid first turns logits into
// masses: the scoring kernel left each segment's max and weight sum, so a head's denominator
// is a short sum over segments (InverseDenominator) and one pass over the logits takes each
// weight's exponentials once and writes the scores (the zone's block into a row of its own).
// Converting in the selection block, a max pass, a weight pass and a tree per head made the
// 24 x 32K launch take 68 us on the H200 (page bounds': 23), and 121 us at 6 x 120K, where
// 48 blocks left most SMs idle. Then a radix select on 32-bit ranking keys (three passes of
// 11, 11 and 10 bits, histograms of counts and fixed-point masses in shared memory) finds the
// key T of the last selected block and how many blocks with key T are taken (lowest indexes
// first). A final pass in index order writes the selection ascending. Integer counts and
// fixed-point masses make every step independent of thread scheduling.
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/block_select.h"
#include "kernels/block_select_device.cuh"
#include "kernels/launch.cuh"

namespace kvtier {
namespace {

using internal::ItemRange;
using internal::WorkspaceLayout;

constexpr int kSelectThreads = internal::kSelectThreads;
constexpr int kWarps = kSelectThreads / 32;
constexpr int kBins = 2048;  // 11-bit digits
constexpr int kBinsPerThread = kBins / kSelectThreads;
constexpr int kLoads = 8;  // candidates a selection thread loads at once
static_assert(kBinsPerThread * kSelectThreads == kBins);

// A thread block an item and selection: the retrieval (k, target) and, if any, the zone (top
// zone_k), blocks 2i and 2i + 1.
struct SelectArgs {
  int group_size;
  int max_blocks;
  int k;
  uint64_t target;  // fixed-point mass to reach; UINT64_MAX for top k
  bool centroid;
  int parts;  // kCentroid: centroids a block
  const int32_t* block_begin;
  const int32_t* block_end;
  const int32_t* const* count;
  // Item i's score rows start at w.scores + i * w.score_stride: written by the scoring kernel
  // for kPageBounds (one row, read by both selections); for kCentroid written here, the
  // retrieval's then the zone's. w.logits and the segment masses: kCentroid's input.
  WorkspaceLayout w;
  int32_t* selected;
  int32_t* num_selected;
  int zone_k;
  int32_t* zone_selected;
  int32_t* zone_count;
  // LaunchBlockSelectZone: a block an item selects the zone from the retrieval's score row,
  // which an earlier launch wrote.
  bool zone_only;
};

// Exclusive prefix sums over the thread block (in thread order) of a count and a mass;
// also the count's total. Uses `warp_count` / `warp_mass` ([kWarps]) as scratch.
__device__ __forceinline__ void BlockExclusiveScan(uint32_t count, uint64_t mass,
                                                   uint32_t& count_before, uint64_t& mass_before,
                                                   uint32_t& count_total, uint32_t* warp_count,
                                                   uint64_t* warp_mass) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  uint32_t c = count;
  uint64_t m = mass;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const uint32_t co = __shfl_up_sync(0xFFFFFFFFu, c, offset);
    const uint64_t mo = __shfl_up_sync(0xFFFFFFFFu, m, offset);
    if (lane >= offset) {
      c += co;
      m += mo;
    }
  }
  if (lane == 31) {
    warp_count[warp] = c;
    warp_mass[warp] = m;
  }
  __syncthreads();
  uint32_t c_warps = 0;
  uint64_t m_warps = 0;
  count_total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) {
      c_warps += warp_count[w];
      m_warps += warp_mass[w];
    }
    count_total += warp_count[w];
  }
  count_before = c_warps + c - count;
  mass_before = m_warps + m - mass;
  __syncthreads();  // scratch free for the next call
}

// kCentroid: scores[r] = the sum over heads of candidate r's mass (block_select.h), the
// twin's arithmetic (ItemScores): each head's 1 / denominator from its segments' masses (warp
// h for head h, lanes over segments), then a thread a candidate adds its heads' weight *
// (1 / sum) in head order.
// `logits`: the item's row of head 0 from its first candidate (row h at h * row_length);
// `counts` from the first candidate too; the segment arrays: head 0's (head h at h *
// segment_stride). Leaves the block synchronised.
__device__ __forceinline__ void CentroidScores(const float* logits, size_t row_length,
                                               const int32_t* counts, int n, int parts, int G,
                                               const float* segment_max, const float* segment_sum,
                                               int segment_stride, float* scores, float* head_max,
                                               float* head_inverse) {
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  static_assert(kWarps >= kMaxSelectGroup && internal::kMassLanes == 32);
  if (warp < G) {
    const float* maxima = segment_max + warp * segment_stride;
    const float* sums = segment_sum + warp * segment_stride;
    const int segments = internal::MassSegments(n);
    float m = -INFINITY;
    for (int s = lane; s < segments; s += 32) m = internal::Fmax(m, maxima[s]);
#pragma unroll
    for (int offset = 16; offset >= 1; offset /= 2) {
      m = internal::Fmax(m, __shfl_xor_sync(0xFFFFFFFFu, m, offset));
    }
    float sum = internal::DenominatorShare(maxima, sums, segments, lane, m);
#pragma unroll
    for (int offset = 16; offset >= 1; offset /= 2) {
      sum = internal::Add(sum, __shfl_xor_sync(0xFFFFFFFFu, sum, offset));
    }
    if (lane == 0) {
      head_max[warp] = m;
      head_inverse[warp] = internal::InverseOf(sum);
    }
  }
  __syncthreads();
  for (int r = t; r < n; r += kSelectThreads) {
    float score = 0.0f;
    for (int h = 0; h < G; ++h) {
      const float w =
          internal::CentroidWeight(logits + h * row_length, counts, r, parts, head_max[h]);
      score = internal::Add(score, internal::Mul(w, head_inverse[h]));
    }
    scores[r] = score;
  }
  __syncthreads();
}

// Shared memory of a selection block.
struct SelectShared {
  uint32_t bin_count[kBins];
  unsigned long long bin_mass[kBins];
  float head_max[kMaxSelectGroup], head_inverse[kMaxSelectGroup];  // kCentroid's conversion
  uint32_t warp_count[kWarps];
  uint64_t warp_mass[kWarps];
  uint32_t found_digit, found_count_above, found_tie_count;
  uint64_t found_mass_above, found_tie_mass;
  uint64_t lane_mass[kWarps][32];
};

// One selection of an item's ranking scores[0, n) (candidate r is block begin + r): the
// shortest prefix with min(cap, n) blocks or the fixed-point mass `target` (UINT64_MAX: top
// cap), written ascending to out[0, width) with -1 after it, and its length to *out_count.
// Called by the whole thread block, which it leaves synchronised.
__device__ __noinline__ void SelectTop(const float* scores, int n, int begin, int cap, int width,
                                       uint64_t target, int32_t* out, int32_t* out_count,
                                       SelectShared& sm) {
  const int t = threadIdx.x;
  const int lane = t % 32;
  const int warp = t / 32;
  const int k = min(cap, n);
  if (k == 0 || target == 0) {
    for (int j = t; j < width; j += kSelectThreads) out[j] = -1;
    if (t == 0) *out_count = 0;
    return;
  }
  // Radix select: the key T of the last block of the shortest stopping prefix.
  const bool with_mass = target != std::numeric_limits<uint64_t>::max();
  uint32_t prefix = 0, prefix_mask = 0;
  uint32_t count_above = 0;
  uint64_t mass_above = 0;
  uint32_t tie_count = 0;
  uint64_t tie_mass = 0;
  // When the item's candidates fit one chunk (n <= kSelectThreads * kLoads), each thread reads
  // its scores once, here, and every pass reuses them from registers.
  const bool one_chunk = n <= kSelectThreads * kLoads;
  float kept[kLoads];
#pragma unroll
  for (int e = 0; e < kLoads; ++e) {
    const int r = e * kSelectThreads + t;
    kept[e] = one_chunk && r < n ? scores[r] : 0.0f;
  }
#pragma unroll
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
    const uint32_t digit_mask = pass == 2 ? 0x3FFu : 0x7FFu;
    for (int b = t; b < kBins; b += kSelectThreads) {
      sm.bin_count[b] = 0;
      if (with_mass) sm.bin_mass[b] = 0;  // top k: never read
    }
    __syncthreads();
    // kLoads independent loads per thread first: the scores come from L2 and a loop of one
    // load per step would wait on each.
    for (int chunk = 0; chunk < n; chunk += kSelectThreads * kLoads) {
      float score[kLoads];
#pragma unroll
      for (int e = 0; e < kLoads; ++e) {
        const int r = chunk + e * kSelectThreads + t;
        score[e] = one_chunk ? kept[e] : (r < n ? scores[r] : 0.0f);
      }
#pragma unroll
      for (int e = 0; e < kLoads; ++e) {
        const int r = chunk + e * kSelectThreads + t;
        uint32_t digit = 0xFFFFFFFFu;  // not in the current prefix
        if (r < n) {
          const uint32_t key = internal::ScoreKey(score[e]);
          if ((key & prefix_mask) == prefix) digit = (key >> shift) & digit_mask;
        }
        // Lanes with the same digit add their count (and mass) once: one item's scores often
        // share their leading bits, and an atomic a lane would serialise on a few bins.
        const uint32_t peers = __match_any_sync(0xFFFFFFFFu, digit);
        if (!with_mass) {
          if (digit != 0xFFFFFFFFu && lane == __ffs(peers) - 1) {
            atomicAdd(&sm.bin_count[digit], static_cast<uint32_t>(__popc(peers)));
          }
          continue;
        }
        sm.lane_mass[warp][lane] = digit != 0xFFFFFFFFu ? internal::FixedMass(score[e]) : 0;
        __syncwarp();
        if (digit != 0xFFFFFFFFu && lane == __ffs(peers) - 1) {
          unsigned long long sum = 0;
          for (uint32_t m = peers; m != 0; m &= m - 1) sum += sm.lane_mass[warp][__ffs(m) - 1];
          atomicAdd(&sm.bin_count[digit], static_cast<uint32_t>(__popc(peers)));
          atomicAdd(&sm.bin_mass[digit], sum);
        }
        __syncwarp();
      }
    }
    __syncthreads();
    // Thread t owns digits kBins-1-(kBinsPerThread*t + j), j ascending: descending key order.
    uint32_t my_count = 0;
    uint64_t my_mass = 0;
#pragma unroll
    for (int j = 0; j < kBinsPerThread; ++j) {
      const int digit = kBins - 1 - (kBinsPerThread * t + j);
      my_count += sm.bin_count[digit];
      if (with_mass) my_mass += sm.bin_mass[digit];
    }
    uint32_t count_before, count_total;
    uint64_t mass_before;
    BlockExclusiveScan(my_count, my_mass, count_before, mass_before, count_total, sm.warp_count,
                       sm.warp_mass);
    uint32_t c = count_above + count_before;
    uint64_t m = mass_above + mass_before;
#pragma unroll
    for (int j = 0; j < kBinsPerThread; ++j) {
      const int digit = kBins - 1 - (kBinsPerThread * t + j);
      const uint32_t bc = sm.bin_count[digit];
      const uint64_t bm = with_mass ? sm.bin_mass[digit] : 0;
      const bool stopped_before = c >= static_cast<uint32_t>(k) || m >= target;
      const bool stopped_after = c + bc >= static_cast<uint32_t>(k) || m + bm >= target;
      if (!stopped_before && stopped_after) {
        sm.found_digit = digit;
        sm.found_count_above = c;
        sm.found_mass_above = m;
        sm.found_tie_count = bc;
        sm.found_tie_mass = bm;
      }
      c += bc;
      m += bm;
    }
    __syncthreads();
    prefix |= sm.found_digit << shift;
    prefix_mask |= digit_mask << shift;
    count_above = sm.found_count_above;
    mass_above = sm.found_mass_above;
    tie_count = sm.found_tie_count;
    tie_mass = sm.found_tie_mass;
    __syncthreads();
  }
  // Blocks with key T taken, lowest candidate indexes first.
  uint32_t take = static_cast<uint32_t>(k) - count_above;
  if (with_mass && tie_mass > 0) {
    const uint64_t each = tie_mass / tie_count;
    const uint64_t needed = (target - mass_above + each - 1) / each;
    if (needed < take) take = static_cast<uint32_t>(needed);
  }
  const uint32_t total = count_above + take;

  // Output in candidate order: thread t of a tile holds kLoads consecutive candidates; a
  // candidate's position is the number of selected candidates before it.
  uint32_t ties_seen = 0, written = 0;
  for (int tile = 0; tile < n; tile += kSelectThreads * kLoads) {
    const int first = tile + t * kLoads;
    uint32_t keys[kLoads];
    uint32_t my_ties = 0;
#pragma unroll
    for (int e = 0; e < kLoads; ++e) {
      keys[e] = first + e < n ? internal::ScoreKey(scores[first + e]) : 0u;
      my_ties += (first + e < n && keys[e] == prefix) ? 1u : 0u;
    }
    uint32_t ties_before, tile_ties, chosen_before, tile_chosen;
    uint64_t unused;
    BlockExclusiveScan(my_ties, 0, ties_before, unused, tile_ties, sm.warp_count, sm.warp_mass);
    uint32_t tie_rank = ties_seen + ties_before;
    bool chosen[kLoads];
    uint32_t my_chosen = 0;
#pragma unroll
    for (int e = 0; e < kLoads; ++e) {
      const bool valid = first + e < n;
      const bool tie = valid && keys[e] == prefix;
      chosen[e] = valid && (keys[e] > prefix || (tie && tie_rank < take));
      tie_rank += tie ? 1u : 0u;
      my_chosen += chosen[e] ? 1u : 0u;
    }
    BlockExclusiveScan(my_chosen, 0, chosen_before, unused, tile_chosen, sm.warp_count,
                       sm.warp_mass);
    uint32_t position = written + chosen_before;
#pragma unroll
    for (int e = 0; e < kLoads; ++e) {
      if (chosen[e]) out[position++] = begin + first + e;
    }
    ties_seen += tile_ties;
    written += tile_chosen;
  }
  for (int j = static_cast<int>(total) + t; j < width; j += kSelectThreads) out[j] = -1;
  if (t == 0) *out_count = static_cast<int32_t>(total);
  __syncthreads();  // the shared arrays are free for another selection
}

__global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectArgs a) {
  internal::ChainedKernelStart();
  __shared__ SelectShared sm;
  const int selections = a.zone_k > 0 && !a.zone_only ? 2 : 1;
  const int item = blockIdx.x / selections;
  const bool zone = a.zone_only || blockIdx.x % selections == 1;
  int begin, n;
  ItemRange(a.block_begin, a.block_end, item, a.max_blocks, begin, n);
  float* scores = a.w.scores + item * a.w.score_stride;
  if (a.centroid && !a.zone_only) {
    if (zone) scores += a.max_blocks;
    if (n > 0) {
      const int G = a.group_size;
      const size_t row_length = static_cast<size_t>(a.max_blocks) * a.parts;
      const size_t heads = static_cast<size_t>(item) * G;
      CentroidScores(a.w.logits + heads * row_length + static_cast<size_t>(begin) * a.parts,
                     row_length, a.count[item] + static_cast<size_t>(begin) * a.parts, n, a.parts,
                     G, a.w.segment_max + heads * a.w.segments,
                     a.w.segment_sum + heads * a.w.segments, a.w.segments, scores, sm.head_max,
                     sm.head_inverse);
    }
  }
  if (!zone) {
    SelectTop(scores, n, begin, a.k, a.k, a.target, a.selected + static_cast<size_t>(item) * a.k,
              a.num_selected + item, sm);
  } else {
    SelectTop(scores, n, begin, a.zone_k, a.zone_k, std::numeric_limits<uint64_t>::max(),
              a.zone_selected + static_cast<size_t>(item) * a.zone_k, a.zone_count + item, sm);
  }
}

absl::Status CheckWorkspace(const BlockSelectParams& params) {
  const size_t needed = BlockSelectWorkspaceBytes(params);
  if (params.workspace == nullptr || params.workspace_bytes < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("BlockSelectParams: workspace has ", params.workspace_bytes, " bytes at ",
                     absl::Hex(reinterpret_cast<uintptr_t>(params.workspace)),
                     "; expected at least BlockSelectWorkspaceBytes = ", needed));
  }
  if (reinterpret_cast<uintptr_t>(params.workspace) % 16 != 0) {
    return absl::InvalidArgumentError("BlockSelectParams: workspace is not 16-byte aligned");
  }
  return absl::OkStatus();
}

absl::Status LaunchSelect(const BlockSelectParams& params, bool zone_only, cudaStream_t stream) {
  SelectArgs a;
  a.group_size = params.group_size;
  a.max_blocks = params.max_blocks;
  a.k = params.k;
  a.target = params.mode == BlockSelectMode::kMassTarget
                 ? internal::FixedMassTarget(params.mass_target, params.group_size)
                 : std::numeric_limits<uint64_t>::max();
  a.centroid = params.kind == BlockScoreKind::kCentroid;
  a.parts = a.centroid ? params.centroid_parts : 1;
  a.block_begin = params.block_begin;
  a.block_end = params.block_end;
  a.count = params.count;
  a.w = internal::LayoutWorkspace(params);
  a.selected = params.selected;
  a.num_selected = params.num_selected;
  a.zone_k = params.zone_k;
  a.zone_selected = params.zone_selected;
  a.zone_count = params.zone_count;
  a.zone_only = zone_only;
  const int blocks = params.num_items * (params.zone_k > 0 && !zone_only ? 2 : 1);
  KVTIER_CUDA_RETURN_IF_ERROR(
      internal::LaunchChained(SelectKernel, blocks, kSelectThreads, 0, stream, a));
  KVTIER_RETURN_IF_LAUNCH_FAILED("SelectKernel", stream);
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchBlockSelect(const BlockSelectParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(params));
  KVTIER_RETURN_IF_ERROR(internal::ValidateSelectionOutputs(params));
  if (params.num_items == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(CheckWorkspace(params));
  KVTIER_RETURN_IF_ERROR(internal::LaunchBlockScores(params, stream));
  return LaunchSelect(params, /*zone_only=*/false, stream);
}

absl::Status LaunchBlockScoring(const BlockSelectParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(CheckWorkspace(params));
  return internal::LaunchBlockScores(params, stream);
}

absl::Status LaunchBlockSelectScored(const BlockSelectParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(params));
  KVTIER_RETURN_IF_ERROR(internal::ValidateSelectionOutputs(params));
  if (params.num_items == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(CheckWorkspace(params));
  return LaunchSelect(params, /*zone_only=*/false, stream);
}

absl::Status LaunchBlockSelectZone(const BlockSelectParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(params));
  KVTIER_RETURN_IF_ERROR(internal::ValidateZoneOnly(params));
  if (params.num_items == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(CheckWorkspace(params));
  return LaunchSelect(params, /*zone_only=*/true, stream);
}

}  // namespace kvtier
