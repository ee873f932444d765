//! Properties of the learned-rate store (`orch_core::rates`, the persisted form of
//! `eta::ModelStats`) and of the prior for a model never measured (`orch_core::prior`).

use orch_core::eta::{ModelStats, OnTimeClass};
use orch_core::prior::{Card, ModelShape, RatePrior};
use orch_core::queue::Priority;
use orch_core::rates::{RateBook, RateKey};
use proptest::prelude::*;

/// One thing a daemon measures about a finished task.
#[derive(Clone, Debug)]
enum Sample {
    Decode(usize, f64, f64),
    Prefill(f64, f64),
    Prompt(usize, u64),
    Length(u64, u64),
    OnTime(bool, f64, f64),
    Running(f64, f64),
}

fn sample() -> impl Strategy<Value = Sample> {
    prop_oneof![
        (1usize..8, 1.0f64..500.0, 1.0f64..5000.0).prop_map(|(c, t, ms)| Sample::Decode(c, t, ms)),
        (0.0f64..2000.0, 0.0f64..3000.0).prop_map(|(x, y)| Sample::Prefill(x, y)),
        (1usize..5000, 1u64..2000).prop_map(|(c, t)| Sample::Prompt(c, t)),
        (0u64..600, 1u64..600).prop_map(|(t, m)| Sample::Length(t, m)),
        (any::<bool>(), 1.0f64..10_000.0, 1.0f64..10_000.0)
            .prop_map(|(w, p, a)| Sample::OnTime(w, p, a)),
        (1.0f64..10_000.0, 1.0f64..10_000.0).prop_map(|(p, a)| Sample::Running(p, a)),
    ]
}

/// Equal up to JSON's last-digit rounding of floats.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
}

fn learn(samples: &[Sample]) -> ModelStats {
    let mut s = ModelStats::default();
    for x in samples {
        match *x {
            Sample::Decode(c, t, ms) => s.decode.record(c, t, ms),
            Sample::Prefill(x, y) => s.prefill.record(x, y),
            Sample::Prompt(c, t) => s.record_prompt(c, t),
            Sample::Length(t, m) => s.lengths.record(t, m),
            Sample::OnTime(waits, p, a) => s
                .on_time_mut(OnTimeClass {
                    priority: Priority::Interactive,
                    waits,
                })
                .record(p, a),
            Sample::Running(p, a) => s.on_time_running.record(p, a),
        }
    }
    s
}

fn shape() -> impl Strategy<Value = ModelShape> {
    (
        1u64..200_000_000_000,
        prop::option::of(1.0f64..32.0),
        prop::option::of(1u64..200),
    )
        .prop_map(|(weight_bytes, bits_per_weight, layers)| ModelShape {
            weight_bytes,
            bits_per_weight,
            layers,
        })
}

fn card() -> impl Strategy<Value = Card> {
    prop_oneof![
        Just(Card::cpu()),
        (1e10f64..1e13).prop_map(Card::gpu),
        Just(Card::gpu_named("NVIDIA H100 80GB HBM3")),
    ]
}

