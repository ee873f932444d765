//! GPU placement for engine replicas (docs/PLACEMENT.md, "The rule").
//!
//! Rule, for each GPU: `available = free − reserved − headroom` (saturating at 0), where
//! `reserved` sums the [`Reservation`]s of loads still in progress on that device (NVML does not
//! show their memory yet, so without the ledger two loads could claim the same bytes) and
//! `headroom` absorbs footprint estimates that are off. Among GPUs allowed by the mask whose
//! `available ≥ need`, the one with the most available bytes wins; ties go to more free slots,
//! then to the lower index. When none fits, the decision says which GPU came closest and by how
//! much, so the message is actionable.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::bytes::gib_or_mib as gib;

/// One GPU as the inventory sees it right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSnapshot {
    /// NVML / `CUDA_VISIBLE_DEVICES` index.
    pub index: u32,
    /// Marketing name, e.g. `NVIDIA GeForce RTX 3090`.
    pub name: String,
    /// Total VRAM in bytes.
    pub total_bytes: u64,
    /// Free VRAM in bytes, as reported.
    pub free_bytes: u64,
    /// Utilisation in percent, when known.
    pub utilization_pct: Option<u32>,
    /// Engine slots on this GPU not busy with a task (a tie-breaker).
    pub free_slots: u32,
}

/// What a replica needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    /// Estimated VRAM footprint (see [`estimate_footprint`]).
    pub need_bytes: u64,
    /// Safety margin kept free on the device beyond the estimate.
    pub headroom_bytes: u64,
    /// Allowed device indices; `None` allows every device.
    pub mask: Option<Vec<u32>>,
}

/// VRAM promised to a load still in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Device index.
    pub device: u32,
    /// Bytes promised.
    pub bytes: u64,
}

/// Why a GPU was or was not chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum CandidateVerdict {
    /// This GPU won.
    Chosen,
    /// It fits, but another GPU had more available memory (or won a tie).
    Fits,
    /// Allowed, but too little memory is available.
    TooSmall {
        /// Bytes available after reservations and headroom.
        available: u64,
    },
    /// Excluded by the device mask.
    Masked,
}

/// One GPU's line in a [`PlacementDecision`], for logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// Device index.
    pub index: u32,
    /// Device name.
    pub name: String,
    /// Free VRAM as reported.
    pub free_bytes: u64,
    /// Sum of reservations on this device.
    pub reserved_bytes: u64,
    /// `free − reserved − headroom`, saturating.
    pub available_bytes: u64,
    /// The outcome for this GPU.
    #[serde(flatten)]
    pub verdict: CandidateVerdict,
}

/// The outcome of [`place`]: the winner (if any), every candidate and a reason for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlacementDecision {
    /// Index of the chosen GPU; `None` when nothing fits.
    pub chosen: Option<u32>,
    /// Every GPU in input order with its verdict.
    pub candidates: Vec<Candidate>,
    /// Why this GPU won, or what to change when none fits.
    pub reason: String,
}

/// Chooses a GPU for a replica. Pure: the caller adds a [`Reservation`] for the winner until
/// the load finishes.
pub fn place(
    gpus: &[GpuSnapshot],
    reservations: &[Reservation],
    req: &PlacementRequest,
) -> PlacementDecision {
    let mut candidates: Vec<Candidate> = gpus
        .iter()
        .map(|g| {
            let reserved = reservations
                .iter()
                .filter(|r| r.device == g.index)
                .fold(0u64, |acc, r| acc.saturating_add(r.bytes));
            let available = g
                .free_bytes
                .saturating_sub(reserved)
                .saturating_sub(req.headroom_bytes);
            let allowed = req.mask.as_ref().is_none_or(|m| m.contains(&g.index));
            let verdict = if !allowed {
                CandidateVerdict::Masked
            } else if available >= req.need_bytes {
                CandidateVerdict::Fits
            } else {
                CandidateVerdict::TooSmall { available }
            };
            Candidate {
                index: g.index,
                name: g.name.clone(),
                free_bytes: g.free_bytes,
                reserved_bytes: reserved,
                available_bytes: available,
                verdict,
            }
        })
        .collect();

    // Higher key wins: most available, then most free slots, then lowest index.
    let key = |i: usize| {
        let c = &candidates[i];
        (
            c.available_bytes,
            gpus[i].free_slots,
            std::cmp::Reverse(c.index),
        )
    };
    let fitting: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].verdict == CandidateVerdict::Fits)
        .collect();
    let need = gib(req.need_bytes);

    if let Some(&win) = fitting.iter().max_by_key(|&&i| key(i)) {
        let c = &candidates[win];
        let mut reason = format!(
            "GPU {} '{}' chosen for {need}: {} available after {}",
            c.index,
            c.name,
            gib(c.available_bytes),
            deductions(req.headroom_bytes, c.reserved_bytes),
        );
        let _ = write!(
            reason,
            "; most available of {} fitting GPU(s)",
            fitting.len()
        );
        let chosen = Some(c.index);
        candidates[win].verdict = CandidateVerdict::Chosen;
        return PlacementDecision {
            chosen,
            candidates,
            reason,
        };
    }

    let reason = if gpus.is_empty() {
        format!("no GPU to place {need}: the inventory lists no devices; check the NVIDIA driver (nvidia-smi)")
    } else if let Some(best) = (0..candidates.len())
        .filter(|&i| candidates[i].verdict != CandidateVerdict::Masked)
        .max_by_key(|&i| key(i))
    {
        let c = &candidates[best];
        format!(
            "no GPU fits {need}: best is GPU {} '{}' with {} available after {} ({} short); \
             free VRAM, lower ctx/slots or choose a smaller quant",
            c.index,
            c.name,
            gib(c.available_bytes),
            deductions(req.headroom_bytes, c.reserved_bytes),
            gib(req.need_bytes.saturating_sub(c.available_bytes)),
        )
    } else {
        let visible: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
        let mask: Vec<String> = req.mask.iter().flatten().map(|d| d.to_string()).collect();
        format!(
            "no GPU to place {need}: the device mask [{}] matches none of the visible GPUs ({}); \
             fix the pool's devices setting",
            mask.join(", "),
            visible.join(", "),
        )
    };
    PlacementDecision {
        chosen: None,
        candidates,
        reason,
    }
}

