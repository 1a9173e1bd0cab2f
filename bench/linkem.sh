#!/usr/bin/env bash
# Prints, for every knob of the link emulator, what was configured and what real kernel traffic measured through it,
# plus the emulator's own added latency against a direct veth and its forwarding rate. Needs root (namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks linkem
