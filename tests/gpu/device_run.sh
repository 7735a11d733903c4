#!/usr/bin/env bash
# On the lent, offline GPU machine (../shared/docs/GPU.md): unpack the packages carried in .gpu/, then run the
# GPU tests and/or the GPU benchmarks, logging under $OUT. Build .gpu/ first with tests/gpu/pack.sh.
#   bash tests/gpu/device_run.sh MODES    MODES: tests, bench, peers or all (= tests,bench), comma-separated
#     tests: pytest tests/gpu;  bench: gpu_qwen_shape.py, then deepspeed_overhead.py;
#     peers: bench/peers.py's GRPO against TRL at Qwen2-0.5B's body, both sides on the GPU (~3-4 minutes)
set -uo pipefail
cd "$(dirname "$0")/../.."
MODES=${1:-all}
want() { [[ "$MODES" == all && "$1" != peers ]] || [[ ",$MODES," == *",$1,"* ]]; }
OUT=${OUT:-/tmp/rayalign-gpu-out}
mkdir -p "$OUT" /tmp/site
for archive in .gpu/*.tar.xz; do tar -xJf "$archive" -C /tmp/site; done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The tests read the tiny policy from ../shared/models, as on a developer machine.
mkdir -p ../shared/models ../shared/data && cp -r .gpu/models/* ../shared/models/ && cp -r .gpu/data/* ../shared/data/
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, deepspeed, ray; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__)"
  python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)"
  python3 -c "import trl, datasets, pyarrow, fsspec; print('trl', trl.__version__, 'datasets', datasets.__version__,
'pyarrow', pyarrow.__version__, 'fsspec', fsspec.__version__)"
  python3 -c "import vllm" 2>&1 | tail -1; } 2>&1 | grep -v "^\[" | tee "$OUT/machine.txt"
if want tests; then
    timeout "${TEST_TIMEOUT:-330}" python3 -m pytest tests/gpu -m gpu -v -rs -p no:cacheprovider \
        --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "PASS|FAIL|SKIP|ERROR|Error|passed|failed"
fi
if want peers; then
    # The random 358M-parameter model (1.4 GB) and each run's folder stay in /tmp; the logs come back.
    timeout "${PEERS_TIMEOUT:-330}" python3 bench/peers.py --only grpo --sizes qwen0.5B --device cuda \
        --grpo-variants default --workdir /tmp/peers --out "$OUT/peers-gpu.json" ${PEERS_ARGS:-} 2>&1 \
        | tee "$OUT/peers.log" | grep -v "^\[\|Warning\|warn"
    cp /tmp/peers/*.log "$OUT/" 2>/dev/null
fi
if want bench; then
    timeout "${BENCH_TIMEOUT:-240}" python3 bench/gpu_qwen_shape.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" \
        | grep -v "^\[\|Warning\|warn"
    timeout "${OVERHEAD_TIMEOUT:-120}" python3 bench/deepspeed_overhead.py 2>&1 | tee "$OUT/overhead.log" \
        | grep -v "^\[\|Warning\|warn"
fi
