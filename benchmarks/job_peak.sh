#!/bin/bash
# Peak memory of a Snakemake target's jobs in their first SECONDS, from a fresh clone.
#
#   bash benchmarks/job_peak.sh TARGET CONFIG SECONDS
#   bash benchmarks/job_peak.sh results/features/photos/mobilenet_v2.nc config/paper.yaml 480
#
# Clones this repository into a temporary folder, runs `snakemake TARGET --cores 1
# --configfile CONFIG` there, samples the largest VmHWM of the run's processes every 5 s,
# stops the run after SECONDS and prints that peak and the last progress lines of the
# target's log. For jobs too long to run to the end (a paper-sized features job of a
# stride-8 network: hours); the README's mobilenet_v2 and mtcnn_onet rows came from it.
set -euo pipefail
target=$1; config=$2; secs=$3
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work"
ln -s "$repo/.venv" "$work/.venv"
cd "$work"
PYTHONPATH="$work/src" setsid .venv/bin/snakemake "$target" --cores 1 --configfile "$config" \
    > "$work/snakemake.log" 2>&1 &
pid=$!
group=$(ps -o pgid= "$pid" | tr -d ' ')
peak=0; t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt "$secs" ] && kill -0 "$pid" 2>/dev/null; do
  for p in $(pgrep -g "$group" || true); do
    h=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    if [ -n "$h" ] && [ "$h" -gt "$peak" ]; then peak=$h; fi
  done
  sleep 5
done
kill -- "-$group" 2>/dev/null || true
echo "$target: largest VmHWM $((peak / 1024)) MiB after $(( $(date +%s) - t0 )) s (in $work)"
find logs -name "*.log" -newer snakemake.log -exec tail -c 400 {} \; 2>/dev/null \
    | tr '\r' '\n' | grep -v '^$' | tail -2 || true
