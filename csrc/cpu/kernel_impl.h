// The block-wise online kernels, written once over a vector abstraction `Vec`.
//
// Included (inside an ISA-specific namespace, after `Vec`, LK_TARGET and LK_INLINE are defined)
// by kernels_scalar.cpp, kernels_avx2.cpp and kernels_avx512.cpp, so each file compiles the
// same algorithm for its own instruction set. No #include here on purpose: nothing from the
// standard library or ATen may be instantiated under a target attribute (ODR: the linker
// could pick an AVX-512 copy of an inline function for code that runs on any CPU).
//
// Per block of kBlock elements of a row, three codes, each handing the block down when it
// cannot finish it:
//   single pass (entropy_block_fast1; ISAs with Vec::kFastBlocks, once the running max m is
//          finite): e = exp(x - m) against the running max straight from memory, the block max
//          taken on the side, the data ahead prefetched (see kPrefetchBytes). Committed when
//          the block max is <= m and the sums are finite (the common case after the first
//          blocks of a row). It starts without the per-entry -inf select (a -inf entry
//          then makes a sum NaN) and keeps the select for the rest of the segment from the
//          first such block on;
//   redo (entropy_block_fast): with the block max the single pass found, the rescale, then
//          the same exp pass again from L1;
//   careful (entropy_block_careful; every ISA, the only code without kFastBlocks, and the
//          first block of a row): pass 1 finds the block max and NaN (vector max drops NaN,
//          so one unordered compare per two vectors) and +inf; then the running sums are
//          rescaled once if the block max exceeds the running max,
//            s' = c s,  t' = c (t + (m_old - m_new) s),  c = e^(m_old - m_new);
//          pass 2 (from L1): e = exp(x - m) with exp(-inf) == 0 exactly, s += e, t += e (x - m).
// kl_div runs the same three codes, except that its single pass also commits a block whose
// maxima rise by at most kKLSlack and rescales after it (a new row max then costs no second
// exp pass; ~10% less arithmetic on random logits). Entropy keeps the strict rule: its t sum
// is taken against the max, so a one-hot row stays exactly 0 there.
// Blocks that are all -inf are skipped; masked entries contribute 0 through selects. The
// single-pass and redo codes drop every check from their loops and use a cheaper
// exponential; they share one exp pass against the same m, so the results do not depend on
// which of them took a block (for kl_div: given the slack rule, which depends on the data
// only).

constexpr float kNegInf = -__builtin_inff();
constexpr float kPosInf = __builtin_inff();

LK_INLINE static int64_t lk_min(int64_t a, int64_t b) { return a < b ? a : b; }
LK_INLINE static float lk_maxf(float a, float b) { return a > b ? a : b; }

// Prefetches the cache lines of `count` elements at p (data ahead of the exp pass, so that the
// memory stream overlaps the arithmetic).
// The fast entropy blocks prefetch the next block to L2 (with their cheaper arithmetic, L2
// was the faster choice); the careful entropy code keeps L1.
constexpr int kFastPrefetchLocality = 2;

// The fast blocks come in two instantiations, Prefetch or not (ops_cpu.cpp picks one per CPU
// vendor). kl_div's Prefetch code prefetches kPrefetchBytes ahead on both rows (to L1), and
// for fp32 on AVX-512 reads two halves of a segment in lockstep (see kPairBlockKL); entropy's
// reads two halves of a segment in lockstep with that prefetch (see kPairBlock).
//   On Intel cores the prefetch makes kl_div faster than a plain read pass over both inputs,
//     at every distance between the p and q buffers.
//   On AMD Zen 4 a prefetch one block ahead made some distances between the buffers slow,
//     among them the one two same-shaped tensors allocated one after the other get; without a
//     prefetch kl_div runs at the read pass's speed there. Hence the choice per vendor.
//   Figures: docs/benchmarks.md and the git history of this file.
// kl_div's two instantiations do the same arithmetic (bit-identical results) except where the
// two-half code runs; entropy's split the sums differently (rounding-level differences).
constexpr int64_t kPrefetchBytes = 2048;

template <int64_t count, int locality = 3, class S>
LK_INLINE static void prefetch_span(const S* p) {
  if constexpr (Vec::kPrefetch) {
    const char* c = reinterpret_cast<const char*>(p);
    for (int64_t off = 0; off < count * static_cast<int64_t>(sizeof(S)); off += 64) {
      __builtin_prefetch(c + off, 0, locality);
    }
  }
}

// The two-pass block (max pass, then exp pass from L1) with every check: the first block of
// a row, and any block the fast code below hands back. Returns false once the row is
// bad (NaN / +inf seen).
template <class T>
__attribute__((noinline)) LK_TARGET static bool entropy_block_careful(
    const typename T::storage* xb, int64_t len, EntropyState& st) {
  using vec = typename Vec::vec;
  using mask = typename Vec::mask;
  constexpr int64_t W = Vec::W;
  const vec ninf = Vec::set1(kNegInf);
  {
    const int64_t nfull = len / W * W;
    const int tail = static_cast<int>(len - nfull);

    // Pass 1: block max and NaN flag.
    vec m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    mask bad = Vec::mask_none();
    int64_t i = 0;
    for (; i + 4 * W <= nfull; i += 4 * W) {
      const vec a = Vec::load(T{}, xb + i);
      const vec b = Vec::load(T{}, xb + i + W);
      const vec c = Vec::load(T{}, xb + i + 2 * W);
      const vec d = Vec::load(T{}, xb + i + 3 * W);
      m0 = Vec::max(m0, a);
      m1 = Vec::max(m1, b);
      m2 = Vec::max(m2, c);
      m3 = Vec::max(m3, d);
      bad = Vec::mask_or(bad, Vec::mask_or(Vec::unord2(a, b), Vec::unord2(c, d)));
    }
    for (; i < nfull; i += W) {
      const vec a = Vec::load(T{}, xb + i);
      m0 = Vec::max(m0, a);
      bad = Vec::mask_or(bad, Vec::unord(a));
    }
    if (tail) {
      const vec a = Vec::load_tail(T{}, xb + nfull, tail);
      m1 = Vec::max(m1, a);
      bad = Vec::mask_or(bad, Vec::unord(a));
    }
    if (Vec::any(bad)) {
      st.bad = true;
      return false;
    }
    const float bmax = Vec::reduce_max(Vec::max(Vec::max(m0, m1), Vec::max(m2, m3)));
    if (bmax == kPosInf) {
      st.bad = true;
      return false;
    }
    if (bmax == kNegInf) return true;  // all masked: contributes nothing
    if (bmax > st.m) {
      if (st.s > 0) {
        const double dm = static_cast<double>(st.m) - static_cast<double>(bmax);
        const double c = __builtin_exp(dm);
        st.t = c * (st.t + dm * st.s);
        st.s *= c;
      }
      st.m = bmax;
    }

    // Pass 2: exp pass over the block, now in L1. e == 0 exactly where z == -inf (the live
    // mask is false there), so the masked fma keeps 0 * -inf out of t.
    const vec vm = Vec::set1(st.m);
    vec s0 = Vec::zero(), s1 = Vec::zero(), t0 = Vec::zero(), t1 = Vec::zero();
    mask l0, l1;
    i = 0;
    for (; i + 2 * W <= nfull; i += 2 * W) {
      prefetch_span<2 * W>(xb + kBlock + i);
      const vec z0 = Vec::sub(Vec::load(T{}, xb + i), vm);
      const vec z1 = Vec::sub(Vec::load(T{}, xb + i + W), vm);
      const vec e0 = Vec::exp_nonpos(z0, l0);
      const vec e1 = Vec::exp_nonpos(z1, l1);
      s0 = Vec::add(s0, e0);
      s1 = Vec::add(s1, e1);
      t0 = Vec::mask_fmadd(t0, l0, e0, z0);
      t1 = Vec::mask_fmadd(t1, l1, e1, z1);
    }
    for (; i < nfull; i += W) {
      const vec z0 = Vec::sub(Vec::load(T{}, xb + i), vm);
      const vec e0 = Vec::exp_nonpos(z0, l0);
      s0 = Vec::add(s0, e0);
      t0 = Vec::mask_fmadd(t0, l0, e0, z0);
    }
    if (tail) {
      const vec z1 = Vec::sub(Vec::load_tail(T{}, xb + nfull, tail), vm);
      const vec e1 = Vec::exp_nonpos(z1, l1);
      s1 = Vec::add(s1, e1);
      t1 = Vec::mask_fmadd(t1, l1, e1, z1);
    }
    st.s += static_cast<double>(Vec::reduce_add(Vec::add(s0, s1)));
    st.t += static_cast<double>(Vec::reduce_add(Vec::add(t0, t1)));
  }
  return true;
}

