#include "offload/numa_topology.h"

#include <cstring>

#include "gtest/gtest.h"
#include "kernels/base/cuda_device.h"
#include "offload/pinned_buffer.h"

namespace kvtier {
namespace {

TEST(NumaTopologyTest, LoadsAndFindsTheLocalNode) {
  auto topology = NumaTopology::Shared();
  ASSERT_TRUE(topology.ok()) << topology.status();
  const int nodes = (*topology)->num_nodes();
  EXPECT_GE(nodes, 1);
  const int local = (*topology)->LocalNode();
  EXPECT_GE(local, 0);
}

TEST(NumaTopologyTest, UnknownPciDeviceIsNotFound) {
  auto topology = NumaTopology::Shared();
  ASSERT_TRUE(topology.ok());
  auto node = (*topology)->NodeNearPciDevice("ffff:ff:1f.7");
  EXPECT_EQ(node.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(node.status().message().find("ffff:ff:1f.7"), absl::string_view::npos);
}

TEST(NumaTopologyTest, AllocatesUsableMemoryOnTheLocalNode) {
  auto topology = NumaTopology::Shared();
  ASSERT_TRUE(topology.ok());
  NumaPlacement placement;
  const size_t bytes = size_t{8} << 20;
  auto data = (*topology)->Allocate(bytes, (*topology)->LocalNode(), &placement);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(placement.node, (*topology)->LocalNode());
  std::memset(*data, 0x5A, bytes);
  EXPECT_EQ(static_cast<unsigned char*>(*data)[bytes - 1], 0x5A);
  (*topology)->Free(*data, bytes);
}

TEST(PinnedBufferTest, PinsExactlyWhenADeviceIsPresent) {
  auto buffer = PinnedBuffer::Allocate({.bytes = size_t{1} << 20, .device_id = 0});
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  EXPECT_EQ(buffer->pinned(), CudaDeviceCount() > 0);
  EXPECT_GE(buffer->placement().node, 0);
  EXPECT_FALSE(buffer->placement().how.empty());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer->data()) % 4096, 0u);

  auto unpinned = PinnedBuffer::Allocate({.bytes = 4096, .device_id = -1});
  ASSERT_TRUE(unpinned.ok());
  EXPECT_FALSE(unpinned->pinned());

  PinnedBuffer moved = std::move(buffer).value();
  EXPECT_EQ(moved.size(), size_t{1} << 20);
}

TEST(PinnedBufferTest, ZeroBytesIsInvalid) {
  EXPECT_EQ(PinnedBuffer::Allocate({.bytes = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
