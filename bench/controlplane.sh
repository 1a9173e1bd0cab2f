#!/usr/bin/env bash
# The control plane under fleet-sized telemetry: one silo, 10,100 paths reported at 1 Hz by 101 simulated agents,
# 1,010 VMs, 1 % of the paths turning lossy each second. Prints sustained ingestion, decision latency (change -> agent
# acknowledgement) p50/p99, CPU and memory. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
# Server GC, as fabric-silo runs (its project sets ServerGarbageCollection): workstation GC pauses doubled the p50.
DOTNET_gcServer=1 exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks controlplane "${1:-30}" "${@:2}"