// Fast blocks (ISAs with Vec::kFastBlocks), used once the running maxima are finite (after
// the first block of a row). Nothing but the work in their loops:
//   max: A NaN may be dropped by the vector max, but then it reaches the exp pass: a NaN or
//        +inf input gives a NaN / +inf exponential, hence a non-finite block sum; a masked q
//        entry under a live p entry gives an infinite or NaN u term. Non-finite maxima
//        (all -inf, +inf, NaN) or non-finite sums send the block to the careful code, which
//        sorts out what happened (from the rescaled state: consistent).
//   exp pass: e = 2^y with y = fma(x, L, -C), L = fp32(log2 e), C = fp32(m L): one rounding
//        for the argument, and Vec::exp2_fast (no compares). The rounding of C (dC = m L - C,
//        exact in double) is a common factor 2^dC of the block's exponentials and a shift dC
//        of its y values; both are taken out in double. The t / u terms are accumulated in
//        log2 units (y, or yp - yq) and divided by L.
// The single-pass and the redo blocks share one exp pass (entropy_exp_pass, kl_exp_pass) and
// one commit, so a block gives the same sums whichever of them takes it.
constexpr double kLog2eD = static_cast<double>(1.44269504088896341f);  // L, in double

// The reference of the exp pass for a running max m: C = fp32(m L), dC = m L - C and 2^-dC,
// recomputed only when m changes (a few times a row) instead of once a block.
struct FastRef {
  float m = __builtin_nanf("");
  float c = 0;
  double dc = 0;
  double f = 1;  // 2^-dC
  LK_INLINE void set(float mm) {
    if (mm == m) return;
    m = mm;
    const double mL = static_cast<double>(mm) * kLog2eD;
    c = static_cast<float>(mL);
    dc = mL - static_cast<double>(c);
    f = __builtin_exp2(-dc);
  }
};

// Element layout of the exp pass loads: two vectors of 2W consecutive elements. For bf16
// (Vec::kBf16Pairs) one load gives both, as the even and the odd elements (a shift and a
// mask instead of two widening shuffles, which cost more than the exponential on some CPUs).
// Sums and maxima do not care about the order; kl_div pairs p and q elements correctly only
// when both rows use the same layout, hence the pair trait on both types.
template <class T>
struct PairLoad {
  static constexpr bool value = false;
};
template <>
struct PairLoad<BF16T> {
  static constexpr bool value = Vec::kBf16Pairs;
};

template <bool Pairs, class T>
LK_INLINE static void load2(const typename T::storage* p, typename Vec::vec& a,
                            typename Vec::vec& b) {
  if constexpr (Pairs) {
    Vec::load_pair(T{}, p, a, b);
  } else {
    a = Vec::load(T{}, p);
    b = Vec::load(T{}, p + Vec::W);
  }
}

// t += e y where the entry is live; without Masked, a plain fma (a -inf entry then gives
// 0 * -inf = NaN, which hands the block back and switches the row to the masked code).
// Both give the same sum on blocks without -inf entries.
template <bool Masked>
LK_INLINE static typename Vec::vec acc_live(typename Vec::vec t, typename Vec::vec x,
                                            typename Vec::vec e, typename Vec::vec y) {
  if constexpr (Masked) {
    return Vec::mask_fmadd(t, Vec::not_neginf(x), e, y);
  } else {
    return Vec::fmadd(e, y, t);
  }
}

// The exp pass of the fast entropy blocks against ref, prefetching the next block: the block
// sums sb = sum 2^y, tb = sum 2^y y (y in log2 units, see above) and the lane-wise block max.
template <class T, bool Masked>
LK_INLINE static void entropy_exp_pass(const typename T::storage* xb, int64_t len,
                                       const FastRef& ref, float& sb, float& tb,
                                       typename Vec::vec& mx) {
  using vec = typename Vec::vec;
  constexpr int64_t W = Vec::W;
  constexpr bool pairs = PairLoad<T>::value;
  const int64_t nfull = len / W * W;
  const int tail = static_cast<int>(len - nfull);
  const vec vl = Vec::set1(static_cast<float>(kLog2eD));
  const vec vnc = Vec::set1(-ref.c);
  const vec ninf = Vec::set1(kNegInf);
  vec s0 = Vec::zero(), s1 = Vec::zero(), t0 = Vec::zero(), t1 = Vec::zero();
  vec m0 = ninf, m1 = ninf;
  int64_t i = 0;
  for (; i + 2 * W <= nfull; i += 2 * W) {
    prefetch_span<2 * W, kFastPrefetchLocality>(xb + kBlock + i);
    vec x0, x1;
    load2<pairs, T>(xb + i, x0, x1);
    m0 = Vec::max(m0, x0);
    m1 = Vec::max(m1, x1);
    const vec y0 = Vec::fmadd(x0, vl, vnc);
    const vec y1 = Vec::fmadd(x1, vl, vnc);
    const vec e0 = Vec::exp2_fast(y0);
    const vec e1 = Vec::exp2_fast(y1);
    s0 = Vec::add(s0, e0);
    s1 = Vec::add(s1, e1);
    t0 = acc_live<Masked>(t0, x0, e0, y0);
    t1 = acc_live<Masked>(t1, x1, e1, y1);
  }
  for (; i < nfull; i += W) {
    const vec x0 = Vec::load(T{}, xb + i);
    m0 = Vec::max(m0, x0);
    const vec y0 = Vec::fmadd(x0, vl, vnc);
    const vec e0 = Vec::exp2_fast(y0);
    s0 = Vec::add(s0, e0);
    t0 = acc_live<Masked>(t0, x0, e0, y0);
  }
  if (tail) {
    // Tail lanes read as -inf: always masked.
    const vec x1 = Vec::load_tail(T{}, xb + nfull, tail);
    m1 = Vec::max(m1, x1);
    const vec y1 = Vec::fmadd(x1, vl, vnc);
    const vec e1 = Vec::exp2_fast(y1);
    s1 = Vec::add(s1, e1);
    t1 = acc_live<true>(t1, x1, e1, y1);
  }
  sb = Vec::reduce_add(Vec::add(s0, s1));
  tb = Vec::reduce_add(Vec::add(t0, t1));
  mx = Vec::max(m0, m1);
}

