// CudaGraph: the graph_* slots of the device's backend (only the CUDA module has them).
#include "trainrt/graph.hpp"

#include <utility>

#include "internal.hpp"

namespace trainrt {

namespace {

const trainrt_backend_v1& graph_backend(Device device, const char* op) {
  const trainrt_backend_v1& api = detail::backend_for(device);
  if (api.graph_begin == nullptr || api.graph_end == nullptr || api.graph_launch == nullptr ||
      api.graph_destroy == nullptr) {
    detail::fail("CudaGraph.{}: the {} backend has no graphs (CUDA graphs need a CUDA device)", op,
                 device.str());
  }
  return api;
}

}  // namespace

CudaGraph::~CudaGraph() { release(); }

void CudaGraph::release() noexcept {
  try {
    if (capturing_) capture_end();
  } catch (...) {
  }
  capturing_ = false;
  reset();
}

CudaGraph::CudaGraph(CudaGraph&& o) noexcept
    : device_(o.device_),
      graph_(std::exchange(o.graph_, nullptr)),
      capturing_(std::exchange(o.capturing_, false)) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& o) noexcept {
  if (this != &o) {
    release();
    device_ = o.device_;
    graph_ = std::exchange(o.graph_, nullptr);
    capturing_ = std::exchange(o.capturing_, false);
  }
  return *this;
}

void CudaGraph::capture_begin(Device device) {
  if (capturing_) detail::fail("CudaGraph.capture_begin: this graph is capturing already");
  const trainrt_backend_v1& api = graph_backend(device, "capture_begin");
  // An upload of another thread (a DataLoader's prefetch) in flight ends first; later ones
  // see the capture and leave their copies to the thread that uses the batch.
  const auto uploads = detail::block_uploads();
  detail::capture_started(device);
  const int rc = api.graph_begin(device.index());
  if (rc != 0) detail::capture_stopped(device);
  detail::check_backend(api, rc, "CudaGraph.capture_begin");
  device_ = device;
  capturing_ = true;
}

void CudaGraph::capture_end() {
  if (!capturing_) detail::fail("CudaGraph.capture_end: capture_begin was not called");
  const trainrt_backend_v1& api = graph_backend(device_, "capture_end");
  capturing_ = false;
  reset();  // the old graph goes either way
  void* g = nullptr;
  const int rc = api.graph_end(device_.index(), &g);
  detail::capture_stopped(device_);  // frees what died during the capture
  detail::check_backend(api, rc, "CudaGraph.capture_end");
  graph_ = g;
}

void CudaGraph::replay() {
  if (capturing_) detail::fail("CudaGraph.replay: the graph is still being captured");
  if (graph_ == nullptr) detail::fail("CudaGraph.replay: nothing was captured");
  const trainrt_backend_v1& api = graph_backend(device_, "replay");
  detail::check_backend(api, api.graph_launch(device_.index(), graph_), "CudaGraph.replay");
}

void CudaGraph::reset() noexcept {
  if (graph_ == nullptr) return;
  const trainrt_backend_v1& api = detail::backend_for(device_);
  if (api.graph_destroy != nullptr) api.graph_destroy(device_.index(), graph_);
  graph_ = nullptr;
}

}  // namespace trainrt
