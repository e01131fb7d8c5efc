// Block scoring and selection: for each work item (sequence x KV head) score every candidate
// block summary (block_summary.h) against the item's G query heads and keep either the top k
// blocks or the fewest blocks that hold a target share of the estimated attention mass.
// One call covers the whole batch: the CUDA launcher issues a scoring kernel (grid over items
// x block chunks) and a selection kernel (a thread block per item, two with a zone: the
// retrieval's and the zone's), both on `stream`, with no host synchronisation (CUDA-graph
// capturable). The zone can also be selected later, on its own (LaunchBlockSelectZone).
//
// Scores (every value fp32, evaluated in the order written in internal:: below, so the
// kernel and the host twin produce bit-identical scores and therefore identical selections):
//  - kPageBounds: score_b = sum over the G heads h and channels i of
//    q_hi * (q_hi >= 0 ? max_bi : min_bi), which is sum_h sum_i max(q_hi max_bi, q_hi min_bi)
//    (Quest's upper bound of q_h.k over the page, the G heads' bounds summed). Top k only: a
//    bound is not a mass.
//  - kCentroid: logit_hb = scale * (q_h . c_b); per head the softmax over the item's
//    candidate blocks weighted by their token counts, mass_hb = n_b e^{logit_hb} *
//    (1 / sum_b' n_b' e^{logit_hb'}); score_b = sum_h mass_hb (in [0, G]: the G heads' estimated
//    attention masses summed). Blocks with count <= 0 have mass 0. With centroid_parts = 2
//    (block_summary.h's split centroid) a block is two weighted centroids: its weight is
//    n_b0 e^{l_hb0} + n_b1 e^{l_hb1}. The denominator is summed by segments of kMassSegment
//    candidates (the scoring kernel's thread blocks each finish theirs): per segment s the max
//    m_s of its logits and z_s = the sum of its weights against m_s; then M = max_s m_s,
//    sum = sum_s z_s e^{m_s - M} (lane l of kMassLanes over segments l, l + 32, ..., the lanes
//    combined by the xor butterfly), and a block's weight in the score is taken against M
//    (CentroidWeight).
//
// Selection: blocks are ranked by score, descending; equal scores rank by block index,
// ascending (lower index wins). A NaN score ranks above +inf (a NaN summary or query is
// selected, so it shows in attention instead of hiding); -0 equals +0.
//  - kTopK: the first min(k, candidates) blocks of the ranking.
//  - kMassTarget (kCentroid only): the shortest prefix of the ranking whose summed mass
//    reaches mass_target * G (the mean over the G heads of the captured share of the
//    candidates' estimated mass), capped at k blocks. Masses are summed in fixed point
//    (round(mass * 2^44) as uint64; NaN counts 0) so the sum does not depend on order.
// Output per item: the selected block indices (positions in the item's summary arrays),
// ascending, and their count. Optionally also a zone: the first min(zone_k, candidates)
// blocks of the same ranking (top zone_k, whatever the mode), from the same scores in one
// scoring pass; with zone_k >= k it holds every selected block (the estimation zone of a
// clustered index is the zone minus the selection).
//
// Rounding: scores are fp32 with one rounding per operation, so two blocks whose exact scores
// differ by less than a few ulps may rank either way compared with exact arithmetic; the
// kernel and the twin round identically (fused multiply-adds are explicit, exp is
// internal::CanonicalExp on both sides), so they never disagree with each other. The host
// side relies on IEEE single precision without excess precision (x86-64 SSE, aarch64) and on
// compilers not contracting the plain multiplies and adds (the default in ISO C++ mode).
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

enum class BlockScoreKind : uint8_t { kPageBounds, kCentroid };
enum class BlockSelectMode : uint8_t { kTopK, kMassTarget };

// The largest budget and item size the kernels are built for.
inline constexpr int kMaxSelectK = 4096;
inline constexpr int kMaxSelectBlocks = 65536;
inline constexpr int kMaxSelectGroup = 16;

struct BlockSelectParams {
  BlockScoreKind kind = BlockScoreKind::kPageBounds;
  BlockSelectMode mode = BlockSelectMode::kTopK;
  DType dtype = DType::kBF16;  // of q and of the dtype-typed summaries: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int group_size = 0;          // G: query heads per item, 1 to 16
  float softmax_scale = 0.0f;  // kCentroid: logits are scale * q.c; finite
  int num_items = 0;           // >= 0; 0 launches nothing
  int centroid_parts = 1;      // kCentroid: centroids a block, 1 or 2 (block_summary.h)
  // Upper bound of every item's block_end: sizes the workspace and the scoring grid; in
  // [1, kMaxSelectBlocks].
  int max_blocks = 0;
  int k = 0;                 // budget in blocks, [1, kMaxSelectK]; the cap in kMassTarget
  float mass_target = 0.0f;  // kMassTarget: share of the mass to reach, in (0, 1]

