// OpenMP CPU kernels of the optimizer family: the fused optimizer step, the multi-tensor norm /
// non-finite check, the multi-tensor scale / clamp, and the loss-scale update.
//
// Contract. Every call flattens its tensor list into fixed-size chunks (kChunk elements, a
// chunk never spans two tensors) and runs one `omp parallel for schedule(static)` over that
// list, so 200 small tensors split across threads as well as one large one. Inside a chunk the
// loop is `omp simd` over contiguous f32 arrays, with the per-element math of
// kernels/common/optim.h inlined:
//   - optimizer step: one pass per element over param, grad and state (read p, g, state; write
//     p, state; plus the low-precision model copy in the same pass). LAMB needs per-tensor
//     norms of p and of the update u before it can apply anything, so it makes two passes and
//     recomputes u in the second from the stored moments (the grads are never overwritten);
//   - norm: one read pass; each chunk writes its partial (sum |x|^p in double, max |x|, a
//     non-finite flag) into its own slot; the partials are then reduced in chunk order by one
//     thread. No atomics: the result is the same for every thread count, run after run;
//   - nothing allocates per element; the chunk list and partials are one malloc per call.
// Skipping: when the grad scalars block says found_inf, the step returns before touching
// anything.
//
// Compiled once per ISA level (see cpu_dispatch.cpp): no C++ library types here.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../common/half.h"
#include "../common/optim.h"
#include "cpu_kernels.h"

namespace trainrt {
namespace TRAINRT_KNS {
namespace {

constexpr int64_t kChunk = 1 << 14;  // 16K elements: 64 KiB per f32 array

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t len;
};

/// The flattened chunk list of a tensor list (malloc'd; NULL when there are no elements).
Chunk* make_chunks(int64_t n_tensors, const int64_t* numels, int64_t* n_chunks, int64_t* total) {
  int64_t n = 0, tot = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    n += (numels[t] + kChunk - 1) / kChunk;
    tot += numels[t];
  }
  *n_chunks = n;
  *total = tot;
  if (n == 0) return nullptr;
  Chunk* c = (Chunk*)malloc((size_t)n * sizeof(Chunk));
  if (c == nullptr) return nullptr;
  int64_t k = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    for (int64_t b = 0; b < numels[t]; b += kChunk) {
      c[k].tensor = t;
      c[k].begin = b;
      c[k].len = numels[t] - b < kChunk ? numels[t] - b : kChunk;
      ++k;
    }
  }
  return c;
}

/// Rounds n updated params into the model copy (f16 or bf16).
void write_model_copy(const float* p, void* copy, int32_t dtype, int64_t n) {
  if (dtype == TRAINRT_BF16) {
    bf16_t* d = (bf16_t*)copy;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) d[i].bits = float_to_bf16_bits(p[i]);
  } else {
    f16_t* d = (f16_t*)copy;
    for (int64_t i = 0; i < n; ++i) d[i].bits = float_to_f16_bits(p[i]);
  }
}

// kPrefetch: where cpu::software_prefetch() says so (Intel CPUs, or TRAINRT_CPU_PREFETCH=on),
// for_each_step_chunk hands each chunk to the algorithm in sub-blocks of kPfBlock elements and,
// before a sub-block, prefetches the param, grad and state arrays kPfDist elements ahead. On
// the Intel VM measured the hardware prefetcher alone kept too few lines in flight for 4-7
// concurrent streams per core: AdamW over 16M params went from 1.22x the plain ceiling loop to
// about 1.0x. On the AMD Zen 4 VM the prefetches made it a third slower, so elsewhere each chunk
// is one loop and the hardware prefetches alone (bench/NOTES.md).
constexpr int64_t kPfBlock = 256;  // elements (1 KiB of f32 per array)
constexpr int64_t kPfDist = 256;   // how far ahead, in elements
constexpr int64_t kNormPfDist =
    1024;  // the norm's single read stream: further ahead (bench/NOTES.md)

__attribute__((always_inline)) inline int64_t block_end(int64_t i0, int64_t block, int64_t n) {
  return n - i0 < block ? n : i0 + block;
}

/// Prefetches the lines of [i0 + kPfDist, i1 + kPfDist) (clipped to n) of `in` (read only)
/// and of each array in `out` (read and written: prefetched for writing, so that the store
/// needs no second request for ownership). nullptr arrays are skipped; prefetches never fault.
template <class... P>
__attribute__((always_inline)) inline void prefetch_ahead(int64_t i0, int64_t i1, int64_t n,
                                                          const float* in, P*... out) {
  const int64_t hi = i1 + kPfDist < n ? i1 + kPfDist : n;
  for (int64_t k = i0 + kPfDist; k < hi; k += 64 / (int64_t)sizeof(float)) {
    __builtin_prefetch(in + k, 0, 3);
    ((out != nullptr ? __builtin_prefetch(out + k, 1, 3) : (void)0), ...);
  }
}

