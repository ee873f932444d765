"""The OpenAI-compatible door of orchestratord, driven by the official `openai` Python SDK.

Run by crates/orchestratord/tests/openai_sdk.rs (venv from test-harness/openai-sdk/setup.sh)
against a real daemon with one pool `tiny` of one slot and a queue of capacity 1.
Environment: LLORCH_URL, LLORCH_TOKEN, MODEL (default `tiny`).
Exits non-zero (an AssertionError or an SDK exception) on any failure.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI

BASE = os.environ["LLORCH_URL"].rstrip("/")
TOKEN = os.environ["LLORCH_TOKEN"]
MODEL = os.environ.get("MODEL", "tiny")


def log(*a):
    print("[openai-sdk]", *a, file=sys.stderr, flush=True)


def native(method, path, body=None):
    """Our own API (to fill the queue and inspect tasks)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + TOKEN)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_state(task_id, state, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, t = native("GET", f"/v1/tasks/{task_id}")
        if t and t.get("state") == state:
            return t
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached {state}")


# max_retries=0: the 429 must surface instead of being retried by the SDK.
client = OpenAI(base_url=BASE + "/v1", api_key=TOKEN, max_retries=0, timeout=120)
log("openai", openai.__version__, "→", BASE)

# 1. Models.
ids = [m.id for m in client.models.list()]
assert MODEL in ids, ids
assert client.models.retrieve(MODEL).id == MODEL
log("models:", ids)

# 2. Non-streaming chat completion; the same seed gives the same text.
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
r1 = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, seed=42, temperature=0.8)
assert r1.object == "chat.completion", r1
assert r1.choices[0].message.role == "assistant"
text = r1.choices[0].message.content
assert text, r1
assert r1.choices[0].finish_reason == "length", r1.choices[0].finish_reason
assert r1.usage.completion_tokens > 0
# The prompt's length comes from the engine (llama-server's `tokens_evaluated`).
assert r1.usage.prompt_tokens > 0, r1.usage
assert r1.usage.total_tokens == r1.usage.prompt_tokens + r1.usage.completion_tokens, r1.usage
r2 = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, seed=42, temperature=0.8)
assert r2.choices[0].message.content == text, (r2.choices[0].message.content, text)
# The response id is the task id of our own API: same queue, same task registry.
status, task = native("GET", f"/v1/tasks/{r1.id}")
assert status == 200 and task["state"] == "completed" and task["priority"] == "interactive", task
log("chat:", repr(text))

# 3. Streaming chat completion: the same tokens as the non-streaming one with the same seed.
stream = client.chat.completions.create(
    model=MODEL, messages=messages, max_tokens=16, seed=42, temperature=0.8, stream=True,
    stream_options={"include_usage": True},
)
parts, finish, chunks, usage = [], None, 0, None
for chunk in stream:
    assert chunk.object == "chat.completion.chunk", chunk
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        finish = c.finish_reason or finish
assert "".join(parts) == text, ("".join(parts), text)
assert finish == "length", finish
assert usage is not None and usage.completion_tokens > 0, usage
assert usage.prompt_tokens == r1.usage.prompt_tokens, (usage, r1.usage)
log(f"stream: {chunks} chunks")

# 4. Priority from the header, seed passed through; a text completion.
raw = client.completions.with_raw_response.create(
    model=MODEL, prompt="Once upon a time", max_tokens=8, seed=1,
    extra_headers={"X-Llorch-Priority": "batch"},
)
c = raw.parse()
assert c.object == "text_completion" and c.choices[0].text, c
task_id = raw.headers["x-llorch-task-id"]
assert task_id == c.id
_, task = native("GET", f"/v1/tasks/{task_id}")
assert task["priority"] == "batch", task
# Priority from the body field wins over the header.
r = client.chat.completions.create(
    model=MODEL, messages=messages, max_tokens=4, extra_body={"priority": "batch"},
    extra_headers={"X-Llorch-Priority": "interactive"},
)
_, task = native("GET", f"/v1/tasks/{r.id}")
assert task["priority"] == "batch", task
log("priority: header and body field honoured")

# 5. Errors in OpenAI's shape.
try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.status_code == 404
    assert "no pool serves model" in str(e), str(e)
try:
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, n=2)
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400
bad = OpenAI(base_url=BASE + "/v1", api_key="wrong-token", max_retries=0)
try:
    bad.models.list()
    raise AssertionError("expected AuthenticationError")
except openai.AuthenticationError as e:
    assert e.status_code == 401
log("errors: 404, 400, 401 mapped to the SDK's exceptions")

# 6. A full queue surfaces as RateLimitError with Retry-After.
long_body = lambda tid, prio: {  # noqa: E731
    "task_id": tid, "model_ref": MODEL, "priority": prio, "prompt": "Once upon a time",
    "max_tokens": 20000, "seed": 4, "temperature": 0.8,  # seeded: never an early end-of-sequence
}
s, _ = native("POST", "/v1/tasks", long_body("sdk-long-a", "interactive"))
assert s == 202, s
wait_state("sdk-long-a", "running")
s, _ = native("POST", "/v1/tasks", long_body("sdk-long-b", "batch"))
assert s == 202, s
wait_state("sdk-long-b", "queued")
try:
    try:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        raise AssertionError("expected RateLimitError")
    except openai.RateLimitError as e:
        assert e.status_code == 429
        retry_after = e.response.headers.get("retry-after")
        assert retry_after and int(retry_after) >= 1, e.response.headers
        body = e.response.json()
        assert body["error"]["code"] == "admission_reject", body
        assert body["error"]["type"] == "rate_limit_error", body
        assert "is full" in body["error"]["message"], body
        log("429:", body["error"]["message"], "Retry-After:", retry_after)
    # The same for a streaming request: the 429 comes before any chunk.
    try:
        for _ in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, stream=True):
            pass
        raise AssertionError("expected RateLimitError (stream)")
    except openai.RateLimitError:
        pass
finally:
    native("POST", "/v1/tasks/sdk-long-b/cancel")
    native("POST", "/v1/tasks/sdk-long-a/cancel")

# 7. A client that goes away mid-stream cancels its task.
stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20000, seed=4, stream=True)
first = None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        first = chunk
        break
assert first is not None
stream.close()
wait_state(first.id, "canceled")
log("disconnect canceled task", first.id)

# 8. Same metrics as the native door.
with urllib.request.urlopen(urllib.request.Request(BASE + "/metrics", headers={"Authorization": "Bearer " + TOKEN})) as r:
    metrics = r.read().decode()
assert 'tasks_rejected_total{engine="llamacpp",reason="ADMISSION_REJECT"}' in metrics, metrics
print("OPENAI SDK OK")
