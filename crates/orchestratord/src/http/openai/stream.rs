//! OpenAI's replies from a task's events: the `chat.completion.chunk` / `text_completion`
//! chunks of a stream, usage and log probabilities.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::sse::Event;
use orch_api_types::openai::{
    ChatCompletionChunk, ChatLogprobs, ChunkChoice, ChunkDelta, CompletionUsage, TextChoice,
    TextCompletion, TextLogprobs,
};
use orch_api_types::{EndEvent, TokenEvent, TokenLogprob};
use serde::Serialize;

use super::error::error_body;
use super::task::Kind;

/// length counts as 0 prompt tokens.
pub fn usage(e: &EndEvent) -> CompletionUsage {
    let prompt = e.prompt_tokens.unwrap_or(0);
    CompletionUsage {
        completion_tokens: e.tokens_out,
        prompt_tokens: prompt,
        total_tokens: prompt.saturating_add(e.tokens_out),
    }
}

/// One SSE `data:` event holding `v` as compact JSON.
pub fn data_event<T: Serialize>(v: &T) -> Event {
    Event::default().data(compact(v))
}

/// `v` as compact JSON.
pub fn compact<T: Serialize>(v: &T) -> String {
    match serde_json::to_string(v) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize an OpenAI stream chunk");
            let body = error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: cannot serialize a stream chunk",
                "internal",
            );
            serde_json::to_string(&body).unwrap_or_default()
        }
    }
}

/// Chat `logprobs` for some tokens.
pub fn chat_logprobs(content: Vec<TokenLogprob>) -> ChatLogprobs {
    ChatLogprobs {
        content,
        refusal: None,
    }
}

/// The legacy completions `logprobs` for some tokens; `offset` is the character offset of the
/// first one in the generated text, advanced past them. Each `top_logprobs` entry includes the
/// chosen token, as OpenAI's does ("up to logprobs+1 elements").
pub fn text_logprobs(tokens: Vec<TokenLogprob>, offset: &mut u64) -> TextLogprobs {
    let mut out = TextLogprobs::default();
    for t in tokens {
        out.text_offset.push(*offset);
        *offset = offset.saturating_add(t.token.chars().count() as u64);
        let mut top: BTreeMap<String, f64> = BTreeMap::new();
        for a in t.top_logprobs {
            top.entry(a.token).or_insert(a.logprob);
        }
        top.entry(t.token.clone()).or_insert(t.logprob);
        out.top_logprobs.push(top);
        out.token_logprobs.push(t.logprob);
        out.tokens.push(t.token);
    }
    out
}

/// Tool-call pieces merged into whole calls, by index (a non-streamed reply).
/// Builds the `data:` chunks of one streamed response.
pub struct Chunks {
    /// Chat or completion chunks.
    pub kind: Kind,
    /// The reply's id (the task id).
    pub id: String,
    /// The model as the client named it.
    pub model: String,
    /// `created`, seconds since the Unix epoch.
    pub created: u64,
}

impl Chunks {
    /// A chunk adding `delta` (its `content` is a completion's `text`), ending with `finish`.
    pub fn content(&self, delta: ChunkDelta, finish: Option<&str>) -> Event {
        Event::default().data(self.content_json(delta, finish))
    }

    /// The JSON of [`Self::content`].
    pub(super) fn content_json(&self, delta: ChunkDelta, finish: Option<&str>) -> String {
        self.chunk_json(delta, finish, None, &mut 0)
    }

    /// The chunk for one `token` event; `None` when it adds nothing. `offset` is the
    /// character offset of the event's text in the whole reply (completions' `text_offset`).
    pub fn token(&self, t: TokenEvent, offset: &mut u64) -> Option<Event> {
        if t.t.is_empty() && t.tool_calls.is_none() && t.logprobs.is_none() {
            return None;
        }
        let delta = ChunkDelta {
            // A piece of a tool call carries no content, like OpenAI's.
            content: (!t.t.is_empty() || t.tool_calls.is_none()).then_some(t.t),
            role: None,
            tool_calls: t.tool_calls,
        };
        Some(Event::default().data(self.chunk_json(delta, None, t.logprobs, offset)))
    }

    fn chunk_json(
        &self,
        delta: ChunkDelta,
        finish: Option<&str>,
        logprobs: Option<Vec<TokenLogprob>>,
        offset: &mut u64,
    ) -> String {
        let finish_reason = finish.map(str::to_owned);
        match self.kind {
            Kind::Chat => compact(&ChatCompletionChunk {
                choices: vec![ChunkChoice {
                    delta,
                    finish_reason,
                    index: 0,
                    logprobs: logprobs.map(chat_logprobs),
                }],
                ..self.chat(None)
            }),
            Kind::Completion => compact(&TextCompletion {
                choices: vec![TextChoice {
                    finish_reason,
                    index: 0,
                    logprobs: logprobs.map(|l| text_logprobs(l, offset)),
                    text: delta.content.unwrap_or_default(),
                }],
                ..self.text(None)
            }),
        }
    }

    /// The last chunk before `[DONE]` with `stream_options.include_usage`: no choices.
    pub fn usage(&self, usage: CompletionUsage) -> Event {
        Event::default().data(self.usage_json(usage))
    }

    /// The JSON of [`Self::usage`].
    pub(super) fn usage_json(&self, usage: CompletionUsage) -> String {
        match self.kind {
            Kind::Chat => compact(&self.chat(Some(usage))),
            Kind::Completion => compact(&self.text(Some(usage))),
        }
    }

    fn chat(&self, usage: Option<CompletionUsage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            choices: Vec::new(),
            created: self.created,
            id: self.id.clone(),
            model: self.model.clone(),
            object: "chat.completion.chunk".into(),
            usage,
        }
    }

    fn text(&self, usage: Option<CompletionUsage>) -> TextCompletion {
        TextCompletion {
            choices: Vec::new(),
            created: self.created,
            id: self.id.clone(),
            model: self.model.clone(),
            object: "text_completion".into(),
            usage,
        }
    }
}