LK_INLINE static void entropy_commit(EntropyState& st, const FastRef& ref, float sb, float tb) {
  st.s += ref.f * static_cast<double>(sb);
  st.t += ref.f * (static_cast<double>(tb) - ref.dc * static_cast<double>(sb)) / kLog2eD;
}

// A block the single pass handed back, with its max bmax (from the single pass's lanes, so no
// second max pass): the rescale to a new max, then the exp pass again, from L1.
template <class T>
__attribute__((noinline)) LK_TARGET static bool entropy_block_fast(
    const typename T::storage* xb, int64_t len, EntropyState& st, float bmax) {
  if (!(bmax > kNegInf && bmax < kPosInf)) return entropy_block_careful<T>(xb, len, st);
  if (bmax > st.m) {
    const double dm = static_cast<double>(st.m) - static_cast<double>(bmax);
    const double cm = __builtin_exp(dm);
    st.t = cm * (st.t + dm * st.s);
    st.s *= cm;
    st.m = bmax;
  }
  FastRef ref;
  ref.set(st.m);
  float sb, tb;
  typename Vec::vec mx;
  entropy_exp_pass<T, true>(xb, len, ref, sb, tb, mx);
  if (!(__builtin_isfinite(sb) && __builtin_isfinite(tb))) {
    return entropy_block_careful<T>(xb, len, st);
  }
  entropy_commit(st, ref, sb, tb);
  return true;
}

// What the single pass does with its block sums: commit them, or hand the block to the redo
// code (a new max or a non-finite sum; a non-finite t in the unmasked code sets `masked`).
template <class T, bool Masked>
LK_INLINE static bool entropy_fast1_finish(const typename T::storage* xb, int64_t len,
                                           EntropyState& st, bool& masked, const FastRef& ref,
                                           float sb, float tb, typename Vec::vec mx) {
  // A NaN may be dropped by the vector max, but then it is in the sums.
  const bool new_max = Vec::any_gt(mx, Vec::set1(st.m));
  if (new_max || !(__builtin_isfinite(sb) && __builtin_isfinite(tb))) {
    if (!Masked && !__builtin_isfinite(tb)) masked = true;
    return entropy_block_fast<T>(xb, len, st, Vec::reduce_max(mx));
  }
  entropy_commit(st, ref, sb, tb);
  return true;
}

// Single-pass fast block: the exp pass runs against the running max st.m straight from
// memory, with the block max taken on the side, so that no separate max pass re-reads the
// block. Only when the block max exceeds st.m (a new row max: rare after the first blocks of
// a row) or a sum is not finite is the block handed to the redo code above, which then
// finds it in L1/L2. A non-finite t sum in the unmasked code sets `masked` (the row has -inf
// entries) for the rest of the segment.
template <class T, bool Masked>
LK_INLINE static bool entropy_block_fast1(const typename T::storage* xb, int64_t len,
                                          EntropyState& st, bool& masked, const FastRef& ref) {
  float sb, tb;
  typename Vec::vec mx;
  entropy_exp_pass<T, Masked>(xb, len, ref, sb, tb, mx);
  return entropy_fast1_finish<T, Masked>(xb, len, st, masked, ref, sb, tb, mx);
}

// One step of an exp pass over two rows at once (element-interleaved: two memory streams):
// 2W elements of each (xa against the reference -nca, xb against -ncb), their lane maxima
// folded into ma / mb, and y = x L - C and e = 2^y for both; with Prefetch, the data
// kPrefetchBytes ahead on both rows is prefetched to L1.
struct TwoRowStep {
  typename Vec::vec a[2], b[2], ya[2], yb[2], ea[2], eb[2];
};

template <bool Pairs, bool Prefetch, class TA, class TB>
LK_INLINE static void two_row_step(const typename TA::storage* xa, const typename TB::storage* xb,
                                   typename Vec::vec vl, typename Vec::vec nca,
                                   typename Vec::vec ncb, typename Vec::vec (&ma)[2],
                                   typename Vec::vec (&mb)[2], TwoRowStep& r) {
  constexpr int64_t W = Vec::W;
  if constexpr (Prefetch) {
    constexpr int64_t bytes_a = 2 * W * static_cast<int64_t>(sizeof(*xa));
    constexpr int64_t bytes_b = 2 * W * static_cast<int64_t>(sizeof(*xb));
    prefetch_span<bytes_a, 3>(reinterpret_cast<const char*>(xa) + kPrefetchBytes);
    prefetch_span<bytes_b, 3>(reinterpret_cast<const char*>(xb) + kPrefetchBytes);
  }
  load2<Pairs, TA>(xa, r.a[0], r.a[1]);
  load2<Pairs, TB>(xb, r.b[0], r.b[1]);
  for (int k = 0; k < 2; ++k) {
    ma[k] = Vec::max(ma[k], r.a[k]);
    mb[k] = Vec::max(mb[k], r.b[k]);
    r.ya[k] = Vec::fmadd(r.a[k], vl, nca);
    r.yb[k] = Vec::fmadd(r.b[k], vl, ncb);
  }
  for (int k = 0; k < 2; ++k) {
    r.ea[k] = Vec::exp2_fast(r.ya[k]);
    r.eb[k] = Vec::exp2_fast(r.yb[k]);
  }
}

// Entropy's Prefetch instantiation reads a segment as two halves in lockstep, in blocks of
// kPairBlock elements (two memory streams, like kl_div's two rows), prefetching
// kPrefetchBytes ahead on both; the halves' states are merged at the end. Two streams beat one
// stream with the same prefetch; four streams gained nothing over two.
constexpr int64_t kPairBlock = kBlock / 2;

