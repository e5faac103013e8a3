// CUDA against the CPU backend: for every op and dtype the CUDA result equals the CPU result
// (16-bit casts bit for bit; everything else within a per-dtype tolerance relative to the
// magnitude of the terms the result is made of, as in loss_cases.hpp, doubled since both
// sides may err), including non-finite values, and the deferred data-error path.
//
// Every test skips with the reason where CUDA cannot run; they run on a machine with a GPU.
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <tuple>

#include "loss_cases.hpp"
#include "optim_util.hpp"
#include "test_util.hpp"

namespace {

using namespace loss_ref;
using trainrt::Device;
using trainrt::DType;
using trainrt::LossResult;
using trainrt::Reduction;
using trainrt::Shape;
using trainrt::Tensor;
using trainrt_test::make_tensor;
using trainrt_test::rounded;
using trainrt_test::tol;
using trainrt_test::uniform;

#define REQUIRE_CUDA()                                                      \
  std::string why_;                                                         \
  if (!trainrt::cuda_available(&why_)) GTEST_SKIP() << "no CUDA: " << why_; \
  const Device gpu = Device::cuda(0);                                       \
  const Device cpu = Device::cpu();                                         \
  (void)cpu

std::vector<unsigned char> raw_bytes(const Tensor& t) {
  std::vector<unsigned char> b(t.nbytes());
  t.copy_to_host(b.data(), b.size());
  return b;
}

std::vector<double> twice(std::vector<double> v) {
  for (double& x : v) x *= 2;
  return v;
}

/// CUDA vs CPU loss results, each allowed tol(dtype) * abs from the truth.
void expect_same_result(const LossResult& g, const LossResult& c, const Ref& ref, DType t,
                        const std::string& what) {
  ASSERT_EQ(g.loss.shape(), c.loss.shape()) << what;
  ASSERT_EQ(g.loss.dtype(), c.loss.dtype()) << what;
  EXPECT_TRUE(g.loss.device().is_cuda()) << what;
  expect_close(g.loss.to_double_vector(), c.loss.to_double_vector(), twice(ref.loss_abs), t,
               what + " loss");
  ASSERT_EQ(g.grad.defined(), c.grad.defined()) << what;
  if (c.grad.defined()) {
    EXPECT_TRUE(g.grad.device().is_cuda()) << what;
    expect_close(g.grad.to_double_vector(), c.grad.to_double_vector(), twice(ref.grad_abs), t,
                 what + " grad");
  }
}

// ---- casts ---------------------------------------------------------------------------------

TEST(CudaParity, CastsMatchCpuBitwise) {
  REQUIRE_CUDA();
  // Random float bit patterns (every class: NaN, inf, subnormal, normal), f16/bf16 midpoints.
  std::mt19937 g(5);
  std::vector<float> f(1 << 20);
  for (auto& v : f) {
    const std::uint32_t u = g();
    std::memcpy(&v, &u, 4);
  }
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const std::uint32_t u = b << 16 | 0x8000u;  // bf16 ties
    std::memcpy(&f[b], &u, 4);
    f[0x10000 + b] = std::ldexp(1.0f + static_cast<float>(b % 1024) / 1024 + 1.0f / 2048,
                                static_cast<int>(b / 1024) % 40 - 25);  // f16 ties
  }
  const auto n = static_cast<std::int64_t>(f.size());
  const Tensor fc = Tensor::from_vector(f, {n});
  const Tensor fg = fc.to(gpu);
  for (DType to : {DType::f16, DType::bf16, DType::f32}) {
    SCOPED_TRACE(std::string("f32 -> ") + trainrt::dtype_name(to));
    EXPECT_EQ(raw_bytes(fg.to(to)), raw_bytes(fc.to(to)));
  }
  for (DType from : {DType::f16, DType::bf16}) {
    const Tensor c16 = fc.to(from);
    const Tensor g16 = c16.to(gpu);
    for (DType to : {DType::f32, DType::f16, DType::bf16}) {
      SCOPED_TRACE(std::string(trainrt::dtype_name(from)) + " -> " + trainrt::dtype_name(to));
      EXPECT_EQ(raw_bytes(g16.to(to)), raw_bytes(c16.to(to)));
    }
  }
  // Through f64 and the integer types: NaN payloads may differ, NaN-ness may not.
  std::vector<double> d = uniform(100000, -70000, 70000, 9);
  for (std::size_t i = 0; i < 1000; ++i)
    d[i] = std::ldexp(1.0 + (i % 97) / 1024.0 + 1.0 / 2048 + 1e-12, -(int)(i % 30));
  d[1000] = std::numeric_limits<double>::quiet_NaN();
  d[1001] = std::numeric_limits<double>::infinity();
  d[1002] = -0.0;
  const Tensor dc = Tensor::from_vector(d, {static_cast<std::int64_t>(d.size())});
  const Tensor dg = dc.to(gpu);
  for (DType to : {DType::f32, DType::f16, DType::bf16}) {
    SCOPED_TRACE(std::string("f64 -> ") + trainrt::dtype_name(to));
    const std::vector<double> a = dg.to(to).to_double_vector(), b = dc.to(to).to_double_vector();
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      ASSERT_TRUE((std::isnan(a[i]) && std::isnan(b[i])) ||
                  (a[i] == b[i] && std::signbit(a[i]) == std::signbit(b[i])))
          << i << ": " << a[i] << " vs " << b[i];
    }
  }
  std::vector<double> ints = uniform(10000, 0, 250, 10);
  const Tensor ic = Tensor::from_vector(ints, {10000});
  const Tensor ig = ic.to(gpu);
  for (DType to : {DType::i32, DType::i64, DType::u8}) {
    SCOPED_TRACE(std::string("f64 -> ") + trainrt::dtype_name(to));
    const Tensor gc = ig.to(to), cc = ic.to(to);
    EXPECT_EQ(raw_bytes(gc), raw_bytes(cc));
    for (DType back : {DType::f32, DType::f16, DType::bf16, DType::f64}) {
      EXPECT_EQ(raw_bytes(gc.to(back)), raw_bytes(cc.to(back)));
    }
  }
  // Out of range and NaN to the integer types (saturation, NaN -> 0: kernels/common/cast.h),
  // from f64 and from the random f32 bit patterns; then between the integer types (modular).
  for (DType to : {DType::i32, DType::i64, DType::u8}) {
    SCOPED_TRACE(std::string("f64 / f32 bit patterns -> ") + trainrt::dtype_name(to));
    EXPECT_EQ(raw_bytes(dg.to(to)), raw_bytes(dc.to(to)));
    EXPECT_EQ(raw_bytes(fg.to(to)), raw_bytes(fc.to(to)));
  }
  std::vector<std::int64_t> wide(4096);
  for (auto& v : wide) v = static_cast<std::int64_t>(static_cast<std::uint64_t>(g()) << 32 | g());
  const Tensor wc = Tensor::from_vector(wide, {4096});
  const Tensor wg = wc.to(gpu);
  for (DType to : {DType::i32, DType::u8, DType::f32, DType::f64, DType::f16, DType::bf16}) {
    SCOPED_TRACE(std::string("i64 -> ") + trainrt::dtype_name(to));
    EXPECT_EQ(raw_bytes(wg.to(to)), raw_bytes(wc.to(to)));
  }
}

