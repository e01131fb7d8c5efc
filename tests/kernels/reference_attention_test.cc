// Tests of the host twins of paged decode attention and merge against a separately written
// brute force (contiguous tokens, no pages, plain fp64 loops) on fresh random inputs.
#include "kernels/reference_attention.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "kernels/decode_attention.h"
#include "tbb/global_control.h"

namespace kvtier {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNaNf = std::numeric_limits<float>::quiet_NaN();

// Attention tolerance. The function under test and the brute force both accumulate in double
// over the same exactly representable inputs, so they differ by double rounding (below 1e-11
// relative even at 128K tokens) plus the single rounding of the result to float (2^-24
// relative). 2^-22 relative leaves margin, yet it is 30x below the effect of dropping one of
// 128K tokens (~1/128K) and far below bf16 input resolution (2^-8). The absolute term covers
// elements near 0, where the double sums cancel.
constexpr double kAttentionRelTol = 0x1p-22;
constexpr double kAttentionAbsTol = 1e-9;
// Merge tolerance, relative to the value scale (~1). Each part's out and lse were rounded to
// float; the lse error (|lse| * 2^-24, up to ~1e-6) scales that part's weight by e^error, so
// merged values move by ~1e-6 times the spread of the parts' outputs. 1e-5 leaves margin.
constexpr double kMergeTol = 1e-5;

// Outputs are filled with this NaN before every call: an element the call does not write stays
// NaN, and an output the call must leave alone can be checked bit for bit.
constexpr uint32_t kPoisonBits = 0x7FC0DEADu;
const float kPoison = std::bit_cast<float>(kPoisonBits);

bool AllPoison(const std::vector<float>& values) {
  return std::all_of(values.begin(), values.end(),
                     [](float x) { return std::bit_cast<uint32_t>(x) == kPoisonBits; });
}

uint16_t NaNBits(DType dtype) { return dtype == DType::kBF16 ? 0x7FC0 : 0x7E00; }

// Random elements of a 16-bit dtype: normal with a mean offset (so dot products do not average
// out to 0), redrawn near zero so that a wrong, missing or unwritten element cannot pass as 0.
class ElementSource {
 public:
  ElementSource(DType dtype, uint32_t seed) : dtype_(dtype), rng_(seed) {}

  // Returns the bits of one element with the given mean and stores its exact value in *value.
  uint16_t Next(double mean, float* value) {
    for (;;) {
      const float x = static_cast<float>(mean + normal_(rng_));
      const uint16_t bits = dtype_ == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x);
      *value = dtype_ == DType::kBF16 ? BF16ToFloat(bits) : FP16ToFloat(bits);
      if (std::abs(*value) >= 1e-2f) return bits;
    }
  }

  std::mt19937& rng() { return rng_; }

 private:
  DType dtype_;
  std::mt19937 rng_;
  std::normal_distribution<double> normal_;
};

struct BatchSpec {
  DType dtype = DType::kBF16;
  int head_dim = 128;
  int page_size = 16;
  int group_size = 4;
  std::vector<int64_t> lengths;        // tokens of each item; 0 is an item without pages
  std::optional<float> softmax_scale;  // default 1 / sqrt(head_dim)
  uint32_t seed = 1;
};

// One batch, twice: in paged form for the function under test, and contiguous per item (exact
// float values) for the brute force. The pages of all items share one K pool and one V pool at
// independently shuffled slots, so page order in memory differs from page order in the item
// and between K and V. Rows past the end of a partial last page hold NaN: reading them shows.
struct Batch {
  explicit Batch(const BatchSpec& s) : spec(s) {
    const int64_t dim = spec.head_dim;
    const int64_t page = spec.page_size;
    const int num_items = static_cast<int>(spec.lengths.size());
    scale = spec.softmax_scale.value_or(1.0f / std::sqrt(static_cast<float>(dim)));
    ElementSource source(spec.dtype, spec.seed);

    q.resize(num_items * spec.group_size * dim);
    q_bits.resize(q.size());
    for (size_t e = 0; e < q.size(); ++e) q_bits[e] = source.Next(0.3, &q[e]);

    page_offsets.push_back(0);
    for (int i = 0; i < num_items; ++i) {
      const int64_t pages = (spec.lengths[i] + page - 1) / page;
      page_offsets.push_back(static_cast<int32_t>(page_offsets.back() + pages));
      // Ignored for an item without pages: a value out of [1, P] checks that it is.
      last_page_tokens.push_back(
          pages == 0 ? -7 : static_cast<int32_t>(spec.lengths[i] - (pages - 1) * page));
    }
    const int64_t total_pages = page_offsets.back();
    k_slot.resize(total_pages);
    v_slot.resize(total_pages);
    std::iota(k_slot.begin(), k_slot.end(), 0);
    std::iota(v_slot.begin(), v_slot.end(), 0);
    std::shuffle(k_slot.begin(), k_slot.end(), source.rng());
    std::shuffle(v_slot.begin(), v_slot.end(), source.rng());
    k_pool.assign(total_pages * page * dim, NaNBits(spec.dtype));
    v_pool.assign(total_pages * page * dim, NaNBits(spec.dtype));
    for (int64_t j = 0; j < total_pages; ++j) {
      k_pages.push_back(k_pool.data() + k_slot[j] * page * dim);
      v_pages.push_back(v_pool.data() + v_slot[j] * page * dim);
    }

    k.resize(num_items);
    v.resize(num_items);
    for (int i = 0; i < num_items; ++i) {
      k[i].resize(spec.lengths[i] * dim);
      v[i].resize(spec.lengths[i] * dim);
      for (int64_t t = 0; t < spec.lengths[i]; ++t) {
        for (int64_t d = 0; d < dim; ++d) {
          *KBits(i, t, d) = source.Next(0.2, &k[i][t * dim + d]);
          *VBits(i, t, d) = source.Next(0.5, &v[i][t * dim + d]);
        }
      }
    }
  }

