#!/usr/bin/env bash
# The GPU check, ready to run on a machine with a CUDA GPU and no network (under 8 minutes):
#   bash benchmarks/gpu_check.sh [OUTPUT_FILE]
# prints (and writes to OUTPUT_FILE), for an SD-1.5-sized UNet with random weights in fp16 at 512 px:
#   (1) per guidance: UNet calls, time and peak memory of one guidance step, and an IDS step with the official
#       code's attention (explicit bmm) against ours (fused SDPA) on the same UNet (benchmarks/guidance_step.py);
#   (2) one nerfacto editing step, deferred and full-graph (benchmarks/edit_step.py).
# The splat editing step joins (2) once a splat editor exists. Each part has its own time limit, so a hang in one
# still leaves the others' figures. Copy the whole output into README's "GPU figures" when it has run.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${1:-/dev/null}"  # the output goes to the terminal too
{
  echo "== GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  "$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device here (torch.cuda.is_available() is False)")
props = torch.cuda.get_device_properties(0)
print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
  [ $? -eq 0 ] || exit 1
  echo "== (1) one guidance step, SD-1.5-sized UNet (random weights), fp16, 512 px"
  timeout 240 "$PYTHON" benchmarks/guidance_step.py --device cuda --steps 5 || echo "(1) failed or timed out: $?"
  echo "== (2) one ids-edit step at 512 px (nerfacto), deferred vs full-graph"
  timeout 200 "$PYTHON" benchmarks/edit_step.py --device cuda --sizes 512 --steps 2 || echo "(2) failed or timed out: $?"
} 2>&1 | tee "$OUT"
