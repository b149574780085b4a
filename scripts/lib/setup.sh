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
# Re-installs only when pyproject.toml changed since the last install; an install with the test
# extras also satisfies a plain one. pip's output goes to .venv/install.log unless it fails.
rc_venv() {
  local extras=${1:-} py hash stamp_dir
  py=$(rc_python)
  if [ ! -x "$rc_root/.venv/bin/python" ]; then
    rc_log "creating .venv with $py"
    "$py" -m venv "$rc_root/.venv"
  fi
  hash=$(sha256sum "$rc_root/pyproject.toml" | cut -d' ' -f1)
  stamp_dir="$rc_root/.venv/.rackcells-installed"
  mkdir -p "$stamp_dir"
  if [ -f "$stamp_dir/${extras:-plain}" ] && [ "$(cat "$stamp_dir/${extras:-plain}")" = "$hash" ]; then
    return 0
  fi
  if [ -z "$extras" ] && [ -f "$stamp_dir/test" ] && [ "$(cat "$stamp_dir/test")" = "$hash" ]; then
    return 0
  fi
  rc_log "installing rackcells${extras:+[$extras]} into .venv (log: .venv/install.log)"
  if ! { "$rc_root/.venv/bin/python" -m pip install --upgrade pip &&
         "$rc_root/.venv/bin/python" -m pip install -e "$rc_root${extras:+[$extras]}"; } \
       >"$rc_root/.venv/install.log" 2>&1; then
    tail -n 30 "$rc_root/.venv/install.log" >&2
    echo "pip install failed; see .venv/install.log" >&2
    return 1
  fi
  echo "$hash" > "$stamp_dir/${extras:-plain}"
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