  int num_items() const { return static_cast<int>(spec.lengths.size()); }
  int64_t num_rows() const { return static_cast<int64_t>(num_items()) * spec.group_size; }
  int64_t pages_of(int item) const { return page_offsets[item + 1] - page_offsets[item]; }

  // Stored K / V element d of token t of item i, in the shuffled pools.
  uint16_t* KBits(int i, int64_t t, int64_t d) { return Element(k_pool, k_slot, i, t, d); }
  uint16_t* VBits(int i, int64_t t, int64_t d) { return Element(v_pool, v_slot, i, t, d); }

  // Parameters over this batch's storage; poisons out and lse first.
  PagedDecodeParams Params() {
    out.assign(num_rows() * spec.head_dim, kPoison);
    lse.assign(num_rows(), kPoison);
    PagedDecodeParams p;
    p.dtype = spec.dtype;
    p.head_dim = spec.head_dim;
    p.page_size = spec.page_size;
    p.group_size = spec.group_size;
    p.softmax_scale = scale;
    p.num_items = num_items();
    p.q = q_bits.data();
    p.k_pages = k_pages.data();
    p.v_pages = v_pages.data();
    p.page_offsets = page_offsets.data();
    p.last_page_tokens = last_page_tokens.data();
    p.out = out.data();
    p.lse = lse.data();
    return p;
  }

  BatchSpec spec;
  float scale = 0.0f;
  std::vector<float> q;                  // exact values, [items, G, D]
  std::vector<std::vector<float>> k, v;  // exact values, per item [tokens, D]
  std::vector<uint16_t> q_bits;
  std::vector<uint16_t> k_pool, v_pool;  // [pages, P, D], pages at shuffled slots
  std::vector<int64_t> k_slot, v_slot;   // pool slot of each page (global page index)
  std::vector<const void*> k_pages, v_pages;
  std::vector<int32_t> page_offsets, last_page_tokens;
  std::vector<float> out, lse;

 private:
  uint16_t* Element(std::vector<uint16_t>& pool, const std::vector<int64_t>& slot, int i, int64_t t,
                    int64_t d) {
    const int64_t page = page_offsets[i] + t / spec.page_size;
    return pool.data() + (slot[page] * spec.page_size + t % spec.page_size) * spec.head_dim + d;
  }
};

// Textbook attention of one query row over `n` contiguous tokens, all in double.
struct Row {
  std::vector<double> out;
  double lse = 0.0;
};

Row BruteForce(const float* q, const std::vector<float>& k, const std::vector<float>& v, int dim,
               double scale) {
  const size_t n = k.size() / dim;
  Row row;
  row.out.assign(dim, 0.0);
  if (n == 0) {
    row.lse = -kInf;
    return row;
  }
  std::vector<double> logits(n);
  for (size_t t = 0; t < n; ++t) {
    double dot = 0.0;
    for (int d = 0; d < dim; ++d) dot += double{q[d]} * double{k[t * dim + d]};
    logits[t] = scale * dot;
  }
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double denominator = 0.0;
  for (double logit : logits) denominator += std::exp(logit - max_logit);
  for (size_t t = 0; t < n; ++t) {
    const double p = std::exp(logits[t] - max_logit) / denominator;
    for (int d = 0; d < dim; ++d) row.out[d] += p * double{v[t * dim + d]};
  }
  row.lse = max_logit + std::log(denominator);
  return row;
}

bool Near(double got, double want, double rel, double abs) {
  return std::abs(got - want) <= rel * std::abs(want) + abs;
}

// Checks every output row of `b` (after a call) against the brute force; reports the first bad
// element of each bad row. Rows listed in `skip_rows` are not checked.
void ExpectMatchesBruteForce(const Batch& b, const std::vector<int64_t>& skip_rows = {}) {
  const int dim = b.spec.head_dim;
  for (int i = 0; i < b.num_items(); ++i) {
    for (int h = 0; h < b.spec.group_size; ++h) {
      const int64_t r = static_cast<int64_t>(i) * b.spec.group_size + h;
      if (std::find(skip_rows.begin(), skip_rows.end(), r) != skip_rows.end()) continue;
      const std::string where =
          absl::StrCat("item ", i, " (", b.spec.lengths[i], " tokens) head ", h);
      const Row want = BruteForce(&b.q[r * dim], b.k[i], b.v[i], dim, b.scale);
      const float got_lse = b.lse[r];
      ASSERT_FALSE(std::isnan(got_lse)) << where;
      if (b.spec.lengths[i] == 0) {
        EXPECT_EQ(got_lse, -kInf) << where;
      } else {
        EXPECT_TRUE(Near(got_lse, want.lse, kAttentionRelTol, kAttentionAbsTol))
            << where << ": lse " << got_lse << " want " << want.lse;
      }
      for (int d = 0; d < dim; ++d) {
        const float got = b.out[r * dim + d];
        if (std::isnan(got) || !Near(got, want.out[d], kAttentionRelTol, kAttentionAbsTol)) {
          ADD_FAILURE() << where << " d " << d << ": out " << got << " want " << want.out[d];
          break;
        }
      }
    }
  }
}

