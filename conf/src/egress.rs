//! `[runtimes.egress]`: what a session's sandbox or microVM may reach, and the credentials the
//! gateway's egress proxy adds on the way out (so the agent uses them without ever holding them).
//! Read, checked and modelled here; the decision for one destination is [`Egress::verdict`].
//!
//! ```toml
//! [runtimes.egress]
//! mode = "allow_list"                       # "open" (default) | "allow_list" | "none"
//! allow = ["api.openai.com", "*.amazonaws.com", "10.0.0.0/8:5432"]
//! deny = ["metadata.internal"]
//! budget_mb = 512                           # bytes out and in, per session
//! [[runtimes.egress.credentials]]
//! host = "api.example.com"
//! header = "Authorization"
//! value_from = "env:EXAMPLE_TOKEN"          # or "file:/run/secrets/example"
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::validate::Errors;
use crate::{BackendSpec, RuntimeVersion};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileEgress {
    /// `open` (anything but the host's loopback, as `egress = true`), `allow_list` (only `allow`,
    /// minus `deny`), `none` (nothing). Default `open`.
    pub mode: Option<String>,
    pub allow: Vec<String>,
    /// Refused even when `allow` (or `open`) would let it through.
    pub deny: Vec<String>,
    /// Bytes a session may send and receive through the proxy, in MiB. Default: no limit.
    pub budget_mb: Option<u64>,
    pub credentials: Vec<FileCredential>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileCredential {
    pub host: String,
    pub header: String,
    pub value_from: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    Open,
    AllowList,
    None,
}

/// A destination pattern: a host name (`api.example.com`), a domain's subdomains
/// (`*.example.com`), an address or network (`10.0.0.0/8`, `::1`), each with an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    target: Target,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Host(String),
    /// `*.example.com`: stored as `.example.com`; matches subdomains, not the domain itself.
    Subdomains(String),
    Net(IpAddr, u8),
}

/// Where a credential's value comes from; read by the proxy, never shown to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueFrom {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressCredential {
    /// Lower-case host name the header is added for.
    pub host: String,
    pub header: String,
    pub value_from: ValueFrom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// The runtime it belongs to (its audit lines and metrics are labelled with it).
    pub runtime: String,
    pub mode: EgressMode,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub budget_bytes: Option<u64>,
    pub credentials: Vec<EgressCredential>,
}

/// What the proxy does with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Egress {
    /// The verdict for a connection to `port` of `host` (a name from SNI, `Host` or CONNECT,
    /// lower-case) and/or `ip` (its address; for a direct connection the only one). A name is
    /// matched by name rules, an address by network rules; `deny` wins over everything.
    pub fn verdict(&self, host: Option<&str>, ip: Option<IpAddr>, port: u16) -> Verdict {
        let hit = |rules: &[Rule]| rules.iter().any(|r| r.matches(host, ip, port));
        if hit(&self.deny) {
            return Verdict::Deny;
        }
        match self.mode {
            EgressMode::Open => Verdict::Allow,
            EgressMode::None => Verdict::Deny,
            EgressMode::AllowList if hit(&self.allow) => Verdict::Allow,
            EgressMode::AllowList => Verdict::Deny,
        }
    }

    /// Whether a name may resolve at all (the proxy's DNS answers only these): some rule of
    /// `allow` names it (on any port), and no port-less `deny` rule does.
    pub fn resolves(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let named = |r: &Rule| r.target.names(&host);
        if self.deny.iter().any(|r| r.port.is_none() && named(r)) {
            return false;
        }
        match self.mode {
            EgressMode::Open => true,
            EgressMode::None => false,
            EgressMode::AllowList => self.allow.iter().any(named),
        }
    }

    /// Whether a port-less deny rule holds `host` or `ip`: then no port of it is reachable.
    pub fn denies_everywhere(&self, host: Option<&str>, ip: Option<IpAddr>) -> bool {
        self.deny
            .iter()
            .any(|r| r.port.is_none() && r.matches(host, ip, 0))
    }

    /// The credentials to add to a request for `host`.
    pub fn credentials_for<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a EgressCredential> {
        self.credentials
            .iter()
            .filter(move |c| c.host.eq_ignore_ascii_case(host))
    }
}

