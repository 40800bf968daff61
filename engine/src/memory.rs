//! How much memory a request may take, and sizes computed without overflow. A model file and a
//! command line are untrusted: a context length from metadata or `--ctx` must not wrap a
//! `usize` or ask the allocator for 700 GB; it is refused with [`Error::TooLarge`], saying how
//! much would be needed and how much is allowed.

use crate::error::{Error, Result};

/// The address space of wasm32: all a browser tab's engine can ever hold.
pub const WASM32_ADDRESS_SPACE: u64 = 4 << 30;

/// Bytes this process may still allocate for a model: natively the memory the OS reports as
/// available (Linux `MemAvailable`; where unknown, the address space), on wasm32 its 4 GiB
/// address space.
pub fn allowed_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        WASM32_ADDRESS_SPACE
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        mem_available().unwrap_or(usize::MAX as u64)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The product of `factors` (element counts and the element size in bytes), or
/// [`Error::TooLarge`] for `what` when it overflows a `u64` or exceeds `allowed`.
pub fn checked_bytes(what: &str, factors: &[u64], allowed: u64) -> Result<u64> {
    let n = factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f))
        .unwrap_or(u64::MAX);
    if n > allowed || n > usize::MAX as u64 {
        return Err(Error::TooLarge {
            what: what.to_string(),
            needed: n,
            allowed: allowed.min(usize::MAX as u64),
        });
    }
    Ok(n)
}

/// An empty `Vec<f32>` with room for `n` elements, or [`Error::OutOfMemory`] for `what` when the
/// allocator cannot provide them (on wasm32 a failed allocation would otherwise abort the whole
/// engine). Nothing is written: pages are backed by memory only once the caller fills them (the
/// KV cache grows with the conversation, within this capacity, never reallocated).
pub fn try_reserved_f32(what: &str, n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        what: what.to_string(),
        needed: (n as u64).saturating_mul(4),
    })?;
    Ok(v)
}

/// Bytes as a short human figure (`1.5 GiB`), for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_limits_are_typed_errors() {
        assert_eq!(checked_bytes("x", &[3, 4, 4], 1 << 20).unwrap(), 48);
        let e = checked_bytes("the KV cache", &[1 << 40, 1 << 30, 4], 1 << 30).unwrap_err();
        assert!(
            matches!(e, Error::TooLarge { needed: u64::MAX, allowed, .. } if allowed == 1 << 30),
            "{e}"
        );
        assert!(e.to_string().contains("the KV cache"), "{e}");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        let v = try_reserved_f32("x", 3).unwrap();
        assert!(v.is_empty() && v.capacity() >= 3);
        for n in [1usize << 60, usize::MAX / 4] {
            let e = try_reserved_f32("the KV cache", n).unwrap_err();
            assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
            assert!(
                e.to_string()
                    .starts_with("not enough memory for the KV cache"),
                "{e}"
            );
        }
        assert!(allowed_bytes() > 0);
    }
}