// ---- softmax -------------------------------------------------------------------------------

TEST(CudaParity, SoftmaxMatchesCpu) {
  REQUIRE_CUDA();
  const Shape shapes[] = {{1, 1},     {3, 7},     {64, 1000}, {5, 5000},
                          {2, 3, 17}, {1000, 17}, {3, 40000}, {4, 2049}};
  for (const Shape& shape : shapes) {
    const std::int64_t n = trainrt::shape_numel(shape), C = shape.back();
    std::vector<double> x = uniform(static_cast<std::size_t>(n), -8, 8, 3 + n);
    if (n >= 21) {  // non-finite values in the first rows (whole rows for C <= 7)
      x[0] = -kInf;
      x[C] = kNaN;
    }
    const std::vector<double> dy = uniform(static_cast<std::size_t>(n), -1, 1, 4 + n);
    for (DType t : kFloatTypes) {
      const Tensor xc = make_tensor(x, shape, t, cpu), xg = xc.to(gpu);
      const Tensor dyc = make_tensor(dy, shape, t, cpu), dyg = dyc.to(gpu);
      for (bool log : {false, true}) {
        const std::string what = std::string(log ? "log_softmax " : "softmax ") +
                                 trainrt::dtype_name(t) + " " + trainrt::shape_str(shape);
        SCOPED_TRACE(what);
        const Tensor yc = log ? trainrt::log_softmax(xc) : trainrt::softmax(xc);
        const Tensor yg = log ? trainrt::log_softmax(xg) : trainrt::softmax(xg);
        const std::vector<double> a = yg.to_double_vector(), b = yc.to_double_vector();
        const std::vector<double> xr = rounded(x, t);
        std::vector<double> abs(a.size());
        for (std::int64_t r = 0; r * C < n; ++r) {
          double rowmax = 0;
          for (std::int64_t c = 0; c < C; ++c) {
            if (std::isfinite(xr[r * C + c])) rowmax = std::max(rowmax, std::fabs(xr[r * C + c]));
          }
          for (std::int64_t c = 0; c < C; ++c) {
            const std::int64_t i = r * C + c;
            // 2 * (tol |y| + eps (16 + 4 rowmax) for log) expressed in units of tol
            abs[i] =
                2 * (std::fabs(b[i]) + 1e-4) +
                (log ? 2 * (t == DType::f64 ? 2.2e-16 : 1.2e-7) * (16 + 4 * rowmax) / tol(t) : 0.0);
          }
        }
        expect_close(a, b, abs, t, what);
        // backward from the CPU's y, on both devices
        const Tensor dxc =
            log ? trainrt::log_softmax_backward(yc, dyc) : trainrt::softmax_backward(yc, dyc);
        const Tensor dxg = log ? trainrt::log_softmax_backward(yc.to(gpu), dyg)
                               : trainrt::softmax_backward(yc.to(gpu), dyg);
        const std::vector<double> ga = dxg.to_double_vector(), gb = dxc.to_double_vector();
        const std::vector<double> yv = b, dyr = rounded(dy, t);
        std::vector<double> gabs(ga.size());
        for (std::int64_t r = 0; r * C < n; ++r) {
          double s_abs = 0;
          for (std::int64_t c = 0; c < C; ++c) {
            const std::int64_t i = r * C + c;
            s_abs += log ? std::fabs(dyr[i]) : std::fabs(yv[i] * dyr[i]);
          }
          for (std::int64_t c = 0; c < C; ++c) {
            const std::int64_t i = r * C + c;
            gabs[i] =
                2 * (std::fabs(gb[i]) + (log ? std::fabs(dyr[i]) + std::exp(yv[i]) * s_abs
                                             : std::fabs(yv[i]) * (std::fabs(dyr[i]) + s_abs)));
          }
        }
        expect_close(ga, gb, gabs, t, what + " backward");
      }
    }
  }
}

