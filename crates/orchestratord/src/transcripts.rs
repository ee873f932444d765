//! Each finished task's `transcript` artifact: request (token redacted), every event, engine,
//! model and digest, so a run can be audited or replayed (see docs/STATE.md).

use std::sync::Arc;

use orch_pool_manager::PoolManager;
use orch_store::{ArtifactInput, ArtifactKind, Store};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::storage::{blocking, store_err};
use crate::task::{EngineOutcome, Frame, Task};

/// Writes transcripts into the artifact store.
pub struct Transcripts {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    /// Redacted from everything written.
    secrets: Vec<String>,
}

impl Transcripts {
    /// A writer that redacts `token`.
    pub fn new(store: Arc<Store>, catalog: Arc<Catalog>, token: Option<&str>) -> Self {
        Self {
            store,
            catalog,
            secrets: token.into_iter().map(str::to_owned).collect(),
        }
    }

    fn redact(&self, s: &str) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        orch_store::redact_text(s, &secrets)
    }

    /// Writes `task`'s transcript artifact from its frames (after its terminal event) and
    /// records the artifact's id on the task. Returns whether one was written.
    pub async fn write(
        &self,
        pools: &PoolManager,
        task: &Arc<Task>,
        frames: &[Arc<Frame>],
    ) -> bool {
        let st = task.status();
        // Each frame's JSON goes in as it was sent (checked, not parsed into a tree: a
        // transcript holds one per token).
        let events: Vec<EventRecord<'_>> = frames
            .iter()
            .map(|f| EventRecord {
                event: f.name,
                data: serde_json::from_str::<&RawValue>(&f.data)
                    .map_or_else(|_| RecordData::Text(&f.data), RecordData::Json),
            })
            .collect();
        let parsed = |name: &str| {
            frames
                .iter()
                .find(|f| f.name == name)
                .and_then(|f| serde_json::from_str::<serde_json::Value>(&f.data).ok())
        };
        let started = parsed("started");
        let end = parsed("end");
        let outcome = task.ext.outcome();
        let pool = pools.pool(&task.pool_id);
        let engine_version = outcome
            .as_ref()
            .map(|o| o.engine_version.clone())
            .or_else(|| {
                started
                    .as_ref()
                    .and_then(|s| s["engine_version"].as_str().map(str::to_owned))
            })
            .or_else(|| pool.map(|p| p.engine_version()))
            .unwrap_or_else(|| "unknown".into());
        let model_path = pool.and_then(|p| p.config().model.clone());
        let catalog = model_path
            .as_deref()
            .and_then(|path| self.catalog.by_path(path));
        let digest = catalog.as_ref().and_then(|m| {
            m.digest.clone().or_else(|| {
                m.last_verified
                    .as_ref()
                    .filter(|v| v.ok)
                    .map(|v| v.computed_digest.clone())
            })
        });
        let request = serde_json::to_string(&task.req)
            .ok()
            .map(|s| self.redact(&s))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        let doc = serde_json::json!({
            "format": "llama-orch.transcript.v1",
            "task_id": task.id,
            "correlation_id": task.correlation_id,
            "session_id": task.req.session_id,
            "state": st.state,
            "pool_id": task.pool_id,
            "replica_id": st.replica_id,
            "engine": task.engine,
            "engine_version": engine_version,
            "model": {
                "model_ref": task.req.model_ref,
                "path": model_path,
                "catalog_id": catalog.as_ref().map(|m| m.id.clone()),
                "digest": digest,
            },
            "seed": task.req.seed,
            "determinism": task.req.determinism,
            "sampler_profile_version": task.req.sampler_profile_version,
            "tokens_out": end.as_ref().and_then(|e| e["tokens_out"].as_u64()).unwrap_or(st.tokens_out),
            "decode_ms": end.as_ref().and_then(|e| e["decode_ms"].as_u64()),
            "finish_reason": end.as_ref().and_then(|e| e["finish_reason"].as_str().map(str::to_owned)),
            "engine_slot": outcome.as_ref().and_then(|o| o.slot),
            "kv_warmth": outcome.as_ref().and_then(EngineOutcome::kv_warmth),
            "error": st.error,
            "submitted_ms": st.submitted_ms,
            "started_ms": st.started_ms,
            "finished_ms": st.finished_ms,
            "request": request,
        });
        let doc = TranscriptDoc { head: doc, events };
        let mut text = match serde_json::to_string_pretty(&doc) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "cannot encode the transcript");
                return false;
            }
        };
        for s in &self.secrets {
            if !s.is_empty() {
                text = text.replace(s.as_str(), orch_store::redact::TEXT_MARK);
            }
        }
        let state = match st.state {
            orch_api_types::TaskState::Completed => "completed",
            orch_api_types::TaskState::Failed => "failed",
            orch_api_types::TaskState::Canceled => "canceled",
            orch_api_types::TaskState::Queued | orch_api_types::TaskState::Running => "unfinished",
        };
        let mut tags = vec![format!("pool:{}", task.pool_id), format!("state:{state}")];
        for (prefix, v) in [
            ("task:", Some(&task.id)),
            ("session:", task.req.session_id.as_ref()),
        ] {
            if let Some(v) = v {
                if prefix.len() + v.len() <= orch_store::artifacts::MAX_TAG_LEN {
                    tags.push(format!("{prefix}{v}"));
                }
            }
        }
        let input = ArtifactInput {
            kind: ArtifactKind::Transcript,
            content: text.into_bytes(),
            tags,
            parent: None,
            metadata: serde_json::json!({
                "task_id": task.id,
                "pool_id": task.pool_id,
                "session_id": task.req.session_id,
                "state": state,
            }),
        };
        let store = self.store.clone();
        match blocking(move || store.artifacts().put(input, now_ms()).map_err(store_err)).await {
            Ok(meta) => {
                tracing::debug!(task_id = %task.id, artifact_id = %meta.id, "transcript written");
                task.ext.set_transcript_artifact(meta.id);
                true
            }
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e.body.message, "transcript not written");
                false
            }
        }
    }
}

/// A transcript: its fields, then every event.
#[derive(Serialize)]
struct TranscriptDoc<'a> {
    #[serde(flatten)]
    head: serde_json::Value,
    events: Vec<EventRecord<'a>>,
}

/// One event of a transcript.
#[derive(Serialize)]
struct EventRecord<'a> {
    event: &'a str,
    data: RecordData<'a>,
}

/// An event's payload: its JSON as sent, or (never in practice) the text that was not JSON.
#[derive(Serialize)]
#[serde(untagged)]
enum RecordData<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}
