#!/usr/bin/env bash
# Paper-width gan3d (--preset paper) on 48x288x240 over N linked subjects on one GPU: steps per second, GPU
# utilisation (nvidia-smi) and peak GPU memory with 0 loader workers vs the default, then the loader's own rate and
# the step rate with no loader at all (bench_gpu_loader.py). Self-contained: it simulates
# a few paper-grid subjects and links them under N names (each name is its own cache entry). About 5-8 minutes.
#
#   bash benchmarks/bench_gpu_data.sh            # N=200, 60 steps; results in $OUT (or /tmp/bench-gpu-data)
#   N=400 STEPS=100 bash benchmarks/bench_gpu_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}; STEPS=${STEPS:-60}; REAL=${REAL:-8}
PY=${PYTHON:-python}
RESULTS=${OUT:-/tmp/bench-gpu-data}
WORK=${WORK:-/tmp/bench-gpu-work}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$RESULTS" "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
nproc | sed 's/^/cpus: /' | tee -a "$RESULTS/gpu.txt"

t0=$(date +%s)
[ -d "$WORK/sim" ] || $PY -m modalsynth simulate --out "$WORK/sim" --subjects "$REAL" >/dev/null
$PY - "$WORK/sim" "$WORK/data" "$N" <<'EOF'
import sys
from pathlib import Path
sim, data, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
real = sorted(p for p in sim.iterdir() if p.is_dir())
for i in range(n):
    folder = data / f"s{i:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("flair.nii.gz", "t1.nii.gz"):
        if not (folder / name).exists():
            (folder / name).symlink_to((real[i % len(real)] / name).resolve())
EOF
t1=$(date +%s)
$PY -m modalsynth prepare --data "$WORK/data" --cache "$WORK/cache" --preset paper 2>&1 | tail -1 | tee -a "$RESULTS/gpu.txt"
t2=$(date +%s)
echo "simulate+link ${REAL}->${N}: $((t1 - t0)) s; cache build: $((t2 - t1)) s" | tee -a "$RESULTS/gpu.txt"

run() {  # $1: label, $2...: extra train options
  local label=$1; shift
  rm -rf "$WORK/run-$label"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$RESULTS/smi-$label.csv" &
  local smi=$!
  local start=$(date +%s.%N)
  $PY -m modalsynth train --data "$WORK/data" --cache "$WORK/cache" --out "$WORK/run-$label" --preset paper \
      --init none --holdout none --steps "$STEPS" --device cuda "$@" > "$RESULTS/train-$label.txt" 2>&1
  local end=$(date +%s.%N)
  kill $smi; wait $smi 2>/dev/null || true
  cp "$WORK/run-$label/log.csv" "$RESULTS/log-$label.csv"
  $PY - "$label" "$RESULTS" "$STEPS" "$start" "$end" <<'EOF'
import csv, json, sys
from pathlib import Path
label, results, steps, start, end = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rows = [r for r in csv.DictReader(open(results / f"log-{label}.csv")) if r["key"] == "s_per_step"]
elapsed = {int(r["step"]): float(r["value"]) * int(r["step"]) for r in rows}
first, last = min(s for s in elapsed if s >= 10), max(elapsed)  # after the first 10 (autotuning, worker start-up)
rate = (last - first) / (elapsed[last] - elapsed[first])
smi = [l.split(",") for l in open(results / f"smi-{label}.csv") if l.strip()]
started = next((i for i, (_, m) in enumerate(smi) if float(m) > 1024), 0)  # the model is on the GPU from here
busy = [float(u) for u, _ in smi[started:]]
out = {"label": label, "steps_per_s": rate, "gpu_util_mean_pct": sum(busy) / max(1, len(busy)),
       "gpu_mem_peak_mib": max(float(m) for _, m in smi), "wall_s": end - start}
(results / f"result-{label}.json").write_text(json.dumps(out, indent=1))
print(json.dumps(out))
EOF
}
run workers0 --workers 0
run default
cat "$RESULTS"/result-*.json
$PY benchmarks/bench_gpu_loader.py --cache "$WORK/cache" --json "$RESULTS/loader-vs-step.json"
