#!/usr/bin/env bash
# What the embedded default costs with nobody watching (issue 20 §5): builds and starts what `./fabric run` starts
# (fabric-embedded: silo, repository, 4 simulated hosts with 12 VMs sending 1,200 frames a second, dashboard) on a port of
# its own, waits out the warm-up, then prints each minute the process's CPU (share of one core, from /proc/PID/stat), its
# resident memory, and the threads that took the CPU (by name, from /proc/PID/task/*/schedstat); at the end the means
# against the goal (at most 5 % of one core and 200 MB resident). No root needed; nothing but loopback.
# Usage: bench/idle.sh [--minutes N] (5) [--warmup S] (120) [--data DIR] (a new temporary folder: the learner starts
# empty; give the folder of an earlier run to start from what it learned) [--listen ADDR:PORT] (127.0.0.1:5099)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=5 warmup=120 data="" listen=127.0.0.1:5099
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --listen) listen=$2; shift 2 ;;
    *) echo "bench/idle.sh: unknown argument '$1' (usage: bench/idle.sh [--minutes N] [--warmup S] [--data DIR] [--listen ADDR:PORT])" >&2; exit 2 ;;
  esac
done
for n in "$minutes" "$warmup"; do
  case "$n" in ''|*[!0-9]*) echo "bench/idle.sh: '$n' is not a whole number" >&2; exit 2 ;; esac
done
[ "$minutes" -ge 1 ] || { echo "bench/idle.sh: --minutes must be at least 1" >&2; exit 2; }
temporary=""
if [ -z "$data" ]; then
  temporary=$(mktemp -d /tmp/fabric-idle.XXXXXX)
  data=$temporary
fi
dotnet build dashboard/embedded.slnf -c Release -nologo -clp:ErrorsOnly
log=$(mktemp /tmp/fabric-idle-log.XXXXXX)
dashboard/Fabric.Embedded.Host/bin/Release/net10.0/fabric-embedded --data "$data" --listen "$listen" > "$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -z "$temporary" ] || rm -rf "$temporary"
}
trap cleanup EXIT
ticks=$(getconf CLK_TCK)
alive() { kill -0 "$pid" 2>/dev/null || { echo "bench/idle.sh: fabric-embedded stopped; its log: $log" >&2; tail -20 "$log" >&2; exit 1; }; }
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss() { awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$pid/status"; }
threads() { for t in /proc/"$pid"/task/*; do echo "${t##*/} $(awk '{print $1}' "$t/schedstat" 2>/dev/null || echo 0) $(cat "$t/comm" 2>/dev/null | tr ' ' _)"; done | sort; }
echo "idle: fabric-embedded pid $pid on http://$listen/, data $data; warming up for $warmup s"
sleep "$warmup"
alive
total=0 peak=0
for m in $(seq "$minutes"); do
  before=$(threads); a=$(cpu)
  sleep 60
  alive
  b=$(cpu); after=$(threads); used=$((b - a)); total=$((total + used))
  mb=$(rss); [ "$mb" -gt "$peak" ] && peak=$mb
  top=$(join <(echo "$before") <(echo "$after") | awk -v t="$ticks" '{n[$3] += ($4 - $2) / 6e8} END {for (k in n) printf "%.1f %s\n", n[k], k}' | sort -rn | head -6 | awk '{printf "%s %s %%, ", $2, $1}')
  awk -v u="$used" -v t="$ticks" -v m="$m" -v mb="$mb" -v top="$top" 'BEGIN {printf "minute %d: %.1f %% of one core, %d MB resident; by thread: %s\n", m, u * 100 / t / 60, mb, top}'
done
awk -v u="$total" -v t="$ticks" -v n="$minutes" -v peak="$peak" 'BEGIN {
  cpu = u * 100 / t / 60 / n
  printf "idle over %d min: %.1f %% of one core (goal <= 5 %%: %s, %.1fx the goal), %d MB resident at most (goal <= 200 MB: %s, %.2fx)\n",
    n, cpu, cpu <= 5 ? "met" : "not met", cpu / 5, peak, peak <= 200 ? "met" : "not met", peak / 200 }'
echo "trainings in the run: $(grep -c 'Learner trained' "$log" || true); its log: $log"