// ---- losses --------------------------------------------------------------------------------

TEST(CudaParity, CrossEntropyFamilyMatchesCpu) {
  REQUIRE_CUDA();
  unsigned seed = 900;
  const Tensor scale_c = Tensor::from_vector(std::vector<float>{0.25f}, {});
  const Tensor scale_g = scale_c.to(gpu);
  for (const CeCase& c : ce_cases()) {
    for (const auto& nc :
         {std::pair<std::int64_t, std::int64_t>{13, 11}, {4, 300}, {1, 1}, {64, 5000}, {300, 7}}) {
      if (nc.second == 1 && (c.mark_ignored || c.ignore_index >= 1)) continue;
      const CeData d = make_ce_data(c, nc.first, nc.second, ++seed);
      for (DType t : kFloatTypes) {
        const CeTensors ic = ce_tensors(c, d, t, cpu), ig = ce_tensors(c, d, t, gpu);
        for (Reduction red : kReductions) {
          const std::string what =
              label(c.name + " " + std::to_string(d.N) + "x" + std::to_string(d.C), t, red);
          SCOPED_TRACE(what);
          trainrt::LossOptions oc = opts(red, 2.0), og = opts(red, 2.0);
          oc.grad_scale_tensor = scale_c;
          og.grad_scale_tensor = scale_g;
          expect_same_result(call_ce(c, ig, og), call_ce(c, ic, oc),
                             ce_reference(c, d, t, red, 0.5), t, what);
        }
      }
    }
  }
}

