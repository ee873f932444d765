//! Injected inventory specs: `"24GiB:RTX 3090,12GiB:RTX 3060"`.

use crate::{GpuDevice, GpuError};

const FORMAT_HINT: &str =
    "expected comma-separated SIZE[:NAME] entries, e.g. \"24GiB:RTX 3090,12GiB:RTX 3060\"";

/// Parse an injected inventory spec such as "24GiB:RTX 3090,12GiB:RTX 3060" (used by the env
/// var LLORCH_FAKE_GPUS for tests). Every device starts with free == total.
///
/// Each comma-separated entry is `SIZE[:NAME]`. `SIZE` is a whole number with a unit:
/// `K`/`M`/`G`/`T`, optionally followed by `i` and/or `B` (`12G`, `12GB`, `12GiB`,
/// `12288MiB`); all units are binary (1 GiB = 2^30 bytes), as GPU marketing "GB" are.
/// A plain byte count needs the `B` suffix. `NAME` defaults to `"Fake GPU <index>"`.
/// Devices get indices 0, 1, ... in spec order and UUIDs `GPU-fake-<index>`.
pub fn parse_inventory_spec(spec: &str) -> Result<Vec<GpuDevice>, GpuError> {
    if spec.trim().is_empty() {
        return Err(GpuError::BadSpec(format!("spec is empty; {FORMAT_HINT}")));
    }
    spec.split(',')
        .enumerate()
        .map(|(i, entry)| {
            let index = u32::try_from(i)
                .map_err(|_| GpuError::BadSpec("too many devices in spec".to_string()))?;
            parse_entry(index, entry.trim()).map_err(|why| {
                GpuError::BadSpec(format!("entry {} ({entry:?}): {why}; {FORMAT_HINT}", i + 1))
            })
        })
        .collect()
}

fn parse_entry(index: u32, entry: &str) -> Result<GpuDevice, String> {
    if entry.is_empty() {
        return Err("empty entry".to_string());
    }
    let (size, name) = match entry.split_once(':') {
        Some((size, name)) => (size.trim(), name.trim()),
        None => (entry, ""),
    };
    let total_bytes = parse_size(size)?;
    let name = if name.is_empty() {
        format!("Fake GPU {index}")
    } else {
        name.to_string()
    };
    Ok(GpuDevice {
        index,
        uuid: format!("GPU-fake-{index}"),
        name,
        total_bytes,
        free_bytes: total_bytes,
        used_bytes: 0,
        utilization_pct: Some(0),
        driver_version: None,
        cuda_driver_version: None,
        processes: Vec::new(),
    })
}

fn parse_size(size: &str) -> Result<u64, String> {
    let digits_end = size
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(size.len());
    let (number, unit) = size.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("size {size:?} does not start with a whole number"));
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("size {size:?} is too large"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "" => return Err(format!("size {size:?} has no unit (use e.g. GiB or MiB)")),
        _ => return Err(format!("unknown unit {unit:?} in size {size:?}")),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {size:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("size {size:?} is zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn bad(spec: &str) -> String {
        match parse_inventory_spec(spec) {
            Err(e @ GpuError::BadSpec(_)) => e.to_string(),
            other => panic!("{spec:?} should be a BadSpec error, got {other:?}"),
        }
    }

    #[test]
    fn parses_reference_box() {
        let devs = parse_inventory_spec("24GiB:RTX 3090, 12GiB:RTX 3060").expect("spec");
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].index, 0);
        assert_eq!(devs[0].name, "RTX 3090");
        assert_eq!(devs[0].uuid, "GPU-fake-0");
        assert_eq!(devs[0].total_bytes, 24 * GIB);
        assert_eq!(devs[0].free_bytes, 24 * GIB);
        assert_eq!(devs[0].used_bytes, 0);
        assert_eq!((devs[1].index, devs[1].name.as_str()), (1, "RTX 3060"));
        assert_eq!(devs[1].total_bytes, 12 * GIB);
    }

    #[test]
    fn parses_units_and_default_names() {
        let one = |s: &str| parse_inventory_spec(s).expect(s).remove(0);
        assert_eq!(one("24GiB:RTX 3090").total_bytes, 24 * GIB);
        assert_eq!(one("12G").total_bytes, 12 * GIB);
        assert_eq!(one("12G").name, "Fake GPU 0");
        assert_eq!(one("12288MiB").total_bytes, 12 * GIB);
        assert_eq!(one("12gb").total_bytes, 12 * GIB);
        assert_eq!(one("1024B").total_bytes, 1024);
        assert_eq!(one("80GiB:NVIDIA H100: SXM").name, "NVIDIA H100: SXM");
    }

    #[test]
    fn rejects_bad_specs_with_clear_messages() {
        assert!(bad("").contains("spec is empty"));
        assert!(bad("   ").contains("spec is empty"));
        assert!(bad("garbage").contains("does not start with a whole number"));
        assert!(bad("24").contains("has no unit"));
        assert!(bad("24XB:foo").contains("unknown unit"));
        assert!(bad("0GiB").contains("is zero"));
        assert!(bad("99999999999TiB").contains("too large"));
        let msg = bad("24GiB:RTX 3090,,12GiB");
        assert!(
            msg.contains("entry 2") && msg.contains("empty entry"),
            "{msg}"
        );
        assert!(msg.contains("e.g. \"24GiB:RTX 3090"), "{msg}");
    }
}
