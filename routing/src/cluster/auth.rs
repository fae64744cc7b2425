//! What the cluster's shared secret signs: relay requests (replica → host, per backend), control
//! calls (replica → host: place, release; with a time window and the body), and host records in
//! Redis (so that whoever can write to Redis cannot send replicas to another address). HMAC-SHA256,
//! compared in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A control call older or newer than this is refused (replay window).
pub const CONTROL_WINDOW_SECS: u64 = 30;

fn mac(secret: &[u8], parts: &[&[u8]]) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

/// Equal in constant time (for strings of equal length; lengths are not secret).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token a replica sends with every request it relays to `backend` on a host.
pub fn relay_token(secret: &[u8], backend: &str) -> String {
    mac(secret, &[b"relay", backend.as_bytes()])
}

/// `x-sessiongate-auth` of a control call: `<unix secs>:<mac over the time, path and body>`.
pub fn control_auth(secret: &[u8], path: &str, body: &[u8], now_secs: u64) -> String {
    let digest = Sha256::digest(body);
    let t = now_secs.to_string();
    let m = mac(
        secret,
        &[b"control", t.as_bytes(), path.as_bytes(), &digest],
    );
    format!("{t}:{m}")
}

/// Whether a control call's `x-sessiongate-auth` is valid now.
pub fn control_ok(secret: &[u8], header: &str, path: &str, body: &[u8], now_secs: u64) -> bool {
    let Some((t, _)) = header.split_once(':') else {
        return false;
    };
    let Ok(at) = t.parse::<u64>() else {
        return false;
    };
    at.abs_diff(now_secs) <= CONTROL_WINDOW_SECS
        && same(header, &control_auth(secret, path, body, at))
}

/// The MAC of a host record: its id and address.
pub fn host_mac(secret: &[u8], id: &str, addr: &str) -> String {
    mac(secret, &[b"host", id.as_bytes(), addr.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_calls_are_bound_to_time_path_and_body() {
        let s = b"0123456789abcdef0123456789abcdef";
        let h = control_auth(s, "/_sessiongate/place", b"{}", 1000);
        assert!(control_ok(s, &h, "/_sessiongate/place", b"{}", 1010));
        assert!(
            !control_ok(s, &h, "/_sessiongate/place", b"{}", 1031),
            "too old"
        );
        assert!(!control_ok(s, &h, "/_sessiongate/release", b"{}", 1000));
        assert!(!control_ok(s, &h, "/_sessiongate/place", b"{ }", 1000));
        assert!(!control_ok(
            b"another secret, 32 bytes long...",
            &h,
            "/_sessiongate/place",
            b"{}",
            1000
        ));
        assert!(!control_ok(s, "garbage", "/", b"", 0));
        assert_ne!(relay_token(s, "a"), relay_token(s, "b"));
    }
}
