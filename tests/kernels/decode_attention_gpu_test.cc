// LaunchPagedDecodeAttention and LaunchMergePartials against their host twins
// (ReferencePagedDecodeAttention, ReferenceMergePartials) on fresh random inputs: keys,
// queries and values drawn with mean offsets like real activations and never near zero;
// pages at shuffled slots of one pool, rows past a partial last page holding NaN; every
// output poisoned with NaN before each launch, and NaN never passes a comparison.
//
// Error bounds. The twin is exact (double). The kernel accumulates in fp32, so its error is
// dominated by two roundings: the softmax probabilities rounded to the K/V dtype for the
// tensor-core P.V product (relative 2^-8 for bf16, 2^-11 for fp16 per probability, which
// moves an output by at most that share of the values' magnitude, ~1 here), and the output
// rounded to out_dtype. Each element must satisfy
//   |got - want| <= (u_in + u_out) * max(|want|, 1)
// with u = 2^-8 for bf16 (its unit roundoff), 2^-10 for fp16 (twice its unit roundoff), 1e-5
// for fp32 outputs: at most 7.8e-3 for bf16 inputs and outputs, 2e-3 for fp16. The log-sum-exp must
// be within 2e-4 * max(|want|, 1) (fp32 sums of up to 128K terms). The largest errors seen are
// printed.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status.h"
#include "kernels/decode_attention.h"
#include "kernels/reference_attention.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kLseTolerance = 2e-4;

double Roundoff(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return 0x1p-8;
    case DType::kFP16:
      return 0x1p-10;
    case DType::kFP32:
      return 1e-5;
  }
  return 0;
}

uint16_t NaNBits(DType dtype) { return dtype == DType::kBF16 ? 0x7FC0 : 0x7E00; }

// Device memory holding a copy of `bytes` host bytes (at least 16 bytes are allocated).
absl::StatusOr<DeviceBuffer> Upload(const void* data, size_t bytes) {
  KVTIER_ASSIGN_OR_RETURN(DeviceBuffer buffer, DeviceBuffer::Allocate(std::max<size_t>(bytes, 16)));
  if (bytes > 0) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(buffer.data(), data, bytes, cudaMemcpyHostToDevice));
  }
  return buffer;
}

// `bytes` of device memory filled with 0xFF: NaN as fp32, bf16 and fp16.
absl::StatusOr<DeviceBuffer> Poisoned(size_t bytes) {
  KVTIER_ASSIGN_OR_RETURN(DeviceBuffer buffer, DeviceBuffer::Allocate(std::max<size_t>(bytes, 16)));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemset(buffer.data(), 0xFF, buffer.size()));
  return buffer;
}

// `count` elements of `dtype` at device address `data`, as floats.
absl::StatusOr<std::vector<float>> Download(const void* data, DType dtype, size_t count) {
  std::vector<unsigned char> bytes(count * DTypeSize(dtype));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(bytes.data(), data, bytes.size(), cudaMemcpyDeviceToHost));
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = LoadAsFloat(dtype, bytes.data(), i);
  return values;
}

// Random 16-bit elements: normal with a mean offset, never within 1e-2 of zero. Drawn from
// tables of 8192 samples by a fast generator, so 100K-token batches build in moments.
class ElementSource {
 public:
  ElementSource(DType dtype, uint64_t seed) : state_(seed | 1) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal;
    for (int t = 0; t < 3; ++t) {
      const double mean = kMeans[t];
      tables_[t].resize(kTableSize);
      for (uint16_t& bits : tables_[t]) {
        for (;;) {
          const float x = static_cast<float>(mean + normal(rng));
          bits = dtype == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x);
          if (std::abs(LoadAsFloat(dtype, &bits, 0)) >= 1e-2f) break;
        }
      }
    }
  }
  // kind 0: query (mean 0.3), 1: key (mean 0.2), 2: value (mean 0.5).
  uint16_t Next(int kind) {
    state_ ^= state_ << 13;
    state_ ^= state_ >> 7;
    state_ ^= state_ << 17;
    return tables_[kind][(state_ >> 20) % kTableSize];
  }

 private:
  static constexpr int kTableSize = 8192;
  static constexpr double kMeans[3] = {0.3, 0.2, 0.5};
  uint64_t state_;
  std::vector<uint16_t> tables_[3];
};

struct BatchSpec {
  DType dtype = DType::kBF16;
  int head_dim = 128;
  int page_size = 16;
  int group_size = 4;
  std::vector<int64_t> lengths;  // tokens of each item; 0 is an item without pages
  float softmax_scale = 0.0f;    // 0: 1 / sqrt(head_dim)
  uint64_t seed = 1;
};

