#!/usr/bin/env bash
# Create or reuse .venv in the repo root and install a requirements file into it, only when that
# file changed since the last install. Usage: scripts/venv.sh requirements.txt|requirements-dev.txt
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="${1:-requirements.txt}"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python="${PYTHON:-python3}"
  "$python" -c 'import sys; assert sys.version_info >= (3, 10), "glmflash needs Python 3.10 or newer"'
  echo "creating .venv with $("$python" --version)" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$req")"
want="$(cat "$req" requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing $req into .venv (first run: a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  # setuptools warns about every editable install: show its output only when it fails
  if ! log="$(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1)"; then
    echo "$log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
  if [ "$(basename "$req")" = requirements-dev.txt ]; then # it includes requirements.txt
    cat requirements.txt requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1 > .venv/.installed-requirements.txt
  fi
fi