// ---- Attention against the brute force ----------------------------------------------------

using ShapeParam = std::tuple<DType, int, int>;  // dtype, head_dim, group_size

class ReferenceAttentionShapeTest : public ::testing::TestWithParam<ShapeParam> {};

// Lengths 1, P-1, P, P+1, several and many pages, and an item without pages, in one batch.
TEST_P(ReferenceAttentionShapeTest, MatchesBruteForce) {
  const auto [dtype, head_dim, group_size] = GetParam();
  BatchSpec spec;
  spec.dtype = dtype;
  spec.head_dim = head_dim;
  spec.group_size = group_size;
  spec.page_size = 16;
  spec.lengths = {1, 15, 16, 17, 0, 7 * 16 + 5, 40 * 16};
  spec.seed = 100 + head_dim + 7 * group_size + (dtype == DType::kFP16 ? 1000 : 0);
  Batch batch(spec);
  ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
  ExpectMatchesBruteForce(batch);
}

INSTANTIATE_TEST_SUITE_P(AllShapes, ReferenceAttentionShapeTest,
                         ::testing::Combine(::testing::Values(DType::kBF16, DType::kFP16),
                                            ::testing::Values(64, 128, 256),
                                            ::testing::Values(1, 4, 8)),
                         [](const ::testing::TestParamInfo<ShapeParam>& info) {
                           return absl::StrCat(DTypeName(std::get<0>(info.param)), "_D",
                                               std::get<1>(info.param), "_G",
                                               std::get<2>(info.param));
                         });

// Page sizes from 1 token to pages longer than a parallel chunk (4096 tokens), so that chunks
// hold a single page and the last chunk ends in a partial page.
TEST(ReferenceAttentionTest, PageSizes) {
  for (int page_size : {1, 3, 16, 64, 5000}) {
    SCOPED_TRACE(absl::StrCat("page_size ", page_size));
    BatchSpec spec;
    spec.dtype = DType::kFP16;
    spec.head_dim = 64;
    spec.group_size = 2;
    spec.page_size = page_size;
    spec.lengths = {1, page_size, page_size + 1, 3 * page_size + 2};
    if (page_size > 1) spec.lengths.push_back(page_size - 1);
    spec.seed = 200 + page_size;
    Batch batch(spec);
    ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
    ExpectMatchesBruteForce(batch);
  }
}

// A 128K-token item (the chunked parallel path), a chunked item with a partial last page and
// an item without pages in one batch.
TEST(ReferenceAttentionTest, LongContext128K) {
  BatchSpec spec;
  spec.dtype = DType::kBF16;
  spec.head_dim = 128;
  spec.group_size = 4;
  spec.lengths = {131072, 0, 9011};
  spec.seed = 300;
  Batch batch(spec);
  ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
  ExpectMatchesBruteForce(batch);
}

// Scales other than 1/sqrt(D): small, negative, and large enough (logits in the thousands)
// that exp overflows without the max subtraction and the softmax is nearly one-hot.
TEST(ReferenceAttentionTest, CustomSoftmaxScale) {
  for (float scale : {0.37f, -0.2f, 30.0f}) {
    SCOPED_TRACE(absl::StrCat("softmax_scale ", scale));
    BatchSpec spec;
    spec.dtype = DType::kBF16;
    spec.head_dim = 128;
    spec.group_size = 4;
    spec.lengths = {1000, 1, 5000};
    spec.softmax_scale = scale;
    spec.seed = 400;
    Batch batch(spec);
    ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
    ExpectMatchesBruteForce(batch);
  }
}

// Scale 0: every logit is 0, so out is the plain mean of V and lse = log(n), a check that does
// not depend on the brute force.
TEST(ReferenceAttentionTest, ZeroScaleAveragesValues) {
  BatchSpec spec;
  spec.dtype = DType::kFP16;
  spec.head_dim = 64;
  spec.group_size = 1;
  spec.lengths = {37, 4097 + 100};
  spec.softmax_scale = 0.0f;
  Batch batch(spec);
  ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
  for (int i = 0; i < batch.num_items(); ++i) {
    const int64_t n = spec.lengths[i];
    EXPECT_FLOAT_EQ(batch.lse[i], std::log(static_cast<double>(n)));
    for (int d = 0; d < spec.head_dim; ++d) {
      double sum = 0.0;
      for (int64_t t = 0; t < n; ++t) sum += batch.v[i][t * spec.head_dim + d];
      EXPECT_FLOAT_EQ(batch.out[i * spec.head_dim + d], sum / n) << "item " << i << " d " << d;
    }
  }
}

TEST(ReferenceAttentionTest, EmptyBatchIsOk) {
  PagedDecodeParams params;
  params.head_dim = 128;
  params.page_size = 16;
  params.group_size = 4;
  params.softmax_scale = 1.0f;
  params.num_items = 0;  // nothing to read or write: null pointers are fine
  EXPECT_TRUE(ReferencePagedDecodeAttention(params).ok());
}

// The chunk split depends on the parameters only: one thread gives the same bits.
TEST(ReferenceAttentionTest, SameBitsOnOneThread) {
  BatchSpec spec;
  spec.head_dim = 64;
  spec.lengths = {20000, 333, 4097};
  Batch batch(spec);
  ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
  const std::vector<float> out = batch.out;
  const std::vector<float> lse = batch.lse;
  {
    tbb::global_control one_thread(tbb::global_control::max_allowed_parallelism, 1);
    ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
  }
  for (size_t e = 0; e < out.size(); ++e) {
    ASSERT_EQ(std::bit_cast<uint32_t>(out[e]), std::bit_cast<uint32_t>(batch.out[e])) << e;
  }
  for (size_t e = 0; e < lse.size(); ++e) {
    ASSERT_EQ(std::bit_cast<uint32_t>(lse[e]), std::bit_cast<uint32_t>(batch.lse[e])) << e;
  }
}

