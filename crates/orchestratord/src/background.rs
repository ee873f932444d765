//! The daemon's background work, tied to one cancellation token and one task tracker so that
//! shutdown stops the loops and waits for the per-task follow-ups (charges, transcripts)
//! instead of leaving detached tasks behind.

use std::sync::Arc;
use std::time::Duration;

use orch_pool_manager::PoolManager;
use orch_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::sessions::SessionAccounts;
use crate::storage::{blocking, store_err};
use crate::task::{Task, TaskTable};
use crate::transcripts::Transcripts;

/// How often expired sessions are swept.
const EXPIRY_EVERY: Duration = Duration::from_millis(500);
/// How often artifact retention runs (also shortly after every artifact write).
const GC_EVERY: Duration = Duration::from_secs(60);
/// How long a burst of artifact writes may go on before the GC that the first one asked for.
const GC_SETTLE: Duration = Duration::from_millis(200);
/// How often finished tasks past their retention are dropped from the task table.
const TASK_GC_EVERY: Duration = Duration::from_secs(5);

/// Artifact retention limits.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Total artifact bytes kept.
    pub max_bytes: Option<u64>,
    /// Oldest artifact kept, in ms.
    pub max_age_ms: Option<u64>,
}

/// The loops and follow-ups, and the means to stop them.
#[derive(Debug, Default)]
pub struct Background {
    cancel: CancellationToken,
    tracker: TaskTracker,
    gc_now: Notify,
}

/// What the loops work on.
pub struct LoopDeps {
    /// Session expiry.
    pub sessions: Arc<SessionAccounts>,
    /// Engines whose slots expired sessions free.
    pub pools: Arc<PoolManager>,
    /// Artifact GC.
    pub store: Arc<Store>,
    /// Retention of finished tasks.
    pub tasks: Arc<TaskTable>,
    /// Artifact retention.
    pub retention: Retention,
}

impl Background {
    /// Asks the artifact GC to run soon (after an artifact write).
    pub fn poke_gc(&self) {
        self.gc_now.notify_one();
    }

    /// Starts the session-expiry, artifact-GC and task-retention loops.
    pub fn spawn_loops(self: &Arc<Self>, deps: LoopDeps) {
        let LoopDeps {
            sessions,
            pools,
            store,
            tasks,
            retention,
        } = deps;
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(EXPIRY_EVERY) => {}
                }
                sessions.prune_tombstones();
                sessions.expire_once(&pools).await;
            }
        });
        let me = self.clone();
        self.tracker.spawn(async move {
            loop {
                gc_artifacts(&store, retention).await;
                tokio::select! {
                    _ = me.cancel.cancelled() => return,
                    _ = tokio::time::sleep(GC_EVERY) => {}
                    _ = me.gc_now.notified() => {
                        tokio::select! {
                            _ = me.cancel.cancelled() => return,
                            _ = tokio::time::sleep(GC_SETTLE) => {}
                        }
                    }
                }
            }
        });
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(TASK_GC_EVERY) => {}
                }
                tasks.gc();
            }
        });
    }

    /// Runs `work` until it ends or shutdown begins.
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// Follows an admitted task to its end, then charges its session and writes its
    /// transcript (which `GET /v1/tasks/{id}` then links).
    pub fn after_end(
        self: &Arc<Self>,
        task: Arc<Task>,
        sessions: Arc<SessionAccounts>,
        transcripts: Arc<Transcripts>,
        pools: Arc<PoolManager>,
    ) {
        let me = self.clone();
        self.tracker.spawn(async move {
            task.clone().finished().await;
            let frames = task.frames();
            sessions.settle(&pools, &task).await;
            if transcripts.write(&pools, &task, &frames).await {
                me.poke_gc();
            }
        });
    }

    /// Stops the loops and waits (at most `max`) for the follow-ups of finished tasks.
    pub async fn shutdown(&self, max: Duration) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(max, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.tracker.len(),
                "shutdown: background work still running; some charges or transcripts may be missing"
            );
        }
    }
}

async fn gc_artifacts(store: &Arc<Store>, retention: Retention) {
    let store = store.clone();
    if let Err(e) = blocking(move || {
        store
            .artifacts()
            .gc(now_ms(), retention.max_bytes, retention.max_age_ms)
            .map_err(store_err)
    })
    .await
    {
        tracing::warn!(error = %e.body.message, "artifact GC failed");
    }
}
