#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call (the device tool's METHOD: one prepared
# script per lease): build the extension there, run the CUDA tests, benchmark the kernels.
#
#   device run:  bash benchmarks/gpu_session.sh            (timeout_s 600: the steps' own
#                                                           timeouts add up to under 10 min)
#
# The machine has no internet and its own python3 (torch, pytest, hypothesis, transformers), so
# nothing is installed: the build uses that torch (--no-build-isolation semantics via
# setup.py). Logs, the CUDA table and docs/benchmarks.md go to $OUT, which comes back; copy
# the bench_gpu section from $OUT/benchmarks.md into docs/benchmarks.md here.
# Budget (H200, 16 cores; estimates, never run yet): build ~1.5 min (sm_90 only), tests ~1.5
# min, benchmark ~2.5 min (mostly torch.compile warm-up).
set -uo pipefail
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
xdist=()
"$PY" -c "import xdist" 2>/dev/null && xdist=(-n 4)  # CPU-side work (imports, oracles) in parallel
timeout 200 "$PY" -m pytest -q -p no:cacheprovider --maxfail=40 ${xdist[@]+"${xdist[@]}"} \
  tests/test_ops_cuda.py tests/test_engine_cuda.py >"$OUT/tests.log" 2>&1
echo "pytest exit $?"
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
tail -3 "$OUT/tests.log"

step "benchmark"
timeout 170 "$PY" benchmarks/bench_kernels.py --device cuda >"$OUT/bench.log" 2>&1
echo "bench exit $?"
cp docs/benchmarks.md "$OUT/benchmarks.md"
sed -n '/bench_gpu:start/,/bench_gpu:end/p' docs/benchmarks.md | tail -25
step "done"
