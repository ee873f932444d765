"""The OpenAI-compatible door of orchestratord, driven by the official `openai` Python SDK.

Run by crates/orchestratord/tests/e2e/openai_sdk.rs (venv from test-harness/openai-sdk/setup.sh)
against a real daemon with one pool `tiny` of one slot and a queue of capacity 1, and a pool
`tiny-tools` of the same model whose llama-server renders tools with tool-template.jinja.
Environment: LLORCH_URL, LLORCH_TOKEN, MODEL (default `tiny`), TOOLS_MODEL (default
`tiny-tools`), MAX_BODY_BYTES (the daemon's http.max_body_bytes), CORS_ORIGIN (an allowed
origin).
Exits non-zero (an AssertionError or an SDK exception) on any failure.
"""

import json
import math
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
TOOLS_MODEL = os.environ.get("TOOLS_MODEL", "tiny-tools")
MAX_BODY_BYTES = int(os.environ.get("MAX_BODY_BYTES", "65536"))
CORS_ORIGIN = os.environ.get("CORS_ORIGIN", "http://localhost:5173")


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
    # OpenAI's error shape, so the SDK has the message and code.
    assert "bearer token does not match" in e.body["message"], e.body
    assert e.code == "bad_token", e.body
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

# 9. Tools (pool TOOLS_MODEL). The tiny model has random weights, so it is pushed into a call:
# `logit_bias` makes its first token `@@` (id 25380 in its vocabulary), which opens a tool
# call in tool-template.jinja; llama-server's grammar, built from our tool definition, then
# forces the rest of the call (the `enum` leaves one valid argument), and its parser returns
# the call. The relay of definition, call and finish reason is what is under test.
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris"]}},
            "required": ["city"],
        },
    },
}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
call_args = dict(
    model=TOOLS_MODEL, messages=ASK, tools=TOOLS, parallel_tool_calls=False, max_tokens=64,
    seed=42, temperature=0, logit_bias={"25380": 100},
)
r = client.chat.completions.create(**call_args)
ch = r.choices[0]
assert ch.finish_reason == "tool_calls", r
assert ch.message.content is None, ch.message
assert len(ch.message.tool_calls) == 1, ch.message
call = ch.message.tool_calls[0]
assert call.type == "function" and call.id, call
assert call.function.name == "get_weather", call
assert json.loads(call.function.arguments) == {"city": "Paris"}, call.function.arguments
# Streamed: the same call, in `delta.tool_calls` pieces.
pieces, finish, content = {}, None, ""
for chunk in client.chat.completions.create(**call_args, stream=True):
    for c in chunk.choices:
        content += c.delta.content or ""
        for tc in c.delta.tool_calls or []:
            p = pieces.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            p["id"] = p["id"] or tc.id
            if tc.function and tc.function.name:
                p["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                p["arguments"] += tc.function.arguments
        finish = c.finish_reason or finish
assert finish == "tool_calls", finish
assert content == "", content
assert list(pieces) == [0] and pieces[0]["id"], pieces
assert pieces[0]["name"] == "get_weather", pieces
assert pieces[0]["arguments"] == call.function.arguments, (pieces, call.function.arguments)
# A named tool_choice: llama-server knows only none/auto/required, so the adapter asks for
# `required` over that one tool.
named = client.chat.completions.create(
    **call_args, tool_choice={"type": "function", "function": {"name": "get_weather"}},
)
assert named.choices[0].finish_reason == "tool_calls", named
assert named.choices[0].message.tool_calls[0].function.name == "get_weather", named
# The tool-result turn: the call and its result go back; the template renders both (the
# prompt grows by them) and the model answers.
turn = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18})},
]
r2 = client.chat.completions.create(
    model=TOOLS_MODEL, messages=turn, tools=TOOLS, max_tokens=8, seed=42, temperature=0,
)
assert r2.choices[0].finish_reason == "length", r2
assert r2.choices[0].message.content, r2
assert r2.usage.prompt_tokens > r.usage.prompt_tokens, (r2.usage, r.usage)
text = ""
for chunk in client.chat.completions.create(
    model=TOOLS_MODEL, messages=turn, tools=TOOLS, max_tokens=8, seed=42, temperature=0,
    stream=True,
):
    for c in chunk.choices:
        text += c.delta.content or ""
assert text == r2.choices[0].message.content, (text, r2.choices[0].message.content)
log("tools: call", call.function.arguments, "relayed, streamed and answered")

# 10. Structured output: JSON matching the schema (llama-server's grammar from it).
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


