#!/usr/bin/env bash
# How long libvirt waits on Fabric's qemu hook per call: the native (AOT) fabric-hook that deploy/libvirt installs against
# the JIT-compiled build, for a start with the agent down (request queued durably), a start with a real fabric-agent
# running (registered), and a migrate (filter: XML passed through). Prints p50/p99/max over N calls each. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
work=$(mktemp -d /tmp/fabric-hook-bench.XXXXXX)
trap 'kill "${agent_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
dotnet build Fabric.sln -c Release -nologo -clp:ErrorsOnly >/dev/null
dotnet publish dataplane-agent/Fabric.Hooks -c Release -r linux-x64 -o "$work/aot" -nologo -clp:ErrorsOnly >/dev/null
jit=dataplane-agent/Fabric.Hooks/bin/Release/net10.0/fabric-hook
xml=deploy/libvirt/example-domain.xml
export FABRIC_AGENT_SOCKET="$work/agent.sock" FABRIC_STATE_DIR="$work/state"

measure() { # label binary operation: prints p50/p99/max in ms over $n calls
  local label=$1 bin=$2 op=$3 i t0 t1
  : > "$work/times"
  for ((i = 0; i < n; i++)); do
    t0=$(date +%s%N)
    "$bin" qemu web-1 "$op" begin - < "$xml" > /dev/null 2>&1
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000)) >> "$work/times"
  done
  sort -n "$work/times" | awk -v label="$label" '{ v[NR] = $1 } END {
    printf "%-44s p50 %6.1f ms  p99 %6.1f ms  max %6.1f ms\n", label, v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + (NR * 0.99 > int(NR * 0.99))] / 1000, v[NR] / 1000 }'
}

echo "fabric-hook per call, $n calls each (machine: $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
for kind in aot jit; do
  bin=$([ "$kind" = aot ] && echo "$work/aot/fabric-hook" || echo "$jit")
  rm -rf "$work/state"
  measure "$kind: start, agent down (queued)" "$bin" start
  measure "$kind: migrate (filter)" "$bin" migrate
done

cat > "$work/agent.json" <<JSON
{ "hostId": "bench", "underlay": { "ipv4": "127.0.0.1", "port": 0 },
  "stacks": [ "$(pwd)/stacks/Fabric.Stacks.StdIPv4/bin/Release/net10.0/Fabric.Stacks.StdIPv4.dll" ],
  "apiSocket": "$FABRIC_AGENT_SOCKET", "stateDirectory": "$work/agent-state" }
JSON
dataplane-agent/Fabric.Agent.Host/bin/Release/net10.0/fabric-agent run --config "$work/agent.json" > "$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do [ -S "$FABRIC_AGENT_SOCKET" ] && break; sleep 0.1; done
rm -rf "$work/state"
for kind in aot jit; do
  bin=$([ "$kind" = aot ] && echo "$work/aot/fabric-hook" || echo "$jit")
  measure "$kind: start, agent up (registered/unchanged)" "$bin" start
done
echo "libvirt's budget for the hook in this design: 100 ms per call"
