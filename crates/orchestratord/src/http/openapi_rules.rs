//! What the derived schemas cannot say, applied to the generated document so that it states
//! exactly what the server enforces (schemathesis checks both directions: a schema-valid
//! request must not get 400, a schema-invalid one must not be accepted).
//!
//! - Unsigned integers get their real range: utoipa writes `u32` as `int32` (which stops at
//!   2^31-1); it becomes `int64` with `maximum` 2^32-1. `u64` request fields are held to
//!   2^63-1 by the server (`MAX_WIRE_INT`), which `int64` says.
//! - Request rules of the validators (`admission::validate`, the stores, the handlers): id
//!   patterns, non-empty names, bounds, and rules across fields (`workload` and `prompt` or
//!   `messages`, `strict` needs `seed`, `budget` needs `session_id`, drain's `resume` or
//!   `deadline_ms`).
//! - The bearer scheme: every operation needs the token except `/health` and `/metrics`, which
//!   loopback callers may read without one (docs/DECISIONS.md "Auth").
//!
//! A rule naming a schema, property or path that no longer exists panics, so a rename shows up
//! in the contract test instead of silently dropping the rule.

use serde_json::{json, Map, Value};

/// Ids of tasks, sessions and catalog models (`admission::validate::valid_id`).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";
/// Artifact ids (`orch_store` `parse_artifact_id`).
pub const ARTIFACT_ID_PATTERN: &str = "^sha256:[0-9a-f]{64}$";
/// Standard base64 with padding and zero trailing bits, what the `base64` crate's `STANDARD`
/// engine decodes.
const BASE64_PATTERN: &str =
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";
/// Some non-whitespace character (the server trims, then refuses empty names).
const NOT_BLANK: &str = "\\S";

