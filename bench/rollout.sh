#!/usr/bin/env bash
# How long a rollout's decisions take to move real bindings: a silo in this process, two real agents on a loopback
# underlay with their control-plane links, VMS VMs bound to swap-test (default 64). Prints, for three versions, the time
# from the catalog's sync of a newer version to the last binding on it and from the roll back to the last binding back,
# against the same bindings moved by the agents told directly. Then the time from a stack version's withdrawal from the
# signed targets to the last agent that unloaded it, against the agents reading the repository at once. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build tests/Fabric.Benchmarks -c Release -nologo -clp:ErrorsOnly
exec tests/Fabric.Benchmarks/bin/Release/net10.0/Fabric.Benchmarks rollout "${1:-64}"
