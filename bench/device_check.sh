#!/usr/bin/env bash
# The GPU checks as one short script, for a session lent a CUDA machine (the device tool runs it in the repository
# root; $OUT, where the tool collects files, defaults to ./test-artifacts here). It installs glassformer, without
# its dependencies, into the machine's own Python (whose torch has CUDA; a dependency that machine lacks travels as
# a wheel, as the device tool's notes say), then: the environment line, the CUDA tests, and the GPU benchmark
# (GPT-2 124M training tokens/s and MFU, greedy decoding against transformers). Each step's log lands in $OUT.
#   bash bench/device_check.sh            # ~5 minutes on one H100/H200-class GPU
set -uo pipefail
OUT=${OUT:-test-artifacts}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
python3 -c 'from glassformer import runtime; print(runtime.env_line("auto"))' | tee "$OUT/env.txt"
PYTHONUNBUFFERED=1 timeout 240 python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$OUT/test_cuda.log"
tests=${PIPESTATUS[0]}
PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu.py --compile 2>&1 | tee "$OUT/gpu.log"
bench=${PIPESTATUS[0]}
[ "$tests" = 0 ] && [ "$bench" = 0 ]