impl Target {
    fn names(&self, host: &str) -> bool {
        match self {
            Target::Host(h) => h == host,
            Target::Subdomains(suffix) => host.ends_with(suffix.as_str()),
            Target::Net(..) => false,
        }
    }
}

impl Rule {
    fn matches(&self, host: Option<&str>, ip: Option<IpAddr>, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.target {
            Target::Net(net, bits) => ip.is_some_and(|ip| in_net(ip, *net, *bits)),
            named => {
                host.is_some_and(|h| named.names(&h.trim_end_matches('.').to_ascii_lowercase()))
            }
        }
    }

    /// `host`, `*.domain`, `1.2.3.4`, `10.0.0.0/8`, `[::1]`, `fd00::/8`, each optionally `:port`
    /// (IPv6 with a port in brackets: `[fd00::/8]:443`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (target, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: an unclosed `[`"))?;
            let port = match after {
                "" => None,
                p => Some(port(s, p.strip_prefix(':').unwrap_or(p))?),
            };
            (inner, port)
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 address or network, no port
        } else {
            match s.rsplit_once(':') {
                Some((t, p)) => (t, Some(port(s, p)?)),
                None => (s, None),
            }
        };
        let target = target.to_ascii_lowercase();
        let target = if let Some((addr, bits)) = target.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{s}`: `{addr}` is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{s}`: a prefix length is 0..={max}"))?;
            Target::Net(addr, bits)
        } else if let Ok(addr) = target.parse::<IpAddr>() {
            Target::Net(addr, if addr.is_ipv4() { 32 } else { 128 })
        } else if let Some(domain) = target.strip_prefix("*.") {
            valid_name(s, domain)?;
            Target::Subdomains(format!(".{domain}"))
        } else {
            valid_name(s, &target)?;
            Target::Host(target)
        };
        Ok(Rule { target, port })
    }
}

fn port(rule: &str, p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{rule}`: `{p}` is not a port (1..=65535)"))
}

fn valid_name(rule: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{rule}`: not a host name, `*.domain`, address or network"
        ))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (ip >> shift) == (net >> shift)
}

