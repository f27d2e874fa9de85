// AVX2 + FMA + F16C instantiation of kernel_impl.h, selected at run time (target attributes
// only; the file is compiled with the baseline flags).
#include "kernels.h"

#if defined(LENSKIT_X86)
#include <immintrin.h>

#define LK_TARGET __attribute__((target("avx2,fma,f16c")))
#define LK_INLINE inline __attribute__((always_inline)) LK_TARGET

namespace lenskit {
namespace cpu {
namespace avx2_impl {

struct Vec {
  using vec = __m256;
  using mask = __m256;  // all-ones lanes
  static constexpr int64_t W = 8;

  LK_INLINE static vec zero() { return _mm256_setzero_ps(); }
  LK_INLINE static vec set1(float v) { return _mm256_set1_ps(v); }

  LK_INLINE static vec load(F32T, const float* p) { return _mm256_loadu_ps(p); }
  LK_INLINE static vec load(F16T, const unsigned short* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  LK_INLINE static vec load(BF16T, const unsigned short* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  // First n lanes from memory, the others -inf (a masked entry).
  LK_INLINE static vec load_tail(F32T, const float* p, int n) {
    alignas(32) float buf[8];
    for (int k = 0; k < 8; ++k) buf[k] = k < n ? p[k] : -__builtin_inff();
    return _mm256_load_ps(buf);
  }
  LK_INLINE static vec load_tail(F16T, const unsigned short* p, int n) {
    alignas(16) unsigned short buf[8];
    for (int k = 0; k < 8; ++k) buf[k] = k < n ? p[k] : static_cast<unsigned short>(0xFC00);
    return load(F16T{}, buf);
  }
  LK_INLINE static vec load_tail(BF16T, const unsigned short* p, int n) {
    alignas(16) unsigned short buf[8];
    for (int k = 0; k < 8; ++k) buf[k] = k < n ? p[k] : static_cast<unsigned short>(0xFF80);
    return load(BF16T{}, buf);
  }

  LK_INLINE static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  LK_INLINE static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  LK_INLINE static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  LK_INLINE static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  LK_INLINE static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  LK_INLINE static vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
  LK_INLINE static vec mask_fmadd(vec acc, mask k, vec a, vec b) {
    return _mm256_blendv_ps(acc, _mm256_fmadd_ps(a, b, acc), k);
  }

  LK_INLINE static mask mask_none() { return _mm256_setzero_ps(); }
  LK_INLINE static mask mask_or(mask a, mask b) { return _mm256_or_ps(a, b); }
  LK_INLINE static mask mask_and(mask a, mask b) { return _mm256_and_ps(a, b); }
  LK_INLINE static bool any(mask a) { return _mm256_movemask_ps(a) != 0; }
  // Some lane of a is > the same lane of b (false for NaN lanes).
  LK_INLINE static bool any_gt(vec a, vec b) {
    return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) != 0;
  }
  LK_INLINE static mask unord(vec a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  // True in lanes where a or b is NaN (one compare for two vectors).
  LK_INLINE static mask unord2(vec a, vec b) { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }
  LK_INLINE static mask is_neginf(vec a) {
    return _mm256_cmp_ps(a, set1(-__builtin_inff()), _CMP_EQ_OQ);
  }
  LK_INLINE static mask not_neginf(vec a) {
    return _mm256_cmp_ps(a, set1(-__builtin_inff()), _CMP_NEQ_OQ);
  }

  LK_INLINE static float reduce_add(vec a) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
  }
  LK_INLINE static float reduce_max(vec a) {
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
  }
  LK_INLINE static float reduce_min(vec a) {
    __m128 r = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    r = _mm_min_ps(r, _mm_movehl_ps(r, r));
    r = _mm_min_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
  }

  // 2^y for y >= -127 (or NaN / +inf, which give NaN): y = n + r with n = round(y),
  // |r| <= 1/2, 2^r by a degree-5 polynomial (relative error 2.3e-7 in fp32, constant term
  // exactly 1, so 2^0 == 1), times 2^n built in the exponent bits (exactly 0 for n == -127).
  LK_INLINE static vec exp2_clamped(vec y) {
    const vec fx = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vec r = _mm256_sub_ps(y, fx);
    vec p = set1(1.3278165133669972e-3f);
    p = _mm256_fmadd_ps(p, r, set1(9.675555862486362e-3f));
    p = _mm256_fmadd_ps(p, r, set1(5.5507078766822815e-2f));
    p = _mm256_fmadd_ps(p, r, set1(2.4022118747234344e-1f));
    p = _mm256_fmadd_ps(p, r, set1(6.931469440460205e-1f));
    p = _mm256_fmadd_ps(p, r, set1(1.0f));
    const __m256i n = _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
  }
  // e^z for z <= 0 (no NaN) as 2^(z log2 e), clamped at 2^-126. Exactly 0 for z < -87.33
  // (this includes z == -inf, a masked entry); `live` gets the other lanes.
  LK_INLINE static vec exp_nonpos(vec z, mask& live) {
    live = _mm256_cmp_ps(z, set1(-87.3365478515625f), _CMP_GE_OQ);
    const vec y = _mm256_max_ps(_mm256_mul_ps(z, set1(1.44269504088896341f)), set1(-126.0f));
    return _mm256_and_ps(live, exp2_clamped(y));
  }
  LK_INLINE static vec exp_nonpos(vec z) {
    mask live;
    return exp_nonpos(z, live);
  }
  // 2^y for the fast blocks (y <= 127: a larger y only comes with a block max far above the
  // running max, and the callers redo such blocks). y is clamped below at -127, where
  // exp2_clamped gives exactly 0: so y < -126.5 (and y == -inf) gives exactly 0. The clamp
  // keeps NaN (max returns its second operand when one is NaN), and NaN / +inf give NaN (the
  // callers test their sums for that).
  LK_INLINE static vec exp2_fast(vec y) { return exp2_clamped(_mm256_max_ps(set1(-127.0f), y)); }
  // 16 bf16 elements from one 32-byte load: the even ones in `even`, the odd ones in `odd`.
  LK_INLINE static void load_pair(BF16T, const unsigned short* p, vec& even, vec& odd) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    odd = _mm256_castsi256_ps(
        _mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static constexpr bool kFastBlocks = true;
  static constexpr bool kBf16Pairs = true;
  static constexpr bool kPrefetch = true;

  // count_above (count_impl.h): int32 lane counters.
  using ivec = __m256i;
  LK_INLINE static ivec izero() { return _mm256_setzero_si256(); }
  // acc + 1 in the lanes where a > b (ordered: false where a or b is NaN); the compare gives
  // all-ones (-1) lanes, so subtracting it counts.
  LK_INLINE static ivec count_gt(ivec acc, vec a, vec b) {
    return _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_GT_OQ)));
  }
  LK_INLINE static int64_t reduce_count(ivec a) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4E));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xB1));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(r));
  }
};

#include "kernel_impl.h"
#include "count_impl.h"

}  // namespace avx2_impl

IsaKernels avx2_kernels() {
  return {"avx2", &avx2_impl::entropy_segment<false>, &avx2_impl::kl_segment<false>,
          &avx2_impl::entropy_segment<true>, &avx2_impl::kl_segment<true>,
          &avx2_impl::count_row};
}

}  // namespace cpu
}  // namespace lenskit
#endif  // LENSKIT_X86
