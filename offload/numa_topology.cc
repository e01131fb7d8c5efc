#include "offload/numa_topology.h"

#include <hwloc.h>

#include <cerrno>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvtier {

struct NumaTopology::Impl {
  hwloc_topology_t topology = nullptr;
  ~Impl() {
    if (topology != nullptr) hwloc_topology_destroy(topology);
  }
};

NumaTopology::NumaTopology(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NumaTopology::~NumaTopology() = default;

absl::StatusOr<std::unique_ptr<NumaTopology>> NumaTopology::Load() {
  auto impl = std::make_unique<Impl>();
  if (hwloc_topology_init(&impl->topology) != 0) {
    impl->topology = nullptr;
    return absl::InternalError("hwloc_topology_init failed");
  }
  // PCI devices are needed to find the node nearest a GPU.
  hwloc_topology_set_io_types_filter(impl->topology, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  if (hwloc_topology_load(impl->topology) != 0) {
    return absl::InternalError(absl::StrCat("hwloc_topology_load failed, errno ", errno));
  }
  return std::unique_ptr<NumaTopology>(new NumaTopology(std::move(impl)));
}

int NumaTopology::num_nodes() const {
  return hwloc_get_nbobjs_by_type(impl_->topology, HWLOC_OBJ_NUMANODE);
}

absl::StatusOr<int> NumaTopology::NodeNearPciDevice(absl::string_view pci_bus_id) const {
  const std::string bus_id(pci_bus_id);
  hwloc_obj_t device = hwloc_get_pcidev_by_busidstring(impl_->topology, bus_id.c_str());
  if (device == nullptr) {
    return absl::NotFoundError(absl::StrCat("hwloc lists no PCI device ", bus_id));
  }
  hwloc_obj_t ancestor = hwloc_get_non_io_ancestor_obj(impl_->topology, device);
  if (ancestor == nullptr || ancestor->nodeset == nullptr ||
      hwloc_bitmap_iszero(ancestor->nodeset)) {
    return absl::NotFoundError(absl::StrCat("hwloc knows no NUMA node for PCI device ", bus_id));
  }
  return hwloc_bitmap_first(ancestor->nodeset);
}

int NumaTopology::LocalNode() const {
  hwloc_bitmap_t cpuset = hwloc_bitmap_alloc();
  hwloc_bitmap_t nodeset = hwloc_bitmap_alloc();
  int node = 0;
  if (hwloc_get_last_cpu_location(impl_->topology, cpuset, HWLOC_CPUBIND_THREAD) == 0) {
    hwloc_cpuset_to_nodeset(impl_->topology, cpuset, nodeset);
    if (!hwloc_bitmap_iszero(nodeset)) node = hwloc_bitmap_first(nodeset);
  }
  hwloc_bitmap_free(nodeset);
  hwloc_bitmap_free(cpuset);
  return node;
}

absl::StatusOr<void*> NumaTopology::Allocate(size_t bytes, int node,
                                             NumaPlacement* placement) const {
  placement->node = node;
  placement->bound = false;
  hwloc_bitmap_t nodeset = hwloc_bitmap_alloc();
  hwloc_bitmap_only(nodeset, static_cast<unsigned>(node));
  void* data = hwloc_alloc_membind(impl_->topology, bytes, nodeset, HWLOC_MEMBIND_BIND,
                                   HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT);
  const int bind_errno = errno;
  hwloc_bitmap_free(nodeset);
  if (data != nullptr) {
    placement->bound = true;
    return data;
  }
  if (bind_errno == ENOMEM) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of host memory on NUMA node ", node));
  }
  // Binding is not possible here (ENOSYS/EXDEV, e.g. a container without mbind): allocate
  // unbound and let the caller report placement->bound == false.
  data = hwloc_alloc(impl_->topology, bytes);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
  }
  return data;
}

void NumaTopology::Free(void* data, size_t bytes) const {
  if (data != nullptr) hwloc_free(impl_->topology, data, bytes);
}

}  // namespace kvtier

namespace kvtier {

absl::StatusOr<std::shared_ptr<const NumaTopology>> NumaTopology::Shared() {
  static const absl::StatusOr<std::shared_ptr<const NumaTopology>>* const shared = [] {
    auto loaded = Load();
    if (!loaded.ok()) {
      return new absl::StatusOr<std::shared_ptr<const NumaTopology>>(loaded.status());
    }
    return new absl::StatusOr<std::shared_ptr<const NumaTopology>>(
        std::shared_ptr<const NumaTopology>(std::move(loaded).value()));
  }();
  return *shared;
}

}  // namespace kvtier