float* fptr(void* const* list, int64_t t, int64_t begin) {
  return list == nullptr ? nullptr : (float*)list[t] + begin;
}

/// Runs fn(tensor index, begin, len) over every chunk of the step's tensors, in parallel, in
/// sub-blocks with the arrays prefetched ahead (kPrefetch), and writes the model copies of each
/// chunk right after it (while it is in cache).
template <class F>
int for_each_step_chunk(const trainrt_optim_step_args* a, F fn) {
  int64_t n_chunks = 0, total = 0;
  Chunk* chunks = make_chunks(a->n_tensors, a->numels, &n_chunks, &total);
  if (n_chunks > 0 && chunks == nullptr) return 2;
  const bool pf = cpu::software_prefetch();
#pragma omp parallel for schedule(static) if (total > kChunk)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const Chunk ch = chunks[c];
    const float* g = (const float*)a->grads[ch.tensor] + ch.begin;
    float* p = fptr(a->params, ch.tensor, ch.begin);
    float* s0 = fptr(a->states[0], ch.tensor, ch.begin);
    float* s1 = fptr(a->states[1], ch.tensor, ch.begin);
    float* s2 = fptr(a->states[2], ch.tensor, ch.begin);
    const int64_t blk = pf ? kPfBlock : ch.len;  // without prefetch: the chunk in one loop
    for (int64_t i0 = 0; i0 < ch.len; i0 += blk) {
      const int64_t i1 = block_end(i0, blk, ch.len);
      if (pf) prefetch_ahead(i0, i1, ch.len, g, p, s0, s1, s2);
      fn(ch.tensor, ch.begin + i0, i1 - i0);
    }
    if (a->model_copies != nullptr && a->model_copies[ch.tensor] != nullptr) {
      void* d = (char*)a->model_copies[ch.tensor] + ch.begin * 2;
      write_model_copy(p, d, a->model_dtype, ch.len);
    }
  }
  free(chunks);
  return 0;
}

// ---- per-algorithm chunk loops ------------------------------------------------------------
// kLocalScalars: each chunk loop copies the step's scalars into locals first. Read through the
// lambda's captured references, they could alias the param / state stores, so the compiler
// reloaded and re-broadcast every scalar in every vector iteration (about ten extra loads per
// 16 elements of AdamW); locals stay in registers.

template <bool kL2, bool kMomentum, bool kNesterov>
int sgd_step(const trainrt_optim_step_args* a, const OptimScalars s_in, const GradMul gm_in) {
  return for_each_step_chunk(a, [&](int64_t t, int64_t b, int64_t n) {
    const OptimScalars s = s_in;  // locals: see kLocalScalars
    const GradMul gm = gm_in;
    float* p = fptr(a->params, t, b);
    const float* g = (const float*)a->grads[t] + b;
    float* buf = kMomentum ? fptr(a->states[0], t, b) : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float pi = p[i], bi = kMomentum ? buf[i] : 0.0f;
      sgd_update<kL2, kMomentum, kNesterov>(pi, effective_grad<false>(g[i], gm), bi, s);
      p[i] = pi;
      if (kMomentum) buf[i] = bi;
    }
  });
}

template <bool kL2, bool kDecoupled, bool kAmsgrad>
int adam_step(const trainrt_optim_step_args* a, const OptimScalars s_in, const GradMul gm_in) {
  return for_each_step_chunk(a, [&](int64_t t, int64_t b, int64_t n) {
    const OptimScalars s = s_in;  // locals: see kLocalScalars
    const GradMul gm = gm_in;
    float* p = fptr(a->params, t, b);
    const float* g = (const float*)a->grads[t] + b;
    float* m = fptr(a->states[0], t, b);
    float* v = fptr(a->states[1], t, b);
    float* vmax = kAmsgrad ? fptr(a->states[2], t, b) : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float pi = p[i], mi = m[i], vi = v[i], wi = kAmsgrad ? vmax[i] : 0.0f;
      adam_update<kL2, kDecoupled, kAmsgrad>(pi, effective_grad<false>(g[i], gm), mi, vi, wi, s);
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
      if (kAmsgrad) vmax[i] = wi;
    }
  });
}

