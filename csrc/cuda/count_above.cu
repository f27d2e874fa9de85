// CUDA kernel of torch.ops.lenskit.count_above: out[m, j] = #{v : logits[m, v] > t[m, j]}.
//
// One block of kThreads threads per row (grid-stride over rows). The thresholds are taken
// kGroup at a time: each thread walks the row with a block-size stride (coalesced loads, four
// independent loads in flight per iteration), widens every element to fp32 (exact for fp16 /
// bf16) and compares it with every threshold of the group, keeping one int count per
// threshold in registers; the counts are then summed across the warp (shuffles) and across
// warps (shared memory, by warp 0). Unused slots of the last group hold a NaN threshold, which
// nothing exceeds. The compare is the ordered `>` (false when either side is NaN), the same as
// torch's. Everything runs on the current stream under a CUDAGuard for the input's device.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "../common.h"

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr int kGroup = 8;
constexpr int kUnroll = 4;
constexpr int64_t kMaxBlocks = 8192;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ void count_one(const T& xv, const float (&th)[kGroup],
                                          int (&cnt)[kGroup]) {
  const float x = to_float(xv);
#pragma unroll
  for (int j = 0; j < kGroup; ++j) cnt[j] += x > th[j] ? 1 : 0;
}

// This thread's counts over its elements i = tid, tid + kThreads, ... of the row.
template <typename T>
__device__ __forceinline__ void thread_counts(const T* __restrict__ xr, int v,
                                              const float (&th)[kGroup], int (&cnt)[kGroup]) {
  int64_t i = threadIdx.x;  // 64-bit: i + kUnroll * kThreads may pass INT_MAX
  for (; i + (kUnroll - 1) * kThreads < v; i += kUnroll * kThreads) {
    T vals[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) vals[u] = xr[i + u * kThreads];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) count_one(vals[u], th, cnt);
  }
  for (; i < v; i += kThreads) count_one(xr[i], th, cnt);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    count_above_kernel(const T* __restrict__ x, const int64_t row_stride, const int64_t rows,
                       const int v, const float* __restrict__ t, const int n,
                       int32_t* __restrict__ out) {
  __shared__ int partial[kWarps][kGroup];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  // r and j0 are uniform across the block, so every thread reaches the __syncthreads().
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * row_stride;
    for (int j0 = 0; j0 < n; j0 += kGroup) {
      const int g = min(kGroup, n - j0);
      float th[kGroup];
      int cnt[kGroup];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        th[j] = j < g ? t[r * n + j0 + j] : __int_as_float(0x7fc00000);  // NaN: never exceeded
        cnt[j] = 0;
      }
      thread_counts(xr, v, th, cnt);
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
#pragma unroll
        for (int off = kWarp / 2; off > 0; off >>= 1) {
          cnt[j] += __shfl_xor_sync(0xffffffffu, cnt[j], off);
        }
      }
      if (lane == 0) {
#pragma unroll
        for (int j = 0; j < kGroup; ++j) partial[warp][j] = cnt[j];
      }
      __syncthreads();
      if (warp == 0) {
#pragma unroll
        for (int j = 0; j < kGroup; ++j) {
          int c = lane < kWarps ? partial[lane][j] : 0;
#pragma unroll
          for (int off = kWarp / 2; off > 0; off >>= 1) c += __shfl_xor_sync(0xffffffffu, c, off);
          if (lane == 0 && j < g) out[r * n + j0 + j] = c;
        }
      }
      __syncthreads();  // partial[] is rewritten by the next group / row
    }
  }
}

template <typename T>
void launch(const at::Tensor& x, const at::Tensor& t, const at::Tensor& out) {
  const int64_t rows = x.size(0);
  const int v = static_cast<int>(x.size(1));
  const int n = static_cast<int>(t.size(1));
  const unsigned grid = static_cast<unsigned>(std::min(rows, kMaxBlocks));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  count_above_kernel<T><<<grid, kThreads, 0, stream>>>(
      reinterpret_cast<const T*>(x.const_data_ptr()), x.stride(0), rows, v,
      t.const_data_ptr<float>(), n, out.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor count_above_cuda(const at::Tensor& logits, const at::Tensor& thresholds) {
  lenskit::check_count_above_args(logits, thresholds);
  TORCH_CHECK_VALUE(logits.is_cuda(), "lenskit.count_above: logits must be a CUDA tensor for the "
                    "CUDA kernels, got device ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t rows = logits.size(0), v = logits.size(1), n = thresholds.size(1);
  TORCH_CHECK_VALUE(n <= INT_MAX / 2, "lenskit.count_above: too many thresholds per row (", n,
                    ")");
  at::Tensor out = at::empty({rows, n}, logits.options().dtype(at::kInt));
  if (rows == 0 || n == 0) return out;
  if (v == 0) return out.zero_();
  const at::Tensor x = v > 1 && logits.stride(1) != 1 ? logits.contiguous() : logits;
  const at::Tensor t = thresholds.to(at::kFloat).contiguous();
  switch (x.scalar_type()) {
    case at::kFloat:
      launch<float>(x, t, out);
      break;
    case at::kHalf:
      launch<__half>(x, t, out);
      break;
    default:  // kBFloat16 (check_count_above_args allows nothing else)
      launch<__nv_bfloat16>(x, t, out);
      break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenskit, CUDA, m) { m.impl("count_above", &count_above_cuda); }
