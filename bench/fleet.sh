#!/usr/bin/env bash
# Programming the fleet: a 3-silo cluster on this machine, 1,000 simulated hosts, 10,000 VMs in 100 virtual networks.
# Prints the time from a VM's placement until every host with a VM in its network has the route (p50, p99), the pushes
# per registration (the network's size, not the fleet's), a host's full resync, CPU and memory. No root needed.
# usage: bench/fleet.sh [--compare-security]: with it, once without and once with the control channel's security (TLS
# between the silos and to the gateways, a caller token on every call), and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  ""|--compare-security) ;;
  *) echo "bench/fleet.sh: '$1' is not an argument (none, or --compare-security)" >&2; exit 2 ;;
esac
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
# Server GC, as fabric-silo runs.
DOTNET_gcServer=1 exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks fleet "$@"
