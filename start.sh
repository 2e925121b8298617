#!/usr/bin/env bash
# Start glmflash: the OpenAI-compatible API on http://127.0.0.1:8080/v1 (sets up .venv first).
#   ./start.sh                                  model and precision from GLMFLASH_* or auto
#   ./start.sh --model /models/glm46v-flash --precision int8 --host 0.0.0.0 --port 8080
# (JupyterLab and the web page join this script with their own issues.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/venv.sh requirements.txt
exec .venv/bin/python -m glmflash serve "$@"
