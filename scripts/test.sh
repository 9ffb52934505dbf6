#!/usr/bin/env bash
# The README's test command: set up .venv (torch==2.13.0 CPU first, then the project with its dev
# extras), lint and check the formatting with ruff (settings in pyproject.toml) and run the whole test
# suite, slow tests included. `.venv/bin/ruff format .` fixes what the check finds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch before anything else: an unpinned torch drags in a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q "$@"
