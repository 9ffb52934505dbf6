#!/usr/bin/env bash
# Fill .gpu_carry/ (ignored by git) with what the GPU suite needs and a lent GPU machine lacks: the wheels of
# `datasets` and the two packages of its that are not there (dill, multiprocess), for Python 3.12 on x86-64, and the
# shared corpus when it is beside the checkout. Then, on the device tool:
#   run(command="bash benchmarks/gpu_suite.sh --output_dir $OUT", carry=[".gpu_carry"])
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu_carry/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu_carry/wheels "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19"
if [ -f ../shared/data/es_corpus.jsonl.gz ]; then
    cp ../shared/data/es_corpus.jsonl.gz .gpu_carry/
fi
du -sh .gpu_carry
