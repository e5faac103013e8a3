// The CUDA emulator's runtime side: the CUDA runtime and cuBLAS calls that the CUDA module
// (kernels/cuda) makes, implemented on the CPU, so that the module's own sources, compiled as
// C++ with cuda_emu.h, run the test suites' /cuda cases in CI (ctest cuda_emulator_*).
//
// What it models:
// - Devices (TRAINRT_CUDA_EMU_DEVICES, default 1) with 4 SMs and 2 resident blocks per SM, so
//   the capped grids of the module take their grid-stride paths. Device memory is host memory
//   from one allocation per cudaMalloc / cudaMallocFromPoolAsync of exactly the requested size
//   (256-byte aligned), so AddressSanitizer sees a kernel's out-of-bounds access. Copies and
//   memsets are checked against the live device allocations: an access past an allocation or
//   to freed memory is cudaErrorInvalidValue.
// - Kernels: the blocks of a grid run one after another, the threads of a block as fibers
//   (cuda_emu.h). A kernel that deadlocks at a barrier or shuffles with an exited lane fails
//   the launch, and, as after a real kernel fault, every later call fails too.
// - Streams run their work at once, in call order. Stream capture (thread-local mode) records
//   kernel launches, device-to-device and pinned-host copies and memsets, with the kernel
//   arguments copied at the launch as a real capture bakes them; a graph launch replays them.
//   In the capturing thread a synchronize, a synchronous allocation, a copy from or to pageable
//   host memory, or a stream-ordered free of memory allocated before the capture fails with
//   cudaErrorStreamCaptureUnsupported and invalidates the capture, so cudaStreamEndCapture
//   returns cudaErrorStreamCaptureInvalidated. Memory allocated during a capture stays valid
//   for the graph's replays.
// - cuBLAS: cublasGemmEx as a plain loop (f32 or f64 accumulation).
//
// What it cannot check: anything that depends on threads really running at once (data races
// between threads or blocks, memory ordering, missing __syncthreads between a write and a read
// of different threads are only caught when the fiber order exposes them), warp-synchronous
// code without a sync, the device's own float rounding (host libm vs device expf / logf;
// FMA contraction is off here), performance, occupancy, and the real driver's behaviour.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#define TRAINRT_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TRAINRT_EMU_ASAN 1
#endif
#endif
#if defined(TRAINRT_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace trainrt_emu {
struct Capture;
struct MemBlock;
}  // namespace trainrt_emu

// Opaque handle types of the CUDA headers, defined here.
struct CUstream_st {
  int device = 0;
  trainrt_emu::Capture* capture = nullptr;  // non-null while a capture is active or invalidated
};
struct CUmemPoolHandle_st {
  int device = 0;
};
struct cublasContext {
  cudaStream_t stream = nullptr;
};
struct cublasLtContext {};