  const void* q = nullptr;  // [num_items, G, D] of dtype, contiguous
  // Candidates of item i are its blocks [block_begin[i], block_end[i]), with
  // 0 <= block_begin[i] <= block_end[i] <= max_blocks; blocks outside (e.g. hot-set pages)
  // are neither scored nor selected. An empty range selects nothing.
  const int32_t* block_begin = nullptr;  // [num_items]
  const int32_t* block_end = nullptr;    // [num_items]
  // Summaries, one pointer per item to the item's arrays (layouts in block_summary.h),
  // indexed by block. Only the candidate blocks are read.
  const void* const* bounds = nullptr;    // kPageBounds: -> [blocks, 2, D] of dtype
  const void* const* key_mean = nullptr;  // kCentroid: -> [blocks, parts, D] of dtype
  const int32_t* const* count = nullptr;  // kCentroid: -> [blocks, parts] token counts

  // [num_items, k]: row i holds item i's selected blocks ascending, then -1 up to k.
  int32_t* selected = nullptr;
  int32_t* num_selected = nullptr;  // [num_items]
  // The zone (optional, zone_k = 0: none): [num_items, zone_k] ascending then -1, and counts.
  int zone_k = 0;  // 0, or in [k, kMaxSelectK]
  int32_t* zone_selected = nullptr;
  int32_t* zone_count = nullptr;  // [num_items]

  // kCentroid, optional: every candidate centroid's logit, an output for a later pass over
  // the same centroids (the estimation zone). [num_items, G, max_blocks * parts]: the logit of
  // head h for part `part` of block b of item i is at
  //   logits[(i * G + h) * max_blocks * parts + b * parts + part];
  // entries of non-candidate blocks are left as they were. Kernel and twin write the same
  // bits. Null: the logits stay in the workspace.
  float* logits = nullptr;

