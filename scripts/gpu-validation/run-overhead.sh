#!/usr/bin/env bash
# GPU validation 3: the relay's cost at 1, 32 and 256 streams against a CUDA llama-server on a
# random-weight ~1B-parameter f16 model (`cargo xtask bench overhead`, its Rust load generator
# `loadgen`, and the engine double). Prepare with scripts/gpu-validation/prepare.sh, then on the
# GPU machine from the repo root: `OUT=<dir> bash .gpu/run-overhead.sh`.
#
# Knobs (environment): NGL (default 999: every layer on the GPU), REAL_CONC (1,32,256),
# REAL_TOKENS (128), REAL_ROUNDS (4), MODEL_ARGS (generator size, default ~1 B parameters),
# DOUBLE_CONC (1,8,64,256), LS (a llama-server binary instead of building one).
# A CPU smoke test of the script itself: NGL=0 REAL_CONC=1,2 MODEL_ARGS="--embd 256 --layers 2 --ff 512" LS=<cpu llama-server>.
set -u
G=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/overhead.txt") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
if [ -z "${LS:-}" ]; then
  if [ ! -x "$G/src/llama.cpp/build/bin/llama-server" ]; then
    [ -f "$G/build.started" ] || { touch "$G/build.started"; setsid nohup bash "$G/build.sh" >/dev/null 2>&1 </dev/null & }
    for i in $(seq 1 480); do [ -f "$G/build.done" ] && break; sleep 1; done
    [ -f "$G/build.done" ] || { echo "== build still running (run again to wait more):"; tail -2 "$G/build.log"; exit 0; }
    cat "$G/build.done"
  fi
  LS="$G/src/llama.cpp/build/bin/llama-server"
fi
"$LS" --version 2>&1 | tail -2
M=${MODEL:-/tmp/llorch-rand-1b-f16.gguf}
[ -f "$M" ] || python3 "$G/gen-model.py" --tokenizer-from "$G/tiny-llama-g2-s42.gguf" --out "$M" ${MODEL_ARGS:-}
echo "== cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$G/xtask" bench overhead \
  --orchestratord "$G/orchestratord" --double "$G/engine-double" --loadgen "$G/loadgen" \
  --llama-server "$LS" --model "$M" --real-ngl "${NGL:-999}" \
  --concurrency "${DOUBLE_CONC:-1,8,64,256}" \
  --real-concurrency "${REAL_CONC:-1,32,256}" --real-tokens "${REAL_TOKENS:-128}" \
  --real-rounds "${REAL_ROUNDS:-4}" --real-min-requests 64
echo "bench exit=$?"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