/// Applies every rule to `doc` (the document as JSON).
pub fn apply(doc: &mut Value) {
    unsigned_ranges(doc);
    security(doc);
    let id = json!({"pattern": ID_PATTERN});
    let artifact_id = json!({"pattern": ARTIFACT_ID_PATTERN});
    for (schema, prop, rule) in [
        ("TaskRequest", "task_id", id.clone()),
        ("TaskRequest", "session_id", id.clone()),
        ("TaskRequest", "model_ref", json!({"pattern": NOT_BLANK})),
        (
            "TaskRequest",
            "engine",
            json!({"enum": ["llamacpp", "vllm", "tgi", "triton", "openai", null]}),
        ),
        ("TaskRequest", "max_tokens", json!({"minimum": 1})),
        (
            "TaskRequest",
            "temperature",
            json!({"minimum": 0, "maximum": crate::admission::validate::MAX_TEMPERATURE}),
        ),
        ("TaskRequest", "top_p", json!({"minimum": 0, "maximum": 1})),
        ("BudgetSpec", "cost", json!({"minimum": 0})),
        ("RegisterModelRequest", "id", id.clone()),
        (
            "RegisterModelRequest",
            "digest",
            json!({"pattern": "^(sha256:|SHA256:)?[0-9a-fA-F]{64}$"}),
        ),
        (
            "RegisterModelRequest",
            "signature",
            json!({"pattern": NOT_BLANK}),
        ),
        (
            "RegisterModelRequest",
            "sbom",
            json!({"pattern": NOT_BLANK}),
        ),
        ("OaiRequest", "model", json!({"pattern": NOT_BLANK})),
        ("OaiRequest", "n", json!({"minimum": 1, "maximum": 1})),
        (
            "RegisterModelRequest",
            "ref",
            json!({"pattern": model_ref_pattern(false)}),
        ),
        ("ArtifactCreate", "parent", artifact_id.clone()),
        (
            "ArtifactCreate",
            "tags",
            json!({"maxItems": orch_store::artifacts::MAX_TAGS}),
        ),
        (
            "ReloadRequest",
            "grace_ms",
            json!({"maximum": crate::pool_control::MAX_RELOAD_GRACE_MS}),
        ),
        (
            "ReloadRequest",
            "new_model_ref",
            json!({"pattern": NOT_BLANK}),
        ),
        (
            "DrainRequest",
            "deadline_ms",
            json!({"maximum": crate::pool_control::MAX_DRAIN_MS}),
        ),
    ] {
        merge(property(doc, schema, prop), rule);
    }
    // Each tag: 1-128 characters, none a control character (`orch_store` `validate_text`).
    merge(
        &mut property(doc, "ArtifactCreate", "tags")["items"],
        json!({"minLength": 1, "maxLength": orch_store::artifacts::MAX_TAG_LEN, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"}),
    );
    let max_items = crate::admission::validate::MAX_SCORING_ITEMS;
    let task = schema(doc, "TaskRequest");
    task.insert(
        "allOf".into(),
        json!([
            {"anyOf": [
                {"properties": {"workload": {"enum": ["completion"]}, "prompt": {"type": "string"},
                    "messages": {"type": "null"}, "input": {"type": "null"}, "query": {"type": "null"},
                    "documents": {"type": "null"}, "top_n": {"type": "null"}}, "required": ["prompt"]},
                {"properties": {"workload": {"enum": ["chat"]}, "messages": {"type": "array", "minItems": 1},
                    "prompt": {"type": "null"}, "input": {"type": "null"}, "query": {"type": "null"},
                    "documents": {"type": "null"}, "top_n": {"type": "null"}}, "required": ["workload", "messages"]},
                {"properties": {"workload": {"enum": ["embedding"]},
                    "input": {"type": "array", "minItems": 1, "maxItems": max_items,
                        "items": {"type": "string", "minLength": 1}},
                    "prompt": {"type": "null"}, "messages": {"type": "null"}, "query": {"type": "null"},
                    "documents": {"type": "null"}, "top_n": {"type": "null"}, "session_id": {"type": "null"}},
                    "required": ["workload", "input"]},
                {"properties": {"workload": {"enum": ["rerank"]}, "query": {"type": "string", "minLength": 1},
                    "documents": {"type": "array", "minItems": 1, "maxItems": max_items, "items": {"type": "string"}},
                    "top_n": {"minimum": 1},
                    "prompt": {"type": "null"}, "messages": {"type": "null"}, "input": {"type": "null"},
                    "session_id": {"type": "null"}},
                    "required": ["workload", "query", "documents"]}
            ]},
            {"anyOf": [
                {"properties": {"determinism": {"enum": ["best_effort", null]}}},
                {"properties": {"seed": {"type": "integer"}}, "required": ["seed"]}
            ]},
            {"anyOf": [
                {"properties": {"budget": {"type": "null"}}},
                {"properties": {"session_id": {"type": "string"}}, "required": ["session_id"]}
            ]}
        ]),
    );
    schema(doc, "ArtifactCreate").insert(
        "allOf".into(),
        json!([
            {"anyOf": [
                {"properties": {"content": {"type": "string"}}},
                {"properties": {"encoding": {"enum": ["json", null]}}}
            ]},
            {"anyOf": [
                {"properties": {"encoding": {"enum": ["utf8", "json", null]}}},
                {"properties": {"content": {"type": "string", "pattern": BASE64_PATTERN}}}
            ]}
        ]),
    );
    schema(doc, "DrainRequest").insert(
        "anyOf".into(),
        json!([
            {"properties": {"resume": {"enum": [false]}}},
            {"properties": {"deadline_ms": {"type": "null"}}}
        ]),
    );
    chat_messages(doc);
    register_model(doc);
    openai(doc);
    embeddings(doc);
    anthropic(doc);
    responses(doc);
    for (path, method, name, rule) in [
        ("/v1/tasks/{id}", "get", "id", id.clone()),
        ("/v1/tasks/{id}/stream", "get", "id", id.clone()),
        ("/v1/tasks/{id}/cancel", "post", "id", id.clone()),
        ("/v1/sessions/{id}", "get", "id", id.clone()),
        ("/v1/sessions/{id}", "delete", "id", id.clone()),
        ("/v1/catalog/models/{id}", "get", "id", id.clone()),
        ("/v1/catalog/models/{id}", "delete", "id", id.clone()),
        ("/v1/catalog/models/{id}/verify", "post", "id", id.clone()),
        ("/v1/catalog/models/{id}/state", "post", "id", id.clone()),
        ("/v1/artifacts/{id}", "get", "id", artifact_id.clone()),
        ("/v1/artifacts/{id}/raw", "get", "id", artifact_id.clone()),
        (
            "/v1/status",
            "get",
            "recent",
            json!({"maximum": crate::http::web::MAX_RECENT}),
        ),
        (
            "/v1/status/stream",
            "get",
            "recent",
            json!({"maximum": crate::http::web::MAX_RECENT}),
        ),
        (
            "/v1/artifacts",
            "get",
            "limit",
            json!({"maximum": crate::http::artifacts::MAX_LIST_LIMIT}),
        ),
    ] {
        merge(parameter(doc, path, method, name), rule);
    }
}

/// A task's chat messages (`orch_api_types::ChatMessage`, then `validate_extras`): no unknown
/// fields; `content` unless `tool_calls` stand in for it; `tool_calls` only on an assistant
/// message; a `tool` message names the call it answers. Tool choice: a mode is `none`, `auto`
/// or `required` (which needs tools); tools, a choice and `parallel_tool_calls` only in chat.
fn chat_messages(doc: &mut Value) {
    let m = schema(doc, "ChatMessage");
    m.insert("additionalProperties".into(), false.into());
    m.insert(
        "allOf".into(),
        json!([
            {"anyOf": [
                {"properties": {"content": {"type": "string"}}, "required": ["content"]},
                {"properties": {"tool_calls": {"type": "array"}}, "required": ["tool_calls"]}
            ]},
            message_roles(),
        ]),
    );
    merge(
        property(doc, "ToolCall", "type"),
        json!({"pattern": "^function$"}),
    );
    // `ToolChoice` is `oneOf` [mode string, named]; the mode is one of three words.
    let modes = doc
        .pointer_mut("/components/schemas/ToolChoice/oneOf/0")
        .expect("openapi rule: no ToolChoice mode");
    merge(modes, json!({"enum": ["none", "auto", "required"]}));
    let task = schema(doc, "TaskRequest");
    if let Some(Value::Array(all)) = task.get_mut("allOf") {
        all.push(json!({"anyOf": [
            {"properties": {"workload": {"enum": ["chat"]}}, "required": ["workload"]},
            {"properties": {"tools": {"type": ["array", "null"], "maxItems": 0},
                "tool_choice": {"type": "null"}, "parallel_tool_calls": {"type": "null"}}}
        ]}));
        all.push(required_needs_tools());
    }
}

/// `tool_calls` only on an assistant message; a `tool` message has a `tool_call_id`.
fn message_roles() -> Value {
    json!({"allOf": [
        {"anyOf": [
            {"properties": {"tool_calls": {"type": "null"}}},
            {"properties": {"role": {"enum": ["assistant"]}}}
        ]},
        {"anyOf": [
            {"properties": {"role": {"not": {"enum": ["tool"]}}}},
            {"properties": {"tool_call_id": {"type": "string", "minLength": 1}}, "required": ["tool_call_id"]}
        ]}
    ]})
}

/// `tool_choice: "required"` needs at least one tool.
fn required_needs_tools() -> Value {
    json!({"anyOf": [
        {"properties": {"tool_choice": {"not": {"enum": ["required"]}}}},
        {"properties": {"tools": {"type": "array", "minItems": 1}}, "required": ["tools"]}
    ]})
}

/// No control character (`char::is_control`).
const CTL: &str = "\\u0000-\\u001f\\u007f-\\u009f";

/// What `RegisterModelRequest.ref` may be (`orch_store` `validate_reference`, `url::Url`,
/// `pull::hub::parse_ref`): an absolute path (no `:/` in it, which the store reads as a
/// scheme), a `file:///` URL, an `http(s)://` URL with a host name, or a hub reference.
/// `pull`: only what a pull accepts (a hub reference, or a URL whose last path segment names
/// a file).
fn model_ref_pattern(pull: bool) -> String {
    let host = "(?:[A-Za-z0-9._~-]+(?::[A-Za-z0-9._~-]*)?@)?(?:[A-Za-z0-9-]+\\.)*[A-Za-z][A-Za-z0-9-]*(?::[0-9]{1,4})?";
    let url = if pull {
        format!("https?://{host}/(?:[^?#{CTL}]*/)?[^/?#\\\\.%\\s{CTL}][^/?#\\\\{CTL}]*(?:[?#][^{CTL}]*)?")
    } else {
        format!("https?://{host}(?:[/?#][^{CTL}]*)?")
    };
    // ORG and REPO: 1-96 of `A-Za-z0-9-_.`, not `.` or `..`; a file path: 1-4 segments of
    // 1-255 characters, none `.` or `..`, no `\`.
    let part = "(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,95}|\\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,94}|\\.\\.[A-Za-z0-9._-]{1,94})";
    let seg = format!("(?:[^/\\\\.{CTL}][^/\\\\{CTL}]{{0,254}}|\\.[^/\\\\.{CTL}][^/\\\\{CTL}]{{0,253}}|\\.\\.[^/\\\\{CTL}]{{1,253}})");
    let hub = format!("hf:{part}/{part}(?:/{seg}(?:/{seg}){{0,3}}|:[^/{CTL}]+)");
    if pull {
        format!("^(?:{url}|{hub})$")
    } else {
        let local = format!("/(?:[^:{CTL}]|:+[^:/{CTL}])*:*");
        format!("^(?:{local}|file:///[^{CTL}]*|{url}|{hub})$")
    }
}

/// `POST /v1/catalog/models` (`http::catalog::wants_pull`, `register`): a hub reference is
/// pulled (`pull` not false); an `http(s)://` URL with `pull: true` is pulled; anything else
/// is registered, which needs `id`; a local reference cannot be pulled.
fn register_model(doc: &mut Value) {
    schema(doc, "RegisterModelRequest").insert(
        "anyOf".into(),
        json!([
            {"properties": {"ref": {"pattern": "^hf:"}, "pull": {"enum": [true, null]}}},
            {"properties": {"ref": {"pattern": model_ref_pattern(true)}, "pull": {"enum": [true]}},
                "required": ["pull"]},
            {"properties": {"ref": {"pattern": "^(/|file://|https?://)"},
                "pull": {"enum": [false, null]}, "id": {"type": "string"}},
                "required": ["id"]}
        ]),
    );
}

/// The OpenAI door (`http::openai::to_task`, `refuse_unserved`, `logprobs_of`, then the
/// task rules): the refused features only as `null`, the bounds, and per endpoint what it
/// needs (chat: messages; completions: one prompt string, no tools, integer `logprobs`).
fn openai(doc: &mut Value) {
    for prop in [
        "functions",
        "function_call",
        "audio",
        "prediction",
        "web_search_options",
    ] {
        let p = property(doc, "OaiRequest", prop);
        let description = p["description"].clone();
        *p = json!({"description": description, "type": "null"});
    }
    for (prop, rule) in [
        (
            "modalities",
            json!({"items": {"type": "string", "enum": ["text"]}}),
        ),
        ("echo", json!({"enum": [false, null]})),
        ("suffix", json!({"maxLength": 0})),
        ("best_of", json!({"minimum": 1, "maximum": 1})),
        ("max_tokens", json!({"minimum": 1})),
        ("max_completion_tokens", json!({"minimum": 1})),
        ("priority", json!({"enum": ["interactive", "batch", null]})),
        ("session_id", json!({"pattern": ID_PATTERN})),
        (
            "temperature",
            json!({"minimum": 0, "maximum": crate::admission::validate::MAX_TEMPERATURE}),
        ),
        ("top_p", json!({"minimum": 0, "maximum": 1})),
        ("frequency_penalty", json!({"minimum": -2, "maximum": 2})),
        ("presence_penalty", json!({"minimum": -2, "maximum": 2})),
        (
            "stop",
            json!({"anyOf": [{"type": "null"}, {"type": "string"},
                {"type": "array", "items": {"type": "string"}}]}),
        ),
    ] {
        merge(property(doc, "OaiRequest", prop), rule);
    }
    // Token id → bias, both doors (`validate_extras`).
    merge(
        doc.pointer_mut("/components/schemas/BTreeMap")
            .expect("openapi rule: no schema BTreeMap"),
        json!({"additionalProperties": {"type": "number", "format": "float", "minimum": -100, "maximum": 100},
            "propertyNames": {"type": "string", "minLength": 1}}),
    );
    let content = property(doc, "OaiMessage", "content");
    let description = content["description"].clone();
    *content = json!({"description": description, "anyOf": [
        {"type": "null"}, {"type": "string"},
        {"type": "array", "items": {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}}}}
    ]});
    schema(doc, "OaiMessage").insert("allOf".into(), json!([message_roles()]));
    // One flat schema per endpoint (a copy of `OaiRequest` with that endpoint's rules; no
    // `allOf` over a `$ref`, which generators merge lossily: `int64` fields became floats).
    let base = doc
        .pointer("/components/schemas/OaiRequest")
        .cloned()
        .expect("openapi rule: no schema OaiRequest");
    let mut chat = base.clone();
    merge(
        &mut chat["properties"]["messages"],
        json!({"type": "array", "minItems": 1}),
    );
    merge(
        &mut chat["properties"]["logprobs"],
        json!({"type": ["boolean", "null"]}),
    );
    chat["allOf"] = json!([
        {"anyOf": [
            {"properties": {"top_logprobs": {"type": "null"}}},
            {"properties": {"logprobs": {"enum": [true]}}, "required": ["logprobs"]}
        ]},
        required_needs_tools()
    ]);
    let mut completion = base;
    let props = &mut completion["properties"];
    merge(
        &mut props["prompt"],
        json!({"anyOf": [{"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]}),
    );
    merge(
        &mut props["logprobs"],
        json!({"type": ["integer", "null"], "format": "int64", "minimum": 0, "maximum": 5}),
    );
    merge(&mut props["tools"], json!({"maxItems": 0}));
    props["tool_choice"] =
        json!({"description": "Refused: tools belong to /v1/chat/completions.", "type": "null"});
    props["parallel_tool_calls"] =
        json!({"description": "Refused: tools belong to /v1/chat/completions.", "type": "null"});
    for (body, field) in [(&mut chat, "messages"), (&mut completion, "prompt")] {
        if let Some(Value::Array(r)) = body.get_mut("required") {
            r.push(field.into());
        }
    }
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .expect("openapi rule: no schemas");
    schemas.remove("OaiRequest");
    schemas.insert("OaiChatRequest".into(), chat);
    schemas.insert("OaiCompletionRequest".into(), completion);
    for (path, name) in [
        ("/v1/chat/completions", "OaiChatRequest"),
        ("/v1/completions", "OaiCompletionRequest"),
    ] {
        let ptr = format!(
            "/paths/{}/post/requestBody/content/application~1json/schema",
            path.replace('/', "~1")
        );
        *doc.pointer_mut(&ptr)
            .unwrap_or_else(|| panic!("openapi rule: no JSON body of POST {path}")) =
            json!({"$ref": format!("#/components/schemas/{name}")});
        // The headers stand in for the body's `priority` and `session_id` (a header is never
        // `null`).
        merge(
            parameter(doc, path, "post", "X-Llorch-Priority"),
            json!({"type": "string", "pattern": "^[ \\t]*(interactive|batch)?[ \\t]*$"}),
        );
        merge(
            parameter(doc, path, "post", "X-Llorch-Session"),
            json!({"type": "string", "pattern": "^[ \\t]*([A-Za-z0-9._:-]{1,128})?[ \\t]*$"}),
        );
    }
}

/// `/v1/embeddings` and `/v1/rerank` (`http::embeddings`, then the task rules): `input` as
/// text, `dimensions` refused, the encodings, documents as strings or `{text}` objects.
fn embeddings(doc: &mut Value) {
    let max_items = crate::admission::validate::MAX_SCORING_ITEMS;
    let priority = json!({"enum": ["interactive", "batch", null]});
    for (schema_name, prop, rule) in [
        ("EmbeddingsRequest", "model", json!({"pattern": NOT_BLANK})),
        ("EmbeddingsRequest", "priority", priority.clone()),
        (
            "EmbeddingsRequest",
            "encoding_format",
            json!({"enum": ["float", "base64", null]}),
        ),
        ("RerankRequest", "model", json!({"pattern": NOT_BLANK})),
        ("RerankRequest", "priority", priority),
        ("RerankRequest", "query", json!({"minLength": 1})),
        ("RerankRequest", "top_n", json!({"minimum": 1})),
    ] {
        merge(property(doc, schema_name, prop), rule);
    }
    let dims = property(doc, "EmbeddingsRequest", "dimensions");
    let description = dims["description"].clone();
    *dims = json!({"description": description, "type": "null"});
    let input = property(doc, "EmbeddingsRequest", "input");
    let description = input["description"].clone();
    *input = json!({"description": description, "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "maxItems": max_items, "items": {"type": "string", "minLength": 1}}
    ]});
    let docs = property(doc, "RerankRequest", "documents");
    let description = docs["description"].clone();
    *docs = json!({"description": description, "type": "array", "minItems": 1, "maxItems": max_items,
    "items": {"anyOf": [
        {"type": "string"},
        {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
    ]}});
    for path in ["/v1/embeddings", "/v1/rerank"] {
        merge(
            parameter(doc, path, "post", "X-Llorch-Priority"),
            json!({"type": "string", "pattern": "^[ \\t]*(interactive|batch)?[ \\t]*$"}),
        );
    }
}

/// The Responses door (`http::responses::task`): `input` a string or items (message,
/// function_call, function_call_output, reasoning), unless `previous_response_id` continues a
/// stored conversation (only reasoning items is a 400 the schema leaves unsaid, as a named
/// `tool_choice` missing from `tools`: the route may answer 400 to schema-valid bodies, as the
/// chat route does); text parts only; tools of
/// any type (non-function ones are dropped), function names as the task's; the choice modes;
/// `text.format`; the refused fields only as `null`/false; the task's bounds.
fn responses(doc: &mut Value) {
    let text_parts = json!({"type": "array", "items": {"anyOf": [
        {"type": "object", "required": ["type", "text"], "properties": {
            "type": {"enum": ["input_text", "output_text", "text", "summary_text"]},
            "text": {"type": "string"}}},
        {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["refusal"]}, "refusal": {"type": ["string", "null"]}}}
    ]}});
    let content = json!({"anyOf": [{"type": "null"}, {"type": "string"}, text_parts]});
    let call_id = json!({"type": "string", "minLength": 1});
    let item = json!({"anyOf": [
        {"type": "object", "required": ["role"], "properties": {
            "type": {"enum": ["message"]},
            "role": {"enum": ["user", "system", "developer", "assistant"]},
            "content": content}},
        {"type": "object", "required": ["type", "call_id", "name"], "properties": {
            "type": {"enum": ["function_call"]}, "call_id": call_id, "name": {"type": "string", "minLength": 1},
            "arguments": {"type": ["string", "null"]}}},
        {"type": "object", "required": ["type", "call_id"], "properties": {
            "type": {"enum": ["function_call_output"]}, "call_id": call_id, "output": content}},
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["reasoning"]}}}
    ]});
    let tool = json!({"anyOf": [
        {"type": "object", "required": ["type", "name"], "properties": {
            "type": {"enum": ["function"]}, "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "description": {"type": ["string", "null"]}, "parameters": {"type": ["object", "null"]},
            "strict": {"type": ["boolean", "null"]}}},
        {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "not": {"enum": ["function"]}}}}
    ]});
    let format = json!({"anyOf": [
        {"type": "null"},
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["json_schema"]},
            "name": {"type": ["string", "null"]}, "description": {"type": ["string", "null"]},
            "schema": {"type": ["object", "null"]}, "strict": {"type": ["boolean", "null"]}}}
    ]});
    for (prop, rule) in [
        ("model", json!({"pattern": NOT_BLANK})),
        (
            "input",
            json!({"anyOf": [{"type": "null"}, {"type": "string"},
                {"type": "array", "items": item}]}),
        ),
        ("tools", json!({"type": ["array", "null"], "items": tool})),
        (
            "tool_choice",
            json!({"anyOf": [{"type": "null"}, {"enum": ["auto", "none", "required"]},
                {"type": "object", "required": ["type", "name"], "properties": {
                    "type": {"enum": ["function"]}, "name": {"type": "string", "minLength": 1}}}]}),
        ),
        (
            "text",
            json!({"type": ["object", "null"], "properties": {"format": format}}),
        ),
        ("max_output_tokens", json!({"minimum": 1})),
        (
            "temperature",
            json!({"minimum": 0, "maximum": crate::admission::validate::MAX_TEMPERATURE}),
        ),
        ("top_p", json!({"minimum": 0, "maximum": 1})),
        ("background", json!({"enum": [false, null]})),
    ] {
        let p = property(doc, "ResponsesRequest", prop);
        // A rule with `anyOf` replaces the derived `type` (`Object` stands for any JSON).
        if rule.get("anyOf").is_some() {
            if let Some(m) = p.as_object_mut() {
                m.remove("type");
            }
        }
        merge(p, rule);
    }
    // The reply echoes `tool_choice` as sent: a mode or an object.
    let echoed = property(doc, "ResponseObject", "tool_choice");
    let description = echoed["description"].clone();
    *echoed =
        json!({"description": description, "anyOf": [{"type": "string"}, {"type": "object"}]});
    for prop in ["conversation", "prompt"] {
        let p = property(doc, "ResponsesRequest", prop);
        let description = p["description"].clone();
        *p = json!({"description": description, "type": "null"});
    }
    // Something to answer: input, or a stored conversation to continue; `required` needs a
    // function tool.
    schema(doc, "ResponsesRequest").insert(
        "allOf".into(),
        json!([
            {"anyOf": [
                {"required": ["input"], "properties": {"input": {"anyOf": [{"type": "string"}, {"type": "array"}]}}},
                {"required": ["previous_response_id"], "properties": {"previous_response_id": {"type": "string", "minLength": 1}}}
            ]},
            {"anyOf": [
                {"properties": {"tool_choice": {"not": {"enum": ["required"]}}}},
                {"required": ["tools"], "properties": {"tools": {"type": "array",
                    "contains": {"required": ["type"], "properties": {"type": {"enum": ["function"]}}}}}}
            ]}
        ]),
    );
    // The headers as on the OpenAI door (a header is never `null`).
    merge(
        parameter(doc, "/v1/responses", "post", "X-Llorch-Priority"),
        json!({"type": "string", "pattern": "^[ \\t]*(interactive|batch)?[ \\t]*$"}),
    );
    merge(
        parameter(doc, "/v1/responses", "post", "X-Llorch-Session"),
        json!({"type": "string", "pattern": "^[ \\t]*([A-Za-z0-9._:-]{1,128})?[ \\t]*$"}),
    );
}

