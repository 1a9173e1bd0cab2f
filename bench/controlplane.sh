#!/usr/bin/env bash
# The control plane under fleet-sized telemetry: one silo, hosts x 100 peers paths reported at 1 Hz by simulated agents
# (10 VMs per host), 101 paths flipping between clean and lossy each second. One run per fleet size (default 101, 301
# and 1,001 hosts: 10,100, 30,100 and 100,100 paths), each in a process of its own so memory is that size's alone.
# Prints sustained ingestion, decision latency (change -> agent acknowledgement) p50/p99, CPU and memory per size.
# usage: bench/controlplane.sh [SECONDS] [--hosts N[,N...]] [--peers N] [--changes N] [--compare-security]. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=30
if [[ $# -gt 0 && $1 != --* ]]; then seconds=$1; shift; fi
sizes=101,301,1001
rest=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --hosts) [[ $# -ge 2 && -n $2 ]] || { echo "controlplane.sh: --hosts needs a list such as 101,301,1001" >&2; exit 2; }; sizes=$2; shift 2 ;;
        *) rest+=("$1"); shift ;;
    esac
done
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
IFS=, read -r -a hosts <<< "$sizes"
for h in "${hosts[@]}"; do
    # Server GC, as fabric-silo runs (its project sets ServerGarbageCollection): workstation GC pauses doubled the p50.
    DOTNET_gcServer=1 tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks controlplane "$seconds" --hosts "$h" ${rest[@]+"${rest[@]}"}
done