// A NaN in a key poisons every row of its item (every logit's softmax weight depends on it), a
// NaN in a value poisons its column, a NaN query its row; other rows stay exact. Item 0 is
// long enough to take the chunked path, with the NaN in a later chunk.
TEST(ReferenceAttentionTest, PropagatesNaN) {
  BatchSpec spec;
  spec.dtype = DType::kBF16;
  spec.head_dim = 64;
  spec.group_size = 4;
  spec.lengths = {9000, 100, 50, 70};
  Batch batch(spec);
  const int dim = spec.head_dim;
  *batch.KBits(0, 7000, 5) = NaNBits(spec.dtype);
  *batch.VBits(1, 42, 9) = NaNBits(spec.dtype);
  batch.q_bits[(2 * spec.group_size + 3) * dim + 11] = NaNBits(spec.dtype);  // item 2, head 3
  ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
  for (int h = 0; h < spec.group_size; ++h) {
    EXPECT_TRUE(std::isnan(batch.lse[h])) << "item 0 head " << h;
    for (int d = 0; d < dim; ++d) EXPECT_TRUE(std::isnan(batch.out[h * dim + d])) << d;
    const int64_t r1 = spec.group_size + h;
    EXPECT_FALSE(std::isnan(batch.lse[r1]));
    for (int d = 0; d < dim; ++d) EXPECT_EQ(std::isnan(batch.out[r1 * dim + d]), d == 9) << d;
  }
  const int64_t r2 = 2 * spec.group_size + 3;
  EXPECT_TRUE(std::isnan(batch.lse[r2]));
  for (int d = 0; d < dim; ++d) EXPECT_TRUE(std::isnan(batch.out[r2 * dim + d])) << d;
  // Rows of items 0 and 1 and row r2 are NaN by design; the rest match the brute force.
  std::vector<int64_t> skip;
  for (int64_t r = 0; r < 2 * spec.group_size; ++r) skip.push_back(r);
  skip.push_back(r2);
  ExpectMatchesBruteForce(batch, skip);
}

// Every invalid parameter gives InvalidArgument naming the field, and nothing is written. The
// bad entry of an array sits at its last item, so a function that wrote early items before
// checking later ones would show.
// A bf16 or fp16 output is the fp32 result rounded once more (an item without pages: +0).
TEST(ReferenceAttentionTest, OutputDTypesRoundTheFloatResult) {
  BatchSpec spec;
  spec.dtype = DType::kFP16;
  spec.head_dim = 64;
  spec.lengths = {1, 0, 300, 5000};
  spec.seed = 900;
  Batch batch(spec);
  ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
  const std::vector<float> want_out = batch.out;
  const std::vector<float> want_lse = batch.lse;
  for (DType out_dtype : {DType::kBF16, DType::kFP16}) {
    SCOPED_TRACE(DTypeName(out_dtype));
    PagedDecodeParams params = batch.Params();
    std::vector<uint16_t> out(want_out.size(), 0xFFFF);
    params.out_dtype = out_dtype;
    params.out = out.data();
    ASSERT_TRUE(ReferencePagedDecodeAttention(params).ok());
    for (size_t e = 0; e < out.size(); ++e) {
      const uint16_t want =
          out_dtype == DType::kBF16 ? FloatToBF16(want_out[e]) : FloatToFP16(want_out[e]);
      ASSERT_EQ(out[e], want) << "element " << e;
    }
    for (size_t r = 0; r < want_lse.size(); ++r) {
      ASSERT_EQ(std::bit_cast<uint32_t>(batch.lse[r]), std::bit_cast<uint32_t>(want_lse[r]));
    }
  }
}

