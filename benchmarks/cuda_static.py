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

    python benchmarks/cuda_static.py [--no-write]   (writes its section of docs/benchmarks.md)
"""

from __future__ import annotations

import datetime
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
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "ops_cuda.o"
        cmd = [tool("nvcc"), "-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC"]
        cmd += ["-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v", "-DLENSKIT_WITH_CUDA=1"]
        cmd += ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
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
        regs = {}
        for m in re.finditer(
            r"Compiling entry function '(\w+)'.*?Used (\d+) registers", proc.stderr, re.S
        ):
            regs[m.group(1)] = int(m.group(2))
        spills = re.findall(r"(\d+) bytes spill stores", proc.stderr)
        sass = subprocess.run(
            [tool("cuobjdump"), "-sass", str(obj)], capture_output=True, text=True, check=True
        ).stdout
    nvcc_version = subprocess.run([tool("nvcc"), "--version"], capture_output=True, text=True)
    lines = [
        f"Compiled {datetime.date.today().isoformat()} with "
        f"{nvcc_version.stdout.strip().splitlines()[-1]} for sm_90 (no GPU needed). Spill stores "
        f"in any kernel: {max(map(int, spills), default=0)} bytes. kl_div counts per (p, q) pair.",
        "",
        "| kernel | registers | main loop: instructions | 16-byte loads | MUFU | instr / element |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        mangled = part.split("\n", 1)[0].strip()
        name = subprocess.run(["c++filt"], input=mangled, capture_output=True, text=True).stdout
        name = re.sub(r"\(anonymous namespace\)::|lenskit_cuda::", "", name.strip()).split("(")[0]
        ins = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", part)
        addr = [int(a, 16) for a, _ in ins]
        text = [t.strip() for _, t in ins]
        loads = [i for i, t in enumerate(text) if "LDG.E.128" in t]
        if len(loads) < 4:
            continue
        body = None
        for i in range(loads[3], len(text)):  # the first backward branch around the loads
            m = re.search(r"BRA (0x[0-9a-f]+)", text[i])
            if m and int(m.group(1), 16) <= addr[loads[0]] and int(m.group(1), 16) in addr:
                body = text[addr.index(int(m.group(1), 16)) : i + 1]
                break
        if body is None:
            continue
        n_ld = sum("LDG.E.128" in t for t in body)
        width = 4 if "<float>" in name else 8
        elems = n_ld * width // (2 if "KlRows" in name else 1)  # kl_div: per (p, q) pair
        lines.append(
            f"| {name.replace('void ', '')} | {regs.get(mangled, '?')} | {len(body)} | {n_ld} | "
            f"{sum('MUFU' in t for t in body)} | {len(body) / elems:.1f} |"
        )
    body = "\n".join(lines)
    print(body)
    if "--no-write" not in sys.argv:
        write_section("cuda_static", body)


if __name__ == "__main__":
    main()
