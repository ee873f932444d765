#!/usr/bin/env bash
# GPU validation 4: models on demand with a real CUDA engine on one big card. Three ~1B-parameter
# f16 random-weight models (about 2.5 GB each) behind a usable-VRAM cap that holds only one, so
# every switch between them is an eviction plus a load. Prints each task's queue wait and TTFT,
# the pools' states, the load/eviction counters and the load-time histogram, and NVML's view.
# Prepare with scripts/gpu-validation/prepare.sh, then on the GPU machine from the repo root:
#   OUT=<dir> bash .gpu/run-on_demand.sh
# Knobs: CAP_MIB (usable VRAM of GPU 0, default 4096), LS (a llama-server binary), MODEL_ARGS.
set -u
G=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/on_demand.txt") 2>&1
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv
if [ -z "${LS:-}" ]; then
  if [ ! -x "$G/src/llama.cpp/build/bin/llama-server" ]; then
    [ -f "$G/build.started" ] || { touch "$G/build.started"; setsid nohup bash "$G/build.sh" >/dev/null 2>&1 </dev/null & }
    for _ in $(seq 1 480); do [ -f "$G/build.done" ] && break; sleep 1; done
    [ -f "$G/build.done" ] || { echo "== build still running (run again to wait more):"; tail -2 "$G/build.log"; exit 0; }
    cat "$G/build.done"
  fi
  LS="$G/src/llama.cpp/build/bin/llama-server"
fi
for s in 1 2 3; do
  M="/tmp/llorch-od-$s.gguf"
  # shellcheck disable=SC2086 # MODEL_ARGS is a list of flags
  [ -f "$M" ] || python3 "$G/gen-model.py" --tokenizer-from "$G/tiny-llama-g2-s42.gguf" --out "$M" --seed "$s" ${MODEL_ARGS:-}
done
cat > /tmp/gpu-od.yaml <<YAML
bind: 127.0.0.1:8090
data_dir: /tmp/orch-data-od
placement:
  max_swap_wait_ms: 20000
  devices:
    - { index: 0, usable_mib: ${CAP_MIB:-4096} }
pools:
YAML
for s in 1 2 3; do
  cat >> /tmp/gpu-od.yaml <<YAML
  - id: m$s
    model: /tmp/llorch-od-$s.gguf
    engine_binary: "$LS"
    load: on_demand
    idle_unload_s: 0
    slots: 2
    ctx: 4096
YAML
done
rm -rf /tmp/orch-data-od
"$G/orchestratord" --config /tmp/gpu-od.yaml > /tmp/orch-od.log 2>&1 &
D=$!
for _ in $(seq 1 300); do curl -fsS localhost:8090/health >/dev/null 2>&1 && break; sleep 0.1; done
echo "== healthy with zero loaded pools:"; curl -s localhost:8090/health; echo
run() { # pool task_id: submit, print the 202's prediction, the started frame's wait and TTFT
  local t0; t0=$(date +%s%N)
  curl -s localhost:8090/v1/tasks -d "{\"task_id\":\"$2\",\"model_ref\":\"$1\",\"priority\":\"interactive\",\"prompt\":\"Once upon a time\",\"max_tokens\":64,\"seed\":42}" | cut -c1-400; echo
  curl -sN localhost:8090/v1/tasks/"$2"/stream > "/tmp/$2.sse"
  local first; first=$(grep -m1 -n '^event: token' "/tmp/$2.sse" | cut -d: -f1)
  echo "  $1/$2: $(grep -A1 '^event: started' "/tmp/$2.sse" | tail -1 | cut -c1-200)"
  echo "  $1/$2: end: $(grep -A1 '^event: \(end\|error\)' "/tmp/$2.sse" | tail -1 | cut -c1-200)"
  echo "  $1/$2: wall $(( ($(date +%s%N) - t0) / 1000000 )) ms, first token at line ${first:-none}"
}
echo "== cold loads and LRU swaps (each switch evicts the idle model)"
run m1 a1; run m2 a2; run m3 a3; run m1 a4; run m1 a5
echo "== a busy pool survives a request for another: m2 runs 2000 tokens while m3 is asked for"
curl -s localhost:8090/v1/tasks -d '{"task_id":"long","model_ref":"m2","priority":"batch","prompt":"x","max_tokens":2000,"seed":1}' >/dev/null
sleep 1
run m3 b1
curl -sN localhost:8090/v1/tasks/long/stream | grep -A1 '^event: \(end\|error\)' | tail -1 | cut -c1-200
echo "== pools"; curl -s localhost:8090/v1/pools | cut -c1-3000; echo
echo "== metrics: loads, evictions, load time"
curl -s localhost:8090/metrics | grep -E '^model_(loads|evictions)_total|^model_load_seconds_(sum|count)'
echo "== nvidia-smi apps"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv
grep -E 'placement decision|evict|model load' /tmp/orch-od.log | cut -c1-600 | tail -40
kill -TERM $D; wait $D; echo "daemon exit=$?"; sleep 1
pgrep -f "$LS" && echo ORPHANS || echo "no engines left"
cp /tmp/orch-od.log "$OUT/orch-od.log"