template <bool kL2, bool kCentered, bool kMomentum>
int rmsprop_step(const trainrt_optim_step_args* a, const OptimScalars s_in, const GradMul gm_in) {
  return for_each_step_chunk(a, [&](int64_t t, int64_t b, int64_t n) {
    const OptimScalars s = s_in;  // locals: see kLocalScalars
    const GradMul gm = gm_in;
    float* p = fptr(a->params, t, b);
    const float* g = (const float*)a->grads[t] + b;
    float* sq = fptr(a->states[0], t, b);
    float* buf = kMomentum ? fptr(a->states[1], t, b) : nullptr;
    float* ga = kCentered ? fptr(a->states[2], t, b) : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float pi = p[i], si = sq[i], bi = kMomentum ? buf[i] : 0.0f, ai = kCentered ? ga[i] : 0.0f;
      rmsprop_update<kL2, kCentered, kMomentum>(pi, effective_grad<false>(g[i], gm), si, bi, ai, s);
      p[i] = pi;
      sq[i] = si;
      if (kMomentum) buf[i] = bi;
      if (kCentered) ga[i] = ai;
    }
  });
}

template <bool kL2>
int adagrad_step(const trainrt_optim_step_args* a, const OptimScalars s_in, const GradMul gm_in) {
  return for_each_step_chunk(a, [&](int64_t t, int64_t b, int64_t n) {
    const OptimScalars s = s_in;  // locals: see kLocalScalars
    const GradMul gm = gm_in;
    float* p = fptr(a->params, t, b);
    const float* g = (const float*)a->grads[t] + b;
    float* sum = fptr(a->states[0], t, b);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float pi = p[i], si = sum[i];
      adagrad_update<kL2>(pi, effective_grad<false>(g[i], gm), si, s);
      p[i] = pi;
      sum[i] = si;
    }
  });
}

template <bool kL2, bool kDecoupled, bool kRectified>
int radam_step(const trainrt_optim_step_args* a, const OptimScalars s_in, const GradMul gm_in) {
  return for_each_step_chunk(a, [&](int64_t t, int64_t b, int64_t n) {
    const OptimScalars s = s_in;  // locals: see kLocalScalars
    const GradMul gm = gm_in;
    float* p = fptr(a->params, t, b);
    const float* g = (const float*)a->grads[t] + b;
    float* m = fptr(a->states[0], t, b);
    float* v = fptr(a->states[1], t, b);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float pi = p[i], mi = m[i], vi = v[i];
      radam_update<kL2, kDecoupled, kRectified>(pi, effective_grad<false>(g[i], gm), mi, vi, s);
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
    }
  });
}

/// LAMB: pass 1 updates the moments and collects per-chunk sums of p^2 and u^2; the per-tensor
/// norms are reduced in chunk order; pass 2 recomputes u and applies p -= ratio * u.
int lamb_step(const trainrt_optim_step_args* a, const OptimScalars s, const GradMul gm) {
  int64_t n_chunks = 0, total = 0;
  Chunk* chunks = make_chunks(a->n_tensors, a->numels, &n_chunks, &total);
  if (n_chunks == 0) return 0;
  double* part = (double*)malloc((size_t)n_chunks * 2 * sizeof(double));
  float* norms = (float*)malloc((size_t)a->n_tensors * 2 * sizeof(float));
  if (chunks == nullptr || part == nullptr || norms == nullptr) {
    free(chunks);
    free(part);
    free(norms);
    return 2;
  }
  const float divisor = lamb_grad_divisor(a->global_grad_norm ? *a->global_grad_norm : 0.0f, s);
  const bool nvlamb = (a->flags & TRAINRT_OPTIM_NVLAMB) != 0;
  const bool pf = cpu::software_prefetch();
#pragma omp parallel if (total > kChunk)
  {
#pragma omp for schedule(static)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const Chunk ch = chunks[c];
      const float* p = fptr(a->params, ch.tensor, ch.begin);
      const float* g = (const float*)a->grads[ch.tensor] + ch.begin;
      float* m = fptr(a->states[0], ch.tensor, ch.begin);
      float* v = fptr(a->states[1], ch.tensor, ch.begin);
      double pn = 0.0, un = 0.0;
      const int64_t blk = pf ? kPfBlock : ch.len;  // kPrefetch, as for_each_step_chunk
      for (int64_t i0 = 0; i0 < ch.len; i0 += blk) {
        const int64_t i1 = block_end(i0, blk, ch.len);
        if (pf) prefetch_ahead(i0, i1, ch.len, g, m, v);
        if (pf) prefetch_ahead(i0, i1, ch.len, p);
#pragma omp simd reduction(+ : pn, un)
        for (int64_t i = i0; i < i1; ++i) {
          float mi = m[i], vi = v[i];
          const float u = lamb_stage1(p[i], effective_grad<false>(g[i], gm), mi, vi, divisor, s);
          m[i] = mi;
          v[i] = vi;
          pn += (double)p[i] * (double)p[i];
          un += (double)u * (double)u;
        }
      }
      part[2 * c] = pn;
      part[2 * c + 1] = un;
    }
#pragma omp single
    {
      int64_t c = 0;
      for (int64_t t = 0; t < a->n_tensors; ++t) {
        double pn = 0.0, un = 0.0;
        for (; c < n_chunks && chunks[c].tensor == t; ++c) {
          pn += part[2 * c];
          un += part[2 * c + 1];
        }
        norms[2 * t] = (float)sqrt(pn);
        norms[2 * t + 1] = (float)sqrt(un);
      }
    }  // implicit barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const Chunk ch = chunks[c];
      float* p = fptr(a->params, ch.tensor, ch.begin);
      const float* m = fptr(a->states[0], ch.tensor, ch.begin);
      const float* v = fptr(a->states[1], ch.tensor, ch.begin);
      const float ratio = lamb_ratio(norms[2 * ch.tensor], norms[2 * ch.tensor + 1], nvlamb, s);
      const int64_t blk = pf ? kPfBlock : ch.len;  // kPrefetch
      for (int64_t i0 = 0; i0 < ch.len; i0 += blk) {
        const int64_t i1 = block_end(i0, blk, ch.len);
        if (pf) prefetch_ahead(i0, i1, ch.len, m, p);
        if (pf) prefetch_ahead(i0, i1, ch.len, v);
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) p[i] = p[i] - ratio * lamb_update_of(p[i], m[i], v[i], s);
      }
      if (a->model_copies != nullptr && a->model_copies[ch.tensor] != nullptr) {
        write_model_copy(p, (char*)a->model_copies[ch.tensor] + ch.begin * 2, a->model_dtype,
                         ch.len);
      }
    }
  }
  free(chunks);
  free(part);
  free(norms);
  return 0;
}

