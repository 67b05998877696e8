#!/bin/bash
# End-to-end wall time of `dlm generate "add: 66+163 ="` on the bundled dlm-tiny (import, load, generate, print),
# run N times (default 7); prints each run with the 1-minute load average when it ended, then the median.
# Usage: benchmarks/cpu_startup.sh [N] [extra dlm generate options, e.g. --threads 1]
# The checkout's own dlm is measured (python -m dlm from the repository root).
cd "$(dirname "$0")/.." || exit 1
n=${1:-7}
shift
times=()
for _ in $(seq 1 "$n"); do
  start=$(date +%s.%N)
  answer=$(python -m dlm generate "add: 66+163 =" "$@")
  t=$(echo "$(date +%s.%N) - $start" | bc)
  times+=("$t")
  printf "%.2f s  answer %s  load %s\n" "$t" "$answer" "$(cut -d' ' -f1 /proc/loadavg)"
done
printf "median %.2f s over %d runs\n" "$(printf "%s\n" "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "$n"
