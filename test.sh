#!/usr/bin/env bash
# Run the whole test suite (and the linters, type checker and docs build) in .venv, setting it up first if needed.
#   ./test.sh            everything
#   ./test.sh -k engine  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/venv.sh requirements-dev.txt
# Debian packages the tests drive: chromium (the page, through Playwright), nginx (deploy/) and a
# font with Chinese glyphs (labels of drawn boxes).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)  # box labels in Chinese
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's ${missing[*]} for the browser and deployment tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
      echo "could not install ${missing[*]}: their tests will be skipped" >&2
  else
    echo "${missing[*]} not installed: their tests will be skipped (apt-get install ${missing[*]})" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --no-error-summary
# The docs site, strict: a broken link or anchor, or an API reference to a name that is gone, fails
# (never with --quiet: it hides the warnings, and strict mode then counts none).
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site
exec .venv/bin/python -m pytest "$@"
