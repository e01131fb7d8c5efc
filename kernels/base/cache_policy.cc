#include "kernels/base/cache_policy.h"

namespace kvtier {

const char* CachePolicyName(CachePolicy policy) {
  switch (policy) {
    case CachePolicy::kLeastRecentlyUsed:
      return "least recently used";
    case CachePolicy::kLowestScore:
      return "lowest score";
    case CachePolicy::kLastSelection:
      return "last selection";
    case CachePolicy::kNone:
      return "none";
  }
  return "unknown";
}

}  // namespace kvtier
