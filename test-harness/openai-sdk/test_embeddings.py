"""`/v1/embeddings` of orchestratord, driven by the official `openai` Python SDK.

Run by crates/orchestratord/tests/e2e/embeddings.rs (venv from test-harness/openai-sdk/setup.sh)
against a real daemon whose pool EMBED_MODEL is a `kind: embedding` llama-server pool and whose
pool CHAT_POOL is a chat pool. Environment: LLORCH_URL, LLORCH_TOKEN, EMBED_MODEL, CHAT_POOL.
Prints the task ids it made (`TASK <id>`) for the Rust side to check, then `EMBEDDINGS SDK OK`.
Exits non-zero (an AssertionError or an SDK exception) on any failure.
"""

import base64
import math
import os
import struct
import sys

import openai
from openai import OpenAI

BASE = os.environ["LLORCH_URL"].rstrip("/")
TOKEN = os.environ["LLORCH_TOKEN"]
MODEL = os.environ["EMBED_MODEL"]
CHAT_POOL = os.environ["CHAT_POOL"]


def log(*a):
    print("[embeddings-sdk]", *a, file=sys.stderr, flush=True)


def close(a, b, tol=1e-4):
    assert len(a) == len(b), (len(a), len(b))
    worst = max(abs(x - y) for x, y in zip(a, b))
    assert worst <= tol, f"vectors differ by {worst}"


client = OpenAI(base_url=BASE + "/v1", api_key=TOKEN, max_retries=0, timeout=300)

# The SDK's default: it asks for base64 and decodes the little-endian floats itself. The first
# request also loads the on-demand pool.
raw = client.embeddings.with_raw_response.create(model=MODEL, input="The capital of France is Paris.")
task_id = raw.headers.get("x-llorch-task-id")
assert task_id and task_id.startswith("embd-"), raw.headers
assert raw.headers.get("x-llorch-queue-position") is not None, raw.headers
assert raw.headers.get("x-llorch-predicted-start-ms") is not None, raw.headers
print("TASK", task_id, flush=True)
default = raw.parse()
assert default.object == "list" and default.model == MODEL, default
assert len(default.data) == 1 and default.data[0].index == 0
dims = len(default.data[0].embedding)
assert dims > 16, dims
assert default.usage.prompt_tokens > 0 and default.usage.total_tokens == default.usage.prompt_tokens
log("default (base64 decoded by the SDK):", dims, "dims,", default.usage.prompt_tokens, "tokens")

# Floats, for the same text batched with a shorter one: the same vector as alone (mean pooling
# over inputs of unequal lengths in one batch is what the recipe's `--kv-unified` keeps right),
# the second one different; finite, non-zero vectors.
floats = client.embeddings.create(
    model=MODEL,
    input=["The capital of France is Paris.", "Bananas are yellow."],
    encoding_format="float",
    user="ignored-user",
)
assert [d.index for d in floats.data] == [0, 1]
a, b = floats.data[0].embedding, floats.data[1].embedding
assert all(isinstance(x, float) and math.isfinite(x) for x in a + b)
close(a, default.data[0].embedding)
assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3, "two different texts, one vector"
norm = math.sqrt(sum(x * x for x in a))
assert norm > 0, norm
log("float: 2 vectors, |a| =", round(norm, 4))

# base64 asked for explicitly: the SDK hands the string through; it is little-endian f32.
b64 = client.embeddings.create(model=MODEL, input="The capital of France is Paris.", encoding_format="base64")
s = b64.data[0].embedding
assert isinstance(s, str), type(s)
raw_bytes = base64.b64decode(s)
assert len(raw_bytes) == 4 * dims, (len(raw_bytes), dims)
close(list(struct.unpack("<%df" % dims, raw_bytes)), a)
log("base64: little-endian f32 of", dims, "dims")

# Refusals, in OpenAI's error shape (the SDK raises its typed errors).
try:
    client.embeddings.create(model=MODEL, input="x", dimensions=8)
    raise AssertionError("dimensions accepted")
except openai.BadRequestError as e:
    assert "dimensions" in e.message, e.message
try:
    client.embeddings.create(model=CHAT_POOL, input="x", encoding_format="float")
    raise AssertionError("an embedding request ran on a chat pool")
except openai.BadRequestError as e:
    assert "kind: embedding" in e.message and MODEL in e.message, e.message
    log("wrong kind:", e.message)
try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    raise AssertionError("a chat request ran on an embedding pool")
except openai.BadRequestError as e:
    assert "kind: chat" in e.message and CHAT_POOL in e.message, e.message
try:
    client.embeddings.create(model=MODEL, input=[[1, 2, 3]])
    raise AssertionError("token arrays accepted")
except openai.BadRequestError as e:
    assert "token ids" in e.message, e.message

print("EMBEDDINGS SDK OK", flush=True)
