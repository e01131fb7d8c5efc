#include "index/faiss_threads.h"

#include <dlfcn.h>
#include <faiss/IndexFlat.h>
#include <omp.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvtier {
namespace {

// The BLAS FAISS links (OpenBLAS's pthread build, libopenblas0-pthread) really runs one thread
// afterwards: asked through its own entry point, not through what the setup reports.
TEST(FaissThreadsTest, LeavesOpenBlasSingleThreaded) {
  using GetThreads = int (*)();
  auto get_threads = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  ASSERT_NE(get_threads, nullptr) << "OpenBLAS is not the loaded BLAS; the test image installs it";
  const FaissThreading t = ConfigureFaissThreads(2);
  EXPECT_EQ(get_threads(), 1);
  EXPECT_EQ(t.openmp_threads, 2);
  EXPECT_EQ(omp_get_max_threads(), 2);
  EXPECT_TRUE(t.blas_single_threaded);
  EXPECT_NE(t.blas.find("OpenBLAS"), std::string::npos) << t.blas;
}

// FAISS links with its OpenMP and BLAS needs: a flat inner-product search with enough
// queries to take FAISS's BLAS path (>= 20) returns the exact top results.
TEST(FaissThreadsTest, FlatInnerProductSearchMatchesBruteForce) {
  ConfigureFaissThreads();
  constexpr int kDim = 64, kKeys = 5000, kQueries = 32, kTop = 10;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> keys(kKeys * kDim), queries(kQueries * kDim);
  for (float& x : keys) x = normal(rng) + 0.5f;  // a shared mean offset, as real keys have
  for (float& x : queries) x = normal(rng);
  faiss::IndexFlatIP index(kDim);
  index.add(kKeys, keys.data());
  std::vector<float> scores(kQueries * kTop);
  std::vector<faiss::Index::idx_t> ids(kQueries * kTop);
  index.search(kQueries, queries.data(), kTop, scores.data(), ids.data());

  for (int q = 0; q < kQueries; ++q) {
    std::vector<double> dots(kKeys);
    for (int k = 0; k < kKeys; ++k) {
      double dot = 0;
      for (int d = 0; d < kDim; ++d) dot += double{queries[q * kDim + d]} * keys[k * kDim + d];
      dots[k] = dot;
    }
    std::vector<int> order(kKeys);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + kTop, order.end(),
                      [&](int a, int b) { return dots[a] > dots[b]; });
    for (int i = 0; i < kTop; ++i) {
      // Equal up to float rounding of near-ties: compare scores, not only ids.
      EXPECT_NEAR(scores[q * kTop + i], dots[order[i]], 1e-3 * (1 + std::abs(dots[order[i]])));
      EXPECT_NEAR(dots[ids[q * kTop + i]], dots[order[i]], 1e-3 * (1 + std::abs(dots[order[i]])));
    }
  }
}

}  // namespace
}  // namespace kvtier