namespace trainrt_emu {

/// One device allocation; freed when neither the registry (not yet freed by the program) nor
/// a graph captured while it was allocated holds it.
struct MemBlock {
  void* p = nullptr;
  std::size_t bytes = 0;
  int device = 0;
  ~MemBlock() { std::free(p); }
};

struct Capture {
  std::thread::id thread;
  bool invalidated = false;
  std::string why;
  std::vector<std::function<void()>> ops;
  std::vector<std::shared_ptr<MemBlock>> memory;  // allocated during the capture
};

namespace {

/// What trainrt_fake_counters reports (the layout of tests/fake_recording_backend.cpp's):
/// host-to-device and device-to-host copies, operations recorded into captures and replayed
/// from graphs, and stream-ordered frees.
struct Counters {
  std::atomic<std::int64_t> h2d{0}, d2h{0}, recorded{0}, replayed{0}, frees{0};
};
Counters g_count;

constexpr int kSmCount = 4;
constexpr int kBlocksPerSm = 2;
constexpr std::size_t kDeviceMemory = std::size_t{16} << 30;  // reported per device
constexpr int kMaxThreads = 1024;

// ---------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------
thread_local cudaError_t t_last_error = cudaSuccess;
std::atomic<bool> g_faulted{false};  // a kernel failed: the "context" is unusable

cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

// ---------------------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------------------
struct Registry {
  std::mutex mu;
  std::map<std::uintptr_t, std::shared_ptr<MemBlock>> device;  // live device allocations
  std::map<std::uintptr_t, std::size_t> pinned;                // cudaMallocHost
  std::vector<std::size_t> used;                               // bytes per device
  std::vector<CUstream_st*> legacy;                            // default stream per device
};

Registry& reg() {
  static Registry* r = new Registry;  // leaked: usable during static destruction
  return *r;
}

int device_total() {
  static const int n = [] {
    const char* s = std::getenv("TRAINRT_CUDA_EMU_DEVICES");
    const int v = s != nullptr ? std::atoi(s) : 1;
    return v < 0 ? 0 : v;
  }();
  return n;
}

thread_local int t_device = 0;
thread_local Capture* t_capture = nullptr;  // the capture this thread began (thread-local mode)

/// The live device allocation holding [p, p + bytes), or null.
std::shared_ptr<MemBlock> find_device_locked(const void* p, std::size_t bytes) {
  Registry& r = reg();
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto it = r.device.upper_bound(a);
  if (it == r.device.begin()) return nullptr;
  --it;
  const MemBlock& b = *it->second;
  if (a < it->first || a + bytes > it->first + b.bytes) return nullptr;
  return it->second;
}

bool is_device(const void* p, std::size_t bytes) {
  std::lock_guard<std::mutex> lock(reg().mu);
  return find_device_locked(p, bytes) != nullptr;
}

bool is_pinned(const void* p, std::size_t bytes) {
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto it = r.pinned.upper_bound(a);
  if (it == r.pinned.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second;
}

cudaError_t allocate(void** out, std::size_t bytes, Capture* capture) {
  if (out == nullptr) return ret(cudaErrorInvalidValue);
  *out = nullptr;
  if (bytes == 0) return cudaSuccess;
  Registry& r = reg();
  {
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.used.size() <= static_cast<std::size_t>(t_device)) r.used.resize(t_device + 1, 0);
    if (bytes > kDeviceMemory - r.used[t_device]) return ret(cudaErrorMemoryAllocation);
  }
  auto b = std::make_shared<MemBlock>();
  if (posix_memalign(&b->p, 256, bytes) != 0) {
    b->p = nullptr;
    return ret(cudaErrorMemoryAllocation);
  }
  b->bytes = bytes;
  b->device = t_device;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    r.device[reinterpret_cast<std::uintptr_t>(b->p)] = b;
    r.used[t_device] += bytes;
  }
  if (capture != nullptr) capture->memory.push_back(b);
  *out = b->p;
  return cudaSuccess;
}

/// Drops the registry's reference (the memory goes once no graph holds it either).
cudaError_t release(void* p, Capture* capture) {
  if (p == nullptr) return cudaSuccess;
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.device.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == r.device.end()) return ret(cudaErrorInvalidValue);
  if (capture != nullptr) {
    const bool mine = std::any_of(capture->memory.begin(), capture->memory.end(),
                                  [&](const std::shared_ptr<MemBlock>& b) { return b->p == p; });
    if (!mine) return cudaErrorStreamCaptureUnsupported;  // the caller invalidates
  }
  r.used[it->second->device] -= it->second->bytes;
  r.device.erase(it);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------
// streams and capture
// ---------------------------------------------------------------------------------------
CUstream_st* resolve(cudaStream_t s) {
  if (s != nullptr) return s;
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.legacy.size() <= static_cast<std::size_t>(t_device)) r.legacy.resize(t_device + 1, nullptr);
  if (r.legacy[t_device] == nullptr) r.legacy[t_device] = new CUstream_st{t_device, nullptr};
  return r.legacy[t_device];
}

void invalidate(Capture* c, const char* why) {
  if (c != nullptr && !c->invalidated) {
    c->invalidated = true;
    c->why = why;
    c->ops.clear();
  }
}

/// An unsafe call in a thread that is capturing: invalidates its capture.
bool refused_in_capture(const char* what) {
  if (t_capture == nullptr) return false;
  invalidate(t_capture, what);
  return true;
}