TEST(CudaParity, PointwiseLossesMatchCpu) {
  REQUIRE_CUDA();
  unsigned seed = 950;
  for (const PwCase& c : pw_cases()) {
    for (const Shape& shape : {Shape{6, 7}, Shape{2, 3, 5}, Shape{1}, Shape{100003}}) {
      const PwData d = make_pw_data(c, shape, ++seed);
      std::vector<Reduction> reds(std::begin(kReductions), std::end(kReductions));
      if (c.kind == Pw::kl) reds.push_back(Reduction::batchmean);
      for (DType t : kFloatTypes) {
        const PwTensors ic = pw_tensors(d, t, cpu), ig = pw_tensors(d, t, gpu);
        for (Reduction red : reds) {
          const std::string what = label(c.name + " " + trainrt::shape_str(shape), t, red);
          SCOPED_TRACE(what);
          expect_same_result(call_pw(c, ig, opts(red, 3.0)), call_pw(c, ic, opts(red, 3.0)),
                             pw_reference(c, d, t, red, 3.0), t, what);
        }
      }
    }
  }
}

TEST(CudaParity, LargeShapesMatchCpu) {
  REQUIRE_CUDA();
  CeCase plain;
  plain.name = "index";
  const CeCase smooth = ce_cases()[6];
  for (const auto& b : {std::make_tuple(plain, 4096, 1000), std::make_tuple(smooth, 4096, 1000),
                        std::make_tuple(plain, 512, 32000)}) {
    const CeCase& c = std::get<0>(b);
    const CeData d = make_ce_data(c, std::get<1>(b), std::get<2>(b), 77);
    for (DType t : {DType::f32, DType::bf16}) {
      const std::string what =
          label(c.name + " " + std::to_string(d.N) + "x" + std::to_string(d.C), t, Reduction::mean);
      SCOPED_TRACE(what);
      expect_same_result(call_ce(c, ce_tensors(c, d, t, gpu), opts(Reduction::mean)),
                         call_ce(c, ce_tensors(c, d, t, cpu), opts(Reduction::mean)),
                         ce_reference(c, d, t, Reduction::mean, 1.0), t, what);
    }
  }
  for (const PwCase& c : pw_cases()) {
    const PwData d = make_pw_data(c, {1000, 1000}, 78);
    const std::string what = label(c.name + " 1M", DType::f32, Reduction::mean);
    SCOPED_TRACE(what);
    expect_same_result(call_pw(c, pw_tensors(d, DType::f32, gpu), opts(Reduction::mean)),
                       call_pw(c, pw_tensors(d, DType::f32, cpu), opts(Reduction::mean)),
                       pw_reference(c, d, DType::f32, Reduction::mean, 1.0), DType::f32, what);
  }
}