TEST(ReferenceAttentionTest, RejectsInvalidParameters) {
  struct Case {
    std::string expected;  // substring of the message
    std::function<void(Batch&, PagedDecodeParams&)> mutate;
  };
  const std::vector<Case> cases = {
      {"dtype is fp32", [](Batch&, PagedDecodeParams& p) { p.dtype = DType::kFP32; }},
      {"head_dim is 96", [](Batch&, PagedDecodeParams& p) { p.head_dim = 96; }},
      {"head_dim is 0", [](Batch&, PagedDecodeParams& p) { p.head_dim = 0; }},
      {"page_size is 0", [](Batch&, PagedDecodeParams& p) { p.page_size = 0; }},
      {"group_size is 0", [](Batch&, PagedDecodeParams& p) { p.group_size = 0; }},
      {"num_items is -1", [](Batch&, PagedDecodeParams& p) { p.num_items = -1; }},
      {"softmax_scale is nan", [](Batch&, PagedDecodeParams& p) { p.softmax_scale = kNaNf; }},
      {"softmax_scale is inf",
       [](Batch&, PagedDecodeParams& p) {
         p.softmax_scale = std::numeric_limits<float>::infinity();
       }},
      {"q is null", [](Batch&, PagedDecodeParams& p) { p.q = nullptr; }},
      {"k_pages is null", [](Batch&, PagedDecodeParams& p) { p.k_pages = nullptr; }},
      {"v_pages is null", [](Batch&, PagedDecodeParams& p) { p.v_pages = nullptr; }},
      {"k_pages[", [](Batch& b, PagedDecodeParams&) { b.k_pages.back() = nullptr; }},
      {"v_pages[", [](Batch& b, PagedDecodeParams&) { b.v_pages.back() = nullptr; }},
      {"page_offsets is null", [](Batch&, PagedDecodeParams& p) { p.page_offsets = nullptr; }},
      {"page_offsets[0] is 1", [](Batch& b, PagedDecodeParams&) { b.page_offsets[0] = 1; }},
      {"page_offsets[3] is",
       [](Batch& b, PagedDecodeParams&) { b.page_offsets[3] = b.page_offsets[2] - 1; }},
      {"last_page_tokens is null",
       [](Batch&, PagedDecodeParams& p) { p.last_page_tokens = nullptr; }},
      {"last_page_tokens[2] is 0", [](Batch& b, PagedDecodeParams&) { b.last_page_tokens[2] = 0; }},
      {"last_page_tokens[2] is 17",
       [](Batch& b, PagedDecodeParams&) { b.last_page_tokens[2] = 17; }},
      {"out is null", [](Batch&, PagedDecodeParams& p) { p.out = nullptr; }},
      {"lse is null", [](Batch&, PagedDecodeParams& p) { p.lse = nullptr; }},
      {"out_dtype is 7", [](Batch&, PagedDecodeParams& p) { p.out_dtype = static_cast<DType>(7); }},
  };
  BatchSpec spec;
  spec.head_dim = 64;
  spec.lengths = {40, 5000, 20};  // item 1 is long enough for the chunked path
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    Batch batch(spec);
    PagedDecodeParams params = batch.Params();
    c.mutate(batch, params);
    const absl::Status status = ReferencePagedDecodeAttention(params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(c.expected), absl::string_view::npos) << status;
    EXPECT_TRUE(AllPoison(batch.out));
    EXPECT_TRUE(AllPoison(batch.lse));
  }
}

// ---- Per-chunk log-sum-exp -----------------------------------------------------------------

constexpr int kLseChunk = 16;

// Brute-force log-sum-exp of the logits of tokens [begin, end) of item i, head h, in double;
// -inf for an empty range.
double BruteForceChunkLse(const Batch& b, int i, int h, int64_t begin, int64_t end) {
  const int dim = b.spec.head_dim;
  const float* q = &b.q[(static_cast<int64_t>(i) * b.spec.group_size + h) * dim];
  std::vector<double> logits;
  for (int64_t t = begin; t < end; ++t) {
    double dot = 0.0;
    for (int d = 0; d < dim; ++d) dot += double{q[d]} * double{b.k[i][t * dim + d]};
    logits.push_back(double{b.scale} * dot);
  }
  if (logits.empty()) return -kInf;
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (double logit : logits) sum += std::exp(logit - max_logit);
  return max_logit + std::log(sum);
}

// Runs the twin with chunk_lse on `b` (poisoned first) and checks every row of it against the
// brute force: chunk c of page entry e covers the item's tokens [16 (c + (e - first) P / 16),
// + 16), -inf past the last token. Also checks that the chunks of an item merge to its lse.
void ExpectChunkLseMatchesBruteForce(Batch& b) {
  const int64_t chunks_per_page = b.spec.page_size / kLseChunk;
  const int group = b.spec.group_size;
  std::vector<float> chunk_lse(b.page_offsets.back() * chunks_per_page * group, kPoison);
  PagedDecodeParams params = b.Params();
  params.chunk_lse = chunk_lse.data();
  ASSERT_TRUE(ReferencePagedDecodeAttention(params).ok());
  ExpectMatchesBruteForce(b);  // out and lse are as without chunk_lse
  for (int i = 0; i < b.num_items(); ++i) {
    const int64_t n = b.spec.lengths[i];
    for (int64_t e = b.page_offsets[i]; e < b.page_offsets[i + 1]; ++e) {
      for (int64_t c = 0; c < chunks_per_page; ++c) {
        const int64_t begin = std::min(n, ((e - b.page_offsets[i]) * chunks_per_page + c) * 16);
        const int64_t end = std::min(n, begin + kLseChunk);
        for (int h = 0; h < group; ++h) {
          const float got = chunk_lse[(e * chunks_per_page + c) * group + h];
          const double want = BruteForceChunkLse(b, i, h, begin, end);
          const std::string where = absl::StrCat("item ", i, " (", n, " tokens) page entry ", e,
                                                 " chunk ", c, " head ", h);
          ASSERT_FALSE(std::isnan(got)) << where;
          if (want == -kInf) {
            ASSERT_EQ(got, -kInf) << where;
          } else {
            ASSERT_TRUE(Near(got, want, kAttentionRelTol, kAttentionAbsTol))
                << where << ": " << got << " want " << want;
          }
        }
      }
    }
    // The chunks of an item merge to its log-sum-exp.
    for (int h = 0; h < group && n > 0; ++h) {
      const int64_t first = b.page_offsets[i] * chunks_per_page;
      const int64_t last = b.page_offsets[i + 1] * chunks_per_page;
      double max_lse = -kInf;
      for (int64_t row = first; row < last; ++row) {
        max_lse = std::max(max_lse, double{chunk_lse[row * group + h]});
      }
      double sum = 0.0;
      for (int64_t row = first; row < last; ++row) {
        sum += std::exp(chunk_lse[row * group + h] - max_lse);
      }
      const double merged = max_lse + std::log(sum);
      EXPECT_NEAR(merged, b.lse[static_cast<int64_t>(i) * group + h],
                  1e-5 * std::max(1.0, std::abs(merged)))
          << "item " << i << " head " << h;
    }
  }
}