// The exp pass of two blocks of kPairBlock elements at once (xa against ra, xb against rb),
// element-interleaved, with the prefetch.
template <class T, bool Masked>
LK_INLINE static void entropy_exp_pass2(const typename T::storage* xa,
                                        const typename T::storage* xb, const FastRef& ra,
                                        const FastRef& rb, float& sa, float& ta,
                                        typename Vec::vec& mxa, float& sb, float& tb,
                                        typename Vec::vec& mxb) {
  using vec = typename Vec::vec;
  constexpr int64_t W = Vec::W;
  constexpr bool pairs = PairLoad<T>::value;
  const vec vl = Vec::set1(static_cast<float>(kLog2eD));
  const vec vnca = Vec::set1(-ra.c), vncb = Vec::set1(-rb.c);
  const vec ninf = Vec::set1(kNegInf);
  vec sa0 = Vec::zero(), sa1 = Vec::zero(), ta0 = Vec::zero(), ta1 = Vec::zero();
  vec sb0 = Vec::zero(), sb1 = Vec::zero(), tb0 = Vec::zero(), tb1 = Vec::zero();
  vec ma[2] = {ninf, ninf}, mb[2] = {ninf, ninf};
  for (int64_t i = 0; i < kPairBlock; i += 2 * W) {
    TwoRowStep r;
    two_row_step<pairs, true, T, T>(xa + i, xb + i, vl, vnca, vncb, ma, mb, r);
    sa0 = Vec::add(sa0, r.ea[0]);
    sa1 = Vec::add(sa1, r.ea[1]);
    sb0 = Vec::add(sb0, r.eb[0]);
    sb1 = Vec::add(sb1, r.eb[1]);
    ta0 = acc_live<Masked>(ta0, r.a[0], r.ea[0], r.ya[0]);
    ta1 = acc_live<Masked>(ta1, r.a[1], r.ea[1], r.ya[1]);
    tb0 = acc_live<Masked>(tb0, r.b[0], r.eb[0], r.yb[0]);
    tb1 = acc_live<Masked>(tb1, r.b[1], r.eb[1], r.yb[1]);
  }
  sa = Vec::reduce_add(Vec::add(sa0, sa1));
  ta = Vec::reduce_add(Vec::add(ta0, ta1));
  mxa = Vec::max(ma[0], ma[1]);
  sb = Vec::reduce_add(Vec::add(sb0, sb1));
  tb = Vec::reduce_add(Vec::add(tb0, tb1));
  mxb = Vec::max(mb[0], mb[1]);
}

// One block of a segment on its own (the careful code until the running max is finite).
template <class T>
LK_INLINE static bool entropy_step(const typename T::storage* xb, int64_t len, EntropyState& st,
                                   bool& masked, FastRef& ref) {
  if (!(st.m > kNegInf)) return entropy_block_careful<T>(xb, len, st);
  ref.set(st.m);
  return masked ? entropy_block_fast1<T, true>(xb, len, st, masked, ref)
                : entropy_block_fast1<T, false>(xb, len, st, masked, ref);
}

// A segment as two halves read in lockstep (see kPairBlock); the first half has whole blocks
// only. A block goes through the single-pass code on its own until both running maxima are
// finite, and where the second half's last block is short.
template <class T>
LK_TARGET static void entropy_segment_pair(const typename T::storage* x, int64_t n,
                                           EntropyState& st) {
  using vec = typename Vec::vec;
  const int64_t nb = (n + kPairBlock - 1) / kPairBlock;
  const int64_t h = (nb + 1) / 2 * kPairBlock;
  const typename T::storage* y = x + h;
  const int64_t ny = n - h;
  EntropyState sy;
  init_state(sy);
  bool ma = false, mb = false;
  FastRef ra, rb;
  for (int64_t b0 = 0; b0 < h; b0 += kPairBlock) {
    const int64_t lenb = b0 < ny ? lk_min(kPairBlock, ny - b0) : 0;
    bool oka, okb = true;
    if (lenb == kPairBlock && st.m > kNegInf && sy.m > kNegInf) {
      ra.set(st.m);
      rb.set(sy.m);
      float sa, ta, sb, tb;
      vec mxa, mxb;
      if (ma || mb) {
        entropy_exp_pass2<T, true>(x + b0, y + b0, ra, rb, sa, ta, mxa, sb, tb, mxb);
        oka = entropy_fast1_finish<T, true>(x + b0, kPairBlock, st, ma, ra, sa, ta, mxa);
        okb = entropy_fast1_finish<T, true>(y + b0, kPairBlock, sy, mb, rb, sb, tb, mxb);
      } else {
        entropy_exp_pass2<T, false>(x + b0, y + b0, ra, rb, sa, ta, mxa, sb, tb, mxb);
        oka = entropy_fast1_finish<T, false>(x + b0, kPairBlock, st, ma, ra, sa, ta, mxa);
        okb = entropy_fast1_finish<T, false>(y + b0, kPairBlock, sy, mb, rb, sb, tb, mxb);
      }
    } else {
      oka = entropy_step<T>(x + b0, kPairBlock, st, ma, ra);
      if (lenb > 0) okb = entropy_step<T>(y + b0, lenb, sy, mb, rb);
    }
    if (!oka || !okb) break;  // a NaN / +inf: the row is NaN whatever follows
  }
  merge_state(st, sy);
}

template <class T, bool Prefetch>
LK_TARGET static void entropy_segment_t(const void* xv, int64_t n, EntropyState& st) {
  using S = typename T::storage;
  const S* x = static_cast<const S*>(xv);
  if constexpr (Vec::kFastBlocks && Prefetch) {
    if (n >= 4 * kPairBlock) {
      entropy_segment_pair<T>(x, n, st);
      return;
    }
  }
  [[maybe_unused]] bool masked = false;
  [[maybe_unused]] FastRef ref;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = lk_min(kBlock, n - b0);
    bool ok;
    if constexpr (Vec::kFastBlocks) {
      if (!(st.m > kNegInf)) {
        ok = entropy_block_careful<T>(x + b0, len, st);
      } else {
        ref.set(st.m);
        ok = masked ? entropy_block_fast1<T, true>(x + b0, len, st, masked, ref)
                    : entropy_block_fast1<T, false>(x + b0, len, st, masked, ref);
      }
    } else {
      ok = entropy_block_careful<T>(x + b0, len, st);
    }
    if (!ok) return;
  }
}

// kl_div reads two rows: half-size blocks keep both in L1 for a redo.
constexpr int64_t kBlockKL = kBlock / 2;

