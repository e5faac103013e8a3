// A data error found while a kernel runs (an out-of-range class index, a BCE input outside
// [0, 1]). Kernels never assert: they record the first bad element here and leave the row
// or element harmless; the host turns the record into a trainrt::Error message.
#pragma once

#include <stdint.h>
#include <stdio.h>

namespace trainrt {

enum DataErrorCode : int32_t { kDataErrNone = 0, kDataErrTargetRange = 1, kDataErrProbRange = 2 };
enum DataErrorOp : int32_t { kOpCrossEntropy = 0, kOpNllLoss = 1, kOpBce = 2 };

struct DataError {
  int32_t code;    // DataErrorCode
  int32_t op;      // DataErrorOp
  int64_t index;   // row (targets) or element (probabilities)
  int64_t limit;   // number of classes
  double value;    // the bad value (a probability)
  int64_t target;  // the bad class index (exact: a double rounds 2^53 + 1 and INT64_MAX)
};

static inline const char* data_error_op_name(int32_t op) {
  switch (op) {
    case kOpCrossEntropy: return "cross_entropy";
    case kOpNllLoss: return "nll_loss";
    case kOpBce: return "binary_cross_entropy";
  }
  return "loss";
}

/// Formats the record; returns the number of characters written (snprintf semantics).
static inline int format_data_error(const DataError& e, char* buf, size_t len) {
  switch (e.code) {
    case kDataErrTargetRange:
      return snprintf(buf, len, "%s: target %lld is out of bounds for %lld classes (row %lld)",
                      data_error_op_name(e.op), (long long)e.target, (long long)e.limit,
                      (long long)e.index);
    case kDataErrProbRange:
      return snprintf(buf, len, "%s: input must be in [0, 1], got %g at element %lld",
                      data_error_op_name(e.op), e.value, (long long)e.index);
  }
  return snprintf(buf, len, "no data error");
}

}  // namespace trainrt
