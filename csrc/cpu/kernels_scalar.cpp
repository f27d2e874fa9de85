// Portable scalar instantiation of kernel_impl.h (one float per "vector"): the fallback on
// CPUs without AVX2 and on non-x86 builds, and a check of the vector paths in the tests
// (LENSKIT_CPU_ISA=scalar).
#include <c10/util/Half.h>

#include <cstring>

#include "kernels.h"

#define LK_TARGET
#define LK_INLINE inline __attribute__((always_inline))

namespace lenskit {
namespace cpu {
namespace scalar_impl {

struct Vec {
  using vec = float;
  using mask = bool;
  static constexpr int64_t W = 1;

  LK_INLINE static vec zero() { return 0.0f; }
  LK_INLINE static vec set1(float v) { return v; }
  LK_INLINE static vec load(F32T, const float* p) { return *p; }
  LK_INLINE static vec load(F16T, const unsigned short* p) {
    return c10::detail::fp16_ieee_to_fp32_value(*p);
  }
  LK_INLINE static vec load(BF16T, const unsigned short* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  template <class T, class S>
  LK_INLINE static vec load_tail(T t, const S* p, int) {
    return load(t, p);  // never called: W == 1 leaves no tail
  }
  LK_INLINE static vec add(vec a, vec b) { return a + b; }
  LK_INLINE static vec sub(vec a, vec b) { return a - b; }
  LK_INLINE static vec mul(vec a, vec b) { return a * b; }
  LK_INLINE static vec fmadd(vec a, vec b, vec c) { return a * b + c; }
  LK_INLINE static vec max(vec a, vec b) { return a > b ? a : b; }
  LK_INLINE static vec min(vec a, vec b) { return a < b ? a : b; }
  LK_INLINE static vec mask_fmadd(vec acc, mask k, vec a, vec b) { return k ? a * b + acc : acc; }
  LK_INLINE static mask mask_none() { return false; }
  LK_INLINE static mask mask_or(mask a, mask b) { return a || b; }
  LK_INLINE static mask mask_and(mask a, mask b) { return a && b; }
  LK_INLINE static bool any(mask a) { return a; }
  LK_INLINE static bool any_gt(vec a, vec b) { return a > b; }
  LK_INLINE static mask unord(vec a) { return a != a; }
  // True in lanes where a or b is NaN (one compare for two vectors).
  LK_INLINE static mask unord2(vec a, vec b) { return a != a || b != b; }
  LK_INLINE static mask is_neginf(vec a) { return a == -__builtin_inff(); }
  LK_INLINE static mask not_neginf(vec a) { return a != -__builtin_inff(); }
  LK_INLINE static float reduce_add(vec a) { return a; }
  LK_INLINE static float reduce_max(vec a) { return a; }
  LK_INLINE static float reduce_min(vec a) { return a; }
  LK_INLINE static vec exp_nonpos(vec z) { return __builtin_expf(z); }  // expf(-inf) == 0
  LK_INLINE static vec exp_nonpos(vec z, mask& live) {
    const float e = __builtin_expf(z);
    live = e > 0.0f;
    return e;
  }
  // The fast blocks of kernel_impl.h are for the vector ISAs: declared, never defined.
  static vec exp2_fast(vec y);
  static constexpr bool kFastBlocks = false;
  static constexpr bool kBf16Pairs = false;
  static void load_pair(BF16T, const unsigned short* p, vec& even, vec& odd);  // never defined
  static constexpr bool kPrefetch = false;

  // count_above (count_impl.h).
  using ivec = int32_t;
  LK_INLINE static ivec izero() { return 0; }
  LK_INLINE static ivec count_gt(ivec acc, vec a, vec b) { return acc + (a > b ? 1 : 0); }
  LK_INLINE static int64_t reduce_count(ivec a) { return a; }
};

#include "kernel_impl.h"
#include "count_impl.h"

}  // namespace scalar_impl

IsaKernels scalar_kernels() {
  // No prefetch variants: the scalar code has no software prefetch (Vec::kPrefetch).
  return {"scalar", &scalar_impl::entropy_segment<false>, &scalar_impl::kl_segment<false>,
          nullptr, nullptr, &scalar_impl::count_row};
}

}  // namespace cpu
}  // namespace lenskit
