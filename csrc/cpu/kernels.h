// CPU kernels: per-segment online reductions, compiled once per ISA (scalar, AVX2, AVX-512)
// and chosen at run time. Threading and the final formulas live in ops_cpu.cpp.
#pragma once

#include <cstdint>

namespace lenskit {
namespace cpu {

// Element type of an input row (fp16/bf16 are read as raw 16-bit patterns).
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// Tags naming an element type inside the kernels (fp16/bf16 are raw 16-bit patterns).
struct F32T {
  using storage = float;
};
struct F16T {
  using storage = unsigned short;
};
struct BF16T {
  using storage = unsigned short;
};

// Elements per block: the unit of the running-max bookkeeping and of entropy's prefetch
// distance. A block is read once from memory; the two-pass codes re-read it from L1, so it
// must fit there: 2048 fp32 = 8 KiB per row (plus entropy's prefetched next block); kl_div
// uses kBlock / 2 per row (two rows). Row segments are multiples of kBlock.
constexpr int64_t kBlock = 2048;

// Online state of sum_i e^(x_i - m) over a segment of one row.
//   m: running max (-inf while no live entry was seen)
//   s = sum e^(x-m),  t = sum e^(x-m) (x-m)  (entropy = log s - t/s)
//   bad: a NaN or +inf was seen (the row's result is NaN)
struct EntropyState {
  float m;
  double s;
  double t;
  bool bad;
};

// Online state for KL(softmax(x) || softmax(y)) over a segment of a row pair.
//   mp, sp: max and sum e^(x-mp) of p;  mq, sq: the same for q
//   u = sum e^(x-mp) ((x-mp) - (y-mq))  (KL = u/sp - log sp + log sq)
//   bad: NaN or +inf in x or y;  q_dead: some entry has y == -inf but x > -inf (KL = +inf)
struct KLState {
  float mp;
  float mq;
  double sp;
  double sq;
  double u;
  bool bad;
  bool q_dead;
};

void init_state(EntropyState& st);
void init_state(KLState& st);
// Folds state b into a (order does not matter).
void merge_state(EntropyState& a, const EntropyState& b);
void merge_state(KLState& a, const KLState& b);
float finish_state(const EntropyState& st);
float finish_state(const KLState& st);
// logsumexp of the row: m + log s (NaN exactly where finish_state(EntropyState) is NaN).
float finish_lse(const EntropyState& st);

using EntropySegmentFn = void (*)(const void* x, DType dt, int64_t n, EntropyState& st);
using KLSegmentFn = void (*)(const void* x, DType dx, const void* y, DType dy, int64_t n,
                             KLState& st);

// count_above on one row: out[j] = #{i < v : x[i] > thresholds[j]} for j < n (ordered compare
// in fp32: NaN on either side never counts), in one read of the row per group of up to
// kCountGroup thresholds. Needs v <= INT32_MAX.
using CountRowFn = void (*)(const void* x, DType dt, int64_t v, const float* thresholds,
                            int64_t n, int32_t* out);
constexpr int64_t kCountGroup = 8;

struct IsaKernels {
  const char* name;
  EntropySegmentFn entropy;
  KLSegmentFn kl;
  // The same kernels with software prefetches (entropy: two streams a segment; faster on some
  // CPUs, see kPrefetchBytes in kernel_impl.h), or nullptr where the ISA has none.
  EntropySegmentFn entropy_prefetch;
  KLSegmentFn kl_prefetch;
  CountRowFn count_above;
};

// One table per ISA (the vector ones exist only on x86-64 builds).
IsaKernels scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
#define LENSKIT_X86 1
IsaKernels avx2_kernels();
IsaKernels avx512_kernels();
#endif

// The best kernels this CPU supports, or the ones named by the environment variable
// LENSKIT_CPU_ISA=scalar|avx2|avx512 (capped at what the CPU supports; read on every call).
const IsaKernels& select_kernels();

// Whether the next call runs the prefetching kernels of `k`: by default on Intel CPUs (where
// the ISA has them); LENSKIT_CPU_PREFETCH=1 or 0 (read on every call) picks instead.
bool use_prefetch(const IsaKernels& k);

}  // namespace cpu
}  // namespace lenskit
