#!/usr/bin/env bash
# One prepared accelerator check (issue 15): tools/benchmark.py on ViT-B/16
# and PE-Core B/16, 1-shot and 5-shot, episodes_per_batch auto/1/8/32,
# bfloat16; one JSON line per run in $OUT/gpu_check.jsonl, each run's
# stderr in $OUT/logs/. Runs that fail or time out are recorded as
# {"error": ...} lines and the script goes on.
#
#   OUT=/tmp/gpu_check tools/gpu_check.sh            # everything
#   MODELS="clip-vit-b16" SHOTS=1 BATCHES="auto 8" tools/gpu_check.sh
#
# Environment: OUT (default ./gpu_check_out), PYTHON (default python),
# MODELS, SHOTS, BATCHES, STEPS (timed steps, default 5), RUN_TIMEOUT
# (seconds per run, default 240), AGAINST_TORCH (auto: only where torch
# sees a CUDA device, since timing a CPU torch step against a GPU jaxfsl
# step says nothing; 1: always; 0: never), HOST_WAIT_MODEL (the model of the
# host-wait run, default clip-vit-b16; "none" skips it).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
PYTHON="${PYTHON:-python}"
MODELS="${MODELS:-clip-vit-b16 pe-core-b16-224}"
SHOTS="${SHOTS:-1 5}"
BATCHES="${BATCHES:-auto 1 8 32}"
STEPS="${STEPS:-5}"
RUN_TIMEOUT="${RUN_TIMEOUT:-240}"
AGAINST_TORCH="${AGAINST_TORCH:-auto}"
mkdir -p "$OUT/logs"
RESULTS="$OUT/gpu_check.jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

note() {  # one JSON line with a message
  "$PYTHON" -c 'import json, sys; print(json.dumps(dict(
      zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" >> "$RESULTS"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    || true; "$PYTHON" -c 'import jax; print(jax.__version__, jax.devices())'
} > "$OUT/logs/environment.txt" 2>&1

PRESETS="$("$PYTHON" -c 'from jaxfsl.models import PRESETS
print(" ".join(PRESETS))')"
torch_flag=""
case "$AGAINST_TORCH" in
  1) torch_flag="--against torch" ;;
  auto) if "$PYTHON" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
          torch_flag="--against torch"
        else
          note event skipped_against_torch reason \
            "torch sees no CUDA device (or is not installed)"
        fi ;;
esac

for model in $MODELS; do
  if [[ " $PRESETS " != *" $model "* ]]; then
    note event skipped_model model "$model" reason \
      "no such preset on this branch (PE-Core lands from h/P)"
    continue
  fi
  for shot in $SHOTS; do
    for epb in $BATCHES; do
      name="${model}_shot${shot}_E${epb}"
      # The warm-cache compile is measured once per model and shot.
      cache="--cache_dir off"
      [[ "$epb" == "auto" ]] && cache=""
      start=$(date +%s)
      line="$(timeout "$RUN_TIMEOUT" "$PYTHON" tools/benchmark.py \
          --model "$model" --shot "$shot" --episodes_per_batch "$epb" \
          --dtype bfloat16 --steps "$STEPS" --warmup 2 --time_stage2 \
          $cache $torch_flag 2> "$OUT/logs/$name.err" | tail -n 1)"
      rc=$?
      if [[ $rc -eq 0 && "$line" == "{"* ]]; then
        echo "$line" >> "$RESULTS"
      else
        note event failed run "$name" rc "$rc" seconds \
          "$(( $(date +%s) - start ))" stderr_tail \
          "$(tail -c 600 "$OUT/logs/$name.err")"
      fi
      echo "$name rc=$rc $(( $(date +%s) - start )) s" >&2
    done
  done
done
# One host-wait measurement (real pipeline, synthetic data, T=20).
HOST_WAIT_MODEL="${HOST_WAIT_MODEL:-clip-vit-b16}"
if [[ "$HOST_WAIT_MODEL" != none ]]; then
  line="$(timeout "$RUN_TIMEOUT" "$PYTHON" tools/benchmark.py \
      --model "$HOST_WAIT_MODEL" --shot 1 --episodes_per_batch 8 \
      --dtype bfloat16 --steps 2 --cache_dir off --host_wait_batches 3 \
      --host_wait_steps 20 2> "$OUT/logs/host_wait.err" | tail -n 1)"
  rc=$?
  if [[ $rc -eq 0 && "$line" == "{"* ]]; then
    echo "$line" >> "$RESULTS"
  else
    note event failed run host_wait rc "$rc"
  fi
fi
echo "results: $RESULTS" >&2
