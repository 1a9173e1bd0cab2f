#!/bin/sh
# Removes the plugin binary; the network configuration stays unless --purge is given.
set -eu
root=${FABRIC_ROOT:-/}
rm -f "$root${CNI_BIN_DIR:-/opt/cni/bin}/fabric"
if [ "${1:-}" = --purge ]; then rm -f "$root${CNI_CONF_DIR:-/etc/cni/net.d}/10-fabric.conflist"; fi
echo "removed the fabric CNI plugin"
