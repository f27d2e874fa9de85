// Runs the CUDA kernels' per-row code (csrc/cuda/rows.cuh) on the CPU, thread by thread, with
// the kernels' launch choice, per-thread partition, and warp / block reduction order
// (butterfly shuffles, then warp 0 over the per-warp partials). Used by
// tests/test_cuda_emulation.py where no GPU is at hand; the device-only instructions (ex2.approx,
// max.NaN, __ldg) are replaced by their exact host counterparts. Built as plain C++ against the
// CUDA headers (g++ -x c++ -I$CUDA_HOME/include), with sanitizers in the tests.
//
// usage: emulate OP DTYPE ROWS V SMS P_FILE P_OFFSET P_STRIDE [Q_FILE Q_OFFSET Q_STRIDE] OUT_FILE
//   OP: entropy | entropy_lse | kl_div; DTYPE: f32 | f16 | bf16; files hold the raw storage,
//   offsets and row strides in elements. OUT_FILE gets float32 results per row (entropy_lse:
//   the entropies, then the logsumexps). Prints "threads N": the threads per row it emulated.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../../../csrc/cuda/rows.cuh"

using namespace lenskit_cuda;

namespace {

struct Buffer {
  void* data = nullptr;
  size_t bytes = 0;
  ~Buffer() { std::free(data); }
};

// Read a file into 64-byte aligned memory (the alignment of torch's allocations), so that an
// element offset reproduces the misalignment of a view.
bool read_file(const char* path, Buffer& buf) {
  FILE* f = std::fopen(path, "rb");
  if (!f) return false;
  std::fseek(f, 0, SEEK_END);
  const long n = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  buf.bytes = static_cast<size_t>(n);
  // The exact size (no slack): AddressSanitizer then catches a read past the end.
  if (posix_memalign(&buf.data, 64, buf.bytes > 0 ? buf.bytes : 1) != 0) buf.data = nullptr;
  if (buf.data == nullptr) {
    std::fclose(f);
    return false;
  }
  const bool ok = std::fread(buf.data, 1, buf.bytes, f) == buf.bytes;
  std::fclose(f);
  return ok;
}

template <typename S>
void warp_reduce(S* st) {
  for (int off = kWarpSize / 2; off > 0; off >>= 1) {
    S next[kWarpSize];
    for (int l = 0; l < kWarpSize; ++l) next[l] = merge(st[l], st[l ^ off]);
    for (int l = 0; l < kWarpSize; ++l) st[l] = next[l];
  }
}

template <int NT, typename Op>
typename Op::State row_state(const Op& op, int64_t r, int V) {
  using S = typename Op::State;
  std::vector<S> st(NT);
  for (int tid = 0; tid < NT; ++tid) st[tid] = op.template partial<NT>(r, V, tid);
  if constexpr (NT == kWarpSize) {
    warp_reduce(st.data());
    return st[0];
  } else {
    constexpr int kWarps = NT / kWarpSize;
    S partials[kWarpSize];
    for (int w = 0; w < kWarps; ++w) {
      warp_reduce(st.data() + w * kWarpSize);
      partials[w] = st[w * kWarpSize];
    }
    for (int l = kWarps; l < kWarpSize; ++l) partials[l] = op.identity();
    warp_reduce(partials);
    return partials[0];
  }
}

template <typename Op>
void run(const Op& op, int64_t rows, int V, int vec_width, int sms, float* out) {
  const int threads = threads_per_row(rows, V, vec_width, sms);
  std::printf("threads %d\n", threads);
  for (int64_t r = 0; r < rows; ++r) {
    if (threads == kWarpSize) {
      op.store(row_state<kWarpSize>(op, r, V), r, out);
    } else if (threads == 256) {
      op.store(row_state<256>(op, r, V), r, out);
    } else {
      op.store(row_state<1024>(op, r, V), r, out);
    }
  }
}

template <typename T>
int emulate(int argc, char** argv) {
  const std::string op = argv[1];
  const int64_t rows = std::atoll(argv[3]);
  const int V = std::atoi(argv[4]);
  const int sms = std::atoi(argv[5]);
  Buffer p;
  if (!read_file(argv[6], p)) return 3;
  const T* pb = static_cast<const T*>(p.data) + std::atoll(argv[7]);
  const int64_t p_stride = std::atoll(argv[8]);
  std::vector<float> out(rows * (op == "entropy_lse" ? 2 : 1), -12345.f);
  const char* out_path;
  if (op == "kl_div") {
    if (argc != 13) return 2;
    Buffer q;
    if (!read_file(argv[9], q)) return 3;
    const T* qb = static_cast<const T*>(q.data) + std::atoll(argv[10]);
    const KlRows<T> kl{pb, qb, p_stride, std::atoll(argv[11])};
    run(kl, rows, V, VecWidth<T>::value, sms, out.data());
    out_path = argv[12];
  } else {
    if (argc != 10) return 2;
    float* lse = op == "entropy_lse" ? out.data() + rows : nullptr;
    const EntropyRows<T> ent{pb, p_stride, lse};
    run(ent, rows, V, VecWidth<T>::value, sms, out.data());
    out_path = argv[9];
  }
  FILE* f = std::fopen(out_path, "wb");
  if (!f) return 3;
  const bool ok = std::fwrite(out.data(), sizeof(float), out.size(), f) == out.size();
  std::fclose(f);
  return ok ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 10) {
    std::fprintf(stderr, "usage: see the header of emulate.cu\n");
    return 2;
  }
  const std::string dtype = argv[2];
  if (dtype == "f32") return emulate<float>(argc, argv);
  if (dtype == "f16") return emulate<__half>(argc, argv);
  if (dtype == "bf16") return emulate<__nv_bfloat16>(argc, argv);
  std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
  return 2;
}
