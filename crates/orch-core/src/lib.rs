//! Pure core logic of llama-orch: the bounded two-priority queue, start-time and on-time
//! estimates, and GPU placement.
//!
//! Nothing here performs I/O, spawns tasks or reads a clock: the daemon passes measured numbers
//! (durations in milliseconds, VRAM snapshots) in and gets decisions back, which keeps every rule
//! deterministic and testable without GPUs or engines.
//!
//! - [`bytes`]: byte counts for people.
//! - [`queue`]: admission, full policies (`reject`, `drop-lru`), dispatch order.
//! - [`eta`]: the one start-time model ("queue truth") of queued and running tasks: measured
//!   prefill and per-slot decode rates, expected lengths, an event simulation of the pool
//!   giving each task's predicted start and end, and calibrated on-time probabilities.
//! - [`prior`]: the rates assumed for a model never measured, from its file and the card.
//! - [`rates`]: learned rates kept per model × device kind × slots × context across restarts.
//! - [`routing`]: the least-loaded pool for a task and replica for the next dispatch.
//! - [`placement`]: which GPU a replica goes on, with a reservation ledger and headroom
//!   (docs/PLACEMENT.md).
//! - [`vram`]: making room when no single GPU has it: splits across GPUs and the choice of
//!   idle `on_demand` models to evict (least recently used first).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bytes;
pub mod eta;
pub mod placement;
pub mod prior;
pub mod queue;
pub mod rates;
pub mod routing;
pub mod vram;

pub use placement::{
    estimate_footprint, place, Candidate, CandidateVerdict, GpuSnapshot, PlacementDecision,
    PlacementRequest, Reservation,
};
pub use queue::{Admitted, Entry, FullPolicy, Priority, Queue, Rejected};
pub use routing::{
    alias_for, choose_pool, choose_replica, context_fit, load_per_slot, ContextFit, PoolCandidate,
    ReplicaCandidate,
};
