// Sequences are named by the engine with any 64-bit id; kvtier never invents ids.
#pragma once

#include <cstdint>

namespace kvtier {
using SeqId = uint64_t;
}  // namespace kvtier
