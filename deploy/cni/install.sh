#!/bin/sh
# Installs Fabric's CNI plugin as CNI_BIN_DIR/fabric (default /opt/cni/bin) and, unless one exists, the example network.
# Usage: install.sh PATH_TO_FABRIC_CNI_BINARY    (build it: dotnet publish dataplane-agent/Fabric.Cni -c Release -r linux-x64 -o out/cni)
# FABRIC_ROOT (default /) installs under another root.
set -eu
binary=${1:?usage: install.sh PATH_TO_FABRIC_CNI_BINARY}
root=${FABRIC_ROOT:-/}
bin="$root${CNI_BIN_DIR:-/opt/cni/bin}"
conf="$root${CNI_CONF_DIR:-/etc/cni/net.d}"
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 2; }
mkdir -p "$bin" "$conf"
install -m 0755 "$binary" "$bin/fabric"
[ -e "$conf/10-fabric.conflist" ] || install -m 0644 "$here/10-fabric.conflist" "$conf/10-fabric.conflist"
echo "installed $bin/fabric and $conf/10-fabric.conflist (edit its vni, subnet and policy)"