// ---- multi-tensor norm --------------------------------------------------------------------

struct NormPartial {
  double sum;       // sum |x|^p
  double max;       // max |x| ignoring NaN (exact: the widening of an f32 or f64 value)
  float nonfinite;  // NaN when some raw value is inf or NaN, else 0
  int32_t has_nan;  // some x is NaN (inf norm only)
};

// kScaled is a template parameter, not a run-time flag: with `scaled ? ... : raw` in the loop
// GCC vectorized only the scaled version of the loop and left grad_norm() and
// clip_grad_norm_(params) scalar (9.2 ms instead of 1.2 ms over 16M f32, bench/NOTES.md).
// The prefetch runs on past the chunk's end into the rest of the tensor (`avail` elements from
// v), which the same thread reads next under the static schedule; avail == 0: no software
// prefetch (cpu::software_prefetch()), and the chunk is one loop.
template <int kKind, bool kScaled, class T>
NormPartial norm_chunk(const T* v, int64_t n, int64_t avail, float inv, float clip, double p) {
  using A = typename acc_type<T>::type;
  NormPartial r{0.0, 0.0, 0.0f, 0};
  double sum = 0.0;
  A mx = A(0);
  A nf = A(0);
  A nx = A(0);  // inf norm: NaN once some x is inf or NaN (x may be NaN from finite raw values)
  const A ai = (A)inv, ac = (A)clip;
  const int64_t blk = avail > 0 ? kPfBlock : n;
  for (int64_t i0 = 0; i0 < n; i0 += blk) {  // kPrefetch
    const int64_t i1 = block_end(i0, blk, n);
    const int64_t hi = i1 + kNormPfDist < avail ? i1 + kNormPfDist : avail;
    for (int64_t k = i0 + kNormPfDist; k < hi; k += 64 / (int64_t)sizeof(T))
      __builtin_prefetch(v + k, 0, 3);
#pragma omp simd reduction(+ : sum, nf, nx) reduction(max : mx)
    for (int64_t i = i0; i < i1; ++i) {
      const A raw = load<A>(v, i);
      const A x = kScaled ? (raw * ai) * ac : raw;
      const A ax = x < A(0) ? -x : x;
      nf += raw - raw;
      if (kKind == kNormInf && kScaled) nx += x - x;
      if (kKind == kNormL1) sum += (double)ax;
      if (kKind == kNormL2) sum += (double)ax * (double)ax;
      if (kKind == kNormP) sum += pow((double)ax, p);
      if (kKind == kNormInf) mx = ax > mx ? ax : mx;
    }
  }
  r.sum = sum;
  r.max = (double)mx;
  r.nonfinite = (float)nf;
  // Rare: is some x NaN (not only inf)? The max ignores NaN. A scaled x is NaN also where the
  // raw value is finite: 0 * (1/scale = inf), or inf * (clip coefficient 0).
  if (kKind == kNormInf && (nf != nf || nx != nx)) {
    for (int64_t i = 0; i < n; ++i) {
      const A raw = load<A>(v, i);
      const A x = kScaled ? (raw * ai) * ac : raw;
      if (x != x) {
        r.has_nan = 1;
        break;
      }
    }
  }
  return r;
}

