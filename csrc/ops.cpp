// The lenskit operator library: schemas, the CPU registration and the Python module.
//
// Importing lenskit._C runs the static registrations below (and, in CUDA builds, the
// TORCH_LIBRARY_IMPL(lenskit, CUDA, m) blocks of csrc/cuda/), after which the ops are
// torch.ops.lenskit.entropy / entropy_lse / kl_div / pairwise_kl / count_above. Fake (meta)
// kernels are registered from Python in lenskit/ops/__init__.py. Pattern: pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

#include "common.h"
#include "cpu/ops_cpu.h"

// An empty module: `import lenskit._C` only has to load this library (which registers the ops).
// PyMODINIT_FUNC = extern "C" + default visibility (the library is built -fvisibility=hidden).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",   // m_name
      "lenskit compiled ops: see torch.ops.lenskit",  // m_doc
      -1,     // m_size
      nullptr,  // m_methods
  };
  return PyModule_Create(&module_def);
}

namespace lenskit {

bool has_cuda() {
#ifdef LENSKIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(lenskit, m) {
  // Entropy of softmax(logits) over the last dim, in nats: float32 of shape logits.shape[:-1].
  m.def("entropy(Tensor logits) -> Tensor");
  // (entropy, logsumexp) of softmax(logits) over the last dim from one pass: two float32 tensors
  // of shape logits.shape[:-1]; the entropy equals entropy(logits) bit for bit, and both are NaN
  // for a row that is all -inf, empty, or has a NaN / +inf.
  m.def("entropy_lse(Tensor logits) -> (Tensor, Tensor)");
  // KL(softmax(p) || softmax(q)) per row over the last dim (same shapes): float32 [...].
  m.def("kl_div(Tensor p_logits, Tensor q_logits) -> Tensor");
  // KL(P_i || Q_j) for p [N, V] and q [M, V]: float32 [N, M].
  m.def("pairwise_kl(Tensor p_logits, Tensor q_logits) -> Tensor");
  // out[m, j] = number of v with logits[m, v] > thresholds[m, j] (strictly; NaN on either side
  // never counts, as torch's `>`), for logits [M, V] float32/float16/bfloat16 and thresholds
  // [M, n] float32 or the logits' dtype: int32 [M, n], one read of each row per 8 thresholds.
  m.def("count_above(Tensor logits, Tensor thresholds) -> Tensor");
  // True iff the library was built with the CUDA kernels (LENSKIT_WITH_CUDA).
  m.def("has_cuda() -> bool", &has_cuda);
  // Which CPU kernels the next call uses: "avx512", "avx2" or "scalar" (LENSKIT_CPU_ISA caps it).
  m.def("cpu_isa() -> str", &cpu_isa);
  // Whether the next CPU entropy / kl_div call runs the prefetching kernels: by default on Intel
  // CPUs only; LENSKIT_CPU_PREFETCH=1 or 0 overrides (same results up to rounding).
  m.def("cpu_prefetch() -> bool", &cpu_prefetch);
}

TORCH_LIBRARY_IMPL(lenskit, CPU, m) {
  m.impl("entropy", &entropy_cpu);
  m.impl("entropy_lse", &entropy_lse_cpu);
  m.impl("kl_div", &kl_div_cpu);
  m.impl("pairwise_kl", &pairwise_kl_cpu);
  m.impl("count_above", &count_above_cpu);
}

}  // namespace lenskit
