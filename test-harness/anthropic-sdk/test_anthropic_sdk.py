"""The Anthropic Messages door of orchestratord, driven by the official `anthropic` Python SDK.

Run by crates/orchestratord/tests/e2e/anthropic_sdk.rs (venv from test-harness/anthropic-sdk/setup.sh)
against a real daemon whose pool `chat` runs the real instruct model on llama-server, with
`model_aliases: {"claude-*": chat}` so that Claude's model names reach it.
Environment: LLORCH_URL, LLORCH_TOKEN (sent as `x-api-key`, as Anthropic's clients do), MODEL
(a Claude model name the alias maps).
Exits non-zero (an AssertionError or an SDK exception) on any failure.
"""

import json
import os
import sys
import time

import anthropic

BASE = os.environ["LLORCH_URL"].rstrip("/")
TOKEN = os.environ["LLORCH_TOKEN"]
MODEL = os.environ.get("MODEL", "claude-haiku-4-5")


def log(*a):
    print("[anthropic-sdk]", *a, file=sys.stderr, flush=True)


# max_retries=0: errors must surface instead of being retried by the SDK.
client = anthropic.Anthropic(base_url=BASE, api_key=TOKEN, max_retries=0, timeout=120)
ASK = [{"role": "user", "content": "What is the capital of France?"}]
# This SDK version has no sampling arguments; the door still takes `temperature` (extra body).
T0 = {"temperature": 0}
SYSTEM = "You are a helpful assistant. Answer in one short sentence."

# 1. A real answer, with the queue headers.
t0 = time.time()
raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=24, system=SYSTEM, messages=ASK, extra_body=T0)
m = raw.parse()
log("create:", repr(m.content[0].text if m.content else ""), m.stop_reason, m.usage, f"{time.time() - t0:.1f}s")
assert m.type == "message" and m.role == "assistant", m
assert m.id.startswith("msg_") and raw.headers["x-llorch-task-id"] == m.id, (m.id, raw.headers)
assert raw.headers.get("x-llorch-queue-position") is not None, raw.headers
assert raw.headers.get("x-llorch-predicted-start-ms") is not None, raw.headers
assert m.model == MODEL, m.model
assert m.content and m.content[0].type == "text", m.content
assert "Paris" in m.content[0].text, m.content[0].text
assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 24, m.usage

# 2. Streamed: the SDK parses every event; the final message is the deltas joined.
t0 = time.time()
deltas, kinds = [], []
with client.messages.stream(model=MODEL, max_tokens=48, system=SYSTEM, messages=ASK, extra_body=T0) as s:
    for ev in s:
        kinds.append(ev.type)
        if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
            deltas.append(ev.delta.text)
    final = s.get_final_message()
log("stream:", repr("".join(deltas)), final.stop_reason, final.usage, f"{time.time() - t0:.1f}s")
assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds, kinds
assert len(final.content) == 1 and final.content[0].text == "".join(deltas), (final.content, deltas)
assert "Paris" in final.content[0].text, final.content[0].text
assert final.stop_reason == "end_turn", final.stop_reason
assert final.usage.output_tokens > 0, final.usage

# 3. A tool round trip, as an agent loop: the conversation already holds one call and its
# result (tool_use and tool_result blocks), and the model is asked again with tool_choice
# `any`. llama-server's grammar for a required call still lets the model write text before the
# call, and this 135M model rambles instead of opening one on a first turn; after one call in
# its history it opens the next itself (chatml-tools.jinja renders the tools and the calls).
TOOLS = [{
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris"]}},
        "required": ["city"],
    },
}]
WEATHER = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_earlier", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_earlier", "content": [{"type": "text", "text": "18 degrees"}]}]},
    {"role": "user", "content": "What is the weather in Paris?"},
]
t0 = time.time()
r = client.messages.create(
    model=MODEL, max_tokens=64, messages=WEATHER, tools=TOOLS, extra_body=T0,
    tool_choice={"type": "any", "disable_parallel_tool_use": True},
)
log("tool call:", r.content, r.stop_reason, f"{time.time() - t0:.1f}s")
assert r.stop_reason == "tool_use", r
uses = [b for b in r.content if b.type == "tool_use"]
assert len(uses) == 1, r.content
call = uses[0]
assert call.id and call.id != "toolu_earlier" and call.name == "get_weather", call
assert call.input == {"city": "Paris"}, call.input
# Streamed, the same call arrives as input_json_delta pieces the SDK assembles.
with client.messages.stream(
    model=MODEL, max_tokens=64, messages=WEATHER, tools=TOOLS, extra_body=T0, tool_choice={"type": "any"},
) as s:
    partial = [ev.delta.partial_json for ev in s if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta"]
    streamed = s.get_final_message()
log("streamed tool call:", streamed.content, streamed.stop_reason)
s_uses = [b for b in streamed.content if b.type == "tool_use"]
assert streamed.stop_reason == "tool_use" and len(s_uses) == 1, streamed
assert s_uses[0].input == {"city": "Paris"} and json.loads("".join(partial)) == {"city": "Paris"}, (s_uses, partial)
# The result of the new call goes back with the question it answers; the model answers from
# it in text. (Without `tools` this time: this model, shown the tools, answers any turn by
# writing another call, even with tool_choice none; the door needs no tools to relay the
# tool_use and tool_result blocks.)
turn = WEATHER[:1] + [
    {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees and sunny"}]},
]
t0 = time.time()
answer = client.messages.create(model=MODEL, max_tokens=32, messages=turn, extra_body=T0)
log("tool result answer:", answer.content, answer.stop_reason, f"{time.time() - t0:.1f}s")
assert answer.content and all(b.type == "text" for b in answer.content), answer.content
assert "18" in answer.content[0].text, answer.content
assert answer.stop_reason in ("end_turn", "max_tokens"), answer.stop_reason

# 4. count_tokens: the engine's count of the same prompt.
raw = client.messages.with_raw_response.count_tokens(model=MODEL, system=SYSTEM, messages=ASK)
count = raw.parse()
log("count_tokens:", count.input_tokens, raw.headers.get("x-llorch-token-count"))
assert count.input_tokens == m.usage.input_tokens, (count, m.usage)
assert raw.headers.get("x-llorch-token-count") == "exact", raw.headers

# 5. Claude Code's max_tokens (32 000) is clamped to what the context leaves, and says so.
raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=32000, system=SYSTEM, messages=ASK, extra_body=T0)
clamp = raw.headers.get("x-llorch-max-tokens-clamped", "")
log("clamped:", clamp, raw.parse().stop_reason)
assert clamp.startswith("32000->"), raw.headers

# 6. Errors as the SDK's exception classes.
bad_key = anthropic.Anthropic(base_url=BASE, api_key="wrong-key", max_retries=0)
try:
    bad_key.messages.create(model=MODEL, max_tokens=4, messages=ASK)
    raise AssertionError("a wrong x-api-key was accepted")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e.body
try:
    client.messages.create(model="no-such-model", max_tokens=4, messages=ASK)
    raise AssertionError("an unknown model was accepted")
except anthropic.NotFoundError as e:
    assert e.status_code == 404 and e.body["error"]["type"] == "not_found_error", e.body
    assert "no-such-model" in e.message, e.message
try:
    client.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    raise AssertionError("an image block was accepted")
except anthropic.BadRequestError as e:
    assert e.status_code == 400 and e.body["error"]["type"] == "invalid_request_error", e.body
    assert "image" in e.message, e.message
log("errors: 401, 404, 400 as AuthenticationError, NotFoundError, BadRequestError")

print("ANTHROPIC SDK OK")
