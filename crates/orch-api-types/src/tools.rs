//! What a task may ask for beyond plain text: tools the model may call, structured output and
//! log probabilities. The shapes are OpenAI's, so the OpenAI door relays them unchanged and
//! native clients see the same JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A tool the model may call: `{"type": "function", "function": {...}}`. Fields OpenAI does
/// not define are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    #[schema(pattern = "^function$")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionDef {
    /// Its name (what the model's call names): 1-64 of `a-z A-Z 0-9 _ -`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of its arguments (an object schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// OpenAI's strict schema adherence; engines that constrain by grammar always are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call: `none`, `auto`, `required`, or
/// `{"type": "function", "function": {"name": …}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// This function and no other.
    Named(NamedToolChoice),
}

impl ToolChoice {
    /// Whether the model may answer with tool calls.
    pub fn allows_calls(&self) -> bool {
        !matches!(self, Self::Mode(m) if m == "none")
    }
}

/// `tool_choice` naming one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NamedToolChoice {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionName,
}

/// A function's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FunctionName {
    /// The name.
    pub name: String,
}

/// The form of the output: free text, any JSON object, or JSON matching a schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// One JSON object, any keys.
    JsonObject,
    /// JSON matching `json_schema.schema`.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    /// A name for the schema (OpenAI requires one; engines ignore it).
    #[serde(default)]
    pub name: String,
    /// What the output is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON schema; absent means any JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// OpenAI's strict adherence; grammar-constrained engines always adhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A tool call of an assistant message (in a conversation's history).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ToolCall {
    /// The call's id; the `tool` message answering it names it as `tool_call_id`.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function called.
    pub function: FunctionCall,
}

/// A function call: name and arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, a JSON object as text exactly as the model wrote it.
    pub arguments: String,
}

/// A piece of a tool call as it streams (OpenAI's `delta.tool_calls[]`): the first piece of a
/// call carries `id`, `type` and `function.name`; later ones append to `function.arguments`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ToolCallDelta {
    /// Which call of the reply this piece belongs to (0, 1, …).
    pub index: u32,
    /// The call's id (first piece).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first piece).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and argument text.
    pub function: FunctionCallDelta,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCallDelta {
    /// The function's name (first piece).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Argument text to append, exactly as the engine sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// The log probability of one generated token and of the most likely alternatives at its
/// position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenLogprob {
    /// The token's text (an incomplete UTF-8 sequence is cut off; `bytes` has all of it).
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f64,
    /// Its UTF-8 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
    /// The most likely tokens at this position, most likely first (as many as asked for).
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative of [`TokenLogprob::top_logprobs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f64,
    /// Its UTF-8 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
}

/// `logit_bias`: token id (as a string) → bias added to its logit, -100 ..= 100.
pub type LogitBias = BTreeMap<String, f32>;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ChatMessage;

    #[test]
    fn openai_shapes_round_trip() {
        let c: ToolChoice = serde_json::from_value(json!("required")).unwrap();
        assert_eq!(c, ToolChoice::Mode("required".into()));
        assert!(c.allows_calls());
        assert!(!ToolChoice::Mode("none".into()).allows_calls());
        let named = json!({"type": "function", "function": {"name": "f"}});
        let c: ToolChoice = serde_json::from_value(named.clone()).unwrap();
        assert!(matches!(&c, ToolChoice::Named(n) if n.function.name == "f"));
        assert_eq!(serde_json::to_value(&c).unwrap(), named);
        let f: ResponseFormat = serde_json::from_value(json!({"type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}}))
        .unwrap();
        assert!(
            matches!(&f, ResponseFormat::JsonSchema { json_schema } if json_schema.strict == Some(true))
        );
        assert_eq!(
            serde_json::to_value(ResponseFormat::JsonObject).unwrap(),
            json!({"type": "json_object"})
        );
        assert!(serde_json::from_value::<ResponseFormat>(json!({"type": "yaml"})).is_err());
        let d = ToolCallDelta {
            index: 1,
            function: FunctionCallDelta {
                arguments: Some("}".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"index":1,"function":{"arguments":"}"}}"#
        );
    }

    #[test]
    fn messages_need_content_unless_they_call_tools() {
        let call =
            json!([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
        let m: ChatMessage =
            serde_json::from_value(json!({"role": "assistant", "tool_calls": call})).unwrap();
        assert_eq!(m.content, "");
        assert!(serde_json::from_value::<ChatMessage>(json!({"role": "user"})).is_err());
        assert!(serde_json::from_value::<ChatMessage>(
            json!({"role": "user", "content": "x", "typo": 1})
        )
        .is_err());
        let plain: ChatMessage =
            serde_json::from_value(json!({"role": "user", "content": "x"})).unwrap();
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"role":"user","content":"x"}"#
        );
    }
}
