#!/bin/sh
# Removes what install.sh installed (an operator's own qemu hook and /etc/fabric/hook.env are left alone).
set -eu
root=${FABRIC_ROOT:-/}
hooks="$root/etc/libvirt/hooks"
for f in "$hooks/qemu" "$hooks/qemu.d/fabric"; do
  if [ -e "$f" ] && grep -q "Fabric's libvirt qemu hook" "$f"; then
    rm -f "$f"
    echo "removed $f"
  fi
done
rm -f "$root/usr/local/lib/fabric/fabric-hook"
rmdir "$root/usr/local/lib/fabric" 2>/dev/null || true
echo "restart libvirtd to stop it calling the removed hook"
