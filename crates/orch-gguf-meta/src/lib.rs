//! Just enough of a GGUF file's header for llama-orch: the architecture, the shape keys behind
//! a KV-cache estimate (`layers × kv_heads × (key_len + value_len) × 2 bytes`, llama.cpp's
//! default f16 cache), the training context length and the quantization (`general.file_type`).
//! Reads only the metadata section; never loads tensors. Used by placement (orch-pool-manager) and
//! `llorch init`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

/// Most metadata entries read (real models have a few dozen).
const MAX_KV: u64 = 100_000;
/// Longest string accepted.
const MAX_STR: u64 = 1 << 20;

/// What the header says about a model. Every field the file lacks is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GgufInfo {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// Tensors in this file (0 for a vocab-only file).
    pub tensor_count: u64,
    /// `general.architecture`, e.g. `llama`, `qwen2`; `clip` for a multimodal projector.
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.file_type`: llama.cpp's `llama_ftype` (see [`GgufInfo::quant`]).
    pub file_type: Option<u64>,
    /// `<arch>.context_length`: the context the model was trained for.
    pub context_length: Option<u64>,
    /// `<arch>.block_count`.
    pub block_count: Option<u64>,
    /// Estimated f16 KV-cache bytes per context token, from the shape keys.
    pub kv_bytes_per_token: Option<u64>,
    /// `split.count`: parts of a split GGUF (`…-00001-of-00003.gguf`).
    pub split_count: Option<u64>,
}

impl GgufInfo {
    /// The quantization name of `general.file_type` (`Q4_K_M`, `F16`, …), if known.
    pub fn quant(&self) -> Option<&'static str> {
        self.file_type.and_then(ftype_name)
    }
}

/// llama.cpp's `llama_ftype` names (include/llama.h).
pub fn ftype_name(t: u64) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// Reads the header of the GGUF file at `path`.
pub fn read(path: &Path) -> io::Result<GgufInfo> {
    let (version, tensor_count, kv) = read_kv(path)?;
    let str_of = |k: &str| match kv.get(k) {
        Some(Val::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let int_of = |k: &str| match kv.get(k) {
        Some(Val::Int(n)) => Some(*n),
        Some(Val::Ints(v)) => v.iter().copied().max(),
        _ => None,
    };
    let architecture = str_of("general.architecture");
    let arch_int = |k: &str| {
        architecture
            .as_ref()
            .and_then(|a| int_of(&format!("{a}.{k}")))
    };
    let kv_bytes_per_token = (|| {
        let layers = arch_int("block_count")?;
        let embd = arch_int("embedding_length")?;
        let heads = arch_int("attention.head_count")?.max(1);
        let kv_heads = arch_int("attention.head_count_kv").unwrap_or(heads);
        let head_dim = embd / heads;
        let k_len = arch_int("attention.key_length").unwrap_or(head_dim);
        let v_len = arch_int("attention.value_length").unwrap_or(head_dim);
        layers
            .checked_mul(kv_heads)?
            .checked_mul(k_len.checked_add(v_len)?)?
            .checked_mul(2)
    })();
    Ok(GgufInfo {
        version,
        tensor_count,
        name: str_of("general.name"),
        file_type: int_of("general.file_type"),
        context_length: arch_int("context_length"),
        block_count: arch_int("block_count"),
        kv_bytes_per_token,
        split_count: int_of("split.count"),
        architecture,
    })
}

/// Estimated KV-cache bytes per context token of the GGUF model at `path`; `Ok(None)` when the
/// file lacks the shape keys.
pub fn kv_bytes_per_token(path: &Path) -> io::Result<Option<u64>> {
    read(path).map(|i| i.kv_bytes_per_token)
}

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

/// `(version, tensor count, metadata)`.
fn read_kv(path: &Path) -> io::Result<(u32, u64, HashMap<String, Val>)> {
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
    let tensors = u64_le(&mut r)?;
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
    Ok((version, tensors, out))
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
        b.extend_from_slice(&291u64.to_le_bytes());
        let n_kv: u64 = if with_kv_heads { 10 } else { 9 };
        b.extend_from_slice(&n_kv.to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "general.name");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "Llama 3 8B");
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
        u32_kv(&mut b, "general.file_type", 15);
        u32_kv(&mut b, "llama.context_length", 8192);
        u32_kv(&mut b, "llama.block_count", 32);
        u32_kv(&mut b, "llama.embedding_length", 4096);
        u32_kv(&mut b, "llama.attention.head_count", 32);
        if with_kv_heads {
            u32_kv(&mut b, "llama.attention.head_count_kv", 8);
        }
        b
    }

    fn info_of(bytes: &[u8]) -> io::Result<GgufInfo> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes)?;
        read(&p)
    }

    #[test]
    fn llama_shapes() {
        // Llama-3-8B: 32 layers × 8 KV heads × (128 + 128) × 2 bytes = 128 KiB per token.
        let i = info_of(&header(true)).expect("readable");
        assert_eq!(i.kv_bytes_per_token, Some(128 * 1024));
        // Llama-2-7B (no GQA): 32 heads → 512 KiB per token.
        let i2 = info_of(&header(false)).expect("readable");
        assert_eq!(i2.kv_bytes_per_token, Some(512 * 1024));
    }

    #[test]
    fn general_keys() {
        let i = info_of(&header(true)).expect("readable");
        assert_eq!(i.version, 3);
        assert_eq!(i.tensor_count, 291);
        assert_eq!(i.architecture.as_deref(), Some("llama"));
        assert_eq!(i.name.as_deref(), Some("Llama 3 8B"));
        assert_eq!(i.context_length, Some(8192));
        assert_eq!(i.block_count, Some(32));
        assert_eq!(i.quant(), Some("Q4_K_M"));
        assert_eq!(i.split_count, None);
        assert_eq!(ftype_name(1), Some("F16"));
        assert_eq!(ftype_name(4), None);
    }

    #[test]
    fn unreadable_files_are_errors() {
        assert!(info_of(b"").is_err());
        assert!(info_of(b"GGML\x03\0\0\0").is_err());
        let mut cut = header(true);
        cut.truncate(cut.len() - 3);
        assert!(info_of(&cut).is_err());
        assert!(read(Path::new("/nonexistent/m.gguf")).is_err());
    }
}
