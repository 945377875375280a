#!/usr/bin/env bash
# The prepared GPU check (issue 16, part 5): LLaVA-1.5-7B and LLaDA-V-8B, RANDOM weights, bf16, on one accelerator;
# ≤ 8 minutes on one H200 with the device image (Python 3.12, jax 0.11 CUDA, torch 2.11 CUDA, transformers 5.17).
# Usage (repository root): bash eval/gpu_check.sh   — results in $OUT (or ./gpu_check_out): jax.json, torch.json,
# report.md. See eval/gpu_check.py for what is measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-gpu_check_out}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
# jax and torch in separate processes: jax preallocates most of the GPU's memory.
timeout 360 "$PY" -m eval.gpu_check jax --out "$OUT_DIR/jax.json" --budget-s 330 > "$OUT_DIR/jax.log" 2>&1
echo "jax part: exit $?"; tail -5 "$OUT_DIR/jax.log"
timeout 100 "$PY" -m eval.gpu_check torch --out "$OUT_DIR/torch.json" > "$OUT_DIR/torch.log" 2>&1
echo "torch part: exit $?"; tail -5 "$OUT_DIR/torch.log"
"$PY" -m eval.gpu_check report "$OUT_DIR/jax.json" "$OUT_DIR/torch.json" | tee "$OUT_DIR/report.md"
