//! The start-time model's prior for a model never measured: decode and prefill rates derived
//! from the model file (its size, parameters, quantisation, layers) and the device it runs on
//! (memory bandwidth and compute, from the card's name or a CPU figure).
//!
//! # Model
//!
//! Decoding one token streams every weight from memory once per engine step, whatever the
//! number of streams sharing the step, and does `2 · parameters` FLOPs per stream. A step of
//! `c` streams therefore takes `overhead + weight_bytes / bandwidth + c · 2 · params / flops`,
//! and each stream gets one token per step: that is the per-slot decode time at concurrency
//! `c`. Prefill is compute-bound: `base + tokens · 2 · params / flops_prefill`. The overheads
//! (sampling, the engine's HTTP streaming, a step's fixed launch cost) dominate for tiny models
//! and are per device kind. The figures are deliberately middle-of-the-road: the prior only
//! has to be right within a factor of about 1.5, since measurements replace it as soon as the
//! first tasks run, and the learned rates are remembered across restarts
//! (`crate::rates`).
//!
//! Nothing here reads a file or a clock: the daemon reads the GGUF header and the card's name
//! and passes them in.

use serde::{Deserialize, Serialize};

/// The model as its file describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Bytes of the weights (the GGUF file's size is a good stand-in).
    pub weight_bytes: u64,
    /// Bits per weight of the quantisation (e.g. 4.5 for `Q4_K_M`), when the header names it.
    pub bits_per_weight: Option<f64>,
    /// Transformer layers (`<arch>.block_count`), when known.
    pub layers: Option<u64>,
}

impl ModelShape {
    /// Parameters: weight bytes over bytes per weight (8 bits per weight when the quantisation
    /// is unknown, the usual size of a served model).
    pub fn params(&self) -> f64 {
        let bits = self
            .bits_per_weight
            .filter(|b| b.is_finite() && *b > 0.5)
            .unwrap_or(8.0);
        self.weight_bytes as f64 * 8.0 / bits
    }
}

/// Bits per weight of a llama.cpp quantisation by its name (`Q4_K_M`, `F16`, …): the
/// average over a real file of that type, block scales included.
pub fn bits_per_weight(quant: &str) -> Option<f64> {
    Some(match quant {
        "F32" => 32.0,
        "F16" | "BF16" => 16.0,
        "Q8_0" => 8.5,
        "Q6_K" => 6.56,
        "Q5_0" | "Q5_1" | "Q5_K_S" | "Q5_K_M" => 5.5,
        "Q4_0" | "Q4_1" | "Q4_K_S" | "Q4_K_M" | "IQ4_NL" | "IQ4_XS" | "MXFP4_MOE" => 4.5,
        "Q3_K_S" | "Q3_K_M" | "Q3_K_L" | "IQ3_XS" | "IQ3_XXS" | "IQ3_S" | "IQ3_M" => 3.5,
        "Q2_K" | "Q2_K_S" | "IQ2_XXS" | "IQ2_XS" | "IQ2_S" | "IQ2_M" | "TQ2_0" => 2.6,
        "IQ1_S" | "IQ1_M" | "TQ1_0" => 1.8,
        _ => return None,
    })
}

/// What the model runs on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// Memory bandwidth the engine achieves, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// Compute the engine achieves while decoding, FLOP/s.
    pub decode_flops: f64,
    /// Compute the engine achieves while evaluating a prompt (batched), FLOP/s.
    pub prefill_flops: f64,
    /// Fixed cost of one engine step (sampling, streaming the token, launching the step), ms.
    pub step_overhead_ms: f64,
    /// Fixed cost from dispatch to the first token on top of the prompt's share, ms.
    pub first_token_base_ms: f64,
}

/// Achieved share of a GPU's peak memory bandwidth while decoding.
const GPU_BANDWIDTH_EFFICIENCY: f64 = 0.7;

impl Card {
    /// A GPU with `peak_bandwidth_bytes_per_s` of memory bandwidth (the data sheet's figure).
    pub fn gpu(peak_bandwidth_bytes_per_s: f64) -> Self {
        let bw = if peak_bandwidth_bytes_per_s.is_finite() && peak_bandwidth_bytes_per_s > 0.0 {
            peak_bandwidth_bytes_per_s
        } else {
            DEFAULT_GPU_BANDWIDTH
        };
        Card {
            bandwidth_bytes_per_s: bw * GPU_BANDWIDTH_EFFICIENCY,
            // Decode steps of a few streams use a sliver of the tensor cores.
            decode_flops: 20e12,
            prefill_flops: 60e12,
            step_overhead_ms: 1.5,
            first_token_base_ms: 15.0,
        }
    }

