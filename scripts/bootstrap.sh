#!/usr/bin/env bash
# Installs uv (with pip, if missing) and the locked environment into .venv.
# Needs only Python 3.11 and pip; uv must use this machine's Python, never download one.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --locked --python "$(command -v python3.11 || command -v python3)" --quiet
