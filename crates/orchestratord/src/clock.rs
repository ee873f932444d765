//! The wall clock, in one place: every module that stamps times takes it from here (it has no
//! dependencies, so it closes no import cycle).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
