#!/bin/sh
# Installs Fabric's libvirt qemu hook. Usage: install.sh PATH_TO_FABRIC_HOOK_BINARY
# Build the binary natively (answers in a few ms):
#   dotnet publish dataplane-agent/Fabric.Hooks -c Release -r linux-x64 -o out/hook
# FABRIC_ROOT (default /) installs under another root, e.g. for a test or an image build.
set -eu
binary=${1:?usage: install.sh PATH_TO_FABRIC_HOOK_BINARY}
root=${FABRIC_ROOT:-/}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 2; }
hooks="$root/etc/libvirt/hooks"
mkdir -p "$hooks" "$root/usr/local/lib/fabric" "$root/etc/fabric"
install -m 0755 "$binary" "$root/usr/local/lib/fabric/fabric-hook"
# Keep an operator's own qemu hook: libvirt (6.5+) also runs every script in qemu.d/, in order, after it.
if [ -e "$hooks/qemu" ] && ! grep -q "Fabric's libvirt qemu hook" "$hooks/qemu"; then
  mkdir -p "$hooks/qemu.d"
  target="$hooks/qemu.d/fabric"
else
  target="$hooks/qemu"
fi
install -m 0755 "$here/qemu" "$target"
if [ ! -e "$root/etc/fabric/hook.env" ]; then
  printf '%s\n' "# Settings of Fabric's libvirt hook (see $target)." "FABRIC_HOOK_FAIL_OPEN=1" > "$root/etc/fabric/hook.env"
fi
echo "installed $target; restart libvirtd so it sees a new hook script (libvirt reads hooks only at start)"
