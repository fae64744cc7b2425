//! Parsers for the untrusted parts of a SigV4 request: the `Authorization` header, the
//! presigned query, the credential scope and `X-Amz-Date`. No allocation of attacker-chosen size
//! beyond the input itself; every malformed input is an error, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The signature a client sent, in either form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSignature {
    pub scope: CredentialScope,
    /// Lower-case header names, `;`-separated as sent, in the client's order.
    pub signed_headers: Vec<String>,
    /// Lower-case hex.
    pub signature: String,
    /// Presigned only: `X-Amz-Date` and `X-Amz-Expires` from the query.
    pub presigned: Option<Presigned>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presigned {
    pub date: String,
    pub expires: Duration,
    pub security_token: Option<String>,
}

/// `AKID/20260101/us-east-1/bedrock-agentcore/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialScope {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed SigV4 {0}")]
pub struct ParseError(pub &'static str);

/// `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
pub fn authorization_header(value: &str) -> Result<ClientSignature, ParseError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(ParseError("algorithm"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(ParseError("component"))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(ParseError("component")),
        };
        if slot.replace(v).is_some() {
            return Err(ParseError("repeated component"));
        }
    }
    Ok(ClientSignature {
        scope: credential_scope(credential.ok_or(ParseError("Credential"))?)?,
        signed_headers: signed_headers(signed.ok_or(ParseError("SignedHeaders"))?)?,
        signature: signature_hex(signature.ok_or(ParseError("Signature"))?)?,
        presigned: None,
    })
}

/// True when a query string carries a presigned signature.
pub fn has_presigned_params(query: &str) -> bool {
    query.split('&').any(|p| p.starts_with("X-Amz-Signature="))
}

/// The query parameters a presigned signature adds (and that are not part of what it signs).
pub const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// The presigned form: `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`,
/// `X-Amz-SignedHeaders`, `X-Amz-Signature` (and `X-Amz-Security-Token`).
pub fn presigned_query(query: &str) -> Result<ClientSignature, ParseError> {
    let mut found: [Option<String>; 7] = Default::default();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(i) = PRESIGN_PARAMS.iter().position(|p| *p == k) {
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| ParseError("query encoding"))?;
            if found[i].replace(v.into_owned()).is_some() {
                return Err(ParseError("repeated query parameter"));
            }
        }
    }
    let [
        algorithm,
        credential,
        date,
        expires,
        signed,
        signature,
        token,
    ] = found;
    if algorithm.as_deref() != Some(ALGORITHM) {
        return Err(ParseError("X-Amz-Algorithm"));
    }
    let expires: u64 = expires
        .and_then(|e| e.parse().ok())
        .filter(|e| (1..=604_800).contains(e))
        .ok_or(ParseError("X-Amz-Expires"))?;
    Ok(ClientSignature {
        scope: credential_scope(&credential.ok_or(ParseError("X-Amz-Credential"))?)?,
        signed_headers: signed_headers(&signed.ok_or(ParseError("X-Amz-SignedHeaders"))?)?,
        signature: signature_hex(&signature.ok_or(ParseError("X-Amz-Signature"))?)?,
        presigned: Some(Presigned {
            date: date.ok_or(ParseError("X-Amz-Date"))?,
            expires: Duration::from_secs(expires),
            security_token: token,
        }),
    })
}

fn credential_scope(value: &str) -> Result<CredentialScope, ParseError> {
    let mut parts = value.split('/');
    let mut next = |what| {
        parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(ParseError(what))
    };
    let scope = CredentialScope {
        access_key_id: next("access key id")?.to_owned(),
        date: next("scope date")?.to_owned(),
        region: next("scope region")?.to_owned(),
        service: next("scope service")?.to_owned(),
    };
    if next("scope terminator")? != "aws4_request" || parts.next().is_some() {
        return Err(ParseError("scope terminator"));
    }
    if scope.date.len() != 8 || !scope.date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError("scope date"));
    }
    Ok(scope)
}

fn signed_headers(value: &str) -> Result<Vec<String>, ParseError> {
    let names: Vec<String> = value.split(';').map(str::to_owned).collect();
    let valid = |n: &String| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if names.len() > 64 || !names.iter().all(valid) {
        return Err(ParseError("SignedHeaders"));
    }
    Ok(names)
}

fn signature_hex(value: &str) -> Result<String, ParseError> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ParseError("Signature"))
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'` (the ISO 8601 basic form SigV4 uses) as a time.
pub fn amz_date(value: &str) -> Result<SystemTime, ParseError> {
    let b = value.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Result<u64, ParseError> {
        let s = b.get(r).ok_or(ParseError("X-Amz-Date"))?;
        if !s.iter().all(u8::is_ascii_digit) {
            return Err(ParseError("X-Amz-Date"));
        }
        Ok(s.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(ParseError("X-Amz-Date"));
    }
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
    {
        return Err(ParseError("X-Amz-Date"));
    }
    let days = days_from_civil(y, mo, d);
    Ok(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3_600 + mi * 60 + s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const IAM: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
        SignedHeaders=content-type;host;x-amz-date, \
        Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";

    #[test]
    fn authorization_header_of_the_aws_docs() {
        let s = authorization_header(IAM).unwrap();
        assert_eq!(s.scope.access_key_id, "AKIDEXAMPLE");
        assert_eq!(s.scope.date, "20150830");
        assert_eq!(s.scope.region, "us-east-1");
        assert_eq!(s.scope.service, "iam");
        assert_eq!(s.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert!(s.presigned.is_none());
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA512 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/2015083/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws5_request, SignedHeaders=host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=Host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, Credential=x, SignedHeaders=host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ] {
            assert!(authorization_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn presigned_query() {
        let q = "qualifier=DEFAULT&X-Amz-Algorithm=AWS4-HMAC-SHA256\
            &X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Fus-west-2%2Fbedrock-agentcore%2Faws4_request\
            &X-Amz-Date=20260101T120000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host\
            &X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        assert!(has_presigned_params(q));
        let s = super::presigned_query(q).unwrap();
        assert_eq!(s.scope.region, "us-west-2");
        let p = s.presigned.unwrap();
        assert_eq!(p.expires, Duration::from_secs(300));
        assert_eq!(p.date, "20260101T120000Z");
        assert!(super::presigned_query(&q.replace("300", "0")).is_err());
        assert!(super::presigned_query(&q.replace("300", "604801")).is_err());
    }

    #[test]
    fn amz_dates() {
        let t = amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_440_938_160
        );
        assert_eq!(amz_date("19700101T000000Z").unwrap(), UNIX_EPOCH);
        for bad in [
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "20150830T123600",
            "2015083xT123600Z",
            "",
        ] {
            assert!(amz_date(bad).is_err(), "{bad}");
        }
    }
}