// kNormVec: on the AVX-512 and AVX2 builds the f32 L1 / L2 norms (what clip_grad_norm_ runs
// nearly always) keep four double accumulators and two non-finite accumulators in registers for
// the whole chunk, and sum the lanes once at its end. The `omp simd reduction` loop of
// norm_chunk has to sum its lanes (through the stack, one dependent scalar add per lane) at the
// end of every 256-element prefetch block: 32 scalar adds per 16 cache lines, which left
// grad_norm over 16M f32 at 1.35x the read-only ceiling loop on AVX-512 and 1.8x on AVX2
// (bench/NOTES.md).
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define TRAINRT_NORM_VEC 1
// GCC 12's own intrinsics (_mm512_undefined_*, `__Y = __Y`) trip -Wuninitialized when inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#if defined(__AVX512F__)
struct NormVecAcc {  // 32 elements per group: two zmm of f32, four zmm of f64
  __m512d s[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                  _mm512_setzero_pd()};
  __m512 nf[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  template <int kKind, bool kScaled>
  __attribute__((always_inline)) void add32(const float* v, float inv, float clip) {
    for (int h = 0; h < 2; ++h) {
      __m512 r = _mm512_loadu_ps(v + 16 * h);
      nf[h] = _mm512_add_ps(nf[h], _mm512_sub_ps(r, r));  // NaN once a raw value is inf / NaN
      if (kScaled) r = _mm512_mul_ps(_mm512_mul_ps(r, _mm512_set1_ps(inv)), _mm512_set1_ps(clip));
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(r));
      const __m512d hi =
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r), 1)));
      // d * d is exact in double (24-bit significands): the fused multiply-add rounds as the
      // baseline build's multiply, then add.
      s[2 * h] = kKind == kNormL2 ? _mm512_fmadd_pd(lo, lo, s[2 * h])
                                  : _mm512_add_pd(s[2 * h], _mm512_abs_pd(lo));
      s[2 * h + 1] = kKind == kNormL2 ? _mm512_fmadd_pd(hi, hi, s[2 * h + 1])
                                      : _mm512_add_pd(s[2 * h + 1], _mm512_abs_pd(hi));
    }
  }
  void finish(double* sum, float* nfs) const {
    *sum =
        _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s[0], s[1]), _mm512_add_pd(s[2], s[3])));
    *nfs = _mm512_reduce_add_ps(_mm512_add_ps(nf[0], nf[1]));
  }
};
#else
struct NormVecAcc {  // 32 elements per group: four ymm of f32, eight ymm of f64 into four sums
  __m256d s[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                  _mm256_setzero_pd()};
  __m256 nf[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  template <int kKind, bool kScaled>
  __attribute__((always_inline)) void add32(const float* v, float inv, float clip) {
    const __m256d sign = _mm256_set1_pd(-0.0);
    for (int q = 0; q < 4; ++q) {
      __m256 r = _mm256_loadu_ps(v + 8 * q);
      nf[q / 2] = _mm256_add_ps(nf[q / 2], _mm256_sub_ps(r, r));
      if (kScaled) r = _mm256_mul_ps(_mm256_mul_ps(r, _mm256_set1_ps(inv)), _mm256_set1_ps(clip));
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
      const int a = q / 2 * 2;  // q = 0, 1 -> s[0], s[1]; q = 2, 3 -> s[2], s[3]
      s[a] = kKind == kNormL2 ? _mm256_fmadd_pd(lo, lo, s[a])
                              : _mm256_add_pd(s[a], _mm256_andnot_pd(sign, lo));
      s[a + 1] = kKind == kNormL2 ? _mm256_fmadd_pd(hi, hi, s[a + 1])
                                  : _mm256_add_pd(s[a + 1], _mm256_andnot_pd(sign, hi));
    }
  }
  void finish(double* sum, float* nfs) const {
    const __m256d t = _mm256_add_pd(_mm256_add_pd(s[0], s[1]), _mm256_add_pd(s[2], s[3]));
    double d[4];
    _mm256_storeu_pd(d, t);
    *sum = (d[0] + d[1]) + (d[2] + d[3]);
    float f[8];
    _mm256_storeu_ps(f, _mm256_add_ps(nf[0], nf[1]));
    float x = 0.0f;
    for (int l = 0; l < 8; ++l) x += f[l];
    *nfs = x;
  }
};
#endif

template <int kKind, bool kScaled>
NormPartial norm_sum_f32(const float* v, int64_t n, int64_t avail, float inv, float clip) {
  static_assert(kKind == kNormL1 || kKind == kNormL2, "sum norms only");
  static_assert(kPfBlock % 32 == 0, "whole groups per prefetch block");
  NormVecAcc acc;
  const int64_t nv = n - n % 32;
  for (int64_t i0 = 0; i0 < nv; i0 += kPfBlock) {  // kPrefetch
    const int64_t i1 = nv - i0 < kPfBlock ? nv : i0 + kPfBlock;
    const int64_t hi = i1 + kNormPfDist < avail ? i1 + kNormPfDist : avail;
    for (int64_t k = i0 + kNormPfDist; k < hi; k += 16)
      _mm_prefetch((const char*)(v + k), _MM_HINT_T0);
    for (int64_t i = i0; i < i1; i += 32) acc.add32<kKind, kScaled>(v + i, inv, clip);
  }
  double sum = 0.0;
  float nf = 0.0f;
  acc.finish(&sum, &nf);
  for (int64_t i = nv; i < n; ++i) {
    const float raw = v[i];
    const float x = kScaled ? (raw * inv) * clip : raw;
    nf += raw - raw;
    sum += kKind == kNormL2 ? (double)x * (double)x : fabs((double)x);
  }
  NormPartial r{sum, 0.0, nf, 0};
  return r;
}
#pragma GCC diagnostic pop
#endif

template <int kKind, bool kScaled>
NormPartial norm_chunk_any(const void* base, int32_t dtype, int64_t begin, int64_t n, int64_t numel,
                           bool pf, float inv, float clip, double p) {
  const int64_t avail = pf ? numel - begin : 0;
  switch (dtype) {
    case TRAINRT_F32:
#if defined(TRAINRT_NORM_VEC)
      if (kKind == kNormL1 || kKind == kNormL2) {  // kNormVec
        constexpr int kSum = kKind == kNormL1 ? kNormL1 : kNormL2;
        return norm_sum_f32<kSum, kScaled>((const float*)base + begin, n, avail, inv, clip);
      }
#endif
      return norm_chunk<kKind, kScaled>((const float*)base + begin, n, avail, inv, clip, p);
    case TRAINRT_F64:
      return norm_chunk<kKind, kScaled>((const double*)base + begin, n, avail, inv, clip, p);
    case TRAINRT_F16:
      return norm_chunk<kKind, kScaled>((const f16_t*)base + begin, n, avail, inv, clip, p);
    default: return norm_chunk<kKind, kScaled>((const bf16_t*)base + begin, n, avail, inv, clip, p);
  }
}

template <int kKind>
void norm_chunks(const trainrt_multi_tensor_norm_args* a, const Chunk* chunks, int64_t n_chunks,
                 int64_t total, NormPartial* part) {
  const GradMul gm = load_grad_mul(a->grad_scalars);
  const bool scaled = a->grad_scalars != nullptr;
  const double p = a->norm_type;
  const bool pf = cpu::software_prefetch();
#pragma omp parallel for schedule(static) if (total > kChunk)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const Chunk ch = chunks[c];
    const void* base = a->tensors[ch.tensor];
    const int32_t dt = a->dtypes[ch.tensor];
    const int64_t numel = a->numels[ch.tensor];
    part[c] = scaled ? norm_chunk_any<kKind, true>(base, dt, ch.begin, ch.len, numel, pf,
                                                   gm.inv_scale, gm.clip_coef, p)
                     : norm_chunk_any<kKind, false>(base, dt, ch.begin, ch.len, numel, pf,
                                                    gm.inv_scale, gm.clip_coef, p);
  }
}

