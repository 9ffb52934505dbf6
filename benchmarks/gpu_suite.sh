#!/usr/bin/env bash
# The GPU suite in one command (see benchmarks/gpu_suite.py): bash benchmarks/gpu_suite.sh [gpu_suite.py options]
# On a machine without `datasets` (the lent GPU machines), its wheels travel in .gpu_carry/wheels, and the corpus
# as .gpu_carry/es_corpus.jsonl.gz; benchmarks/README.md says how to prepare that folder.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .gpu_carry/wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_suite_site .gpu_carry/wheels/*.whl
    export PYTHONPATH="/tmp/gpu_suite_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_suite.py "$@"
