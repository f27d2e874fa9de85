"""Shared helpers of the benchmark scripts: what ran where (machine, date, commit), the quick
mode, timing, and the results files that ``benchmarks/render.py`` turns into docs/benchmarks.md.

Each script writes one JSON file, ``benchmarks/results/<name>.json``::

    {"benchmark": name, "schema": SCHEMA, "date": "YYYY-MM-DD", "time_utc": ISO time,
     "git": {"commit": sha or null, "dirty": bool or null},
     "machine": {"cpu", "cores", "torch", "torch_threads", "gpu", "cuda"},
     "settings": {... the script's options, "quick": bool},
     ... the measurements (each script's docstring says which)}

This module imports torch only inside :func:`machine`, so that the renderer (which needs the
target constants below) runs without it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SCHEMA = 1
QUICK_ENV = "LENSKIT_BENCH_QUICK"
RESULTS_ENV = "LENSKIT_BENCH_RESULTS"

# The kernels issue's targets. CPU: at the first CPU shape, fp32, lenskit >= 3x torch.compile
# and >= 30x eager. CUDA: at [8192, 128256] bf16, >= 85% of the device-to-device copy bandwidth
# (input bytes read / time against copy bytes read + written / time) and >= 1.5x torch.compile.
# The scripts store the goals they were judged against with the results; the renderer uses
# these constants only to state the GPU targets before any GPU measurement exists.
CPU_TARGET_COMPILE = 3.0
CPU_TARGET_EAGER = 30.0
CUDA_TARGET_SHAPE = (8192, 128256)
CUDA_TARGET_DTYPE = "bfloat16"
CUDA_TARGET_COMPILE = 1.5
CUDA_TARGET_COPY_FRACTION = 0.85


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script shares: quick mode, no write, results folder."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test settings (also env {QUICK_ENV}=1): small sizes, few repeats; the "
        "results go to a temporary folder unless --results names one",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write no JSON")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"folder of the JSON results (env {RESULTS_ENV}; default benchmarks/results, "
        "or a temporary folder in quick mode)",
    )


def is_quick(args: argparse.Namespace) -> bool:
    return bool(args.quick) or os.environ.get(QUICK_ENV, "") not in ("", "0")


def results_dir(args: argparse.Namespace) -> Path:
    """Where the JSON goes: --results, else the env, else benchmarks/results (quick mode: a
    temporary folder, so that a smoke test never replaces the real data)."""
    if args.results is not None:
        return args.results
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    if is_quick(args):
        return Path(tempfile.gettempdir()) / "lenskit-bench-quick"
    return RESULTS


def machine() -> dict[str, Any]:
    """The machine: CPU model, cores, torch version and threads, GPU if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
    }


def git_state() -> dict[str, Any]:
    """The commit the code ran at and whether the work tree had changes (None: no git)."""

    def git(*cmd: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


def header(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The common part of a results file, taken when the measurement starts."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "benchmark": name,
        "schema": SCHEMA,
        "date": _dt.date.today().isoformat(),
        "time_utc": now.isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": machine(),
        "settings": settings,
    }


def save(name: str, data: dict[str, Any], args: argparse.Namespace) -> Path | None:
    """Write ``data`` to ``<results>/<name>.json`` (not with --no-write); returns the path."""
    if args.no_write:
        return None
    folder = results_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` ``repeats`` times: its last result and the timings, ``{"wall_s", "cpu_s"}``
    the best of the repeats, ``{"wall_all_s", "cpu_all_s"}`` every repeat (seconds)."""
    walls, cpus = [], []
    out = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    timing = {"wall_s": min(walls), "cpu_s": min(cpus), "wall_all_s": walls, "cpu_all_s": cpus}
    return out, timing