// One batch on the host (for the twin) and on the device (for the kernel): the pages of all
// items share one K pool and one V pool at independently shuffled slots; rows past a partial
// last page hold NaN, so a kernel that reads them fails. The twin's fp32 result is computed
// once at construction.
class Batch {
 public:
  void Build(const BatchSpec& spec) {
    spec_ = spec;
    const int64_t dim = spec.head_dim;
    const int64_t page = spec.page_size;
    if (spec_.softmax_scale == 0.0f)
      spec_.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
    ElementSource source(spec.dtype, spec.seed);
    const int items = num_items();
    q_.resize(num_rows() * dim);
    for (uint16_t& e : q_) e = source.Next(0);
    page_offsets_.assign(1, 0);
    last_page_tokens_.clear();
    for (int i = 0; i < items; ++i) {
      const int64_t pages = (spec.lengths[i] + page - 1) / page;
      page_offsets_.push_back(static_cast<int32_t>(page_offsets_.back() + pages));
      last_page_tokens_.push_back(
          pages == 0 ? 0 : static_cast<int32_t>(spec.lengths[i] - (pages - 1) * page));
    }
    const int64_t total_pages = page_offsets_.back();
    k_slot_.resize(total_pages);
    v_slot_.resize(total_pages);
    std::iota(k_slot_.begin(), k_slot_.end(), 0);
    std::iota(v_slot_.begin(), v_slot_.end(), 0);
    std::mt19937_64 rng(spec.seed * 7919);
    std::shuffle(k_slot_.begin(), k_slot_.end(), rng);
    std::shuffle(v_slot_.begin(), v_slot_.end(), rng);
    k_pool_.assign(total_pages * page * dim, NaNBits(spec.dtype));
    v_pool_.assign(total_pages * page * dim, NaNBits(spec.dtype));
    for (int i = 0; i < items; ++i) {
      for (int64_t t = 0; t < spec.lengths[i]; ++t) {
        const int64_t j = page_offsets_[i] + t / page;
        uint16_t* k = k_pool_.data() + (k_slot_[j] * page + t % page) * dim;
        uint16_t* v = v_pool_.data() + (v_slot_[j] * page + t % page) * dim;
        for (int64_t d = 0; d < dim; ++d) {
          k[d] = source.Next(1);
          v[d] = source.Next(2);
        }
      }
    }

    // Device copies.
    auto upload = [&](DeviceBuffer* buffer, const void* data, size_t bytes) {
      absl::StatusOr<DeviceBuffer> b = Upload(data, bytes);
      ASSERT_TRUE(b.ok()) << b.status();
      *buffer = std::move(*b);
    };
    const size_t element = DTypeSize(spec.dtype);
    upload(&d_q_, q_.data(), q_.size() * element);
    upload(&d_k_pool_, k_pool_.data(), k_pool_.size() * element);
    upload(&d_v_pool_, v_pool_.data(), v_pool_.size() * element);
    std::vector<const void*> k_ptrs(total_pages), v_ptrs(total_pages);
    for (int64_t j = 0; j < total_pages; ++j) {
      k_ptrs[j] = d_k_pool_.data() + k_slot_[j] * page * dim * element;
      v_ptrs[j] = d_v_pool_.data() + v_slot_[j] * page * dim * element;
    }
    upload(&d_k_ptrs_, k_ptrs.data(), k_ptrs.size() * sizeof(void*));
    upload(&d_v_ptrs_, v_ptrs.data(), v_ptrs.size() * sizeof(void*));
    upload(&d_offsets_, page_offsets_.data(), page_offsets_.size() * sizeof(int32_t));
    upload(&d_last_, last_page_tokens_.data(), last_page_tokens_.size() * sizeof(int32_t));

    // The twin's result.
    host_k_ptrs_.resize(total_pages);
    host_v_ptrs_.resize(total_pages);
    for (int64_t j = 0; j < total_pages; ++j) {
      host_k_ptrs_[j] = k_pool_.data() + k_slot_[j] * page * dim;
      host_v_ptrs_[j] = v_pool_.data() + v_slot_[j] * page * dim;
    }
    PagedDecodeParams p = Common();
    p.q = q_.data();
    p.k_pages = host_k_ptrs_.data();
    p.v_pages = host_v_ptrs_.data();
    p.page_offsets = page_offsets_.data();
    // The twin insists on [1, P] only for items with pages.
    p.last_page_tokens = last_page_tokens_.data();
    want_out_.assign(num_rows() * dim, NAN);
    want_lse_.assign(num_rows(), NAN);
    p.out_dtype = DType::kFP32;
    p.out = want_out_.data();
    p.lse = want_lse_.data();
    want_chunk_lse_.clear();
    if (spec.page_size % 16 == 0) {  // the per-chunk log-sum-exps as well
      want_chunk_lse_.assign(num_chunk_lse_rows() * spec.group_size, NAN);
      p.chunk_lse = want_chunk_lse_.data();
    }
    ASSERT_OK(ReferencePagedDecodeAttention(p));
  }

  // Parameters over the device copies; out and lse left for the caller.
  PagedDecodeParams DeviceParams() const {
    PagedDecodeParams p = Common();
    p.q = d_q_.data();
    p.k_pages = d_k_ptrs_.as<const void* const>();
    p.v_pages = d_v_ptrs_.as<const void* const>();
    p.page_offsets = d_offsets_.as<const int32_t>();
    p.last_page_tokens = d_last_.as<const int32_t>();
    return p;
  }

  const BatchSpec& spec() const { return spec_; }
  int num_items() const { return static_cast<int>(spec_.lengths.size()); }
  int64_t num_rows() const { return static_cast<int64_t>(num_items()) * spec_.group_size; }
  int64_t max_tokens() const {
    return spec_.lengths.empty() ? 0
                                 : *std::max_element(spec_.lengths.begin(), spec_.lengths.end());
  }
  // Rows of the chunk_lse array: 16-token chunks of every page entry.
  int64_t num_chunk_lse_rows() const {
    return static_cast<int64_t>(page_offsets_.back()) * (spec_.page_size / 16);
  }
  const std::vector<float>& want_chunk_lse() const { return want_chunk_lse_; }
  const std::vector<float>& want_out() const { return want_out_; }
  const std::vector<float>& want_lse() const { return want_lse_; }
  const std::vector<int32_t>& page_offsets() const { return page_offsets_; }
  const std::vector<int32_t>& last_page_tokens() const { return last_page_tokens_; }
  // Device address of the K / V page of global page index j.
  const void* DeviceKPage(int64_t j) const {
    return d_k_pool_.data() +
           k_slot_[j] * spec_.page_size * spec_.head_dim * DTypeSize(spec_.dtype);
  }
  const void* DeviceVPage(int64_t j) const {
    return d_v_pool_.data() +
           v_slot_[j] * spec_.page_size * spec_.head_dim * DTypeSize(spec_.dtype);
  }
  const void* DeviceQ() const { return d_q_.data(); }

