#!/usr/bin/env bash
# Idempotent machine set-up: venv in .venv, the project, its test and bench tools, SIPp,
# sipsak and Kamailio (the bench's baseline proxy).
# Re-runs only when pyproject.toml changes; after that it needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
have_peers() { command -v sipp && command -v sipsak && command -v kamailio; } >/dev/null 2>&1
if [ -f "$stamp" ] && have_peers; then
  exit 0
fi
python=${PYTHON:-python3}
"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"zeroslee needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY
if [ ! -x .venv/bin/python ] && ! "$python" -m venv .venv; then
  # Debian splits venv out of python3: install it, then try again.
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  rm -rf .venv
  "$python" -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
# SIPp (Debian's sip-tester) is the reference peer; sipsak is a second, independent UA;
# Kamailio is the bench's baseline (started only by the bench, on loopback).
if ! have_peers; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends sip-tester sipsak kamailio >/dev/null
fi
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: done (.venv, sipp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1), $(sipsak --version 2>&1 | head -1))"
