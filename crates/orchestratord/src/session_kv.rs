//! Sessions keep their warmth across an on_demand pool's unload (docs/STATE.md, "Sessions"):
//! before the pool's llama-server stops (an eviction, an idle or a requested unload) each live
//! session pinned to one of its slots has that slot's KV saved to a file
//! (`POST /slots/{id}?action=save`, in the engine's `--slot-save-path`); the session's next
//! task on the pool restores it into the same slot before generating, so the engine reuses the
//! cached prompt instead of evaluating it again.
//!
//! Best effort by design: a save or restore that fails costs only warmth (the task runs cold),
//! never the task. The shelf lives in memory; a daemon restart starts the engines cold, so the
//! files of an earlier run are removed at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use orch_pool_manager::{Pool, UnloadHook, UnloadingEngine};
use orch_store::Store;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::storage::{blocking, store_err};

/// A session's KV, saved when its pool unloaded.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedKv {
    /// The pool whose engine wrote it.
    pub pool_id: String,
    /// The model file that engine served: only an engine of the same model can read it.
    pub model: String,
    /// The slot it came from, and goes back into.
    pub slot: u32,
    /// File name in the engine's slot directory.
    pub file: String,
}

/// Saved KV files by session id.
pub struct KvShelf {
    store: Arc<Store>,
    /// Where the daemon's launched llama-servers keep slot files (`--slot-save-path`).
    dir: PathBuf,
    saved: Mutex<HashMap<String, SavedKv>>,
}

/// The file name of `session_id`'s saved KV: a digest, since session ids may hold characters
/// llama-server refuses in file names.
pub fn kv_file_name(session_id: &str) -> String {
    let d = Sha256::digest(session_id.as_bytes());
    format!("kv-{}.bin", hex::encode(&d[..16]))
}

impl KvShelf {
    /// An empty shelf over the store's `slots/` directory; removes saved KV files an earlier
    /// run left there.
    pub fn new(store: Arc<Store>) -> Self {
        let dir = store.data_dir().join("slots");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("kv-") && name.ends_with(".bin") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Self {
            store,
            dir,
            saved: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SavedKv>> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The KV saved for `session_id` by `pool_id`'s engine, handed to the session's next task
    /// there (once), as long as the pool still serves `model` (a reload may have changed it).
    pub fn take(&self, session_id: &str, pool_id: &str, model: &str) -> Option<SavedKv> {
        let mut g = self.lock();
        if g.get(session_id)
            .is_some_and(|s| s.pool_id == pool_id && s.model == model)
        {
            return g.remove(session_id);
        }
        None
    }

    /// Removes a saved file once read back, or once its session is gone.
    pub fn discard(&self, file: &str) {
        let _ = std::fs::remove_file(self.dir.join(file));
    }

    /// The session ended (evicted, expired): its saved KV is of no use any more.
    pub fn forget(&self, session_id: &str) {
        if let Some(s) = self.lock().remove(session_id) {
            self.discard(&s.file);
        }
    }
}

#[async_trait::async_trait]
impl UnloadHook for KvShelf {
    async fn before_stop(&self, pool: &Pool, engines: Vec<UnloadingEngine>) {
        let pool_id = pool.id();
        let model = pool.config().model.clone().unwrap_or_default();
        let store = self.store.clone();
        let sessions = match blocking(move || store.sessions().list().map_err(store_err)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pool_id, error = %e.body.message, "cannot list sessions to save their KV before the unload");
                return;
            }
        };
        let now = now_ms();
        // Per (replica, slot), the live session that used it last: the slot holds its KV.
        let mut owners: HashMap<(String, u32), (u64, String)> = HashMap::new();
        for s in sessions.iter().filter(|s| !s.is_expired(now)) {
            let (Some(rid), Some(slot)) = (s.replica_id.clone(), s.slot) else {
                continue;
            };
            if !engines.iter().any(|(id, _)| *id == rid) {
                continue;
            }
            let e = owners
                .entry((rid, slot))
                .or_insert((s.last_used_ms, s.id.clone()));
            if s.last_used_ms > e.0 {
                *e = (s.last_used_ms, s.id.clone());
            }
        }
        for ((rid, slot), (_, sid)) in owners {
            let Some((_, adapter)) = engines.iter().find(|(id, _)| *id == rid) else {
                continue;
            };
            let file = kv_file_name(&sid);
            match adapter.save_slot(slot, &file).await {
                Ok(f) => {
                    tracing::info!(pool_id, session_id = %sid, replica_id = %rid, slot, tokens = f.tokens, bytes = f.bytes, took_ms = f.ms, "session KV saved before the unload");
                    self.lock().insert(
                        sid,
                        SavedKv {
                            pool_id: pool_id.to_owned(),
                            model: model.clone(),
                            slot,
                            file,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(pool_id, session_id = %sid, replica_id = %rid, slot, error = %e, "saving the session's KV failed; its next turn starts cold");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_and_distinct() {
        let a = kv_file_name("agent:1/../x");
        assert!(a.starts_with("kv-") && a.ends_with(".bin"), "{a}");
        assert!(a[3..a.len() - 4].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, kv_file_name("agent:2"));
        assert_eq!(a, kv_file_name("agent:1/../x"));
    }

    #[test]
    fn a_saved_kv_goes_to_its_pool_once_and_is_forgotten_with_its_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Default::default()).unwrap());
        std::fs::create_dir_all(dir.path().join("slots")).unwrap();
        let left = dir.path().join("slots").join("kv-00.bin");
        std::fs::write(&left, b"old").unwrap();
        let shelf = KvShelf::new(store);
        assert!(!left.exists(), "an earlier run's file is removed");
        let s = SavedKv {
            pool_id: "a".into(),
            model: "/m/one.gguf".into(),
            slot: 1,
            file: kv_file_name("s"),
        };
        shelf.lock().insert("s".into(), s.clone());
        assert_eq!(
            shelf.take("s", "b", "/m/one.gguf"),
            None,
            "another pool's engine"
        );
        assert_eq!(
            shelf.take("s", "a", "/m/two.gguf"),
            None,
            "the pool now serves another model"
        );
        assert_eq!(shelf.take("s", "a", "/m/one.gguf"), Some(s.clone()));
        assert_eq!(shelf.take("s", "a", "/m/one.gguf"), None, "once");
        let path = dir.path().join("slots").join(&s.file);
        std::fs::write(&path, b"kv").unwrap();
        shelf.lock().insert("s".into(), s);
        shelf.forget("s");
        assert!(!path.exists() && shelf.lock().get("s").is_none());
    }
}