 private:
  PagedDecodeParams Common() const {
    PagedDecodeParams p;
    p.dtype = spec_.dtype;
    p.head_dim = spec_.head_dim;
    p.page_size = spec_.page_size;
    p.group_size = spec_.group_size;
    p.softmax_scale = spec_.softmax_scale;
    p.num_items = num_items();
    return p;
  }

  BatchSpec spec_;
  std::vector<uint16_t> q_, k_pool_, v_pool_;
  std::vector<int64_t> k_slot_, v_slot_;
  std::vector<int32_t> page_offsets_, last_page_tokens_;
  std::vector<const void*> host_k_ptrs_, host_v_ptrs_;
  std::vector<float> want_out_, want_lse_, want_chunk_lse_;
  DeviceBuffer d_q_, d_k_pool_, d_v_pool_, d_k_ptrs_, d_v_ptrs_, d_offsets_, d_last_;
};

// Largest normalised errors seen by a test, printed at its end.
struct ErrorStats {
  double out = 0;  // max |got - want| / max(|want|, 1)
  double lse = 0;  // max |got - want| / max(|want|, 1)
  int64_t checked = 0;
  void Print(const std::string& what) const {
    std::cout << "[ errors   ] " << what << ": max out error " << out << ", max lse error " << lse
              << " (relative to max(|want|, 1)) over " << checked << " elements\n";
  }
};

// Compares a result with the twin's; reports the first bad element of each bad row, at most
// 10 rows.
void ExpectMatches(const Batch& b, const std::vector<float>& got_out,
                   const std::vector<float>& got_lse, double out_tolerance, const std::string& what,
                   ErrorStats* stats) {
  const int dim = b.spec().head_dim;
  int bad_rows = 0;
  for (int64_t r = 0; r < b.num_rows() && bad_rows < 10; ++r) {
    const int item = static_cast<int>(r / b.spec().group_size);
    const std::string where = absl::StrCat(what, ", item ", item, " (", b.spec().lengths[item],
                                           " tokens) head ", r % b.spec().group_size);
    const double want_lse = b.want_lse()[r];
    const double got = got_lse[r];
    bool bad = false;
    if (b.spec().lengths[item] == 0) {
      if (got != -kInf) {
        ADD_FAILURE() << where << ": lse " << got << ", want -inf";
        bad = true;
      }
    } else {
      const double error = std::abs(got - want_lse) / std::max(std::abs(want_lse), 1.0);
      if (!(error <= kLseTolerance)) {  // NaN fails
        ADD_FAILURE() << where << ": lse " << got << ", want " << want_lse;
        bad = true;
      }
      if (error == error) stats->lse = std::max(stats->lse, error);
    }
    for (int d = 0; d < dim && !bad; ++d) {
      const double want = b.want_out()[r * dim + d];
      const double value = got_out[r * dim + d];
      const double error = std::abs(value - want) / std::max(std::abs(want), 1.0);
      if (!(error <= out_tolerance)) {
        ADD_FAILURE() << where << " d " << d << ": out " << value << ", want " << want << " (error "
                      << error << ", bound " << out_tolerance << ")";
        bad = true;
      }
      if (error == error) stats->out = std::max(stats->out, error);
      ++stats->checked;
    }
    bad_rows += bad;
  }
}

class DecodeAttentionGpuTest : public GpuStreamTest {
 protected:
  DecodeAttentionGpuTest() : GpuStreamTest("paged decode attention GPU tests") {}

