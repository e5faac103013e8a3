// DTypes, the f16/bf16 conversions and Tensor basics.
//
// The 16-bit conversions are checked three ways: hand-computed bit patterns for the cases
// that matter (ties, subnormals, overflow, NaN, signed zero), an exhaustive f16 -> float ->
// f16 round trip against a plain decoder, and float -> f16/bf16 against a reference that
// finds the nearest representable value by search in double (not by bit tricks).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "test_util.hpp"

namespace {

using trainrt::BFloat16;
using trainrt::Device;
using trainrt::DType;
using trainrt::Half;
using trainrt::Tensor;
using trainrt_test::BackendTest;

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- independent references ------------------------------------------------------------

/// Value of an f16 bit pattern, decoded from the IEEE binary16 definition.
double f16_value(std::uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) {
    v = std::ldexp(static_cast<double>(m), -24);
  } else if (e == 31) {
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else {
    v = std::ldexp(static_cast<double>(1024 + m), e - 25);
  }
  return s ? -v : v;
}

/// Nearest f16 to a finite v, ties to the even pattern, by binary search over the values.
std::uint16_t f16_nearest(double v) {
  const std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  // Above the largest finite value plus half an ulp (65504 + 16): infinity.
  if (a >= 65520.0) return sign | 0x7c00;
  int lo = 0, hi = 0x7bff;  // largest h with f16_value(h) <= a
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (f16_value(static_cast<std::uint16_t>(mid)) <= a) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int h = lo;
  const double below = f16_value(static_cast<std::uint16_t>(h));
  const double above = h == 0x7bff ? 65536.0 : f16_value(static_cast<std::uint16_t>(h + 1));
  const double d1 = a - below, d2 = above - a;
  int r;
  if (d1 < d2) {
    r = h;
  } else if (d2 < d1) {
    r = h + 1;
  } else {
    r = (h % 2 == 0) ? h : h + 1;
  }
  return static_cast<std::uint16_t>(sign | r);
}

/// Nearest bf16 to a finite float, ties to even, comparing distances in double.
std::uint16_t bf16_nearest(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint32_t sign = u & 0x80000000u;
  const std::uint32_t mag = u & 0x7fffffffu;
  const std::uint32_t lo = mag & 0xffff0000u;  // toward zero
  const std::uint32_t hi = lo + 0x10000u;      // away from zero (0x7f800000 is infinity)
  const double a = std::fabs(static_cast<double>(f));
  const double vlo = static_cast<double>(bits_to_float(lo));
  const double vhi =
      hi == 0x7f800000u ? std::ldexp(1.0, 128) : static_cast<double>(bits_to_float(hi));
  std::uint32_t r;
  if (a - vlo < vhi - a) {
    r = lo;
  } else if (vhi - a < a - vlo) {
    r = hi;
  } else {
    r = ((lo >> 16) & 1u) == 0 ? lo : hi;
  }
  return static_cast<std::uint16_t>((sign | r) >> 16);
}

bool f16_is_nan(std::uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0; }

// ---- dtype -------------------------------------------------------------------------------

TEST(DType, SizesNamesAndKinds) {
  struct Case {
    DType t;
    std::size_t size;
    const char* name;
    bool floating;
  };
  const Case cases[] = {{DType::f32, 4, "f32", true},   {DType::f16, 2, "f16", true},
                        {DType::bf16, 2, "bf16", true}, {DType::f64, 8, "f64", true},
                        {DType::i32, 4, "i32", false},  {DType::i64, 8, "i64", false},
                        {DType::u8, 1, "u8", false}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(trainrt::dtype_size(c.t), c.size);
    EXPECT_STREQ(trainrt::dtype_name(c.t), c.name);
    EXPECT_EQ(trainrt::is_floating(c.t), c.floating);
    EXPECT_EQ(trainrt::parse_dtype(c.name), c.t);
  }
  EXPECT_EQ(sizeof(Half), 2u);
  EXPECT_EQ(sizeof(BFloat16), 2u);
}

TEST(DType, ParseSpellings) {
  const std::pair<const char*, DType> cases[] = {
      {"float32", DType::f32}, {"f16", DType::f16},       {"half", DType::f16},
      {"bf16", DType::bf16},   {"bfloat16", DType::bf16}, {"f64", DType::f64},
      {"i32", DType::i32},     {"i64", DType::i64},       {"u8", DType::u8}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.first);
    EXPECT_EQ(trainrt::parse_dtype(c.first), c.second);
  }
  for (const char* bad : {"", "f8", "F32", "float128", "int"}) {
    SCOPED_TRACE(bad);
    try {
      trainrt::parse_dtype(bad);
      ADD_FAILURE() << "parse_dtype accepted '" << bad << "'";
    } catch (const trainrt::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos)
          << e.what();
    }
  }
}

