# Live cameras: one process vs several, K each on its own (bench stops at the first K that fails).
export COMMIT=$1
for pk in "1 32" "1 48" "3 48" "6 48" "6 64" "4 64" "6 80"; do
  set -- $pk
  STEPS=live LIVE_S=90 LIVE_ARGS="--live-streams $2 --live-seconds 14 --compile off --procs-per-device $1" bash bench/h200.sh 2>&1 | grep "^| camera"
done