// The two-pass block with every check (see entropy_block_careful). Returns false once the
// row is bad.
template <class TX, class TY>
__attribute__((noinline)) LK_TARGET static bool kl_block_careful(
    const typename TX::storage* xb, const typename TY::storage* yb, int64_t len, KLState& st) {
  using vec = typename Vec::vec;
  using mask = typename Vec::mask;
  constexpr int64_t W = Vec::W;
  const vec ninf = Vec::set1(kNegInf);
  const vec pinf = Vec::set1(kPosInf);
  int64_t i;
  {
    const int64_t nfull = len / W * W;
    const int tail = static_cast<int>(len - nfull);

    // Pass 1: maxima of both rows, min of q (to find masked q entries cheaply), NaN flag.
    vec mp0 = ninf, mp1 = ninf, mq0 = ninf, mq1 = ninf, nq0 = pinf, nq1 = pinf;
    mask bad = Vec::mask_none();
    i = 0;
    for (; i + 2 * W <= nfull; i += 2 * W) {
      const vec a0 = Vec::load(TX{}, xb + i);
      const vec a1 = Vec::load(TX{}, xb + i + W);
      const vec b0v = Vec::load(TY{}, yb + i);
      const vec b1v = Vec::load(TY{}, yb + i + W);
      mp0 = Vec::max(mp0, a0);
      mp1 = Vec::max(mp1, a1);
      mq0 = Vec::max(mq0, b0v);
      mq1 = Vec::max(mq1, b1v);
      nq0 = Vec::min(nq0, b0v);
      nq1 = Vec::min(nq1, b1v);
      bad = Vec::mask_or(bad, Vec::mask_or(Vec::unord2(a0, a1), Vec::unord2(b0v, b1v)));
    }
    for (; i < nfull; i += W) {
      const vec a0 = Vec::load(TX{}, xb + i);
      const vec b0v = Vec::load(TY{}, yb + i);
      mp0 = Vec::max(mp0, a0);
      mq0 = Vec::max(mq0, b0v);
      nq0 = Vec::min(nq0, b0v);
      bad = Vec::mask_or(bad, Vec::unord2(a0, b0v));
    }
    if (tail) {
      // Tail lanes read as -inf in both rows: masked in p, so they never count as q-dead.
      const vec a0 = Vec::load_tail(TX{}, xb + nfull, tail);
      const vec b0v = Vec::load_tail(TY{}, yb + nfull, tail);
      mp1 = Vec::max(mp1, a0);
      mq1 = Vec::max(mq1, b0v);
      nq1 = Vec::min(nq1, b0v);
      bad = Vec::mask_or(bad, Vec::unord2(a0, b0v));
    }
    if (Vec::any(bad)) {
      st.bad = true;
      return false;
    }
    const float bmp = Vec::reduce_max(Vec::max(mp0, mp1));
    const float bmq = Vec::reduce_max(Vec::max(mq0, mq1));
    if (bmp == kPosInf || bmq == kPosInf) {
      st.bad = true;
      return false;
    }
    if (!st.q_dead && Vec::reduce_min(Vec::min(nq0, nq1)) == kNegInf) {
      // Some q entry is masked: is p live there?
      mask dead = Vec::mask_none();
      for (i = 0; i < nfull; i += W) {
        const vec a0 = Vec::load(TX{}, xb + i);
        const vec b0v = Vec::load(TY{}, yb + i);
        dead = Vec::mask_or(dead, Vec::mask_and(Vec::is_neginf(b0v), Vec::not_neginf(a0)));
      }
      if (tail) {
        const vec a0 = Vec::load_tail(TX{}, xb + nfull, tail);
        const vec b0v = Vec::load_tail(TY{}, yb + nfull, tail);
        dead = Vec::mask_or(dead, Vec::mask_and(Vec::is_neginf(b0v), Vec::not_neginf(a0)));
      }
      if (Vec::any(dead)) st.q_dead = true;
    }
    if (st.q_dead) {
      // KL is +inf unless a later NaN/+inf makes it NaN: only the maxima still matter
      // (an all -inf row gives NaN).
      st.mp = lk_maxf(st.mp, bmp);
      st.mq = lk_maxf(st.mq, bmq);
      return true;
    }
    // Not q-dead: every live p entry has a live q entry, so sp > 0 implies sq > 0.
    if (bmp > st.mp) {
      if (st.sp > 0) {
        const double dm = static_cast<double>(st.mp) - static_cast<double>(bmp);
        const double c = __builtin_exp(dm);
        st.u = c * (st.u + dm * st.sp);
        st.sp *= c;
      }
      st.mp = bmp;
    }
    if (bmq > st.mq) {
      if (st.sq > 0) {
        const double dm = static_cast<double>(st.mq) - static_cast<double>(bmq);
        st.sq *= __builtin_exp(dm);
        st.u -= dm * st.sp;
      }
      st.mq = bmq;
    }
    if (bmq == kNegInf) return true;  // q all masked here, hence p too (not q-dead)

    const vec vmq = Vec::set1(st.mq);
    vec sq0 = Vec::zero(), sq1 = Vec::zero();
    if (bmp == kNegInf) {
      // p all masked in this block: only q's normaliser grows.
      for (i = 0; i + 2 * W <= nfull; i += 2 * W) {
        sq0 = Vec::add(sq0, Vec::exp_nonpos(Vec::sub(Vec::load(TY{}, yb + i), vmq)));
        sq1 = Vec::add(sq1, Vec::exp_nonpos(Vec::sub(Vec::load(TY{}, yb + i + W), vmq)));
      }
      for (; i < nfull; i += W) {
        sq0 = Vec::add(sq0, Vec::exp_nonpos(Vec::sub(Vec::load(TY{}, yb + i), vmq)));
      }
      if (tail) {
        sq1 = Vec::add(sq1,
                       Vec::exp_nonpos(Vec::sub(Vec::load_tail(TY{}, yb + nfull, tail), vmq)));
      }
      st.sq += static_cast<double>(Vec::reduce_add(Vec::add(sq0, sq1)));
      return true;
    }

    // Masked p entries (p = 0, live mask false) contribute 0 even where q is masked too.
    const vec vmp = Vec::set1(st.mp);
    vec sp0 = Vec::zero(), sp1 = Vec::zero(), u0 = Vec::zero(), u1 = Vec::zero();
    mask l0, l1;
    for (i = 0; i + 2 * W <= nfull; i += 2 * W) {
      const vec zp0 = Vec::sub(Vec::load(TX{}, xb + i), vmp);
      const vec zp1 = Vec::sub(Vec::load(TX{}, xb + i + W), vmp);
      const vec zq0 = Vec::sub(Vec::load(TY{}, yb + i), vmq);
      const vec zq1 = Vec::sub(Vec::load(TY{}, yb + i + W), vmq);
      const vec ep0 = Vec::exp_nonpos(zp0, l0);
      const vec ep1 = Vec::exp_nonpos(zp1, l1);
      sp0 = Vec::add(sp0, ep0);
      sp1 = Vec::add(sp1, ep1);
      sq0 = Vec::add(sq0, Vec::exp_nonpos(zq0));
      sq1 = Vec::add(sq1, Vec::exp_nonpos(zq1));
      u0 = Vec::mask_fmadd(u0, l0, ep0, Vec::sub(zp0, zq0));
      u1 = Vec::mask_fmadd(u1, l1, ep1, Vec::sub(zp1, zq1));
    }
    for (; i < nfull; i += W) {
      const vec zp0 = Vec::sub(Vec::load(TX{}, xb + i), vmp);
      const vec zq0 = Vec::sub(Vec::load(TY{}, yb + i), vmq);
      const vec ep0 = Vec::exp_nonpos(zp0, l0);
      sp0 = Vec::add(sp0, ep0);
      sq0 = Vec::add(sq0, Vec::exp_nonpos(zq0));
      u0 = Vec::mask_fmadd(u0, l0, ep0, Vec::sub(zp0, zq0));
    }
    if (tail) {
      const vec zp1 = Vec::sub(Vec::load_tail(TX{}, xb + nfull, tail), vmp);
      const vec zq1 = Vec::sub(Vec::load_tail(TY{}, yb + nfull, tail), vmq);
      const vec ep1 = Vec::exp_nonpos(zp1, l1);
      sp1 = Vec::add(sp1, ep1);
      sq1 = Vec::add(sq1, Vec::exp_nonpos(zq1));
      u1 = Vec::mask_fmadd(u1, l1, ep1, Vec::sub(zp1, zq1));
    }
    st.sp += static_cast<double>(Vec::reduce_add(Vec::add(sp0, sp1)));
    st.sq += static_cast<double>(Vec::reduce_add(Vec::add(sq0, sq1)));
    st.u += static_cast<double>(Vec::reduce_add(Vec::add(u0, u1)));
  }
  return true;
}

