// The slot table of the fake CUDA backend modules (fake_backend_module.cpp,
// fake_recording_backend.cpp): each slot points at the module's function fake_<slot>.
#pragma once

#include "backend_api.h"

#define TRAINRT_FAKE_BACKEND_SLOTS(t)                  \
  do {                                                 \
    (t).last_error = &fake_last_error;                 \
    (t).device_count = &fake_device_count;             \
    (t).device_name = &fake_device_name;               \
    (t).supports = &fake_supports;                     \
    (t).alloc = &fake_alloc;                           \
    (t).free = &fake_free;                             \
    (t).copy = &fake_copy;                             \
    (t).memset_zero = &fake_memset_zero;               \
    (t).synchronize = &fake_synchronize;               \
    (t).cast = &fake_cast;                             \
    (t).softmax_forward = &fake_softmax_forward;       \
    (t).softmax_backward = &fake_softmax_backward;     \
    (t).cross_entropy = &fake_cross_entropy;           \
    (t).pointwise_loss = &fake_pointwise_loss;         \
    (t).optimizer_step = &fake_optimizer_step;         \
    (t).multi_tensor_norm = &fake_multi_tensor_norm;   \
    (t).multi_tensor_scale = &fake_multi_tensor_scale; \
    (t).amp = &fake_amp;                               \
    (t).gemm = &fake_gemm;                             \
    (t).nn_pointwise = &fake_nn_pointwise;             \
    (t).bias = &fake_bias;                             \
    (t).graph_begin = &fake_graph_begin;               \
    (t).graph_end = &fake_graph_end;                   \
    (t).graph_launch = &fake_graph_launch;             \
    (t).graph_destroy = &fake_graph_destroy;           \
    (t).graph_capturing = &fake_graph_capturing;       \
  } while (0)
