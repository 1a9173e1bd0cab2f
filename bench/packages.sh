# Sourced by the benchmark scripts: as root, installs the Debian packages named in the arguments that are missing.
install_packages() {
  [ "$(id -u)" = 0 ] || return 0
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; fi
}