// ---- f16 ---------------------------------------------------------------------------------

TEST(Half, HandComputedBitPatterns) {
  struct Case {
    float in;
    std::uint16_t bits;
    const char* what;
  };
  const float sub = std::ldexp(1.0f, -24);  // smallest f16 subnormal
  const Case cases[] = {
      {1.0f, 0x3c00, "one"},
      {-2.0f, 0xc000, "minus two"},
      {0.5f, 0x3800, "half"},
      {0.1f, 0x2e66, "0.1 rounds down"},
      {1.0f / 3.0f, 0x3555, "1/3"},
      {65504.0f, 0x7bff, "largest finite"},
      {65519.99f, 0x7bff, "just below the overflow threshold"},
      {65520.0f, 0x7c00, "tie at the overflow threshold goes to infinity (even)"},
      {1e6f, 0x7c00, "overflow"},
      {-1e6f, 0xfc00, "negative overflow"},
      {std::numeric_limits<float>::infinity(), 0x7c00, "+inf"},
      {-std::numeric_limits<float>::infinity(), 0xfc00, "-inf"},
      {0.0f, 0x0000, "+0"},
      {-0.0f, 0x8000, "-0"},
      {1.0f + std::ldexp(1.0f, -11), 0x3c00, "tie between 1 and 1+2^-10 goes to even 1"},
      {1.0f + 3 * std::ldexp(1.0f, -11), 0x3c02, "tie between odd 0x3c01 and 0x3c02 goes up"},
      {1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20), 0x3c01, "just above a tie"},
      {1.0f + std::ldexp(1.0f, -11) - std::ldexp(1.0f, -20), 0x3c00, "just below a tie"},
      {sub, 0x0001, "smallest subnormal"},
      {1023 * sub, 0x03ff, "largest subnormal"},
      {std::ldexp(1.0f, -14), 0x0400, "smallest normal"},
      {std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25), 0x0400, "tie below the smallest normal"},
      {sub / 2, 0x0000, "half the smallest subnormal ties to zero"},
      {std::nextafter(sub / 2, 1.0f), 0x0001, "just above half the smallest subnormal"},
      {-sub / 4, 0x8000, "underflow keeps the sign"},
      {1.5f * sub, 0x0002, "subnormal tie 1.5 goes to even 2"},
      {2.5f * sub, 0x0002, "subnormal tie 2.5 goes to even 2"},
      {3.5f * sub, 0x0004, "subnormal tie 3.5 goes to even 4"},
      {1e-8f, 0x0000, "far below the subnormals"},
      {-3.0e-5f, 0x81f7, "negative subnormal"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(trainrt::to_half(c.in).bits, c.bits) << "input " << c.in;
    // And back: every one of these patterns is an exact value.
    const float back = trainrt::to_float(Half{c.bits});
    EXPECT_EQ(static_cast<double>(back), f16_value(c.bits));
    EXPECT_EQ(std::signbit(back), (c.bits & 0x8000) != 0);
  }
}

TEST(Half, NaNStaysNaN) {
  const std::uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fbfffffu, 0x7f802000u};
  for (std::uint32_t n : nans) {
    SCOPED_TRACE(n);
    const std::uint16_t h = trainrt::to_half(bits_to_float(n)).bits;
    EXPECT_TRUE(f16_is_nan(h)) << std::hex << h;
    const std::uint16_t b = trainrt::to_bfloat16(bits_to_float(n)).bits;
    EXPECT_TRUE(bf16_is_nan(b)) << std::hex << b;
  }
  EXPECT_TRUE(std::isnan(trainrt::to_float(Half{0x7e00})));
  EXPECT_TRUE(std::isnan(trainrt::to_float(Half{0x7c01})));
  EXPECT_TRUE(std::isnan(trainrt::to_float(BFloat16{0x7fc0})));
  EXPECT_TRUE(std::isnan(trainrt::to_float(BFloat16{0x7f81})));
}

