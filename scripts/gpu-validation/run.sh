#!/usr/bin/env bash
# GPU validation, run on a lent NVIDIA machine (not part of CI).
set -u
G=$(cd "$(dirname "$0")" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "== nvidia-smi"; nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,driver_version --format=csv
echo "== gpu_probe (our NVML code)"; "$G/gpu_probe"; echo "exit=$?"
if [ ! -x "$G/src/llama.cpp/build/bin/llama-server" ]; then
  if [ ! -f "$G/build.started" ]; then
    touch "$G/build.started"
    setsid nohup bash "$G/build.sh" > /dev/null 2>&1 < /dev/null &
  fi
  for i in $(seq 1 500); do [ -f "$G/build.done" ] && break; sleep 1; done
  if [ ! -f "$G/build.done" ]; then echo "== build still running; progress:"; tail -2 "$G/build.log"; exit 0; fi
  cat "$G/build.done"
fi
LS="$G/src/llama.cpp/build/bin/llama-server"
"$LS" --version 2>&1 | tail -3
M="$G/tiny-llama-g2-s42.gguf"
cat > /tmp/gpu.yaml <<YAML
bind: 127.0.0.1:8080
data_dir: /tmp/orch-data
pools:
  - id: tiny-a
    model: "$M"
    engine_binary: "$LS"
    slots: 4
    ctx: 8192
  - id: tiny-b
    model: "$M"
    engine_binary: "$LS"
    replicas: 2
    slots: 2
    ctx: 2048
YAML
echo "== orchestratord (no dev setting: GPU-only)"
"$G/orchestratord" --config /tmp/gpu.yaml > /tmp/orch.log 2>&1 &
D=$!
for i in $(seq 1 600); do
  curl -fsS localhost:8080/health 2>/dev/null | grep -q '"pools_ready":2' && break
  kill -0 $D 2>/dev/null || { echo "daemon exited"; cat /tmp/orch.log; exit 1; }
  sleep 0.1
done
curl -s localhost:8080/health; echo
echo "== capabilities"; curl -s localhost:8080/v1/capabilities; echo
echo "== pools"; curl -s localhost:8080/v1/pools; echo
echo "== nvidia-smi compute apps"; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
for t in a1:tiny-a b1:tiny-b b2:tiny-b; do
  id=${t%%:*}; pool=${t##*:}
  curl -s localhost:8080/v1/tasks -d "{\"task_id\":\"$id\",\"model_ref\":\"$pool\",\"priority\":\"interactive\",\"prompt\":\"Once upon a time\",\"max_tokens\":512,\"seed\":42,\"temperature\":0.8}"; echo
done
for id in a1 b1 b2; do curl -sN localhost:8080/v1/tasks/$id/stream > /tmp/$id.sse; grep -A1 '^event: started' /tmp/$id.sse | tail -1; grep -A1 '^event: end' /tmp/$id.sse | tail -1; done
echo "== determinism across replicas of tiny-b (same seed):"
for id in a1 b1 b2; do grep '^data: {"t"' /tmp/$id.sse | sed 's/,"i":[0-9]*}//' | sha256sum; done
# 8 concurrent tasks per pool for throughput per device
for i in $(seq 1 8); do for p in tiny-a tiny-b; do
  curl -s localhost:8080/v1/tasks -d "{\"task_id\":\"c$i-$p\",\"model_ref\":\"$p\",\"priority\":\"batch\",\"prompt\":\"Hello\",\"max_tokens\":1024,\"seed\":$i}" >/dev/null
done; done
for i in $(seq 1 8); do for p in tiny-a tiny-b; do curl -sN localhost:8080/v1/tasks/c$i-$p/stream | grep -A1 '^event: end' | tail -1; done; done
echo "== metrics (gpu/vram/placement)"; sleep 6; curl -s localhost:8080/metrics | grep -E '^(gpu_utilization|vram_used_bytes|placement_decisions_total|tokens_out_total|pool_ready)'
echo "== placement + launch log lines"; grep -E 'placement decision|engine launched|engine ready' /tmp/orch.log | cut -c1-900
P=$(pgrep -f "$LS" | tr '\n' ' '); echo "engine pids: $P"
kill -TERM $D; wait $D; echo "daemon exit=$?"
sleep 1; for p in $P; do kill -0 $p 2>/dev/null && echo "ORPHAN $p" || echo "engine $p gone"; done
cp /tmp/orch.log "$OUT/orch.log"
echo "== GPU-only refusal check with CUDA hidden"
CUDA_VISIBLE_DEVICES= "$G/gpu_probe" | head -5
