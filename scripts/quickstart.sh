#!/usr/bin/env bash
# The README's first command: from a fresh clone to a pre-trained, exported Spanish MoE-BERT and its first
# predictions, on a CPU, in under 15 minutes.
#   1. .venv with torch 2.13.0 (CPU) and the project
#   2. a tokenizer trained on the bundled corpus (data/es_corpus_sample.txt)
#   3. the mini model pre-trained with run_mlm.py (configs/train_cpu_demo.json; it exports outputs/mini-demo)
#   4. a clean Hub folder outputs/mini-demo-hub (no Trainer checkpoints) with export_model.py
#   5. fill-mask predictions and a sentence-similarity matrix from that folder (scripts/demo.py)
# Extra arguments go to run_mlm.py, e.g. `bash scripts/quickstart.sh --max_steps 600` for the full run file.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS

echo "== 1/5 virtual environment"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch first: an unpinned torch drags in a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[train]"

echo "== 2/5 tokenizer on the bundled corpus ($((SECONDS - start)) s)"
if [ -f outputs/tokenizer/tokenizer.json ]; then  # a second run: the same tokenizer (its training is deterministic)
    echo "reusing outputs/tokenizer"
else
    .venv/bin/python train_tokenizer.py --train_file data/es_corpus_sample.txt --vocab_size 8000 \
        --output_dir outputs/tokenizer
fi

echo "== 3/5 pre-training the mini model ($((SECONDS - start)) s)"
# 300 of the run file's 600 steps: about 1.7 passes over the bundled corpus (~0.5 s a step on 2 idle CPU cores).
.venv/bin/python run_mlm.py configs/train_cpu_demo.json --tokenizer_name outputs/tokenizer \
    --output_dir outputs/mini-demo --max_steps 300 --eval_steps 100 --save_steps 100 "$@"

echo "== 4/5 export ($((SECONDS - start)) s)"
.venv/bin/python export_model.py outputs/mini-demo --output_dir outputs/mini-demo-hub --datasets

echo "== 5/5 demo ($((SECONDS - start)) s)"
.venv/bin/python scripts/demo.py outputs/mini-demo-hub

echo
echo "Done in $((SECONDS - start)) s. The Hub-ready model is in outputs/mini-demo-hub (model card: README.md)."
echo "Push it: .venv/bin/python export_model.py outputs/mini-demo-hub --push_to_hub --hub_model_id <you>/<name>"
