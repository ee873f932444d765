//! Learned rates remembered across restarts: what the start-time model measured about a model
//! ([`ModelStats`]: decode time per slot at each concurrency, prefill fit, prompt tokens per
//! character, output lengths, forecast errors) kept per model × device kind × slots × context,
//! so a restarted daemon's first prediction rests on what the last one learned.
//!
//! [`RateBook`] is the in-memory side: the daemon loads a model's records from the store when
//! its pool starts, [`RateBook::best`] picks the record for the pool's current shape, and the
//! daemon writes [`ModelStats`] back (as JSON) as tasks finish. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eta::ModelStats;

/// What a set of rates is valid for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RateKey {
    /// The model file's digest (the daemon's content fingerprint).
    pub model_digest: String,
    /// The device kind it runs on: `cpu`, or the GPU's product name(s).
    pub device_kind: String,
    /// Engine slots per replica.
    pub slots: u32,
    /// Context size per replica.
    pub ctx: u32,
}

/// The learned rates of one model's shapes.
#[derive(Clone, Debug, Default)]
pub struct RateBook {
    entries: BTreeMap<RateKey, ModelStats>,
}

impl RateBook {
    /// Remembers `stats` for `key` (replacing what was there).
    pub fn insert(&mut self, key: RateKey, stats: ModelStats) {
        self.entries.insert(key, stats);
    }

    /// Records known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rates for `key`: the exact record, else one of the same model on the same device
    /// kind with the same slots (context size barely moves decode rates), else the same
    /// model, device kind and any slots; never another model or device kind (their rates would
    /// mislead more than the prior). Among equals, the record with the most measured tasks.
    pub fn best(&self, key: &RateKey) -> Option<&ModelStats> {
        if let Some(s) = self.entries.get(key) {
            return Some(s);
        }
        let same =
            |k: &RateKey| k.model_digest == key.model_digest && k.device_kind == key.device_kind;
        let pick = |f: &dyn Fn(&RateKey) -> bool| {
            self.entries
                .iter()
                .filter(|(k, _)| f(k))
                .max_by_key(|(_, s)| s.prefill.samples())
                .map(|(_, s)| s)
        };
        pick(&|k| same(k) && k.slots == key.slots).or_else(|| pick(&same))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str, dev: &str, slots: u32, ctx: u32) -> RateKey {
        RateKey {
            model_digest: d.into(),
            device_kind: dev.into(),
            slots,
            ctx,
        }
    }

    fn stats(n: usize, ms: f64) -> ModelStats {
        let mut s = ModelStats::default();
        for _ in 0..n {
            s.prefill.record(10.0, 5.0);
            s.decode.record(1, 100.0, 100.0 * ms);
        }
        s
    }

    #[test]
    fn best_prefers_exact_then_same_slots_then_same_device() {
        let mut b = RateBook::default();
        assert!(b.best(&key("m", "cpu", 2, 1024)).is_none());
        b.insert(key("m", "cpu", 4, 1024), stats(3, 4.0));
        b.insert(key("m", "cpu", 2, 4096), stats(1, 2.0));
        b.insert(key("other", "cpu", 2, 1024), stats(9, 9.0));
        b.insert(key("m", "NVIDIA H100", 2, 1024), stats(9, 0.5));
        let ms = |k| b.best(&k).map(|s| s.decode_ms(1));
        assert_eq!(
            ms(key("m", "cpu", 2, 1024)),
            Some(2.0),
            "same slots, other ctx"
        );
        assert_eq!(ms(key("m", "cpu", 8, 1024)), Some(4.0), "any slots");
        assert_eq!(ms(key("m", "cpu", 4, 1024)), Some(4.0), "exact");
        assert_eq!(
            ms(key("m", "RTX 3090", 2, 1024)),
            None,
            "never another device"
        );
        assert_eq!(ms(key("x", "cpu", 2, 1024)), None, "never another model");
        assert_eq!(b.len(), 4);
    }
}
