#!/usr/bin/env bash
# The GPU suite of issue 14 in one command, for a machine with an NVIDIA GPU and a CUDA build of torch (no network
# needed). It takes a few minutes:
#
#   bash benchmarks/run_gpu_suite.sh [benchmark_gpu.py options, e.g. --repeats 10]
#
# Python: $PYTHON if set, else .venv/bin/python if this checkout has one, else python3. Results go to $OUT (default
# ./gpu-results): benchmark_gpu.json, benchmark_gpu.md and the run's log, benchmark_gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -m pip show torch >/dev/null 2>&1; then
    echo "run_gpu_suite: $PYTHON has no torch: install a CUDA build of torch first" >&2
    exit 2
fi
# The benchmark imports the project from this checkout; an install is needed only where that fails.
if ! "$PYTHON" -c "import modeling_catseg, processing.inference_ovseg, training.presets" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . || {
        echo "run_gpu_suite: the project does not import with $PYTHON, and pip install -e . failed" >&2
        exit 2
    }
fi
mkdir -p "$OUT"
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, '| CUDA', torch.version.cuda, \
'| transformers', transformers.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() \
else 'no CUDA device')"
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/benchmark_gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/benchmark_gpu.log"
