//! Entry points for fuzzing the faces' parsers of untrusted input (`fuzz/`, cargo-fuzz), also
//! run over the seed corpus and mutations of it by a bounded unit test on stable Rust. Each must
//! return, never panic, whatever the bytes; the assertions are properties every answer keeps.

use conf::Aws;

use crate::face;

/// A `/runtimes/{id}/…` reference, against a gateway with and without `[aws]` set. An ARN that
/// is accepted names a runtime: non-empty, one path segment.
pub fn runtime_ref(data: &[u8]) {
    let Ok(id) = std::str::from_utf8(data) else {
        return;
    };
    let pinned = Aws {
        region: Some("us-east-1".into()),
        account_id: Some("123456789012".into()),
    };
    for aws in [Aws::default(), pinned] {
        if let Ok(name) = face::runtime_name(id, &aws)
            && face::percent_decode(id).is_some_and(|d| d.starts_with("arn:"))
        {
            assert!(!name.is_empty() && !name.contains('/'), "{name:?}");
        }
    }
}

/// A query string: its pairs, a named parameter, and percent-decoding (never longer than its
/// input).
pub fn query(data: &[u8]) {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    for (k, v) in face::query_pairs(q) {
        assert!(k.len() + v.len() < q.len());
    }
    let _ = face::query_param(q, "qualifier");
    if let Some(decoded) = face::percent_decode(q) {
        assert!(decoded.len() <= q.len());
    }
}

/// Custom headers: `name: value` lines, the last line read as a WebSocket query string.
pub fn custom_headers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let query = lines.pop();
    let headers: Vec<(&str, &[u8])> = lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n, v.trim().as_bytes()))
        .collect();
    if let Err(name) = face::check_custom_headers(headers.iter().copied(), query) {
        assert!(face::is_custom_header(&name), "{name:?}");
    }
}

/// The JSON-RPC envelope of an MCP or A2A call: an id found survives being written back into
/// an error answer and read again.
pub fn jsonrpc_envelope(data: &[u8]) {
    if let Some(id) = face::jsonrpc_id(data) {
        let answer = serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": {} });
        let again = serde_json::to_vec(&answer)
            .ok()
            .and_then(|b| face::jsonrpc_id(&b));
        assert_eq!(again, Some(id));
    }
}

/// A backend's `/ping` answer (backends are untrusted too).
pub fn health(data: &[u8]) {
    let _ = crate::ping::parse_health(data);
}

/// A runtime session id from a header or query parameter.
pub fn session_id(data: &[u8]) {
    if let Ok(id) = crate::SessionId::parse(data) {
        assert!((33..=256).contains(&id.as_str().len()));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parsers_survive_the_seed_corpus_and_its_mutations() {
        let corpus = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"));
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 6] = [
            ("runtime_ref", super::runtime_ref),
            ("query", super::query),
            ("custom_headers", super::custom_headers),
            ("jsonrpc_envelope", super::jsonrpc_envelope),
            ("health", super::health),
            ("session_id", super::session_id),
        ];
        for (name, target) in targets {
            auth::fuzzing::exercise(corpus, name, target);
        }
    }
}
