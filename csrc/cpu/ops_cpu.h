// CPU implementations of the lenskit ops (registered in csrc/ops.cpp).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace lenskit {

at::Tensor entropy_cpu(const at::Tensor& logits);
// (entropy, logsumexp) of every row from the same pass; entropy equals entropy_cpu's bit for bit.
std::tuple<at::Tensor, at::Tensor> entropy_lse_cpu(const at::Tensor& logits);
at::Tensor kl_div_cpu(const at::Tensor& p_logits, const at::Tensor& q_logits);
at::Tensor pairwise_kl_cpu(const at::Tensor& p_logits, const at::Tensor& q_logits);
// out[m, j] = #{v : logits[m, v] > thresholds[m, j]} as int32 [M, n] (see csrc/ops.cpp).
at::Tensor count_above_cpu(const at::Tensor& logits, const at::Tensor& thresholds);
// Name of the kernel set the next call will use: "avx512", "avx2" or "scalar".
std::string cpu_isa();
// Whether the next entropy / kl_div call runs the prefetching kernels (see cpu::use_prefetch).
bool cpu_prefetch();

}  // namespace lenskit