// The exp pass of the fast KL blocks against rp / rq, with Prefetch kPrefetchBytes ahead on
// both rows (see there): the block sums spb = sum 2^yp, sqb = sum 2^yq, ub = sum 2^yp (yp - yq)
// and the lane-wise block maxima.
// u is accumulated in log2 units against y values that carry the shifts dCp and dCq, both
// taken out in double (kl_commit). p == q gives bit-identical p and q sides, so KL(p, p) == 0.
template <class TX, class TY, bool Masked, bool Prefetch>
LK_INLINE static void kl_exp_pass(const typename TX::storage* xb, const typename TY::storage* yb,
                                  int64_t len, const FastRef& rp, const FastRef& rq, float& spb,
                                  float& sqb, float& ub, typename Vec::vec& mxp,
                                  typename Vec::vec& mxq) {
  using vec = typename Vec::vec;
  constexpr int64_t W = Vec::W;
  constexpr bool pairs = PairLoad<TX>::value && PairLoad<TY>::value;
  const int64_t nfull = len / W * W;
  const int tail = static_cast<int>(len - nfull);
  const vec vl = Vec::set1(static_cast<float>(kLog2eD));
  const vec vncp = Vec::set1(-rp.c), vncq = Vec::set1(-rq.c);
  const vec ninf = Vec::set1(kNegInf);
  vec sp0 = Vec::zero(), sp1 = Vec::zero(), sq0 = Vec::zero(), sq1 = Vec::zero();
  vec u0 = Vec::zero(), u1 = Vec::zero();
  vec mp[2] = {ninf, ninf}, mq[2] = {ninf, ninf};
  int64_t i = 0;
  for (; i + 2 * W <= nfull; i += 2 * W) {
    TwoRowStep r;
    two_row_step<pairs, Prefetch, TX, TY>(xb + i, yb + i, vl, vncp, vncq, mp, mq, r);
    sp0 = Vec::add(sp0, r.ea[0]);
    sp1 = Vec::add(sp1, r.ea[1]);
    sq0 = Vec::add(sq0, r.eb[0]);
    sq1 = Vec::add(sq1, r.eb[1]);
    u0 = acc_live<Masked>(u0, r.a[0], r.ea[0], Vec::sub(r.ya[0], r.yb[0]));
    u1 = acc_live<Masked>(u1, r.a[1], r.ea[1], Vec::sub(r.ya[1], r.yb[1]));
  }
  for (; i < nfull; i += W) {
    const vec a0 = Vec::load(TX{}, xb + i);
    const vec b0 = Vec::load(TY{}, yb + i);
    mp[0] = Vec::max(mp[0], a0);
    mq[0] = Vec::max(mq[0], b0);
    const vec yp0 = Vec::fmadd(a0, vl, vncp);
    const vec yq0 = Vec::fmadd(b0, vl, vncq);
    const vec ep0 = Vec::exp2_fast(yp0);
    sp0 = Vec::add(sp0, ep0);
    sq0 = Vec::add(sq0, Vec::exp2_fast(yq0));
    u0 = acc_live<Masked>(u0, a0, ep0, Vec::sub(yp0, yq0));
  }
  if (tail) {
    // Tail lanes read as -inf on both sides: always masked.
    const vec a1 = Vec::load_tail(TX{}, xb + nfull, tail);
    const vec b1 = Vec::load_tail(TY{}, yb + nfull, tail);
    mp[1] = Vec::max(mp[1], a1);
    mq[1] = Vec::max(mq[1], b1);
    const vec yp1 = Vec::fmadd(a1, vl, vncp);
    const vec yq1 = Vec::fmadd(b1, vl, vncq);
    const vec ep1 = Vec::exp2_fast(yp1);
    sp1 = Vec::add(sp1, ep1);
    sq1 = Vec::add(sq1, Vec::exp2_fast(yq1));
    u1 = acc_live<true>(u1, a1, ep1, Vec::sub(yp1, yq1));
  }
  spb = Vec::reduce_add(Vec::add(sp0, sp1));
  sqb = Vec::reduce_add(Vec::add(sq0, sq1));
  ub = Vec::reduce_add(Vec::add(u0, u1));
  mxp = Vec::max(mp[0], mp[1]);
  mxq = Vec::max(mq[0], mq[1]);
}

// How far (in logit units) a block max may exceed the running max and still be committed
// against the old one (kl_block_fast1).
constexpr float kKLSlack = 4.0f;

LK_INLINE static void kl_commit(KLState& st, const FastRef& rp, const FastRef& rq, float spb,
                                float sqb, float ub) {
  st.sp += rp.f * static_cast<double>(spb);
  st.sq += rq.f * static_cast<double>(sqb);
  const double du = static_cast<double>(ub) - (rp.dc - rq.dc) * static_cast<double>(spb);
  st.u += rp.f * du / kLog2eD;
}

// Moves the running maxima up to bmp / bmq where they are larger, rescaling the sums:
// u' = c_p (u + (dm_p - dm_q) s_p), s_p' = c_p s_p, s_q' = c_q s_q (one formula for both
// sides, so that equal p and q keep u exactly 0).
LK_INLINE static void kl_raise_max(KLState& st, float bmp, float bmq) {
  if (!(bmp > st.mp || bmq > st.mq)) return;
  double dmp = 0, dmq = 0;
  if (bmp > st.mp) {
    dmp = static_cast<double>(st.mp) - static_cast<double>(bmp);
    st.mp = bmp;
  }
  if (bmq > st.mq) {
    dmq = static_cast<double>(st.mq) - static_cast<double>(bmq);
    st.mq = bmq;
  }
  const double c = __builtin_exp(dmp);
  st.u = c * (st.u + (dmp - dmq) * st.sp);
  st.sp *= c;
  st.sq *= __builtin_exp(dmq);
}