/// The Messages door (`http::anthropic::to_task`, then the task rules): bounds, the content
/// block kinds, `tool_choice` `tool` names one, `any`/`tool` need a client tool, and per
/// endpoint what it needs (`max_tokens` for `/v1/messages`, not for count_tokens). A custom
/// tool's name rule is left to the 400 (the chaos fuzzing accepts 400 on these routes).
fn anthropic(doc: &mut Value) {
    for (prop, rule) in [
        ("model", json!({"pattern": NOT_BLANK})),
        ("max_tokens", json!({"minimum": 1})),
        ("messages", json!({"minItems": 1})),
        (
            "temperature",
            json!({"minimum": 0, "maximum": crate::admission::validate::MAX_TEMPERATURE}),
        ),
        ("top_p", json!({"minimum": 0, "maximum": 1})),
    ] {
        merge(property(doc, "MsgRequest", prop), rule);
    }
    // Not an object, as the derived schema says (`Value`): a string or text blocks.
    let system = property(doc, "MsgRequest", "system");
    let description = system["description"].clone();
    *system = json!({"description": description,
        "anyOf": [{"type": "null"}, {"type": "string"}, {"type": "array", "items": text_block()}]});
    // A tool result's `content` and a call's `input` are left unspecified (their forms are the
    // 400's): nested schemas there drew values so deep that schemathesis's generator failed
    // with a Python recursion error.
    let tool_result = json!({"type": "object", "required": ["type", "tool_use_id"], "properties": {
        "type": {"enum": ["tool_result"]}, "tool_use_id": {"type": "string", "minLength": 1}}});
    let tool_use = json!({"type": "object", "required": ["type", "id", "name"], "properties": {
        "type": {"enum": ["tool_use"]}, "id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1}}});
    let thinking = json!({"type": "object", "required": ["type"],
        "properties": {"type": {"enum": ["thinking", "redacted_thinking"]}}});
    // One flat list of block kinds (which role may send which is left to the 400): the nested
    // per-role form made schemathesis's coverage phase fail with a Python recursion error.
    let content = property(doc, "MsgMessage", "content");
    let description = content["description"].clone();
    *content = json!({"description": description, "anyOf": [{"type": "string"},
        {"type": "array", "minItems": 1, "items": {"anyOf": [text_block(), tool_result, tool_use, thinking]}}]});
    schema(doc, "MsgToolChoice").insert(
        "anyOf".into(),
        json!([
            {"properties": {"type": {"enum": ["auto", "any", "none"]}}},
            {"properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}, "required": ["name"]}
        ]),
    );
    schema(doc, "MsgRequest").insert(
        "allOf".into(),
        json!([{"anyOf": [
            {"properties": {"tool_choice": {"anyOf": [{"type": "null"},
                {"properties": {"type": {"enum": ["auto", "none"]}}}]}}},
            // No `not` here: schemathesis's coverage phase broke on one (a recursion error).
            {"properties": {"tools": {"type": "array", "minItems": 1,
                "contains": {"properties": {"type": {"enum": ["custom", null]}}}}},
                "required": ["tools"]}
        ]}]),
    );
    let base = doc
        .pointer("/components/schemas/MsgRequest")
        .cloned()
        .expect("openapi rule: no schema MsgRequest");
    let mut create = base.clone();
    let mut count = base;
    for (body, fields) in [
        (&mut create, &["model", "max_tokens", "messages"][..]),
        (&mut count, &["model", "messages"][..]),
    ] {
        body["required"] = json!(fields);
    }
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .expect("openapi rule: no schemas");
    schemas.remove("MsgRequest");
    schemas.insert("MsgCreateRequest".into(), create);
    schemas.insert("MsgCountTokensRequest".into(), count);
    for (path, name) in [
        ("/v1/messages", "MsgCreateRequest"),
        ("/v1/messages/count_tokens", "MsgCountTokensRequest"),
    ] {
        let ptr = format!(
            "/paths/{}/post/requestBody/content/application~1json/schema",
            path.replace('/', "~1")
        );
        *doc.pointer_mut(&ptr)
            .unwrap_or_else(|| panic!("openapi rule: no JSON body of POST {path}")) =
            json!({"$ref": format!("#/components/schemas/{name}")});
    }
    merge(
        parameter(doc, "/v1/messages", "post", "X-Llorch-Priority"),
        json!({"type": "string", "pattern": "^[ \\t]*(interactive|batch)?[ \\t]*$"}),
    );
    merge(
        parameter(doc, "/v1/messages", "post", "X-Llorch-Session"),
        json!({"type": "string", "pattern": "^[ \\t]*([A-Za-z0-9._:-]{1,128})?[ \\t]*$"}),
    );
}

/// An Anthropic text block.
fn text_block() -> Value {
    json!({"type": "object", "required": ["type", "text"],
        "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}}})
}

fn merge(target: &mut Value, rule: Value) {
    if let (Value::Object(t), Value::Object(r)) = (target, rule) {
        t.extend(r);
    }
}

fn schema<'a>(doc: &'a mut Value, name: &str) -> &'a mut Map<String, Value> {
    doc.pointer_mut(&format!("/components/schemas/{name}"))
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("openapi rule: no schema {name}"))
}

fn property<'a>(doc: &'a mut Value, schema: &str, prop: &str) -> &'a mut Value {
    doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{prop}"))
        .unwrap_or_else(|| panic!("openapi rule: no property {schema}.{prop}"))
}

fn parameter<'a>(doc: &'a mut Value, path: &str, method: &str, name: &str) -> &'a mut Value {
    let ptr = format!("/paths/{}/{method}/parameters", path.replace('/', "~1"));
    doc.pointer_mut(&ptr)
        .and_then(Value::as_array_mut)
        .and_then(|ps| ps.iter_mut().find(|p| p["name"] == name))
        .map(|p| &mut p["schema"])
        .unwrap_or_else(|| panic!("openapi rule: no parameter {name} of {method} {path}"))
}

