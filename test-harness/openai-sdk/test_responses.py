"""The OpenAI Responses door of orchestratord, driven by the official `openai` Python SDK.

Run by crates/orchestratord/tests/e2e/responses_sdk.rs (venv from test-harness/openai-sdk/setup.sh)
against a real daemon and llama-server: pool MODEL (default `chat`), the real instruct model
with its own chat template, and pool TOOLS_MODEL (default `tiny-tools`), the random-weight test
model with test-harness/openai-sdk/tool-template.jinja, which renders tools.
Environment: LLORCH_URL, LLORCH_TOKEN, MODEL, TOOLS_MODEL.
Prints `KEPT <id>` (a stored response the Rust test reads again after restarting the daemon)
and `RESPONSES SDK OK`; exits non-zero (an AssertionError or an SDK exception) on any failure.
"""

import json
import os
import sys

import openai
from openai import OpenAI

BASE = os.environ["LLORCH_URL"].rstrip("/")
TOKEN = os.environ["LLORCH_TOKEN"]
MODEL = os.environ.get("MODEL", "chat")
TOOLS_MODEL = os.environ.get("TOOLS_MODEL", "tiny-tools")


def log(*a):
    print("[responses-sdk]", *a, file=sys.stderr, flush=True)


client = OpenAI(base_url=BASE + "/v1", api_key=TOKEN, max_retries=0, timeout=120)
log("openai", openai.__version__, "->", BASE)

ASK = "What is the capital of France?"
INSTRUCTIONS = "Answer with one word."

# 1. A real answer, not streamed.
r1 = client.responses.create(
    model=MODEL, instructions=INSTRUCTIONS, input=ASK, max_output_tokens=16, temperature=0,
)
assert r1.object == "response", r1
assert r1.id.startswith("resp_"), r1.id
assert r1.status in ("completed", "incomplete"), r1.status
assert "Paris" in r1.output_text, r1.output_text
msg = r1.output[0]
assert msg.type == "message" and msg.role == "assistant", msg
assert msg.content[0].type == "output_text", msg
assert r1.usage.input_tokens > 0 and r1.usage.output_tokens > 0, r1.usage
assert r1.usage.total_tokens == r1.usage.input_tokens + r1.usage.output_tokens, r1.usage
assert r1.instructions == INSTRUCTIONS and r1.store is True, r1
log("create:", repr(r1.output_text), r1.usage)

# 2. Streamed through the SDK's stream helper (it checks the event grammar: created first,
# items added before their deltas, indexes, `response.completed` last).
deltas, types, seqs = [], [], []
with client.responses.stream(
    model=MODEL, instructions=INSTRUCTIONS, input=ASK, max_output_tokens=16, temperature=0,
) as stream:
    for ev in stream:
        types.append(ev.type)
        seqs.append(ev.sequence_number)
        if ev.type == "response.output_text.delta":
            deltas.append(ev.delta)
    final = stream.get_final_response()
assert types[:2] == ["response.created", "response.in_progress"], types
assert types[-1] in ("response.completed",), types
for t in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
          "response.content_part.done", "response.output_item.done"):
    assert t in types, (t, types)
assert seqs == list(range(len(seqs))), seqs
assert final.output_text == "".join(deltas), (final.output_text, deltas)
assert final.output_text == r1.output_text, (final.output_text, r1.output_text)
log("stream:", len(deltas), "deltas ->", repr(final.output_text))
# The raw stream (`stream=True`) parses as the SDK's event types too.
raw = list(client.responses.create(model=MODEL, input=ASK, max_output_tokens=4, stream=True))
assert raw[0].type == "response.created" and raw[-1].type in ("response.incomplete", "response.completed"), [e.type for e in raw]
assert raw[-1].response.status in ("incomplete", "completed"), raw[-1]

# Structured output: `text.format` json_schema from a pydantic model (`responses.parse`); the
# engine's grammar holds the output to the schema.
from pydantic import BaseModel


class Capital(BaseModel):
    city: str
    country: str


parsed = client.responses.parse(
    model=MODEL, input=ASK, text_format=Capital, max_output_tokens=64, temperature=0,
)
assert parsed.status == "completed", parsed
assert isinstance(parsed.output_parsed, Capital), parsed.output_text
assert parsed.text.format.type == "json_schema", parsed.text
log("parse:", parsed.output_parsed)

# 3. Chained with previous_response_id: the second turn sees the first.
first = client.responses.create(
    model=MODEL, input="My name is Zorblax. Remember it.", max_output_tokens=16, temperature=0,
)
second = client.responses.create(
    model=MODEL, previous_response_id=first.id, input="What is my name?", max_output_tokens=16,
    temperature=0,
)
assert second.previous_response_id == first.id, second
alone = client.responses.input_tokens.count(model=MODEL, input="What is my name?")
chained = client.responses.input_tokens.count(
    model=MODEL, previous_response_id=first.id, input="What is my name?",
)
assert chained.input_tokens > alone.input_tokens + 5, (chained, alone)
assert second.usage.input_tokens >= chained.input_tokens - 2, (second.usage, chained)
assert "Zorblax" in second.output_text, second.output_text
log("chain:", repr(second.output_text), "input tokens", alone.input_tokens, "->", chained.input_tokens)

