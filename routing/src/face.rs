//! Parsers of what clients put in the URL, headers and body of the faces: the runtime reference
//! (`{name}` or a URL-encoded ARN), query parameters, the custom headers and the JSON-RPC id of
//! an MCP or A2A call. Each takes untrusted input, is bounded, never panics, and is fuzzed
//! (`fuzz/`, [`crate::fuzzing`]).

use conf::{Aws, MAX_ALLOWLISTED_VALUE_BYTES, MAX_CUSTOM_HEADERS};

/// The header prefix AgentCore passes to the agent as it is.
pub const CUSTOM_HEADER_PREFIX: &str = "x-amzn-bedrock-agentcore-runtime-custom-";

/// Longest runtime reference accepted (an ARN is far shorter; AgentCore caps ARNs at 2 048).
const MAX_REF_BYTES: usize = 2048;

/// Why a `/runtimes/{id}/…` reference names no runtime of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeRefError {
    /// Not a name, not `arn:aws*:bedrock-agentcore:REGION:ACCOUNT:runtime/NAME`.
    #[error("malformed runtime reference")]
    Malformed,
    /// A well-formed ARN for another region or account than this gateway's.
    #[error("the ARN names another region or account")]
    Elsewhere,
}

/// The runtime name a `/runtimes/{id}/…` path segment refers to: `{id}` is a runtime name or a
/// URL-encoded ARN `arn:PARTITION:bedrock-agentcore:REGION:ACCOUNT:runtime/NAME`, where
/// PARTITION is `aws` or `aws-*` (`aws-cn`, `aws-us-gov`), and REGION / ACCOUNT must match the
/// gateway's `[aws]` settings when those are set. Anything else — another service, a missing
/// region or account, an S3-style ARN — is malformed.
pub fn runtime_name(id: &str, aws: &Aws) -> Result<String, RuntimeRefError> {
    if id.len() > MAX_REF_BYTES {
        return Err(RuntimeRefError::Malformed);
    }
    let decoded = percent_decode(id).ok_or(RuntimeRefError::Malformed)?;
    let Some(arn) = decoded.strip_prefix("arn:") else {
        return Ok(decoded);
    };
    let mut parts = arn.splitn(5, ':');
    let (Some(partition), Some(service), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(RuntimeRefError::Malformed);
    };
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let name = resource
        .strip_prefix("runtime/")
        .ok_or(RuntimeRefError::Malformed)?;
    if !partition_ok
        || service != "bedrock-agentcore"
        || !conf::valid_region(region)
        || !account_ok
        || name.is_empty()
        || name.contains('/')
    {
        return Err(RuntimeRefError::Malformed);
    }
    let elsewhere = aws.region.as_deref().is_some_and(|r| r != region)
        || aws.account_id.as_deref().is_some_and(|a| a != account);
    if elsewhere {
        return Err(RuntimeRefError::Elsewhere);
    }
    Ok(name.to_owned())
}

/// `%XX`-decodes `s` (no `+` for space: this is a path segment); `None` for a broken escape or
/// bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The first value of `name` in a query string, names compared case-insensitively, the value
/// as it is (still percent-encoded).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query_pairs(query).find_map(|(k, v)| k.eq_ignore_ascii_case(name).then_some(v))
}

/// The `name=value` pairs of a query string (a pair without `=` is skipped).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter_map(|pair| pair.split_once('='))
}

/// Checks the `X-Amzn-Bedrock-AgentCore-Runtime-Custom-*` headers a request carries, in its
/// headers and (for WebSocket clients) its query: at most [`MAX_CUSTOM_HEADERS`], each value at
/// most [`MAX_ALLOWLISTED_VALUE_BYTES`] (decoded), as AgentCore holds allow-listed headers.
/// Returns the name of the first offender.
pub fn check_custom_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    query: Option<&'a str>,
) -> Result<(), String> {
    let mut count = 0;
    let mut check = |name: &str, len: usize| {
        count += 1;
        if len > MAX_ALLOWLISTED_VALUE_BYTES || count > MAX_CUSTOM_HEADERS {
            Err(name.to_owned())
        } else {
            Ok(())
        }
    };
    for (name, value) in headers {
        if is_custom_header(name) {
            check(name, value.len())?;
        }
    }
    for (name, value) in query.map(query_pairs).into_iter().flatten() {
        if is_custom_header(name) {
            let len = percent_encoding_len(value);
            check(name, len)?;
        }
    }
    Ok(())
}

/// Whether `name` (any case) is a custom header with a non-empty suffix.
pub fn is_custom_header(name: &str) -> bool {
    name.len() > CUSTOM_HEADER_PREFIX.len()
        && name.is_char_boundary(CUSTOM_HEADER_PREFIX.len())
        && name[..CUSTOM_HEADER_PREFIX.len()].eq_ignore_ascii_case(CUSTOM_HEADER_PREFIX)
}

/// Most of a JSON-RPC body read to find its `id`: an MCP or A2A call is far shorter; a longer
/// body is answered with `"id": null`.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// A JSON-RPC request id: a string or an integer (JSON-RPC also allows fractions; MCP does not).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum JsonRpcId {
    Number(i64),
    String(String),
}

