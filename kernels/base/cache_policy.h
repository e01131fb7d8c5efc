// How a page cache picks victims: shared by the options (what the user asks for) and the
// resolve kernel and its twin (what runs). kernels/cache_resolve.h gives the exact orders.
#pragma once

#include <cstdint>

namespace kvtier {

enum class CachePolicy : uint8_t {
  kLeastRecentlyUsed,  // evict the slot used longest ago
  kLowestScore,        // evict the lowest accumulated attention mass, ties least recent
  kLastSelection,      // keep exactly the previous step's selection (the NOSA/ShadowKV baseline)
  // No page cache: every selected page is loaded every step (the baseline that shows what the
  // cache saves). A runtime setting only; the resolve kernel never sees it.
  kNone,
};

// "least recently used", "lowest score", "last selection", "none"; "unknown" otherwise.
const char* CachePolicyName(CachePolicy policy);

}  // namespace kvtier
