#!/usr/bin/env bash
# The learned selector against every fixed stack on link-condition schedules it never trained on: two fabric-agents
# joined by fabric-linkem, the VMs' kernel TCP (CUBIC), iperf3 (bulk goodput) and sockperf (64-byte request/response
# p99), and a real fabric-silo that learns from the training schedules' outcomes and then chooses live. Prints per
# schedule and overall the learned utility, the best fixed stack's, regret, gain, switches per path-hour, exploration
# and how the passive outcome measures track iperf3. Needs root. Schedule format: bench/schedules/README.md.
# Usage: bench/learning.sh [--schedules DIR] [--train DIR] [--phase-seconds N] [--measure-seconds N] [--csv FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/packages.sh
install_packages iperf3 sockperf ethtool iputils-ping iproute2
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
args=("$@")
[[ " ${args[*]} " == *" --csv "* ]] || args+=(--csv "$PWD/bench/results/learning-$(date -u +%Y%m%d-%H%M%S).csv")
mkdir -p bench/results
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks learning "${args[@]}"
