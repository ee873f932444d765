//! The daemon-wide "shutdown began" flag: set once, by the drain at SIGTERM
//! (`PoolControl::shut_down`); read by every service that refuses new work from then on. One
//! flag shared by cloning, not one per service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether shutdown began; clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct ShutdownFlag(Arc<AtomicBool>);

impl ShutdownFlag {
    /// Marks shutdown as begun (for every clone).
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown began.
    pub fn began(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