def check_trip(text):
    v = json.loads(text)
    assert set(v) == {"city", "days"}, v
    assert v["city"] in ("Paris", "Rome"), v
    assert isinstance(v["days"], int) and 1 <= v["days"] <= 7, v
    return v


fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True}}
r = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "Plan a trip."}], response_format=fmt,
    max_tokens=128, seed=7, temperature=0,
)
assert r.choices[0].finish_reason == "stop", r
trip = check_trip(r.choices[0].message.content)
streamed = "".join(
    c.delta.content or ""
    for chunk in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Plan a trip."}], response_format=fmt,
        max_tokens=128, seed=7, temperature=0, stream=True,
    )
    for c in chunk.choices
)
assert check_trip(streamed) == trip, (streamed, trip)
r = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "Any JSON object."}],
    response_format={"type": "json_object"}, max_tokens=128, seed=7, temperature=0,
)
assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content
log("json_schema:", trip)

# 11. Log probabilities from the engine.
r = client.chat.completions.create(
    model=MODEL, messages=messages, max_tokens=4, seed=3, logprobs=True, top_logprobs=2,
)
lp = r.choices[0].logprobs.content
assert len(lp) == r.usage.completion_tokens, (len(lp), r.usage)
for t in lp:
    assert t.logprob < 0 and math.isfinite(t.logprob), t
    assert len(t.top_logprobs) == 2, t
    assert t.bytes is not None, t
streamed = []
for chunk in client.chat.completions.create(
    model=MODEL, messages=messages, max_tokens=4, seed=3, logprobs=True, top_logprobs=2,
    stream=True,
):
    for c in chunk.choices:
        if c.logprobs and c.logprobs.content:
            streamed.extend(c.logprobs.content)
assert [t.token for t in streamed] == [t.token for t in lp], (streamed, lp)
c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, seed=3, logprobs=1)
l = c.choices[0].logprobs
assert len(l.tokens) == len(l.token_logprobs) == len(l.top_logprobs) == len(l.text_offset) == 4, l
assert all(x < 0 for x in l.token_logprobs), l
assert l.text_offset[0] == 0 and l.text_offset == sorted(l.text_offset), l
assert all(1 <= len(t) <= 2 for t in l.top_logprobs), l
log("logprobs:", [(t.token, round(t.logprob, 2)) for t in lp])

# 12. Every error status in OpenAI's shape, with its message, as the SDK parses it.
try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert "role `wizard`" in e.body["message"], e.body
try:
    client.moderations.create(input="hi")
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert "no route /v1/moderations" in e.body["message"], e.body
try:
    client.get("/chat/completions", cast_to=object)
    raise AssertionError("expected a 405")
except openai.APIStatusError as e:
    assert e.status_code == 405, e
    assert "method not allowed" in e.body["message"] and e.code == "method_not_allowed", e.body
try:
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1)}], max_tokens=1,
    )
    raise AssertionError("expected a 413")
except openai.APIStatusError as e:
    assert e.status_code == 413, e
    assert "http.max_body_bytes" in e.body["message"] and e.code == "payload_too_large", e.body
# An error met mid-stream (the task is canceled while streaming) arrives as an error chunk.
stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20000, seed=4, stream=True)
try:
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            native("POST", f"/v1/tasks/{chunk.id}/cancel")
    raise AssertionError("expected an APIError mid-stream")
except openai.APIError as e:
    assert "cancel" in str(e).lower(), e
log("errors: 400, 404, 405, 413 and mid-stream in OpenAI's shape")

# 13. CORS: a browser's preflight from an allowed origin is answered without a token.
pre = urllib.request.Request(BASE + "/v1/chat/completions", method="OPTIONS", headers={
    "Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
})
with urllib.request.urlopen(pre, timeout=10) as resp:
    assert resp.status == 200, resp.status
    assert resp.headers["access-control-allow-origin"] == CORS_ORIGIN, dict(resp.headers)
    assert "authorization" in resp.headers["access-control-allow-headers"].lower(), dict(resp.headers)
pre = urllib.request.Request(BASE + "/v1/models", method="OPTIONS", headers={
    "Origin": "http://evil.example", "Access-Control-Request-Method": "GET",
})
try:
    with urllib.request.urlopen(pre, timeout=10) as resp:
        assert "access-control-allow-origin" not in resp.headers, dict(resp.headers)
except urllib.error.HTTPError as e:
    assert "access-control-allow-origin" not in e.headers, dict(e.headers)
log("cors: preflight answered for", CORS_ORIGIN)

print("OPENAI SDK OK")
