// The per-row arithmetic of the CUDA kernels (ops_cuda.cu): online-softmax states, their
// update / merge / finish, and the per-thread walk over one row. Free of ATen, and written as
// __host__ __device__ so that tests/cuda_emulation/emulate.cu runs this very code on the CPU
// (with exact exp2 / NaN-propagating max in place of the device instructions), thread by
// thread and reduction step by reduction step, where no GPU is at hand.
//
// Semantics are those of lenskit/reference.py (see the numerical contract in DESIGN.md):
// fp32/fp16/bf16 in, fp32 accumulation, fp32 out; -inf entries are masked (contribute 0); an
// all -inf row (or V == 0) gives NaN; NaN or +inf in a row gives NaN; KL is +inf where q is
// masked and p is not; a tiny negative KL (rounding) is clamped to 0.
//
// Each thread keeps an "online softmax" state over the elements it reads: the running max m
// (of the live, finite entries) and sums taken relative to m, rescaled by e^(m_old - m_new)
// whenever m grows (once per 16-byte vector, not per element):
//   entropy: s = sum e^(x-m),  t = sum e^(x-m) (x-m);          H  = log s - t/s
//   kl_div:  sp = sum e^(x-mp), u = sum e^(x-mp) (x-y), sq = sum e^(y-mq);
//            KL = u/sp + (mq - mp) + log(sq/sp)
//
// To stay memory-bound on Hopper the hot loop may cost only a handful of instructions per
// element (a budget from the compiler's instruction counts: benchmarks/cuda_static.py), so:
//   * e^z is one ex2.approx (MUFU.EX2) of z * log2(e): relative error ~2^-22, exact 1 at z = 0
//     (a one-hot row stays exactly 0), 0 at z = -inf, subnormal results flushed to 0 (terms
//     below 2^-126 of the row max, which no fp32 sum can see). The accurate expf and
//     per-element NaN checks would put the main loop over that budget.
//   * NaN / +inf are found per 16-byte vector, not per element: the vector max is taken with
//     max.NaN (NaN-propagating), so it is NaN or +inf exactly when the vector holds one.
//   * kl_div's "live in p, masked in q" is d = x - y = +inf: tracked as a running max of d
//     (NaN, where both are masked, drops out of fmaxf). Only |x - y| overflowing the fp32
//     range (logits beyond ~1.7e38) could raise it spuriously.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace lenskit_cuda {

#define LK_HD __host__ __device__ __forceinline__

constexpr float kInf = __builtin_huge_valf();
constexpr float kNaN = __builtin_nanf("");
constexpr float kLog2e = 1.4426950408889634f;

constexpr unsigned kFlagBad = 1u;  // a NaN or +inf entry (in p or q)

constexpr int kWarpSize = 32;

// ------------------------------------------------------------------------------------------
// Launch shape (host side; shared with the emulation so that it walks the kernels' paths)
// ------------------------------------------------------------------------------------------

constexpr int kRowsPerWarpBlock = 8;      // warp-per-row kernels: 8 warps = 256 threads
constexpr int64_t kWarpMaxVecs = 512;     // at most 16 vector loads per lane
constexpr int64_t kWarpAlwaysVecs = 128;  // short enough for a warp even when rows are few
constexpr int64_t kBlock256MaxVecs = 8192;

// LENSKIT_CUDA_ROW_THREADS=256|1024 (read on every call): the block size for rows that get a
// block each, instead of the choice by row length below, so that one benchmark run can time
// both on a GPU. (By their register counts an SM holds one 1024-thread block of these kernels
// but several 256-thread ones, whose row-end reductions can then overlap other blocks' loads.)
// 0: no override.
inline int row_threads_override() {
  const char* env = std::getenv("LENSKIT_CUDA_ROW_THREADS");
  if (env == nullptr) return 0;
  if (std::strcmp(env, "256") == 0) return 256;
  if (std::strcmp(env, "1024") == 0) return 1024;
  return 0;
}

// Threads per row: kWarpSize (one warp per row, kRowsPerWarpBlock rows per block), 256 or
// 1024 (one block per row); see "Launch configuration" in ops_cuda.cu.
inline int threads_per_row(int64_t rows, int64_t V, int vec_width, int sms) {
  const int64_t nvec = (V + vec_width - 1) / vec_width;
  const bool many_rows = rows >= static_cast<int64_t>(sms) * kRowsPerWarpBlock;
  if (nvec <= kWarpAlwaysVecs || (nvec <= kWarpMaxVecs && many_rows)) return kWarpSize;
  if (const int forced = row_threads_override()) return forced;
  return nvec <= kBlock256MaxVecs ? 256 : 1024;
}

// 2^y: one MUFU.EX2 on the device. ex2.approx of +-0 is exactly 1 (PTX ISA special cases).
LK_HD float fast_exp2(float y) {
#ifdef __CUDA_ARCH__
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(y));
  return r;