/// "1.0 GiB headroom" or "1.0 GiB headroom and 2.0 GiB reserved by loads in progress".
fn deductions(headroom: u64, reserved: u64) -> String {
    if reserved == 0 {
        format!("{} headroom", gib(headroom))
    } else {
        format!(
            "{} headroom and {} reserved by loads in progress",
            gib(headroom),
            gib(reserved)
        )
    }
}

/// VRAM kept free on every GPU beyond a model's estimate: estimates are often wrong, and the
/// driver and other programs take some. (One value for the daemon and `llorch init`.)
pub const HEADROOM_BYTES: u64 = 512 << 20;

/// Fixed allowance for what a llama.cpp replica needs besides weights and KV cache: the CUDA
/// context of the engine process and the compute (graph scratch) buffers at the default
/// batch sizes. Measured values for 7–8B models are 0.5–0.8 GiB.
pub const COMPUTE_OVERHEAD_BYTES: u64 = 768 << 20;

/// When the model's shape is unknown, KV bytes per context token are taken as
/// `model_file_bytes / FALLBACK_KV_DIVISOR`.
///
/// For a 4.9 GB Llama-3-8B Q4_K_M that gives ~150 KB/token against 128 KiB real; for Qwen2.5-7B
/// ~144 KB against 56 KiB (conservative for grouped-query models, which most current ones are).
/// Old models without GQA (Llama-2-7B: 512 KiB/token) are underestimated: the headroom and the
/// post-load comparison with NVML exist for that.
pub const FALLBACK_KV_DIVISOR: u64 = 32_768;

