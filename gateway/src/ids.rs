//! Identifiers made per request — request ids, trace contexts, the pick of a weighted split —
//! from a per-thread generator seeded once from the kernel. They must be unique and well spread,
//! not secret: a `getrandom` system call for each (as `Uuid::new_v4` makes) was a kernel
//! round trip on every request. Session ids and anything that must not be guessable still come
//! from the kernel.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(n).ok() != Some(bytes.len()) {
        // Never reached on Linux ≥ 3.17; any distinct start keeps the sequence unique per thread.
        return uuid::Uuid::new_v4().as_u64_pair().0;
    }
    u64::from_ne_bytes(bytes)
}

/// The next 64 bits of this thread's SplitMix64 sequence.
pub fn random_u64() -> u64 {
    STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn random_bytes() -> [u8; 16] {
    let (a, b) = (random_u64(), random_u64());
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_ne_bytes());
    out[8..].copy_from_slice(&b.to_ne_bytes());
    out
}

/// A request id in AgentCore's form: a version-4 UUID, hyphenated.
pub fn request_id() -> String {
    uuid::Builder::from_random_bytes(random_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A fresh W3C trace context: version 00, random trace and span ids, sampled.
pub fn traceparent() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    // Trace id: 32 hex digits at 3; span id: 16 at 36 (never all zero).
    for (start, mut n) in [
        (3, random_u64()),
        (19, random_u64()),
        (36, random_u64() | 1),
    ] {
        for b in out[start..start + 16].iter_mut().rev() {
            *b = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
    }
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = ids.iter().next().unwrap();
        let parsed = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        let tp = traceparent();
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(tp.starts_with("00-") && tp.ends_with("-01"));
    }
}
