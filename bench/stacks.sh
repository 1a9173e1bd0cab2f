#!/usr/bin/env bash
# Every stack, and kcptun and wireguard-go as baselines, across the same emulated link (fabric-linkem between two
# fabric-agents): TCP goodput (iperf3, CUBIC), 64-byte request/response RTT p50/p99 over TCP (sockperf, 10 s), uplink
# bytes per delivered byte, as CSV and a PNG chart (drawn in-process). Default: the cells the stacks' goals name, a clean
# unlimited link, and the Pantheon and Mahimahi conditions of ../shared/testdata; --full adds RTT {2,30,120} ms x loss
# {0,0.5,2,5} % x rate {20,200} Mbit/s; --smoke is one cell and two stacks; --schedule FILE makes a link schedule's
# phases (bench/schedules/*/*.sched) the cells. Needs root.
# Usage: bench/stacks.sh [SECONDS_PER_RUN] [--full|--smoke|--schedule FILE] [--latency-seconds N] [--csv FILE] [--testdata DIR] [--cells REGEX] [--carriers A,B] [--trace]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/packages.sh
install_packages iperf3 sockperf ethtool kcptun wireguard-go wireguard-tools iputils-ping iproute2
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
args=("$@")
[[ " ${args[*]} " == *" --csv "* ]] || args+=(--csv "$PWD/bench/results/stacks-$(date -u +%Y%m%d-%H%M%S).csv")
mkdir -p bench/results
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks stacks "${args[@]}"
