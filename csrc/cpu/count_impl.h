// count_above's row kernel, written once over the vector abstraction `Vec` (like
// kernel_impl.h, and included right after it by each kernels_<isa>.cpp inside its ISA
// namespace; no #include here, for the same ODR reason).
//
// out[j] = #{i : x[i] > t[j]}: every element is widened to fp32 (exact for fp16 / bf16) and
// compared with an ordered greater-than, so NaN on either side never counts, -inf never
// exceeds anything and nothing exceeds +inf: the same answer as torch's `x > t` in every
// case. The thresholds are taken kCountGroup at a time: one read of the row per group, each
// loaded vector compared with every threshold of the group, into one int32 lane counter per
// threshold (Vec::count_gt; a lane counts at most v / W <= INT32_MAX elements). Tail lanes
// read as -inf, which never counts.

template <class T, int G>
LK_TARGET static void count_group(const typename T::storage* x, int64_t v, const float* t,
                                  int32_t* out) {
  using vec = typename Vec::vec;
  using ivec = typename Vec::ivec;
  constexpr int64_t W = Vec::W;
  vec tv[G];
  ivec acc[G];
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) {
    tv[j] = Vec::set1(t[j]);
    acc[j] = Vec::izero();
  }
  const int64_t nfull = v / W * W;
  const int tail = static_cast<int>(v - nfull);
  int64_t i = 0;
  for (; i + 2 * W <= nfull; i += 2 * W) {
    const vec a = Vec::load(T{}, x + i);
    const vec b = Vec::load(T{}, x + i + W);
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) acc[j] = Vec::count_gt(Vec::count_gt(acc[j], a, tv[j]), b, tv[j]);
  }
  for (; i < nfull; i += W) {
    const vec a = Vec::load(T{}, x + i);
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) acc[j] = Vec::count_gt(acc[j], a, tv[j]);
  }
  if (tail) {
    const vec a = Vec::load_tail(T{}, x + nfull, tail);
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) acc[j] = Vec::count_gt(acc[j], a, tv[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) out[j] = static_cast<int32_t>(Vec::reduce_count(acc[j]));
}

static_assert(kCountGroup == 8, "count_row_t's switch covers groups of 1..8");

template <class T>
LK_TARGET static void count_row_t(const void* xv, int64_t v, const float* t, int64_t n,
                                  int32_t* out) {
  const typename T::storage* x = static_cast<const typename T::storage*>(xv);
  for (int64_t j0 = 0; j0 < n; j0 += kCountGroup) {
    const int64_t g = lk_min(kCountGroup, n - j0);
    const float* tj = t + j0;
    int32_t* oj = out + j0;
    switch (g) {
      case 1: count_group<T, 1>(x, v, tj, oj); break;
      case 2: count_group<T, 2>(x, v, tj, oj); break;
      case 3: count_group<T, 3>(x, v, tj, oj); break;
      case 4: count_group<T, 4>(x, v, tj, oj); break;
      case 5: count_group<T, 5>(x, v, tj, oj); break;
      case 6: count_group<T, 6>(x, v, tj, oj); break;
      case 7: count_group<T, 7>(x, v, tj, oj); break;
      default: count_group<T, 8>(x, v, tj, oj); break;
    }
  }
}

// Type-erased entry point (cpu::CountRowFn).
LK_TARGET static void count_row(const void* x, DType dt, int64_t v, const float* t, int64_t n,
                                int32_t* out) {
  switch (dt) {
    case DType::F32:
      count_row_t<F32T>(x, v, t, n, out);
      break;
    case DType::F16:
      count_row_t<F16T>(x, v, t, n, out);
      break;
    case DType::BF16:
      count_row_t<BF16T>(x, v, t, n, out);
      break;
  }
}
