#!/usr/bin/env bash
# Direct veth vs Fabric std-ipv4 vs wireguard-go, same machine, same run: iperf3 TCP (1 and 4 streams), sockperf UDP
# 64-byte RTT p50/p99, forwarder CPU, and Fabric's ratios to wireguard-go. Needs root; installs its baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/packages.sh
install_packages iperf3 sockperf wireguard-go wireguard-tools ethtool iputils-ping iproute2
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks overlay "${1:-10}"