/// Records `op` into the stream's capture or runs it now.
cudaError_t enqueue(CUstream_st* s, std::function<void()> op) {
  if (s->capture != nullptr) {
    if (s->capture->invalidated) return ret(cudaErrorStreamCaptureInvalidated);
    s->capture->ops.push_back(std::move(op));
    ++g_count.recorded;
    return cudaSuccess;
  }
  op();
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------
// fibers
// ---------------------------------------------------------------------------------------
enum class State { kReady, kBlockWait, kWarpWait, kDone };

constexpr std::size_t kStackBytes = std::size_t{512} << 10;

struct Context;

struct Fiber {
  std::shared_ptr<Context> ctx;
  State state = State::kReady;
  uint3 tid{};
  char* stack = nullptr;
  void* fake_stack = nullptr;
  unsigned mask = 0;  // of the shuffle it waits in
};

struct BlockRun {
  std::vector<Fiber>* fibers = nullptr;
  int n = 0;
  int cur = 0;
  std::shared_ptr<Context> sched;
  uint3 bid{};
  dim3 bdim, gdim;
  const std::function<void()>* body = nullptr;
  int or_acc[2] = {0, 0};
  unsigned bar_gen = 0;
  std::vector<unsigned> warp_gen;
  std::vector<std::array<unsigned char, 16>> xbuf[2];
  std::string error;
  const void* sched_stack = nullptr;
  std::size_t sched_stack_size = 0;
  void* sched_fake = nullptr;
};

thread_local BlockRun* t_run = nullptr;

void fiber_entry();

/// Set when fibers were abandoned mid-kernel (a failed launch): their stacks must be cleared
/// whole before reuse.
thread_local bool t_stacks_dirty = false;

/// ASan: a fiber that ran to completion leaves only the frames of its last switch
/// (fiber_entry, to_scheduler) unreturned, at the top of its stack, with their redzones
/// poisoned; they are cleared before the stack is used again. Clearing whole stacks for every
/// block made the sanitized emulator 20x slower.
void unpoison_stack(char* stack, std::size_t bytes) {
#if defined(TRAINRT_EMU_ASAN)
  constexpr std::size_t kTop = std::size_t{64} << 10;
  const std::size_t n = t_stacks_dirty || bytes < kTop ? bytes : kTop;
  __asan_unpoison_memory_region(stack + bytes - n, n);
#else
  (void)stack;
  (void)bytes;
#endif
}

#if defined(__x86_64__)
// The fiber switch: swapcontext makes two signal-mask system calls per switch, which took most
// of the emulator's time. This saves the callee-saved registers and the SSE / x87 control
// words on the old stack, stores its stack pointer in *save and resumes the stack `to`.
extern "C" void trainrt_emu_switch(void** save, void* to);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".type trainrt_emu_switch,@function\n"
    "trainrt_emu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size trainrt_emu_switch, .-trainrt_emu_switch\n");

/// Where a new fiber's first switch returns to (entered with the alignment of a call).
extern "C" void trainrt_emu_fiber_start() { fiber_entry(); }

struct Context {
  void* sp = nullptr;
};

/// A stack that the first switch to it starts in trainrt_emu_fiber_start.
void make_context(Context& c, char* stack, std::size_t bytes) {
  unpoison_stack(stack, bytes);
  auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t{15};
  // w[8], the fake return address, lands at 8 mod 16, where a call leaves the stack pointer
  auto* w = reinterpret_cast<std::uint64_t*>(top - 88);
  unsigned mxcsr = 0;
  unsigned short fpcw = 0;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  __asm__ volatile("fnstcw %0" : "=m"(fpcw));
  w[0] = static_cast<std::uint64_t>(mxcsr) | (static_cast<std::uint64_t>(fpcw) << 32);
  for (int i = 1; i <= 6; ++i) w[i] = 0;  // r15 r14 r13 r12 rbx rbp
  w[7] = reinterpret_cast<std::uint64_t>(&trainrt_emu_fiber_start);
  w[8] = 0;  // the fake return address of trainrt_emu_fiber_start (it never returns)
  c.sp = w;
}

void switch_context(Context& from, Context& to) { trainrt_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};

void make_context(Context& c, char* stack, std::size_t bytes) {
  unpoison_stack(stack, bytes);
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fiber_entry, 0);
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

/// The fibers of this host thread, with their stacks, kept for the next block.
std::vector<Fiber>& fiber_pool() {
  thread_local std::vector<Fiber> pool;
  return pool;
}

