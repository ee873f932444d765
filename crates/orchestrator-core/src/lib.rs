//! Pure core logic of llama-orch: the bounded two-priority queue, start-time and on-time
//! estimates, and GPU placement.
//!
//! Nothing here performs I/O, spawns tasks or reads a clock: the daemon passes measured numbers
//! (durations in milliseconds, VRAM snapshots) in and gets decisions back, which keeps every rule
//! deterministic and testable without GPUs or engines.
//!
//! - [`queue`]: admission, full policies (`reject`, `drop-lru`), dispatch order.
//! - [`estimate`]: `queue_position`, `predicted_start_ms`, `backoff_ms` and
//!   `on_time_probability` from measured service statistics.
//! - [`routing`]: the least-loaded pool for a task and replica for the next dispatch.
//! - [`placement`]: which GPU a replica goes on, with a reservation ledger and headroom
//!   (docs/PLACEMENT.md).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod estimate;
pub mod placement;
pub mod queue;
pub mod routing;

pub use estimate::{on_time_probability, predict_start, ServiceStats, StartEstimate};
pub use placement::{
    estimate_footprint, place, Candidate, CandidateVerdict, GpuSnapshot, PlacementDecision,
    PlacementRequest, Reservation,
};
pub use queue::{Admitted, Entry, FullPolicy, Priority, Queue, Rejected};
pub use routing::{choose_pool, choose_replica, load_per_slot, PoolCandidate, ReplicaCandidate};
