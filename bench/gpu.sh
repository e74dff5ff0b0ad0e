#!/usr/bin/env bash
# GPU runs on a lent GPU machine (H100 or H200, one or two GPUs), in one call: set-up, then the
# steps named in $STEPS (default: tests). Needs the wheels in .whl/ (PyNvVideoCodec, PyAV; or
# .whl/site.tar.xz: the two installed for Python 3.12, pruned of what runs nothing here, to fit the
# carry cap), and for the steps that use them .whl-yolo/ (Ultralytics), .whl-svc/ (Flask, waitress, prometheus-client,
# paho-mqtt: bench --suite live with --metrics, --serve, --mqtt) and .whl-track/ (trackers, supervision and what
# they import that the image lacks), and .media/in.mp4 + .media/make_camera_clip.py (all git-ignored,
# carried: the tree that travels is capped at 64 MiB). Logs under $OUT.
#   tests   the GPU tests (cuda/nvdec marks) and the CPU ones they sit beside
#   scale   bench --suite scale on in.mp4 and the camera-like 1080p clip (one GPU vs all)
#   ladder  vidpipe ladder in.mp4
#   bench   vidpipe bench (pipeline) on in.mp4 and the 1080p clip ($BENCH_ARGS added)
#   old     vidpipe bench on in.mp4 with the tree in .old/src (git archive of $OLD: the commit
#           before, measured in the same call)
#   track   vidpipe bench (pipeline) with --track on in.mp4 and the 1080p clip ($TRACK_ARGS added)
#   tracklong vidpipe bench without and with --track on the 1080p clip repeated $TRACKLONG_TIMES times
#           (default 10: 9,000 frames)
#   trackrate bench/track_rate.py (the tracker beside the library's, this machine's CPU) and the
#           tracker's exactness tests on this machine's NumPy
#   startup vidpipe bench --suite startup on in.mp4 and the 1080p clip ($STARTUP_ARGS added)
#   yolo    vidpipe bench (pipeline) with $PEER_MODEL on in.mp4 and the 1080p clip ($YOLO_ARGS added)
#   live    vidpipe bench --suite live on the 1080p clip ($LIVE_CODEC: h264 or hevc; $LIVE_ARGS added)
#   liveauto the same with --procs-per-device auto ($LIVEAUTO_ARGS added)
#   livepackets the same with --stream-decoder pynvvideocodec ($LIVEPKT_ARGS added): the other camera path
#   livesvc the live suite with $LIVESVC_ARGS (--mqtt, --metrics, --serve: what publishing costs); a
#           mosquitto broker on 127.0.0.1:1883 while it runs (the machine's, or the one packed in
#           .whl-svc/mosquitto.tar.xz: the binary and the libraries a bare image lacks)
#   hevc    vidpipe bench (pipeline) on the HEVC clip ($HEVC_TIMES copies in a row, default 1), with each
#           --stream-decoder in $HEVC_DECODERS (default: auto ffmpeg pynvvideocodec; $HEVC_ARGS added)
#   probe   bench/live_probe.py on the 1080p clip ($PROBE_ARGS added): where a camera's frame time goes
#   annotate vidpipe detect on the 1080p clip with and without --save-video (wall, CPU use)
#   nms     bench/nms_sweep.py (the NMS kernel's tile sizes)
#   peers   vidpipe bench --suite peers (Ultralytics' predict beside vidpipe), $PEER_MODEL (yolo11m.yaml)
#   tvpeers vidpipe bench --suite peers on the 1080p clip for each of $TV_MODELS (torchvision's own loop)
set -uo pipefail
OUT=${OUT:-/tmp/vidpipe-results}
mkdir -p "$OUT"
[ -f .whl/site.tar.xz ] && python3 -c "import tarfile; tarfile.open('.whl/site.tar.xz').extractall('/tmp/site')"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  $(ls .whl/*.whl .whl-track/*.whl .whl-yolo/*.whl .whl-svc/*.whl 2>/dev/null) || exit 1
# Bytecode for what was installed and for vidpipe, as pip writes it on a user's install (the image keeps none).
python3 -m compileall -q -j 0 /tmp/site src >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 VIDPIPE_SHARED_CLIP=$PWD/.media/in.mp4
V="python3 -m vidpipe.cli"
STEPS=${STEPS:-tests}
{ date -u; echo "commit ${COMMIT:-unknown}"; nvidia-smi -L; nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
python3 -c "import time; t = time.time(); import torch, torchvision; print(f'import torch, torchvision: \
{time.time() - t:.1f} s')" | tee -a "$OUT/machine.txt"

camera() {  # the camera-like 1080p clip, made once per machine: H.264 (900 frames), or with $1 = hevc HEVC (600)
  local f=/tmp/camera1080.mp4 codec=${1:-h264} frames=900
  [ "$codec" = hevc ] && f=/tmp/camera1080-hevc.mp4 frames=600
  [ -f $f ] || python3 .media/make_camera_clip.py .media/in.mp4 $f $codec $frames >/dev/null
  echo $f
}
camera_times() {  # that clip ($2: h264 or hevc) $1 times in a row, packets copied
  local codec=${2:-h264} f=/tmp/camera1080-${2:-h264}x$1.mp4
  [ "$1" = 1 ] && { camera $codec; return; }
  [ -f $f ] || python3 -c "import sys; from vidpipe.synth import repeat_clip; \
repeat_clip(sys.argv[1], sys.argv[2], int(sys.argv[3]))" "$(camera $codec)" $f $1
  echo $f
}

for step in $STEPS; do
  case $step in
    tests)
      export VIDPIPE_CAMERA_CLIP="$(camera)"
      timeout ${TESTS_S:-420} python3 -m pytest -q -ra -m "cuda or nvdec" tests -p no:cacheprovider \
        ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
      # Detectors on the default --kernels auto start background compiles; none may run into a benchmark.
      while ls ~/.triton/cache/vidpipe/*.compiling >/dev/null 2>&1; do sleep 1; done ;;
    scale)
      timeout ${SCALE_S:-400} $V bench --suite scale .media/in.mp4 "$(camera)" --weights random --repeats 1 \
        --results "$OUT/results.md" 2>&1 | tail -12 ;;
    ladder)
      timeout 300 $V ladder .media/in.mp4 --slow-frames 8 --out "$OUT/ladder" 2>&1 | tail -14 ;;
    peers)
      timeout ${PEERS_S:-420} $V bench --suite peers .media/in.mp4 "$(camera)" --model "${PEER_MODEL:-yolo11m.yaml}" \
        --repeats 3 ${PEER_ARGS:-} --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -16 ;;
    tvpeers)
      for m in ${TV_MODELS:-retinanet_resnet50_fpn_v2 ssdlite320_mobilenet_v3_large}; do
        timeout ${PEERS_S:-420} $V bench --suite peers "$(camera)" --model "torchvision:$m" --weights random \
          --repeats 3 ${PEER_ARGS:-} --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -8
      done ;;
    nms)
      timeout 120 python3 bench/nms_sweep.py 2>&1 | tee "$OUT/nms_sweep.md" | tail -14 ;;
    bench)
      timeout 300 $V bench .media/in.mp4 "$(camera)" --weights random --repeats 3 ${BENCH_ARGS:-} \
        --results "$OUT/results.md" 2>&1 | tail -10 ;;
    track)
      timeout 300 $V bench .media/in.mp4 "$(camera)" --weights random --repeats 3 --track ${TRACK_ARGS:-} \
        --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -10 ;;
    tracklong)
      for args in "" --track; do
        timeout 300 $V bench "$(camera_times ${TRACKLONG_TIMES:-10})" --weights random --repeats 3 $args --results "$OUT/results.md" 2>&1 \
          | grep -v "^WARNING" | tail -6
      done ;;
    live)
      timeout ${LIVE_S:-300} $V bench --suite live "$(camera ${LIVE_CODEC:-h264})" --weights random ${LIVE_ARGS:-} \
        --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -14 ;;
    liveauto)
      timeout ${LIVEAUTO_S:-300} $V bench --suite live "$(camera ${LIVE_CODEC:-h264})" --weights random \
        --procs-per-device auto ${LIVEAUTO_ARGS:-} --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -14 ;;
    livesvc)
      if ! command -v mosquitto >/dev/null && [ -f .whl-svc/mosquitto.tar.xz ]; then
        python3 -c "import tarfile; tarfile.open('.whl-svc/mosquitto.tar.xz').extractall('/tmp')"
      fi
      LD_LIBRARY_PATH=/tmp/mq/lib $(command -v mosquitto || echo /tmp/mq/mosquitto) -p 1883 > "$OUT/mosquitto.log" 2>&1 &
      broker=$!
      timeout ${LIVESVC_S:-300} $V bench --suite live "$(camera ${LIVE_CODEC:-h264})" --weights random ${LIVESVC_ARGS:-} \
        --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -14
      kill $broker ;;
    hevc)
      for dec in ${HEVC_DECODERS:-auto ffmpeg pynvvideocodec}; do
        timeout ${HEVC_S:-200} $V bench "$(camera_times ${HEVC_TIMES:-1} hevc)" --weights random --repeats 3 --stream-decoder $dec ${HEVC_ARGS:-} \
          --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -6
      done ;;
    livepackets)
      timeout ${LIVEPKT_S:-300} $V bench --suite live "$(camera ${LIVE_CODEC:-h264})" --weights random \
        --stream-decoder pynvvideocodec ${LIVEPKT_ARGS:-} --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -14 ;;
    probe)
      timeout ${PROBE_S:-300} python3 bench/live_probe.py "$(camera ${LIVE_CODEC:-h264})" ${PROBE_ARGS:-} \
        --json "$OUT/probe.json" 2>&1 | grep -v "^WARNING" | tail -12 ;;
    annotate)
      TIMEFORMAT="wall %R s, user %U s, sys %S s"
      for args in "" "--save-video /tmp/annotated" "" "--save-video /tmp/annotated"; do
        { time timeout 200 $V detect "$(camera)" -o /tmp/annotate.jsonl --weights random $args; } 2>&1 \
          | grep -v "^WARNING" | tail -2 | sed "s|^|[${args:-plain}] |"
      done | tee "$OUT/annotate.txt"
      python3 -c "import av; c = av.open('/tmp/annotated/camera1080.mp4'); print('annotated frames:', \
        sum(1 for _ in c.decode(video=0)))" | tee -a "$OUT/annotate.txt" ;;
    old)
      PYTHONPATH=/tmp/site:$PWD/.old/src timeout 300 $V bench .media/in.mp4 --weights random --repeats 3 \
        --results "$OUT/results-old.md" 2>&1 | tail -8 ;;
    trackrate)
      timeout 120 python3 -m pytest -q tests/test_track.py -k random_trajectories -p no:cacheprovider 2>&1 | tail -2
      timeout 200 python3 bench/track_rate.py 2>&1 | tee "$OUT/track_rate.md" ;;
    startup)
      timeout ${STARTUP_S:-300} $V bench --suite startup .media/in.mp4 "$(camera)" ${STARTUP_ARGS:-} \
        --results "$OUT/results.md" 2>&1 | tail -12 ;;
    yolo)
      timeout 400 $V bench .media/in.mp4 "$(camera)" --model "${PEER_MODEL:-yolo11m.yaml}" --repeats 3 \
        ${YOLO_ARGS:-} --results "$OUT/results.md" 2>&1 | grep -v "^WARNING" | tail -10 ;;
  esac
done
