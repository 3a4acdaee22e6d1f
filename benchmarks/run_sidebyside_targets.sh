#!/usr/bin/env bash
# Issue 23's part 2 in one command: our CAT-Seg and LSeg against the official code, side by side in one process,
# with the targets. Cases: CAT-Seg B/16 one 384 view at 171 and at 847 classes, LSeg ViT-L/16 at 384 and 480 with
# 150 labels, warm text; each as ours eager, ours compiled by inductor and the official, 5 interleaved repeats (more
# with --repeats N); 2 threads (--threads N to change). The markdown table says, per case, the better of eager and
# compiled, its ratio to the official (median, lowest and highest repeat), the compile time and after how many
# images compiling pays off, the target and whether the LOWEST repeat meets it, with the 1-minute load, the date
# and the machine.
#
#   bash benchmarks/run_sidebyside_targets.sh /path/to/official [benchmark_sidebyside.py options]
#
# The official folder (laid out as benchmarks/official_harness.py says) is the first argument, else
# $OVSEG_OFFICIAL_ROOT. Python: $PYTHON if set, else .venv/bin/python. Results go to $OUT (default
# benchmarks/results/targets): sidebyside.json, sidebyside.md and the run's log, sidebyside.log. On the 2-core AMD
# EPYC VM it takes about 15 minutes; run it on an otherwise idle machine.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="${1:-${OVSEG_OFFICIAL_ROOT:-}}"
[ "$#" -gt 0 ] && shift
if [ -z "$ROOT" ]; then
    echo "run_sidebyside_targets: name the official folder (first argument or \$OVSEG_OFFICIAL_ROOT)" >&2
    exit 2
fi
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-benchmarks/results/targets}"
mkdir -p "$OUT"
echo "run_sidebyside_targets: $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$PYTHON" benchmarks/benchmark_sidebyside.py --targets --official-root "$ROOT" --threads 2 --out "$OUT" "$@" \
    2>&1 | tee "$OUT/sidebyside.log"
exit "${PIPESTATUS[0]}"