  // Scratch of BlockSelectWorkspaceBytes(params) bytes (device memory for the kernels,
  // 256-byte aligned), allocated once by the caller; its contents need no initialisation
  // and are garbage afterwards. Calls running concurrently need separate workspaces.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Bytes of scratch a call with these kind, group_size, num_items, max_blocks and logits needs,
// per item: a row of max_blocks scores; for kCentroid a second (the zone's), the G heads'
// segment maxima and sums (2 G MassSegments(max_blocks) floats) and, without `logits`, the
// G * parts * max_blocks logits. 0 for invalid sizes (the launch then reports
// what is wrong).
size_t BlockSelectWorkspaceBytes(const BlockSelectParams& params);

namespace internal {
// Checks of everything the host can check without reading the per-item arrays, shared by
// launcher and twin. InvalidArgument naming the field.
absl::Status ValidateBlockSelectShape(const BlockSelectParams& params);
// The retrieving calls' extra check: selected and num_selected set (the scoring pass and the
// zone-only calls write neither and may leave them null).
absl::Status ValidateSelectionOutputs(const BlockSelectParams& params);
// The zone-only calls' extra check: zone_k > 0.
absl::Status ValidateZoneOnly(const BlockSelectParams& params);
// Rows of max_blocks floats an item's workspace holds first: the scores, then for kCentroid
// the zone's scores (the zone's thread block ranks from a copy of its own).
int ScoreRows(const BlockSelectParams& params);
}  // namespace internal

// Host twin: the same scores (bit for bit) and the same selection, computed with plain loops
// (oneTBB-parallel over items). Additionally checks every per-item entry (ranges, non-null
// summary pointers) before writing anything; the workspace is not used.
absl::Status ReferenceBlockSelect(const BlockSelectParams& params);

// The zone alone (the retrieval call's params with zone_k > 0, selected and num_selected unused
// and possibly null; only the zone is written), as
// the retrieval's call with the same params would write it: the top zone_k blocks of the same
// ranking. The twin scores from `logits` when set (a ReferenceBlockSelect with the same params
// wrote them), else from the summaries. Lets a caller take the zone off the retrieval's
// critical path (the wave index selects it on the stream that estimates it).
absl::Status ReferenceBlockSelectZone(const BlockSelectParams& params);

// The two passes of ReferenceBlockSelect one at a time, so that a caller can start work that
// needs only the scores (an estimate over every candidate from `logits`) between them.
// Scoring writes params.logits when set (kCentroid; the twin writes nothing else); the
// selection then writes what ReferenceBlockSelect would, the twin scoring from `logits` when
// set, else from the summaries.
absl::Status ReferenceBlockScoring(const BlockSelectParams& params);
absl::Status ReferenceBlockSelectScored(const BlockSelectParams& params);

// The twin's per-block ranking scores (bounds sum or centroid mass, see above) of item
// `item`: scores[b - block_begin] for its candidates. For tests and diagnostics.
absl::Status ReferenceBlockScores(const BlockSelectParams& params, int item, float* scores);

#ifdef KVTIER_WITH_CUDA
// Scores and selects for the whole batch on `stream`. InvalidArgument for bad sizes or a
// workspace that is missing or too small; Unimplemented for an unsupported dtype, head_dim or
// kind/mode pair. Per-item entries are device data and not read on the host: a range outside
// [0, max_blocks] is clamped into it on the device.
absl::Status LaunchBlockSelect(const BlockSelectParams& params, cudaStream_t stream);
// LaunchBlockSelect's two kernels one at a time: the scoring kernel (scores, logits and
// segment masses into the workspace, and params.logits when set), then the selection kernel
// from what it left there. A LaunchBlockSelectScored must follow a LaunchBlockScoring with the
// same params and workspace (same stream, or an event), with nothing using the workspace in
// between; together they write what one LaunchBlockSelect does.
absl::Status LaunchBlockScoring(const BlockSelectParams& params, cudaStream_t stream);
absl::Status LaunchBlockSelectScored(const BlockSelectParams& params, cudaStream_t stream);
// The zone alone (see ReferenceBlockSelectZone), from the ranking scores that a LaunchBlockSelect
// with the same params and workspace (its zone_k may be 0) left there; that launch must be
// ordered before this one (same stream, or an event), and nothing may use the workspace in
// between. Only the selection kernel runs.
absl::Status LaunchBlockSelectZone(const BlockSelectParams& params, cudaStream_t stream);
#endif

// ---- The canonical arithmetic both sides share -------------------------------------------
#if defined(__CUDACC__)
#define KVTIER_SELECT_HD __host__ __device__ __forceinline__
#else
#define KVTIER_SELECT_HD inline
#endif

namespace internal {

// Lanes that reduce one block's dot products: lane l holds channels [8l, 8l + 8).
inline constexpr int kChannelsPerLane = 8;
// The selection kernel's threads a block.
inline constexpr int kSelectThreads = 512;
// Candidates a segment of the softmax denominator (block_select.h's kCentroid score): a warp
// of the scoring kernel sums one segment of one head, lane l over candidates l, l + 32, ...
inline constexpr int kMassSegment = 128;
inline constexpr int kMassLanes = 32;
// Segments of an item of up to max_blocks candidates.
inline constexpr int MassSegments(int max_blocks) {
  return (max_blocks + kMassSegment - 1) / kMassSegment;
}
// Fixed-point scale of masses.
inline constexpr double kMassScale = 0x1p44;

// Single-precision operations with one rounding each, never contracted.
KVTIER_SELECT_HD float Fma(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
KVTIER_SELECT_HD float Add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
KVTIER_SELECT_HD float Mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KVTIER_SELECT_HD float Div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
// The larger of a and b; a NaN side is dropped (both NaN: NaN).
KVTIER_SELECT_HD float Fmax(float a, float b) {
#ifdef __CUDA_ARCH__
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}
KVTIER_SELECT_HD uint32_t FloatBits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  return std::bit_cast<uint32_t>(x);
#endif
}
KVTIER_SELECT_HD float BitsFloat(uint32_t x) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(x);
#else
  return std::bit_cast<float>(x);
#endif
}
KVTIER_SELECT_HD float Rint(float x) {
#ifdef __CUDA_ARCH__
  return rintf(x);
#else
  return std::nearbyint(x);  // round to nearest even in the default mode
#endif
}

// e^x from fused multiply-adds only, identical on host and device (about 2 ulp). NaN stays
// NaN; overflow gives +inf, underflow 0.
KVTIER_SELECT_HD float CanonicalExp(float x) {
  if (x != x) return x;
  if (x > 88.72283f) return INFINITY;
  if (x < -103.97208f) return 0.0f;
  const float k = Rint(Mul(x, 1.44269504f));  // x = k ln2 + r, |r| <= ln2 / 2
  float r = Fma(k, -0.693145752f, x);         // ln2, high bits (exact product)
  r = Fma(k, -1.42860677e-6f, r);             // ln2, low bits
  float e = 1.98412698e-4f;                   // Taylor series of e^r to degree 7
  e = Fma(e, r, 1.38888889e-3f);
  e = Fma(e, r, 8.33333333e-3f);
  e = Fma(e, r, 4.16666667e-2f);
  e = Fma(e, r, 1.66666667e-1f);
  e = Fma(e, r, 0.5f);
  e = Fma(e, r, 1.0f);
  e = Fma(e, r, 1.0f);
  // e * 2^k in two steps so that k in [-150, 128] never leaves the exponent range.
  const int ki = static_cast<int>(k);
  const int k1 = ki / 2;
  const int k2 = ki - k1;
  const float s1 = BitsFloat(static_cast<uint32_t>(k1 + 127) << 23);
  const float s2 = BitsFloat(static_cast<uint32_t>(k2 + 127) << 23);
  return Mul(Mul(e, s1), s2);
}

// The weight of candidate r of a head's logit row (`logits` and `counts` from the first
// candidate, `parts` entries a candidate): the sum over its parts that hold tokens of
// n e^{logit - max_logit}, parts in order.
KVTIER_SELECT_HD float CentroidWeight(const float* logits, const int32_t* counts, int r, int parts,
                                      float max_logit) {
  float w = 0.0f;
  for (int part = 0; part < parts; ++part) {
    const int32_t c = counts[r * parts + part];
    const float wp =
        c > 0 ? Mul(static_cast<float>(c), CanonicalExp(Add(logits[r * parts + part], -max_logit)))
              : 0.0f;
    w = part == 0 ? wp : Add(w, wp);
  }
  return w;
}

// The max over the parts that hold tokens of candidate r's logits (-inf: none).
KVTIER_SELECT_HD float CentroidMaxLogit(const float* logits, const int32_t* counts, int r,
                                        int parts, float max_logit) {
  for (int part = 0; part < parts; ++part) {
    if (counts[r * parts + part] > 0) max_logit = Fmax(max_logit, logits[r * parts + part]);
  }
  return max_logit;
}

// Lane `lane`'s share of one head's denominator from its segments' (max m_s, sum z_s) pairs:
// the sum over segments lane, lane + kMassLanes, ... (in order) that hold tokens (m_s > -inf)
// of z_s e^{m_s - max_logit}, max_logit being the max of every m_s. The lanes' shares are
// combined by the xor butterfly; 1 / their total is the head's inverse (InverseOf).
KVTIER_SELECT_HD float DenominatorShare(const float* segment_max, const float* segment_sum,
                                        int segments, int lane, float max_logit) {
  float sum = 0.0f;
  for (int s = lane; s < segments; s += kMassLanes) {
    if (segment_max[s] == -INFINITY) continue;
    sum = Add(sum, Mul(segment_sum[s], CanonicalExp(Add(segment_max[s], -max_logit))));
  }
  return sum;
}
// 1 / a denominator; 0 when no segment holds tokens.
KVTIER_SELECT_HD float InverseOf(float denominator) {
  return denominator > 0.0f ? Div(1.0f, denominator) : 0.0f;
}

// Ranking key of a score: larger score, larger key; NaN the largest; -0 as +0.
KVTIER_SELECT_HD uint32_t ScoreKey(float score) {
  if (score != score) return 0xFFFFFFFFu;
  if (score == 0.0f) score = 0.0f;
  const uint32_t bits = FloatBits(score);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// A mass in fixed point: round(mass * 2^44); NaN and negative masses count 0.
KVTIER_SELECT_HD uint64_t FixedMass(float mass) {
  if (!(mass > 0.0f)) return 0;
  if (mass > 65536.0f) mass = 65536.0f;  // beyond any G (keeps sums far from overflow)
#ifdef __CUDA_ARCH__
  return __double2ull_rn(static_cast<double>(mass) * kMassScale);
#else
  return static_cast<uint64_t>(std::nearbyint(static_cast<double>(mass) * kMassScale));
#endif
}

// The mass a kMassTarget selection must reach: round(mass_target * G * 2^44).
inline uint64_t FixedMassTarget(float mass_target, int group_size) {
  return static_cast<uint64_t>(
      std::nearbyint(static_cast<double>(mass_target) * group_size * kMassScale));
}

}  // namespace internal
}  // namespace kvtier
