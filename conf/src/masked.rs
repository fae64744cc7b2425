//! A config file as an operator may be shown it (the admin dashboard): parsed and written out
//! again with what it protects left out — values of keys that name a secret, every agent
//! environment variable, secret-looking command-line arguments, URL passwords and query strings.
//! Built from the parsed file, not its lines, so no TOML layout (inline tables, multi-line arrays
//! or strings) can slip a value past it.

use toml::Value;

const HIDDEN: &str = "•••";

/// Key words whose values are secrets (a `*_file` or `*_path` key names where one is, and stays).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("_file") || k.ends_with("_path") || k.ends_with("_dir") {
        return false;
    }
    [
        "secret",
        "password",
        "passwd",
        "token",
        "credential",
        "apikey",
        "api_key",
        "private",
    ]
    .iter()
    .any(|w| k.contains(w))
        || k == "key"
        || k.ends_with("_key")
}

/// `text` re-written with its secrets masked; `None` if it is not TOML.
pub fn masked(text: &str) -> Option<String> {
    let mut value: Value = toml::from_str(text).ok()?;
    mask(&mut value, "");
    toml::to_string(&value).ok()
}

fn mask(v: &mut Value, key: &str) {
    match v {
        Value::Table(t) => {
            let env = matches!(key, "env" | "environment");
            for (k, child) in t.iter_mut() {
                if env || secret_key(k) {
                    hide(child);
                } else {
                    mask(child, k);
                }
            }
        }
        Value::Array(items) if key == "args" || key == "command" => {
            let mut after_flag = false;
            for item in items.iter_mut() {
                if let Value::String(s) = item {
                    let flag_secret = s.starts_with('-') && secret_word(s);
                    if after_flag {
                        *s = HIDDEN.into();
                    } else if flag_secret && s.contains('=') {
                        let name = s.split('=').next().unwrap_or_default().to_owned();
                        *s = format!("{name}={HIDDEN}");
                    } else {
                        *s = url(s);
                    }
                    after_flag = flag_secret && !s.contains('=');
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask(i, key)),
        Value::String(s) => *s = url(s),
        _ => {}
    }
}

fn secret_word(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    ["secret", "password", "passwd", "token", "key", "credential"]
        .iter()
        .any(|w| s.contains(w))
}

fn hide(v: &mut Value) {
    match v {
        Value::Table(t) => t.iter_mut().for_each(|(_, v)| hide(v)),
        Value::Array(items) => items.iter_mut().for_each(hide),
        other => *other = Value::String(HIDDEN.into()),
    }
}

/// A URL without its password and query: `redis://app:pw@h/0?x=1` → `redis://app:•••@h/0?•••`.
/// Anything else unchanged.
fn url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_owned();
    };
    let (scheme, rest) = s.split_at(scheme_end + 3);
    let (rest, query) = match rest.split_once('?') {
        Some((r, _)) => (r, Some(HIDDEN)),
        None => (rest, None),
    };
    // The authority ends at the last '@' before the path (a password may hold '/' or '@').
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{HIDDEN}{host}"),
                None => rest.to_owned(),
            }
        }
        None => rest.to_owned(),
    };
    match query {
        Some(q) => format!("{scheme}{rest}?{q}"),
        None => format!("{scheme}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn secrets_do_not_survive_any_layout() {
        let text = r#"
[cluster]
redis_url = "redis://app:hun/ter2@10.0.0.1:6379/0"
secret_file = "/run/secret"
[admin]
token = "abc123"
[telemetry]
otlp_endpoint = "http://collector:4318/v1/traces?token=qwerty"
[[runtimes]]
name = "vm"
[runtimes.backend]
provider = "process"
command = ["agent", "--api-key", "sk-live-1", "--model-token=tk-2", "--port", "8080"]
env = { OPENAI_API_KEY = "sk-live-3", GITHUB_PAT = "ghp_4" }
args = [
  "--verbose",
]
"#;
        let out = masked(text).unwrap();
        for secret in [
            "hun/ter2",
            "abc123",
            "qwerty",
            "sk-live-1",
            "tk-2",
            "sk-live-3",
            "ghp_4",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        for kept in [
            "/run/secret",
            "redis://app:•••@10.0.0.1:6379/0",
            "--port",
            "8080",
            "--verbose",
            "OPENAI_API_KEY",
        ] {
            assert!(out.contains(kept), "{kept} not in {out}");
        }
        assert!(masked("not = [toml").is_none());
    }
}