void to_scheduler() {
  BlockRun& r = *t_run;
  Fiber& f = (*r.fibers)[r.cur];
#if defined(TRAINRT_EMU_ASAN)
  __sanitizer_start_switch_fiber(f.state == State::kDone ? nullptr : &f.fake_stack, r.sched_stack,
                                 r.sched_stack_size);
#endif
  switch_context(*f.ctx, *r.sched);
#if defined(TRAINRT_EMU_ASAN)
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

void fiber_entry() {
  BlockRun& r = *t_run;
#if defined(TRAINRT_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_stack, &r.sched_stack_size);
#endif
  try {
    (*r.body)();
  } catch (const std::exception& e) {
    if (r.error.empty()) r.error = std::string("exception in a kernel thread: ") + e.what();
  } catch (...) {
    if (r.error.empty()) r.error = "exception in a kernel thread";
  }
  (*t_run->fibers)[t_run->cur].state = State::kDone;
  to_scheduler();  // never returns
  std::abort();
}

void to_fiber(BlockRun& r, int i) {
  r.cur = i;
  Fiber& f = (*r.fibers)[i];
#if defined(TRAINRT_EMU_ASAN)
  __sanitizer_start_switch_fiber(&r.sched_fake, f.stack, kStackBytes);
#endif
  switch_context(*r.sched, *f.ctx);
#if defined(TRAINRT_EMU_ASAN)
  __sanitizer_finish_switch_fiber(r.sched_fake, nullptr, nullptr);
#endif
}

std::string coords(const BlockRun& r) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u) of a grid (%u,%u,%u) of (%u,%u,%u) threads",
                r.bid.x, r.bid.y, r.bid.z, r.gdim.x, r.gdim.y, r.gdim.z, r.bdim.x, r.bdim.y,
                r.bdim.z);
  return buf;
}

/// Runs one block to completion; returns false with r.error set when it fails.
bool run_block(BlockRun& r) {
  std::vector<Fiber>& pool = *r.fibers;
  for (int i = 0; i < r.n; ++i) {
    Fiber& f = pool[i];
    f.state = State::kReady;
    f.tid =
        uint3{static_cast<unsigned>(i) % r.bdim.x, static_cast<unsigned>(i) / r.bdim.x % r.bdim.y,
              static_cast<unsigned>(i) / (r.bdim.x * r.bdim.y)};
    make_context(*f.ctx, f.stack, kStackBytes);
  }
  const int warps = (r.n + 31) / 32;
  r.warp_gen.assign(warps, 0);
  for (auto& b : r.xbuf) b.assign(static_cast<std::size_t>(warps) * 32, {});
  r.or_acc[0] = r.or_acc[1] = 0;
  r.bar_gen = 0;
  for (;;) {
    for (int i = 0; i < r.n; ++i) {
      if (pool[i].state == State::kReady) to_fiber(r, i);
      if (!r.error.empty()) return false;
    }
    int done = 0, block_wait = 0;
    for (int i = 0; i < r.n; ++i) {
      done += pool[i].state == State::kDone;
      block_wait += pool[i].state == State::kBlockWait;
    }
    if (done == r.n) return true;
    bool released = false;
    for (int w = 0; w < warps; ++w) {
      const int lo = w * 32, hi = std::min(r.n, lo + 32);
      int waiting = 0, live = 0;
      unsigned mask = 0, exited = 0;
      for (int i = lo; i < hi; ++i) {
        if (pool[i].state == State::kDone) {
          exited |= 1u << (i - lo);
          continue;
        }
        ++live;
        if (pool[i].state == State::kWarpWait) {
          ++waiting;
          mask |= pool[i].mask;
        }
      }
      if (waiting == 0 || waiting != live) continue;
      if ((mask & exited) != 0) {
        char buf[128];
        std::snprintf(buf, sizeof buf,
                      "warp %d shuffles with mask 0x%08x, but lanes 0x%08x have exited", w, mask,
                      exited);
        r.error = std::string(buf) + " (" + coords(r) + ")";
        return false;
      }
      ++r.warp_gen[w];
      for (int i = lo; i < hi; ++i) {
        if (pool[i].state == State::kWarpWait) pool[i].state = State::kReady;
      }
      released = true;
    }
    if (!released && block_wait > 0 && block_wait == r.n - done) {
      ++r.bar_gen;
      r.or_acc[r.bar_gen & 1] = 0;
      for (int i = 0; i < r.n; ++i) {
        if (pool[i].state == State::kBlockWait) pool[i].state = State::kReady;
      }
      released = true;
    }
    if (!released) {
      r.error = "barrier divergence: " + std::to_string(block_wait) +
                " threads wait at __syncthreads and " + std::to_string(r.n - done - block_wait) +
                " at a warp shuffle that cannot complete (" + coords(r) + ")";
      return false;
    }
  }
}

