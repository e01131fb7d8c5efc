#include "runtime/kv_cache.h"

#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const Options& options) {
  return internal::KvCacheImpl::Create(options);
}

}  // namespace kvtier
