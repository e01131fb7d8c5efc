// kvtier-accuracy's driver: runs one input through a KvCache the way a decode would and
// measures how close its attention is to full attention.
//
// An input is one layer's keys, values and queries: a learned-attention dump (its real q/k/v;
// queries exist for its last 256 positions only) or the seeded synthetic workload (a
// llama-3-8b-like shape of one layer, bf16, its queries at the last kSyntheticQuerySpan
// positions, optionally with planted needles).
//
// One run: create a KvCache (one sequence; shape from the input; index, budget, hot set and
// backend from the run); Prefill the tokens before the first query position; Decode one token
// at a time through the last query position, each step with that position's query and its own
// key and value as k_new / v_new. At each evaluated step (`queries` evenly spaced among the
// input's queries) and for every KV head, KvCache::Inspect gives the tokens attended exactly
// (hot set and selected positions) and the host recomputes exact attention over positions
// 0..pos in double (tools/common/attention_accuracy.h): captured mass, the oracle's mass at the
// same number of retrieved pages, the output error of every query head, and whether a needle
// planted for that step was attended exactly.
//
// Budgets are shares of the cold tokens (those outside the hot set) of the last evaluated
// query's context, rounded up to pages: budget.max_pages = ceil(budget_fraction * cold /
// page_size), at least 1; budget.estimate_pages = ceil(estimate_fraction * cold / page_size).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/options.h"
#include "tools/accuracy/accuracy_config.h"
#include "tools/common/attention_accuracy.h"
#include "tools/workload/synthetic_kv.h"

namespace kvtier::accuracy {

// One input in host memory, in the KvCache API's layouts.
struct AccuracyInput {
  std::string name;  // the dump's path as given, or "synthetic"
  ModelShape shape;  // one layer; bf16 or fp16
  float softmax_scale = 0;
  int64_t tokens = 0;            // keys and values of positions [0, tokens)
  std::vector<uint16_t> keys;    // [tokens, Hk, D] of shape.dtype
  std::vector<uint16_t> values;  // [tokens, Hk, D]
  // Positions with a query, ascending, each in [1, tokens) (position 0 must be prefilled),
  // and their queries [query_positions.size(), Hq, D]. Position p attends to 0..p.
  std::vector<int64_t> query_positions;
  std::vector<uint16_t> queries;
  // Indices into query_positions of the evaluated queries, ascending.
  std::vector<int> evaluated;
  std::vector<workload::Needle> needles;  // planted (synthetic only), layer 0
  std::vector<std::string> notes;
  // Tokens prefilled; the positions from here to the first query are decoded (each with the
  // next query's query) before it. 0: up to the first query.
  int64_t prefill_tokens = 0;

  // The last evaluated query's position.
  int64_t last_evaluated_position() const { return query_positions[evaluated.back()]; }
};

// `wanted` indices evenly spaced over [0, count): i * count / wanted for i < wanted (0, 8, ...,
// 248 for 32 of 256, the README's sample); all of them when wanted >= count.
std::vector<int> EvenlySpaced(int count, int wanted);

// Loads the dump at `path` and evaluates `queries` of its queries. The error names the path
// (NotFound, InvalidArgument, ... as AttentionDump::Load gives them).
absl::StatusOr<AccuracyInput> LoadDumpInput(const std::string& path, int queries);

// The synthetic input of `config`: context, seed, queries and needles. Needle i is planted
// for KV head i % Hk at evaluated query floor(i * Q / K) (Q evaluated queries, K needles),
// its key at a seeded position among the cold tokens of that query's context (outside the
// sink and the window of `config`'s hot set). InvalidArgument when the generator refuses.
absl::StatusOr<AccuracyInput> MakeSyntheticInput(const AccuracyConfig& config);

// One (input, index kind, budget) run.
struct RunSpec {
  IndexKind index = IndexKind::kPageBounds;
  double budget_fraction = 0;
  double estimate_fraction = 0;  // 0 for kinds without an estimation zone
  double mass_target = 0;        // 0 for kinds without mass selection
  bool value_shift = true;       // Options::budget.value_shift
  int page_size = 16;
  int sink_tokens = 64;
  int window_tokens = 1024;
  Backend backend = Backend::kHost;
  int device_id = 0;
};
// The runs of `config`: for each index kind, each budget fraction (estimation and mass target
// only for the kinds that have them).
std::vector<RunSpec> RunSpecs(const AccuracyConfig& config);

struct RunResult {
  std::string input;  // AccuracyInput::name
  RunSpec spec;
  // Not OK when the run could not be made or failed (e.g. KvCache::Create refused the
  // options); the figures are then NaN / 0.
  absl::Status status;
  int64_t context = 0;         // the input's tokens
  int64_t cold_tokens = 0;     // of the last evaluated query's context: what the budget shares
  int budget_pages = 0;        // Options::budget.max_pages
  int estimate_pages = 0;      // Options::budget.estimate_pages
  bool estimate_rest = false;  // Options::budget.estimate_rest (estimate_fraction 1)
  int queries = 0;             // evaluated
  int query_heads = 0;
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  // Over evaluated queries and query heads.
  double mean_mass_captured = kNaN;
  double min_mass_captured = kNaN;
  double mean_oracle_mass = kNaN;
  tools::ValueSummary output_error;  // relative L2 per query head; non_finite counts NaNs
  double max_restricted_error = kNaN;
  int needles_found = 0;
  int needles_planted = 0;
  std::vector<workload::Needle> needles_missed;
  // Per evaluated query and KV head: tokens retrieved (selected positions) and estimated.
  double tokens_retrieved = kNaN;
  double tokens_estimated = kNaN;
  double seconds = 0;
  std::vector<std::string> notes;
};

// The KvCache options of a run (see the budget rule above): one sequence of the input's
// tokens, host memory for all of its pages. InvalidArgument (ValidateOptions' message).
absl::StatusOr<Options> MakeRunOptions(const AccuracyInput& input, const RunSpec& spec);

// Runs `spec` on `input` with MakeRunOptions' options, or with `options` as given. Never
// fails as a call: a failure (options refused, KvCache::Create refused, a KvCache call failed,
// Inspect inconsistent with the decode) is the result's status; its figures then stay NaN / 0.
// The host measurement runs on oneTBB threads; the KvCache calls on the calling thread.
RunResult RunInput(const AccuracyInput& input, const RunSpec& spec);
RunResult RunInputWithOptions(const AccuracyInput& input, const RunSpec& spec,
                              const Options& options);

}  // namespace kvtier::accuracy
