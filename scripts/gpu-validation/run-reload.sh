#!/usr/bin/env bash
# GPU validation 2: reload on a real GPU, and the placement estimate checked against NVML.
set -u
G=$(cd "$(dirname "$0")" && pwd)
exec > >(tee -a "$OUT/log2.txt") 2>&1
if [ ! -x "$G/src/llama.cpp/build/bin/llama-server" ]; then
  [ -f "$G/build.started" ] || { touch "$G/build.started"; setsid nohup bash "$G/build.sh" >/dev/null 2>&1 </dev/null & }
  for i in $(seq 1 480); do [ -f "$G/build.done" ] && break; sleep 1; done
  [ -f "$G/build.done" ] || { echo "build still running"; tail -2 "$G/build.log"; exit 0; }
  cat "$G/build.done"
fi
LS="$G/src/llama.cpp/build/bin/llama-server"
cat > /tmp/gpu2.yaml <<YAML
bind: 127.0.0.1:8080
data_dir: /tmp/orch-data2
pools:
  - id: tiny
    model: "$G/tiny-llama-g2-s42.gguf"
    engine_binary: "$LS"
    slots: 4
    ctx: 8192
YAML
"$G/orchestratord" --config /tmp/gpu2.yaml > /tmp/orch2.log 2>&1 &
D=$!
for i in $(seq 1 600); do curl -fsS localhost:8080/health 2>/dev/null | grep -q '"pools_ready":1' && break; sleep 0.1; done
task() { curl -s localhost:8080/v1/tasks -d "{\"task_id\":\"$1\",\"model_ref\":\"tiny\",\"priority\":\"interactive\",\"prompt\":\"Once upon a time\",\"max_tokens\":256,\"seed\":42}" >/dev/null; curl -sN localhost:8080/v1/tasks/$1/stream > /tmp/$1.sse; grep -A1 '^event: started' /tmp/$1.sse | tail -1 | cut -c1-220; grep -A1 '^event: \(end\|error\)' /tmp/$1.sse | tail -1; grep '^data: {"t"' /tmp/$1.sse | sed 's/,"i":[0-9]*}//' | sha256sum; }
echo "== before reload"; task t1
curl -s localhost:8080/v1/tasks -d '{"task_id":"long","model_ref":"tiny","priority":"batch","prompt":"x","max_tokens":6000,"seed":1}' >/dev/null
sleep 0.3
echo "== reload to the s43 model while a long task runs"
time curl -s localhost:8080/v1/pools/tiny/reload -d "{\"new_model_ref\":\"$G/tiny-llama-g2-s43.gguf\"}"; echo
echo "== after reload"; task t2
curl -sN localhost:8080/v1/tasks/long/stream | grep -A1 '^event: \(end\|error\)' | tail -1
echo "== health"; curl -s localhost:8080/v1/pools/tiny/health | cut -c1-1500; echo
echo "== nvidia-smi apps"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv
echo "== log: placement, estimate check, reload"; grep -E 'placement decision|placement check|reload|engine stopped|retir' /tmp/orch2.log | cut -c1-700
kill -TERM $D; wait $D; echo "daemon exit=$?"; sleep 1; pgrep -f "$LS" && echo ORPHANS || echo "no engines left"
cp /tmp/orch2.log "$OUT/orch2.log"