/// The `id` of the JSON-RPC request in `body`, so an error the gateway answers itself can name
/// the call it refuses (MCP clients match answers to calls by id; `"id": null` matches none).
/// Only a single request object counts: a batch, a notification, a body that is not JSON, is
/// cut short or is longer than [`MAX_ENVELOPE_BYTES`] gives `None`. Nesting is bounded by
/// serde_json's recursion limit.
pub fn jsonrpc_id(body: &[u8]) -> Option<JsonRpcId> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        id: Option<JsonRpcId>,
    }
    if body.len() > MAX_ENVELOPE_BYTES {
        return None;
    }
    serde_json::from_slice::<Envelope>(body).ok()?.id
}

/// The decoded length of a percent-encoded value (an upper bound where escapes are broken).
fn percent_encoding_len(value: &str) -> usize {
    value.len()
        - 2 * value
            .bytes()
            .filter(|b| *b == b'%')
            .count()
            .min(value.len() / 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(region: Option<&str>, account: Option<&str>) -> Aws {
        Aws {
            region: region.map(str::to_owned),
            account_id: account.map(str::to_owned),
        }
    }

    #[test]
    fn names_and_strict_arns() {
        let any = aws(None, None);
        let arn = "arn%3Aaws%3Abedrock-agentcore%3Aus-east-1%3A123456789012%3Aruntime%2Ftools";
        assert_eq!(runtime_name("tools", &any), Ok("tools".into()));
        assert_eq!(runtime_name(arn, &any), Ok("tools".into()));
        assert_eq!(
            runtime_name(
                "arn:aws-us-gov:bedrock-agentcore:us-gov-west-1:123456789012:runtime/x",
                &any
            ),
            Ok("x".into())
        );
        for bad in [
            "arn:aws:s3:::runtime/default",
            "arn:aws:bedrock-agentcore:::runtime/default",
            "arn:aws:bedrock-agentcore:us-east-1:12345:runtime/default",
            "arn:aws:bedrock-agentcore:us-east-1:123456789012:agent/default",
            "arn:gcp:bedrock-agentcore:us-east-1:123456789012:runtime/default",
            "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/",
            "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/a/b",
            "arn:aws:bedrock-agentcore:US_EAST:123456789012:runtime/default",
            "%zz",
        ] {
            assert_eq!(
                runtime_name(bad, &any),
                Err(RuntimeRefError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn arns_must_name_this_region_and_account_when_set() {
        let arn = "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/x";
        let ours = aws(Some("us-east-1"), Some("123456789012"));
        assert_eq!(runtime_name(arn, &ours), Ok("x".into()));
        let other_region = aws(Some("eu-west-1"), None);
        assert_eq!(
            runtime_name(arn, &other_region),
            Err(RuntimeRefError::Elsewhere)
        );
        let other_account = aws(None, Some("000000000000"));
        assert_eq!(
            runtime_name(arn, &other_account),
            Err(RuntimeRefError::Elsewhere)
        );
    }

    #[test]
    fn custom_headers_are_capped_by_size_and_count() {
        let big = vec![b'a'; MAX_ALLOWLISTED_VALUE_BYTES + 1];
        let ok = vec![b'a'; MAX_ALLOWLISTED_VALUE_BYTES];
        let name = "x-amzn-bedrock-agentcore-runtime-custom-big";
        assert!(check_custom_headers([(name, ok.as_slice())], None).is_ok());
        assert_eq!(
            check_custom_headers([(name, big.as_slice())], None),
            Err(name.to_owned())
        );
        assert!(check_custom_headers([("x-other", big.as_slice())], None).is_ok());
        let many: Vec<String> = (0..=MAX_CUSTOM_HEADERS)
            .map(|i| format!("{CUSTOM_HEADER_PREFIX}h{i}"))
            .collect();
        assert!(check_custom_headers(many.iter().map(|n| (n.as_str(), &b"v"[..])), None).is_err());
        let query = format!(
            "X-Amzn-Bedrock-AgentCore-Runtime-Custom-Q={}",
            "a".repeat(MAX_ALLOWLISTED_VALUE_BYTES + 1)
        );
        assert!(check_custom_headers([], Some(&query)).is_err());
        assert!(
            check_custom_headers([], Some("x-amzn-bedrock-agentcore-runtime-custom-q=%41")).is_ok()
        );
    }

    #[test]
    fn jsonrpc_ids() {
        let call = |id: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        assert_eq!(jsonrpc_id(call("7").as_bytes()), Some(JsonRpcId::Number(7)));
        assert_eq!(
            jsonrpc_id(call(r#""req-001""#).as_bytes()),
            Some(JsonRpcId::String("req-001".into()))
        );
        for none in [
            call("null"),
            call("1.5"),
            call("[1]"),
            format!("[{}]", call("1")),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
            call("1")[..20].to_owned(),
            format!("{}{}", " ".repeat(MAX_ENVELOPE_BYTES), call("1")),
            "[".repeat(10_000),
        ] {
            assert_eq!(jsonrpc_id(none.as_bytes()), None, "{none:.60}");
        }
    }

    #[test]
    fn query_params() {
        let q = "qualifier=DEFAULT&X-Amzn-Bedrock-AgentCore-Runtime-Session-Id=abc&flag";
        assert_eq!(
            query_param(q, "x-amzn-bedrock-agentcore-runtime-session-id"),
            Some("abc")
        );
        assert_eq!(query_param(q, "flag"), None);
        assert_eq!(query_param(q, "qualifier"), Some("DEFAULT"));
    }
}
