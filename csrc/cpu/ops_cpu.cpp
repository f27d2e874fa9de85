// CPU ops: row layout, threading (rows across threads, or the vocabulary across threads when
// there are fewer rows than threads), merging of partial states, and pairwise_kl via one GEMM.
#include "ops_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "../common.h"
#include "kernels.h"

namespace lenskit {
namespace cpu {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
}  // namespace

void init_state(EntropyState& st) { st = {kNegInf, 0.0, 0.0, false}; }
void init_state(KLState& st) { st = {kNegInf, kNegInf, 0.0, 0.0, 0.0, false, false}; }

void merge_state(EntropyState& a, const EntropyState& b) {
  a.bad = a.bad || b.bad;
  if (!(b.s > 0)) return;
  if (!(a.s > 0)) {
    a.m = b.m;
    a.s = b.s;
    a.t = b.t;
    return;
  }
  const double m = std::max(a.m, b.m);
  const double da = a.m - m, db = b.m - m;
  const double ca = std::exp(da), cb = std::exp(db);
  a.t = ca * (a.t + da * a.s) + cb * (b.t + db * b.s);
  a.s = ca * a.s + cb * b.s;
  a.m = static_cast<float>(m);
}

void merge_state(KLState& a, const KLState& b) {
  a.bad = a.bad || b.bad;
  a.q_dead = a.q_dead || b.q_dead;
  const float mp = std::max(a.mp, b.mp);
  const float mq = std::max(a.mq, b.mq);
  if (a.q_dead) {  // +inf (or NaN): the sums no longer matter
    a.mp = mp;
    a.mq = mq;
    return;
  }
  double sp = 0, sq = 0, u = 0;
  const KLState parts[2] = {a, b};
  for (const KLState* s : {&parts[0], &parts[1]}) {
    if (s->sp > 0) {  // then s->sq > 0 too (not q-dead)
      const double dp = static_cast<double>(s->mp) - mp;
      const double dq = static_cast<double>(s->mq) - mq;
      const double c = std::exp(dp);
      const double spc = c * s->sp;
      u += c * (s->u + dp * s->sp) - dq * spc;
      sp += spc;
    }
    if (s->sq > 0) sq += std::exp(static_cast<double>(s->mq) - mq) * s->sq;
  }
  a.mp = mp;
  a.mq = mq;
  a.sp = sp;
  a.sq = sq;
  a.u = u;
}

float finish_state(const EntropyState& st) {
  if (st.bad || !(st.s > 0)) return kNaN;  // NaN/+inf seen, or the row is all -inf
  return static_cast<float>(std::log(st.s) - st.t / st.s);
}

float finish_lse(const EntropyState& st) {
  if (st.bad || !(st.s > 0)) return kNaN;  // same NaN rows as finish_state
  return static_cast<float>(static_cast<double>(st.m) + std::log(st.s));
}

float finish_state(const KLState& st) {
  if (st.bad || st.mp == kNegInf || st.mq == kNegInf) return kNaN;
  if (st.q_dead) return std::numeric_limits<float>::infinity();
  const double kl = st.u / st.sp - std::log(st.sp) + std::log(st.sq);
  return static_cast<float>(std::max(kl, 0.0));  // rounding can give a tiny negative value
}

namespace {

int best_isa_level() {
#if defined(LENSKIT_X86)
  static const int level = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq");
    return avx512 ? 2 : avx2 ? 1 : 0;
  }();
  return level;
#else
  return 0;
#endif
}

// The prefetching kernels' default (see kPrefetchBytes in kernel_impl.h).
bool intel_cpu() {
#if defined(LENSKIT_X86)
  static const bool intel = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return intel;
#else
  return false;
#endif
}

}  // namespace

const IsaKernels& select_kernels() {
#if defined(LENSKIT_X86)
  static const IsaKernels tables[3] = {scalar_kernels(), avx2_kernels(), avx512_kernels()};
#else
  static const IsaKernels tables[1] = {scalar_kernels()};
#endif
  int level = best_isa_level();
  if (const char* env = std::getenv("LENSKIT_CPU_ISA"); env != nullptr && *env != '\0') {
    int want = -1;
    if (std::strcmp(env, "scalar") == 0) want = 0;
    else if (std::strcmp(env, "avx2") == 0) want = 1;
    else if (std::strcmp(env, "avx512") == 0) want = 2;
    TORCH_CHECK(want >= 0, "lenskit: LENSKIT_CPU_ISA='", env,
                "' is not one of scalar, avx2, avx512 (or unset for the best the CPU has)");
    level = std::min(level, want);
  }
  return tables[level];
}

