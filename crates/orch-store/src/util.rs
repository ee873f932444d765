//! Small shared helpers: id validation, digests and durable file operations.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

/// Longest id accepted for models and sessions.
pub const MAX_ID_LEN: usize = 128;

/// Check an id against `[A-Za-z0-9._:-]{1,128}`; `what` names it in the error.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1 to {MAX_ID_LEN} characters long, got {}",
            id.len()
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(StoreError::Invalid(format!(
            "{what} '{}' contains {bad:?}; allowed are letters, digits and . _ : -",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// Check a free-text field: not empty, at most `max` bytes, no control characters.
pub(crate) fn validate_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(StoreError::Invalid(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(StoreError::Invalid(format!(
            "{what} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Parse `sha256:<64 hex>` (or bare 64 hex digits) into the canonical lower-case
/// `sha256:<hex>` form.
pub fn normalize_digest(what: &str, digest: &str) -> Result<String> {
    let hex_part = digest
        .strip_prefix("sha256:")
        .or_else(|| digest.strip_prefix("SHA256:"))
        .unwrap_or(digest);
    if hex_part.len() != 64 || !hex_part.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(StoreError::Invalid(format!(
            "{what} must look like 'sha256:' followed by 64 hex digits, got '{}'",
            digest.chars().take(80).collect::<String>().escape_debug()
        )));
    }
    Ok(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

/// `sha256:<hex>` of a byte slice.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Stream a reader through SHA-256; returns (`sha256:<hex>`, bytes read).
pub(crate) fn sha256_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), total))
}

/// Flush a directory entry to disk so a rename or unlink inside it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Create `dir` (and parents) and make its entry durable.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating directory {}", dir.display()), e))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Write `bytes` to `dest` atomically: a temp file named `tmp_name` in the same directory is
/// written and fsynced, renamed over `dest`, and the directory is fsynced. A crash leaves
/// either no file or the complete one at `dest` (plus, at worst, a temp file to sweep).
pub(crate) fn write_atomic(dest: &Path, tmp_name: &str, bytes: &[u8]) -> Result<()> {
    let dir = dest.parent().ok_or_else(|| {
        StoreError::Invalid(format!("{} has no parent directory", dest.display()))
    })?;
    let tmp = dir.join(tmp_name);
    let result = (|| -> io::Result<()> {
        let mut file = File::options().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io(format!("writing {}", dest.display()), e));
    }
    fsync_dir(dir)
}