TEST(CudaParity, EdgeCasesMatchCpu) {
  REQUIRE_CUDA();
  auto same_nonfinite = [](const std::vector<double>& a, const std::vector<double>& b,
                           const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(std::isnan(a[i]), std::isnan(b[i])) << what << " " << i;
      EXPECT_EQ(std::isinf(a[i]), std::isinf(b[i])) << what << " " << i;
      if (std::isinf(b[i])) EXPECT_EQ(a[i], b[i]) << what << " " << i;
    }
  };
  for (DType t : kFloatTypes) {
    SCOPED_TRACE(trainrt::dtype_name(t));
    // empty batch and all rows ignored
    for (Device dev : {gpu}) {
      const LossResult e = trainrt::cross_entropy(Tensor::zeros({0, 5}, t, dev),
                                                  Tensor::zeros({0}, DType::i64, dev));
      EXPECT_TRUE(std::isnan(e.loss.item()));
      const Tensor x = make_tensor(uniform(12, -2, 2, 3), {3, 4}, t, dev);
      const Tensor y = Tensor::from_vector(std::vector<std::int64_t>{-100, -100, -100}, {3}, dev);
      const LossResult r = trainrt::cross_entropy(x, y);
      EXPECT_TRUE(std::isnan(r.loss.item()));
      for (double v : r.grad.to_double_vector()) EXPECT_EQ(v, 0.0);
      trainrt::LossOptions o;
      o.reduction = Reduction::sum;
      const Tensor z = Tensor::zeros({0, 3}, t, dev);
      EXPECT_EQ(trainrt::mse_loss(z, z, o).loss.item(), 0.0);
      EXPECT_TRUE(std::isnan(trainrt::mse_loss(z, z).loss.item()));
    }
    // NaN / inf inputs give the same non-finite pattern on both devices
    std::vector<double> xv = uniform(24, -2, 2, 4);
    xv[5] = kNaN;
    xv[13] = kInf;
    xv[20] = -kInf;
    const Tensor xc = make_tensor(xv, {4, 6}, t, cpu), xg = xc.to(gpu);
    const Tensor tc = Tensor::from_vector(std::vector<std::int64_t>{0, 2, 3, 2}, {4});
    trainrt::CrossEntropyOptions o;
    o.reduction = Reduction::none;
    const LossResult cc = trainrt::cross_entropy(xc, tc, o);
    const LossResult cg = trainrt::cross_entropy(xg, tc.to(gpu), o);
    same_nonfinite(cg.loss.to_double_vector(), cc.loss.to_double_vector(), "ce loss");
    same_nonfinite(cg.grad.to_double_vector(), cc.grad.to_double_vector(), "ce grad");
    const std::vector<double> yv = uniform(24, 0, 1, 5);
    const Tensor yc = make_tensor(yv, {4, 6}, t, cpu), yg = yc.to(gpu);
    for (const PwCase& c : pw_cases()) {
      if (c.kind == Pw::bce) continue;
      PwTensors pc{xc, yc, Tensor(), Tensor()}, pg{xg, yg, Tensor(), Tensor()};
      const LossResult a = call_pw(c, pg, opts(Reduction::none)),
                       b = call_pw(c, pc, opts(Reduction::none));
      same_nonfinite(a.loss.to_double_vector(), b.loss.to_double_vector(), c.name + " loss");
      same_nonfinite(a.grad.to_double_vector(), b.grad.to_double_vector(), c.name + " grad");
    }
    // softmax of the same
    same_nonfinite(trainrt::softmax(xg).to_double_vector(), trainrt::softmax(xc).to_double_vector(),
                   "softmax");
    same_nonfinite(trainrt::log_softmax(xg).to_double_vector(),
                   trainrt::log_softmax(xc).to_double_vector(), "log_softmax");
  }
}

