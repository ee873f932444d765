//! Properties of GPU placement, and the mixed 24 GB + 12 GB example.

use orch_core::placement::{place, CandidateVerdict, GpuSnapshot, PlacementRequest, Reservation};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn gpu(index: u32, name: &str, total_gib: u64, free_bytes: u64) -> GpuSnapshot {
    GpuSnapshot {
        index,
        name: name.to_owned(),
        total_bytes: total_gib * GIB,
        free_bytes,
        utilization_pct: None,
        free_slots: 1,
    }
}

/// A 24 GB and a 12 GB card; models are placed one after another, each load reserving its
/// memory until NVML would show it.
#[test]
fn mixed_24_and_12_gb() {
    let gpus = [
        gpu(0, "RTX 3090", 24, 23 * GIB + GIB / 2),
        gpu(1, "RTX 3060", 12, 11 * GIB + GIB / 2),
    ];
    let mut ledger: Vec<Reservation> = Vec::new();
    let mut place_model = |need: u64| {
        let req = PlacementRequest {
            need_bytes: need,
            headroom_bytes: GIB,
            mask: None,
        };
        let d = place(&gpus, &ledger, &req);
        if let Some(dev) = d.chosen {
            ledger.push(Reservation {
                device: dev,
                bytes: need,
            });
        }
        d
    };

    // The largest model only fits on the 24 GB card.
    let big = place_model(20 * GIB);
    assert_eq!(big.chosen, Some(0), "{}", big.reason);
    assert_eq!(big.candidates[0].verdict, CandidateVerdict::Chosen);
    assert!(matches!(
        big.candidates[1].verdict,
        CandidateVerdict::TooSmall { .. }
    ));

    // The next one goes where it still fits: the 12 GB card (the 3090 has 2.5 GiB left).
    let mid = place_model(8 * GIB);
    assert_eq!(mid.chosen, Some(1), "{}", mid.reason);
    assert_eq!(mid.candidates[0].reserved_bytes, 20 * GIB);

    // One that fits nowhere: no choice, and the reason names the best card and the shortfall.
    let huge = place_model(13 * GIB);
    assert_eq!(huge.chosen, None);
    assert!(
        huge.reason
            .starts_with("no GPU fits 13.0 GiB: best is GPU 0 'RTX 3090'"),
        "{}",
        huge.reason
    );
    assert!(huge.reason.contains("2.5 GiB available"), "{}", huge.reason);
    assert!(huge.reason.contains("smaller quant"), "{}", huge.reason);
}

fn gpus() -> impl Strategy<Value = Vec<GpuSnapshot>> {
    prop::collection::vec((0u64..32 * GIB, 0u32..4), 0..6).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (free, slots))| GpuSnapshot {
                index: i as u32,
                name: format!("gpu{i}"),
                total_bytes: 32 * GIB,
                free_bytes: free,
                utilization_pct: None,
                free_slots: slots,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn chooses_max_available_fitting_unmasked(
        gpus in gpus(),
        reservations in prop::collection::vec((0u32..7, 0u64..8 * GIB), 0..5),
        need in 0u64..24 * GIB,
        headroom in 0u64..2 * GIB,
        mask in prop::option::of(prop::collection::vec(0u32..7, 0..4)),
    ) {
        let reservations: Vec<Reservation> = reservations
            .into_iter()
            .map(|(device, bytes)| Reservation { device, bytes })
            .collect();
        let req = PlacementRequest { need_bytes: need, headroom_bytes: headroom, mask: mask.clone() };
        let d = place(&gpus, &reservations, &req);
        prop_assert_eq!(d.candidates.len(), gpus.len());
        prop_assert!(!d.reason.is_empty());

        let allowed = |i: u32| mask.as_ref().is_none_or(|m| m.contains(&i));
        let available = |g: &GpuSnapshot| {
            let reserved: u64 = reservations.iter().filter(|r| r.device == g.index).map(|r| r.bytes).sum();
            g.free_bytes.saturating_sub(reserved).saturating_sub(headroom)
        };
        let fitting: Vec<&GpuSnapshot> =
            gpus.iter().filter(|g| allowed(g.index) && available(g) >= need).collect();

        match d.chosen {
            Some(idx) => {
                let g = gpus.iter().find(|g| g.index == idx);
                prop_assert!(g.is_some());
                let g = g.unwrap();
                // Never masked, always fits, and nothing fitting has more available.
                prop_assert!(allowed(idx));
                prop_assert!(available(g) >= need);
                for other in &fitting {
                    prop_assert!(available(other) <= available(g));
                    if available(other) == available(g) {
                        prop_assert!(other.free_slots <= g.free_slots);
                        if other.free_slots == g.free_slots {
                            prop_assert!(other.index >= g.index);
                        }
                    }
                }
                let chosen = d.candidates.iter().filter(|c| c.verdict == CandidateVerdict::Chosen).count();
                prop_assert_eq!(chosen, 1);
            }
            None => {
                prop_assert!(fitting.is_empty());
                prop_assert!(d.candidates.iter().all(|c| !matches!(c.verdict, CandidateVerdict::Chosen | CandidateVerdict::Fits)));
            }
        }
        for (c, g) in d.candidates.iter().zip(&gpus) {
            prop_assert_eq!(c.index, g.index);
            prop_assert_eq!(c.available_bytes, available(g));
            prop_assert_eq!(c.verdict == CandidateVerdict::Masked, !allowed(g.index));
        }
    }
}
