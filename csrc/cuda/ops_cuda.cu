// CUDA kernels for torch.ops.lenskit.{entropy, entropy_lse, kl_div, pairwise_kl}.
//
// The per-row arithmetic (online-softmax states, their update / merge / finish, each thread's
// walk over a row) is in rows.cuh, shared with the CPU emulation of these kernels in
// tests/cuda_emulation/; this file holds the reductions across threads, the kernels, their
// launch configuration and the host side.
//
// Thread states are merged with warp shuffles (butterfly) and, across warps, through shared
// memory (one slot per warp, merged by warp 0).
//
// Launch configuration (chosen per call from V, the row count and the SM count):
//   * Row addressing: rows are base + r * row_stride (any row stride, even 0), so views such as
//     x[:, 1:] or x[:, ::2, :] are read in place; only a non-unit stride on the last dim or
//     leading dims that cannot be collapsed into one stride trigger a .contiguous() copy.
//   * Loads: 16 bytes per load (float4 for fp32, 8 x half/bf16 for 16-bit). A row whose base is
//     not 16-byte aligned (x[:, 1:], odd row strides) reads its first few elements and its tail
//     with scalar loads; the body is vectorised. For kl_div the vector path needs p and q to
//     share the same misalignment; otherwise that row is read with (coalesced) scalar loads.
//   * Small rows (<= 128 vectors, or <= 512 vectors when there are enough rows to fill the GPU):
//     one warp per row, 8 rows per 256-thread block -- a whole block on a short row would leave
//     most threads idle and pay a block-wide reduction per row.
//   * Larger rows: one block per row, 256 threads up to 8192 vectors per row (V = 32768 fp32 /
//     65536 half), 1024 threads above that (V = 128256 .. 262144 and beyond), so each thread
//     reads roughly 4-32 vectors per row (LENSKIT_CUDA_ROW_THREADS=256|1024 overrides this, to
//     compare the two on a GPU; see rows.cuh). The loops issue 4 independent 16-byte loads
//     (entropy) or 2 + 2 (kl_div) before consuming them, for memory-level parallelism.
//   * Grids are capped at 32 blocks per SM and loop over rows (grid-stride), so any row count
//     works (N > 65535 included) without relying on huge grids.
//   * Everything runs on the current stream (c10::cuda::getCurrentCUDAStream(), the same as
//     at::cuda::getCurrentCUDAStream()) under a CUDAGuard for the input's device; every launch
//     is followed by C10_CUDA_KERNEL_LAUNCH_CHECK().
//   * kl_div with different p/q dtypes upcasts the 16-bit operand(s) to fp32 (exact) first, so
//     the kernels are instantiated for same-dtype pairs only (keeps compile time modest).
//   * Accuracy: e^z is one ex2.approx of z log2(e) on z = x - max <= 0 (see rows.cuh), whose
//     error stays ~2^-22 relative for every z; logf is the accurate one (setup.py does not pass
//     --use_fast_math to nvcc).
//
// pairwise_kl uses the one-GEMM identity of reference.pairwise_kl with ATen ops in fp32 under
// at::NoTF32Guard (thread-local: cuBLAS runs IEEE fp32, no TF32 / bf16x9) plus, when the user
// enabled TF32 globally, a scoped switch-off of that flag (see GlobalTf32Off), in row chunks so
// the temporaries stay around 2^24 elements each, with the same masking rules.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "rows.cuh"

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace {

using namespace lenskit_cuda;

constexpr int kBlocksPerSmCap = 32;

__device__ __forceinline__ EntropyState shfl_xor(const EntropyState& a, int lane_mask) {
  EntropyState r;
  r.m = __shfl_xor_sync(0xffffffffu, a.m, lane_mask);
  r.s = __shfl_xor_sync(0xffffffffu, a.s, lane_mask);
  r.t = __shfl_xor_sync(0xffffffffu, a.t, lane_mask);
  r.flags = __shfl_xor_sync(0xffffffffu, a.flags, lane_mask);
  return r;
}

__device__ __forceinline__ KlState shfl_xor(const KlState& a, int lane_mask) {
  KlState r;
  r.mp = __shfl_xor_sync(0xffffffffu, a.mp, lane_mask);
  r.sp = __shfl_xor_sync(0xffffffffu, a.sp, lane_mask);
  r.u = __shfl_xor_sync(0xffffffffu, a.u, lane_mask);
  r.mq = __shfl_xor_sync(0xffffffffu, a.mq, lane_mask);
  r.sq = __shfl_xor_sync(0xffffffffu, a.sq, lane_mask);
  r.dmax = __shfl_xor_sync(0xffffffffu, a.dmax, lane_mask);
  r.flags = __shfl_xor_sync(0xffffffffu, a.flags, lane_mask);
  return r;
}

// ------------------------------------------------------------------------------------------
// Reductions and kernels
// ------------------------------------------------------------------------------------------

template <typename S>
__device__ __forceinline__ S warp_reduce(S st) {
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) st = merge(st, shfl_xor(st, off));
  return st;  // every lane holds the merged state
}