// ---- the deferred error path -------------------------------------------------------------

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const trainrt::Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaParity, DeferredDataErrors) {
  REQUIRE_CUDA();
  const std::vector<double> xv = uniform(40, -2, 2, 6);
  const Tensor xc = make_tensor(xv, {4, 10}, DType::f32, cpu), xg = xc.to(gpu);
  const Tensor good_c = Tensor::from_vector(std::vector<std::int64_t>{1, 0, 9, 3}, {4});
  const Tensor good_g = good_c.to(gpu);
  const std::vector<double> good_grad = trainrt::cross_entropy(xc, good_c).grad.to_double_vector();

  struct Bad {
    std::vector<std::int64_t> targets;
    bool nll;
  };
  for (const Bad& b : {Bad{{1, 0, 9, 12}, false}, Bad{{1, -1, 9, 3}, false},
                       Bad{{1, 11, 9, 12}, false}, Bad{{1, 0, 10, 3}, true}}) {
    const Tensor tc = Tensor::from_vector(b.targets, {4});
    const Tensor tg = tc.to(gpu);
    auto call = [&](const Tensor& x, const Tensor& t) {
      return b.nll ? trainrt::nll_loss(x, t) : trainrt::cross_entropy(x, t);
    };
    const std::string want = error_of([&] { (void)call(xc, tc); });
    ASSERT_FALSE(want.empty());
    SCOPED_TRACE(want);
    // read through item()
    const std::string via_item = error_of([&] {
      const LossResult r = call(xg, tg);
      (void)r.loss.item();
    });
    EXPECT_NE(via_item.find(want), std::string::npos) << via_item;
    EXPECT_NO_THROW(trainrt::synchronize(gpu));  // reported once
    // reported by synchronize() when nothing is read
    const std::string via_sync = error_of([&] {
      (void)call(xg, tg);
      trainrt::synchronize(gpu);
    });
    EXPECT_NE(via_sync.find(want), std::string::npos) << via_sync;
    EXPECT_NO_THROW(trainrt::synchronize(gpu));
    // nothing is corrupted: inputs unchanged, a valid call matches the CPU
    EXPECT_EQ(xg.to_double_vector(), xc.to_double_vector());
    EXPECT_EQ(tg.to_vector<std::int64_t>(), b.targets);
    const std::vector<double> again = trainrt::cross_entropy(xg, good_g).grad.to_double_vector();
    ASSERT_EQ(again.size(), good_grad.size());
    for (std::size_t i = 0; i < again.size(); ++i) {
      EXPECT_NEAR(again[i], good_grad[i], 1e-6) << i;
    }
  }
  // Two bad calls before anyone looks: the first error is the one reported, once.
  {
    const Tensor bad1 = Tensor::from_vector(std::vector<std::int64_t>{1, 0, 9, 12}, {4}, gpu);
    const Tensor p = make_tensor({0.5, 1.5, 0.2}, {3}, DType::f32, gpu);
    const Tensor y = make_tensor({0, 1, 1}, {3}, DType::f32, gpu);
    const std::string msg = error_of([&] {
      (void)trainrt::cross_entropy(xg, bad1);
      (void)trainrt::binary_cross_entropy(p, y);
      trainrt::synchronize(gpu);
    });
    EXPECT_NE(msg.find("cross_entropy: target 12 is out of bounds for 10 classes (row 3)"),
              std::string::npos)
        << msg;
    EXPECT_NO_THROW(trainrt::synchronize(gpu));
  }
  // binary_cross_entropy inputs outside [0, 1] (and NaN)
  for (double bad : {1.5, -0.1, kNaN}) {
    const std::vector<double> pv = {0.2, 0.7, bad, 0.1};
    const Tensor pc = make_tensor(pv, {4}, DType::f32, cpu), pg = pc.to(gpu);
    const Tensor yc = make_tensor({0, 1, 1, 0}, {4}, DType::f32, cpu), yg = yc.to(gpu);
    const std::string want = error_of([&] { (void)trainrt::binary_cross_entropy(pc, yc); });
    ASSERT_FALSE(want.empty());
    SCOPED_TRACE(want);
    const std::string got = error_of([&] {
      const LossResult r = trainrt::binary_cross_entropy(pg, yg);
      (void)r.loss.item();
      trainrt::synchronize(gpu);
    });
    EXPECT_NE(got.find(want), std::string::npos) << got;
    EXPECT_NO_THROW(trainrt::synchronize(gpu));
    const Tensor okg = make_tensor({0.2, 0.7, 0.4, 0.1}, {4}, DType::f32, gpu);
    const Tensor okc = okg.to(cpu);
    EXPECT_NEAR(trainrt::binary_cross_entropy(okg, yg).loss.item(),
                trainrt::binary_cross_entropy(okc, yc).loss.item(), 1e-6);
  }
}

