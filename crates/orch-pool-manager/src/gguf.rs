//! The model's KV-cache bytes per context token, for placement's footprint estimate and a
//! session's `kv_bytes`; the header reader itself is the `orch-gguf-meta` crate.

use std::path::Path;

/// Estimated KV-cache bytes per context token of the GGUF model at `path`; `None` when the
/// file cannot be read or lacks the shape keys.
pub fn kv_bytes_per_token(path: &Path) -> Option<u64> {
    match orch_gguf_meta::kv_bytes_per_token(path) {
        Ok(kv) => kv,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot read GGUF metadata");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_give_none() {
        assert_eq!(kv_bytes_per_token(Path::new("/nonexistent/m.gguf")), None);
    }
}