TEST(Half, EveryPatternRoundTripsThroughFloat) {
  int mismatches = 0;
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = trainrt::to_float(Half{bits});
    const double want = f16_value(bits);
    if (f16_is_nan(bits)) {
      // NaN stays NaN (signalling NaNs are quieted); quiet NaNs keep their bits.
      const std::uint16_t back = trainrt::to_half(f).bits;
      if (!std::isnan(f) || !f16_is_nan(back) || ((bits & 0x200) && back != bits)) {
        if (++mismatches < 10) ADD_FAILURE() << "NaN pattern " << std::hex << h;
      }
      continue;
    }
    const std::uint16_t back = trainrt::to_half(f).bits;
    if (static_cast<double>(f) != want || std::signbit(f) != ((bits & 0x8000) != 0) ||
        back != bits) {
      if (++mismatches < 10) {
        ADD_FAILURE() << "pattern 0x" << std::hex << h << ": float " << f << " (want " << want
                      << "), back 0x" << back;
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Half, FloatToHalfIsNearestEven) {
  // Every f16 value, every midpoint between neighbours (exact in float), and the floats
  // right next to each midpoint; then random floats over the whole f16 range and beyond.
  std::vector<float> probes;
  for (int h = 0; h < 0x7bff; ++h) {
    const double a = f16_value(static_cast<std::uint16_t>(h));
    const double b = f16_value(static_cast<std::uint16_t>(h + 1));
    const auto mid = static_cast<float>((a + b) / 2);
    ASSERT_EQ(static_cast<double>(mid), (a + b) / 2);
    for (float v :
         {static_cast<float>(a), mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      probes.push_back(v);
      probes.push_back(-v);
    }
  }
  probes.push_back(65520.0f);
  probes.push_back(std::nextafter(65520.0f, 0.0f));
  std::mt19937 g(7);
  std::uniform_int_distribution<std::uint32_t> bits(0, 0x7f7fffffu);
  for (int i = 0; i < 200000; ++i) {
    const float f = bits_to_float(bits(g));
    if (std::fabs(f) < 1e6f) probes.push_back(i % 2 ? f : -f);
  }
  int mismatches = 0;
  for (float v : probes) {
    const std::uint16_t got = trainrt::to_half(v).bits;
    const std::uint16_t want = f16_nearest(static_cast<double>(v));
    if (got != want && ++mismatches < 10) {
      ADD_FAILURE() << "to_half(" << v << ") = 0x" << std::hex << got << ", want 0x" << want;
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << probes.size();
}

// ---- bf16 --------------------------------------------------------------------------------

TEST(BFloat16, HandComputedBitPatterns) {
  struct Case {
    float in;
    std::uint16_t bits;
    const char* what;
  };
  const Case cases[] = {
      {1.0f, 0x3f80, "one"},
      {-2.0f, 0xc000, "minus two"},
      {0.1f, 0x3dcd, "0.1 (0x3dcccccd) rounds up"},
      {1.0f + std::ldexp(1.0f, -8), 0x3f80, "tie between 1 and 1+2^-7 goes to even 1"},
      {1.0f + 3 * std::ldexp(1.0f, -8), 0x3f82, "tie between odd 0x3f81 and 0x3f82 goes up"},
      {1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20), 0x3f81, "just above a tie"},
      {bits_to_float(0x7f7f0000u), 0x7f7f, "largest finite bf16"},
      {bits_to_float(0x7f7f7fffu), 0x7f7f, "just below the overflow tie"},
      {bits_to_float(0x7f7f8000u), 0x7f80, "overflow tie goes to infinity (even)"},
      {std::numeric_limits<float>::max(), 0x7f80, "float max overflows"},
      {-std::numeric_limits<float>::max(), 0xff80, "-float max overflows"},
      {std::numeric_limits<float>::infinity(), 0x7f80, "+inf"},
      {-std::numeric_limits<float>::infinity(), 0xff80, "-inf"},
      {0.0f, 0x0000, "+0"},
      {-0.0f, 0x8000, "-0"},
      {bits_to_float(0x00018000u), 0x0002, "subnormal tie from odd goes up"},
      {bits_to_float(0x00028000u), 0x0002, "subnormal tie from even stays"},
      {bits_to_float(0x000116c2u), 0x0001, "subnormal rounds down"},
      {bits_to_float(0x80007fffu), 0x8000, "tiny negative underflows to -0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(trainrt::to_bfloat16(c.in).bits, c.bits) << "input " << c.in;
    const float back = trainrt::to_float(BFloat16{c.bits});
    EXPECT_EQ(float_to_bits(back), static_cast<std::uint32_t>(c.bits) << 16);
  }
}

TEST(BFloat16, FloatToBFloat16IsNearestEven) {
  std::vector<float> probes;
  for (std::uint32_t b = 0; b < 0x7f80; ++b) {
    const std::uint32_t base = b << 16;
    for (std::uint32_t u : {base, base | 0x8000u, base | 0x7fffu, base | 0x8001u}) {
      probes.push_back(bits_to_float(u));
      probes.push_back(bits_to_float(u | 0x80000000u));
    }
  }
  std::mt19937 g(11);
  std::uniform_int_distribution<std::uint32_t> bits(0, 0x7f7fffffu);
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t u = bits(g) | (i % 2 ? 0x80000000u : 0u);
    probes.push_back(bits_to_float(u));
  }
  int mismatches = 0;
  for (float v : probes) {
    const std::uint16_t got = trainrt::to_bfloat16(v).bits;
    const std::uint16_t want = bf16_nearest(v);
    if (got != want && ++mismatches < 10) {
      ADD_FAILURE() << "to_bfloat16(0x" << std::hex << float_to_bits(v) << ") = 0x" << got
                    << ", want 0x" << want;
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << probes.size();
  // Every bf16 pattern is a float: the round trip is exact (NaNs stay NaN).
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const auto bits16 = static_cast<std::uint16_t>(b);
    const float f = trainrt::to_float(BFloat16{bits16});
    if (bf16_is_nan(bits16)) {
      ASSERT_TRUE(std::isnan(f));
      continue;
    }
    ASSERT_EQ(trainrt::to_bfloat16(f).bits, bits16) << std::hex << b;
  }
}

// ---- Tensor ------------------------------------------------------------------------------

class TensorTest : public BackendTest {};

template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const trainrt::Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_CONTAINS(stmt, ...)                                                      \
  do {                                                                                        \
    const std::string msg_ = error_message([&] { stmt; });                                    \
    EXPECT_FALSE(msg_.empty()) << #stmt " did not throw trainrt::Error";                      \
    for (const char* part_ : {__VA_ARGS__}) {                                                 \
      EXPECT_NE(msg_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << msg_; \
    }                                                                                         \
  } while (0)

TEST_P(TensorTest, CreateEmptyAndZeros) {
  const Tensor e = Tensor::empty({2, 3}, DType::f32, dev);
  EXPECT_TRUE(e.defined());
  EXPECT_EQ(e.shape(), (trainrt::Shape{2, 3}));
  EXPECT_EQ(e.dim(), 2);
  EXPECT_EQ(e.size(0), 2);
  EXPECT_EQ(e.size(-1), 3);
  EXPECT_EQ(e.numel(), 6);
  EXPECT_EQ(e.nbytes(), 24u);
  EXPECT_EQ(e.dtype(), DType::f32);
  EXPECT_EQ(e.device(), dev);
  EXPECT_NE(e.data(), nullptr);
  if (dev.is_cpu()) EXPECT_EQ(e.str(), "Tensor[2, 3] f32 cpu");

  for (DType t :
       {DType::f32, DType::f16, DType::bf16, DType::f64, DType::i32, DType::i64, DType::u8}) {
    SCOPED_TRACE(trainrt::dtype_name(t));
    const Tensor z = Tensor::zeros({3, 5}, t, dev);
    EXPECT_EQ(z.nbytes(), 15 * trainrt::dtype_size(t));
    for (double v : z.to_double_vector()) ASSERT_EQ(v, 0.0);
  }
  // 0-d (one element) and zero-element tensors.
  const Tensor s = Tensor::zeros({}, DType::f64, dev);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.item(), 0.0);
  const Tensor n = Tensor::zeros({0, 4}, DType::f32, dev);
  EXPECT_EQ(n.numel(), 0);
  EXPECT_EQ(n.nbytes(), 0u);
  EXPECT_TRUE(n.to_vector<float>().empty());
  EXPECT_EQ(n.clone().shape(), (trainrt::Shape{0, 4}));
  EXPECT_EQ(n.to(DType::f16).numel(), 0);

  EXPECT_ERROR_CONTAINS(Tensor::empty({2, -1}, DType::f32, dev), "[2, -1]", ">= 0");
  EXPECT_ERROR_CONTAINS(e.size(2), "dimension 2", "2-d");
  EXPECT_ERROR_CONTAINS(e.size(-3), "dimension -3");
}

TEST_P(TensorTest, FromVectorToVectorEveryDType) {
  const std::vector<float> f = {1.5f, -2.25f, 3e-8f, 1e30f, -0.0f, 7.0f};
  EXPECT_EQ(Tensor::from_vector(f, {2, 3}, dev).to_vector<float>(), f);
  const std::vector<double> d = {1.0 / 3.0, -1e300, 5e-324, 0.0, 2.5, -7.0};
  EXPECT_EQ(Tensor::from_vector(d, {3, 2}, dev).to_vector<double>(), d);
  const std::vector<std::int32_t> i32 = {0, -1, 2147483647, -2147483647 - 1};
  EXPECT_EQ(Tensor::from_vector(i32, {4}, dev).to_vector<std::int32_t>(), i32);
  const std::vector<std::int64_t> i64 = {0, -1, (std::int64_t{1} << 62) + 1, -5};
  EXPECT_EQ(Tensor::from_vector(i64, {2, 2}, dev).to_vector<std::int64_t>(), i64);
  const std::vector<std::uint8_t> u8 = {0, 1, 128, 255};
  EXPECT_EQ(Tensor::from_vector(u8, {4}, dev).to_vector<std::uint8_t>(), u8);
  const std::vector<Half> h = {Half{0x3c00}, Half{0x8001}, Half{0x7bff}, Half{0xfc00}};
  const auto hb = Tensor::from_vector(h, {4}, dev).to_vector<Half>();
  for (std::size_t i = 0; i < h.size(); ++i) EXPECT_EQ(hb[i].bits, h[i].bits);
  const std::vector<BFloat16> b = {BFloat16{0x3f80}, BFloat16{0x8001}, BFloat16{0x7f7f}};
  const auto bb = Tensor::from_vector(b, {3}, dev).to_vector<BFloat16>();
  for (std::size_t i = 0; i < b.size(); ++i) EXPECT_EQ(bb[i].bits, b[i].bits);

  // to_double_vector converts any dtype.
  EXPECT_EQ(Tensor::from_vector(i64, {4}, dev).to_double_vector(),
            (std::vector<double>{0, -1, static_cast<double>((std::int64_t{1} << 62) + 1), -5}));
  EXPECT_EQ(Tensor::from_vector(h, {4}, dev).to_double_vector(),
            (std::vector<double>{1.0, -std::ldexp(1.0, -24), 65504.0,
                                 -std::numeric_limits<double>::infinity()}));

  // Errors: wrong number of values, wrong element type on read.
  EXPECT_ERROR_CONTAINS(Tensor::from_vector(f, {5}, dev), "[5]", "5 values", "got 6");
  const Tensor t = Tensor::from_vector(f, {6}, dev);
  EXPECT_ERROR_CONTAINS(t.to_vector<double>(), "f64", "f32");
  EXPECT_ERROR_CONTAINS(t.to_vector<Half>(), "f16", "f32");
  EXPECT_ERROR_CONTAINS(Tensor::from_vector(i32, {4}, dev).to_vector<std::int64_t>(), "i64", "i32");
  std::vector<float> small(3);
  EXPECT_ERROR_CONTAINS(t.copy_to_host(small.data(), 12), "12 bytes", "24");
}

TEST_P(TensorTest, Item) {
  EXPECT_EQ(Tensor::from_vector(std::vector<float>{2.5f}, {}, dev).item(), 2.5);
  EXPECT_EQ(Tensor::from_vector(std::vector<std::int64_t>{-7}, {1, 1}, dev).item(), -7.0);
  EXPECT_EQ(Tensor::from_vector(std::vector<Half>{Half{0xc000}}, {1}, dev).item(), -2.0);
  EXPECT_TRUE(std::isnan(Tensor::from_vector(std::vector<double>{std::nan("")}, {}, dev).item()));
  const Tensor v = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}, dev);
  EXPECT_ERROR_CONTAINS(v.item(), "3 elements", "expected 1");
  EXPECT_ERROR_CONTAINS(Tensor::zeros({0}, DType::f32, dev).item(), "0 elements");
  EXPECT_ERROR_CONTAINS(Tensor().item(), "expected 1");
}

TEST_P(TensorTest, ReshapeSharesStorage) {
  const std::vector<float> f = {1, 2, 3, 4, 5, 6};
  Tensor t = Tensor::from_vector(f, {2, 3}, dev);
  Tensor r = t.reshape({3, 2});
  EXPECT_EQ(r.shape(), (trainrt::Shape{3, 2}));
  EXPECT_EQ(r.to_vector<float>(), f);
  EXPECT_EQ(t.reshape({6}).shape(), (trainrt::Shape{6}));
  EXPECT_EQ(t.reshape({1, 6, 1}).dim(), 3);
  // Same storage: writing through the view changes the original.
  r.zero_();
  EXPECT_EQ(t.to_vector<float>(), std::vector<float>(6, 0.0f));
  r.copy_(Tensor::from_vector(f, {3, 2}, dev));
  EXPECT_EQ(t.to_vector<float>(), f);

  EXPECT_ERROR_CONTAINS(t.reshape({4}), "[4]", "6 elements");
  EXPECT_ERROR_CONTAINS(t.reshape({7, -1}), "[7, -1]");
  EXPECT_EQ(t.shape(), (trainrt::Shape{2, 3}));  // unchanged by the failed reshapes
}

TEST_P(TensorTest, CloneCopyZero) {
  const std::vector<double> d = {1, -2, 3.5, 4, 5, 6};
  Tensor t = Tensor::from_vector(d, {2, 3}, dev);
  Tensor c = t.clone();
  EXPECT_EQ(c.device(), dev);
  EXPECT_EQ(c.dtype(), DType::f64);
  EXPECT_EQ(c.shape(), t.shape());
  EXPECT_NE(c.data(), t.data());
  c.zero_();
  EXPECT_EQ(t.to_vector<double>(), d);  // independent storage
  EXPECT_EQ(c.to_vector<double>(), std::vector<double>(6, 0.0));

  // copy_ from the same device, from the CPU, and into a CPU tensor.
  c.copy_(t);
  EXPECT_EQ(c.to_vector<double>(), d);
  Tensor host_src = Tensor::from_vector(std::vector<double>{6, 5, 4, 3, 2, 1}, {2, 3});
  c.copy_(host_src);
  EXPECT_EQ(c.to_vector<double>(), (std::vector<double>{6, 5, 4, 3, 2, 1}));
  Tensor host_dst = Tensor::zeros({2, 3}, DType::f64);
  host_dst.copy_(t);
  EXPECT_EQ(host_dst.to_vector<double>(), d);

  EXPECT_ERROR_CONTAINS(c.copy_(Tensor::zeros({3, 2}, DType::f64, dev)), "[3, 2]", "[2, 3]");
  EXPECT_ERROR_CONTAINS(c.copy_(Tensor::zeros({2, 3}, DType::f32, dev)), "f32", "f64");
  EXPECT_EQ(c.to_vector<double>(), (std::vector<double>{6, 5, 4, 3, 2, 1}));
}

TEST_P(TensorTest, ToDevice) {
  const std::vector<float> f = {1, 2, 3, -4};
  const Tensor t = Tensor::from_vector(f, {2, 2}, dev);
  const Tensor h = t.to(Device::cpu());
  EXPECT_TRUE(h.device().is_cpu());
  EXPECT_EQ(h.to_vector<float>(), f);
  const Tensor back = h.to(dev);
  EXPECT_EQ(back.device(), dev);
  EXPECT_EQ(back.shape(), t.shape());
  EXPECT_EQ(back.to_vector<float>(), f);
  const Tensor same = t.to(dev);
  EXPECT_NE(same.data(), t.data());  // a copy even on the same device
  EXPECT_EQ(same.to_vector<float>(), f);
}

TEST_P(TensorTest, ToDTypeFloats) {
  // f32 -> f16 / bf16 on the device gives the same bits as the host conversions, including
  // ties, subnormals, overflow, signed zero and infinities.
  std::vector<float> v = {1.0f,
                          -0.0f,
                          0.1f,
                          65504.0f,
                          65520.0f,
                          -1e6f,
                          1.0f + std::ldexp(1.0f, -11),
                          1.0f + 3 * std::ldexp(1.0f, -11),
                          1.0f + std::ldexp(1.0f, -8),
                          1.0f + 3 * std::ldexp(1.0f, -8),
                          std::ldexp(1.0f, -25),
                          1.5f * std::ldexp(1.0f, -24),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::max(),
                          bits_to_float(0x00018000u)};
  for (std::uint32_t b = 0; b < 0xffffu; b += 7) v.push_back(bits_to_float(b << 16 | 0x8000u));
  const auto n = static_cast<std::int64_t>(v.size());
  const Tensor t = Tensor::from_vector(v, {n}, dev);
  const auto h = t.to(DType::f16).to_vector<Half>();
  const auto b = t.to(DType::bf16).to_vector<BFloat16>();
  int bad = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (h[i].bits != trainrt::to_half(v[i]).bits && ++bad < 10) {
      ADD_FAILURE() << "f16 of " << v[i] << ": 0x" << std::hex << h[i].bits;
    }
    if (b[i].bits != trainrt::to_bfloat16(v[i]).bits && ++bad < 10) {
      ADD_FAILURE() << "bf16 of " << v[i] << ": 0x" << std::hex << b[i].bits;
    }
  }
  EXPECT_EQ(bad, 0);

  // Every f16 pattern: f16 -> f32 -> f16 through tensors.
  std::vector<Half> all(65536);
  for (std::uint32_t i = 0; i < 65536; ++i) all[i].bits = static_cast<std::uint16_t>(i);
  const Tensor ht = Tensor::from_vector(all, {65536}, dev);
  const auto as_f = ht.to(DType::f32).to_vector<float>();
  const auto round = ht.to(DType::f32).to(DType::f16).to_vector<Half>();
  bad = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto bits = static_cast<std::uint16_t>(i);
    if (f16_is_nan(bits)) {
      if ((!std::isnan(as_f[i]) || !f16_is_nan(round[i].bits)) && ++bad < 10) {
        ADD_FAILURE() << "NaN 0x" << std::hex << i;
      }
      continue;
    }
    if ((static_cast<double>(as_f[i]) != f16_value(bits) || round[i].bits != bits) && ++bad < 10) {
      ADD_FAILURE() << "pattern 0x" << std::hex << i;
    }
  }
  EXPECT_EQ(bad, 0);

  // f32 <-> f64 (exact widening, rounding narrowing), bf16 -> f16 (one rounding).
  const std::vector<double> d = {1.0 / 3.0, 1e-50, -1e50, 0.5};
  const auto f = Tensor::from_vector(d, {4}, dev).to(DType::f32).to_vector<float>();
  for (std::size_t i = 0; i < d.size(); ++i) EXPECT_EQ(f[i], static_cast<float>(d[i]));
  const auto w = Tensor::from_vector(f, {4}, dev).to(DType::f64).to_vector<double>();
  for (std::size_t i = 0; i < d.size(); ++i) EXPECT_EQ(w[i], static_cast<double>(f[i]));
  const std::vector<BFloat16> bv = {BFloat16{0x3f81}, BFloat16{0x4780}, BFloat16{0x0001}};
  const auto hb = Tensor::from_vector(bv, {3}, dev).to(DType::f16).to_vector<Half>();
  EXPECT_EQ(hb[0].bits, 0x3c08);  // 1 + 2^-7 is exact in f16
  EXPECT_EQ(hb[1].bits, 0x7c00);  // 65536 overflows f16
  EXPECT_EQ(hb[2].bits, 0x0000);  // bf16 subnormal is far below f16's range
}

TEST_P(TensorTest, ToDTypeIntegers) {
  const std::vector<float> f = {2.7f, -2.7f, 0.0f, 100.9f, -0.5f};
  EXPECT_EQ(Tensor::from_vector(f, {5}, dev).to(DType::i32).to_vector<std::int32_t>(),
            (std::vector<std::int32_t>{2, -2, 0, 100, 0}));
  EXPECT_EQ(Tensor::from_vector(f, {5}, dev).to(DType::i64).to_vector<std::int64_t>(),
            (std::vector<std::int64_t>{2, -2, 0, 100, 0}));
  EXPECT_EQ(Tensor::from_vector(std::vector<double>{3.9, 255.0, 0.2}, {3}, dev)
                .to(DType::u8)
                .to_vector<std::uint8_t>(),
            (std::vector<std::uint8_t>{3, 255, 0}));
  EXPECT_EQ(Tensor::from_vector(std::vector<std::int64_t>{-3, 16777217}, {2}, dev)
                .to(DType::f32)
                .to_vector<float>(),
            (std::vector<float>{-3.0f, 16777216.0f}));
  EXPECT_EQ(Tensor::from_vector(std::vector<std::uint8_t>{0, 200}, {2}, dev)
                .to(DType::f16)
                .to_double_vector(),
            (std::vector<double>{0.0, 200.0}));
  EXPECT_EQ(Tensor::from_vector(std::vector<std::int32_t>{7, -9}, {2}, dev)
                .to(DType::i64)
                .to_vector<std::int64_t>(),
            (std::vector<std::int64_t>{7, -9}));
}

// Conversions a plain C++ cast leaves undefined, defined once for both backends
// (kernels/common/cast.h): float -> int saturates, NaN -> 0; int -> int wraps as PyTorch does;
// int -> float rounds once.
TEST_P(TensorTest, ToDTypeOutOfRangeAndWrap) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> v = {nan,   inf,  -inf,  3e9,   -3e9,  1e19,
                                 -1e19, -1.0, 300.0, -0.99, 254.99};
  const Tensor t = Tensor::from_vector(v, {static_cast<std::int64_t>(v.size())}, dev);
  const std::int32_t i32max = std::numeric_limits<std::int32_t>::max();
  const std::int32_t i32min = std::numeric_limits<std::int32_t>::min();
  EXPECT_EQ(t.to(DType::i32).to_vector<std::int32_t>(),
            (std::vector<std::int32_t>{0, i32max, i32min, i32max, i32min, i32max, i32min, -1, 300,
                                       0, 254}));
  const std::int64_t i64max = std::numeric_limits<std::int64_t>::max();
  const std::int64_t i64min = std::numeric_limits<std::int64_t>::min();
  EXPECT_EQ(t.to(DType::i64).to_vector<std::int64_t>(),
            (std::vector<std::int64_t>{0, i64max, i64min, 3000000000LL, -3000000000LL, i64max,
                                       i64min, -1, 300, 0, 254}));
  EXPECT_EQ(t.to(DType::u8).to_vector<std::uint8_t>(),
            (std::vector<std::uint8_t>{0, 255, 0, 255, 0, 255, 0, 0, 255, 0, 254}));
  // The same from f32, f16 and bf16 (NaN and the infinities exist in all of them).
  for (DType ft : {DType::f32, DType::f16, DType::bf16}) {
    const Tensor s =
        Tensor::from_vector(std::vector<double>{nan, inf, -inf, -7.5}, {4}, dev).to(ft);
    EXPECT_EQ(s.to(DType::i32).to_vector<std::int32_t>(),
              (std::vector<std::int32_t>{0, i32max, i32min, -7}))
        << dtype_name(ft);
    EXPECT_EQ(s.to(DType::u8).to_vector<std::uint8_t>(), (std::vector<std::uint8_t>{0, 255, 0, 0}))
        << dtype_name(ft);
  }
  // Between integers: modular, exact (no detour through double).
  const std::int64_t big = (std::int64_t{1} << 53) + 1;
  const Tensor w = Tensor::from_vector(
      std::vector<std::int64_t>{300, -1, (std::int64_t{1} << 40) + 5, big, i64min}, {5}, dev);
  EXPECT_EQ(w.to(DType::u8).to_vector<std::uint8_t>(),
            (std::vector<std::uint8_t>{44, 255, 5, 1, 0}));
  EXPECT_EQ(w.to(DType::i32).to_vector<std::int32_t>(),
            (std::vector<std::int32_t>{300, -1, 5, 1, 0}));
  EXPECT_EQ(Tensor::from_vector(std::vector<std::int32_t>{-1, i32min}, {2}, dev)
                .to(DType::i64)
                .to_vector<std::int64_t>(),
            (std::vector<std::int64_t>{-1, i32min}));
  EXPECT_EQ(Tensor::from_vector(std::vector<std::int32_t>{-1, 256 + 7}, {2}, dev)
                .to(DType::u8)
                .to_vector<std::uint8_t>(),
            (std::vector<std::uint8_t>{255, 7}));
  EXPECT_EQ(Tensor::from_vector(std::vector<std::uint8_t>{200, 255}, {2}, dev)
                .to(DType::i32)
                .to_vector<std::int32_t>(),
            (std::vector<std::int32_t>{200, 255}));
  // int -> f32 rounds once: 2^53 + 2^29 + 1 is just above the midpoint between the floats 2^53
  // and 2^53 + 2^30; through double it would round to the midpoint and then down to 2^53.
  const std::int64_t mid = (std::int64_t{1} << 53) + (std::int64_t{1} << 29) + 1;
  EXPECT_EQ(Tensor::from_vector(std::vector<std::int64_t>{mid}, {1}, dev)
                .to(DType::f32)
                .to_vector<float>()[0],
            9007200328482816.0f);  // 2^53 + 2^30
  EXPECT_EQ(Tensor::from_vector(std::vector<std::int64_t>{big}, {1}, dev)
                .to(DType::f64)
                .to_vector<double>()[0],
            9007199254740992.0);  // 2^53 + 1 rounds to even
}

TEST_P(TensorTest, UndefinedTensor) {
  Tensor u;
  EXPECT_FALSE(u.defined());
  EXPECT_EQ(u.numel(), 0);
  EXPECT_EQ(u.data(), nullptr);
  EXPECT_EQ(u.str(), "Tensor(undefined)");
  EXPECT_ERROR_CONTAINS(u.to(dev), "undefined");
  EXPECT_ERROR_CONTAINS(u.to(DType::f16), "undefined");
  EXPECT_ERROR_CONTAINS(u.clone(), "undefined");
  EXPECT_ERROR_CONTAINS(u.reshape({}), "undefined");
  EXPECT_ERROR_CONTAINS(u.zero_(), "undefined");
  EXPECT_ERROR_CONTAINS(u.to_vector<float>(), "undefined");
  EXPECT_ERROR_CONTAINS(u.to_double_vector(), "undefined");
  Tensor d = Tensor::zeros({2}, DType::f32, dev);
  EXPECT_ERROR_CONTAINS(d.copy_(u), "undefined");
  EXPECT_ERROR_CONTAINS(u.copy_(d), "undefined");
}

TRAINRT_INSTANTIATE_BACKENDS(TensorTest);

}  // namespace
