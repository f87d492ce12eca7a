// ProcessGroupNCCL for dist.cpp. build.rs compiles this file (with
// -DUSE_C10D_NCCL -DL2D_DIST_WITH_NCCL) only when libtorch_cuda.so, nccl.h and
// the CUDA runtime headers are present (scripts/setup.sh installs the two
// header packages the torch wheel lacks).
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

namespace l2d_dist {

c10::intrusive_ptr<c10d::Backend> make_nccl(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
    std::chrono::milliseconds timeout, int device_index) {
  const int visible = static_cast<int>(c10::cuda::device_count());
  TORCH_CHECK(device_index >= 0 && device_index < visible, "CUDA device ",
              device_index, " (LOCAL_RANK) is not among the ", visible,
              " visible");
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  // The watchdog reports a collective still running after this long.
  opts->timeout = timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
  const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  pg->setBoundDeviceId(device);
  // Creates the communicator now, so that a failure surfaces at start-up.
  pg->eagerConnectSingleDevice(device);
  return pg;
}

bool has_nccl() { return true; }

}  // namespace l2d_dist