// Page sizes 16 to 64 (and 48: the twin takes any multiple of 16), G 1 to 16; items of 1
// token, a partial first chunk, exactly one page, one token into a page, partial last pages
// with empty trailing chunks, an item without pages, and an item long enough for the twin's
// parallel chunked path.
TEST(ReferenceAttentionTest, ChunkLseMatchesBruteForce) {
  uint32_t seed = 1100;
  for (int page_size : {16, 32, 48, 64}) {
    for (int group_size : {1, 4, 8, 16}) {
      SCOPED_TRACE(absl::StrCat("page_size ", page_size, " G ", group_size));
      BatchSpec spec;
      spec.dtype = group_size % 8 == 0 ? DType::kFP16 : DType::kBF16;
      spec.head_dim = page_size == 64 ? 128 : 64;
      spec.group_size = group_size;
      spec.page_size = page_size;
      spec.lengths = {1, 7, page_size, page_size + 1, 0, 3 * page_size + 17, 5000 + 9};
      spec.seed = seed++;
      Batch batch(spec);
      ASSERT_NO_FATAL_FAILURE(ExpectChunkLseMatchesBruteForce(batch));
    }
  }
}

// Large logits (scale 30): chunks far below the item's maximum still get their own exact
// log-sum-exp, not -inf.
TEST(ReferenceAttentionTest, ChunkLseWithSharpSoftmax) {
  BatchSpec spec;
  spec.head_dim = 128;
  spec.group_size = 4;
  spec.page_size = 32;
  spec.lengths = {1000, 45};
  spec.softmax_scale = 30.0f;
  spec.seed = 1200;
  Batch batch(spec);
  ASSERT_NO_FATAL_FAILURE(ExpectChunkLseMatchesBruteForce(batch));
}

// chunk_lse needs whole 16-token chunks per page: another page size is InvalidArgument and
// nothing is written.
TEST(ReferenceAttentionTest, ChunkLseRejectsPageSizeNotMultipleOf16) {
  BatchSpec spec;
  spec.head_dim = 64;
  spec.page_size = 24;
  spec.lengths = {50, 3};
  Batch batch(spec);
  std::vector<float> chunk_lse(64, kPoison);
  PagedDecodeParams params = batch.Params();
  params.chunk_lse = chunk_lse.data();
  const absl::Status status = ReferencePagedDecodeAttention(params);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("page_size is 24"), absl::string_view::npos) << status;
  EXPECT_TRUE(AllPoison(chunk_lse));
  EXPECT_TRUE(AllPoison(batch.out));
  EXPECT_TRUE(AllPoison(batch.lse));
}

// ---- Merge --------------------------------------------------------------------------------

// Partial results of one part of a split batch, and the page lists they were computed from.
struct Part {
  std::vector<const void*> k_pages, v_pages;
  std::vector<int32_t> page_offsets{0}, last_page_tokens;
  std::vector<float> out, lse;
};

// Attention of every item over its pages [cuts[i][j], cuts[i][j + 1]) (indexes within the
// item) for part j. A part that does not end at the item's last page holds only full pages.
Part ComputePart(Batch& b, const std::vector<std::vector<int64_t>>& cuts, int j) {
  Part part;
  for (int i = 0; i < b.num_items(); ++i) {
    const int64_t first = b.page_offsets[i] + cuts[i][j];
    const int64_t end = b.page_offsets[i] + cuts[i][j + 1];
    for (int64_t page = first; page < end; ++page) {
      part.k_pages.push_back(b.k_pages[page]);
      part.v_pages.push_back(b.v_pages[page]);
    }
    part.page_offsets.push_back(static_cast<int32_t>(part.k_pages.size()));
    part.last_page_tokens.push_back(cuts[i][j + 1] == b.pages_of(i) ? b.last_page_tokens[i]
                                                                    : b.spec.page_size);
  }
  part.out.assign(b.num_rows() * b.spec.head_dim, kPoison);
  part.lse.assign(b.num_rows(), kPoison);
  PagedDecodeParams p = b.Params();
  p.k_pages = part.k_pages.data();
  p.v_pages = part.v_pages.data();
  p.page_offsets = part.page_offsets.data();
  p.last_page_tokens = part.last_page_tokens.data();
  p.out = part.out.data();
  p.lse = part.lse.data();
  EXPECT_TRUE(ReferencePagedDecodeAttention(p).ok());
  return part;
}

