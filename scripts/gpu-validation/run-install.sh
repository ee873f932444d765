#!/usr/bin/env bash
# GPU validation 5: `scripts/install.sh` on a machine with an NVIDIA GPU and a CUDA toolkit,
# from this repository's root: it must find nvcc, take the architectures from nvidia-smi and
# build llama-server with CUDA (`cargo xtask build-engine --cuda auto`), then `llorch init`
# must see the real GPUs. Needs cargo and cmake there; orchestratord/llorch come from the
# release build prepare.sh made (.gpu/), so only llama.cpp is compiled.
#   OUT=<dir> bash scripts/gpu-validation/run-install.sh
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-.gpu/out}
mkdir -p "$OUT" /tmp/llorch-models
exec > >(tee -a "$OUT/install.txt") 2>&1
nvidia-smi --query-gpu=index,name,compute_cap,memory.total --format=csv
command -v nvcc && nvcc --version | tail -2
cp .gpu/tiny-llama-g2-s42.gguf /tmp/llorch-models/
t0=$(date +%s)
bash scripts/install.sh --prefix /tmp/llorch-prefix --bin-dir .gpu --build-llama-server \
  --models-dir /tmp/llorch-models --config-dir /tmp/llorch-config --jobs "$(nproc)"
echo "install.sh exit=$? in $(( $(date +%s) - t0 )) s"
/tmp/llorch-prefix/bin/llama-server --version 2>&1 | tail -3
ldd /tmp/llorch-prefix/bin/llama-server | grep -i -E 'cuda|cublas' || echo "NO CUDA LIBRARIES LINKED"
echo "== second run (must change nothing)"
bash scripts/install.sh --prefix /tmp/llorch-prefix --bin-dir .gpu \
  --models-dir /tmp/llorch-models --config-dir /tmp/llorch-config
echo "== the config init wrote"; cat /tmp/llorch-config/orchestratord.yaml
/tmp/llorch-prefix/bin/orchestratord --check-config --config /tmp/llorch-config/orchestratord.yaml
