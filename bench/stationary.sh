#!/usr/bin/env bash
# Switches on stationary paths, on the embedded default: the dashboard's own control plane (its learner starting from an
# empty outcome log) and its simulated fleet (4 hosts, 12 VMs, 36 VM paths, traffic on each VM's path to the next host) with link phases an
# hour long. Prints switches per settled path-hour (goal ≤ 1), each with its reason, and the model in service at the end.
# No root needed. Usage: bench/stationary.sh [--minutes N] (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks stationary "$@"
