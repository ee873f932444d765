//! Finding the models: every `.gguf` file under `--models-dir`, read with `orch-gguf-meta`, one
//! [`Model`] per model (split GGUFs as one).

use std::path::{Path, PathBuf};

use crate::error::CliError;

/// How deep `--models-dir` is searched.
const MAX_DEPTH: usize = 4;

/// One GGUF model found.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The file the engine loads (the first part of a split GGUF).
    pub path: PathBuf,
    /// Pool id: the file name without `.gguf` (and without a split suffix).
    pub id: String,
    /// `general.architecture`.
    pub arch: String,
    /// Quantization, e.g. `Q4_K_M`.
    pub quant: String,
    /// Bytes on disk, every part of a split GGUF together.
    pub size: u64,
    /// Training context length.
    pub ctx_train: Option<u64>,
    /// KV-cache bytes per context token, from the shape keys.
    pub kv_per_token: Option<u64>,
}

/// `model-00001-of-00003` → `Some(("model", 1))`.
pub(super) fn split_part(stem: &str) -> Option<(&str, u32)> {
    let (head, of) = stem.rsplit_once("-of-")?;
    let (prefix, part) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.chars().all(|c| c.is_ascii_digit());
    if !digits(part) || !digits(of) {
        return None;
    }
    Some((prefix, part.parse().ok()?))
}

/// A pool id from a file stem: the characters the config allows, at most 64.
pub(super) fn pool_id(stem: &str) -> String {
    let id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "model".into()
    } else {
        id
    }
}

/// Every `.gguf` file under `dir` (not following directory links, skipping hidden ones).
pub(super) fn gguf_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            if depth < MAX_DEPTH {
                // An unreadable subdirectory is skipped, not fatal.
                let _ = gguf_files(&path, depth + 1, out);
            }
        } else if path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            && path.is_file()
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The models under `dir`, and a note for each file skipped.
pub fn scan(dir: &Path) -> Result<(Vec<Model>, Vec<String>), CliError> {
    let mut files = Vec::new();
    gguf_files(dir, 0, &mut files).map_err(|e| {
        CliError::usage(format!(
            "cannot read the models directory {}: {e}; put your .gguf files there or pass --models-dir DIR",
            dir.display()
        ))
    })?;
    let mut models: Vec<Model> = Vec::new();
    let mut notes = Vec::new();
    for path in &files {
        let shown = path.display();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            notes.push(format!("{shown}: skipped (the name is not UTF-8)"));
            continue;
        };
        if path.to_str().is_none() {
            notes.push(format!("{shown}: skipped (the path is not UTF-8)"));
            continue;
        }
        let (base, part) = match split_part(stem) {
            Some((b, p)) => (b, Some(p)),
            None => (stem, None),
        };
        if part.is_some_and(|p| p != 1) {
            continue; // counted with its first part
        }
        let info = match orch_gguf_meta::read(path) {
            Ok(i) => i,
            Err(e) => {
                notes.push(format!("{shown}: skipped (not a readable GGUF file: {e})"));
                continue;
            }
        };
        let arch = info.architecture.clone().unwrap_or_else(|| "?".into());
        if info.tensor_count == 0 {
            notes.push(format!("{shown}: skipped (vocabulary only, no weights)"));
            continue;
        }
        if arch == "clip" {
            notes.push(format!(
                "{shown}: skipped (a multimodal projector, not a model)"
            ));
            continue;
        }
        let mut size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if part.is_some() {
            let parts: Vec<&PathBuf> = files
                .iter()
                .filter(|f| {
                    f.parent() == path.parent()
                        && f.file_stem()
                            .and_then(|s| s.to_str())
                            .and_then(split_part)
                            .is_some_and(|(b, _)| b == base)
                })
                .collect();
            let expected = info.split_count.unwrap_or(parts.len() as u64);
            if parts.len() as u64 != expected {
                notes.push(format!(
                    "{shown}: skipped (split GGUF with {} of its {expected} parts here)",
                    parts.len()
                ));
                continue;
            }
            size = parts
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
        }
        // Sanitised ids are ASCII, so byte slicing is safe.
        let base_id = pool_id(base);
        let mut id = base_id.clone();
        let mut n = 2;
        while models.iter().any(|m| m.id == id) {
            let suffix = format!("-{n}");
            id = format!(
                "{}{suffix}",
                &base_id[..base_id.len().min(64 - suffix.len())]
            );
            n += 1;
        }
        models.push(Model {
            path: path.clone(),
            id,
            arch,
            quant: info.quant().map_or_else(
                || info.file_type.map_or("?".into(), |t| format!("type {t}")),
                str::to_owned,
            ),
            size,
            ctx_train: info.context_length,
            kv_per_token: info.kv_bytes_per_token,
        });
    }
    Ok((models, notes))
}
