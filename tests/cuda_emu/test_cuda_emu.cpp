// The CUDA emulator's own tests (ctest test_cuda_emu): its kernel execution model (barriers,
// shuffles, shared memory, the grid), the failures it reports instead of hanging, and the
// stream-capture rules the CUDA module's graph code relies on. Compiled like the module's
// sources: as C++ with cuda_emu.h force-included, linked with cuda_emu.cpp.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace trainrt_emu {
void clear_fault_for_tests();
}

namespace {

__global__ void block_sums(const int* in, int* out, int* lane_sums) {
  __shared__ int partial[8];
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  int v = in[i];
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  lane_sums[i] = v;  // every lane holds its warp's sum
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int w = 0; w < 8; ++w) s += partial[w];
    out[blockIdx.x] = s;
  }
}

__global__ void any_of(const int* flags, int* out) {
  const int first = __syncthreads_or(flags[threadIdx.x]);
  const int second = __syncthreads_or(threadIdx.x == 200 ? 1 : 0);
  const int third = __syncthreads_or(0);
  out[threadIdx.x] = first * 100 + second * 10 + third;
}

__global__ void split_warp() {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    (void)__shfl_xor_sync(0xffffffffu, 1, 1);
  }
}

__global__ void shuffle_after_exit() {
  if (threadIdx.x == 5) return;
  (void)__shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void add_one(float* x, int n) {
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<int>(gridDim.x * blockDim.x)) {
    x[i] += 1.0f;
  }
}

template <class T>
T* device_array(const std::vector<T>& h) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, h.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, nullptr),
            cudaSuccess);
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> host_copy(const T* d, std::size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpyAsync(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost, nullptr),
            cudaSuccess);
  return h;
}

cudaStream_t new_stream() {
  cudaStream_t s = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  return s;
}

TEST(CudaEmu, WarpShufflesSharedMemoryAndBarriers) {
  std::vector<int> in(3 * 256);
  std::iota(in.begin(), in.end(), 1);
  int* d_in = device_array(in);
  int* d_out = device_array(std::vector<int>(3, 0));
  int* d_lanes = device_array(std::vector<int>(in.size(), 0));
  ASSERT_EQ(trainrt_emu::launch(block_sums, dim3(3), dim3(256), 0, nullptr, d_in, d_out, d_lanes),
            cudaSuccess);
  const std::vector<int> out = host_copy(d_out, 3);
  const std::vector<int> lanes = host_copy(d_lanes, in.size());
  for (int b = 0; b < 3; ++b) {
    EXPECT_EQ(out[b], std::accumulate(in.begin() + b * 256, in.begin() + (b + 1) * 256, 0));
  }
  for (std::size_t i = 0; i < in.size(); ++i) {
    const std::size_t w = i / 32 * 32;
    ASSERT_EQ(lanes[i], std::accumulate(in.begin() + w, in.begin() + w + 32, 0)) << i;
  }
  EXPECT_EQ(cudaFree(d_in), cudaSuccess);
  EXPECT_EQ(cudaFree(d_out), cudaSuccess);
  EXPECT_EQ(cudaFree(d_lanes), cudaSuccess);
}

TEST(CudaEmu, SyncthreadsOrOverConsecutiveBarriers) {
  std::vector<int> flags(256, 0);
  flags[77] = 1;
  int* d_flags = device_array(flags);
  int* d_out = device_array(std::vector<int>(256, -1));
  ASSERT_EQ(trainrt_emu::launch(any_of, dim3(1), dim3(256), 0, nullptr, d_flags, d_out),
            cudaSuccess);
  for (int v : host_copy(d_out, 256)) EXPECT_EQ(v, 110);
  EXPECT_EQ(cudaFree(d_flags), cudaSuccess);
  EXPECT_EQ(cudaFree(d_out), cudaSuccess);
}

TEST(CudaEmu, BadLaunchConfigurations) {
  EXPECT_EQ(trainrt_emu::launch(split_warp, dim3(1), dim3(1025), 0, nullptr),
            cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(trainrt_emu::launch(split_warp, dim3(0), dim3(32), 0, nullptr),
            cudaErrorInvalidConfiguration);
  (void)cudaGetLastError();
}

TEST(CudaEmu, BarrierDivergenceFailsTheLaunchAndEveryLaterCall) {
  EXPECT_EQ(trainrt_emu::launch(split_warp, dim3(1), dim3(64), 0, nullptr), cudaErrorLaunchFailure);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorLaunchFailure);  // sticky, as after a kernel fault
  EXPECT_EQ(p, nullptr);
  trainrt_emu::clear_fault_for_tests();
  EXPECT_EQ(trainrt_emu::launch(shuffle_after_exit, dim3(1), dim3(32), 0, nullptr),
            cudaErrorLaunchFailure);
  trainrt_emu::clear_fault_for_tests();
  (void)cudaGetLastError();
}