#else
  return std::exp2(y);
#endif
}

// e^z as the kernels take it.
LK_HD float fast_exp(float z) { return fast_exp2(z * kLog2e); }

// max(a, b) that returns NaN when either is NaN (fmaxf drops a NaN operand).
LK_HD float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return (a != a || b != b) ? kNaN : fmaxf(a, b);
#endif
}

// ------------------------------------------------------------------------------------------
// Loads
// ------------------------------------------------------------------------------------------

LK_HD float to_float(float v) { return v; }
LK_HD float to_float(__half v) { return __half2float(v); }
LK_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
struct VecWidth {
  static constexpr int value = 16 / static_cast<int>(sizeof(T));
};

// 16 bytes at a 16-byte aligned address (read-only path). Kept raw so that several loads can
// be in flight before any of them is converted.
struct Raw16 {
  unsigned x, y, z, w;
};

template <typename T>
LK_HD Raw16 load16(const T* p) {
#ifdef __CUDA_ARCH__
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  return {v.x, v.y, v.z, v.w};
#else
  // A device load from a misaligned address faults; the emulation must not hide one.
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) std::abort();
  Raw16 r;
  std::memcpy(&r, p, sizeof(r));
  return r;
#endif
}

LK_HD float bits_to_float(unsigned u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

LK_HD float half_bits_to_float(unsigned short h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h));
#else
  __half_raw raw;
  raw.x = h;
  return __half2float(__half(raw));
#endif
}

// The VecWidth<T> elements of a 16-byte word, as floats.
template <typename T>
LK_HD void unpack(const Raw16& raw, float (&v)[VecWidth<T>::value]) {
  const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = bits_to_float(words[k]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const unsigned short lo = static_cast<unsigned short>(words[k] & 0xffffu);
      const unsigned short hi = static_cast<unsigned short>(words[k] >> 16);
      if constexpr (std::is_same_v<T, __half>) {
        v[2 * k] = half_bits_to_float(lo);
        v[2 * k + 1] = half_bits_to_float(hi);
      } else {
        // bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits.
        v[2 * k] = bits_to_float(static_cast<unsigned>(lo) << 16);
        v[2 * k + 1] = bits_to_float(words[k] & 0xffff0000u);
      }
    }
  }
}

// Elements before the first 16-byte boundary of a row (clamped to V). Returns V when the row is
// not even element-aligned (the host never passes such pointers; this is only a safety net).
template <typename T>
LK_HD int aligned_head(const T* row, int V) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(row);
  if (a % sizeof(T) != 0) return V;
  const int head = static_cast<int>(((16u - (a & 15u)) & 15u) / sizeof(T));
  return head < V ? head : V;
}

// Max of v[0..N) with NaN propagated: NaN or +inf exactly when v holds one, -inf when all of
// v is masked.
template <int N>
LK_HD float vector_max(const float* v) {
  float m = v[0];
#pragma unroll
  for (int j = 1; j < N; ++j) m = max_nan(m, v[j]);
  return m;
}

// True for NaN and +inf.
LK_HD bool is_bad(float v) { return !(v < kInf); }

// ------------------------------------------------------------------------------------------
// Entropy state
// ------------------------------------------------------------------------------------------

struct EntropyState {
  float m;  // max of the live finite entries seen (-inf: none yet)
  float s;  // sum e^(x-m)
  float t;  // sum e^(x-m) (x-m)
  unsigned flags;
};

LK_HD EntropyState entropy_identity() { return {-kInf, 0.f, 0.f, 0u}; }

// (s, t) taken relative to m, re-expressed relative to m' = m - d (d <= 0):
// e^(x-m') (x-m') = c e^(x-m) ((x-m) + d) with c = e^d, so s' = c s and t' = c (t + d s).
// When c underflows to 0 the old terms vanish; testing it avoids 0 * (-inf) if d * s overflows
// (only for logits near the float range limits).
LK_HD void rescale_entropy(float d, float& s, float& t) {
  const float c = fast_exp(d);
  if (c == 0.f) {
    s = 0.f;
    t = 0.f;
  } else {
    t = c * fmaf(d, s, t);
    s = c * s;
  }
}

template <int N>
LK_HD void entropy_update(EntropyState& st, const float* v) {
  const float cm = vector_max<N>(v);
  if (!(cm > -kInf && cm < kInf)) {
    // All masked: nothing to add. NaN / +inf: the row's result is NaN.
    st.flags |= cm == -kInf ? 0u : kFlagBad;
    return;
  }
  if (cm > st.m) {
    if (st.m != -kInf) rescale_entropy(st.m - cm, st.s, st.t);
    st.m = cm;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float z = v[j] - st.m;  // -inf for masked entries
    const float e = fast_exp(z);  // 0 for masked entries
    st.s += e;
    // Clamping z keeps a masked entry's term 0 * (-FLT_MAX) = 0 instead of 0 * -inf = NaN.
    st.t = fmaf(e, fmaxf(z, -FLT_MAX), st.t);
  }
}

