#!/usr/bin/env bash
# What learning costs: FastTree training time and memory at 100k and 1M outcomes, and µs per scored candidate (the model
# against the profile prior alone, same run). No root needed.
# Usage: bench/learner.sh [N,N...]
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks learner "$@"
