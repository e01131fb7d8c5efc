// The learned-attention dumps of ../shared/data/attention (format in that folder's README):
// the queries, keys and values of one layer of a small transformer trained on real text,
// recorded on unseen text. kvtier's tests and tools use them as real attention to hold the
// indexes to.
//
// An .npz with
//   k, v   [kv_heads, tokens, head_dim] float16  keys (RoPE applied) and values per KV head
//   q      [q_heads, queries, head_dim] float16  queries of the last positions; query head h
//                                                uses KV head h / (q_heads / kv_heads)
//   q_pos  [queries] integer                     query i attends causally to 0..q_pos[i]
//   meta   0-d unicode string                    JSON: name, layer, tokens, queries, bpb,
//                                                model {vocab, d, layers, hq, hkv, hd, ffn,
//                                                rope_base, ctx}, layout
// Softmax scale 1 / sqrt(head_dim).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tools/workload/npz.h"

namespace kvtier::workload {

// The model configuration recorded in `meta.model`; fields the JSON lacks stay 0.
struct AttentionModelConfig {
  int vocab = 0;
  int width = 0;  // "d": the residual width
  int layers = 0;
  int q_heads = 0;   // "hq"
  int kv_heads = 0;  // "hkv"
  int head_dim = 0;  // "hd"
  int ffn = 0;
  double rope_base = 0.0;
  int context = 0;  // "ctx": the context length it was trained with
};

// The dump's `meta` string and the fields kvtier uses.
struct AttentionDumpMeta {
  std::string json;  // the string as stored
  std::string name;  // e.g. "code_dev8k"; empty when absent
  int layer = 0;
  int tokens = 0;
  int queries = 0;
  double bits_per_byte = 0.0;  // "bpb": the model's loss on the text; 0 when absent
  AttentionModelConfig model;
};

// One dump, loaded whole into host memory (about 4 MiB at 8K tokens, 12 MiB at 24K).
// Immutable once loaded; const methods may be called concurrently.
class AttentionDump {
 public:
  // Loads and validates the dump at `path`. Errors:
  //  - the errors of NpzArchive::Open / Get (NotFound for a missing file or key, Unimplemented
  //    for compressed entries, DataLoss for a corrupt entry, InvalidArgument for a malformed
  //    archive or .npy);
  //  - InvalidArgument when an array has the wrong element type or rank, when the shapes
  //    disagree with each other (k and v differ; q's head_dim is not k's; q_heads is not a
  //    multiple of kv_heads; q_pos's length is not q's query count) or with `meta` (tokens,
  //    queries, hq, hkv, hd, layer < layers), when a q_pos is outside [0, tokens), or when
  //    `meta` is not a JSON object with integer layer, tokens, queries, model.hq, model.hkv
  //    and model.hd.
  static absl::StatusOr<AttentionDump> Load(const std::string& path);
  // The same from an archive already open (tests build archives in memory).
  static absl::StatusOr<AttentionDump> FromArchive(const NpzArchive& archive);

  int kv_heads() const { return kv_heads_; }
  int q_heads() const { return q_heads_; }
  int group_size() const { return q_heads_ / kv_heads_; }  // G: query heads per KV head
  int tokens() const { return tokens_; }
  int num_queries() const { return num_queries_; }
  int head_dim() const { return head_dim_; }
  float softmax_scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim_)); }
  int kv_head_of(int q_head) const { return q_head / group_size(); }

  // float16 bit patterns (kernels/base/dtype.h: FP16ToFloat), C order.
  absl::Span<const uint16_t> keys() const { return keys_; }        // [kv_heads, tokens, D]
  absl::Span<const uint16_t> values() const { return values_; }    // [kv_heads, tokens, D]
  absl::Span<const uint16_t> queries() const { return queries_; }  // [q_heads, queries, D]
  // [queries]: query i attends to positions 0..query_positions()[i], each in [0, tokens).
  absl::Span<const int32_t> query_positions() const { return q_pos_; }

  // Row views: D elements each. Arguments must be in range (asserted in debug builds).
  const uint16_t* key(int kv_head, int token) const;
  const uint16_t* value(int kv_head, int token) const;
  const uint16_t* query(int q_head, int index) const;

  const AttentionDumpMeta& meta() const { return meta_; }

 private:
  AttentionDump() = default;

  int kv_heads_ = 0;
  int q_heads_ = 0;
  int tokens_ = 0;
  int num_queries_ = 0;
  int head_dim_ = 0;
  std::vector<uint16_t> keys_;
  std::vector<uint16_t> values_;
  std::vector<uint16_t> queries_;
  std::vector<int32_t> q_pos_;
  AttentionDumpMeta meta_;
};

}  // namespace kvtier::workload
