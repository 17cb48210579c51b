#!/usr/bin/env bash
# `make outdated`: what the newest releases inside pyproject.toml's ranges would break.
# Installs them into a scratch venv (never $VENV, never the lock), runs lint and the unit
# tests there, and prints the packages that moved and the checks that failed.
# Exit 0 when nothing breaks, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
uv=${VENV:-.venv}/bin/uv
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
py=$scratch/venv/bin/python
"$uv" venv --quiet --python "${PYTHON:-python3}" "$scratch/venv"
"$uv" pip install --quiet --python "$py" --upgrade -r scripts/lock.in -e '.[test,bench]' || exit 1

echo "== packages whose newest release differs from requirements.lock"
"$py" - <<'PY'
import re
from importlib.metadata import distributions

locked = {}
for line in open("requirements.lock"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line)
    if m:
        locked.setdefault(m[1].lower().replace("_", "-"), []).append(m[2])
moved = 0
for dist in sorted(distributions(), key=lambda d: d.metadata["Name"].lower()):
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name in locked and dist.version not in locked[name]:
        print(f"  {name}: {' / '.join(locked[name])} -> {dist.version}")
        moved += 1
print(f"  {moved} moved" if moved else "  none: the lock is current")
PY

failed=()
check() {
  local name=$1
  shift
  echo "== $name"
  if ! "$@" >"$scratch/out" 2>&1; then
    tail -n 30 "$scratch/out"
    failed+=("$name")
  else
    tail -n 1 "$scratch/out"
  fi
}
bin=$scratch/venv/bin
check "ruff check" "$bin/ruff" check --no-cache .
check "ruff format" "$bin/ruff" format --check --no-cache .
check "mypy --strict" "$bin/mypy" --strict --cache-dir "$scratch/mypy" $(sed -n 's/^MYPY_PATHS := //p' Makefile)
check "unit tests" "$py" -m pytest -q -p no:cacheprovider tests/unit

echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "outdated: the newest releases pass lint and the unit tests; \`make lock UPGRADE=all\` would be safe to try"
  exit 0
fi
echo "outdated: the newest releases would break: ${failed[*]} (the lock is unchanged)"
exit 1
