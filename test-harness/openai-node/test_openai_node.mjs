// The OpenAI-compatible door of orchestratord, driven by the official `openai` Node SDK.
//
// Run by crates/orchestratord/tests/e2e/openai_sdk.rs (SDK from test-harness/openai-node/setup.sh)
// against a real daemon with pools `tiny` and `tiny-tools` (the same tiny model; tiny-tools'
// llama-server renders tools with test-harness/openai-sdk/tool-template.jinja).
// Environment: LLORCH_URL, LLORCH_TOKEN, MODEL, TOOLS_MODEL, MAX_BODY_BYTES, CORS_ORIGIN.
// Exits non-zero on any failure; prints "OPENAI NODE SDK OK" at the end.

import assert from "node:assert/strict";
import OpenAI from "openai";

const BASE = process.env.LLORCH_URL.replace(/\/$/, "");
const TOKEN = process.env.LLORCH_TOKEN;
const MODEL = process.env.MODEL ?? "tiny";
const TOOLS_MODEL = process.env.TOOLS_MODEL ?? "tiny-tools";
const MAX_BODY_BYTES = Number(process.env.MAX_BODY_BYTES ?? "65536");
const CORS_ORIGIN = process.env.CORS_ORIGIN ?? "http://localhost:5173";

const log = (...a) => console.error("[openai-node]", ...a);
const client = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 120_000 });

/** Awaits `p` and returns the SDK error it rejects with (fails if it resolves). */
async function failure(p, what) {
  try {
    await p;
  } catch (e) {
    return e;
  }
  assert.fail(`expected ${what}`);
}

// 1. Plain chat, streamed and not: the same seed gives the same text.
const messages = [{ role: "user", content: "Hello there" }];
const plain = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8, seed: 42 });
assert.equal(plain.object, "chat.completion");
const text = plain.choices[0].message.content;
assert.ok(text);
let streamedText = "";
for await (const chunk of await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8, seed: 42, stream: true })) {
  for (const c of chunk.choices) streamedText += c.delta.content ?? "";
}
assert.equal(streamedText, text);
log("chat:", JSON.stringify(text));

// 2. Tools. The tiny model has random weights: `logit_bias` makes its first token `@@`
// (id 25380), which opens a tool call in tool-template.jinja; llama-server's grammar from our
// tool definition forces the rest (the enum leaves one valid argument).
const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city.",
    parameters: { type: "object", properties: { city: { type: "string", enum: ["Paris"] } }, required: ["city"] },
  },
}];
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const callArgs = {
  model: TOOLS_MODEL, messages: ask, tools, parallel_tool_calls: false, max_tokens: 64, seed: 42, temperature: 0,
  logit_bias: { 25380: 100 },
};
const called = await client.chat.completions.create(callArgs);
assert.equal(called.choices[0].finish_reason, "tool_calls");
assert.equal(called.choices[0].message.content, null);
const [call] = called.choices[0].message.tool_calls;
assert.equal(called.choices[0].message.tool_calls.length, 1);
assert.equal(call.type, "function");
assert.ok(call.id);
assert.equal(call.function.name, "get_weather");
assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
const pieces = new Map();
let finish = null;
for await (const chunk of await client.chat.completions.create({ ...callArgs, stream: true })) {
  for (const c of chunk.choices) {
    for (const tc of c.delta.tool_calls ?? []) {
      const p = pieces.get(tc.index) ?? { id: null, name: null, args: "" };
      p.id ??= tc.id ?? null;
      p.name ??= tc.function?.name ?? null;
      p.args += tc.function?.arguments ?? "";
      pieces.set(tc.index, p);
    }
    finish = c.finish_reason ?? finish;
  }
}
assert.equal(finish, "tool_calls");
assert.deepEqual([...pieces.keys()], [0]);
assert.equal(pieces.get(0).name, "get_weather");
assert.ok(pieces.get(0).id);
assert.equal(pieces.get(0).args, call.function.arguments);
// A named tool_choice: llama-server knows only none/auto/required, so the adapter asks for
// `required` over that one tool.
const named = await client.chat.completions.create({ ...callArgs, tool_choice: { type: "function", function: { name: "get_weather" } } });
assert.equal(named.choices[0].finish_reason, "tool_calls");
assert.equal(named.choices[0].message.tool_calls[0].function.name, "get_weather");
// The tool-result turn: the call and its result go back; the prompt grows by them.
const turn = [
  ...ask,
  { role: "assistant", content: null, tool_calls: [call] },
  { role: "tool", tool_call_id: call.id, content: JSON.stringify({ temp_c: 18 }) },
];
const answered = await client.chat.completions.create({ model: TOOLS_MODEL, messages: turn, tools, max_tokens: 8, seed: 42, temperature: 0 });
assert.equal(answered.choices[0].finish_reason, "length");
assert.ok(answered.choices[0].message.content);
assert.ok(answered.usage.prompt_tokens > called.usage.prompt_tokens);
let answerStreamed = "";
for await (const chunk of await client.chat.completions.create({ model: TOOLS_MODEL, messages: turn, tools, max_tokens: 8, seed: 42, temperature: 0, stream: true })) {
  for (const c of chunk.choices) answerStreamed += c.delta.content ?? "";
}
assert.equal(answerStreamed, answered.choices[0].message.content);
log("tools: call", call.function.arguments, "relayed, streamed and answered");

