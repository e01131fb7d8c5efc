// The learned-attention dumps of ../shared/data/attention as tests find them: where they are
// (KVTIER_ATTENTION_DATA_DIR, defined by tests/CMakeLists.txt for the binaries that use them)
// and the figures their README gives, which the tests hold kvtier to.
#pragma once

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"

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

}  // namespace kvtier::testing_util