LK_HD EntropyState merge(const EntropyState& a, const EntropyState& b) {
  EntropyState r;
  r.flags = a.flags | b.flags;
  r.m = fmaxf(a.m, b.m);
  r.s = 0.f;
  r.t = 0.f;
  if (r.m != -kInf) {
    // A state with m == -inf has seen nothing live (s == t == 0) and adds nothing.
    if (a.m != -kInf) {
      float s = a.s, t = a.t;
      rescale_entropy(a.m - r.m, s, t);
      r.s = s;
      r.t = t;
    }
    if (b.m != -kInf) {
      float s = b.s, t = b.t;
      rescale_entropy(b.m - r.m, s, t);
      r.s += s;
      r.t += t;
    }
  }
  return r;
}

// ------------------------------------------------------------------------------------------
// KL state
// ------------------------------------------------------------------------------------------

struct KlState {
  float mp;    // max of live finite p entries
  float sp;    // sum e^(x-mp)
  float u;     // sum over entries live in p of e^(x-mp) (x-y) (x - y clamped at -FLT_MAX)
  float mq;    // max of live finite q entries
  float sq;    // sum e^(y-mq)
  float dmax;  // max of x - y over entries where it is not NaN: +inf iff live in p, dead in q
  unsigned flags;
};

LK_HD KlState kl_identity() { return {-kInf, 0.f, 0.f, -kInf, 0.f, -kInf, 0u}; }

template <int N>
LK_HD void kl_update(KlState& st, const float* x, const float* y) {
  const float cmx = vector_max<N>(x);
  const float cmy = vector_max<N>(y);
  if (is_bad(cmx) || is_bad(cmy)) {
    st.flags |= kFlagBad;
    return;
  }
  if (cmx != -kInf) {  // else all of p is masked here: no term, and nothing live in p
    if (cmx > st.mp) {
      if (st.mp != -kInf) {
        const float c = fast_exp(st.mp - cmx);
        st.sp *= c;
        st.u *= c;
      }
      st.mp = cmx;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float e = fast_exp(x[j] - st.mp);  // 0 where p is masked
      st.sp += e;
      const float d = x[j] - y[j];  // +inf: live in p, masked in q; NaN: masked in both
      st.dmax = fmaxf(st.dmax, d);
      // Entries masked in p add e * -FLT_MAX = 0; a dead q entry makes u +inf (or NaN), but
      // dmax decides that row's result.
      st.u = fmaf(e, fmaxf(d, -FLT_MAX), st.u);
    }
  }
  if (cmy != -kInf) {
    if (cmy > st.mq) {
      if (st.mq != -kInf) st.sq *= fast_exp(st.mq - cmy);
      st.mq = cmy;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) st.sq += fast_exp(y[j] - st.mq);
  }
}

LK_HD KlState merge(const KlState& a, const KlState& b) {
  KlState r;
  r.flags = a.flags | b.flags;
  r.dmax = fmaxf(a.dmax, b.dmax);
  r.mp = fmaxf(a.mp, b.mp);
  r.sp = 0.f;
  r.u = 0.f;
  if (r.mp != -kInf) {
    if (a.mp != -kInf) {
      const float c = fast_exp(a.mp - r.mp);
      r.sp = c * a.sp;
      r.u = c * a.u;
    }
    if (b.mp != -kInf) {
      const float c = fast_exp(b.mp - r.mp);
      r.sp += c * b.sp;
      r.u += c * b.u;
    }
  }
  r.mq = fmaxf(a.mq, b.mq);
  r.sq = 0.f;
  if (r.mq != -kInf) {
    if (a.mq != -kInf) r.sq = fast_exp(a.mq - r.mq) * a.sq;
    if (b.mq != -kInf) r.sq += fast_exp(b.mq - r.mq) * b.sq;
  }
  return r;
}

// ------------------------------------------------------------------------------------------
// Per-row work: the threads tid = 0..NT-1 of a warp (NT = 32) or a block (NT = blockDim.x)
// each return their partial state over one row.
// ------------------------------------------------------------------------------------------

template <typename T>
struct EntropyRows {
  using State = EntropyState;
  const T* __restrict__ base;
  int64_t row_stride;
  float* __restrict__ lse;  // logsumexp per row (entropy_lse), or nullptr (entropy)

  LK_HD State identity() const { return entropy_identity(); }

