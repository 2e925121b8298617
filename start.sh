#!/usr/bin/env bash
# Start glmflash. For now: an interactive chat about images in the terminal.
#   ./start.sh photo.jpg                   chat about photo.jpg (the model stays loaded)
#   ./start.sh invoice.png -q "Total?"     ask once
# Model and precision come from GLMFLASH_MODEL / GLMFLASH_PRECISION or --model / --precision.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/venv.sh requirements.txt
exec .venv/bin/python -m glmflash chat "$@"