bool use_prefetch(const IsaKernels& k) {
  bool want = intel_cpu();
  if (const char* env = std::getenv("LENSKIT_CPU_PREFETCH"); env != nullptr && *env != '\0') {
    TORCH_CHECK(std::strcmp(env, "1") == 0 || std::strcmp(env, "0") == 0,
                "lenskit: LENSKIT_CPU_PREFETCH='", env,
                "' is not 1 or 0 (or unset to prefetch on Intel CPUs only)");
    want = env[0] == '1';
  }
  return want && k.kl_prefetch != nullptr && k.entropy_prefetch != nullptr;
}

namespace {

DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return DType::F32;
    case at::kHalf:
      return DType::F16;
    default:
      return DType::BF16;
  }
}

// A [rows, V] input: base pointer, row stride in bytes, element type.
struct Rows {
  const char* base;
  int64_t row_bytes;
  int64_t elem_bytes;
  DType dt;
  const void* at(int64_t r, int64_t col) const {
    return base + r * row_bytes + col * elem_bytes;
  }
};

Rows rows_of(const at::Tensor& x) {
  return {static_cast<const char*>(x.const_data_ptr()), x.stride(0) * x.element_size(),
          static_cast<int64_t>(x.element_size()), dtype_of(x)};
}

// Below this many elements per task, threads cost more than they save.
constexpr int64_t kGrainElements = 1 << 15;
// Smallest vocabulary segment handed to one thread when a row is split.
constexpr int64_t kMinSegment = 4 * kBlock;

// Calls body(k) for k in [0, n) on up to `threads` threads. Work is handed out dynamically
// in small chunks (an atomic counter), so one thread slowed down by other load on the machine
// does not hold up the others the way a static split would.
template <class Body>
void dynamic_for(int64_t n, int64_t threads, int64_t chunk, const Body& body) {
  if (threads <= 1 || n <= chunk) {
    for (int64_t k = 0; k < n; ++k) body(k);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t k0 = next.fetch_add(chunk, std::memory_order_relaxed);
      if (k0 >= n) break;
      const int64_t k1 = std::min(n, k0 + chunk);
      for (int64_t k = k0; k < k1; ++k) body(k);
    }
  });
}

// Runs seg(row, begin, len, state) over every row (split into segments when there are fewer
// rows than threads) and calls store(row, merged state).
template <class State, class Seg, class Store>
void run_rows(int64_t rows, int64_t v, const Seg& seg, const Store& store) {
  const int64_t total = rows * v;
  int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  threads = std::max<int64_t>(1, std::min(threads, total / kGrainElements));
  int64_t chunks = 1;
  if (rows < threads) {
    chunks = std::min((threads + rows - 1) / rows, std::max<int64_t>(1, v / kMinSegment));
  }
  if (chunks <= 1) {
    // Chunks of rows of about kGrainElements elements, at least 8 chunks per thread.
    const int64_t chunk = std::max<int64_t>(
        1, std::min(kGrainElements / v, rows / (8 * threads)));
    dynamic_for(rows, threads, chunk, [&](int64_t r) {
      State st;
      init_state(st);
      seg(r, 0, v, st);
      store(r, st);
    });
    return;
  }
  // Segments aligned to blocks; partial states merged in order afterwards.
  int64_t seg_len = (v + chunks - 1) / chunks;
  seg_len = (seg_len + kBlock - 1) / kBlock * kBlock;
  chunks = (v + seg_len - 1) / seg_len;
  std::vector<State> parts(static_cast<size_t>(rows * chunks));
  dynamic_for(rows * chunks, threads, 1, [&](int64_t k) {
    const int64_t r = k / chunks, c = k % chunks;
    const int64_t begin = c * seg_len;
    State& st = parts[static_cast<size_t>(k)];
    init_state(st);
    seg(r, begin, std::min(seg_len, v - begin), st);
  });
  for (int64_t r = 0; r < rows; ++r) {
    State st = parts[static_cast<size_t>(r * chunks)];
    for (int64_t c = 1; c < chunks; ++c) merge_state(st, parts[static_cast<size_t>(r * chunks + c)]);
    store(r, st);
  }
}

