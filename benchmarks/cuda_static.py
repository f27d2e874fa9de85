"""Static cost of the CUDA kernels, no GPU needed: registers, spills, and the size of each
kernel's main loop in sm_90 machine code.

Compiles csrc/cuda/ops_cuda.cu for sm_90 with nvcc (CUDA_HOME or /usr/local/cuda), reads the
register report of ptxas and disassembles the object with cuobjdump (the toolkit's, or the one
Triton's wheel carries). The main loop is the one holding the unrolled 16-byte loads (LDG.128);
instructions per element = its length / the elements it covers (rare paths such as the rescale
included, so an upper bound on the hot path). On an H200 the issue rate is about 132 SMs x 128
lanes x 1.98 GHz = 33e12 instructions/s against ~4.3e12 B/s of copy bandwidth, so a kernel whose
loop costs more than ~8 instructions per bf16 element (~16 per bf16 kl_div pair) is bound by
issue, not memory.

    python benchmarks/cuda_static.py [--quick] [--no-write] [--results DIR]

Not part of ``make bench`` (it needs nvcc, not a GPU). Results:
``benchmarks/results/cuda_static.json``, besides the common fields (see _report.py) ``nvcc``
(the compiler's version line), ``arch``, ``spill_store_bytes`` (the largest of any kernel) and
``kernels``: per kernel with such a loop its ``name``, ``registers``, the loop's
``instructions``, ``loads_16b``, ``mufu``, the ``elements`` one pass covers and
``instructions_per_element``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from torch.utils.cpp_extension import include_paths

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import render  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARCH = "sm_90"


def tool(name: str) -> str:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cands = [Path(home) / "bin" / name]
    pattern = f"{sys.prefix}/lib/python*/site-packages/triton/**/{name}"
    cands += [Path(p) for p in glob.glob(pattern, recursive=True)]
    for c in cands:
        if c.exists():
            return str(c)
    found = shutil.which(name)
    if not found:
        sys.exit(f"{name} not found (CUDA_HOME, or pip install triton for cuobjdump)")
    return found


def compile_kernels(obj: Path) -> str:
    """Compile ops_cuda.cu to ``obj`` for ARCH with the extension's flags; ptxas's report."""
    cmd = [tool("nvcc"), "-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC"]
    cmd += [f"-gencode=arch=compute_{ARCH[3:]},code={ARCH}", "-Xptxas", "-v"]
    cmd += ["-DLENSKIT_WITH_CUDA=1", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    for flag in (
        "HALF_OPERATORS",
        "HALF_CONVERSIONS",
        "BFLOAT16_CONVERSIONS",
        "HALF2_OPERATORS",
    ):
        cmd.append(f"-D__CUDA_NO_{flag}__")
    cmd += [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    cmd += ["-c", str(ROOT / "csrc" / "cuda" / "ops_cuda.cu"), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    return proc.stderr


def main_loop(part: str, regs: dict[str, int]) -> dict | None:
    """One kernel of the disassembly: its main loop's figures (None: no such loop)."""
    mangled = part.split("\n", 1)[0].strip()
    name = subprocess.run(["c++filt"], input=mangled, capture_output=True, text=True).stdout
    name = re.sub(r"\(anonymous namespace\)::|lenskit_cuda::", "", name.strip()).split("(")[0]
    ins = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", part)
    addr = [int(a, 16) for a, _ in ins]
    text = [t.strip() for _, t in ins]
    loads = [i for i, t in enumerate(text) if "LDG.E.128" in t]
    if len(loads) < 4:
        return None
    body = None
    for i in range(loads[3], len(text)):  # the first backward branch around the loads
        m = re.search(r"BRA (0x[0-9a-f]+)", text[i])
        if m and int(m.group(1), 16) <= addr[loads[0]] and int(m.group(1), 16) in addr:
            body = text[addr.index(int(m.group(1), 16)) : i + 1]
            break
    if body is None:
        return None
    n_ld = sum("LDG.E.128" in t for t in body)
    width = 4 if "<float>" in name else 8
    elems = n_ld * width // (2 if "KlRows" in name else 1)  # kl_div: per (p, q) pair
    return {
        "name": name.replace("void ", ""),
        "registers": regs.get(mangled),
        "instructions": len(body),
        "loads_16b": n_ld,
        "mufu": sum("MUFU" in t for t in body),
        "elements": elems,
        "instructions_per_element": len(body) / elems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _report.add_common_args(parser)
    args = parser.parse_args()
    data = _report.header("cuda_static", {"arch": ARCH, "quick": _report.is_quick(args)})
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "ops_cuda.o"
        report = compile_kernels(obj)
        sass = subprocess.run(
            [tool("cuobjdump"), "-sass", str(obj)], capture_output=True, text=True, check=True
        ).stdout
    regs = {}
    for m in re.finditer(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", report, re.S):
        regs[m.group(1)] = int(m.group(2))
    spills = re.findall(r"(\d+) bytes spill stores", report)
    version = subprocess.run([tool("nvcc"), "--version"], capture_output=True, text=True)
    kernels = [main_loop(part, regs) for part in re.split(r"\n\s*Function : ", sass)[1:]]
    data.update(
        nvcc=version.stdout.strip().splitlines()[-1],
        arch=ARCH,
        spill_store_bytes=max(map(int, spills), default=0),
        kernels=[k for k in kernels if k is not None],
    )
    print(render.section("cuda_static", data))
    _report.save("cuda_static", data, args)


if __name__ == "__main__":
    main()
