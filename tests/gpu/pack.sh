#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for tests/gpu/device_run.sh: Python 3.12 wheels the offline GPU machine lacks,
# unpacked and packed as tar.xz (deepspeed + pydantic + hjson + bitsandbytes' CUDA 13 library, and trl +
# datasets with the two needs the machine's image lacks (dill, multiprocess) for bench/peers.py: ~9 MiB; ray core
# without its Java jars: 33 MiB), and a copy of the tiny policy. Needs pip and network here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-.venv/bin/pip}
rm -rf .gpu /tmp/rayalign-pack && mkdir -p .gpu/models /tmp/rayalign-pack/{whl,site,ray}
get() { "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 -d /tmp/rayalign-pack/whl "$@"; }
get bitsandbytes==0.50.2 hjson pydantic pydantic-core annotated-types typing-inspection \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
"$PIP" wheel -q --no-deps -w /tmp/rayalign-pack/whl deepspeed==0.19.8
(cd /tmp/rayalign-pack/site && for w in ../whl/*.whl; do unzip -q -o "$w"; done
 find bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cpu*' -delete)
tar -cJf .gpu/gpusite.tar.xz -C /tmp/rayalign-pack/site .
rm -f /tmp/rayalign-pack/whl/*.whl
get ray==2.60.0 jsonschema referencing rpds-py jsonschema-specifications
(cd /tmp/rayalign-pack/ray && for w in ../whl/*.whl; do unzip -q -o "$w"; done && rm -rf ray/jars)
tar -cJf .gpu/raysite.tar.xz -C /tmp/rayalign-pack/ray .
cp -r ../shared/models/stories260K-hd32 .gpu/models/
mkdir -p .gpu/data/sft/llms-from-scratch && cp ../shared/data/sft/llms-from-scratch/instruction-data.json .gpu/data/sft/llms-from-scratch/
du -sh .gpu/*
