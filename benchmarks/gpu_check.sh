#!/usr/bin/env bash
# The GPU check, ready to run on a machine with a CUDA GPU and no network (under 10 minutes):
#   bash benchmarks/gpu_check.sh [OUTPUT_FILE]
# prints (and writes to OUTPUT_FILE):
#   (0) gsplat's CUDA extension built (gsplat compiles it on first use: minutes, once per machine);
#   (1) per guidance, for an SD-1.5-sized UNet with random weights in fp16 at 512 px: UNet calls, time and peak
#       memory of one guidance step (ids-identity: IDS with --fpr-jacobian identity, no UNet backward pass), and
#       an IDS step with the official code's attention (explicit bmm) against ours (fused SDPA) on the same UNet
#       (benchmarks/guidance_step.py);
#   (2) one editing step at 512 px: nerfacto deferred and full-graph, and Gaussian splats (benchmarks/edit_step.py);
#   (3) the CPU rasterizer against gsplat's CUDA rasterization, values and gradients (tests/test_splat.py);
#   (4) ids-splat-edit-demo end to end on CUDA (gsplat's rasterizer): a short reconstruction and edit of the demo
#       scene, then its renders measured (ball named blue, rest vs reconstruction).
# Each part has its own time limit, so a hang in one still leaves the others' figures. Copy the whole output into
# docs/measurements.md's "GPU figures" when it has run.
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
  echo "== (0) gsplat's CUDA extension"
  timeout 420 "$PYTHON" -c "import time; t = time.time(); from gsplat.cuda._backend import _C; \
print(f'gsplat CUDA extension ready in {time.time() - t:.0f} s' if _C is not None else 'gsplat: no CUDA extension')" \
    || echo "(0) failed or timed out: $?"
  echo "== (1) one guidance step, SD-1.5-sized UNet (random weights), fp16, 512 px"
  timeout 240 "$PYTHON" benchmarks/guidance_step.py --device cuda --steps 5 || echo "(1) failed or timed out: $?"
  echo "== (2) one ids-edit step at 512 px: nerfacto deferred and full-graph, and splats"
  timeout 200 "$PYTHON" benchmarks/edit_step.py --device cuda --sizes 512 --steps 2 || echo "(2) failed or timed out: $?"
  echo "== (3) CPU rasterizer vs gsplat's CUDA rasterization"
  timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_splat.py -k cuda_rasterization -rA \
    || echo "(3) failed or timed out: $?"
  echo "== (4) ids-splat-edit-demo on CUDA, demo prior"
  timeout 240 "$PYTHON" benchmarks/local_edits.py --no-iou --no-2d --nerf --splat --seeds 0 --nerf-guidances ids \
    --nerf-masks auto --nerf-steps 150 --device cuda || echo "(4) failed or timed out: $?"
} 2>&1 | tee "$OUT"
