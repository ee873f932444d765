#!/usr/bin/env bash
# Prepares `.gpu/` (git-ignored) for a GPU validation run on a machine with an NVIDIA GPU:
# the vendored llama.cpp source (from the provisioning cache), release binaries built here, the
# tiny model, and the run/build scripts. Then, on the GPU machine, from the repo root:
#   bash .gpu/run.sh          (OUT=<dir for logs>; builds llama-server with CUDA the first time)
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(cargo xtask provision-engine)"
cache="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
cargo build --release -p orchestratord -p orch-gpu-inventory --example gpu_probe
# `bench overhead` (run-overhead.sh): the bench itself, the engine double and the load generator.
cargo build --release -p xtask -p engine-double -p loadgen
mkdir -p .gpu
tar --exclude=llama.cpp/build --exclude=llama.cpp/models --exclude=llama.cpp/docs \
    --exclude=llama.cpp/.git --exclude=llama.cpp/media --exclude=llama.cpp/tests \
    -cJf .gpu/llama.cpp.tar.xz -C "$cache/src/llama_cpp_python-0.3.36/vendor" llama.cpp
cp "$TEST_MODEL" .gpu/tiny-llama-g2-s42.gguf
cp target/release/orchestratord target/release/examples/gpu_probe .gpu/
cp target/release/xtask target/release/engine-double target/release/loadgen .gpu/
cp scripts/gpu-validation/run.sh scripts/gpu-validation/build.sh .gpu/
cp scripts/gpu-validation/run-overhead.sh scripts/gpu-validation/run-on_demand.sh scripts/gpu-validation/gen-model.py .gpu/
echo "ready: .gpu/ ($(du -sh .gpu | cut -f1))"
