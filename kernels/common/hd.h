// TRAINRT_HD marks the math written once for both backends: __host__ __device__ under nvcc,
// plain inline under the host compiler. TRAINRT_KNS is the namespace the kernel math lives
// in; CPU kernels built for several instruction sets give each build its own namespace so
// no inline function compiled for AVX-512 can be picked up by baseline code.
#pragma once

#if defined(__CUDACC__)
#define TRAINRT_HD __host__ __device__ __forceinline__
#else
#define TRAINRT_HD inline __attribute__((always_inline))
#endif

#ifndef TRAINRT_KNS
#define TRAINRT_KNS kern
#endif