bool run_grid(dim3 grid, dim3 block, const std::function<void()>& body, std::string& error) {
  std::vector<Fiber>& pool = fiber_pool();
  const int n = static_cast<int>(block.x * block.y * block.z);
  while (static_cast<int>(pool.size()) < n) {
    Fiber f;
    void* m = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      error = "cannot map a fiber stack";
      return false;
    }
    mprotect(m, 4096, PROT_NONE);  // guard page below the stack
    f.stack = static_cast<char*>(m) + 4096;
    f.ctx = std::make_shared<Context>();
    pool.push_back(f);
  }
  BlockRun r;
  r.sched = std::make_shared<Context>();
  r.fibers = &pool;
  r.n = n;
  r.bdim = block;
  r.gdim = grid;
  r.body = &body;
  BlockRun* const outer = t_run;
  t_run = &r;
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z) {
    for (unsigned y = 0; y < grid.y && ok; ++y) {
      for (unsigned x = 0; x < grid.x && ok; ++x) {
        r.bid = uint3{x, y, z};
        ok = run_block(r);
      }
    }
  }
  t_run = outer;
  if (!ok) error = r.error;
  t_stacks_dirty = !ok;  // the next block's stacks are cleared whole once
  return ok;
}

void fault(const std::string& what) {
  g_faulted.store(true);
  std::fprintf(stderr, "trainrt CUDA emulator: kernel failed: %s\n", what.c_str());
}

Fiber& current_fiber() { return (*t_run->fibers)[t_run->cur]; }

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}

}  // namespace

/// For the emulator's own tests: forgets a kernel failure (a real context stays broken).
void clear_fault_for_tests() { g_faulted.store(false); }

// ---------------------------------------------------------------------------------------
// kernel side (cuda_emu.h)
// ---------------------------------------------------------------------------------------
const uint3& thread_idx() { return current_fiber().tid; }
const uint3& block_idx() { return t_run->bid; }
const dim3& block_dim() { return t_run->bdim; }
const dim3& grid_dim() { return t_run->gdim; }

int lane_id() { return static_cast<int>(t_run->cur % 32); }

void syncthreads() {
  current_fiber().state = State::kBlockWait;
  to_scheduler();
}

int syncthreads_or(int predicate) {
  BlockRun& r = *t_run;
  const unsigned slot = r.bar_gen & 1;
  if (predicate != 0) r.or_acc[slot] = 1;
  syncthreads();
  return r.or_acc[slot];
}

void warp_exchange(unsigned mask, const void* in, void* out, std::size_t bytes, int src_lane) {
  BlockRun& r = *t_run;
  const int me = r.cur;
  const int w = me / 32;
  const unsigned slot = r.warp_gen[w] & 1;
  std::memcpy(r.xbuf[slot][me].data(), in, bytes);
  Fiber& f = current_fiber();
  f.mask = mask;
  f.state = State::kWarpWait;
  to_scheduler();
  const int src = w * 32 + src_lane;
  std::memcpy(out, src < r.n ? r.xbuf[slot][src].data() : r.xbuf[slot][me].data(), bytes);
}

cudaError_t launch_grid(dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
                        std::shared_ptr<std::function<void()>> body) {
  if (g_faulted.load()) return ret(cudaErrorLaunchFailure);
  const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535 || threads == 0 || threads > kMaxThreads || block.z > 64 ||
      shared_bytes > 48 * 1024) {
    return ret(cudaErrorInvalidConfiguration);
  }
  CUstream_st* s = resolve(stream);
  const cudaError_t e = enqueue(s, [grid, block, body] {
    std::string error;
    if (!run_grid(grid, block, *body, error)) fault(error);
  });
  if (e != cudaSuccess) return e;
  return g_faulted.load() ? ret(cudaErrorLaunchFailure) : cudaSuccess;
}

}  // namespace trainrt_emu

// ---------------------------------------------------------------------------------------
// the CUDA runtime API
// ---------------------------------------------------------------------------------------
using namespace trainrt_emu;