TEST(CudaEmu, CopiesAreCheckedAgainstLiveAllocations) {
  float* d = device_array(std::vector<float>(4, 0.0f));
  std::vector<float> h(5);
  EXPECT_EQ(cudaMemcpyAsync(h.data(), d, 5 * sizeof(float), cudaMemcpyDeviceToHost, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemsetAsync(d + 1, 0, 4 * sizeof(float), nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFreeAsync(d, nullptr), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(h.data(), d, sizeof(float), cudaMemcpyDeviceToHost, nullptr),
            cudaErrorInvalidValue);                             // freed
  EXPECT_EQ(cudaFreeAsync(d, nullptr), cudaErrorInvalidValue);  // twice
  (void)cudaGetLastError();
}

TEST(CudaEmu, ACaptureRecordsAndAGraphReplays) {
  cudaStream_t s = new_stream();
  float* x = device_array(std::vector<float>(1000, 0.0f));
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), sizeof(float)), cudaSuccess);
  *pinned = 5.0f;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
  EXPECT_EQ(st, cudaStreamCaptureStatusActive);
  ASSERT_EQ(cudaMemcpyAsync(x, pinned, sizeof(float), cudaMemcpyHostToDevice, s), cudaSuccess);
  ASSERT_EQ(trainrt_emu::launch(add_one, dim3(2), dim3(128), 0, s, x, 1000), cudaSuccess);
  // Memory allocated and freed inside the capture stays valid for the replays.
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  cudaMemPool_t pool = nullptr;
  ASSERT_EQ(cudaMemPoolCreate(&pool, &props), cudaSuccess);
  void* tmp = nullptr;
  ASSERT_EQ(cudaMallocFromPoolAsync(&tmp, 1000 * sizeof(float), pool, s), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(tmp, x, 1000 * sizeof(float), cudaMemcpyDeviceToDevice, s),
            cudaSuccess);
  ASSERT_EQ(trainrt_emu::launch(add_one, dim3(1), dim3(64), 0, s, static_cast<float*>(tmp), 1000),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(x, tmp, 1000 * sizeof(float), cudaMemcpyDeviceToDevice, s),
            cudaSuccess);
  ASSERT_EQ(cudaFreeAsync(tmp, s), cudaSuccess);
  EXPECT_EQ(x[0], 0.0f);  // recorded, not run (device memory is host memory here)
  cudaGraph_t g = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiateWithFlags(&exec, g, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(g), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  std::vector<float> want(1000, 2.0f);
  want[0] = 7.0f;  // 5 + 1 + 1
  EXPECT_EQ(host_copy(x, 1000), want);
  *pinned = 9.0f;  // a pinned source is read when the replay reaches the copy
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  want.assign(1000, 4.0f);
  want[0] = 11.0f;
  EXPECT_EQ(host_copy(x, 1000), want);
  ASSERT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaFree(x), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  EXPECT_EQ(cudaMemPoolDestroy(pool), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(CudaEmu, UnsafeCallsInvalidateACapture) {
  cudaStream_t s = new_stream();
  float* x = device_array(std::vector<float>(4, 0.0f));
  std::vector<float> pageable(4, 1.0f);
  const auto expect_invalidated = [&](auto&& unsafe_call) {
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_EQ(unsafe_call(), cudaErrorStreamCaptureUnsupported);
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
    EXPECT_EQ(st, cudaStreamCaptureStatusInvalidated);
    EXPECT_EQ(trainrt_emu::launch(add_one, dim3(1), dim3(32), 0, s, x, 4),
              cudaErrorStreamCaptureInvalidated);
    cudaGraph_t g = reinterpret_cast<cudaGraph_t>(1);
    EXPECT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(g, nullptr);
    ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
    EXPECT_EQ(st, cudaStreamCaptureStatusNone);
    (void)cudaGetLastError();
  };
  expect_invalidated([&] {
    return cudaMemcpyAsync(x, pageable.data(), 4 * sizeof(float), cudaMemcpyHostToDevice, s);
  });
  expect_invalidated([&] { return cudaStreamSynchronize(s); });
  expect_invalidated([&] {
    void* p = nullptr;
    return cudaMalloc(&p, 16);
  });
  expect_invalidated([&] { return cudaFreeAsync(x, s); });  // allocated before the capture
  EXPECT_EQ(host_copy(x, 4), std::vector<float>(4, 0.0f));  // nothing ran, x still allocated
  EXPECT_EQ(cudaFree(x), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

}  // namespace
