#!/usr/bin/env bash
# Direct veth vs Fabric std-ipv4 vs wireguard-go, same machine, same run: iperf3 TCP (1 and 4 streams), sockperf UDP
# 64-byte RTT p50/p99, forwarder CPU, and Fabric's ratios to wireguard-go. Needs root; installs its baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in iperf3 sockperf wireguard-go wireguard-tools ethtool; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; fi
fi
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks overlay "${1:-10}"