/// Estimated VRAM of a replica: the model file (weights are loaded about as stored), plus the
/// f16 KV cache for `ctx` tokens in each of `slots` slots, plus [`COMPUTE_OVERHEAD_BYTES`].
///
/// `kv_bytes_per_token` comes from the model's GGUF metadata (`n_layer · n_head_kv ·
/// (key_len + value_len) · 2 bytes`); without it the KV cache is taken as
/// `ctx · slots · model_file_bytes / FALLBACK_KV_DIVISOR`. Saturates instead of overflowing.
pub fn estimate_footprint(
    model_file_bytes: u64,
    ctx: u64,
    slots: u32,
    kv_bytes_per_token: Option<u64>,
) -> u64 {
    // llama-server's `-c` is shared by all slots; the pool launches it with ctx per slot.
    let tokens = ctx.saturating_mul(u64::from(slots.max(1)));
    let per_token = kv_bytes_per_token.unwrap_or(model_file_bytes / FALLBACK_KV_DIVISOR);
    let kv = tokens.saturating_mul(per_token);
    model_file_bytes
        .saturating_add(kv)
        .saturating_add(COMPUTE_OVERHEAD_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpu(index: u32, name: &str, total_gib: u64, free_gib: f64, free_slots: u32) -> GpuSnapshot {
        GpuSnapshot {
            index,
            name: name.to_owned(),
            total_bytes: total_gib * GIB,
            free_bytes: (free_gib * GIB as f64) as u64,
            utilization_pct: Some(0),
            free_slots,
        }
    }

    fn req(need_gib: f64, mask: Option<Vec<u32>>) -> PlacementRequest {
        PlacementRequest {
            need_bytes: (need_gib * GIB as f64) as u64,
            headroom_bytes: GIB,
            mask,
        }
    }

    #[test]
    fn reason_names_best_candidate_and_shortfall() {
        let gpus = [
            gpu(0, "RTX 3090", 24, 11.1, 1),
            gpu(1, "RTX 3060", 12, 8.0, 1),
        ];
        let d = place(&gpus, &[], &req(13.2, None));
        assert_eq!(d.chosen, None);
        assert_eq!(
            d.reason,
            "no GPU fits 13.2 GiB: best is GPU 0 'RTX 3090' with 10.1 GiB available after \
             1.0 GiB headroom (3.1 GiB short); free VRAM, lower ctx/slots or choose a smaller quant"
        );
        assert!(matches!(
            d.candidates[1].verdict,
            CandidateVerdict::TooSmall { .. }
        ));
    }

    #[test]
    fn reservations_and_masks_count() {
        let gpus = [gpu(0, "A", 24, 20.0, 1), gpu(1, "B", 12, 12.0, 1)];
        let res = [Reservation {
            device: 0,
            bytes: 10 * GIB,
        }];
        // Reserved memory makes GPU 1 the roomier one.
        let d = place(&gpus, &res, &req(5.0, None));
        assert_eq!(d.chosen, Some(1));
        assert_eq!(d.candidates[0].verdict, CandidateVerdict::Fits);
        assert_eq!(d.candidates[0].available_bytes, 9 * GIB);
        // A mask excludes the winner.
        let d = place(&gpus, &res, &req(5.0, Some(vec![0])));
        assert_eq!(d.chosen, Some(0));
        assert_eq!(d.candidates[1].verdict, CandidateVerdict::Masked);
        assert!(
            d.reason.contains("reserved by loads in progress"),
            "{}",
            d.reason
        );
        // A mask naming no visible GPU.
        let d = place(&gpus, &[], &req(5.0, Some(vec![7])));
        assert_eq!(d.chosen, None);
        assert!(
            d.reason.contains("mask [7]") && d.reason.contains("(0, 1)"),
            "{}",
            d.reason
        );
        // No GPUs at all.
        let d = place(&[], &[], &req(5.0, None));
        assert_eq!(d.chosen, None);
        assert!(d.reason.contains("no devices"));
    }

    #[test]
    fn ties_prefer_free_slots_then_lower_index() {
        let gpus = [
            gpu(2, "A", 12, 8.0, 1),
            gpu(1, "B", 12, 8.0, 1),
            gpu(0, "C", 12, 8.0, 0),
        ];
        assert_eq!(place(&gpus, &[], &req(1.0, None)).chosen, Some(1));
        let gpus = [gpu(2, "A", 12, 8.0, 3), gpu(1, "B", 12, 8.0, 1)];
        assert_eq!(place(&gpus, &[], &req(1.0, None)).chosen, Some(2));
    }

    #[test]
    fn decision_serializes_for_logs() {
        let gpus = [gpu(0, "A", 24, 20.0, 1)];
        let d = place(&gpus, &[], &req(30.0, None));
        let v = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(v["chosen"], serde_json::Value::Null);
        assert_eq!(v["candidates"][0]["verdict"], "too_small");
        assert_eq!(v["candidates"][0]["available"], 19 * GIB);
    }

    #[test]
    fn footprint_known_and_fallback() {
        // Qwen2.5-7B-like: 28 layers, 4 KV heads x (128 + 128) x 2 bytes; 8192 ctx x 4 slots.
        let file = 4_683_073_184u64;
        let per_token = 28 * 4 * (128 + 128) * 2;
        let kv = 8192 * 4 * per_token;
        assert_eq!(
            estimate_footprint(file, 8192, 4, Some(per_token)),
            file + kv + COMPUTE_OVERHEAD_BYTES
        );
        let fallback = estimate_footprint(file, 8192, 4, None);
        assert_eq!(
            fallback,
            file + 8192 * 4 * (file / FALLBACK_KV_DIVISOR) + COMPUTE_OVERHEAD_BYTES
        );
        assert!(fallback > estimate_footprint(file, 8192, 4, Some(per_token)));
        // Zero slots count as one; huge inputs saturate.
        assert_eq!(
            estimate_footprint(file, 8192, 0, Some(per_token)),
            estimate_footprint(file, 8192, 1, Some(per_token))
        );
        assert_eq!(
            estimate_footprint(u64::MAX, u64::MAX, u32::MAX, None),
            u64::MAX
        );
    }
}
