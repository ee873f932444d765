//! How long a model takes to load, per model file: measured on every load and remembered across
//! restarts in `<data_dir>/model_load_times.json`; before the first load, estimated from the
//! file size and the disk's read rate (measured once by reading the start of a model file).
//!
//! The expected load time goes into the `predicted_start_ms` of tasks for an unloaded pool.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::lock;

/// Added to the read time of a model never loaded yet: the engine process starting, its CUDA
/// context, and the first health check.
pub const ENGINE_START_MS: u64 = 1_000;
/// Read rate assumed when none could be measured (a slow SATA SSD).
const FALLBACK_READ_BYTES_PER_S: f64 = 400e6;
/// Bytes read to measure the disk's rate.
const PROBE_BYTES: usize = 64 << 20;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct TimesFile {
    /// Measured read rate of the first model probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_bytes_per_s: Option<f64>,
    /// Per model path.
    #[serde(default)]
    models: HashMap<String, ModelTime>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ModelTime {
    /// Expected load time: the running mean of the recent loads (each new load counts half).
    load_ms: u64,
    /// The file's size when measured; another size means another file, measured anew.
    file_bytes: u64,
    /// Loads measured.
    loads: u64,
}

/// Load times per model.
pub(crate) struct LoadTimes {
    path: Option<PathBuf>,
    inner: Mutex<TimesFile>,
}

impl LoadTimes {
    /// Reads `path` (missing or unreadable: nothing known yet). `None`: keep nothing on disk.
    pub(crate) fn open(path: Option<PathBuf>) -> Self {
        let known = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<TimesFile>(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            inner: Mutex::new(known),
        }
    }

    /// The expected load time of `model`, in ms.
    pub(crate) fn expected_ms(&self, model: &str) -> u64 {
        let size = file_size(model);
        let g = lock(&self.inner);
        if let Some(t) = g.models.get(model).filter(|t| t.file_bytes == size) {
            return t.load_ms;
        }
        estimate_ms(size, g.read_bytes_per_s)
    }

    /// Whether a read rate is known (measured before, here or in an earlier run).
    pub(crate) fn has_read_rate(&self) -> bool {
        lock(&self.inner).read_bytes_per_s.is_some()
    }

    /// Measures the read rate on `model` if none is known yet. Blocking: call it off the async
    /// threads.
    pub(crate) fn probe_read_rate(&self, model: &str) {
        if self.has_read_rate() {
            return;
        }
        let Some(rate) = measure_read_rate(Path::new(model)) else {
            return;
        };
        tracing::info!(
            model,
            read_mb_per_s = rate / 1e6,
            "measured the model disk's read rate for load-time estimates"
        );
        lock(&self.inner).read_bytes_per_s = Some(rate);
        self.save();
    }

    /// Records a load of `model` that took `ms` and saves the table. Blocking (a small file).
    pub(crate) fn record(&self, model: &str, ms: u64) {
        let size = file_size(model);
        {
            let mut g = lock(&self.inner);
            let t = g.models.entry(model.to_owned()).or_insert(ModelTime {
                load_ms: ms,
                file_bytes: size,
                loads: 0,
            });
            if t.file_bytes != size || t.loads == 0 {
                t.load_ms = ms;
                t.file_bytes = size;
                t.loads = 0;
            } else {
                t.load_ms = (t.load_ms + ms) / 2;
            }
            t.loads += 1;
        }
        self.save();
    }

    /// Writes the table (temp file, then rename, so a crash never leaves half a file).
    fn save(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let body = match serde_json::to_vec_pretty(&*lock(&self.inner)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode model load times");
                return;
            }
        };
        let tmp = path.with_extension("json.tmp");
        let r = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, &body))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!(path = %path.display(), error = %e, "cannot save model load times; estimates start afresh after a restart");
        }
    }
}

fn file_size(model: &str) -> u64 {
    std::fs::metadata(model).map(|m| m.len()).unwrap_or(0)
}

/// A model never loaded: its file read at `rate` plus [`ENGINE_START_MS`].
fn estimate_ms(size: u64, rate: Option<f64>) -> u64 {
    let rate = rate
        .filter(|r| r.is_finite() && *r > 0.0)
        .unwrap_or(FALLBACK_READ_BYTES_PER_S);
    ENGINE_START_MS.saturating_add((size as f64 / rate * 1000.0) as u64)
}

/// Bytes per second reading the first [`PROBE_BYTES`] of `path` (at least 1 MiB, else the
/// measurement means nothing).
fn measure_read_rate(path: &Path) -> Option<f64> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let mut total = 0usize;
    while total < PROBE_BYTES {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(_) => return None,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    (total >= 1 << 20 && secs > 0.0).then(|| total as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimated_first_then_measured_and_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, vec![7u8; 4 << 20]).unwrap();
        let m = model.to_str().unwrap();
        let file = dir.path().join("data/model_load_times.json");
        let t = LoadTimes::open(Some(file.clone()));
        // Nothing known: the fallback rate, 4 MiB at 400 MB/s ≈ 10 ms, plus the start.
        assert_eq!(t.expected_ms(m), ENGINE_START_MS + 10);
        t.probe_read_rate(m);
        assert!(t.has_read_rate());
        assert!(t.expected_ms(m) >= ENGINE_START_MS);
        t.record(m, 3000);
        assert_eq!(t.expected_ms(m), 3000);
        t.record(m, 1000);
        assert_eq!(t.expected_ms(m), 2000, "recent loads count half each");
        // A restart reads what was measured.
        let again = LoadTimes::open(Some(file));
        assert_eq!(again.expected_ms(m), 2000);
        assert!(again.has_read_rate());
        // Another file under the same path is measured anew.
        std::fs::write(&model, vec![7u8; 1 << 20]).unwrap();
        assert_ne!(again.expected_ms(m), 2000);
    }

    #[test]
    fn a_broken_table_or_no_path_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.json");
        std::fs::write(&file, b"{not json").unwrap();
        let t = LoadTimes::open(Some(file));
        assert_eq!(t.expected_ms("/nope.gguf"), ENGINE_START_MS);
        let t = LoadTimes::open(None);
        t.record("/nope.gguf", 5);
        assert_eq!(t.expected_ms("/nope.gguf"), 5);
    }
}