#define EMU_CHECK_CONTEXT()                                   \
  do {                                                        \
    if (g_faulted.load()) return ret(cudaErrorLaunchFailure); \
  } while (0)

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return t_last_error; }

const char* cudaGetErrorName(cudaError_t e) { return error_name(e); }

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device)";
    case cudaErrorLaunchFailure: return "a kernel failed in the emulator (see stderr)";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    default: return error_name(e);
  }
}

cudaError_t cudaDriverGetVersion(int* v) {
  if (v == nullptr) return ret(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
  if (n == nullptr) return ret(cudaErrorInvalidValue);
  *n = device_total();
  return *n > 0 ? cudaSuccess : ret(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= device_total()) return ret(cudaErrorInvalidDevice);
  t_device = d;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (p == nullptr) return ret(cudaErrorInvalidValue);
  if (d < 0 || d >= device_total()) return ret(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "trainrt CUDA emulator (CPU)");
  p->major = 9;
  p->minor = 0;
  p->totalGlobalMem = kDeviceMemory;
  p->multiProcessorCount = kSmCount;
  p->maxThreadsPerBlock = kMaxThreads;
  p->warpSize = 32;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (v == nullptr) return ret(cudaErrorInvalidValue);
  if (d < 0 || d >= device_total()) return ret(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = kSmCount; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *v = kMaxThreads; return cudaSuccess;
    case cudaDevAttrWarpSize: *v = 32; return cudaSuccess;
    default: return ret(cudaErrorNotSupported);
  }
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* kernel, int block,
                                                          size_t) {
  if (n == nullptr || kernel == nullptr || block <= 0 || block > kMaxThreads) {
    return ret(cudaErrorInvalidValue);
  }
  *n = kBlocksPerSm;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  if (s == nullptr) return ret(cudaErrorInvalidValue);
  *s = new CUstream_st{t_device, nullptr};
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (s == nullptr || s->capture != nullptr) return ret(cudaErrorInvalidValue);
  delete s;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) {
  EMU_CHECK_CONTEXT();
  if (refused_in_capture("cudaStreamSynchronize")) return ret(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}

cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps* props) {
  if (pool == nullptr || props == nullptr) return ret(cudaErrorInvalidValue);
  *pool = new CUmemPoolHandle_st{props->location.id};
  return cudaSuccess;
}

cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
  if (pool == nullptr) return ret(cudaErrorInvalidValue);
  delete pool;
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr, void* value) {
  if (pool == nullptr || value == nullptr) return ret(cudaErrorInvalidValue);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  EMU_CHECK_CONTEXT();
  if (refused_in_capture("cudaMalloc")) return ret(cudaErrorStreamCaptureUnsupported);
  return allocate(p, bytes, nullptr);
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  if (p == nullptr) return ret(cudaErrorInvalidValue);
  if (refused_in_capture("cudaMallocHost")) return ret(cudaErrorStreamCaptureUnsupported);
  *p = nullptr;
  if (posix_memalign(p, 256, bytes == 0 ? 1 : bytes) != 0) return ret(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(reg().mu);
  reg().pinned[reinterpret_cast<std::uintptr_t>(*p)] = bytes;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  EMU_CHECK_CONTEXT();
  if (refused_in_capture("cudaFree")) return ret(cudaErrorStreamCaptureUnsupported);
  return release(p, nullptr);
}

cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(reg().mu);
    if (reg().pinned.erase(reinterpret_cast<std::uintptr_t>(p)) == 0) {
      return ret(cudaErrorInvalidValue);
    }
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMallocFromPoolAsync(void** p, size_t bytes, cudaMemPool_t pool,
                                    cudaStream_t stream) {
  EMU_CHECK_CONTEXT();
  if (pool == nullptr) return ret(cudaErrorInvalidValue);
  CUstream_st* s = resolve(stream);
  if (s->capture != nullptr && s->capture->invalidated) {
    return ret(cudaErrorStreamCaptureInvalidated);
  }
  return allocate(p, bytes, s->capture);
}

cudaError_t cudaFreeAsync(void* p, cudaStream_t stream) {
  EMU_CHECK_CONTEXT();
  CUstream_st* s = resolve(stream);
  if (s->capture != nullptr && s->capture->invalidated) {
    return ret(cudaErrorStreamCaptureInvalidated);
  }
  const cudaError_t e = release(p, s->capture);
  if (e == cudaErrorStreamCaptureUnsupported) {
    invalidate(s->capture, "cudaFreeAsync of memory allocated before the capture");
    return ret(e);
  }
  if (e == cudaSuccess && p != nullptr) ++g_count.frees;
  return e;
}

cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  if (free_b == nullptr || total_b == nullptr) return ret(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(reg().mu);
  const std::size_t used =
      reg().used.size() > static_cast<std::size_t>(t_device) ? reg().used[t_device] : 0;
  *total_b = kDeviceMemory;
  *free_b = kDeviceMemory - used;
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  EMU_CHECK_CONTEXT();
  if (bytes == 0) return cudaSuccess;
  if (!is_device(dst, bytes)) return ret(cudaErrorInvalidValue);
  return enqueue(resolve(stream), [=] { std::memset(dst, value, bytes); });
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  EMU_CHECK_CONTEXT();
  if (bytes == 0) return cudaSuccess;
  if (kind == cudaMemcpyDefault) {
    const bool d_dev = is_device(dst, bytes), s_dev = is_device(src, bytes);
    kind = d_dev ? (s_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                 : (s_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_dev && !is_device(dst, bytes)) || (src_dev && !is_device(src, bytes))) {
    return ret(cudaErrorInvalidValue);
  }
  CUstream_st* s = resolve(stream);
  if (s->capture != nullptr && !s->capture->invalidated) {
    const void* host = !dst_dev ? dst : (!src_dev ? src : nullptr);
    if (host != nullptr && !is_pinned(host, bytes)) {
      invalidate(s->capture, "cudaMemcpyAsync with pageable host memory");
      return ret(cudaErrorStreamCaptureUnsupported);
    }
  }
  const cudaError_t e = enqueue(s, [=] { std::memcpy(dst, src, bytes); });
  if (e == cudaSuccess && dst_dev != src_dev) ++(dst_dev ? g_count.h2d : g_count.d2h);
  return e;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  EMU_CHECK_CONTEXT();
  if (stream == nullptr) return ret(cudaErrorStreamCaptureUnsupported);  // legacy stream
  if (stream->capture != nullptr || t_capture != nullptr) return ret(cudaErrorIllegalState);
  auto* c = new Capture;
  c->thread = std::this_thread::get_id();
  stream->capture = c;
  t_capture = c;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* st) {
  if (st == nullptr) return ret(cudaErrorInvalidValue);
  CUstream_st* s = resolve(stream);
  *st = s->capture == nullptr     ? cudaStreamCaptureStatusNone
        : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                  : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

}  // extern "C"

/// A captured graph and its instantiation: the recorded operations, and the memory allocated
/// during the capture, kept for the replays.
struct GraphBody {
  std::vector<std::function<void()>> ops;
  std::vector<std::shared_ptr<MemBlock>> memory;
};
struct CUgraph_st : GraphBody {};
struct CUgraphExec_st : GraphBody {};

extern "C" {

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (graph == nullptr) return ret(cudaErrorInvalidValue);
  *graph = nullptr;
  if (stream == nullptr || stream->capture == nullptr) return ret(cudaErrorIllegalState);
  Capture* c = stream->capture;
  if (c->thread != std::this_thread::get_id()) return ret(cudaErrorStreamCaptureWrongThread);
  stream->capture = nullptr;
  t_capture = nullptr;
  std::unique_ptr<Capture> owned(c);
  if (c->invalidated) {
    std::fprintf(stderr, "trainrt CUDA emulator: the capture was invalidated by %s\n",
                 c->why.c_str());
    return ret(cudaErrorStreamCaptureInvalidated);
  }
  *graph = new CUgraph_st{{std::move(c->ops), std::move(c->memory)}};
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph,
                                          unsigned long long) {
  if (exec == nullptr || graph == nullptr) return ret(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{{graph->ops, graph->memory}};
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (graph == nullptr) return ret(cudaErrorInvalidValue);
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (exec == nullptr) return ret(cudaErrorInvalidValue);
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  EMU_CHECK_CONTEXT();
  if (exec == nullptr) return ret(cudaErrorInvalidValue);
  CUstream_st* s = resolve(stream);
  const cudaError_t e = enqueue(s, [exec] {
    for (const auto& op : exec->ops) {
      op();
      ++g_count.replayed;
    }
  });
  if (e != cudaSuccess) return e;
  return g_faulted.load() ? ret(cudaErrorLaunchFailure) : cudaSuccess;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------
// cuBLAS
// ---------------------------------------------------------------------------------------
namespace {

double load_elem(const void* p, cudaDataType t, std::size_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return 0.0;
  }
}

void store_elem(void* p, cudaDataType t, std::size_t i, double v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; break;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(static_cast<float>(v)); break;
    case CUDA_R_16BF:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(static_cast<float>(v));
      break;
    default: break;
  }
}

std::size_t elem_size(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    default: return 0;
  }
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  if (h == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  if (h == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *h = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}

/// Column-major C = alpha op(A) op(B) + beta C (C not read when beta is 0), accumulated in
/// the compute type (f32 or f64); A, B, C must lie in device allocations.
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void* alpha, const void* A, cudaDataType at,
                            int lda, const void* B, cudaDataType bt, int ldb, const void* beta,
                            void* C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (g_faulted.load()) return CUBLAS_STATUS_EXECUTION_FAILED;
  const bool f64 = compute == CUBLAS_COMPUTE_64F;
  if (!f64 && compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (elem_size(at) == 0 || elem_size(bt) == 0 || elem_size(ct) == 0) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const bool a_t = ta != CUBLAS_OP_N, b_t = tb != CUBLAS_OP_N;
  const int a_rows = a_t ? k : m, b_rows = b_t ? n : k;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) ||
      ldc < std::max(1, m) || alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const double al = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double be = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  const auto extent = [](int rows, int cols, int ld, cudaDataType t) {
    return (static_cast<std::size_t>(cols - 1) * ld + rows) * elem_size(t);
  };
  if (k > 0 && (!is_device(A, extent(a_rows, a_t ? m : k, lda, at)) ||
                !is_device(B, extent(b_rows, b_t ? k : n, ldb, bt)))) {
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  if (!is_device(C, extent(m, n, ldc, ct))) return CUBLAS_STATUS_EXECUTION_FAILED;
  auto run = [=] {
    for (int j = 0; j < n; ++j) {
      for (int i = 0; i < m; ++i) {
        double acc64 = 0.0;
        float acc32 = 0.0f;
        for (int l = 0; l < k; ++l) {
          const std::size_t ai =
              a_t ? static_cast<std::size_t>(i) * lda + l : static_cast<std::size_t>(l) * lda + i;
          const std::size_t bi =
              b_t ? static_cast<std::size_t>(l) * ldb + j : static_cast<std::size_t>(j) * ldb + l;
          const double x = load_elem(A, at, ai), y = load_elem(B, bt, bi);
          if (f64) {
            acc64 += x * y;
          } else {
            acc32 += static_cast<float>(x) * static_cast<float>(y);
          }
        }
        const std::size_t ci = static_cast<std::size_t>(j) * ldc + i;
        double v;
        if (f64) {
          v = al * acc64 + (be == 0.0 ? 0.0 : be * load_elem(C, ct, ci));
        } else {
          const float a32 = static_cast<float>(al), b32 = static_cast<float>(be);
          v = a32 * acc32 + (b32 == 0.0f ? 0.0f : b32 * static_cast<float>(load_elem(C, ct, ci)));
        }
        store_elem(C, ct, ci, v);
      }
    }
  };
  return enqueue(resolve(h->stream), run) == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                                         : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------
// the tests' counters (test_graph.cpp finds this with dlopen(RTLD_NOLOAD) on the module)
// ---------------------------------------------------------------------------------------
extern "C" {
struct trainrt_fake_counters_v1 {
  std::int64_t h2d, d2h, recorded, replayed, frees;
};

__attribute__((visibility("default"))) trainrt_fake_counters_v1 trainrt_fake_counters(int reset) {
  const trainrt_fake_counters_v1 c{g_count.h2d.load(), g_count.d2h.load(), g_count.recorded.load(),
                                   g_count.replayed.load(), g_count.frees.load()};
  if (reset != 0) {
    g_count.h2d = 0;
    g_count.d2h = 0;
    g_count.recorded = 0;
    g_count.replayed = 0;
    g_count.frees = 0;
  }
  return c;
}
}  // extern "C"
