// The learned-attention dumps of ../shared/data/attention as tests find them: where they are
// (KVTIER_ATTENTION_DATA_DIR, defined by tests/CMakeLists.txt for the binaries that use them)
// and the figures their README gives, which the tests hold kvtier to.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/dtype.h"
#include "kernels/block_summary.h"
#include "tools/workload/attention_dump.h"

namespace kvtier::testing_util {

// One row of the README's table: the dump's name and the captured attention mass of the
// hot set plus a 2% page budget chosen by the true best pages and by page min/max bounds.
struct ReadmeRow {
  const char* dump;
  double oracle_2;
  double bounds_2;
};
inline constexpr ReadmeRow kReadme[] = {
    {"code_dev8k_L2", 0.930, 0.924},  {"code_dev8k_L6", 0.878, 0.864},
    {"prose_dev8k_L2", 0.924, 0.917}, {"prose_dev8k_L6", 0.920, 0.911},
    {"prose_dev_L7", 0.922, 0.904},   {"prose_dev_L1", 0.586, 0.555},
    {"code_dev_L4", 0.641, 0.615},
};

inline std::string DumpPath(const char* name) {
  return absl::StrCat(KVTIER_ATTENTION_DATA_DIR, "/", name, ".npz");
}

// True when every dump of the table is present; otherwise false with the reason in `why`.
inline bool DumpsPresent(std::string* why) {
  for (const ReadmeRow& row : kReadme) {
    if (!std::filesystem::exists(DumpPath(row.dump))) {
      *why = absl::StrCat(DumpPath(row.dump),
                          " is absent (the learned-attention dumps live in "
                          "../shared/data/attention beside the checkout)");
      return false;
    }
  }
  return true;
}

// Page bounds (max row, then min row; fp16) of every `page_size`-token page of every KV head
// of `dump`, by the host twin of the summary kernel, into `bounds`: [kv_heads][pages][2 * D].
// The last page holds what is left of the tokens.
inline absl::Status DumpPageBounds(const workload::AttentionDump& dump, int page_size,
                                   std::vector<uint16_t>* bounds) {
  const int dim = dump.head_dim(), kv_heads = dump.kv_heads(), tokens = dump.tokens();
  const int pages = (tokens + page_size - 1) / page_size;
  bounds->assign(static_cast<size_t>(kv_heads) * pages * 2 * dim, 0);
  std::vector<const void*> k_pages;
  std::vector<int32_t> filled;
  std::vector<void*> dst;
  for (int h = 0; h < kv_heads; ++h) {
    for (int j = 0; j < pages; ++j) {
      k_pages.push_back(dump.key(h, j * page_size));
      filled.push_back(std::min(page_size, tokens - j * page_size));
      dst.push_back(bounds->data() + (static_cast<size_t>(h) * pages + j) * 2 * dim);
    }
  }
  PageSummaryParams params;
  params.dtype = DType::kFP16;
  params.head_dim = dim;
  params.page_size = page_size;
  params.num_pages = kv_heads * pages;
  params.k_pages = k_pages.data();
  params.tokens = filled.data();
  params.bounds = dst.data();
  return ReferencePageSummaries(params);
}

}  // namespace kvtier::testing_util