proptest! {
    /// What a restarted daemon restores predicts exactly what the daemon that saved it did.
    #[test]
    fn restored_rates_predict_like_the_saved_ones(
        samples in prop::collection::vec(sample(), 0..80),
        prior in prop::option::of((shape(), card())),
    ) {
        let mut saved = learn(&samples);
        let prior = prior.map(|(m, c)| RatePrior::new(&m, &c));
        saved.set_prior(prior);
        let json = serde_json::to_string(&saved).expect("serialise");
        let mut restored: ModelStats = serde_json::from_str(&json).expect("deserialise");
        // The prior is derived anew at each start, never read back.
        prop_assert!(restored.prior().is_none());
        restored.set_prior(prior);
        for c in 1..10 {
            prop_assert!(close(saved.decode_ms(c), restored.decode_ms(c)));
        }
        for x in [0.0, 1.0, 37.0, 900.0] {
            prop_assert!(close(saved.prefill_ms(x), restored.prefill_ms(x)));
        }
        prop_assert!(close(saved.prompt_tokens(123), restored.prompt_tokens(123)));
        prop_assert!(close(saved.expected_tokens(256, None, 3), restored.expected_tokens(256, None, 3)));
        for waits in [false, true] {
            let class = OnTimeClass { priority: Priority::Interactive, waits };
            prop_assert!(close(saved.on_time(class).probability(Some(900.0), 1000.0), restored.on_time(class).probability(Some(900.0), 1000.0)));
        }
        prop_assert!(close(saved.on_time_running.probability(Some(900.0), 1000.0), restored.on_time_running.probability(Some(900.0), 1000.0)));
        prop_assert_eq!(saved.is_measured(), restored.is_measured());
    }

    /// Decode and prefill times stay positive and finite whatever was measured, measured
    /// concurrencies answer with their measurement, and with nothing measured the prior rules.
    #[test]
    fn rates_with_a_prior_stay_sane(
        samples in prop::collection::vec(sample(), 0..60),
        m in shape(),
        c in card(),
    ) {
        let mut s = learn(&samples);
        let p = RatePrior::new(&m, &c);
        s.set_prior(Some(p));
        for k in 1..12 {
            let d = s.decode_ms(k);
            prop_assert!(d.is_finite() && d > 0.0, "decode_ms({}) = {}", k, d);
            if let Some(meas) = s.decode.measured(k) {
                prop_assert_eq!(d, meas);
            }
            if !s.decode.any_measured() {
                prop_assert_eq!(d, p.decode_ms(k));
            }
        }
        let x = s.prefill_ms(100.0);
        prop_assert!(x.is_finite() && x >= 0.0);
        if s.prefill.samples() == 0 {
            prop_assert_eq!(x, p.prefill_ms(100.0));
        }
    }

    /// The prior: positive and finite; slower per slot as streams are added; slower for a
    /// bigger model on the same card; prefill grows with the prompt.
    #[test]
    fn the_prior_is_monotone(m in shape(), c in card(), grow in 1.0f64..10.0, n in 0.0f64..5000.0) {
        let p = RatePrior::new(&m, &c);
        for k in 1..16 {
            prop_assert!(p.decode_ms(k).is_finite() && p.decode_ms(k) > 0.0);
            prop_assert!(p.decode_ms(k + 1) >= p.decode_ms(k));
        }
        let bigger = ModelShape {
            weight_bytes: (m.weight_bytes as f64 * grow) as u64,
            ..m
        };
        let q = RatePrior::new(&bigger, &c);
        prop_assert!(q.decode_ms(1) >= p.decode_ms(1));
        prop_assert!(q.prefill_ms(n) >= p.prefill_ms(n));
        prop_assert!(p.prefill_ms(n + 1.0) >= p.prefill_ms(n));
    }

    /// The book never hands out another model's or another device kind's rates, and an exact
    /// key gets exactly what was stored for it.
    #[test]
    fn the_book_matches_model_and_device(
        entries in prop::collection::vec((0u8..3, 0u8..2, 1u32..4, 1u32..3, 1usize..20), 0..12),
        probe in (0u8..3, 0u8..2, 1u32..4, 1u32..3),
    ) {
        let key = |d: u8, dev: u8, slots: u32, ctx: u32| RateKey {
            model_digest: format!("m{d}"),
            device_kind: format!("dev{dev}"),
            slots,
            ctx: ctx * 1024,
        };
        let mut book = RateBook::default();
        let mut last = std::collections::HashMap::new();
        for &(d, dev, slots, ctx, n) in &entries {
            let mut s = ModelStats::default();
            // Tag each record by its per-slot decode time: d·10 + dev + n/100.
            let tag = f64::from(d) * 10.0 + f64::from(dev) + n as f64 / 100.0;
            s.decode.record(1, 100.0, 100.0 * tag);
            for _ in 0..n {
                s.prefill.record(1.0, 1.0);
            }
            book.insert(key(d, dev, slots, ctx), s);
            last.insert(key(d, dev, slots, ctx), tag);
        }
        let k = key(probe.0, probe.1, probe.2, probe.3);
        match book.best(&k) {
            Some(s) => {
                let tag = s.decode.ms_per_token(1);
                let (d, dev) = ((tag / 10.0).floor(), (tag % 10.0).floor());
                prop_assert_eq!(d, f64::from(probe.0));
                prop_assert_eq!(dev, f64::from(probe.1));
                if let Some(t) = last.get(&k) {
                    prop_assert!((tag - t).abs() < 1e-9);
                }
            }
            None => prop_assert!(!last.keys().any(|x| x.model_digest == k.model_digest
                && x.device_kind == k.device_kind)),
        }
    }
}