// One warp per row, kRowsPerWarpBlock rows per block, grid-stride over row groups.
template <typename Op>
__global__ void __launch_bounds__(kRowsPerWarpBlock * kWarpSize)
    rows_warp_kernel(const Op op, const int64_t rows, const int V, float* __restrict__ out) {
  const int lane = threadIdx.x & (kWarpSize - 1);
  const int warp = threadIdx.x / kWarpSize;
  // r is uniform across the warp, so the full-mask shuffles below see all 32 lanes.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerWarpBlock + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerWarpBlock) {
    auto st = op.template partial<kWarpSize>(r, V, lane);
    st = warp_reduce(st);
    if (lane == 0) op.store(st, r, out);
  }
}

// One block of BLOCK threads per row, grid-stride over rows.
template <typename Op, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    rows_block_kernel(const Op op, const int64_t rows, const int V, float* __restrict__ out) {
  static_assert(BLOCK % kWarpSize == 0 && BLOCK / kWarpSize <= kWarpSize, "BLOCK: 32..1024");
  constexpr int kWarps = BLOCK / kWarpSize;
  using State = typename Op::State;
  __shared__ State partials[kWarps];
  const int lane = threadIdx.x & (kWarpSize - 1);
  const int warp = threadIdx.x / kWarpSize;
  // r is uniform across the block, so the __syncthreads() below are reached by all threads.
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    State st = op.template partial<BLOCK>(r, V, threadIdx.x);
    st = warp_reduce(st);
    if (lane == 0) partials[warp] = st;
    __syncthreads();
    if (warp == 0) {
      st = lane < kWarps ? partials[lane] : op.identity();
      st = warp_reduce(st);
      if (lane == 0) op.store(st, r, out);
    }
    __syncthreads();  // partials[] is rewritten for the next row
  }
}