/// Reads and checks a runtime's `egress` table. A policy needs backends whose network the gateway
/// controls: `sandbox` and `microvm` (a `process` backend shares the host's network, a static
/// pool is not the gateway's), with their network on (`egress = false` leaves none to police).
pub(crate) fn egress(
    errs: &mut Errors,
    path: &str,
    runtime: &str,
    f: Option<&FileEgress>,
    versions: Option<&[RuntimeVersion]>,
) -> Option<Egress> {
    let f = f?;
    let path = format!("{path}.egress");
    let mode = match f.mode.as_deref().unwrap_or("open") {
        "open" => EgressMode::Open,
        "allow_list" => EgressMode::AllowList,
        "none" => EgressMode::None,
        other => {
            errs.push(
                format!("{path}.mode"),
                format!("`{other}` is not one of open, allow_list, none"),
            );
            EgressMode::None
        }
    };
    for v in versions.unwrap_or_default() {
        let why = match &v.backend {
            BackendSpec::Process(_) => Some(
                "a process backend shares the host's network: it cannot be confined; use sandbox or microvm",
            ),
            BackendSpec::Static(_) => {
                Some("a static pool's backends are not the gateway's to confine")
            }
            BackendSpec::Sandbox(s) if !s.egress => Some(
                "the backend has `egress = false` (no network at all): drop it to police egress",
            ),
            BackendSpec::Microvm(m) if !m.egress => Some(
                "the backend has `egress = false` (no network at all): drop it to police egress",
            ),
            _ => None,
        };
        if let Some(why) = why {
            errs.push(path.clone(), format!("version {}: {why}", v.number));
        }
    }
    let rules = |errs: &mut Errors, key: &str, list: &[String]| -> Vec<Rule> {
        list.iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Rule::parse(r)
                    .map_err(|e| errs.push(format!("{path}.{key}[{i}]"), e))
                    .ok()
            })
            .collect()
    };
    let allow = rules(errs, "allow", &f.allow);
    let deny = rules(errs, "deny", &f.deny);
    if mode != EgressMode::AllowList && !f.allow.is_empty() {
        errs.push(
            format!("{path}.allow"),
            "applies only with mode = \"allow_list\"",
        );
    }
    let credentials = f
        .credentials
        .iter()
        .enumerate()
        .filter_map(|(i, c)| credential(errs, &format!("{path}.credentials[{i}]"), c))
        .collect::<Vec<_>>();
    let policy = Egress {
        runtime: runtime.to_owned(),
        mode,
        allow,
        deny,
        budget_bytes: f
            .budget_mb
            .map(|mb| errs.range(&format!("{path}.budget_mb"), mb, 1, 1 << 30) << 20),
        credentials,
    };
    for (i, c) in policy.credentials.iter().enumerate() {
        if !policy.resolves(&c.host) {
            errs.push(
                format!("{path}.credentials[{i}].host"),
                format!("`{}` is not reachable under this policy", c.host),
            );
        }
    }
    Some(policy)
}

