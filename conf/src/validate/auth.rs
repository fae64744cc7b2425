//! `[runtimes.auth]`: JWT (OIDC) and SigV4, with their credentials files.

use super::*;

pub(super) fn auth(
    errs: &mut Errors,
    path: &str,
    a: &FileAuth,
    base: &Path,
) -> Option<InboundAuth> {
    let jwt_keys = [
        ("discovery_url", a.discovery_url.is_some()),
        ("allowed_clients", a.allowed_clients.is_some()),
        ("allowed_audiences", a.allowed_audiences.is_some()),
        ("allowed_scopes", a.allowed_scopes.is_some()),
        ("required_claims", a.required_claims.is_some()),
        ("leeway_secs", a.leeway_secs.is_some()),
        ("jwks_refresh_secs", a.jwks_refresh_secs.is_some()),
        ("jwks_min_refetch_secs", a.jwks_min_refetch_secs.is_some()),
    ];
    let sigv4_keys = [
        ("regions", a.regions.is_some()),
        ("credentials_file", a.credentials_file.is_some()),
        ("max_clock_skew_secs", a.max_clock_skew_secs.is_some()),
        ("body_memory_bytes", a.body_memory_bytes.is_some()),
    ];
    let mut foreign = |keys: &[(&str, bool)], mode: &str| {
        for (key, set) in keys {
            if *set {
                errs.push(
                    format!("{path}.{key}"),
                    format!("does not apply to auth mode `{mode}`"),
                );
            }
        }
    };
    match a.mode.as_str() {
        "none" => {
            foreign(&jwt_keys, "none");
            foreign(&sigv4_keys, "none");
            Some(InboundAuth::None)
        }
        "jwt" => {
            foreign(&sigv4_keys, "jwt");
            jwt(errs, path, a).map(InboundAuth::Jwt)
        }
        "sigv4" => {
            foreign(&jwt_keys, "sigv4");
            sigv4(errs, path, a, base).map(InboundAuth::SigV4)
        }
        other => {
            errs.push(
                format!("{path}.mode"),
                format!("`{other}` is not one of none, jwt, sigv4"),
            );
            None
        }
    }
}

pub(super) fn jwt(errs: &mut Errors, path: &str, a: &FileAuth) -> Option<JwtAuth> {
    let url = match &a.discovery_url {
        None => {
            errs.push(
                format!("{path}.discovery_url"),
                "auth mode `jwt` needs a discovery_url",
            );
            None
        }
        Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
            errs.push(
                format!("{path}.discovery_url"),
                format!("`{u}` is not an http(s) URL"),
            );
            None
        }
        Some(u) if !u.ends_with("/.well-known/openid-configuration") => {
            errs.push(
                format!("{path}.discovery_url"),
                format!("`{u}` must end with /.well-known/openid-configuration"),
            );
            None
        }
        Some(u) => Some(u.clone()),
    };
    let leeway = a.leeway_secs.unwrap_or(60);
    errs.range(&format!("{path}.leeway_secs"), leeway, 0, 600);
    let refresh = a.jwks_refresh_secs.unwrap_or(300);
    errs.range(&format!("{path}.jwks_refresh_secs"), refresh, 1, 86_400);
    let refetch = a.jwks_min_refetch_secs.unwrap_or(10);
    errs.range(&format!("{path}.jwks_min_refetch_secs"), refetch, 0, 3_600);
    let rules = a
        .required_claims
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, c)| claim_rule(errs, &format!("{path}.required_claims[{i}]"), c))
        .collect();
    Some(JwtAuth {
        discovery_url: url?,
        allowed_clients: a.allowed_clients.clone().unwrap_or_default(),
        allowed_audiences: a.allowed_audiences.clone().unwrap_or_default(),
        allowed_scopes: a.allowed_scopes.clone().unwrap_or_default(),
        required_claims: rules,
        leeway: Duration::from_secs(leeway),
        refresh_interval: Duration::from_secs(refresh),
        min_refetch_interval: Duration::from_secs(refetch),
    })
}

pub(super) fn claim_rule(errs: &mut Errors, path: &str, c: &FileClaim) -> Option<ClaimRule> {
    let matches = match (&c.equals, &c.contains, &c.contains_any) {
        (Some(v), None, None) => ClaimMatch::Equals(v.clone()),
        (None, Some(v), None) => ClaimMatch::Contains(v.clone()),
        (None, None, Some(v)) if !v.is_empty() => ClaimMatch::ContainsAny(v.clone()),
        _ => {
            errs.push(
                path,
                "needs exactly one of equals, contains, contains_any (non-empty)",
            );
            return None;
        }
    };
    if c.name.is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
        return None;
    }
    Some(ClaimRule {
        name: c.name.clone(),
        matches,
    })
}

pub(super) fn sigv4(errs: &mut Errors, path: &str, a: &FileAuth, base: &Path) -> Option<SigV4Auth> {
    let regions = a
        .regions
        .clone()
        .unwrap_or_else(|| vec!["us-east-1".into()]);
    if regions.is_empty() {
        errs.push(format!("{path}.regions"), "at least one region is needed");
    }
    let skew = a.max_clock_skew_secs.unwrap_or(300);
    errs.range(&format!("{path}.max_clock_skew_secs"), skew, 1, 3_600);
    let memory = a.body_memory_bytes.unwrap_or(1 << 20);
    errs.range(&format!("{path}.body_memory_bytes"), memory, 0, 1 << 30);
    let Some(file) = &a.credentials_file else {
        errs.push(
            format!("{path}.credentials_file"),
            "auth mode `sigv4` needs a credentials_file",
        );
        return None;
    };
    let file = base.join(file);
    let credentials = load_credentials(errs, &format!("{path}.credentials_file"), &file)?;
    Some(SigV4Auth {
        regions,
        credentials_file: file,
        credentials,
        max_clock_skew: Duration::from_secs(skew),
        body_memory_bytes: usize::try_from(memory).unwrap_or(usize::MAX),
    })
}

/// Reads a credentials file; its errors are reported under `path` (the key that names it).
pub(crate) fn load_credentials(
    errs: &mut Errors,
    path: &str,
    file: &Path,
) -> Option<Vec<Credential>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errs.push(path, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    let parsed: FileCredentials = match crate::parse_toml(&text) {
        Ok(p) => p,
        Err(e) => {
            for inner in e.0 {
                errs.push(path, format!("{}: {}", file.display(), inner));
            }
            return None;
        }
    };
    if parsed.credentials.is_empty() {
        errs.push(path, format!("{} holds no [[credentials]]", file.display()));
    }
    let mut ids = HashSet::new();
    for (i, c) in parsed.credentials.iter().enumerate() {
        let p = format!("{path} → credentials[{i}]");
        if c.access_key_id.is_empty()
            || c.access_key_id.len() > 128
            || !c.access_key_id.chars().all(|ch| ch.is_ascii_alphanumeric())
        {
            errs.push(
                p.clone(),
                "access_key_id must be 1 to 128 letters and digits",
            );
        }
        if c.secret_access_key.len() < 16 {
            errs.push(p.clone(), "secret_access_key is too short");
        }
        if c.principal.is_empty() {
            errs.push(p.clone(), "principal must not be empty");
        }
        if !ids.insert(c.access_key_id.as_str()) {
            errs.push(
                p,
                format!("access_key_id {} appears twice", c.access_key_id),
            );
        }
    }
    Some(
        parsed
            .credentials
            .into_iter()
            .map(|c| Credential {
                access_key_id: c.access_key_id,
                secret_access_key: c.secret_access_key,
                session_token: c.session_token,
                principal: c.principal,
            })
            .collect(),
    )
}
