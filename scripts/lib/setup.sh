# Shared setup for scripts/test and scripts/demo: Python venv and Debian packages.
# Source it; it defines functions and changes nothing by itself.

rc_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

rc_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

rc_python() {
  local py
  for py in python3.11 python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "rackcells needs Python >= 3.11 on PATH" >&2; return 1
}

# rc_venv EXTRAS: create .venv if needed and install the project (editable) with EXTRAS.
# Re-installs only when pyproject.toml changed since the last install.
rc_venv() {
  local extras=${1:-} py stamp want
  py=$(rc_python)
  if [ ! -x "$rc_root/.venv/bin/python" ]; then
    rc_log "creating .venv with $py"
    "$py" -m venv "$rc_root/.venv"
  fi
  stamp="$rc_root/.venv/.rackcells-installed"
  want="$(sha256sum "$rc_root/pyproject.toml" | cut -d' ' -f1) [$extras]"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rc_log "installing rackcells${extras:+[$extras]} into .venv"
    "$rc_root/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$rc_root/.venv/bin/python" -m pip install -q -e "$rc_root${extras:+[$extras]}"
    echo "$want" > "$stamp"
  fi
}

# rc_apt PKG...: install the Debian packages that are missing (as root, no recommends).
rc_apt() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  rc_log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
