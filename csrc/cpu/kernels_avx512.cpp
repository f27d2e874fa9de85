// AVX-512 (F/BW/VL/DQ + FMA/F16C) instantiation of kernel_impl.h, selected at run time.
// Only target attributes are used (no -mavx512f for the file), so the library still loads and
// runs on any x86-64 CPU.
#include "kernels.h"

#if defined(LENSKIT_X86)
#include <immintrin.h>

// GCC 12 warns inside its own AVX-512 reduction intrinsics (_mm512_undefined_* is a
// self-initialised variable): noise.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define LK_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define LK_INLINE inline __attribute__((always_inline)) LK_TARGET

namespace lenskit {
namespace cpu {
namespace avx512_impl {

struct Vec {
  using vec = __m512;
  using mask = __mmask16;
  static constexpr int64_t W = 16;

  LK_INLINE static vec zero() { return _mm512_setzero_ps(); }
  LK_INLINE static vec set1(float v) { return _mm512_set1_ps(v); }

  LK_INLINE static vec load(F32T, const float* p) { return _mm512_loadu_ps(p); }
  LK_INLINE static vec load(F16T, const unsigned short* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  LK_INLINE static vec load(BF16T, const unsigned short* p) {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  // 32 bf16 elements from one 64-byte load: the even ones in `even`, the odd ones in `odd`.
  LK_INLINE static void load_pair(BF16T, const unsigned short* p, vec& even, vec& odd) {
    const __m512i w = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    odd = _mm512_castsi512_ps(
        _mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static constexpr bool kBf16Pairs = true;
  // First n lanes from memory, the others -inf (a masked entry).
  LK_INLINE static vec load_tail(F32T, const float* p, int n) {
    return _mm512_mask_loadu_ps(set1(-__builtin_inff()), static_cast<mask>((1u << n) - 1), p);
  }
  LK_INLINE static vec load_tail(F16T, const unsigned short* p, int n) {
    const __m256i h = _mm256_mask_loadu_epi16(_mm256_set1_epi16(static_cast<short>(0xFC00)),
                                              static_cast<mask>((1u << n) - 1), p);
    return _mm512_cvtph_ps(h);
  }
  LK_INLINE static vec load_tail(BF16T, const unsigned short* p, int n) {
    const __m256i h = _mm256_mask_loadu_epi16(_mm256_set1_epi16(static_cast<short>(0xFF80)),
                                              static_cast<mask>((1u << n) - 1), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }

  LK_INLINE static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  LK_INLINE static vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  LK_INLINE static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  LK_INLINE static vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  LK_INLINE static vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
  LK_INLINE static vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
  // acc + a * b in the lanes of k, acc elsewhere.
  LK_INLINE static vec mask_fmadd(vec acc, mask k, vec a, vec b) {
    return _mm512_mask3_fmadd_ps(a, b, acc, k);
  }

  LK_INLINE static mask mask_none() { return 0; }
  LK_INLINE static mask mask_or(mask a, mask b) { return a | b; }
  LK_INLINE static mask mask_and(mask a, mask b) { return a & b; }
  LK_INLINE static bool any(mask a) { return a != 0; }
  // Some lane of a is > the same lane of b (false for NaN lanes).
  LK_INLINE static bool any_gt(vec a, vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) != 0; }
  LK_INLINE static mask unord(vec a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  // True in lanes where a or b is NaN (one compare for two vectors).
  LK_INLINE static mask unord2(vec a, vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }
  LK_INLINE static mask is_neginf(vec a) {
    return _mm512_cmp_ps_mask(a, set1(-__builtin_inff()), _CMP_EQ_OQ);
  }
  LK_INLINE static mask not_neginf(vec a) {
    return _mm512_cmp_ps_mask(a, set1(-__builtin_inff()), _CMP_NEQ_OQ);
  }

  LK_INLINE static float reduce_add(vec a) { return _mm512_reduce_add_ps(a); }
  LK_INLINE static float reduce_max(vec a) { return _mm512_reduce_max_ps(a); }
  LK_INLINE static float reduce_min(vec a) { return _mm512_reduce_min_ps(a); }

  // e^z for z <= 0 (no NaN) as 2^y, y = z log2(e): y = n + r with n = round(y), |r| <= 1/2,
  // 2^r by a degree-5 polynomial (relative error 2.3e-7 in fp32; constant term exactly 1 so e^0 == 1), then
  // scalef (x 2^n). Exactly 0 for z < -87.33 (this includes z == -inf, a masked entry); `live`
  // gets the other lanes. scalef also zeroes the dead lanes, whatever the reduction gave there.
  LK_INLINE static vec exp_nonpos(vec z, mask& live) {
    live = _mm512_cmp_ps_mask(z, set1(-87.3365478515625f), _CMP_GE_OQ);
    const vec y = _mm512_mul_ps(z, set1(1.44269504088896341f));
    const vec fx = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vec r = _mm512_sub_ps(y, fx);
    vec p = set1(1.3278165133669972e-3f);
    p = _mm512_fmadd_ps(p, r, set1(9.675555862486362e-3f));
    p = _mm512_fmadd_ps(p, r, set1(5.5507078766822815e-2f));
    p = _mm512_fmadd_ps(p, r, set1(2.4022118747234344e-1f));
    p = _mm512_fmadd_ps(p, r, set1(6.931469440460205e-1f));
    p = _mm512_fmadd_ps(p, r, set1(1.0f));
    return _mm512_maskz_scalef_ps(live, p, fx);
  }
  LK_INLINE static vec exp_nonpos(vec z) {
    mask live;
    return exp_nonpos(z, live);
  }
  // 2^y for the fast blocks (any y; y <= 0 in the common case): y = n + j/32 + r with
  // n + j/32 = floor(32 y)/32 and r in [0, 1/32]; 2^(j/32) from a 32-entry table (one
  // two-register permute, indexed by the low mantissa bits of y + 1.5 * 2^18 rounded down),
  // 2^r by the degree-2 minimax polynomial 1 + r (c1 + c2 r) (relative error 6.5e-8, so
  // about 1.5e-7 in all with the fp32 table, below the degree-5 exp_nonpos), and scalef
  // multiplies by 2^floor(y) = 2^n. Exactly 2^0 == 1 and 2^-inf == 0 (reduce(-inf) == 0,
  // scalef by -inf gives 0); y < -149 gives 0, y in [-149, -126) a subnormal; NaN gives NaN
  // and +inf gives +inf (the callers test their sums for that).
  LK_INLINE static vec exp2_fast(vec y) {
    const vec t = _mm512_add_round_ps(y, set1(393216.0f), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const vec r = _mm512_reduce_ps(y, (5 << 4) | _MM_FROUND_NO_EXC | _MM_FROUND_TO_NEG_INF);
    const vec tlo = _mm512_setr_ps(1.0f, 1.0218971967697144f, 1.0442737340927124f,
                                   1.0671404600143433f, 1.0905077457427979f, 1.114386796951294f,
                                   1.1387885808944702f, 1.1637248992919922f, 1.1892070770263672f,
                                   1.215247392654419f, 1.2418577671051025f, 1.2690509557724f,
                                   1.2968395948410034f, 1.3252366781234741f, 1.3542555570602417f,
                                   1.3839099407196045f);
    const vec thi = _mm512_setr_ps(1.4142135381698608f, 1.4451807737350464f, 1.4768261909484863f,
                                   1.5091644525527954f, 1.5422108173370361f, 1.5759809017181396f,
                                   1.610490322113037f, 1.6457555294036865f, 1.6817928552627563f,
                                   1.7186193466186523f, 1.7562521696090698f, 1.7947090864181519f,
                                   1.8340080976486206f, 1.8741676807403564f, 1.9152065515518188f,
                                   1.9571441411972046f);
    const vec tj = _mm512_permutex2var_ps(tlo, _mm512_castps_si512(t), thi);
    const vec q = _mm512_fmadd_ps(set1(0.24265237f), r, set1(0.69312374f));
    return _mm512_scalef_ps(_mm512_fmadd_ps(_mm512_mul_ps(tj, r), q, tj), y);
  }
  static constexpr bool kFastBlocks = true;
  static constexpr bool kPrefetch = true;

  // count_above (count_impl.h): int32 lane counters.
  using ivec = __m512i;
  LK_INLINE static ivec izero() { return _mm512_setzero_si512(); }
  // acc + 1 in the lanes where a > b (ordered: false where a or b is NaN).
  LK_INLINE static ivec count_gt(ivec acc, vec a, vec b) {
    return _mm512_mask_sub_epi32(acc, _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), acc,
                                 _mm512_set1_epi32(-1));
  }
  LK_INLINE static int64_t reduce_count(ivec a) {
    return static_cast<uint32_t>(_mm512_reduce_add_epi32(a));
  }
};

#include "kernel_impl.h"
#include "count_impl.h"

}  // namespace avx512_impl

IsaKernels avx512_kernels() {
  return {"avx512", &avx512_impl::entropy_segment<false>, &avx512_impl::kl_segment<false>,
          &avx512_impl::entropy_segment<true>, &avx512_impl::kl_segment<true>,
          &avx512_impl::count_row};
}

}  // namespace cpu
}  // namespace lenskit
#endif  // LENSKIT_X86
