#!/usr/bin/env bash
# 100 hitless swaps under a paced stream: longest delivery gap and frames lost per swap (p50/p99/max) against quiet
# windows of the same run, and the time to bring a stack in from a signed repository and to unload it. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks swap "${1:-20000}"