TEST(CudaParity, DeterministicOnGpu) {
  REQUIRE_CUDA();
  auto bits = [](const LossResult& r) {
    std::vector<unsigned char> b = raw_bytes(r.loss);
    if (r.grad.defined()) {
      const std::vector<unsigned char> g = raw_bytes(r.grad);
      b.insert(b.end(), g.begin(), g.end());
    }
    return b;
  };
  for (DType t : {DType::f32, DType::bf16, DType::f64}) {
    SCOPED_TRACE(trainrt::dtype_name(t));
    for (const CeCase& c : {ce_cases()[0], ce_cases()[6], ce_cases()[10], ce_cases()[14]}) {
      const CeData d = make_ce_data(c, 1025, 3001, 41);
      const CeTensors in = ce_tensors(c, d, t, gpu);
      for (Reduction red : kReductions) {
        EXPECT_EQ(bits(call_ce(c, in, opts(red))), bits(call_ce(c, in, opts(red)))) << c.name;
      }
    }
    for (const PwCase& c : pw_cases()) {
      const PwData d = make_pw_data(c, {1000, 1001}, 42);
      const PwTensors in = pw_tensors(d, t, gpu);
      EXPECT_EQ(bits(call_pw(c, in, opts(Reduction::mean))),
                bits(call_pw(c, in, opts(Reduction::mean))))
          << c.name;
    }
    const Tensor x = make_tensor(uniform(64 * 5000, -5, 5, 43), {64, 5000}, t, gpu);
    EXPECT_EQ(raw_bytes(trainrt::softmax(x)), raw_bytes(trainrt::softmax(x)));
    EXPECT_EQ(raw_bytes(trainrt::log_softmax(x)), raw_bytes(trainrt::log_softmax(x)));
  }
}

// ---- multi-tensor apply over more tensors than one launch holds ---------------------------

