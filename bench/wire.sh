#!/usr/bin/env bash
# BenchmarkDotNet over the packet views (time and allocations per packet).
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks wire "$@"