  template <int NT>
  LK_HD State partial(int64_t r, int V, int tid) const {
    constexpr int VEC = VecWidth<T>::value;
    const T* __restrict__ row = base + r * row_stride;
    State st = entropy_identity();
    const int head = aligned_head(row, V);
    for (int i = tid; i < head; i += NT) {
      const float v = to_float(row[i]);
      entropy_update<1>(st, &v);
    }
    const int nvec = (V - head) / VEC;
    const T* __restrict__ body = row + head;
    // kUnroll independent 16-byte loads are issued before any is consumed (memory-level
    // parallelism); the remainder goes one vector at a time.
    constexpr int kUnroll = 4;
    int k = tid;
    for (; k + (kUnroll - 1) * NT < nvec; k += kUnroll * NT) {
      Raw16 raw[kUnroll];
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) raw[j] = load16(body + (k + j * NT) * VEC);
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        float v[VEC];
        unpack<T>(raw[j], v);
        entropy_update<VEC>(st, v);
      }
    }
    for (; k < nvec; k += NT) {
      float v[VEC];
      unpack<T>(load16(body + k * VEC), v);
      entropy_update<VEC>(st, v);
    }
    for (int i = head + nvec * VEC + tid; i < V; i += NT) {
      const float v = to_float(row[i]);
      entropy_update<1>(st, &v);
    }
    return st;
  }

  LK_HD float finish(const State& st) const {
    if (st.flags != 0u || st.m == -kInf) return kNaN;  // NaN/+inf seen, all masked, or V == 0
    // Both terms are >= 0: s >= 1 (the max entry adds exactly e^0 = 1) and t <= 0 (z <= 0).
    return logf(st.s) - st.t / st.s;
  }

  // Writes row r's results from its merged state (lse = m + log s, NaN where H is NaN).
  LK_HD void store(const State& st, int64_t r, float* __restrict__ out) const {
    out[r] = finish(st);
    if (lse != nullptr) lse[r] = (st.flags != 0u || st.m == -kInf) ? kNaN : st.m + logf(st.s);
  }
};

template <typename T>
struct KlRows {
  using State = KlState;
  const T* __restrict__ p;
  const T* __restrict__ q;
  int64_t p_stride;
  int64_t q_stride;

  LK_HD State identity() const { return kl_identity(); }

  template <int NT>
  LK_HD State partial(int64_t r, int V, int tid) const {
    constexpr int VEC = VecWidth<T>::value;
    const T* __restrict__ x = p + r * p_stride;
    const T* __restrict__ y = q + r * q_stride;
    State st = kl_identity();
    // Joint vector loads need p and q to sit at the same offset from a 16-byte boundary.
    const bool same_phase =
        (reinterpret_cast<uintptr_t>(x) & 15u) == (reinterpret_cast<uintptr_t>(y) & 15u);
    const int head = same_phase ? aligned_head(x, V) : V;
    for (int i = tid; i < head; i += NT) {
      const float a = to_float(x[i]);
      const float b = to_float(y[i]);
      kl_update<1>(st, &a, &b);
    }
    const int nvec = (V - head) / VEC;
    const T* __restrict__ xb = x + head;
    const T* __restrict__ yb = y + head;
    constexpr int kUnroll = 2;  // x 2 streams = 4 loads in flight per thread
    int k = tid;
    for (; k + (kUnroll - 1) * NT < nvec; k += kUnroll * NT) {
      Raw16 rx[kUnroll], ry[kUnroll];
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        rx[j] = load16(xb + (k + j * NT) * VEC);
        ry[j] = load16(yb + (k + j * NT) * VEC);
      }
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        float a[VEC], b[VEC];
        unpack<T>(rx[j], a);
        unpack<T>(ry[j], b);
        kl_update<VEC>(st, a, b);
      }
    }
    for (; k < nvec; k += NT) {
      float a[VEC], b[VEC];
      unpack<T>(load16(xb + k * VEC), a);
      unpack<T>(load16(yb + k * VEC), b);
      kl_update<VEC>(st, a, b);
    }
    for (int i = head + nvec * VEC + tid; i < V; i += NT) {
      const float a = to_float(x[i]);
      const float b = to_float(y[i]);
      kl_update<1>(st, &a, &b);
    }
    return st;
  }

  LK_HD float finish(const State& st) const {
    if ((st.flags & kFlagBad) != 0u || st.mp == -kInf || st.mq == -kInf) return kNaN;
    if (st.dmax == kInf) return kInf;
    // KL = E_p[x - y] + (mq - mp) + log(sq / sp); the ratio keeps log's rounding relative to
    // the (often tiny) KL rather than to log sp ~ log V.
    const float kl = st.u / st.sp + (st.mq - st.mp) + logf(st.sq / st.sp);
    return kl < 0.f ? 0.f : kl;  // rounding can leave a tiny negative value
  }

  LK_HD void store(const State& st, int64_t r, float* __restrict__ out) const {
    out[r] = finish(st);
  }
};

#undef LK_HD

}  // namespace lenskit_cuda