  // Runs the kernel on `b` with poisoned outputs and workspace; returns out (as float) and lse.
  void Run(const Batch& b, DType out_dtype, int num_splits, std::vector<float>* out,
           std::vector<float>* lse) {
    const size_t rows = b.num_rows();
    const int dim = b.spec().head_dim;
    absl::StatusOr<DeviceBuffer> d_out = Poisoned(rows * dim * DTypeSize(out_dtype));
    absl::StatusOr<DeviceBuffer> d_lse = Poisoned(rows * sizeof(float));
    const size_t workspace_bytes =
        PagedDecodeWorkspaceBytes(b.num_items(), b.spec().group_size, dim, num_splits);
    absl::StatusOr<DeviceBuffer> workspace = Poisoned(workspace_bytes);
    ASSERT_TRUE(d_out.ok() && d_lse.ok() && workspace.ok());
    PagedDecodeParams p = b.DeviceParams();
    p.out_dtype = out_dtype;
    p.out = d_out->data();
    p.lse = d_lse->as<float>();
    ASSERT_OK(
        LaunchPagedDecodeAttention(p, num_splits, workspace->data(), workspace_bytes, stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
    absl::StatusOr<std::vector<float>> o = Download(d_out->data(), out_dtype, rows * dim);
    absl::StatusOr<std::vector<float>> l = Download(d_lse->data(), DType::kFP32, rows);
    ASSERT_TRUE(o.ok() && l.ok());
    *out = std::move(*o);
    *lse = std::move(*l);
  }

  // Runs `b` for every output dtype and each split count and compares with the twin.
  void CheckAll(const Batch& b, const std::vector<int>& split_counts, const std::string& what,
                ErrorStats* stats) {
    for (DType out_dtype : {DType::kBF16, DType::kFP16, DType::kFP32}) {
      for (int splits : split_counts) {
        std::vector<float> out, lse;
        ASSERT_NO_FATAL_FAILURE(Run(b, out_dtype, splits, &out, &lse));
        const double tolerance = Roundoff(b.spec().dtype) + Roundoff(out_dtype);
        ExpectMatches(b, out, lse, tolerance,
                      absl::StrCat(what, ", out ", DTypeName(out_dtype), ", ", splits, " splits"),
                      stats);
      }
    }
  }
};

// ---- Shapes --------------------------------------------------------------------------------

using ShapeParam = std::tuple<DType, int, int>;  // dtype, head_dim, group_size

class DecodeAttentionShapeGpuTest : public DecodeAttentionGpuTest,
                                    public ::testing::WithParamInterface<ShapeParam> {};

// 1 token, P - 1, P, P + 1, no pages, and several hundred to a few thousand tokens, in one
// batch; every output dtype; unsplit, and split in 3 and 16 (more splits than some items
// have chunks: empty splits must merge as nothing).
TEST_P(DecodeAttentionShapeGpuTest, MatchesTwin) {
  const auto [dtype, head_dim, group_size] = GetParam();
  BatchSpec spec;
  spec.dtype = dtype;
  spec.head_dim = head_dim;
  spec.group_size = group_size;
  spec.lengths = {1, 15, 16, 17, 0, 100, 777, 2053};
  spec.seed = std::random_device{}();
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  ErrorStats stats;
  const std::string what =
      absl::StrCat(DTypeName(dtype), " D ", head_dim, " G ", group_size, " seed ", spec.seed);
  CheckAll(b, {1, 3, 16}, what, &stats);
  stats.Print(what);
}

INSTANTIATE_TEST_SUITE_P(AllShapes, DecodeAttentionShapeGpuTest,
                         ::testing::Combine(::testing::Values(DType::kBF16, DType::kFP16),
                                            ::testing::Values(64, 128, 256),
                                            ::testing::Values(1, 4, 7, 8, 16)),
                         [](const ::testing::TestParamInfo<ShapeParam>& info) {
                           return absl::StrCat(DTypeName(std::get<0>(info.param)), "_D",
                                               std::get<1>(info.param), "_G",
                                               std::get<2>(info.param));
                         });

TEST_F(DecodeAttentionGpuTest, PageSizes) {
  for (int page : {16, 32, 64}) {
    BatchSpec spec;
    spec.page_size = page;
    spec.group_size = 4;
    spec.lengths = {1, page - 1, page, page + 1, 5 * page + 3, 0, 1000, 4099};
    spec.seed = std::random_device{}();
    Batch b;
    ASSERT_NO_FATAL_FAILURE(b.Build(spec));
    ErrorStats stats;
    const std::string what = absl::StrCat("page ", page, " seed ", spec.seed);
    CheckAll(b, {1, 2, 7}, what, &stats);
    stats.Print(what);
  }
}

// A sharper softmax (logits with a spread of ~10) moves the running maximum often.
TEST_F(DecodeAttentionGpuTest, LargeSoftmaxScale) {
  BatchSpec spec;
  spec.group_size = 8;
  spec.lengths = {3, 300, 5000};
  spec.softmax_scale = 1.0f;
  spec.seed = std::random_device{}();
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  ErrorStats stats;
  const std::string what = absl::StrCat("scale 1, seed ", spec.seed);
  CheckAll(b, {1, 5}, what, &stats);
  stats.Print(what);
}

// 128K and 100K+ tokens next to a 1-token item: unsplit (one block streams 128K tokens), split
// as ChoosePagedDecodeSplits says, and in 64.
TEST_F(DecodeAttentionGpuTest, LongContext) {
  BatchSpec spec;
  spec.lengths = {131072, 100003, 1};
  spec.seed = std::random_device{}();
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  absl::StatusOr<int> chosen =
      ChoosePagedDecodeSplits(b.DeviceParams(), b.max_tokens(), kMaxPagedDecodeSplits);
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  EXPECT_GT(*chosen, 1) << "3 items of 128K tokens cannot fill a GPU without splits";
  ErrorStats stats;
  const std::string what = absl::StrCat("128K bf16 D 128 G 4, seed ", spec.seed);
  CheckAll(b, {1, *chosen, 64}, what, &stats);
  stats.Print(what + ", chosen splits " + std::to_string(*chosen));
}

TEST_F(DecodeAttentionGpuTest, LongContextHeadDim256Group16) {
  BatchSpec spec;
  spec.dtype = DType::kFP16;
  spec.head_dim = 256;
  spec.group_size = 16;
  spec.page_size = 64;
  spec.lengths = {100001};
  spec.seed = std::random_device{}();
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  ErrorStats stats;
  const std::string what = absl::StrCat("100K fp16 D 256 G 16 P 64, seed ", spec.seed);
  CheckAll(b, {1, 32}, what, &stats);
  stats.Print(what);
}

// Many items of mixed lengths, a tenth without pages, split as the chooser says.
TEST_F(DecodeAttentionGpuTest, ManyItemsOfMixedLengths) {
  BatchSpec spec;
  spec.dtype = DType::kFP16;
  spec.group_size = 8;
  spec.page_size = 32;
  spec.seed = std::random_device{}();
  std::mt19937_64 rng(spec.seed);
  for (int i = 0; i < 300; ++i) {
    spec.lengths.push_back(rng() % 10 == 0 ? 0 : static_cast<int64_t>(rng() % 4000) + 1);
  }
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  absl::StatusOr<int> chosen = ChoosePagedDecodeSplits(b.DeviceParams(), b.max_tokens(), 16);
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  ErrorStats stats;
  const std::string what = absl::StrCat("300 mixed items, seed ", spec.seed);
  CheckAll(b, {1, *chosen, 16}, what, &stats);
  stats.Print(what + ", chosen splits " + std::to_string(*chosen));
}

// Each item's pages cut into three consecutive parts (some empty); each part attended on its
// own into fp32 partials, merged by LaunchMergePartials: equal to the unsplit result.
TEST_F(DecodeAttentionGpuTest, PartsMergedByLaunchMergePartialsEqualUnsplit) {
  BatchSpec spec;
  spec.group_size = 4;
  spec.lengths = {1, 16, 40, 0, 1000, 33000, 7};
  spec.seed = std::random_device{}();
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  const int dim = spec.head_dim;
  const int items = b.num_items();
  const int64_t rows = b.num_rows();
  constexpr int kParts = 3;

  std::vector<DeviceBuffer> keep;  // device arrays of the parts
  std::vector<DeviceBuffer> part_out(kParts), part_lse(kParts);
  auto upload = [&](const void* data, size_t bytes) -> const void* {
    absl::StatusOr<DeviceBuffer> buffer = Upload(data, bytes);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    if (!buffer.ok()) return nullptr;
    keep.push_back(std::move(*buffer));
    return keep.back().data();
  };
  for (int part = 0; part < kParts; ++part) {
    std::vector<const void*> k_ptrs, v_ptrs;
    std::vector<int32_t> offsets = {0}, last;
    for (int i = 0; i < items; ++i) {
      const int32_t begin = b.page_offsets()[i];
      const int32_t pages = b.page_offsets()[i + 1] - begin;
      // Part 0: the first page; part 1: up to half; part 2: the rest.
      const int32_t cut1 = std::min(pages, 1);
      const int32_t cut2 = std::max(cut1, pages / 2);
      const int32_t from = part == 0 ? 0 : (part == 1 ? cut1 : cut2);
      const int32_t to = part == 0 ? cut1 : (part == 1 ? cut2 : pages);
      for (int32_t j = from; j < to; ++j) {
        k_ptrs.push_back(b.DeviceKPage(begin + j));
        v_ptrs.push_back(b.DeviceVPage(begin + j));
      }
      offsets.push_back(static_cast<int32_t>(k_ptrs.size()));
      last.push_back(to == pages ? b.last_page_tokens()[i] : spec.page_size);
    }
    PagedDecodeParams p = b.DeviceParams();
    p.k_pages =
        static_cast<const void* const*>(upload(k_ptrs.data(), k_ptrs.size() * sizeof(void*)));
    p.v_pages =
        static_cast<const void* const*>(upload(v_ptrs.data(), v_ptrs.size() * sizeof(void*)));
    p.page_offsets = static_cast<const int32_t*>(upload(offsets.data(), offsets.size() * 4));
    p.last_page_tokens = static_cast<const int32_t*>(upload(last.data(), last.size() * 4));
    absl::StatusOr<DeviceBuffer> o = Poisoned(rows * dim * sizeof(float));
    absl::StatusOr<DeviceBuffer> l = Poisoned(rows * sizeof(float));
    ASSERT_TRUE(o.ok() && l.ok());
    part_out[part] = std::move(*o);
    part_lse[part] = std::move(*l);
    p.out_dtype = DType::kFP32;
    p.out = part_out[part].data();
    p.lse = part_lse[part].as<float>();
    ASSERT_OK(LaunchPagedDecodeAttention(p, 1, nullptr, 0, stream()));
  }
  std::vector<const float*> out_ptrs, lse_ptrs;
  for (int part = 0; part < kParts; ++part) {
    out_ptrs.push_back(part_out[part].as<const float>());
    lse_ptrs.push_back(part_lse[part].as<const float>());
  }
  MergeParams merge;
  merge.num_parts = kParts;
  merge.num_rows = static_cast<int>(rows);
  merge.head_dim = dim;
  merge.part_out =
      static_cast<const float* const*>(upload(out_ptrs.data(), kParts * sizeof(float*)));
  merge.part_lse =
      static_cast<const float* const*>(upload(lse_ptrs.data(), kParts * sizeof(float*)));

  std::vector<float> unsplit_out, unsplit_lse;
  ASSERT_NO_FATAL_FAILURE(Run(b, DType::kFP32, 1, &unsplit_out, &unsplit_lse));
  ErrorStats stats;
  for (DType out_dtype : {DType::kBF16, DType::kFP16, DType::kFP32}) {
    absl::StatusOr<DeviceBuffer> o = Poisoned(rows * dim * DTypeSize(out_dtype));
    absl::StatusOr<DeviceBuffer> l = Poisoned(rows * sizeof(float));
    ASSERT_TRUE(o.ok() && l.ok());
    merge.out_dtype = out_dtype;
    merge.out = o->data();
    merge.lse = l->as<float>();
    ASSERT_OK(LaunchMergePartials(merge, stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
    absl::StatusOr<std::vector<float>> got_out = Download(o->data(), out_dtype, rows * dim);
    absl::StatusOr<std::vector<float>> got_lse = Download(l->data(), DType::kFP32, rows);
    ASSERT_TRUE(got_out.ok() && got_lse.ok());
    const double tolerance = Roundoff(spec.dtype) + Roundoff(out_dtype);
    ExpectMatches(b, *got_out, *got_lse, tolerance,
                  absl::StrCat("3 parts merged, out ", DTypeName(out_dtype)), &stats);
    // Against the unsplit kernel result: both are within the bound of the exact result.
    for (int64_t r = 0; r < rows; ++r) {
      const bool empty = b.spec().lengths[r / spec.group_size] == 0;
      if (empty) {
        EXPECT_EQ((*got_lse)[r], -kInf);
        EXPECT_EQ(unsplit_lse[r], -kInf);
        continue;
      }
      EXPECT_NEAR((*got_lse)[r], unsplit_lse[r],
                  kLseTolerance * std::max(1.0f, std::abs(unsplit_lse[r])))
          << "row " << r;
      for (int d = 0; d < dim; ++d) {
        const double want = unsplit_out[r * dim + d];
        const double got = (*got_out)[r * dim + d];
        if (!(std::abs(got - want) <= 2 * tolerance * std::max(std::abs(want), 1.0))) {
          ADD_FAILURE() << "row " << r << " d " << d << ": merged " << got << ", unsplit " << want;
          break;
        }
      }
    }
  }
  stats.Print("3 parts merged by LaunchMergePartials");
}

// ---- Per-chunk log-sum-exp (chunk_lse) -----------------------------------------------------

// Poisoned floats past the end of the chunk_lse array: a kernel that writes them fails.
constexpr int64_t kChunkLseTail = 64;

// Runs `b` with chunk_lse (fp32 out); out, lse and chunk_lse (with its tail) poisoned first.
void RunWithChunkLse(const Batch& b, int num_splits, cudaStream_t stream, std::vector<float>* out,
                     std::vector<float>* lse, std::vector<float>* chunk_lse) {
  const size_t rows = b.num_rows();
  const int dim = b.spec().head_dim;
  const size_t chunk_values = b.num_chunk_lse_rows() * b.spec().group_size + kChunkLseTail;
  absl::StatusOr<DeviceBuffer> d_out = Poisoned(rows * dim * sizeof(float));
  absl::StatusOr<DeviceBuffer> d_lse = Poisoned(rows * sizeof(float));
  absl::StatusOr<DeviceBuffer> d_chunk = Poisoned(chunk_values * sizeof(float));
  const size_t workspace_bytes =
      PagedDecodeWorkspaceBytes(b.num_items(), b.spec().group_size, dim, num_splits);
  absl::StatusOr<DeviceBuffer> workspace = Poisoned(workspace_bytes);
  ASSERT_TRUE(d_out.ok() && d_lse.ok() && d_chunk.ok() && workspace.ok());
  PagedDecodeParams p = b.DeviceParams();
  p.out_dtype = DType::kFP32;
  p.out = d_out->data();
  p.lse = d_lse->as<float>();
  p.chunk_lse = d_chunk->as<float>();
  ASSERT_OK(LaunchPagedDecodeAttention(p, num_splits, workspace->data(), workspace_bytes, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  absl::StatusOr<std::vector<float>> o = Download(d_out->data(), DType::kFP32, rows * dim);
  absl::StatusOr<std::vector<float>> l = Download(d_lse->data(), DType::kFP32, rows);
  absl::StatusOr<std::vector<float>> c = Download(d_chunk->data(), DType::kFP32, chunk_values);
  ASSERT_TRUE(o.ok() && l.ok() && c.ok());
  *out = std::move(*o);
  *lse = std::move(*l);
  *chunk_lse = std::move(*c);
}

// chunk_lse against the twin's: -inf exactly where the twin has -inf (chunks without tokens),
// elsewhere within the lse bound; the tail past the array untouched. Reports at most 10.
void ExpectChunkLseMatches(const Batch& b, const std::vector<float>& got, const std::string& what,
                           double* max_error) {
  const std::vector<float>& want = b.want_chunk_lse();
  const int group = b.spec().group_size;
  ASSERT_EQ(got.size(), want.size() + kChunkLseTail);
  int bad = 0;
  for (size_t i = 0; i < want.size() && bad < 10; ++i) {
    const int64_t row = static_cast<int64_t>(i) / group;
    const auto where = [&] {
      return absl::StrCat(what, ", chunk_lse row ", row, " (page entry ",
                          row / (b.spec().page_size / 16), ") head ", i % group);
    };
    if (want[i] == -kInf) {
      if (got[i] != -kInf) {
        ADD_FAILURE() << where() << ": " << got[i] << ", want -inf (no tokens)";
        ++bad;
      }
      continue;
    }
    const double error = std::abs(got[i] - want[i]) / std::max(std::abs(double{want[i]}), 1.0);
    if (!(error <= kLseTolerance)) {  // NaN (unwritten) fails
      ADD_FAILURE() << where() << ": " << got[i] << ", want " << want[i];
      ++bad;
      continue;
    }
    *max_error = std::max(*max_error, error);
  }
  for (int64_t k = 0; k < kChunkLseTail; ++k) {
    if (!std::isnan(got[want.size() + k])) {
      ADD_FAILURE() << what << ": chunk_lse written " << k << " floats past its end";
      break;
    }
  }
}

// Every chunk of every page entry, whatever the split count: page sizes 16, 32, 64 (up to 3
// empty chunks after the last token), G 1 to 16, all head dims and both dtypes; items of 1
// token, partial chunks, exactly a page, one token into a page, no pages, thousands of tokens;
// unsplit and split in 3 and 16 (more splits than some items have chunks). out and lse must
// match as they do without chunk_lse.
TEST_F(DecodeAttentionGpuTest, ChunkLseMatchesTwin) {
  const int head_dims[] = {64, 128, 256};
  int config = 0;
  for (int page : {16, 32, 64}) {
    for (int group : {1, 4, 8, 16}) {
      BatchSpec spec;
      spec.dtype = config % 2 == 0 ? DType::kBF16 : DType::kFP16;
      spec.head_dim = head_dims[config % 3];
      spec.page_size = page;
      spec.group_size = group;
      spec.lengths = {1, 15, 16, 17, page - 1, page, page + 1, 0, 5 * page + 3, 1000, 4099};
      spec.seed = std::random_device{}();
      ++config;
      Batch b;
      ASSERT_NO_FATAL_FAILURE(b.Build(spec));
      const std::string what = absl::StrCat(DTypeName(spec.dtype), " D ", spec.head_dim, " P ",
                                            page, " G ", group, " seed ", spec.seed);
      ErrorStats stats;
      double chunk_error = 0;
      for (int splits : {1, 3, 16}) {
        std::vector<float> out, lse, chunk_lse;
        ASSERT_NO_FATAL_FAILURE(RunWithChunkLse(b, splits, stream(), &out, &lse, &chunk_lse));
        const std::string run = absl::StrCat(what, ", ", splits, " splits");
        ExpectMatches(b, out, lse, Roundoff(spec.dtype) + Roundoff(DType::kFP32), run, &stats);
        ExpectChunkLseMatches(b, chunk_lse, run, &chunk_error);
      }
      stats.Print(what);
      std::cout << "[ errors   ] " << what << ": max chunk_lse error " << chunk_error << "\n";
    }
  }
}

// Long items split as the chooser says and in 64, with a sharp softmax (scale 1: logits spread
// over ~10) so that many chunks lie far below their warp's running maximum.
TEST_F(DecodeAttentionGpuTest, ChunkLseLongContextSplitSharpSoftmax) {
  BatchSpec spec;
  spec.page_size = 32;
  spec.group_size = 8;
  spec.softmax_scale = 1.0f;
  spec.lengths = {40000, 7, 0, 20017};
  spec.seed = std::random_device{}();
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  absl::StatusOr<int> chosen = ChoosePagedDecodeSplits(b.DeviceParams(), b.max_tokens(), 64);
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  const std::string what = absl::StrCat("40K P 32 G 8 scale 1, seed ", spec.seed);
  ErrorStats stats;
  double chunk_error = 0;
  for (int splits : {1, *chosen, 64}) {
    std::vector<float> out, lse, chunk_lse;
    ASSERT_NO_FATAL_FAILURE(RunWithChunkLse(b, splits, stream(), &out, &lse, &chunk_lse));
    const std::string run = absl::StrCat(what, ", ", splits, " splits");
    ExpectMatches(b, out, lse, Roundoff(spec.dtype) + Roundoff(DType::kFP32), run, &stats);
    ExpectChunkLseMatches(b, chunk_lse, run, &chunk_error);
  }
  stats.Print(what);
  std::cout << "[ errors   ] " << what << ": max chunk_lse error " << chunk_error
            << ", chosen splits " << *chosen << "\n";
}

// A decode step captured in a CUDA graph: the launch reads no device data on the host.
TEST_F(DecodeAttentionGpuTest, CapturedInCudaGraph) {
  BatchSpec spec;
  spec.lengths = {5000, 1, 0, 20000};
  spec.seed = std::random_device{}();
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  const int dim = spec.head_dim;
  const int64_t rows = b.num_rows();
  absl::StatusOr<int> splits = ChoosePagedDecodeSplits(b.DeviceParams(), 20000, 64);
  ASSERT_TRUE(splits.ok()) << splits.status();
  const size_t workspace_bytes = PagedDecodeWorkspaceBytes(b.num_items(), 4, dim, *splits);
  absl::StatusOr<DeviceBuffer> workspace = Poisoned(workspace_bytes);
  absl::StatusOr<DeviceBuffer> d_out = Poisoned(rows * dim * 2);
  absl::StatusOr<DeviceBuffer> d_lse = Poisoned(rows * sizeof(float));
  ASSERT_TRUE(workspace.ok() && d_out.ok() && d_lse.ok());
  PagedDecodeParams p = b.DeviceParams();
  p.out_dtype = DType::kBF16;
  p.out = d_out->data();
  p.lse = d_lse->as<float>();

  cudaGraph_t graph = nullptr;
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
  const absl::Status launched =
      LaunchPagedDecodeAttention(p, *splits, workspace->data(), workspace_bytes, stream());
  ASSERT_CUDA_OK(cudaStreamEndCapture(stream(), &graph));
  ASSERT_OK(launched);
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  ASSERT_CUDA_OK(cudaMemset(d_out->data(), 0xFF, d_out->size()));  // poison again, replay
  ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  absl::StatusOr<std::vector<float>> out = Download(d_out->data(), DType::kBF16, rows * dim);
  absl::StatusOr<std::vector<float>> lse = Download(d_lse->data(), DType::kFP32, rows);
  ASSERT_TRUE(out.ok() && lse.ok());
  ErrorStats stats;
  ExpectMatches(b, *out, *lse, 2 * Roundoff(DType::kBF16), "graph replay", &stats);
  stats.Print(absl::StrCat("graph replay, ", *splits, " splits"));
}

TEST_F(DecodeAttentionGpuTest, EmptyBatchLaunchesNothing) {
  PagedDecodeParams p;
  p.head_dim = 128;
  p.page_size = 16;
  p.group_size = 4;
  p.softmax_scale = 0.1f;
  p.num_items = 0;
  EXPECT_TRUE(LaunchPagedDecodeAttention(p, 1, nullptr, 0, stream()).ok());
}

TEST_F(DecodeAttentionGpuTest, RejectsUnsupportedOrInvalidParameters) {
  BatchSpec spec;
  spec.lengths = {100};
  Batch b;
  ASSERT_NO_FATAL_FAILURE(b.Build(spec));
  absl::StatusOr<DeviceBuffer> d_out = Poisoned(4 * 128 * 4);
  absl::StatusOr<DeviceBuffer> d_lse = Poisoned(4 * 4);
  ASSERT_TRUE(d_out.ok() && d_lse.ok());
  const PagedDecodeParams good = [&] {
    PagedDecodeParams p = b.DeviceParams();
    p.out = d_out->data();
    p.lse = d_lse->as<float>();
    return p;
  }();
  auto expect = [&](absl::StatusCode code, PagedDecodeParams p, int splits, size_t workspace,
                    const char* what) {
    const absl::Status status = LaunchPagedDecodeAttention(p, splits, nullptr, workspace, stream());
    EXPECT_EQ(status.code(), code) << what << ": " << status;
  };
  PagedDecodeParams p = good;
  p.head_dim = 96;
  expect(absl::StatusCode::kUnimplemented, p, 1, 0, "head_dim 96");
  p = good;
  p.page_size = 8;
  expect(absl::StatusCode::kUnimplemented, p, 1, 0, "page_size 8");
  p = good;
  p.group_size = 17;
  expect(absl::StatusCode::kUnimplemented, p, 1, 0, "group_size 17");
  p = good;
  p.dtype = DType::kFP32;
  expect(absl::StatusCode::kUnimplemented, p, 1, 0, "fp32 K/V");
  p = good;
  p.out_dtype = static_cast<DType>(9);
  expect(absl::StatusCode::kUnimplemented, p, 1, 0, "unknown out dtype");
  p = good;
  p.q = nullptr;
  expect(absl::StatusCode::kInvalidArgument, p, 1, 0, "null q");
  p = good;
  p.softmax_scale = NAN;
  expect(absl::StatusCode::kInvalidArgument, p, 1, 0, "NaN scale");
  expect(absl::StatusCode::kInvalidArgument, good, 0, 0, "0 splits");
  expect(absl::StatusCode::kInvalidArgument, good, kMaxPagedDecodeSplits + 1, 0, "too many splits");
  expect(absl::StatusCode::kInvalidArgument, good, 4, 1 << 20, "null workspace");
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  // Nothing was launched: the outputs are still poisoned.
  absl::StatusOr<std::vector<float>> lse = Download(d_lse->data(), DType::kFP32, 4);
  ASSERT_TRUE(lse.ok());
  for (float x : *lse) EXPECT_TRUE(std::isnan(x));

  MergeParams merge;
  merge.num_parts = 2;
  merge.num_rows = 4;
  merge.head_dim = 128;
  EXPECT_EQ(LaunchMergePartials(merge, stream()).code(), absl::StatusCode::kInvalidArgument);
  merge.num_parts = 0;
  EXPECT_EQ(LaunchMergePartials(merge, stream()).code(), absl::StatusCode::kInvalidArgument);
}

// ---- Merge -----------------------------------------------------------------------------

TEST_F(DecodeAttentionGpuTest, MergeMatchesTwin) {
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(-6.0f, 6.0f);
  for (int num_parts : {1, 2, 5, 33, 70}) {
    for (int dim : {64, 128, 80}) {
      constexpr int kRows = 77;
      // Part rows at -inf hold NaN: never read. Row 3 has every part at -inf; row 5 of the
      // last part has a NaN lse (its row must come out NaN, as in the twin).
      std::vector<std::vector<float>> outs(num_parts), lses(num_parts);
      for (int j = 0; j < num_parts; ++j) {
        outs[j].resize(kRows * dim);
        lses[j].resize(kRows);
        for (int r = 0; r < kRows; ++r) {
          const bool empty = r == 3 || (rng() % 4 == 0 && j > 0);
          lses[j][r] = empty ? -kInf : uniform(rng);
          for (int d = 0; d < dim; ++d) outs[j][r * dim + d] = empty ? NAN : 0.4f + normal(rng);
        }
      }
      lses[num_parts - 1][5] = NAN;
      std::vector<const float*> host_out, host_lse;
      std::vector<DeviceBuffer> device;
      std::vector<const float*> dev_out, dev_lse;
      for (int j = 0; j < num_parts; ++j) {
        host_out.push_back(outs[j].data());
        host_lse.push_back(lses[j].data());
        absl::StatusOr<DeviceBuffer> o = Upload(outs[j].data(), outs[j].size() * 4);
        absl::StatusOr<DeviceBuffer> l = Upload(lses[j].data(), lses[j].size() * 4);
        ASSERT_TRUE(o.ok() && l.ok());
        dev_out.push_back(o->as<const float>());
        dev_lse.push_back(l->as<const float>());
        device.push_back(std::move(*o));
        device.push_back(std::move(*l));
      }
      absl::StatusOr<DeviceBuffer> out_array = Upload(dev_out.data(), num_parts * sizeof(float*));
      absl::StatusOr<DeviceBuffer> lse_array = Upload(dev_lse.data(), num_parts * sizeof(float*));
      ASSERT_TRUE(out_array.ok() && lse_array.ok());

      std::vector<float> want_out(kRows * dim, NAN), want_lse(kRows, NAN);
      MergeParams host;
      host.num_parts = num_parts;
      host.num_rows = kRows;
      host.head_dim = dim;
      host.part_out = host_out.data();
      host.part_lse = host_lse.data();
      host.out = want_out.data();
      host.lse = want_lse.data();
      ASSERT_OK(ReferenceMergePartials(host));

      for (DType out_dtype : {DType::kBF16, DType::kFP16, DType::kFP32}) {
        absl::StatusOr<DeviceBuffer> o = Poisoned(kRows * dim * DTypeSize(out_dtype));
        absl::StatusOr<DeviceBuffer> l = Poisoned(kRows * sizeof(float));
        ASSERT_TRUE(o.ok() && l.ok());
        MergeParams params = host;
        params.part_out = out_array->as<const float* const>();
        params.part_lse = lse_array->as<const float* const>();
        params.out_dtype = out_dtype;
        params.out = o->data();
        params.lse = l->as<float>();
        ASSERT_OK(LaunchMergePartials(params, stream()));
        ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
        absl::StatusOr<std::vector<float>> got_out = Download(o->data(), out_dtype, kRows * dim);
        absl::StatusOr<std::vector<float>> got_lse = Download(l->data(), DType::kFP32, kRows);
        ASSERT_TRUE(got_out.ok() && got_lse.ok());
        // fp32 weights: relative error ~1e-6 against the double twin; plus output rounding.
        const double tolerance = 1e-5 + Roundoff(out_dtype);
        const std::string what =
            absl::StrCat(num_parts, " parts, D ", dim, ", out ", DTypeName(out_dtype));
        for (int r = 0; r < kRows; ++r) {
          if (std::isnan(want_lse[r])) {
            EXPECT_TRUE(std::isnan((*got_lse)[r])) << what << " row " << r;
            for (int d = 0; d < dim; ++d) {
              EXPECT_TRUE(std::isnan((*got_out)[r * dim + d])) << what << " row " << r;
            }
            continue;
          }
          if (want_lse[r] == -kInf) {
            EXPECT_EQ((*got_lse)[r], -kInf) << what << " row " << r;
          } else {
            EXPECT_TRUE(std::abs((*got_lse)[r] - want_lse[r]) <=
                        1e-5 * std::max(1.0f, std::abs(want_lse[r])))
                << what << " row " << r << ": lse " << (*got_lse)[r] << ", want " << want_lse[r];
          }
          for (int d = 0; d < dim; ++d) {
            const double want = want_out[r * dim + d];
            const double got = (*got_out)[r * dim + d];
            if (!(std::abs(got - want) <= tolerance * std::max(std::abs(want), 1.0))) {
              ADD_FAILURE() << what << " row " << r << " d " << d << ": " << got << ", want "
                            << want;
              break;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvtier
