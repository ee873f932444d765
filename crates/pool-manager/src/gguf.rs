//! Just enough of the GGUF header to estimate a model's KV-cache bytes per context token, for
//! placement's footprint estimate and a session's `kv_bytes`: `layers × kv_heads × (key_len + value_len) × 2 bytes` (llama.cpp's
//! default f16 KV cache). Reads only the metadata section; never loads tensors.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

/// Most metadata entries read (real models have a few dozen).
const MAX_KV: u64 = 100_000;
/// Longest string accepted.
const MAX_STR: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Val {
    Int(u64),
    Str(String),
    Ints(Vec<u64>),
    Other,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn u32_le(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn skip(r: &mut (impl Read + Seek), n: u64) -> io::Result<()> {
    let n = i64::try_from(n).map_err(|_| bad("length out of range"))?;
    r.seek_relative(n)
}

fn string(r: &mut (impl Read + Seek)) -> io::Result<String> {
    let n = u64_le(r)?;
    if n > MAX_STR {
        return Err(bad("string too long"));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Size of a fixed-width scalar type, or `None` for strings and arrays.
fn scalar_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn int(r: &mut (impl Read + Seek), t: u32) -> io::Result<Option<u64>> {
    Ok(match t {
        0 | 1 | 7 => {
            let mut b = [0u8; 1];
            r.read_exact(&mut b)?;
            Some(u64::from(b[0]))
        }
        2 | 3 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            Some(u64::from(u16::from_le_bytes(b)))
        }
        4 | 5 => Some(u64::from(u32_le(r)?)),
        10 | 11 => Some(u64_le(r)?),
        6 => {
            skip(r, 4)?;
            None
        }
        12 => {
            skip(r, 8)?;
            None
        }
        _ => return Err(bad("unknown scalar type")),
    })
}

fn value(r: &mut (impl Read + Seek), t: u32, depth: u32) -> io::Result<Val> {
    match t {
        8 => Ok(Val::Str(string(r)?)),
        9 => {
            if depth > 4 {
                return Err(bad("arrays nested too deep"));
            }
            let et = u32_le(r)?;
            let n = u64_le(r)?;
            if let Some(sz) = scalar_size(et) {
                if matches!(et, 4 | 5 | 10 | 11) && n <= 4096 {
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(int(r, et)?.unwrap_or(0));
                    }
                    return Ok(Val::Ints(v));
                }
                skip(r, n.checked_mul(sz).ok_or_else(|| bad("array too large"))?)?;
            } else {
                for _ in 0..n {
                    value(r, et, depth + 1)?;
                }
            }
            Ok(Val::Other)
        }
        _ => Ok(int(r, t)?.map(Val::Int).unwrap_or(Val::Other)),
    }
}

fn read_kv(path: &Path) -> io::Result<HashMap<String, Val>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(bad("not a GGUF file"));
    }
    let version = u32_le(&mut r)?;
    if !(2..=3).contains(&version) {
        return Err(bad("unsupported GGUF version"));
    }
    let _tensors = u64_le(&mut r)?;
    let n_kv = u64_le(&mut r)?;
    if n_kv > MAX_KV {
        return Err(bad("too many metadata entries"));
    }
    let mut out = HashMap::new();
    for _ in 0..n_kv {
        let key = string(&mut r)?;
        let t = u32_le(&mut r)?;
        let v = value(&mut r, t, 0)?;
        out.insert(key, v);
    }
    Ok(out)
}

/// Estimated KV-cache bytes per context token of the GGUF model at `path`; `None` when the
/// file cannot be read or lacks the shape keys.
pub fn kv_bytes_per_token(path: &Path) -> Option<u64> {
    let kv = match read_kv(path) {
        Ok(kv) => kv,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot read GGUF metadata");
            return None;
        }
    };
    let arch = match kv.get("general.architecture") {
        Some(Val::Str(s)) => s.clone(),
        _ => return None,
    };
    let get = |k: &str| match kv.get(&format!("{arch}.{k}")) {
        Some(Val::Int(n)) => Some(*n),
        Some(Val::Ints(v)) => v.iter().copied().max(),
        _ => None,
    };
    let layers = get("block_count")?;
    let embd = get("embedding_length")?;
    let heads = get("attention.head_count")?.max(1);
    let kv_heads = get("attention.head_count_kv").unwrap_or(heads);
    let head_dim = embd / heads;
    let k_len = get("attention.key_length").unwrap_or(head_dim);
    let v_len = get("attention.value_length").unwrap_or(head_dim);
    layers
        .checked_mul(kv_heads)?
        .checked_mul(k_len.checked_add(v_len)?)?
        .checked_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }

    fn u32_kv(out: &mut Vec<u8>, k: &str, v: u32) {
        s(out, k);
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A GGUF v3 header with a llama-like shape, a string array (a vocabulary) and a float.
    fn header(with_kv_heads: bool) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let n_kv: u64 = if with_kv_heads { 7 } else { 6 };
        b.extend_from_slice(&n_kv.to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        for t in ["<s>", "a", "語"] {
            s(&mut b, t);
        }
        s(&mut b, "llama.rope.freq_base");
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&10000f32.to_le_bytes());
        u32_kv(&mut b, "llama.block_count", 32);
        u32_kv(&mut b, "llama.embedding_length", 4096);
        u32_kv(&mut b, "llama.attention.head_count", 32);
        if with_kv_heads {
            u32_kv(&mut b, "llama.attention.head_count_kv", 8);
        }
        b
    }

    fn kv_of(bytes: &[u8]) -> Option<u64> {
        let dir = tempfile::tempdir().ok()?;
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes).ok()?;
        kv_bytes_per_token(&p)
    }

    #[test]
    fn llama_shapes() {
        // Llama-3-8B: 32 layers × 8 KV heads × (128 + 128) × 2 bytes = 128 KiB per token.
        assert_eq!(kv_of(&header(true)), Some(128 * 1024));
        // Llama-2-7B (no GQA): 32 heads → 512 KiB per token.
        assert_eq!(kv_of(&header(false)), Some(512 * 1024));
    }

    #[test]
    fn unreadable_files_give_none() {
        assert_eq!(kv_of(b""), None);
        assert_eq!(kv_of(b"GGML\x03\0\0\0"), None);
        let mut cut = header(true);
        cut.truncate(cut.len() - 3);
        assert_eq!(kv_of(&cut), None);
        assert_eq!(kv_bytes_per_token(Path::new("/nonexistent/m.gguf")), None);
    }
}
