#include "offload/host_store.h"

#include <atomic>
#include <cstdint>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"
#include "tbb/parallel_for.h"
#include "tbb/task_group.h"

namespace kvtier {
namespace {

constexpr int kPage = 16;

ModelShape SmallShape(DType dtype = DType::kBF16) {
  return {.num_layers = 3, .num_query_heads = 8, .num_kv_heads = 2, .head_dim = 64, .dtype = dtype};
}

std::unique_ptr<HostStore> MakeStore(int64_t frames, ModelShape shape = SmallShape()) {
  const int64_t frame_bytes = 2 * PageBytes(shape, kPage);
  auto store = HostStore::Create(
      {.shape = shape, .page_size = kPage, .capacity_bytes = frames * frame_bytes});
  EXPECT_TRUE(store.ok()) << store.status();
  return std::move(store).value();
}

// Random K/V rows [tokens, kv_heads, head_dim] as raw 16-bit patterns, never all zero.
struct Chunk {
  std::vector<uint16_t> k, v;
  int64_t tokens = 0;
};

Chunk RandomChunk(const ModelShape& shape, int64_t tokens, std::mt19937& rng) {
  Chunk c;
  c.tokens = tokens;
  const size_t n = static_cast<size_t>(tokens) * shape.num_kv_heads * shape.head_dim;
  c.k.resize(n);
  c.v.resize(n);
  std::uniform_int_distribution<int> bits(1, 0xFFFF);
  for (size_t i = 0; i < n; ++i) {
    c.k[i] = static_cast<uint16_t>(bits(rng));
    c.v[i] = static_cast<uint16_t>(bits(rng));
  }
  return c;
}

absl::Status Append(HostStore& store, SeqId seq, int layer, const Chunk& c) {
  const ModelShape& s = store.config().shape;
  return store.Append(seq, layer,
                      MakeConstTensor(c.k.data(), s.dtype, {c.tokens, s.num_kv_heads, s.head_dim}),
                      MakeConstTensor(c.v.data(), s.dtype, {c.tokens, s.num_kv_heads, s.head_dim}));
}

// What the store should hold: per (seq, layer, head), the rows appended so far.
class Model {
 public:
  explicit Model(const ModelShape& shape) : shape_(shape) {}
  void Append(SeqId seq, int layer, const Chunk& c) {
    for (int h = 0; h < shape_.num_kv_heads; ++h) {
      auto& [k, v] = rows_[Key(seq, layer, h)];
      for (int64_t t = 0; t < c.tokens; ++t) {
        const size_t at = (static_cast<size_t>(t) * shape_.num_kv_heads + h) * shape_.head_dim;
        k.insert(k.end(), c.k.begin() + at, c.k.begin() + at + shape_.head_dim);
        v.insert(v.end(), c.v.begin() + at, c.v.begin() + at + shape_.head_dim);
      }
    }
  }
  void Remove(SeqId seq) {
    for (int l = 0; l < shape_.num_layers; ++l) {
      for (int h = 0; h < shape_.num_kv_heads; ++h) rows_.erase(Key(seq, l, h));
    }
  }
  // Checks that every (seq, layer, head) of the model reads back identically, whole and in a
  // random sub-range.
  void ExpectStoreEquals(const HostStore& store, std::mt19937& rng) const {
    for (const auto& [key, kv] : rows_) {
      const auto& [seq, layer, head] = key;
      const int64_t tokens = static_cast<int64_t>(kv.first.size()) / shape_.head_dim;
      ASSERT_EQ(store.NumTokens(seq, layer).value(), tokens);
      const int64_t begin = tokens == 0 ? 0 : static_cast<int64_t>(rng() % tokens);
      const int64_t end = begin + (tokens == begin ? 0 : rng() % (tokens - begin + 1));
      for (auto [b, e] : {std::pair<int64_t, int64_t>{0, tokens}, {begin, end}}) {
        std::vector<uint16_t> k(static_cast<size_t>(e - b) * shape_.head_dim, 0xDEAD);
        std::vector<uint16_t> v(k.size(), 0xBEEF);
        ASSERT_TRUE(store
                        .Read(seq, layer, head, b, e,
                              MakeMutableTensor(k.data(), shape_.dtype, {e - b, shape_.head_dim}),
                              MakeMutableTensor(v.data(), shape_.dtype, {e - b, shape_.head_dim}))
                        .ok());
        const auto off = static_cast<ptrdiff_t>(b * shape_.head_dim);
        ASSERT_TRUE(std::equal(k.begin(), k.end(), kv.first.begin() + off))
            << "K of seq " << seq << " layer " << layer << " head " << head;
        ASSERT_TRUE(std::equal(v.begin(), v.end(), kv.second.begin() + off));
      }
    }
  }