bool float_dtype(int32_t d) {
  return d == TRAINRT_F32 || d == TRAINRT_F64 || d == TRAINRT_F16 || d == TRAINRT_BF16;
}

// ---- multi-tensor scale / clamp -----------------------------------------------------------

template <class T>
void scale_chunk(T* v, int64_t n, bool use_gs, float inv, float clip, bool use_s, float sc,
                 bool use_d, double sd, bool clamp, double lo, double hi) {
  using A = typename acc_type<T>::type;
  const A ai = (A)inv, ac = (A)clip, as = (A)sc, ad = (A)sd, alo = (A)lo, ahi = (A)hi;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    A x = load<A>(v, i);
    if (use_gs) x = (x * ai) * ac;
    if (use_s) x = x * as;
    if (use_d) x = x * ad;
    if (clamp) x = x < alo ? alo : (x > ahi ? ahi : x);
    store<A>(v, i, x);
  }
}

}  // namespace

int cpu_optimizer_step(const trainrt_optim_step_args* a) {
  if (a->param_dtype != TRAINRT_F32 || a->grad_dtype != TRAINRT_F32) return 1;
  if (a->model_copies != nullptr && a->model_dtype != TRAINRT_F16 &&
      a->model_dtype != TRAINRT_BF16) {
    return 1;
  }
  if (step_skipped(a->grad_scalars)) return 0;
  const OptimScalars s = load_optim_scalars(a->scalars);
  GradMul gm = load_grad_mul(a->grad_scalars);
  // maximize folds into the sign of the clip coefficient: (g * inv) * (-clip) = -g_eff exactly.
  if (a->flags & TRAINRT_OPTIM_MAXIMIZE) gm.clip_coef = -gm.clip_coef;
  const uint32_t f = a->flags;
  const bool l2 = (f & TRAINRT_OPTIM_L2) != 0, dec = (f & TRAINRT_OPTIM_DECOUPLED) != 0;
  const bool mom = (f & TRAINRT_OPTIM_MOMENTUM) != 0;
  switch (a->algo) {
    case TRAINRT_OPTIM_SGD: {
      const bool nes = (f & TRAINRT_OPTIM_NESTEROV) != 0;
      if (!mom)
        return l2 ? sgd_step<true, false, false>(a, s, gm)
                  : sgd_step<false, false, false>(a, s, gm);
      if (nes)
        return l2 ? sgd_step<true, true, true>(a, s, gm) : sgd_step<false, true, true>(a, s, gm);
      return l2 ? sgd_step<true, true, false>(a, s, gm) : sgd_step<false, true, false>(a, s, gm);
    }
    case TRAINRT_OPTIM_ADAM: {
      const bool ams = (f & TRAINRT_OPTIM_AMSGRAD) != 0;
      if (dec)
        return ams ? adam_step<false, true, true>(a, s, gm)
                   : adam_step<false, true, false>(a, s, gm);
      if (l2)
        return ams ? adam_step<true, false, true>(a, s, gm)
                   : adam_step<true, false, false>(a, s, gm);
      return ams ? adam_step<false, false, true>(a, s, gm)
                 : adam_step<false, false, false>(a, s, gm);
    }
    case TRAINRT_OPTIM_RMSPROP: {
      const bool cen = (f & TRAINRT_OPTIM_CENTERED) != 0;
      if (l2) {
        if (cen)
          return mom ? rmsprop_step<true, true, true>(a, s, gm)
                     : rmsprop_step<true, true, false>(a, s, gm);
        return mom ? rmsprop_step<true, false, true>(a, s, gm)
                   : rmsprop_step<true, false, false>(a, s, gm);
      }
      if (cen)
        return mom ? rmsprop_step<false, true, true>(a, s, gm)
                   : rmsprop_step<false, true, false>(a, s, gm);
      return mom ? rmsprop_step<false, false, true>(a, s, gm)
                 : rmsprop_step<false, false, false>(a, s, gm);
    }
    case TRAINRT_OPTIM_ADAGRAD:
      return l2 ? adagrad_step<true>(a, s, gm) : adagrad_step<false>(a, s, gm);
    case TRAINRT_OPTIM_RADAM: {
      const bool rect = s.rect > 0.0f;
      if (dec)
        return rect ? radam_step<false, true, true>(a, s, gm)
                    : radam_step<false, true, false>(a, s, gm);
      if (l2)
        return rect ? radam_step<true, false, true>(a, s, gm)
                    : radam_step<true, false, false>(a, s, gm);
      return rect ? radam_step<false, false, true>(a, s, gm)
                  : radam_step<false, false, false>(a, s, gm);
    }
    case TRAINRT_OPTIM_LAMB: return lamb_step(a, s, gm);
    default: return 1;
  }
}