TEST(CudaParity, ManyTensorsAcrossLaunchesMatchCpu) {
  REQUIRE_CUDA();
  // More tensors than one launch's kernel-parameter table holds (kernels/cuda/multi_tensor.cuh:
  // about 535 for Adam with amsgrad and a model copy, 616 for LAMB, 1557 for the norm and the
  // scale), zero-element and odd-sized ones among them and one of several chunks, so that the
  // launches split and the per-chunk / per-tensor workspaces of LAMB and of the norm are
  // addressed through every launch's offsets.
  const std::int64_t sizes[] = {0, 1, 3, 4, 5, 17, 129, 255, 1000, 4097};
  auto shapes_of = [&](int n) {
    std::vector<Shape> s;
    for (int i = 0; i < n; ++i) s.push_back({sizes[i % 10]});
    s[7] = {70001};
    return s;
  };
  const std::vector<Shape> shapes = shapes_of(1700);
  struct Algo {
    const char* name;
    trainrt::optim::HyperParams h;
    bool copies;
  };
  for (const Algo& a : {Algo{"Adam", {{"lr", 0.01}, {"amsgrad", 1}, {"weight_decay", 0.1}}, true},
                        Algo{"LAMB", {{"lr", 0.01}, {"weight_decay", 0.01}}, true},
                        Algo{"SGD", {{"lr", 0.05}, {"momentum", 0.9}}, false}}) {
    SCOPED_TRACE(a.name);
    std::vector<trainrt::Parameter> pc, pg;
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      pc.push_back(trainrt_test::formula_param(shapes[p], static_cast<int>(p), cpu));
      pg.push_back(trainrt_test::formula_param(shapes[p], static_cast<int>(p), gpu));
      if (a.copies && p % 3 == 1) {
        pc[p].set_model_copy(Tensor::empty(shapes[p], DType::bf16, cpu));
        pg[p].set_model_copy(Tensor::empty(shapes[p], DType::bf16, gpu));
      }
    }
    auto oc = trainrt::optim::make_optimizer(a.name, {trainrt::optim::ParamGroup(pc)}, a.h);
    auto og = trainrt::optim::make_optimizer(a.name, {trainrt::optim::ParamGroup(pg)}, a.h);
    for (int k = 0; k < 4; ++k) {
      for (std::size_t p = 0; p < shapes.size(); ++p) {
        trainrt_test::set_formula_grad(pc[p], static_cast<int>(p), k);
        trainrt_test::set_formula_grad(pg[p], static_cast<int>(p), k);
      }
      oc->step();
      og->step();
    }
    int bad = 0;
    for (std::size_t p = 0; p < shapes.size() && bad < 5; ++p) {
      const std::vector<float> c = trainrt_test::host_f32(pc[p].value());
      const std::int64_t i =
          trainrt_test::first_mismatch(trainrt_test::host_f32(pg[p].value()),
                                       std::vector<double>(c.begin(), c.end()), 1e-5, 1e-6);
      if (i >= 0) ADD_FAILURE() << "param " << p << " element " << i << " (" << ++bad << ")";
      EXPECT_EQ(oc->step_count(pc[p]), og->step_count(pg[p])) << "param " << p;
      if (a.copies && p % 3 == 1) {
        EXPECT_EQ(pg[p].model_copy().to(DType::f32).to_vector<float>(),
                  pg[p].value().to(DType::bf16).to(DType::f32).to_vector<float>())
            << "model copy of param " << p;
      }
    }
  }

  // clip_grad_norm_ (multi_tensor_norm, then multi_tensor_scale) over 3400 grads of mixed
  // dtypes: 1700 f32 ones (more than one launch), the rest f16 / bf16 / f64.
  const std::vector<Shape> nshapes = shapes_of(3400);
  const DType dts[] = {DType::f32, DType::f16, DType::f32, DType::bf16, DType::f64, DType::f32};
  for (double p : {2.0, kInf, 1.0}) {
    SCOPED_TRACE("norm_type " + std::to_string(p));
    std::vector<trainrt::Parameter> pc, pg;
    std::vector<DType> dt;
    for (std::size_t i = 0; i < nshapes.size(); ++i) {
      dt.push_back(i < 1200 ? DType::f32 : dts[i % 6]);
      const std::int64_t n = trainrt::shape_numel(nshapes[i]);
      const std::vector<double> g =
          uniform(static_cast<std::size_t>(n), -1, 1, static_cast<unsigned>(7 + i));
      for (auto* v : {&pc, &pg}) {
        const Device d = v == &pc ? cpu : gpu;
        trainrt::Parameter q(make_tensor(std::vector<double>(g.size(), 0.5), nshapes[i], dt[i], d));
        q.set_grad(make_tensor(g, nshapes[i], dt[i], d));
        v->push_back(q);
      }
    }
    const double tc = trainrt::clip_grad_norm_(pc, 0.5, p).item();
    const double tg = trainrt::clip_grad_norm_(pg, 0.5, p).item();
    EXPECT_NEAR(tg, tc, 1e-6 * tc);
    int bad = 0;
    for (std::size_t i = 0; i < nshapes.size() && bad < 5; ++i) {
      const std::vector<double> a = pc[i].grad().to_double_vector();
      const std::vector<double> b = pg[i].grad().to_double_vector();
      ASSERT_EQ(a.size(), b.size());
      for (std::size_t j = 0; j < a.size(); ++j) {
        if (!(std::fabs(b[j] - a[j]) <= tol(dt[i]) * std::fabs(a[j]) + 1e-30)) {
          ADD_FAILURE() << "grad " << i << " (" << trainrt::dtype_name(dt[i]) << ") element " << j
                        << ": " << b[j] << " vs " << a[j];
          ++bad;
          break;
        }
      }
    }
  }
}

}  // namespace
