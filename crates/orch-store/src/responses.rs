//! Stored OpenAI Responses (`POST /v1/responses` with `store`): the response object as the
//! client saw it and the conversation it ends (its input and its reply as chat messages), so
//! that a later request's `previous_response_id` continues it and `GET /v1/responses/{id}`
//! returns it, also after a restart. Both are JSON text the daemon writes and reads; the
//! store only keeps them, bounded by age and count ([`Responses::prune`]).

use rusqlite::{params, OptionalExtension};

use crate::error::{to_i64, to_u64, DbContext, Result};
use crate::Store;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// `resp_…`.
    pub id: String,
    /// When it was stored (ms since the Unix epoch).
    pub created_ms: u64,
    /// The response object, JSON.
    pub response: String,
    /// The conversation up to and including the reply, JSON.
    pub history: String,
}

/// Stored responses; get it with [`Store::responses`].
pub struct Responses<'a> {
    pub(crate) store: &'a Store,
}

impl Responses<'_> {
    /// Stores `r`, replacing one with the same id.
    pub fn put(&self, r: &StoredResponse) -> Result<()> {
        let created = to_i64(r.created_ms, "created_ms")?;
        self.store
            .conn()
            .execute(
                "INSERT OR REPLACE INTO responses (id, created_ms, response, history) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![r.id, created, r.response, r.history],
            )
            .db("storing a response")?;
        Ok(())
    }

    /// The response `id` if it was stored at or after `since_ms` (older ones are expired even
    /// before [`Responses::prune`] removes them).
    pub fn get(&self, id: &str, since_ms: u64) -> Result<Option<StoredResponse>> {
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        self.store
            .conn()
            .query_row(
                "SELECT id, created_ms, response, history FROM responses \
                 WHERE id = ?1 AND created_ms >= ?2",
                params![id, since],
                |row| {
                    Ok(StoredResponse {
                        id: row.get(0)?,
                        created_ms: to_u64(row.get(1)?),
                        response: row.get(2)?,
                        history: row.get(3)?,
                    })
                },
            )
            .optional()
            .db("reading a response")
    }

    /// Deletes the response `id`; whether it was there.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let n = self
            .store
            .conn()
            .execute("DELETE FROM responses WHERE id = ?1", [id])
            .db("deleting a response")?;
        Ok(n > 0)
    }

    /// Deletes the responses stored before `before_ms`, then the oldest beyond the newest
    /// `keep`; how many went.
    pub fn prune(&self, before_ms: u64, keep: u64) -> Result<usize> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let conn = self.store.conn();
        let old = conn
            .execute("DELETE FROM responses WHERE created_ms < ?1", [before])
            .db("expiring stored responses")?;
        let over = conn
            .execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses \
                 ORDER BY created_ms DESC, id DESC LIMIT -1 OFFSET ?1)",
                [keep],
            )
            .db("bounding stored responses")?;
        Ok(old + over)
    }

    /// How many responses are stored.
    pub fn count(&self) -> Result<u64> {
        let n: i64 = self
            .store
            .conn()
            .query_row("SELECT count(*) FROM responses", [], |r| r.get(0))
            .db("counting stored responses")?;
        Ok(to_u64(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn rec(id: &str, created_ms: u64) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            created_ms,
            response: format!("{{\"id\":\"{id}\"}}"),
            history: "[]".into(),
        }
    }

    #[test]
    fn put_get_delete_prune_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let r = store.responses();
        for (i, id) in ["resp_a", "resp_b", "resp_c", "resp_d"].iter().enumerate() {
            r.put(&rec(id, 1000 + i as u64)).unwrap();
        }
        assert_eq!(r.get("resp_b", 0).unwrap(), Some(rec("resp_b", 1001)));
        assert_eq!(r.get("resp_b", 1002).unwrap(), None, "expired by age");
        assert!(r.delete("resp_b").unwrap());
        assert!(!r.delete("resp_b").unwrap());
        assert_eq!(r.get("resp_b", 0).unwrap(), None);
        // resp_a is too old; of c and d only the newest one is kept.
        assert_eq!(r.prune(1001, 1).unwrap(), 2);
        assert_eq!(r.count().unwrap(), 1);
        drop(store);
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            store.responses().get("resp_d", 0).unwrap(),
            Some(rec("resp_d", 1003)),
            "kept across a reopen"
        );
    }
}