    /// A GPU known only by its product name (`NVIDIA GeForce RTX 3090`); an unknown name gets a
    /// mid-range card's figures.
    pub fn gpu_named(name: &str) -> Self {
        Card::gpu(gpu_bandwidth(name).unwrap_or(DEFAULT_GPU_BANDWIDTH))
    }

    /// A CPU engine (llama-server on the host's cores): one or two cores' worth of streaming
    /// bandwidth and vector compute, which is what a dev pool gets on a shared box. Checked
    /// against the tiny test model on the shared 2-core reference box, whose engine ran at
    /// 0.85–1.2 ms per token alone and 1.0–1.8 per slot with two streams when the box was
    /// quiet, and up to 5.6 under other engineers' builds (load average 6–15). The prior says
    /// ~1.4 alone and ~1.6 with two streams: a start predicted from it is about as far off on
    /// the quiet box (late, ~+0.4) as on one 2.5× slower (early, ~−0.4), the relative error
    /// being asymmetric (early is at most −1, late unbounded).
    pub fn cpu() -> Self {
        Card {
            bandwidth_bytes_per_s: 20e9,
            decode_flops: 40e9,
            prefill_flops: 80e9,
            step_overhead_ms: 0.3,
            first_token_base_ms: 4.0,
        }
    }
}

/// Bandwidth assumed for a GPU whose name is not in [`gpu_bandwidth`]'s table (an RTX 3080's).
pub const DEFAULT_GPU_BANDWIDTH: f64 = 760e9;

/// Peak memory bandwidth, bytes per second, of common inference cards by (a part of) their
/// product name. Longest names first, so `H100 NVL` is not taken for `H100`.
pub fn gpu_bandwidth(name: &str) -> Option<f64> {
    const TABLE: &[(&str, f64)] = &[
        ("H200", 4.8e12),
        ("H100 NVL", 3.9e12),
        ("H100 PCIe", 2.0e12),
        ("H100", 3.35e12),
        ("GH200", 4.0e12),
        ("B200", 8.0e12),
        ("A100-SXM4-80GB", 2.04e12),
        ("A100 80GB PCIe", 1.94e12),
        ("A100", 1.56e12),
        ("MI300X", 5.3e12),
        ("L40S", 0.864e12),
        ("L40", 0.864e12),
        ("L4", 0.3e12),
        ("A40", 0.696e12),
        ("A10G", 0.6e12),
        ("A10", 0.6e12),
        ("A6000", 0.768e12),
        ("A5000", 0.768e12),
        ("A4000", 0.448e12),
        ("T4", 0.32e12),
        ("V100", 0.9e12),
        ("RTX 5090", 1.79e12),
        ("RTX 5080", 0.96e12),
        ("RTX 4090", 1.008e12),
        ("RTX 4080", 0.717e12),
        ("RTX 4070 Ti", 0.504e12),
        ("RTX 4070", 0.504e12),
        ("RTX 4060 Ti", 0.288e12),
        ("RTX 4060", 0.272e12),
        ("RTX 3090", 0.936e12),
        ("RTX 3080 Ti", 0.912e12),
        ("RTX 3080", 0.76e12),
        ("RTX 3070", 0.448e12),
        ("RTX 3060", 0.36e12),
    ];
    let upper = name.to_ascii_uppercase();
    TABLE
        .iter()
        .filter(|(k, _)| upper.contains(&k.to_ascii_uppercase()))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, bw)| *bw)
}

/// Prior rates of one model on one card.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatePrior {
    /// Per-slot decode milliseconds per token with one stream.
    pub decode_ms_one: f64,
    /// Added to the per-slot decode time by each further stream sharing the step.
    pub decode_ms_per_extra_stream: f64,
    /// Milliseconds from dispatch to the first token of an empty prompt.
    pub prefill_base_ms: f64,
    /// Prefill milliseconds per prompt token.
    pub prefill_ms_per_token: f64,
}

/// Clamp for every prior figure: never zero (a free token would make the queue look empty),
/// never absurd.
const PRIOR_MS_BOUNDS: (f64, f64) = (0.01, 60_000.0);