fn credential(errs: &mut Errors, path: &str, c: &FileCredential) -> Option<EgressCredential> {
    let host = c.host.trim().to_ascii_lowercase();
    if valid_name(&c.host, &host).is_err() || host.parse::<IpAddr>().is_ok() {
        errs.push(
            format!("{path}.host"),
            "a host name (the TLS name the agent calls)",
        );
        return None;
    }
    // An HTTP token (RFC 9110 §5.6.2).
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if c.header.is_empty() || !c.header.bytes().all(token) {
        errs.push(
            format!("{path}.header"),
            format!("`{}` is not a header name", c.header),
        );
        return None;
    }
    let value_from = if let Some(var) = c.value_from.strip_prefix("env:") {
        ValueFrom::Env(var.to_owned())
    } else if let Some(file) = c.value_from.strip_prefix("file:") {
        ValueFrom::File(PathBuf::from(file))
    } else {
        errs.push(
            format!("{path}.value_from"),
            "`env:NAME` or `file:/path` (the secret itself never goes in the config)",
        );
        return None;
    };
    Some(EgressCredential {
        host,
        header: c.header.clone(),
        value_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: EgressMode, allow: &[&str], deny: &[&str]) -> Egress {
        let rules = |l: &[&str]| l.iter().map(|r| Rule::parse(r).unwrap()).collect();
        Egress {
            runtime: "r".into(),
            mode,
            allow: rules(allow),
            deny: rules(deny),
            budget_bytes: None,
            credentials: Vec::new(),
        }
    }

    #[test]
    fn an_allow_list_lets_through_its_names_subdomains_and_networks_only() {
        let p = policy(
            EgressMode::AllowList,
            &[
                "api.openai.com",
                "*.amazonaws.com:443",
                "10.0.0.0/8:5432",
                "[fd00::/8]:443",
            ],
            &["evil.amazonaws.com"],
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(p.verdict(Some("api.openai.com"), None, 443), Verdict::Allow);
        assert_eq!(p.verdict(Some("API.OpenAI.com."), None, 80), Verdict::Allow);
        assert_eq!(
            p.verdict(Some("s3.amazonaws.com"), None, 443),
            Verdict::Allow
        );
        assert_eq!(p.verdict(Some("s3.amazonaws.com"), None, 80), Verdict::Deny);
        assert_eq!(p.verdict(Some("amazonaws.com"), None, 443), Verdict::Deny);
        assert_eq!(
            p.verdict(Some("evil.amazonaws.com"), None, 443),
            Verdict::Deny
        );
        assert_eq!(p.verdict(None, ip("10.1.2.3"), 5432), Verdict::Allow);
        assert_eq!(p.verdict(None, ip("10.1.2.3"), 5433), Verdict::Deny);
        assert_eq!(p.verdict(None, ip("11.1.2.3"), 5432), Verdict::Deny);
        assert_eq!(p.verdict(None, ip("::ffff:10.9.9.9"), 5432), Verdict::Allow);
        assert_eq!(p.verdict(None, ip("fd12::1"), 443), Verdict::Allow);
        // A raw address is held to the address rules, never to a name's.
        assert_eq!(p.verdict(None, ip("1.1.1.1"), 443), Verdict::Deny);
        assert!(p.resolves("api.openai.com") && p.resolves("x.amazonaws.com"));
        assert!(!p.resolves("example.com") && !p.resolves("evil.amazonaws.com"));
    }

    #[test]
    fn open_denies_only_its_deny_list_and_none_denies_everything() {
        let open = policy(EgressMode::Open, &[], &["169.254.169.254", "*.internal"]);
        assert_eq!(open.verdict(Some("example.com"), None, 443), Verdict::Allow);
        let ip = "169.254.169.254".parse().ok();
        assert_eq!(open.verdict(None, ip, 80), Verdict::Deny);
        assert!(!open.resolves("db.internal"));
        let none = policy(EgressMode::None, &[], &[]);
        assert_eq!(none.verdict(Some("example.com"), None, 443), Verdict::Deny);
        assert!(!none.resolves("example.com"));
    }

    #[test]
    fn a_policy_needs_a_sandbox_or_microvm_and_a_reachable_credential_host() {
        let refused =
            crate::parse("[[runtimes]]\nname = \"p\"\n[runtimes.egress]\nmode = \"none\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            refused.contains("runtimes[0].egress") && refused.contains("process"),
            "{refused}"
        );
        let c = crate::parse(
            "[[runtimes]]\nname = \"s\"\n[runtimes.backend]\nprovider = \"sandbox\"\n\
             [runtimes.egress]\nmode = \"allow_list\"\nallow = [\"api.example.com\"]\nbudget_mb = 2\n\
             [[runtimes.egress.credentials]]\nhost = \"api.example.com\"\nheader = \"Authorization\"\n\
             value_from = \"env:EXAMPLE_TOKEN\"\n",
        )
        .unwrap();
        let e = c.runtimes[0].egress.as_ref().unwrap();
        assert_eq!(
            (e.mode, e.budget_bytes),
            (EgressMode::AllowList, Some(2 << 20))
        );
        assert_eq!(e.credentials_for("API.example.com").count(), 1);
        let bad = crate::parse(
            "[[runtimes]]\nname = \"s\"\n[runtimes.backend]\nprovider = \"sandbox\"\n\
             [runtimes.egress]\nmode = \"allow_list\"\nallow = [\"a.example\", \"10.0.0.0/40\"]\n\
             [[runtimes.egress.credentials]]\nhost = \"b.example\"\nheader = \"Bad Header\"\n\
             value_from = \"sk-inline\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in ["egress.allow[1]", "credentials[0].header"] {
            assert!(bad.contains(key), "{key} in {bad}");
        }
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for bad in [
            "",
            "a..b",
            "10.0.0.0/33",
            "host:0",
            "host:99999",
            "[::1",
            "*.",
            "ex ample.com",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        for good in [
            "localhost",
            "a-b.c_d.example",
            "::1",
            "[::1]:8443",
            "0.0.0.0/0",
            "h:1",
        ] {
            assert!(Rule::parse(good).is_ok(), "{good}");
        }
    }
}