/// `int32`/`int64` with `minimum: 0` (how utoipa writes `u32`, `u64`, `usize`) become `int64`
/// with their real `maximum`.
fn unsigned_ranges(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let unsigned = m.get("minimum").and_then(Value::as_u64) == Some(0);
            let max = match m.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => Some(u64::from(u32::MAX)),
                Some("int64") if unsigned => Some(crate::admission::validate::MAX_WIRE_INT),
                _ => None,
            };
            if let Some(max) = max {
                // `int64` for both: its range holds 2^32-1, and a client needs the format to
                // send integers (not `3.0`, which serde refuses for an integer field).
                m.insert("format".into(), "int64".into());
                m.entry("maximum").or_insert(max.into());
            }
            m.values_mut().for_each(unsigned_ranges);
        }
        Value::Array(a) => a.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}

/// The bearer scheme, required everywhere but on the loopback-open routes (whose operations
/// say `security: [{}, {bearer: []}]` themselves).
fn security(doc: &mut Value) {
    if let Some(c) = doc.get_mut("components").and_then(Value::as_object_mut) {
        c.insert(
            "securitySchemes".into(),
            json!({"bearer": {"type": "http", "scheme": "bearer",
                "description": "The daemon's AUTH_TOKEN as `Authorization: Bearer <token>`. Loopback callers need none for /health and /metrics (and none anywhere with AUTH_OPTIONAL=true or without a configured token)."}}),
        );
    }
    if let Some(d) = doc.as_object_mut() {
        d.insert("security".into(), json!([{"bearer": []}]));
    }
    // Every operation can answer 401 (a wrong token is refused even where none is needed);
    // an operation that documents its own 401 keeps it.
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, methods) in paths.iter_mut() {
        // The doors' paths refuse in their own error shape (`auth::require_token`).
        let body = if crate::http::anthropic::is_messages_path(path) {
            "AnthropicErrorBody"
        } else if crate::http::openai::is_openai_path(path) {
            "OaiErrorBody"
        } else {
            "ErrorEnvelope"
        };
        for op in methods
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                r.entry("401").or_insert_with(|| {
                    json!({"description": "Missing or bad token (`MISSING_TOKEN`, `BAD_TOKEN`)",
                        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}})
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_integers_get_their_real_range() {
        let mut v = json!({"a": {"type": "integer", "format": "int64", "minimum": 0},
            "b": [{"type": ["integer", "null"], "format": "int32", "minimum": 0, "maximum": 9}],
            "c": {"type": "integer", "format": "int64"}});
        unsigned_ranges(&mut v);
        assert_eq!(v["a"]["format"], "int64");
        assert_eq!(v["a"]["maximum"], json!(i64::MAX));
        assert_eq!(v["b"][0]["format"], "int64");
        assert_eq!(v["b"][0]["maximum"], 9, "an explicit bound stays");
        assert_eq!(v["c"]["format"], "int64", "signed stays");
    }

    #[test]
    fn the_id_pattern_is_the_validator() {
        // The pattern describes `valid_id` exactly: same alphabet, same lengths.
        assert_eq!(ID_PATTERN, "^[A-Za-z0-9._:-]{1,128}$");
        use crate::admission::validate::valid_id;
        assert!(valid_id("a.b_c:d-1") && valid_id(&"x".repeat(128)));
        assert!(!valid_id("") && !valid_id(&"x".repeat(129)) && !valid_id("a/b"));
    }
}