 private:
  using Key = std::tuple<SeqId, int, int>;
  ModelShape shape_;
  absl::flat_hash_map<Key, std::pair<std::vector<uint16_t>, std::vector<uint16_t>>> rows_;
};

TEST(HostStoreTest, CreateRejectsBadConfig) {
  ModelShape bad = SmallShape();
  bad.num_kv_heads = 3;
  EXPECT_EQ(
      HostStore::Create({.shape = bad, .page_size = 16, .capacity_bytes = 1 << 20}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostStore::Create({.shape = SmallShape(), .page_size = 12, .capacity_bytes = 1 << 20})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto tiny = HostStore::Create({.shape = SmallShape(), .page_size = 16, .capacity_bytes = 100});
  EXPECT_EQ(tiny.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tiny.status().message().find("capacity_bytes = 100"), absl::string_view::npos);
}

TEST(HostStoreTest, AppendFillsTheLastPageThenNewOnes) {
  auto store = MakeStore(64);
  std::mt19937 rng(1);
  Model model(store->config().shape);
  ASSERT_TRUE(store->AddSequence(7).ok());
  // 5 tokens, then 11 (page full), then 1 (new page), then 40 (spans pages).
  for (int64_t tokens : {5, 11, 1, 40}) {
    Chunk c = RandomChunk(store->config().shape, tokens, rng);
    ASSERT_TRUE(Append(*store, 7, 1, c).ok());
    model.Append(7, 1, c);
  }
  EXPECT_EQ(store->NumTokens(7, 1).value(), 57);
  EXPECT_EQ(store->NumTokens(7, 0).value(), 0);
  EXPECT_EQ(store->Pages(7, 1, 0).value().size(), 4u);  // ceil(57 / 16)
  EXPECT_EQ(store->Usage().used_pages, 8);              // 4 pages x 2 KV heads
  model.ExpectStoreEquals(*store, rng);
  // Page j holds tokens [16 j, 16 j + 16): token 17 of head 1 is row 1 of page 1.
  std::vector<uint16_t> row(64);
  std::vector<uint16_t> vrow(64);
  ASSERT_TRUE(store
                  ->Read(7, 1, 1, 17, 18, MakeMutableTensor(row.data(), DType::kBF16, {1, 64}),
                         MakeMutableTensor(vrow.data(), DType::kBF16, {1, 64}))
                  .ok());
  const FrameId page1 = store->Pages(7, 1, 1).value()[1];
  EXPECT_EQ(std::memcmp(row.data(), store->arena().KPage(page1) + 64 * 2, 128), 0);
  EXPECT_EQ(std::memcmp(vrow.data(), store->arena().VPage(page1) + 64 * 2, 128), 0);
}

TEST(HostStoreTest, ManySequencesReadBackAndFreeEverything) {
  auto store = MakeStore(4000, SmallShape(DType::kFP16));
  std::mt19937 rng(2);
  Model model(store->config().shape);
  for (SeqId seq = 0; seq < 200; ++seq) ASSERT_TRUE(store->AddSequence(seq * 977).ok());
  for (int round = 0; round < 3; ++round) {
    for (SeqId seq = 0; seq < 200; ++seq) {
      const int layer = static_cast<int>(rng() % 3);
      Chunk c = RandomChunk(store->config().shape, 1 + rng() % 20, rng);
      ASSERT_TRUE(Append(*store, seq * 977, layer, c).ok());
      model.Append(seq * 977, layer, c);
    }
  }
  model.ExpectStoreEquals(*store, rng);
  EXPECT_EQ(store->Usage().num_sequences, 200);
  for (SeqId seq = 0; seq < 200; seq += 2) {
    ASSERT_TRUE(store->RemoveSequence(seq * 977).ok());
    model.Remove(seq * 977);
  }
  model.ExpectStoreEquals(*store, rng);
  for (SeqId seq = 1; seq < 200; seq += 2) ASSERT_TRUE(store->RemoveSequence(seq * 977).ok());
  EXPECT_EQ(store->Usage().used_pages, 0);
  EXPECT_EQ(store->Usage().num_sequences, 0);
}

TEST(HostStoreTest, ExhaustionStoresNothingAndLeavesEverySequenceIntact) {
  auto store = MakeStore(40);  // 20 pages per KV head
  std::mt19937 rng(3);
  Model model(store->config().shape);
  ASSERT_TRUE(store->AddSequence(1).ok());
  ASSERT_TRUE(store->AddSequence(2).ok());
  Chunk a = RandomChunk(store->config().shape, 150, rng);  // 10 pages per head
  ASSERT_TRUE(Append(*store, 1, 0, a).ok());
  model.Append(1, 0, a);
  Chunk b = RandomChunk(store->config().shape, 100, rng);  // 7 pages per head
  ASSERT_TRUE(Append(*store, 2, 2, b).ok());
  model.Append(2, 2, b);
  const HostStoreUsage before = store->Usage();
  EXPECT_EQ(before.used_pages, 34);

  // 60 more tokens for seq 1 layer 0: 6 fill its last page, 54 need 4 pages per head = 8 > 6.
  Chunk too_big = RandomChunk(store->config().shape, 60, rng);
  absl::Status full = Append(*store, 1, 0, too_big);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_NE(full.message().find("nothing was stored"), absl::string_view::npos) << full;
  EXPECT_EQ(store->Usage().used_pages, before.used_pages);
  model.ExpectStoreEquals(*store, rng);  // including the partly filled last page of seq 1

  // What fits still goes in: 6 tokens fill the last page without a new one.
  Chunk fits = RandomChunk(store->config().shape, 6, rng);
  ASSERT_TRUE(Append(*store, 1, 0, fits).ok());
  model.Append(1, 0, fits);
  EXPECT_EQ(store->Usage().used_pages, before.used_pages);

  // Removing a sequence makes room.
  ASSERT_TRUE(store->RemoveSequence(2).ok());
  model.Remove(2);
  ASSERT_TRUE(Append(*store, 1, 0, too_big).ok());
  model.Append(1, 0, too_big);
  model.ExpectStoreEquals(*store, rng);
}

TEST(HostStoreTest, BadInputReturnsSpecificErrorsAndChangesNothing) {
  auto store = MakeStore(64);
  std::mt19937 rng(4);
  Model model(store->config().shape);
  const ModelShape& s = store->config().shape;
  ASSERT_TRUE(store->AddSequence(5).ok());
  Chunk c = RandomChunk(s, 20, rng);
  ASSERT_TRUE(Append(*store, 5, 0, c).ok());
  model.Append(5, 0, c);
  const int64_t used = store->Usage().used_pages;

  EXPECT_EQ(store->AddSequence(5).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store->RemoveSequence(6).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Append(*store, 6, 0, c).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Append(*store, 5, 3, c).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Append(*store, 5, -1, c).code(), absl::StatusCode::kInvalidArgument);
  const auto k = MakeConstTensor(c.k.data(), s.dtype, {20, s.num_kv_heads, s.head_dim});
  const auto v = MakeConstTensor(c.v.data(), s.dtype, {20, s.num_kv_heads, s.head_dim});
  const auto wrong_heads = MakeConstTensor(c.k.data(), s.dtype, {40, 1, s.head_dim});
  const auto wrong_dtype = MakeConstTensor(c.k.data(), DType::kFP16, {20, 2, s.head_dim});
  const auto fewer_tokens = MakeConstTensor(c.v.data(), s.dtype, {19, 2, s.head_dim});
  const auto on_device =
      MakeConstTensor(c.k.data(), s.dtype, {20, 2, s.head_dim}, MemorySpace::kDevice);
  const auto null_data = MakeConstTensor(nullptr, s.dtype, {20, 2, s.head_dim});
  for (auto [kk, vv] : {std::pair{wrong_heads, v},
                        {k, wrong_heads},
                        {wrong_dtype, v},
                        {k, fewer_tokens},
                        {on_device, v},
                        {k, null_data}}) {
    absl::Status status = store->Append(5, 0, kk, vv);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
  absl::Status shape_error = store->Append(5, 0, wrong_heads, v);
  EXPECT_NE(shape_error.message().find("k: wrong extent"), absl::string_view::npos) << shape_error;

  std::vector<uint16_t> out(64 * 30);
  auto k_out = [&](int64_t n) { return MakeMutableTensor(out.data(), s.dtype, {n, 64}); };
  EXPECT_EQ(store->Read(5, 0, 0, 0, 21, k_out(21), k_out(21)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store->Read(5, 0, 0, 5, 4, k_out(0), k_out(0)).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store->Read(5, 0, 2, 0, 1, k_out(1), k_out(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Read(5, 0, 0, 0, 2, k_out(3), k_out(3)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Read(9, 0, 0, 0, 0, k_out(0), k_out(0)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->NumTokens(9, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Pages(5, 0, 2).status().code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(store->Usage().used_pages, used);
  model.ExpectStoreEquals(*store, rng);
}

TEST(HostStoreTest, ConcurrentAppendsFromTbbTasks) {
  const ModelShape shape = SmallShape();
  auto store = MakeStore(20000, shape);
  constexpr int kSequences = 48;
  // Each sequence's chunks are made up front; tasks append them concurrently, one task per
  // (sequence, layer) so that calls on one sequence also interleave across layers.
  std::vector<std::vector<Chunk>> chunks(kSequences * shape.num_layers);
  std::mt19937 rng(5);
  for (auto& list : chunks) {
    for (int i = 0; i < 6; ++i) list.push_back(RandomChunk(shape, 1 + rng() % 40, rng));
  }
  for (SeqId seq = 0; seq < kSequences; ++seq) ASSERT_TRUE(store->AddSequence(seq).ok());
  std::atomic<int> failures{0};
  tbb::task_group churn;
  // Meanwhile other sequences come and go.
  churn.run([&] {
    std::mt19937 churn_rng(99);
    for (SeqId seq = 1000; seq < 1200; ++seq) {
      Chunk c = RandomChunk(shape, 17, churn_rng);
      if (!store->AddSequence(seq).ok() || !Append(*store, seq, 0, c).ok() ||
          !store->RemoveSequence(seq).ok()) {
        failures++;
      }
    }
  });
  tbb::parallel_for(0, static_cast<int>(chunks.size()), [&](int i) {
    const SeqId seq = static_cast<SeqId>(i / shape.num_layers);
    const int layer = i % shape.num_layers;
    for (const Chunk& c : chunks[i]) {
      if (!Append(*store, seq, layer, c).ok()) failures++;
    }
  });
  churn.wait();
  EXPECT_EQ(failures.load(), 0);
  Model model(shape);
  for (int i = 0; i < static_cast<int>(chunks.size()); ++i) {
    for (const Chunk& c : chunks[i]) model.Append(i / shape.num_layers, i % shape.num_layers, c);
  }
  model.ExpectStoreEquals(*store, rng);
  EXPECT_EQ(store->Usage().num_sequences, kSequences);
}

TEST(HostStoreTest, AppendRacingWithRemovalOfTheSameSequenceIsSafe) {
  const ModelShape shape = SmallShape();
  auto store = MakeStore(4000, shape);
  std::mt19937 rng(6);
  Chunk c = RandomChunk(shape, 33, rng);
  for (SeqId seq = 0; seq < 100; ++seq) {
    ASSERT_TRUE(store->AddSequence(seq).ok());
    tbb::task_group group;
    absl::Status appended;
    group.run([&] { appended = Append(*store, seq, 0, c); });
    group.run([&] { ASSERT_TRUE(store->RemoveSequence(seq).ok()); });
    group.wait();
    EXPECT_TRUE(appended.ok() || appended.code() == absl::StatusCode::kNotFound) << appended;
    EXPECT_EQ(store->Usage().used_pages, 0) << "pages leaked by a racing append";
  }
}

}  // namespace
}  // namespace kvtier
