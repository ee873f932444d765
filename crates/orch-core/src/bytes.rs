//! Byte counts for people, in the two forms messages use (one implementation each).

const KIB: f64 = 1024.0;
const GIB: u64 = 1 << 30;

/// `512 B`, `1.5 KiB`, `4.4 GiB`: binary units up to TiB, one decimal (pull progress and hub
/// listings).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= KIB && u + 1 < UNITS.len() {
        v /= KIB;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `4.4 GiB`, or whole MiB below 1 GiB (`768 MiB`): VRAM in placement reasons.
pub fn gib_or_mib(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= GIB {
        format!("{:.1} GiB", b / GIB as f64)
    } else {
        format!("{:.0} MiB", b / (KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 40), "5.0 TiB");
        assert_eq!(human(5 << 50), "5120.0 TiB");
        assert_eq!(gib_or_mib(768 << 20), "768 MiB");
        assert_eq!(gib_or_mib(GIB), "1.0 GiB");
        assert_eq!(gib_or_mib((4 << 30) + (400 << 20)), "4.4 GiB");
    }
}
