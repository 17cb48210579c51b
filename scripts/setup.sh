#!/usr/bin/env bash
# Idempotent machine set-up: a venv ($VENV, default .venv) holding exactly requirements.lock
# (every Python package, with hashes, the installer and build backend included), the project
# itself with --no-deps, and the Debian peers of scripts/debian-packages.txt (SIPp, sipsak,
# baresip, Kamailio, sngrep, tshark), installed by name, with a warning where a version differs from the recorded one.
# Re-runs only when the lock, pyproject.toml or this script change; after that it needs no
# network.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
python=${PYTHON:-python3}
packages=scripts/debian-packages.txt
debian_names() { grep -v '^#' "$packages" | awk 'NF { print $1 }'; }
have_peers() {
  command -v sipp && command -v sipsak && command -v kamailio && command -v baresip && command -v sngrep && command -v tshark
} >/dev/null 2>&1
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
warn_debian_versions() {
  local name want have
  while read -r name want; do
    case "$name" in "" | "#"*) continue ;; esac
    have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || echo "not installed")
    if [ "$have" != "$want" ]; then
      echo "setup: warning: $name is $have here; the suite was run against $want ($packages)" >&2
    fi
  done <"$packages"
}

stamp=$venv/.setup-$(cat requirements.lock pyproject.toml scripts/setup.sh "$packages" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && have_peers; then
  exit 0
fi
"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"zeroslee needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY
if [ ! -x "$venv/bin/python" ] && ! "$python" -m venv "$venv"; then
  # Debian splits venv out of python3: install it, then try again.
  apt_install python3-venv
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
# Bootstrap: the venv's pip installs the locked uv alone (its hashes checked), and uv makes
# the venv exactly the lock: it installs what is missing and removes what is not locked.
awk '/^uv==/ { on = 1 } on { print } on && !/\\$/ { exit }' requirements.lock >"$venv/uv.lock.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
  -r "$venv/uv.lock.txt"
uv=("$venv/bin/uv" pip --quiet)
"${uv[@]}" sync --python "$venv/bin/python" --require-hashes requirements.lock
"${uv[@]}" install --python "$venv/bin/python" --no-deps --no-build-isolation -e .
if ! have_peers; then
  # shellcheck disable=SC2046
  apt_install $(debian_names)
fi
warn_debian_versions
rm -f "$venv"/.setup-*
touch "$stamp"
echo "setup: done ($venv, sipp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1), $(sipsak --version 2>&1 | head -1))"
