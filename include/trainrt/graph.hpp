// CUDA graphs: record the work a piece of code enqueues on a CUDA device once, replay it
// with one launch (torch.cuda.CUDAGraph's capture_begin / capture_end / replay).
//
//   opt.set_capturable(true);
//   step_once();                      // warm-up: state, step counts, blocks are made
//   trainrt::CudaGraph graph;
//   graph.capture_begin(dev);
//   step_once();                      // recorded, not run
//   graph.capture_end();
//   for (...) { refill the grads in place; graph.replay(); }
//
// A replay reads and writes the same memory as the captured work: the optimizer and the
// tensors used in it must stay alive and keep their storage (copy new data into them, never replace
// them; so no zero_grad() with set_to_none, which drops the grads: zero_grad(false) or copy_ into
// them). Work that copies from or to host memory, or waits for the device, cannot be captured; the
// optimizer step of a capturable optimizer (Optimizer::set_capturable) is made so that it can be.
// A tensor allocated before the capture whose last handle dies during it is freed when the
// capture ends, not inside it (which would fail it); a graph must not read such a tensor at
// replay.
// Only the CUDA backend has graphs: on the CPU every call throws trainrt::Error.
#pragma once

#include "trainrt/device.hpp"
#include "trainrt/export.hpp"

namespace trainrt {

class TRAINRT_API CudaGraph {
 public:
  CudaGraph() = default;
  /// Ends a capture still running (the graph is dropped) and frees the graph.
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  CudaGraph(CudaGraph&& o) noexcept;
  CudaGraph& operator=(CudaGraph&& o) noexcept;

  /// Starts capturing the work enqueued on `device`'s stream by this thread. Throws if the
  /// device has no graphs (the CPU), if this graph is capturing already, or if a capture of
  /// the device is running. A graph captured before is replaced by the new one at capture_end.
  void capture_begin(Device device);
  /// Ends the capture and instantiates the graph. Throws (and leaves no graph) if something
  /// in the capture could not be captured.
  void capture_end();
  /// Enqueues one replay on the device's stream (asynchronous, like the work it recorded).
  void replay();
  /// Frees the graph (a no-op without one).
  void reset() noexcept;

  bool captured() const { return graph_ != nullptr; }
  bool capturing() const { return capturing_; }
  Device device() const { return device_; }

 private:
  void release() noexcept;
  Device device_;
  void* graph_ = nullptr;
  bool capturing_ = false;
};

}  // namespace trainrt