// Splitting each item's pages at random page boundaries into 2..5 parts (some of them empty:
// items shorter than the split, and repeated cut points), attending each part and merging
// equals attending the whole.
TEST(ReferenceMergeTest, SplitAtPageBoundariesEqualsUnsplit) {
  int trial = 0;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (auto [head_dim, group_size] : {std::pair{64, 8}, std::pair{128, 4}, std::pair{256, 1}}) {
      BatchSpec spec;
      spec.dtype = dtype;
      spec.head_dim = head_dim;
      spec.group_size = group_size;
      spec.lengths = {1000, 37, 5003, 16, 0, 3};
      spec.seed = 500 + trial;
      Batch batch(spec);
      ASSERT_TRUE(ReferencePagedDecodeAttention(batch.Params()).ok());
      const std::vector<float> whole_out = batch.out;
      const std::vector<float> whole_lse = batch.lse;
      std::mt19937 rng(600 + trial);
      for (int repeat = 0; repeat < 3; ++repeat, ++trial) {
        const int num_parts = std::uniform_int_distribution<int>(2, 5)(rng);
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " D ", head_dim, " G ", group_size, ", ",
                                  num_parts, " parts"));
        std::vector<std::vector<int64_t>> cuts(batch.num_items());
        for (int i = 0; i < batch.num_items(); ++i) {
          std::uniform_int_distribution<int64_t> boundary(0, batch.pages_of(i));
          cuts[i] = {0, batch.pages_of(i)};
          for (int c = 1; c < num_parts; ++c) cuts[i].push_back(boundary(rng));
          std::sort(cuts[i].begin(), cuts[i].end());
        }
        std::vector<Part> parts;
        std::vector<const float*> part_out, part_lse;
        for (int j = 0; j < num_parts; ++j) parts.push_back(ComputePart(batch, cuts, j));
        for (const Part& part : parts) {
          part_out.push_back(part.out.data());
          part_lse.push_back(part.lse.data());
        }
        std::vector<float> out(whole_out.size(), kPoison), lse(whole_lse.size(), kPoison);
        MergeParams merge;
        merge.num_parts = num_parts;
        merge.num_rows = static_cast<int>(batch.num_rows());
        merge.head_dim = head_dim;
        merge.part_out = part_out.data();
        merge.part_lse = part_lse.data();
        merge.out = out.data();
        merge.lse = lse.data();
        ASSERT_TRUE(ReferenceMergePartials(merge).ok());
        for (size_t r = 0; r < lse.size(); ++r) {
          if (std::isinf(whole_lse[r])) {
            EXPECT_EQ(lse[r], whole_lse[r]) << "row " << r;
          } else {
            EXPECT_TRUE(Near(lse[r], whole_lse[r], kMergeTol, kMergeTol))
                << "row " << r << ": " << lse[r] << " want " << whole_lse[r];
          }
        }
        for (size_t e = 0; e < out.size(); ++e) {
          if (std::isnan(out[e]) || !Near(out[e], whole_out[e], kMergeTol, kMergeTol)) {
            ADD_FAILURE() << "element " << e << ": " << out[e] << " want " << whole_out[e];
            break;
          }
        }
      }
    }
  }
}

// Hand-made partial results for the merge-only tests: num_parts parts of num_rows rows of dim.
struct Partials {
  Partials(int num_parts, int num_rows, int dim)
      : out(num_parts, std::vector<float>(num_rows * dim)),
        lse(num_parts, std::vector<float>(num_rows)) {
    std::mt19937 rng(700);
    std::normal_distribution<float> normal(0.5f, 1.0f);
    for (auto& part : out) std::generate(part.begin(), part.end(), [&] { return normal(rng); });
    for (auto& part : lse)
      std::generate(part.begin(), part.end(), [&] { return 3.0f * normal(rng); });
    merged_out.assign(num_rows * dim, kPoison);
    merged_lse.assign(num_rows, kPoison);
  }

  MergeParams Params() {
    part_out.clear();
    part_lse.clear();
    for (const auto& part : out) part_out.push_back(part.data());
    for (const auto& part : lse) part_lse.push_back(part.data());
    MergeParams p;
    p.num_parts = static_cast<int>(out.size());
    p.num_rows = static_cast<int>(lse[0].size());
    p.head_dim = static_cast<int>(out[0].size() / lse[0].size());
    p.part_out = part_out.data();
    p.part_lse = part_lse.data();
    p.out = merged_out.data();
    p.lse = merged_lse.data();
    return p;
  }

  std::vector<std::vector<float>> out, lse;
  std::vector<const float*> part_out, part_lse;
  std::vector<float> merged_out, merged_lse;
};

// Parts with lse = -inf hold no tokens: they contribute nothing and their rows are not read
// (here NaN). A row with no other part is 0 with lse -inf; a row with one other part is that
// part exactly.
TEST(ReferenceMergeTest, MinusInfPartsContributeNothing) {
  constexpr int kDim = 8;
  Partials partials(3, 4, kDim);
  auto empty = [&](int j, int row) {
    partials.lse[j][row] = -std::numeric_limits<float>::infinity();
    std::fill_n(partials.out[j].begin() + row * kDim, kDim, kNaNf);
  };
  for (int j = 0; j < 3; ++j) empty(j, 0);  // row 0: all parts empty
  empty(0, 1);                              // row 1: only part 1 has tokens
  empty(2, 1);
  empty(1, 2);  // row 2: parts 0 and 2; row 3: all three
  ASSERT_TRUE(ReferenceMergePartials(partials.Params()).ok());
  const auto& out = partials.merged_out;
  const auto& lse = partials.merged_lse;
  EXPECT_EQ(lse[0], -kInf);
  for (int d = 0; d < kDim; ++d) EXPECT_EQ(out[d], 0.0f) << d;
  EXPECT_EQ(lse[1], partials.lse[1][1]);
  for (int d = 0; d < kDim; ++d) EXPECT_EQ(out[kDim + d], partials.out[1][kDim + d]) << d;
  for (int row : {2, 3}) {
    EXPECT_FALSE(std::isnan(lse[row])) << row;
    for (int d = 0; d < kDim; ++d) EXPECT_FALSE(std::isnan(out[row * kDim + d])) << row;
  }
  // Row 2 by the formula, in double.
  const double l0 = partials.lse[0][2], l2 = partials.lse[2][2];
  const double m = std::max(l0, l2);
  const double w0 = std::exp(l0 - m), w2 = std::exp(l2 - m);
  EXPECT_FLOAT_EQ(lse[2], m + std::log(w0 + w2));
  for (int d = 0; d < kDim; ++d) {
    const double want =
        (w0 * partials.out[0][2 * kDim + d] + w2 * partials.out[2][2 * kDim + d]) / (w0 + w2);
    EXPECT_NEAR(out[2 * kDim + d], want, 1e-6 * (1 + std::abs(want))) << d;
  }
}