# 4. input_tokens: the engine's own count.
raw_count = client.responses.input_tokens.with_raw_response.count(
    model=MODEL, instructions=INSTRUCTIONS, input=ASK,
)
count = raw_count.parse()
assert count.object == "response.input_tokens", count
assert count.input_tokens == r1.usage.input_tokens, (count, r1.usage)
assert raw_count.headers.get("x-llorch-token-count") == "exact", dict(raw_count.headers)

# 5. Retrieve and delete.
got = client.responses.retrieve(r1.id)
assert got.id == r1.id and got.output_text == r1.output_text, got
client.responses.delete(r1.id)
try:
    client.responses.retrieve(r1.id)
    raise AssertionError("a deleted response was found")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.body and "no stored response" in e.body["message"], e.body
log("retrieve and delete: ok")

# 6. Errors arrive as the SDK's exception classes.
try:
    client.responses.create(model="no-such-model", input="x")
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as e:
    assert "no-such-model" in e.message, e.message
try:
    client.responses.create(model=MODEL, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    raise AssertionError("an image was accepted")
except openai.BadRequestError as e:
    assert "input[0].content[0]" in e.message, e.message
try:
    client.responses.create(model=MODEL, previous_response_id="resp_nothing", input="x")
    raise AssertionError("an unknown previous_response_id was accepted")
except openai.NotFoundError as e:
    assert "previous_response_id" in e.message, e.message
log("errors: ok")

# 7. A function call round trip (pool TOOLS_MODEL). The test model has random weights, so it is
# pushed into a call: `logit_bias` (a llama-orch extension, through the SDK's `extra_body`)
# makes its first token `@@` (id 25380), which opens a call in tool-template.jinja; the grammar
# llama-server builds from the tool then writes the rest (the `enum` leaves one argument).
TOOLS = [{
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}]
WEATHER = "What is the weather in Paris?"
FORCE = {"logit_bias": {"25380": 100}, "seed": 42}
call_resp = client.responses.create(
    model=TOOLS_MODEL, input=WEATHER, tools=TOOLS, tool_choice="required",
    parallel_tool_calls=False, max_output_tokens=64, temperature=0, extra_body=FORCE,
)
calls = [o for o in call_resp.output if o.type == "function_call"]
assert len(calls) == 1, call_resp.output
call = calls[0]
assert call.name == "get_weather" and call.call_id and call.id, call
assert json.loads(call.arguments) == {"city": "Paris"}, call.arguments
assert call_resp.status == "completed", call_resp.status
# Streamed: the same call, through the stream helper's function-call events.
arg_deltas = []
with client.responses.stream(
    model=TOOLS_MODEL, input=WEATHER, tools=TOOLS, tool_choice="required",
    parallel_tool_calls=False, max_output_tokens=64, temperature=0, extra_body=FORCE,
) as stream:
    for ev in stream:
        if ev.type == "response.function_call_arguments.delta":
            arg_deltas.append(ev.delta)
    streamed = stream.get_final_response()
scall = [o for o in streamed.output if o.type == "function_call"][0]
assert scall.arguments == call.arguments == "".join(arg_deltas), (scall, call, arg_deltas)
# The result goes back as a function_call_output, chained on the call's response; the model
# answers with text (no bias now).
answer = client.responses.create(
    model=TOOLS_MODEL, previous_response_id=call_resp.id, tools=TOOLS,
    input=[{"type": "function_call_output", "call_id": call.call_id,
            "output": json.dumps({"temp_c": 18, "sky": "sunny"})}],
    max_output_tokens=12, temperature=0, extra_body={"seed": 42},
)
assert answer.output_text, answer.output
assert not [o for o in answer.output if o.type == "function_call"], answer.output
assert answer.usage.input_tokens > call_resp.usage.input_tokens, (answer.usage, call_resp.usage)
log("tools: call", call.arguments, "-> answer of", answer.usage.output_tokens, "tokens")

# 8. A Codex-style request: message items with input_text parts, reasoning and include, a
# function tool beside tool types the engine cannot run (dropped, named in a header), streamed.
with client.responses.with_streaming_response.create(
    model=TOOLS_MODEL,
    instructions="You are a coding agent.",
    input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}],
    tools=[
        {"type": "function", "name": "shell", "description": "Runs a command.", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"]}},
        {"type": "web_search"},
        {"type": "local_shell"},
    ],
    tool_choice="auto", parallel_tool_calls=False, reasoning={"effort": "low", "summary": "auto"},
    store=False, include=["reasoning.encrypted_content"], prompt_cache_key="codex-session",
    max_output_tokens=8, stream=True,
) as resp:
    assert resp.headers.get("x-llorch-dropped-tools") == "web_search,local_shell", dict(resp.headers)
    assert resp.headers.get("x-llorch-task-id", "").startswith("resp_"), dict(resp.headers)
    events = list(resp.parse())
assert events[-1].type in ("response.completed", "response.incomplete"), [e.type for e in events]
done = events[-1].response
assert done.store is False and [t.name for t in done.tools] == ["shell"], done
log("codex-style: dropped", resp.headers.get("x-llorch-dropped-tools"))

# A response left stored, for the restart check of the Rust test.
kept = client.responses.create(model=MODEL, input=ASK, instructions=INSTRUCTIONS, max_output_tokens=8, temperature=0)
print("KEPT", kept.id, flush=True)
print("RESPONSES SDK OK")
