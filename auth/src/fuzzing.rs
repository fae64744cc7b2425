//! Entry points for fuzzing the parsers of untrusted input (`fuzz/`, cargo-fuzz), also run
//! over the seed corpus and mutations of it by a bounded unit test on stable Rust ([`exercise`]).
//! Each must return, never panic, whatever the bytes.

use crate::Presented;
use crate::sigv4::parse;

/// The `Authorization` header and the credential scope inside it.
pub fn sigv4_authorization(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse::authorization_header(s);
        let _ = parse::amz_date(s);
    }
}

/// The presigned query string.
pub fn sigv4_presigned_query(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse::has_presigned_params(s);
        let _ = parse::presigned_query(s);
    }
}

/// A bearer token's header (what is read before any key is chosen), and the WebSocket
/// bearer subprotocol that carries tokens.
pub fn jwt_header(data: &[u8]) {
    let _ = jsonwebtoken::decode_header(data);
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(value) = http::HeaderValue::from_str(s)
    {
        let mut req = http::Request::new(());
        req.headers_mut()
            .insert(http::header::SEC_WEBSOCKET_PROTOCOL, value.clone());
        let _ = Presented::of(&req.into_parts().0);
        let mut req = http::Request::new(());
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
        let _ = Presented::of(&req.into_parts().0);
    }
}

/// Runs `target` over every seed in `fuzz/corpus/{name}` and deterministic mutations of each
/// (byte flips, truncations, splices, insertions): a bounded stand-in for the fuzzer in unit
/// tests on stable Rust. Panics (failing the test) if the corpus is missing or empty.
pub fn exercise(corpus: &std::path::Path, name: &str, target: fn(&[u8])) {
    let dir = corpus.join(name);
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    assert!(!seeds.is_empty(), "no seeds for {name}");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // About 200 000 mutations per target, however large its corpus has grown.
    let per_seed = (200_000 / seeds.len()).clamp(20, 2_000);
    for seed in &seeds {
        target(seed);
        for _ in 0..per_seed {
            let mut m = seed.clone();
            match next() % 4 {
                0 if !m.is_empty() => {
                    let i = (next() as usize) % m.len();
                    m[i] ^= 1 << (next() % 8);
                }
                1 => m.truncate((next() as usize) % (m.len() + 1)),
                2 => {
                    let other = &seeds[(next() as usize) % seeds.len()];
                    let cut = (next() as usize) % (other.len() + 1);
                    m.extend_from_slice(&other[cut..]);
                }
                _ => m.insert((next() as usize) % (m.len() + 1), next() as u8),
            }
            target(&m);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parsers_survive_the_seed_corpus_and_its_mutations() {
        let corpus = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"));
        super::exercise(corpus, "sigv4_authorization", super::sigv4_authorization);
        super::exercise(
            corpus,
            "sigv4_presigned_query",
            super::sigv4_presigned_query,
        );
        super::exercise(corpus, "jwt_header", super::jwt_header);
    }
}