// A KL block the single pass handed back, with its maxima bmp, bmq (see entropy_block_fast):
// needs finite mp and mq and no q-dead entry so far.
template <class TX, class TY>
__attribute__((noinline)) LK_TARGET static bool kl_block_fast(const typename TX::storage* xb,
                                                              const typename TY::storage* yb,
                                                              int64_t len, KLState& st, float bmp,
                                                              float bmq) {
  if (!(bmp > kNegInf && bmp < kPosInf && bmq > kNegInf && bmq < kPosInf)) {
    return kl_block_careful<TX, TY>(xb, yb, len, st);
  }
  kl_raise_max(st, bmp, bmq);
  FastRef rp, rq;
  rp.set(st.mp);
  rq.set(st.mq);
  float spb, sqb, ub;
  typename Vec::vec mxp, mxq;
  kl_exp_pass<TX, TY, true, false>(xb, yb, len, rp, rq, spb, sqb, ub, mxp, mxq);
  if (!(__builtin_isfinite(spb) && __builtin_isfinite(sqb) && __builtin_isfinite(ub))) {
    return kl_block_careful<TX, TY>(xb, yb, len, st);
  }
  kl_commit(st, rp, rq, spb, sqb, ub);
  return true;
}

// The rest of a single-pass KL block after its exp pass (block sums spb, sqb, ub and lane
// maxima mxp, mxq against rp, rq): commit, commit and rescale within the slack, or redo.
template <class TX, class TY, bool Masked>
LK_INLINE static bool kl_fast1_finish(const typename TX::storage* xb,
                                      const typename TY::storage* yb, int64_t len, KLState& st,
                                      bool& masked, const FastRef& rp, const FastRef& rq,
                                      float spb, float sqb, float ub, typename Vec::vec mxp,
                                      typename Vec::vec mxq) {
  // A NaN may be dropped by the vector max, but then it is in the sums.
  const bool new_max =
      Vec::any_gt(mxp, Vec::set1(st.mp)) || Vec::any_gt(mxq, Vec::set1(st.mq));
  const bool finite =
      __builtin_isfinite(spb) && __builtin_isfinite(sqb) && __builtin_isfinite(ub);
  if (new_max || !finite) {
    if (!Masked && !__builtin_isfinite(ub)) masked = true;
    const float bmp = Vec::reduce_max(mxp), bmq = Vec::reduce_max(mxq);
    // A new max at most kKLSlack above the running one: the sums against the old maxima are
    // finite and as precise (terms up to 2^(kKLSlack L)), so commit them and rescale instead
    // of redoing the exp pass. The rescale shifts u by (dm_p - dm_q) s_p in double; the fp32
    // rounding of the block's u grows by at most ~eps kKLSlack L s_p (below 1e-6 nats).
    if (finite && bmp - st.mp <= kKLSlack && bmq - st.mq <= kKLSlack) {
      kl_commit(st, rp, rq, spb, sqb, ub);
      kl_raise_max(st, bmp, bmq);
      return true;
    }
    return kl_block_fast<TX, TY>(xb, yb, len, st, bmp, bmq);
  }
  kl_commit(st, rp, rq, spb, sqb, ub);
  return true;
}

// Single-pass fast KL block (see entropy_block_fast1): against the running maxima, both block
// maxima on the side; a new maximum on either side or a non-finite sum hands the block to
// kl_block_fast. Without Masked, a masked p entry gives 0 * -inf = NaN in u
// (hand back, and mask from then on).
template <class TX, class TY, bool Masked, bool Prefetch>
LK_INLINE static bool kl_block_fast1(const typename TX::storage* xb,
                                     const typename TY::storage* yb, int64_t len, KLState& st,
                                     bool& masked, const FastRef& rp, const FastRef& rq) {
  float spb, sqb, ub;
  typename Vec::vec mxp, mxq;
  kl_exp_pass<TX, TY, Masked, Prefetch>(xb, yb, len, rp, rq, spb, sqb, ub, mxp, mxq);
  return kl_fast1_finish<TX, TY, Masked>(xb, yb, len, st, masked, rp, rq, spb, sqb, ub, mxp,
                                         mxq);
}

// One KL block of a segment: the careful code until both running maxima are finite (and
// after a q-dead entry), else the single pass.
template <class TX, class TY, bool Prefetch>
LK_INLINE static bool kl_step(const typename TX::storage* xb, const typename TY::storage* yb,
                              int64_t len, KLState& st, bool& masked, FastRef& rp, FastRef& rq) {
  if constexpr (Vec::kFastBlocks) {
    if (!(st.mp > kNegInf && st.mq > kNegInf && !st.q_dead)) {
      return kl_block_careful<TX, TY>(xb, yb, len, st);
    }
    rp.set(st.mp);
    rq.set(st.mq);
    return masked ? kl_block_fast1<TX, TY, true, Prefetch>(xb, yb, len, st, masked, rp, rq)
                  : kl_block_fast1<TX, TY, false, Prefetch>(xb, yb, len, st, masked, rp, rq);
  } else {
    return kl_block_careful<TX, TY>(xb, yb, len, st);
  }
}

// kl_div's Prefetch instantiation reads a segment as two halves in lockstep, in blocks of
// kPairBlockKL elements per row: four memory streams (p and q of each half), like entropy's
// two (see kPairBlock), each half with its own state, merged at the end. It pays off for fp32
// rows on AVX-512 only (bf16 got slower, likely register spills with the pair loads; AVX2 did
// not change), so only those take it. The results differ from the one-stream-pair code by
// rounding only (other sums, and the merge).
constexpr int64_t kPairBlockKL = kBlockKL / 2;

template <class TX, class TY>
constexpr bool kKLPairPath = Vec::kFastBlocks && Vec::W == 16 &&
                             __is_same(TX, F32T) && __is_same(TY, F32T);

struct KlBlockSums {
  float sp, sq, u;
  typename Vec::vec mxp, mxq;
};

// One half's running sums and lane maxima in kl_exp_pass2.
struct KlHalfAcc {
  typename Vec::vec sp, sq, u, mp[2], mq[2];

  LK_INLINE void init() {
    sp = sq = u = Vec::zero();
    mp[0] = mp[1] = mq[0] = mq[1] = Vec::set1(kNegInf);
  }
  template <bool Masked>
  LK_INLINE void add(const TwoRowStep& r) {
    sp = Vec::add(sp, Vec::add(r.ea[0], r.ea[1]));
    sq = Vec::add(sq, Vec::add(r.eb[0], r.eb[1]));
    u = acc_live<Masked>(u, r.a[0], r.ea[0], Vec::sub(r.ya[0], r.yb[0]));
    u = acc_live<Masked>(u, r.a[1], r.ea[1], Vec::sub(r.ya[1], r.yb[1]));
  }
  LK_INLINE void finish(KlBlockSums& out) const {
    out.sp = Vec::reduce_add(sp);
    out.sq = Vec::reduce_add(sq);
    out.u = Vec::reduce_add(u);
    out.mxp = Vec::max(mp[0], mp[1]);
    out.mxq = Vec::max(mq[0], mq[1]);
  }
};

