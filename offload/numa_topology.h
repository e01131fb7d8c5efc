// The host's NUMA layout as hwloc sees it: which node is nearest a GPU, and memory bound
// to a node. The host store puts its arena on the node nearest the GPU it feeds, so that
// page reads over PCIe never cross the socket interconnect.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace kvtier {

// Where a buffer was placed and why, for logs and the probe.
struct NumaPlacement {
  int node = -1;       // OS index of the NUMA node; -1 when hwloc reports none
  bool bound = false;  // memory is bound to `node` (false: the kernel's default policy)
  std::string how;     // e.g. "nearest GPU 0000:3b:00.0" or "local to the calling thread"
};

// Thread-safe: every method is const and the hwloc topology is only read after loading.
class NumaTopology {
 public:
  // The process's topology, loaded on first use (thread-safe) and never unloaded: hwloc's
  // PCI discovery leaks a little on each unload, and one load is all a process needs.
  static absl::StatusOr<std::shared_ptr<const NumaTopology>> Shared();
  ~NumaTopology();
  NumaTopology(const NumaTopology&) = delete;
  NumaTopology& operator=(const NumaTopology&) = delete;

  int num_nodes() const;

  // The node nearest the PCI device `pci_bus_id` ("0000:3b:00.0", as cudaDeviceGetPCIBusId
  // writes it): the node of the device's first non-I/O ancestor. NotFound when hwloc does
  // not list the device (e.g. a VM that hides the PCI tree); the caller may then fall back
  // to LocalNode() and say so.
  absl::StatusOr<int> NodeNearPciDevice(absl::string_view pci_bus_id) const;

  // The node of the core the calling thread runs on (node 0 when that cannot be told).
  int LocalNode() const;

  // Page-aligned memory of `bytes` bound to `node` (interleaved nowhere, no migration).
  // When the OS refuses binding (containers often do), the memory is allocated unbound and
  // `placement->bound` is false. ResourceExhausted when no memory is left.
  absl::StatusOr<void*> Allocate(size_t bytes, int node, NumaPlacement* placement) const;
  void Free(void* data, size_t bytes) const;

 private:
  struct Impl;
  static absl::StatusOr<std::unique_ptr<NumaTopology>> Load();
  explicit NumaTopology(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