fn bounded(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(PRIOR_MS_BOUNDS.0, PRIOR_MS_BOUNDS.1)
    } else {
        PRIOR_MS_BOUNDS.1
    }
}

impl RatePrior {
    /// The prior of `model` on `card` (see the module docs).
    pub fn new(model: &ModelShape, card: &Card) -> Self {
        let params = model.params();
        let flops_per_token = 2.0 * params;
        let read_ms = model.weight_bytes as f64 / card.bandwidth_bytes_per_s.max(1.0) * 1000.0;
        let compute_ms = flops_per_token / card.decode_flops.max(1.0) * 1000.0;
        // Each layer adds a few kernel launches (GPU) or a thread barrier (CPU) per step.
        let layer_ms = model.layers.unwrap_or(0).min(1_000) as f64 * 0.01;
        RatePrior {
            decode_ms_one: bounded(card.step_overhead_ms + layer_ms + read_ms + compute_ms),
            decode_ms_per_extra_stream: bounded(compute_ms),
            prefill_base_ms: bounded(card.first_token_base_ms + read_ms),
            prefill_ms_per_token: bounded(flops_per_token / card.prefill_flops.max(1.0) * 1000.0),
        }
    }

    /// Per-slot decode milliseconds per token while `concurrency` streams share the replica
    /// (at least 1): positive, finite, non-decreasing in the concurrency.
    pub fn decode_ms(&self, concurrency: usize) -> f64 {
        let extra = concurrency.max(1) - 1;
        bounded(self.decode_ms_one + self.decode_ms_per_extra_stream * extra as f64)
    }

    /// Milliseconds from dispatch to the first token of a prompt of `prompt_tokens`.
    pub fn prefill_ms(&self, prompt_tokens: f64) -> f64 {
        let x = if prompt_tokens.is_finite() && prompt_tokens > 0.0 {
            prompt_tokens
        } else {
            0.0
        };
        bounded(self.prefill_base_ms + self.prefill_ms_per_token * x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cards_and_quants() {
        assert_eq!(gpu_bandwidth("NVIDIA H100 80GB HBM3"), Some(3.35e12));
        assert_eq!(gpu_bandwidth("NVIDIA H100 NVL"), Some(3.9e12));
        assert_eq!(gpu_bandwidth("NVIDIA GeForce RTX 3090"), Some(0.936e12));
        assert_eq!(gpu_bandwidth("NVIDIA GeForce RTX 3080 Ti"), Some(0.912e12));
        assert_eq!(gpu_bandwidth("Some Card"), None);
        assert_eq!(bits_per_weight("Q4_K_M"), Some(4.5));
        assert_eq!(bits_per_weight("nope"), None);
    }

    #[test]
    fn a_7b_q4_on_a_3090_is_plausible() {
        // 7B Q4_K_M: ~4.1 GB. Real llama.cpp: ~100-130 tok/s alone on a 3090.
        let m = ModelShape {
            weight_bytes: 4_100_000_000,
            bits_per_weight: Some(4.5),
            layers: Some(32),
        };
        let p = RatePrior::new(&m, &Card::gpu_named("NVIDIA GeForce RTX 3090"));
        let tok_s = 1000.0 / p.decode_ms(1);
        assert!((50.0..200.0).contains(&tok_s), "{tok_s} tok/s");
        assert!(p.decode_ms(8) > p.decode_ms(1));
        // Prefill in the thousands of tokens per second.
        let pre = 1000.0 / p.prefill_ms_per_token;
        assert!((1_000.0..20_000.0).contains(&pre), "{pre} tok/s prefill");
        // The same model on a CPU is far slower.
        let cpu = RatePrior::new(&m, &Card::cpu());
        assert!(cpu.decode_ms(1) > 50.0 * p.decode_ms(1) / 10.0);
    }

    #[test]
    fn garbage_stays_sane() {
        let m = ModelShape {
            weight_bytes: u64::MAX,
            bits_per_weight: Some(f64::NAN),
            layers: Some(u64::MAX),
        };
        let p = RatePrior::new(&m, &Card::gpu(f64::NAN));
        for c in [0, 1, 2, usize::MAX] {
            let d = p.decode_ms(c);
            assert!(d.is_finite() && d > 0.0, "{d}");
        }
        let x = p.prefill_ms(f64::NAN);
        assert!(x.is_finite() && x > 0.0);
    }
}
