#!/usr/bin/env bash
# Idempotent machine set-up: venv in .venv, the project and its test tools, SIPp.
# Re-runs only when pyproject.toml changes; after that it needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && command -v sipp >/dev/null 2>&1; then
  exit 0
fi
python=${PYTHON:-python3}
"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"zeroslee needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
if ! command -v sipp >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq sip-tester >/dev/null
fi
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: done (venv .venv, $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1 || echo sipp))"
