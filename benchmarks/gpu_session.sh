#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call (the device tool's METHOD: one prepared
# script per lease): build the extension there, run the CUDA tests, benchmark the kernels.
#
#   device run:  bash benchmarks/gpu_session.sh            (timeout_s 600: the steps' own
#                                                           timeouts add up to under 10 min)
#
# The machine has no internet and its own python3 (torch, pytest, hypothesis, transformers), so
# nothing is installed: the build uses that torch (--no-build-isolation semantics via
# setup.py). Nothing run here may import altair, streamlit or vl-convert (the image lacks
# them): the benchmark and benchmarks/render.py need torch and the standard library only.
# What comes back in $OUT: the logs, the GPU's results (bench_gpu.json, as bench_kernels.py
# --device cuda wrote it into benchmarks/results/), every results file and the page rendered
# from them (benchmarks.md). Here: copy $OUT/bench_gpu.json into benchmarks/results/ and run
# python benchmarks/render.py.
# Budget (H200, 16 cores; estimates, never run yet): build ~1.5 min (sm_90 only), tests ~1.5
# min, benchmark ~2.5 min (mostly torch.compile warm-up).
set -uo pipefail
shopt -s globstar nullglob
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lenskit-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

step() { echo "== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
  | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

step "build"
rm -f lenskit/_C*.so
if ! timeout 200 "$PY" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
"$PY" - <<'EOF' || exit 1
import lenskit, torch
assert lenskit.backend("cuda") == "cuda", lenskit.extension_error()
print("backend cuda on", torch.cuda.get_device_name())
EOF

step "tests (the CUDA kernels, whose CPU emulation runs in CI; the engine on the GPU against the CPU)"
# Wherever the suite keeps them (tests/ or a subfolder such as tests/acceptance/): ** also
# matches no folder at all.
cuda_tests=(tests/**/test_ops_cuda.py tests/**/test_engine_cuda.py)
printf 'found %s\n' "${cuda_tests[@]}"
if ((${#cuda_tests[@]} == 0)); then
  echo "no tests/**/test_ops_cuda.py or tests/**/test_engine_cuda.py: tests skipped"
else
  xdist=()
  "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 4)  # CPU-side work (imports, oracles) in parallel
  timeout 200 "$PY" -m pytest -q -p no:cacheprovider --maxfail=40 ${xdist[@]+"${xdist[@]}"} \
    "${cuda_tests[@]}" >"$OUT/tests.log" 2>&1
  echo "pytest exit $?"
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
  tail -3 "$OUT/tests.log"
fi

step "benchmark"
# --results: the default folder, even where LENSKIT_BENCH_QUICK / _RESULTS are set.
timeout 170 "$PY" benchmarks/bench_kernels.py --device cuda --results benchmarks/results \
  >"$OUT/bench.log" 2>&1
echo "bench exit $?"
tail -25 "$OUT/bench.log"

step "results"
"$PY" benchmarks/render.py >>"$OUT/bench.log" 2>&1
echo "render exit $?"
cp benchmarks/results/*.json "$OUT/"
cp docs/benchmarks.md "$OUT/benchmarks.md"
ls -l "$OUT"
step "done"