// 3. json_schema: the output parses and matches the schema.
const schema = {
  type: "object",
  properties: { city: { type: "string", enum: ["Paris", "Rome"] }, days: { type: "integer", minimum: 1, maximum: 7 } },
  required: ["city", "days"],
  additionalProperties: false,
};
const checkTrip = (s) => {
  const v = JSON.parse(s);
  assert.deepEqual(Object.keys(v).sort(), ["city", "days"]);
  assert.ok(["Paris", "Rome"].includes(v.city));
  assert.ok(Number.isInteger(v.days) && v.days >= 1 && v.days <= 7);
  return v;
};
const format = { type: "json_schema", json_schema: { name: "trip", schema, strict: true } };
const trip = await client.chat.completions.create({
  model: MODEL, messages: [{ role: "user", content: "Plan a trip." }], response_format: format, max_tokens: 128, seed: 7, temperature: 0,
});
assert.equal(trip.choices[0].finish_reason, "stop");
const parsed = checkTrip(trip.choices[0].message.content);
let tripStreamed = "";
for await (const chunk of await client.chat.completions.create({
  model: MODEL, messages: [{ role: "user", content: "Plan a trip." }], response_format: format, max_tokens: 128, seed: 7, temperature: 0, stream: true,
})) {
  for (const c of chunk.choices) tripStreamed += c.delta.content ?? "";
}
assert.deepEqual(checkTrip(tripStreamed), parsed);
log("json_schema:", JSON.stringify(parsed));

// 4. Log probabilities, chat and completions.
const lp = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 4, seed: 3, logprobs: true, top_logprobs: 2 });
const content = lp.choices[0].logprobs.content;
assert.equal(content.length, lp.usage.completion_tokens);
for (const t of content) {
  assert.ok(Number.isFinite(t.logprob) && t.logprob < 0);
  assert.equal(t.top_logprobs.length, 2);
}
const streamedLp = [];
for await (const chunk of await client.chat.completions.create({ model: MODEL, messages, max_tokens: 4, seed: 3, logprobs: true, top_logprobs: 2, stream: true })) {
  for (const c of chunk.choices) streamedLp.push(...(c.logprobs?.content ?? []));
}
assert.deepEqual(streamedLp.map((t) => t.token), content.map((t) => t.token));
const cmpl = await client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 4, seed: 3, logprobs: 1 });
const l = cmpl.choices[0].logprobs;
assert.equal(l.tokens.length, 4);
assert.equal(l.token_logprobs.length, 4);
assert.equal(l.text_offset[0], 0);
assert.ok(l.top_logprobs.every((m) => Object.keys(m).length >= 1 && Object.keys(m).length <= 2));
log("logprobs:", content.map((t) => [t.token, t.logprob.toFixed(2)]));

// 5. Every error status in OpenAI's shape, with its message, as the SDK parses it.
const bad = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: "wrong-token", maxRetries: 0 });
let e = await failure(bad.models.list(), "401");
assert.ok(e instanceof OpenAI.AuthenticationError, String(e));
assert.equal(e.status, 401);
assert.match(e.message, /bearer token does not match/);
assert.equal(e.code, "bad_token");
e = await failure(client.chat.completions.create({ model: "no-such-model", messages, max_tokens: 1 }), "404 model");
assert.ok(e instanceof OpenAI.NotFoundError, String(e));
assert.match(e.message, /no pool serves model/);
e = await failure(client.moderations.create({ input: "hi" }), "404 route");
assert.ok(e instanceof OpenAI.NotFoundError, String(e));
assert.match(e.message, /no route \/v1\/moderations/);
e = await failure(client.get("/chat/completions"), "405");
assert.ok(e instanceof OpenAI.APIError, String(e));
assert.equal(e.status, 405);
assert.match(e.message, /method not allowed/);
e = await failure(client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x".repeat(MAX_BODY_BYTES + 1) }], max_tokens: 1 }), "413");
assert.ok(e instanceof OpenAI.APIError, String(e));
assert.equal(e.status, 413);
assert.match(e.message, /http\.max_body_bytes/);
assert.equal(e.code, "payload_too_large");
e = await failure(client.chat.completions.create({ model: MODEL, messages: [{ role: "wizard", content: "hi" }] }), "400 role");
assert.ok(e instanceof OpenAI.BadRequestError, String(e));
assert.match(e.message, /role `wizard`/);
e = await failure(client.chat.completions.create({ model: MODEL, messages, n: 2 }), "400 n");
assert.ok(e instanceof OpenAI.BadRequestError, String(e));
assert.match(e.message, /only n = 1/);
// An error met mid-stream (the task is canceled while it streams) arrives as an error chunk.
e = await failure((async () => {
  const s = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 20000, seed: 4, stream: true });
  for await (const chunk of s) {
    if (chunk.choices[0]?.delta.content) {
      await fetch(`${BASE}/v1/tasks/${chunk.id}/cancel`, { method: "POST", headers: { Authorization: `Bearer ${TOKEN}` } });
    }
  }
})(), "an error mid-stream");
assert.ok(e instanceof OpenAI.APIError, String(e));
assert.match(e.message, /cancel/i);
log("errors: 401, 404, 405, 413, 400 and mid-stream parsed with their messages");

// 6. CORS preflight from the allowed origin, without a token.
const pre = await fetch(`${BASE}/v1/chat/completions`, {
  method: "OPTIONS",
  headers: { Origin: CORS_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type" },
});
assert.equal(pre.status, 200);
assert.equal(pre.headers.get("access-control-allow-origin"), CORS_ORIGIN);
log("cors: preflight answered");

console.log("OPENAI NODE SDK OK");
