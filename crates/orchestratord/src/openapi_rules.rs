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
            json!({"pattern": "^(/|file://|https?://[^/?#\\s]|hf:)[^\\u0000-\\u001f\\u007f-\\u009f]*$"}),
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
    let task = schema(doc, "TaskRequest");
    task.insert(
        "allOf".into(),
        json!([
            {"anyOf": [
                {"properties": {"workload": {"enum": ["completion"]}, "prompt": {"type": "string"},
                    "messages": {"type": "null"}}, "required": ["prompt"]},
                {"properties": {"workload": {"enum": ["chat"]}, "messages": {"type": "array", "minItems": 1},
                    "prompt": {"type": "null"}}, "required": ["workload", "messages"]}
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
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|m| m.values_mut())
    {
        if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
            r.entry("401").or_insert_with(|| {
                json!({"description": "Missing or bad token (`MISSING_TOKEN`, `BAD_TOKEN`)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}})
            });
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