// NaN never becomes a finite number: a NaN lse makes its row NaN wherever the part sits (first,
// last, next to larger lse values), a NaN output element makes that element NaN, an lse of +inf
// (an overflowed part) gives a non-finite row.
TEST(ReferenceMergeTest, PropagatesNaN) {
  constexpr int kDim = 4;
  Partials partials(3, 5, kDim);
  partials.lse[0][0] = kNaNf;                                   // row 0: first part
  partials.lse[2][1] = kNaNf;                                   // row 1: last part,
  partials.lse[0][1] = 50.0f;                                   //   after a larger lse
  partials.out[1][2 * kDim + 3] = kNaNf;                        // row 2: one element
  partials.lse[1][3] = std::numeric_limits<float>::infinity();  // row 3: +inf
  ASSERT_TRUE(ReferenceMergePartials(partials.Params()).ok());
  const auto& out = partials.merged_out;
  const auto& lse = partials.merged_lse;
  for (int row : {0, 1}) {
    EXPECT_TRUE(std::isnan(lse[row])) << row;
    for (int d = 0; d < kDim; ++d) EXPECT_TRUE(std::isnan(out[row * kDim + d])) << row;
  }
  EXPECT_FALSE(std::isnan(lse[2]));
  for (int d = 0; d < kDim; ++d) EXPECT_EQ(std::isnan(out[2 * kDim + d]), d == 3) << d;
  EXPECT_FALSE(std::isfinite(lse[3]));
  for (int d = 0; d < kDim; ++d) EXPECT_FALSE(std::isfinite(out[3 * kDim + d])) << d;
  EXPECT_TRUE(std::isfinite(lse[4]));
  for (int d = 0; d < kDim; ++d) EXPECT_TRUE(std::isfinite(out[4 * kDim + d])) << d;
}

// A bf16 or fp16 merged output is the fp32 merge rounded once more.
TEST(ReferenceMergeTest, OutputDTypesRoundTheFloatResult) {
  Partials partials(3, 5, 16);
  ASSERT_TRUE(ReferenceMergePartials(partials.Params()).ok());
  const std::vector<float> want = partials.merged_out;
  for (DType out_dtype : {DType::kBF16, DType::kFP16}) {
    SCOPED_TRACE(DTypeName(out_dtype));
    MergeParams params = partials.Params();
    std::vector<uint16_t> out(want.size(), 0xFFFF);
    params.out_dtype = out_dtype;
    params.out = out.data();
    ASSERT_TRUE(ReferenceMergePartials(params).ok());
    for (size_t e = 0; e < out.size(); ++e) {
      EXPECT_EQ(out[e], out_dtype == DType::kBF16 ? FloatToBF16(want[e]) : FloatToFP16(want[e]))
          << "element " << e;
    }
  }
}

TEST(ReferenceMergeTest, RejectsInvalidParameters) {
  struct Case {
    std::string expected;  // substring of the message
    std::function<void(Partials&, MergeParams&)> mutate;
  };
  const std::vector<Case> cases = {
      {"num_parts is 0", [](Partials&, MergeParams& p) { p.num_parts = 0; }},
      {"num_rows is 0", [](Partials&, MergeParams& p) { p.num_rows = 0; }},
      {"head_dim is -1", [](Partials&, MergeParams& p) { p.head_dim = -1; }},
      {"part_out is null", [](Partials&, MergeParams& p) { p.part_out = nullptr; }},
      {"part_lse is null", [](Partials&, MergeParams& p) { p.part_lse = nullptr; }},
      {"part_out[2] is null", [](Partials& s, MergeParams&) { s.part_out[2] = nullptr; }},
      {"part_lse[2] is null", [](Partials& s, MergeParams&) { s.part_lse[2] = nullptr; }},
      {"out is null", [](Partials&, MergeParams& p) { p.out = nullptr; }},
      {"lse is null", [](Partials&, MergeParams& p) { p.lse = nullptr; }},
      {"out_dtype is 7", [](Partials&, MergeParams& p) { p.out_dtype = static_cast<DType>(7); }},
      {"out and lse overlap", [](Partials& s, MergeParams& p) { p.lse = s.merged_out.data() + 3; }},
      {"out overlaps part_out[1]",
       [](Partials& s, MergeParams& p) { s.part_out[1] = s.merged_out.data() + 5; }},
      {"lse overlaps part_lse[2]",
       [](Partials& s, MergeParams& p) { s.part_lse[2] = s.merged_lse.data(); }},
      {"out overlaps part_lse[0]",
       [](Partials& s, MergeParams& p) { s.part_lse[0] = s.merged_out.data() + 10; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    Partials partials(3, 6, 4);
    MergeParams params = partials.Params();
    c.mutate(partials, params);
    const absl::Status status = ReferenceMergePartials(params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(c.expected), absl::string_view::npos) << status;
    EXPECT_TRUE(AllPoison(partials.merged_out));
    EXPECT_TRUE(AllPoison(partials.merged_lse));
  }
}

}  // namespace
}  // namespace kvtier
