#!/usr/bin/env bash
# Run the whole test suite (and the linters) in .venv, setting it up first if needed.
#   ./test.sh            everything
#   ./test.sh -k engine  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/venv.sh requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