int cpu_multi_tensor_norm(const trainrt_multi_tensor_norm_args* a) {
  for (int64_t t = 0; t < a->n_tensors; ++t)
    if (!float_dtype(a->dtypes[t])) return 1;
  const double p = a->norm_type;
  if (!(p == 0.0 || p > 0.0)) return 1;
  int64_t n_chunks = 0, total = 0;
  Chunk* chunks = make_chunks(a->n_tensors, a->numels, &n_chunks, &total);
  NormPartial* part =
      n_chunks > 0 ? (NormPartial*)malloc((size_t)n_chunks * sizeof(NormPartial)) : nullptr;
  if (n_chunks > 0 && (chunks == nullptr || part == nullptr)) {
    free(chunks);
    free(part);
    return 2;
  }
  const int kind = p == 0.0   ? kNormNone
                   : p == 1.0 ? kNormL1
                   : p == 2.0 ? kNormL2
                   : isinf(p) ? kNormInf
                              : kNormP;
  switch (kind) {
    case kNormNone: norm_chunks<kNormNone>(a, chunks, n_chunks, total, part); break;
    case kNormL1: norm_chunks<kNormL1>(a, chunks, n_chunks, total, part); break;
    case kNormL2: norm_chunks<kNormL2>(a, chunks, n_chunks, total, part); break;
    case kNormInf: norm_chunks<kNormInf>(a, chunks, n_chunks, total, part); break;
    default: norm_chunks<kNormP>(a, chunks, n_chunks, total, part); break;
  }
  // Fixed-order reduction: each tensor's chunk partials (consecutive chunks) into its norm,
  // rounded to its type (norm_tensor_term), then the tensors' terms in tensor order.
  double acc = 0.0;
  bool nonfinite = false, has_nan = false;
  for (int64_t c = 0; c < n_chunks;) {
    const int64_t t = chunks[c].tensor;
    double sum = 0.0, mx = 0.0;
    for (; c < n_chunks && chunks[c].tensor == t; ++c) {
      sum += part[c].sum;
      mx = part[c].max > mx ? part[c].max : mx;
      if (part[c].nonfinite != 0.0f) nonfinite = true;  // NaN != 0
      if (part[c].has_nan) has_nan = true;
    }
    if (kind == kNormInf) {
      acc = mx > acc ? mx : acc;
    } else if (kind != kNormNone) {
      acc += norm_tensor_term(kind, sum, p, a->dtypes[t] == TRAINRT_F64);
    }
  }
  free(chunks);
  free(part);
  const double norm = kind == kNormInf && has_nan ? NAN : norm_root(kind, acc, p);
  const float total_norm = (float)norm;
  if (a->total_norm != nullptr) *a->total_norm = total_norm;
  if (a->total_norm_f64 != nullptr) *a->total_norm_f64 = norm;
  if (a->found_inf != nullptr && nonfinite) *a->found_inf = 1.0f;
  if (a->max_norm > 0.0 && kind != kNormNone) {
    if (a->grad_scalars != nullptr) {
      a->grad_scalars[TRAINRT_GS_CLIP_COEF] *= clip_coefficient(total_norm, (float)a->max_norm);
    }
    if (a->clip_coef_f64 != nullptr) *a->clip_coef_f64 = clip_coefficient_f64(norm, a->max_norm);
  }
  return 0;
}

