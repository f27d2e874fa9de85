"""Builds the extension lenskit._C from csrc/.

A CPU build always; the CUDA sources too whenever a CUDA toolkit is found (CUDA_HOME /
CUDA_PATH, or /usr/local/cuda with nvcc) and torch is a CUDA build, even without a GPU.
Environment knobs:
  LENSKIT_NO_CUDA=1        build the CPU kernels only
  LENSKIT_SKIP_EXT=1       declare no extension (the Makefile builds it in place itself)
  TORCH_CUDA_ARCH_LIST     default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer GPUs)
"""

import glob
import os


def _find_cuda_home() -> str | None:
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    return None


_cuda_home = None if os.environ.get("LENSKIT_NO_CUDA") == "1" else _find_cuda_home()
if _cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME at import time; without it, it guesses a prefix
    # that lacks libcudart on machines with no GPU.
    os.environ["CUDA_HOME"] = _cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("LENSKIT_SKIP_EXT") == "1":
        return []
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fopenmp: at::parallel_for is a header template whose `omp parallel` is compiled into
    # the extension; without the flag it silently runs on one thread.
    cxx_flags = ["-O3", "-std=c++20", "-fno-math-errno", "-fvisibility=hidden", "-fopenmp"]
    link_flags = ["-fopenmp"]
    with_cuda = bool(_cuda_home) and torch.version.cuda is not None
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        return [
            CUDAExtension(
                "lenskit._C",
                sources,
                define_macros=[("LENSKIT_WITH_CUDA", "1")],
                extra_link_args=link_flags,
                extra_compile_args={
                    "cxx": cxx_flags,
                    "nvcc": ["-O3", "-std=c++20", "-lineinfo"],
                },
                py_limited_api=False,
            )
        ]
    return [
        CppExtension(
            "lenskit._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
