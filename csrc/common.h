// Shared by every backend of the lenskit ops (csrc/ops.cpp, csrc/cpu/, csrc/cuda/):
// argument checks with messages that name what was passed, and the [rows, V] view of an input.
//
// Every kernel registered for lenskit::entropy / kl_div / pairwise_kl / count_above should start
// with the matching check_* call below, so that all backends reject bad input with the same words.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lenskit {

// "torch.float32"-style name of a dtype, as Python prints it.
inline std::string dtype_name(at::ScalarType t) {
  return std::string("torch.") + std::string(c10::getDtypeNames(t).first);
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// Checks one logits tensor: a float32/float16/bfloat16 tensor with at least one dimension.
// Throws TypeError (dtype) or ValueError (0-d) on the Python side.
inline void check_logits(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.defined(), "lenskit.", op, ": ", name, " is an undefined tensor");
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()), "lenskit.", op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", dtype_name(x.scalar_type()),
                   " (shape ", x.sizes(), ")");
  TORCH_CHECK_VALUE(x.dim() >= 1, "lenskit.", op, ": ", name,
                    " must have at least 1 dimension (the vocabulary), got a 0-d tensor");
}

inline void check_same_device(const char* op, const at::Tensor& p, const at::Tensor& q) {
  TORCH_CHECK_VALUE(p.device() == q.device(), "lenskit.", op, ": p_logits is on ", p.device(),
                    " but q_logits is on ", q.device());
}

// kl_div: both logits valid, same device, same shape (dtypes may differ).
inline void check_kl_div_args(const at::Tensor& p, const at::Tensor& q) {
  check_logits("kl_div", "p_logits", p);
  check_logits("kl_div", "q_logits", q);
  check_same_device("kl_div", p, q);
  TORCH_CHECK_VALUE(p.sizes() == q.sizes(),
                    "lenskit.kl_div: p_logits and q_logits must have the same shape, got ",
                    p.sizes(), " and ", q.sizes());
}

// pairwise_kl: p [N, V] and q [M, V], same device (dtypes may differ).
inline void check_pairwise_kl_args(const at::Tensor& p, const at::Tensor& q) {
  check_logits("pairwise_kl", "p_logits", p);
  check_logits("pairwise_kl", "q_logits", q);
  check_same_device("pairwise_kl", p, q);
  TORCH_CHECK_VALUE(p.dim() == 2 && q.dim() == 2 && p.size(1) == q.size(1),
                    "lenskit.pairwise_kl: needs p_logits [N, V] and q_logits [M, V] with the same "
                    "V, got ",
                    p.sizes(), " and ", q.sizes());
}

// count_above: logits [M, V] (float32/float16/bfloat16), thresholds [M, n] of float32 or the
// logits' dtype, same device; V <= INT32_MAX (the counts are int32).
inline void check_count_above_args(const at::Tensor& x, const at::Tensor& t) {
  check_logits("count_above", "logits", x);
  TORCH_CHECK_VALUE(t.defined(), "lenskit.count_above: thresholds is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == x.scalar_type(),
                   "lenskit.count_above: thresholds must be torch.float32 or the dtype of logits (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(t.scalar_type()), " (shape ",
                   t.sizes(), ")");
  TORCH_CHECK_VALUE(x.device() == t.device(), "lenskit.count_above: logits is on ", x.device(),
                    " but thresholds is on ", t.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && t.dim() == 2 && x.size(0) == t.size(0),
                    "lenskit.count_above: needs logits [M, V] and thresholds [M, n] with the same "
                    "M, got ",
                    x.sizes(), " and ", t.sizes());
  TORCH_CHECK_VALUE(x.size(1) <= INT32_MAX, "lenskit.count_above: the last dim of logits (",
                    x.size(1), ") is too long for int32 counts");
}

// Product of all dimensions but the last (works when V == 0, unlike reshape(-1, V)).
inline int64_t num_rows(const at::Tensor& x) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return rows;
}

// Output shape of a per-row reduction: x.shape[:-1].
inline std::vector<int64_t> lead_shape(const at::Tensor& x) {
  auto s = x.sizes();
  return std::vector<int64_t>(s.begin(), s.end() - 1);
}

// x as a [rows, V] tensor whose last dim has stride 1 (a view when possible, else a copy);
// rows may have any stride. Requires num_rows(x) > 0 and V > 0.
inline at::Tensor as_rows(const at::Tensor& x) {
  const int64_t v = x.size(-1);
  at::Tensor r = x.reshape({num_rows(x), v});
  if (v > 1 && r.stride(1) != 1) r = r.contiguous();
  return r;
}

}  // namespace lenskit
