#!/usr/bin/env bash
# The GPU suite of issues 14 and 23 in one command, for a machine with an NVIDIA GPU and a CUDA build of torch (no
# network needed): fp32 and bf16, eager and compiled (torch.compile modes default and reduce-overhead), batch 1 and
# batched sliding windows, the A-150 and A-847 vocabularies, text features of 847 classes; one table. It takes a few
# minutes, most of them compiling (`--compile-modes` alone: eager only):
#
#   bash benchmarks/run_gpu_suite.sh [benchmark_gpu.py options, e.g. --repeats 10]
#
# Python: $PYTHON if set, else .venv/bin/python if this checkout has one, else python3. Wheels in .whl/ (for a
# machine whose transformers is older than this project needs) are installed into /tmp/ovseg-site first. Results go
# to $OUT (default ./gpu-results): benchmark_gpu.json, benchmark_gpu.md and the run's log, benchmark_gpu.log.
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
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ovseg-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/ovseg-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The benchmark imports the project from this checkout, so it needs no install (and `pip install -e .` would repoint
# an environment shared with another checkout); what can be missing is a dependency.
imports="import modeling_catseg, modeling_lseg, processing.inference_ovseg, training.models.presets"
if ! error=$("$PYTHON" -c "$imports" 2>&1); then
    echo "run_gpu_suite: the project does not import with $PYTHON ($(tail -n 1 <<<"$error")); if its" \
        "transformers is too old, put a wheel of a newer one in .whl/" >&2
    exit 2
fi
mkdir -p "$OUT"
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, '| CUDA', torch.version.cuda, \
'| transformers', transformers.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() \
else 'no CUDA device')"
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/benchmark_gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/benchmark_gpu.log"