int cpu_multi_tensor_scale(const trainrt_multi_tensor_scale_args* a) {
  for (int64_t t = 0; t < a->n_tensors; ++t)
    if (!float_dtype(a->dtypes[t])) return 1;
  const GradMul gm = load_grad_mul(a->grad_scalars);
  const bool use_gs = a->grad_scalars != nullptr && (gm.inv_scale != 1.0f || gm.clip_coef != 1.0f);
  const float sc = a->scale != nullptr ? *a->scale : 1.0f;
  const bool use_s = a->scale != nullptr && sc != 1.0f;
  const double sd = a->scale_f64 != nullptr ? *a->scale_f64 : 1.0;
  const bool use_d = a->scale_f64 != nullptr && sd != 1.0;
  const bool clamp =
      !(isinf(a->clamp_lo) && a->clamp_lo < 0 && isinf(a->clamp_hi) && a->clamp_hi > 0);
  // Multiplying by exactly 1 changes no value: skip the write pass.
  if (!use_gs && !use_s && !use_d && !clamp) return 0;
  int64_t n_chunks = 0, total = 0;
  Chunk* chunks = make_chunks(a->n_tensors, a->numels, &n_chunks, &total);
  if (n_chunks > 0 && chunks == nullptr) return 2;
#pragma omp parallel for schedule(static) if (total > kChunk)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const Chunk ch = chunks[c];
    void* base = a->tensors[ch.tensor];
    switch (a->dtypes[ch.tensor]) {
      case TRAINRT_F32:
        scale_chunk((float*)base + ch.begin, ch.len, use_gs, gm.inv_scale, gm.clip_coef, use_s, sc,
                    use_d, sd, clamp, a->clamp_lo, a->clamp_hi);
        break;
      case TRAINRT_F64:
        scale_chunk((double*)base + ch.begin, ch.len, use_gs, gm.inv_scale, gm.clip_coef, use_s, sc,
                    use_d, sd, clamp, a->clamp_lo, a->clamp_hi);
        break;
      case TRAINRT_F16:
        scale_chunk((f16_t*)base + ch.begin, ch.len, use_gs, gm.inv_scale, gm.clip_coef, use_s, sc,
                    use_d, sd, clamp, a->clamp_lo, a->clamp_hi);
        break;
      default:
        scale_chunk((bf16_t*)base + ch.begin, ch.len, use_gs, gm.inv_scale, gm.clip_coef, use_s, sc,
                    use_d, sd, clamp, a->clamp_lo, a->clamp_hi);
        break;
    }
  }
  free(chunks);
  return 0;
}

int cpu_amp(const trainrt_amp_args* a) {
  if (a->op == TRAINRT_AMP_BEGIN_UNSCALE) {
    a->grad_scalars[TRAINRT_GS_INV_SCALE] = (float)(1.0 / (double)*a->scale);
    a->grad_scalars[TRAINRT_GS_FOUND_INF] = 0.0f;
    return 0;
  }
  if (a->op == TRAINRT_AMP_UPDATE_SCALE) {
    bool found = false;
    for (int32_t i = 0; i < a->n_found_infs; ++i)
      if (*a->found_infs[i] != 0.0f) found = true;
    amp_update_scale(*a->scale, *a->growth_tracker, found, a->growth_factor, a->backoff_factor,
                     a->growth_interval);
    return 0;
  }
  return 1;
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