void check_cpu(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "lenskit.", op, ": the CPU kernel got ", name, " on ",
                    x.device());
}

}  // namespace
}  // namespace cpu

namespace {

// Entropy (and, when lse is defined, logsumexp) of every row of logits, from one pass.
void entropy_rows_cpu(const at::Tensor& logits, const at::Tensor& out, const at::Tensor& lse) {
  const int64_t rows = num_rows(logits), v = logits.size(-1);
  if (rows == 0) return;
  if (v == 0) {
    out.fill_(std::numeric_limits<float>::quiet_NaN());
    if (lse.defined()) lse.fill_(std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const at::Tensor x = as_rows(logits);
  const cpu::Rows xr = cpu::rows_of(x);
  const cpu::IsaKernels& k = cpu::select_kernels();
  const auto fn = cpu::use_prefetch(k) ? k.entropy_prefetch : k.entropy;
  float* const po = out.data_ptr<float>();
  float* const pl = lse.defined() ? lse.data_ptr<float>() : nullptr;
  cpu::run_rows<cpu::EntropyState>(
      rows, v,
      [&](int64_t r, int64_t begin, int64_t len, cpu::EntropyState& st) {
        fn(xr.at(r, begin), xr.dt, len, st);
      },
      [&](int64_t r, const cpu::EntropyState& st) {
        po[r] = cpu::finish_state(st);
        if (pl != nullptr) pl[r] = cpu::finish_lse(st);
      });
}

}  // namespace

at::Tensor entropy_cpu(const at::Tensor& logits) {
  check_logits("entropy", "logits", logits);
  cpu::check_cpu("entropy", "logits", logits);
  at::Tensor out = at::empty(lead_shape(logits), logits.options().dtype(at::kFloat));
  entropy_rows_cpu(logits, out, at::Tensor());
  return out;
}

std::tuple<at::Tensor, at::Tensor> entropy_lse_cpu(const at::Tensor& logits) {
  check_logits("entropy_lse", "logits", logits);
  cpu::check_cpu("entropy_lse", "logits", logits);
  at::Tensor out = at::empty(lead_shape(logits), logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty(lead_shape(logits), logits.options().dtype(at::kFloat));
  entropy_rows_cpu(logits, out, lse);
  return {out, lse};
}

at::Tensor kl_div_cpu(const at::Tensor& p_logits, const at::Tensor& q_logits) {
  check_kl_div_args(p_logits, q_logits);
  cpu::check_cpu("kl_div", "p_logits", p_logits);
  at::Tensor out = at::empty(lead_shape(p_logits), p_logits.options().dtype(at::kFloat));
  const int64_t rows = num_rows(p_logits), v = p_logits.size(-1);
  if (rows == 0) return out;
  if (v == 0) return out.fill_(std::numeric_limits<float>::quiet_NaN());
  const at::Tensor x = as_rows(p_logits);
  const at::Tensor y = as_rows(q_logits);
  const cpu::Rows xr = cpu::rows_of(x), yr = cpu::rows_of(y);
  const cpu::IsaKernels& k = cpu::select_kernels();
  const auto fn = cpu::use_prefetch(k) ? k.kl_prefetch : k.kl;
  float* const po = out.data_ptr<float>();
  cpu::run_rows<cpu::KLState>(
      rows, v,
      [&](int64_t r, int64_t begin, int64_t len, cpu::KLState& st) {
        fn(xr.at(r, begin), xr.dt, yr.at(r, begin), yr.dt, len, st);
      },
      [&](int64_t r, const cpu::KLState& st) { po[r] = cpu::finish_state(st); });
  return out;
}

namespace {

// (p, log p with masked entries 0, row ok) for an fp32 [n, V] block, as in reference.py.
struct LogSoftmaxParts {
  at::Tensor p, logp0, ok, dead;
};

LogSoftmaxParts log_softmax_parts(const at::Tensor& x) {
  const at::Tensor m = std::get<0>(x.max(-1));
  const at::Tensor logp = at::log_softmax(x, -1);
  const at::Tensor dead = x.eq(-std::numeric_limits<float>::infinity());
  return {logp.exp(), logp.masked_fill(dead, 0.0), at::isfinite(m), dead};
}

}  // namespace

at::Tensor pairwise_kl_cpu(const at::Tensor& p_logits, const at::Tensor& q_logits) {
  check_pairwise_kl_args(p_logits, q_logits);
  cpu::check_cpu("pairwise_kl", "p_logits", p_logits);
  const int64_t n = p_logits.size(0), mr = q_logits.size(0), v = p_logits.size(1);
  at::Tensor out = at::empty({n, mr}, p_logits.options().dtype(at::kFloat));
  if (n == 0 || mr == 0) return out;
  if (v == 0) return out.fill_(std::numeric_limits<float>::quiet_NaN());
  // KL(P_i || Q_j) = sum_v p_iv log p_iv - (P @ log Q^T)_ij: one fp32 GEMM per chunk pair,
  // with temporaries bounded to about 2^24 elements each (same as reference.py).
  const int64_t step = std::max<int64_t>(1, (int64_t{1} << 24) / (3 * v));
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < mr; j += step) {
    const int64_t j1 = std::min(mr, j + step);
    const LogSoftmaxParts q = log_softmax_parts(q_logits.slice(0, j, j1).to(at::kFloat));
    const at::Tensor q_dead_t = q.dead.to(at::kFloat).t();
    const at::Tensor logq0_t = q.logp0.t();
    for (int64_t i = 0; i < n; i += step) {
      const int64_t i1 = std::min(n, i + step);
      const at::Tensor x = p_logits.slice(0, i, i1).to(at::kFloat);
      const LogSoftmaxParts p = log_softmax_parts(x);
      const at::Tensor neg_h = (p.p * p.logp0).sum(-1, /*keepdim=*/true);
      at::Tensor kl = (neg_h - at::mm(p.p, logq0_t)).clamp_min_(0.0);
      const at::Tensor p_live = p.dead.logical_not().to(at::kFloat);
      kl.masked_fill_(at::mm(p_live, q_dead_t).gt(0), inf);
      const at::Tensor ok = p.ok.unsqueeze(1).logical_and(q.ok.unsqueeze(0));
      kl.masked_fill_(ok.logical_not(), std::numeric_limits<float>::quiet_NaN());
      out.slice(0, i, i1).slice(1, j, j1).copy_(kl);
    }
  }
  return out;
}

at::Tensor count_above_cpu(const at::Tensor& logits, const at::Tensor& thresholds) {
  check_count_above_args(logits, thresholds);
  cpu::check_cpu("count_above", "logits", logits);
  const int64_t rows = logits.size(0), v = logits.size(1), n = thresholds.size(1);
  at::Tensor out = at::empty({rows, n}, logits.options().dtype(at::kInt));
  if (rows == 0 || n == 0) return out;
  if (v == 0) return out.zero_();
  const at::Tensor x = as_rows(logits);  // holds the copy, if one was made, while xr points in
  const cpu::Rows xr = cpu::rows_of(x);
  // The thresholds in fp32 (exact from fp16 / bf16), [rows, n] contiguous: a small copy.
  const at::Tensor t = thresholds.to(at::kFloat).contiguous();
  const float* const pt = t.const_data_ptr<float>();
  int32_t* const po = out.mutable_data_ptr<int32_t>();
  const cpu::CountRowFn fn = cpu::select_kernels().count_above;
  // Rows across threads (each row is one task: its counts need no merge).
  const int64_t passes = (n + cpu::kCountGroup - 1) / cpu::kCountGroup;
  int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  threads = std::max<int64_t>(1, std::min(threads, rows * v * passes / cpu::kGrainElements));
  const int64_t chunk =
      std::max<int64_t>(1, std::min(cpu::kGrainElements / v, rows / (8 * threads)));
  cpu::dynamic_for(rows, threads, chunk,
                   [&](int64_t r) { fn(xr.at(r, 0), xr.dt, v, pt + r * n, n, po + r * n); });
  return out;
}

std::string cpu_isa() { return cpu::select_kernels().name; }

bool cpu_prefetch() { return cpu::use_prefetch(cpu::select_kernels()); }

}  // namespace lenskit
