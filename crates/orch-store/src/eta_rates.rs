//! Learned rates of the start-time model, kept per model digest × device kind × slots ×
//! context (table `eta_rates`), so a restarted daemon predicts from what the last one learned.
//!
//! The rates themselves are an opaque JSON document (the daemon's
//! `orch_core::eta::ModelStats`): the store only keys, keeps and returns them, so the
//! model can grow fields without a migration. One row per key; a put replaces it.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::error::{to_i64, to_u64, DbContext, Result, StoreError};
use crate::Store;

/// Largest rates document accepted (a full record is a few tens of KiB).
pub const MAX_RATES_BYTES: usize = 1 << 20;

/// One model's learned rates on one device kind and pool shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRecord {
    /// The model file's digest (or another stable fingerprint of it).
    pub model_digest: String,
    /// `cpu`, or the GPU product name(s) the replica runs on.
    pub device_kind: String,
    /// Engine slots per replica.
    pub slots: u32,
    /// Context size per replica.
    pub ctx: u32,
    /// The rates, as JSON.
    pub rates: String,
    /// When they were last written (ms since the Unix epoch).
    pub updated_ms: u64,
}

/// Learned-rate operations (see the module docs).
pub struct EtaRates<'a> {
    pub(crate) store: &'a Store,
}

impl EtaRates<'_> {
    /// Writes (or replaces) one record; an older one (smaller `updated_ms`) never replaces a
    /// newer one, so writes that land out of order keep the newest.
    pub fn put(&self, r: &RateRecord) -> Result<()> {
        if r.rates.len() > MAX_RATES_BYTES {
            return Err(StoreError::Invalid(format!(
                "learned rates of {} bytes exceed the {MAX_RATES_BYTES}-byte limit",
                r.rates.len()
            )));
        }
        self.store
            .conn()
            .execute(
                "INSERT INTO eta_rates (model_digest, device_kind, slots, ctx, rates, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (model_digest, device_kind, slots, ctx)
                 DO UPDATE SET rates = excluded.rates, updated_ms = excluded.updated_ms
                 WHERE excluded.updated_ms >= eta_rates.updated_ms",
                params![
                    r.model_digest,
                    r.device_kind,
                    i64::from(r.slots),
                    i64::from(r.ctx),
                    r.rates,
                    to_i64(r.updated_ms, "updated_ms")?,
                ],
            )
            .db("writing learned rates")?;
        Ok(())
    }

    /// Every record of one model, most recently written first.
    pub fn for_model(&self, model_digest: &str) -> Result<Vec<RateRecord>> {
        let conn = self.store.conn();
        let mut stmt = conn
            .prepare(
                "SELECT model_digest, device_kind, slots, ctx, rates, updated_ms FROM eta_rates
                 WHERE model_digest = ?1 ORDER BY updated_ms DESC, device_kind, slots, ctx",
            )
            .db("reading learned rates")?;
        let rows = stmt
            .query_map([model_digest], |row| {
                Ok(RateRecord {
                    model_digest: row.get(0)?,
                    device_kind: row.get(1)?,
                    slots: u32::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                    ctx: u32::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                    rates: row.get(4)?,
                    updated_ms: to_u64(row.get(5)?),
                })
            })
            .db("reading learned rates")?;
        rows.collect::<rusqlite::Result<_>>()
            .db("reading learned rates")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn rec(d: &str, dev: &str, slots: u32, rates: &str, t: u64) -> RateRecord {
        RateRecord {
            model_digest: d.into(),
            device_kind: dev.into(),
            slots,
            ctx: 4096,
            rates: rates.into(),
            updated_ms: t,
        }
    }

    #[test]
    fn rates_survive_a_reopen_and_a_put_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path(), StoreOptions::default()).expect("open");
            let r = s.eta_rates();
            r.put(&rec("sha256:a", "cpu", 2, "{\"x\":1}", 10))
                .expect("put");
            r.put(&rec("sha256:a", "cpu", 2, "{\"x\":2}", 20))
                .expect("put");
            // An older write that lands late does not replace the newer record.
            r.put(&rec("sha256:a", "cpu", 2, "{\"x\":0}", 19))
                .expect("put");
            r.put(&rec("sha256:a", "NVIDIA H100", 2, "{}", 15))
                .expect("put");
            r.put(&rec("sha256:b", "cpu", 2, "{}", 30)).expect("put");
            let big = "x".repeat(MAX_RATES_BYTES + 1);
            assert!(r.put(&rec("sha256:a", "cpu", 1, &big, 1)).is_err());
        }
        let s = Store::open(dir.path(), StoreOptions::default()).expect("reopen");
        let got = s.eta_rates().for_model("sha256:a").expect("read");
        assert_eq!(
            got,
            vec![
                rec("sha256:a", "cpu", 2, "{\"x\":2}", 20),
                rec("sha256:a", "NVIDIA H100", 2, "{}", 15),
            ]
        );
        assert!(s
            .eta_rates()
            .for_model("sha256:none")
            .expect("read")
            .is_empty());
    }
}