// The exp pass of two KL blocks of kPairBlockKL elements at once (half a: xa, ya against
// rpa, rqa; half b: xb, yb against rpb, rqb), with the prefetch.
template <class TX, class TY, bool Masked>
LK_INLINE static void kl_exp_pass2(const typename TX::storage* xa, const typename TY::storage* ya,
                                   const typename TX::storage* xb, const typename TY::storage* yb,
                                   const FastRef& rpa, const FastRef& rqa, const FastRef& rpb,
                                   const FastRef& rqb, KlBlockSums& A, KlBlockSums& B) {
  using vec = typename Vec::vec;
  constexpr int64_t W = Vec::W;
  constexpr bool pairs = PairLoad<TX>::value && PairLoad<TY>::value;
  const vec vl = Vec::set1(static_cast<float>(kLog2eD));
  const vec ncpa = Vec::set1(-rpa.c), ncqa = Vec::set1(-rqa.c);
  const vec ncpb = Vec::set1(-rpb.c), ncqb = Vec::set1(-rqb.c);
  KlHalfAcc a, b;
  a.init();
  b.init();
  for (int64_t i = 0; i < kPairBlockKL; i += 2 * W) {
    TwoRowStep r;
    two_row_step<pairs, true, TX, TY>(xa + i, ya + i, vl, ncpa, ncqa, a.mp, a.mq, r);
    a.add<Masked>(r);
    two_row_step<pairs, true, TX, TY>(xb + i, yb + i, vl, ncpb, ncqb, b.mp, b.mq, r);
    b.add<Masked>(r);
  }
  a.finish(A);
  b.finish(B);
}

LK_INLINE static bool kl_fast_ready(const KLState& st) {
  return st.mp > kNegInf && st.mq > kNegInf && !st.q_dead;
}

// One block of each half (both states ready for the single pass): the shared exp pass, then
// each half's commit or redo.
template <class TX, class TY, bool Masked>
LK_INLINE static void kl_pair_fast(const typename TX::storage* xa, const typename TY::storage* ya,
                                   const typename TX::storage* xb, const typename TY::storage* yb,
                                   KLState& sa, KLState& sb, bool& ma, bool& mb,
                                   const FastRef& rpa, const FastRef& rqa, const FastRef& rpb,
                                   const FastRef& rqb, bool& oka, bool& okb) {
  KlBlockSums A, B;
  kl_exp_pass2<TX, TY, Masked>(xa, ya, xb, yb, rpa, rqa, rpb, rqb, A, B);
  oka = kl_fast1_finish<TX, TY, Masked>(xa, ya, kPairBlockKL, sa, ma, rpa, rqa, A.sp, A.sq, A.u,
                                        A.mxp, A.mxq);
  okb = kl_fast1_finish<TX, TY, Masked>(xb, yb, kPairBlockKL, sb, mb, rpb, rqb, B.sp, B.sq, B.u,
                                        B.mxp, B.mxq);
}

// A segment as two halves read in lockstep (see kPairBlockKL); the first half has whole
// blocks only. A block goes through kl_step on its own until both halves' states are ready
// for the single pass, and where the second half's last block is short.
template <class TX, class TY>
LK_TARGET static void kl_segment_pair(const typename TX::storage* x,
                                      const typename TY::storage* y, int64_t n, KLState& st) {
  const int64_t nb = (n + kPairBlockKL - 1) / kPairBlockKL;
  const int64_t h = (nb + 1) / 2 * kPairBlockKL;
  const typename TX::storage* x2 = x + h;
  const typename TY::storage* y2 = y + h;
  const int64_t n2 = n - h;
  KLState s2;
  init_state(s2);
  bool ma = false, mb = false;
  FastRef rpa, rqa, rpb, rqb;
  for (int64_t b0 = 0; b0 < h; b0 += kPairBlockKL) {
    const int64_t lenb = b0 < n2 ? lk_min(kPairBlockKL, n2 - b0) : 0;
    bool oka, okb = true;
    if (lenb == kPairBlockKL && kl_fast_ready(st) && kl_fast_ready(s2)) {
      rpa.set(st.mp);
      rqa.set(st.mq);
      rpb.set(s2.mp);
      rqb.set(s2.mq);
      if (ma || mb) {
        kl_pair_fast<TX, TY, true>(x + b0, y + b0, x2 + b0, y2 + b0, st, s2, ma, mb, rpa, rqa,
                                   rpb, rqb, oka, okb);
      } else {
        kl_pair_fast<TX, TY, false>(x + b0, y + b0, x2 + b0, y2 + b0, st, s2, ma, mb, rpa, rqa,
                                    rpb, rqb, oka, okb);
      }
    } else {
      oka = kl_step<TX, TY, true>(x + b0, y + b0, kPairBlockKL, st, ma, rpa, rqa);
      if (lenb > 0) okb = kl_step<TX, TY, true>(x2 + b0, y2 + b0, lenb, s2, mb, rpb, rqb);
    }
    if (!oka || !okb) break;  // a NaN / +inf: the row is NaN whatever follows
  }
  merge_state(st, s2);
}

template <class TX, class TY, bool Prefetch>
LK_TARGET static void kl_segment_t(const void* xv, const void* yv, int64_t n, KLState& st) {
  using SX = typename TX::storage;
  using SY = typename TY::storage;
  const SX* x = static_cast<const SX*>(xv);
  const SY* y = static_cast<const SY*>(yv);
  if constexpr (kKLPairPath<TX, TY> && Prefetch) {
    if (n >= 4 * kPairBlockKL) {
      kl_segment_pair<TX, TY>(x, y, n, st);
      return;
    }
  }
  bool masked = false;
  FastRef rp, rq;
  for (int64_t b0 = 0; b0 < n; b0 += kBlockKL) {
    if (!kl_step<TX, TY, Prefetch>(x + b0, y + b0, lk_min(kBlockKL, n - b0), st, masked, rp,
                                   rq)) {
      return;
    }
  }
}

// Type-erased entry points (the DType switch happens once per segment).
template <bool Prefetch>
LK_TARGET static void entropy_segment(const void* x, DType dt, int64_t n, EntropyState& st) {
  switch (dt) {
    case DType::F32:
      entropy_segment_t<F32T, Prefetch>(x, n, st);
      break;
    case DType::F16:
      entropy_segment_t<F16T, Prefetch>(x, n, st);
      break;
    case DType::BF16:
      entropy_segment_t<BF16T, Prefetch>(x, n, st);
      break;
  }
}

template <class TX, bool Prefetch>
LK_TARGET static void kl_segment_x(const void* x, const void* y, DType dy, int64_t n,
                                   KLState& st) {
  switch (dy) {
    case DType::F32:
      kl_segment_t<TX, F32T, Prefetch>(x, y, n, st);
      break;
    case DType::F16:
      kl_segment_t<TX, F16T, Prefetch>(x, y, n, st);
      break;
    case DType::BF16:
      kl_segment_t<TX, BF16T, Prefetch>(x, y, n, st);
      break;
  }
}

template <bool Prefetch>
LK_TARGET static void kl_segment(const void* x, DType dx, const void* y, DType dy, int64_t n,
                                 KLState& st) {
  switch (dx) {
    case DType::F32:
      kl_segment_x<F32T, Prefetch>(x, y, dy, n, st);
      break;
    case DType::F16:
      kl_segment_x<F16T, Prefetch>(x, y, dy, n, st);
      break;
    case DType::BF16:
      kl_segment_x<BF16T, Prefetch>(x, y, dy, n, st);
      break;
  }
}
