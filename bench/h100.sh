#!/usr/bin/env bash
# The figures in docs/results.md, in one go on a GPU machine (the device tool's H100 here).
# Needs: PyNvVideoCodec and PyAV importable, the clip at $CLIP, results written under $OUT.
set -uo pipefail
CLIP=${CLIP:-.media/in.mp4}
OUT=${OUT:-/tmp/vidpipe-results}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src PYTHONUNBUFFERED=1 VIDPIPE_SHARED_CLIP=$CLIP
V="python3 -m vidpipe.cli"
nvidia-smi --query-gpu=name,driver_version,utilization.gpu,memory.used --format=csv > "$OUT/gpu.txt"

timeout ${TESTS_S:-120} python3 -m pytest -q -ra -m "cuda or nvdec" tests -p no:cacheprovider \
  -k "${TESTS_K:-nvdec or segments or pooled or engine or graphs or triton or full_class or fused}" \
  > "$OUT/pytest_gpu.log" 2>&1
tail -3 "$OUT/pytest_gpu.log"

timeout 100 $V bench --suite postprocess --batch-size 64 --repeats 5 --results "$OUT/results.md" | tail -8
timeout 240 $V bench "$CLIP" --synthetic-1080p 1200 --weights random --repeats 3 --long 10 \
  --results "$OUT/results.md" | tail -7
timeout 200 $V ladder "$CLIP" --slow-frames 8 --gil --out "$OUT/ladder" | tail -12
# One GPU vs every GPU of the machine (a two- or four-GPU kind): corpora of copies of each input.
timeout 300 $V bench --suite scale "$CLIP" --synthetic-1080p 1200 --weights random --repeats 1 \
  --results "$OUT/results.md" | tail -8

# Worker processes on one GPU: a corpus of 16 copies of the clip, 1 vs 2 processes (eager model,
# so no compile time sits inside the wall time).
corpus=$(mktemp -d); for i in $(seq 1 16); do cp "$CLIP" "$corpus/c$i.mp4"; done
for procs in 1 2; do
  $V detect "$corpus" -o "$(mktemp -d)/" --weights random --compile off --devices 0 \
    --procs-per-device $procs 2>&1 | tail -1 | sed "s/^/procs=$procs: /" | tee -a "$OUT/procs.txt"
done
