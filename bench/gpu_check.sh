#!/usr/bin/env bash
# Issue 17's device checks as one script: bit identity, ZO speed, ZO memory, HERON costs.
#
#   bash bench/gpu_check.sh cuda          # on the GPU machine; results in $OUT
#   OUT=/tmp/gpu-dry bash bench/gpu_check.sh cpu quick   # dry run here, tiny sizes
#
# Every stage writes its JSON into $OUT as it goes, so a timeout still leaves data;
# a failing stage is reported and the next one runs. The speed stage runs alone; the
# HERON and memory stages (fresh processes, per-process allocator peaks) run together.
set -u
DEVICE=${1:-cuda}
QUICK=${2:-}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stage() {
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name: $*"
  "$@" || echo "=== $name FAILED (exit $?)"
  echo "=== $name done in $((SECONDS - t0)) s"
}
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no gpu')"
if [ "$QUICK" = quick ]; then
  stage identity python3 -m bench.gpu_identity --device "$DEVICE" --out "$OUT/gpu_identity.json"
  stage speed python3 -m bench.zo_speed --device "$DEVICE" --model fedgen-cnn --batches 8 --steps 2 --warmup 1 --out "$OUT/zo_speed_$DEVICE.json"
  stage heron python3 -m bench.heron costs --device "$DEVICE" --repeats 1 --jobs 2 --batches 8 --out "$OUT/heron_costs_$DEVICE.json"
  stage memory python3 -m bench.zo_memory --device "$DEVICE" --batches 8 --jobs 2 --out "$OUT/zo_memory_$DEVICE.json"
else
  stage identity python3 -m bench.gpu_identity --device "$DEVICE" --out "$OUT/gpu_identity.json"
  stage speed python3 -m bench.zo_speed --device "$DEVICE" --batches 64 256 --steps 20 --warmup 3 --out "$OUT/zo_speed_$DEVICE.json"
  # memory and FLOPs are per process: these two stages may share the machine
  stage heron python3 -m bench.heron costs --device "$DEVICE" --repeats 1 --jobs 4 --out "$OUT/heron_costs_$DEVICE.json" > "$OUT/heron.log" 2>&1 &
  stage memory python3 -m bench.zo_memory --device "$DEVICE" --batches 64 256 --jobs 4 --out "$OUT/zo_memory_$DEVICE.json" > "$OUT/memory.log" 2>&1 &
  wait
  grep -v '^{' "$OUT/heron.log"; grep -v '^{' "$OUT/memory.log"
fi
ls -la "$OUT"