// SM count of the current device, queried once per device. (ATen/cuda/CUDAContext.h would give
// it too, but it pulls in cuBLAS/cuSPARSE headers that a bare CUDA toolkit may lack.)
int current_device_sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  const int dev = c10::cuda::current_device();
  if (dev >= 0 && dev < kMaxDevices) {
    const int cached = cache[dev].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  sms = std::max(sms, 1);
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

template <typename Op>
void launch_rows(const Op& op, int64_t rows, int64_t V, int vec_width, float* out) {
  if (rows == 0) return;
  TORCH_CHECK(V <= static_cast<int64_t>(INT_MAX), "lenskit: the last dim (", V,
              ") is too long for the CUDA kernels (at most ", INT_MAX, ")");
  const int v = static_cast<int>(V);
  const int sms = current_device_sm_count();
  const int64_t cap = static_cast<int64_t>(sms) * kBlocksPerSmCap;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // rows.cuh reads the override without ATen (it also builds for the CPU emulator), so a
  // typo is caught here, before it would silently mean "no override".
  if (const char* env = std::getenv("LENSKIT_CUDA_ROW_THREADS"); env != nullptr && *env != '\0') {
    TORCH_CHECK(row_threads_override() != 0, "lenskit: LENSKIT_CUDA_ROW_THREADS='", env,
                "' is not 256 or 1024 (or unset for the choice by row length)");
  }
  const int threads = threads_per_row(rows, V, vec_width, sms);
  if (threads == kWarpSize) {
    const int64_t groups = (rows + kRowsPerWarpBlock - 1) / kRowsPerWarpBlock;
    const unsigned grid = static_cast<unsigned>(std::min(groups, cap));
    rows_warp_kernel<Op><<<grid, kRowsPerWarpBlock * kWarpSize, 0, stream>>>(op, rows, v, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (threads == 256) {
    const unsigned grid = static_cast<unsigned>(std::min(rows, cap));
    rows_block_kernel<Op, 256><<<grid, 256, 0, stream>>>(op, rows, v, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const unsigned grid = static_cast<unsigned>(std::min(rows, cap));
    rows_block_kernel<Op, 1024><<<grid, 1024, 0, stream>>>(op, rows, v, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ------------------------------------------------------------------------------------------
// Host side: checks, row views, dispatch
// ------------------------------------------------------------------------------------------

// Argument checks shared with the CPU kernels (csrc/common.h), plus the device check that only
// this backend needs: kl_div(cuda_tensor, cpu_tensor) is dispatched here (CUDA wins over CPU).
void check_cuda(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), "lenskit.", op, ": ", name,
                    " must be a CUDA tensor for the CUDA kernels, got device ", x.device());
}

// A tensor seen as `rows` rows of V elements at base + r * row_stride (element units).
struct RowView {
  at::Tensor t;  // x itself, or a contiguous copy
  int64_t rows;
  int64_t V;
  int64_t row_stride;
};

RowView row_view(const at::Tensor& x) {
  const int64_t nd = x.dim();
  const int64_t V = x.size(nd - 1);
  int64_t rows = 1;
  for (int64_t d = 0; d < nd - 1; ++d) rows *= x.size(d);

  bool in_place = (V <= 1 || x.stride(nd - 1) == 1) &&
                  reinterpret_cast<uintptr_t>(x.const_data_ptr()) % x.element_size() == 0;
  int64_t row_stride = V;
  if (in_place) {
    // The leading dims of size > 1 must collapse into one: stride[d] == stride[d+1] * size[d+1].
    int64_t expected = -1;  // the stride the next outer dim needs (-1: no dim seen yet)
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (x.size(d) == 1) continue;
      if (expected < 0) {
        row_stride = x.stride(d);
      } else if (x.stride(d) != expected) {
        in_place = false;
        break;
      }
      expected = x.stride(d) * x.size(d);
    }
  }
  if (in_place) return {x, rows, V, row_stride};
  // clone() (not contiguous(), which returns x when it is already contiguous) also fixes the
  // theoretical case of a data pointer that is not element-aligned.
  return {x.clone(at::MemoryFormat::Contiguous), rows, V, V};
}

template <typename F>
void dispatch_storage(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      f(float{});
      break;
    case at::kHalf:
      f(__half{});
      break;
    case at::kBFloat16:
      f(__nv_bfloat16{});
      break;
    default:
      TORCH_CHECK_TYPE(false, "lenskit: unsupported dtype ", t);
  }
}

// Entropy of every row into out, and logsumexp into lse when it is defined (same pass).
void entropy_rows_cuda(const at::Tensor& logits, const at::Tensor& out, const at::Tensor& lse) {
  const RowView rv = row_view(logits);
  if (rv.rows == 0) return;
  float* const lse_ptr = lse.defined() ? lse.mutable_data_ptr<float>() : nullptr;
  dispatch_storage(rv.t.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const EntropyRows<T> op{reinterpret_cast<const T*>(rv.t.const_data_ptr()), rv.row_stride,
                            lse_ptr};
    launch_rows(op, rv.rows, rv.V, VecWidth<T>::value, out.mutable_data_ptr<float>());
  });
}

at::Tensor entropy_cuda(const at::Tensor& logits) {
  lenskit::check_logits("entropy", "logits", logits);
  check_cuda("entropy", "logits", logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty(lenskit::lead_shape(logits), logits.options().dtype(at::kFloat));
  entropy_rows_cuda(logits, out, at::Tensor());
  return out;
}

std::tuple<at::Tensor, at::Tensor> entropy_lse_cuda(const at::Tensor& logits) {
  lenskit::check_logits("entropy_lse", "logits", logits);
  check_cuda("entropy_lse", "logits", logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty(lenskit::lead_shape(logits), logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty(lenskit::lead_shape(logits), logits.options().dtype(at::kFloat));
  entropy_rows_cuda(logits, out, lse);
  return {out, lse};
}

at::Tensor kl_div_cuda(const at::Tensor& p_logits, const at::Tensor& q_logits) {
  lenskit::check_kl_div_args(p_logits, q_logits);
  check_cuda("kl_div", "p_logits", p_logits);
  const c10::cuda::CUDAGuard guard(p_logits.device());
  at::Tensor out = at::empty(lenskit::lead_shape(p_logits), p_logits.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  at::Tensor p = p_logits;
  at::Tensor q = q_logits;
  if (p.scalar_type() != q.scalar_type()) {
    // Mixed dtypes: upcast to fp32 (exact) rather than instantiate every (p, q) dtype pair.
    p = p.to(at::kFloat);
    q = q.to(at::kFloat);
  }
  const RowView pv = row_view(p);
  const RowView qv = row_view(q);
  dispatch_storage(pv.t.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const KlRows<T> op{reinterpret_cast<const T*>(pv.t.const_data_ptr()),
                       reinterpret_cast<const T*>(qv.t.const_data_ptr()), pv.row_stride,
                       qv.row_stride};
    launch_rows(op, pv.rows, pv.V, VecWidth<T>::value, out.mutable_data_ptr<float>());
  });
  return out;
}

// (p, log p with masked entries set to 0, row ok) for an fp32 [n, V] block, as in
// reference._log_softmax_parts.
struct LogSoftmaxParts {
  at::Tensor p;
  at::Tensor logp0;
  at::Tensor ok;
};

LogSoftmaxParts log_softmax_parts(const at::Tensor& x) {
  const at::Tensor ok = at::isfinite(std::get<0>(x.max(-1)));
  const at::Tensor logp = at::log_softmax(x, -1);
  const at::Tensor logp0 = at::where(x.eq(-kInf), 0.0, logp);
  return {logp.exp(), logp0, ok};
}

// Switches the process-wide "allow TF32 in cuBLAS" flag off for its lifetime when the user had
// it on (what reference.pairwise_kl does with torch.backends.cuda.matmul.allow_tf32). It backs
// up at::NoTF32Guard, which the cuBLAS handle honours but which some cuBLASLt code paths (used
// when the preferred BLAS backend is cuBLASLt) do not consult. Like the Python version, it is
// not thread-safe with respect to other threads changing the flag at the same time.
class GlobalTf32Off {
 public:
  GlobalTf32Off() : was_on_(at::globalContext().allowTF32CuBLAS()) {
    if (was_on_) at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~GlobalTf32Off() {
    if (!was_on_) return;
    try {
      at::globalContext().setAllowTF32CuBLAS(true);
    } catch (...) {  // never throw from a destructor
    }
  }
  GlobalTf32Off(const GlobalTf32Off&) = delete;
  GlobalTf32Off& operator=(const GlobalTf32Off&) = delete;

 private:
  bool was_on_;
};

at::Tensor pairwise_kl_cuda(const at::Tensor& p_logits, const at::Tensor& q_logits) {
  lenskit::check_pairwise_kl_args(p_logits, q_logits);
  check_cuda("pairwise_kl", "p_logits", p_logits);
  const c10::cuda::CUDAGuard guard(p_logits.device());
  const int64_t n = p_logits.size(0);
  const int64_t v = p_logits.size(1);
  const int64_t m = q_logits.size(0);
  at::Tensor out = at::empty({n, m}, p_logits.options().dtype(at::kFloat));
  if (n == 0 || m == 0) return out;
  if (v == 0) return out.fill_(kNaN);

  const int64_t step = std::max<int64_t>(1, (int64_t{1} << 24) / (3 * v));
  // IEEE fp32 GEMMs: TF32 would ruin the cancellation between the two terms of the identity.
  // Both guards restore the previous settings on exit, exceptions included.
  at::NoTF32Guard no_tf32;
  GlobalTf32Off global_tf32_off;
  for (int64_t j = 0; j < m; j += step) {
    const at::Tensor y = q_logits.slice(0, j, std::min(j + step, m)).to(at::kFloat);
    const LogSoftmaxParts qp = log_softmax_parts(y);
    const at::Tensor q_dead = y.eq(-kInf).to(at::kFloat);
    for (int64_t i = 0; i < n; i += step) {
      const at::Tensor x = p_logits.slice(0, i, std::min(i + step, n)).to(at::kFloat);
      const LogSoftmaxParts pp = log_softmax_parts(x);
      const at::Tensor neg_h = (pp.p * pp.logp0).sum(-1, /*keepdim=*/true);
      at::Tensor kl = (neg_h - at::mm(pp.p, qp.logp0.t())).clamp_min_(0.0);
      const at::Tensor p_live = x.gt(-kInf).to(at::kFloat);
      // Sums of 0/1 products: > 0 exactly when some entry is live in p and masked in q.
      kl = at::where(at::mm(p_live, q_dead.t()).gt(0.0), kInf, kl);
      kl = at::where(pp.ok.unsqueeze(1).logical_and(qp.ok.unsqueeze(0)), kl, kNaN);
      out.slice(0, i, std::min(i + step, n)).slice(1, j, std::min(j + step, m)).copy_(kl);
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenskit, CUDA, m) {
  m.impl("entropy", &entropy_cuda);
  m.impl("entropy_lse", &entropy_lse_cuda);
  m.impl("kl_div", &kl_div_cuda);
  m.impl("pairwise_kl", &pairwise_kl_cuda);
}
