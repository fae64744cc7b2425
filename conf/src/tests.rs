use std::time::Duration;

use super::*;

#[test]
fn embedded_default_is_valid_and_documented_values_hold() {
    let c = Config::embedded_default();
    assert_eq!(c.listeners.http.to_string(), "0.0.0.0:8080");
    assert_eq!(c.listeners.mcp.to_string(), "0.0.0.0:8000");
    assert_eq!(c.listeners.a2a.to_string(), "0.0.0.0:9000");
    assert_eq!(c.listeners.admin.to_string(), "127.0.0.1:9090");
    assert_eq!(c.limits.max_payload_bytes, 100_000_000);
    assert_eq!(c.sessions.idle_timeout.as_secs(), 900);
    assert_eq!(c.sessions.max_lifetime.as_secs(), 28_800);
    assert_eq!(c.runtimes.len(), 1);
    assert_eq!(c.runtimes[0].name, "default");
    assert!(
        matches!(&c.runtimes[0].versions[0].backend, BackendSpec::Process(p) if p.command.is_none())
    );
    assert_eq!(c.runtimes[0].endpoint(None).unwrap().targets, [(0, 1)]);
}

#[test]
fn a_file_without_runtimes_is_refused_never_read_as_the_default() {
    // An empty or truncated file used to become the embedded default: every configured
    // runtime gone, authentication off.
    for text in ["", "\n", "[limits]\nmax_active_sessions = 5\n"] {
        let errs = parse(text).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{text:?}: {errs:?}");
        assert_eq!(errs[0].path, "runtimes");
        assert!(
            errs[0].message.contains("no runtime"),
            "{}",
            errs[0].message
        );
    }
}

#[test]
fn connection_deadlines_have_defaults_and_bounds() {
    let c = Config::embedded_default();
    assert_eq!(c.limits.header_timeout.as_secs(), 10);
    assert_eq!(c.limits.keepalive_timeout.as_secs(), 60);
    assert_eq!(c.limits.body_timeout.as_secs(), 30);
    assert_eq!(c.limits.min_body_bytes_per_sec, 1_024);
    assert_eq!(c.limits.max_connections, None);
    let errs = parse(
        "[limits]\nheader_timeout_secs = 0\nbody_timeout_secs = 99999\n[[runtimes]]\nname = 'a'\n",
    )
    .unwrap_err()
    .0;
    let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["limits.header_timeout_secs", "limits.body_timeout_secs"]
    );
}

#[test]
fn aws_identity_and_admin_token_are_checked() {
    let dir = std::env::temp_dir().join(format!("sg-conf-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("short"), "abc\n").unwrap();
    std::fs::write(dir.join("good"), "0123456789abcdef-token\nignored\n").unwrap();
    let cfg = |token: &str, region: &str, account: &str| {
        let text = format!(
            "[admin]\ntoken_file = '{token}'\n[aws]\nregion = '{region}'\naccount_id = '{account}'\n[[runtimes]]\nname = 'a'\n"
        );
        validate::validate(parse_file(&text).unwrap(), &dir)
    };
    let c = cfg("good", "eu-west-1", "123456789012").unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef-token"));
    assert!(
        !format!("{:?}", c.admin).contains("0123456789abcdef"),
        "never in Debug"
    );
    assert_eq!(c.aws.region.as_deref(), Some("eu-west-1"));
    let errs = cfg("short", "EU_WEST", "12345").unwrap_err().0;
    let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["admin.token_file", "aws.region", "aws.account_id"]);
    assert!(cfg("missing", "us-east-1", "123456789012").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_key_is_reported_with_its_path_and_line() {
    let text = "[limits]\nmax_payload_bytes = 10\n\n[sessions]\nidle_timeout = 5\n";
    let errs = parse(text).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "sessions.idle_timeout");
    assert_eq!(errs[0].line, Some(5));
    assert!(
        errs[0].message.contains("unknown field"),
        "{}",
        errs[0].message
    );
}

#[test]
fn wrong_type_is_reported_with_its_path() {
    let errs = parse("[[runtimes]]\nname = 'a'\n[runtimes.backend]\nready_timeout_ms = 'soon'\n")
        .unwrap_err()
        .0;
    assert_eq!(errs[0].path, "runtimes[0].backend.ready_timeout_ms");
    assert_eq!(errs[0].line, Some(4));
}

#[test]
fn syntax_error_gives_a_line() {
    let errs = parse("[limits\nmax_payload_bytes = 1").unwrap_err().0;
    assert_eq!(errs[0].line, Some(1));
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let text = r#"
default_runtime = "nope"
[listeners]
http = "localhost:80"
mcp = "127.0.0.1:7000"
a2a = "127.0.0.1:7000"
[sessions]
idle_timeout_secs = 0
[[runtimes]]
name = "9bad"
protocol = "grpc"
[runtimes.backend]
provider = "static"
endpoints = [{ http = "127.0.0.1:1" }, { http = "127.0.0.1:1", mcp = "nowhere" }]
ready_timeout_ms = 5
[[runtimes]]
name = "ok"
[runtimes.backend]
provider = "vm"
"#;
    let errs = parse(text).unwrap_err().0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "default_runtime",
        "listeners.http",
        "listeners.a2a",
        "sessions.idle_timeout_secs",
        "runtimes[0].name",
        "runtimes[0].protocol",
        "runtimes[0].backend.ready_timeout_ms",
        "runtimes[0].backend.endpoints[1].http",
        "runtimes[0].backend.endpoints[1].mcp",
        "runtimes[1].backend.provider",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn static_pool_parses() {
    let c = parse(
        r#"
[[runtimes]]
name = "pool"
[runtimes.backend]
provider = "static"
sessions_per_endpoint = 2
endpoints = [{ http = "127.0.0.1:18080", mcp = "127.0.0.1:18000", a2a = "127.0.0.1:19000" }]
"#,
    )
    .unwrap();
    let BackendSpec::Static(pool) = &c.runtimes[0].versions[0].backend else {
        panic!("not static")
    };
    assert_eq!(pool.sessions_per_endpoint, 2);
    assert_eq!(pool.endpoints[0].addr(Protocol::Mcp).unwrap().port(), 18000);
}

#[test]
fn idle_longer_than_lifetime_is_refused() {
    let errs = parse("[sessions]\nidle_timeout_secs = 100\nmax_lifetime_secs = 50\n")
        .unwrap_err()
        .0;
    assert_eq!(errs[0].path, "sessions.idle_timeout_secs");
}

#[test]
fn the_documented_example_is_the_embedded_default() {
    let documented = parse(include_str!("../sessiongate.toml")).unwrap();
    assert_eq!(
        format!("{documented:?}"),
        format!("{:?}", Config::embedded_default())
    );
}

#[test]
fn every_example_config_is_valid() {
    for text in [
        include_str!("../static-pool.toml"),
        include_str!("../custom-agent.toml"),
        include_str!("../jwt.toml"),
        include_str!("../sandbox.toml"),
        include_str!("../microvm.toml"),
    ] {
        parse(text).unwrap();
    }
}

#[test]
fn the_sigv4_example_loads_its_credentials_relative_to_itself() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sigv4.toml");
    let c = load(&path).unwrap();
    let InboundAuth::SigV4(s) = &c.runtimes[0].auth else {
        panic!("not sigv4")
    };
    assert_eq!(s.credentials.len(), 2);
    assert_eq!(s.credentials[0].access_key_id, "AKIDEXAMPLE");
    assert_eq!(s.credentials[0].principal, "example-user");
    // Secrets never show in debug output.
    assert!(!format!("{c:?}").contains("wJalrXUtnFEMI"));
}

#[test]
fn auth_errors_are_reported_with_their_paths() {
    let errs = parse(
        r#"
[[runtimes]]
name = "a"
request_header_allowlist = ["Authorization", "X-Amz-Date", "Host", "ok-header", "OK-Header"]
[runtimes.auth]
mode = "sigv4"
discovery_url = "https://x/.well-known/openid-configuration"
credentials_file = "/nonexistent/creds.toml"
[[runtimes]]
name = "b"
[runtimes.auth]
mode = "jwt"
discovery_url = "ftp://x"
required_claims = [{ name = "t", equals = "a", contains = "b" }]
"#,
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "runtimes[0].request_header_allowlist",
        "runtimes[0].request_header_allowlist[1]",
        "runtimes[0].request_header_allowlist[2]",
        "runtimes[0].request_header_allowlist[4]",
        "runtimes[0].auth.discovery_url",
        "runtimes[0].auth.credentials_file",
        "runtimes[1].auth.discovery_url",
        "runtimes[1].auth.required_claims[0]",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn unauthenticated_public_runtimes_are_warned_about() {
    assert_eq!(Config::embedded_default().warnings().len(), 1);
    let local = parse(
        "[listeners]
http = \"127.0.0.1:1\"
mcp = \"127.0.0.1:2\"
a2a = \"[::1]:3\"
[[runtimes]]
name = \"default\"
",
    )
    .unwrap();
    assert!(local.warnings().is_empty());
}

#[test]
fn versions_and_endpoints() {
    let c = parse(
        r#"
[[runtimes]]
name = "agent"
[[runtimes.versions]]
version = 2
[[runtimes.versions]]
version = 1
[[runtimes.endpoints]]
name = "stable"
version = 1
[[runtimes.endpoints]]
name = "canary"
split = [{ version = 1, weight = 90 }, { version = 2, weight = 10 }]
"#,
    )
    .unwrap();
    let r = &c.runtimes[0];
    assert_eq!(
        r.versions.iter().map(|v| v.number).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        r.endpoint(None).unwrap().targets,
        [(1, 1)],
        "DEFAULT is the highest version"
    );
    assert_eq!(r.endpoint(Some("stable")).unwrap().targets, [(0, 1)]);
    let canary = r.endpoint(Some("canary")).unwrap();
    let twos = (0..1000u64).filter(|i| canary.choose(*i) == 1).count();
    assert_eq!(twos, 100);
    assert!(r.endpoint(Some("nope")).is_none());

    let errs = parse(
        r#"
[[runtimes]]
name = "agent"
[runtimes.backend]
provider = "process"
[[runtimes.versions]]
version = 1
[[runtimes.versions]]
version = 1
[[runtimes.endpoints]]
name = "DEFAULT"
version = 1
[[runtimes.endpoints]]
name = "x"
split = [{ version = 3, weight = 1 }]
"#,
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "runtimes[0].backend",
        "runtimes[0].versions[1].version",
        "runtimes[0].endpoints[0].name",
        "runtimes[0].endpoints[1]",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn sandbox_and_microvm_backends_parse_with_their_defaults() {
    let c = parse(
        r#"
[[runtimes]]
name = "boxed"
idle_timeout_secs = 60
[runtimes.backend]
provider = "sandbox"
warm_pool = 2
memory_mb = 256

[[runtimes]]
name = "vm"
max_lifetime_secs = 3600
[runtimes.backend]
provider = "microvm"
kernel = "/guest/vmlinux"
initrd = "guest/initrd.cpio"
accel = "tcg"
"#,
    )
    .unwrap();
    let BackendSpec::Sandbox(s) = &c.runtimes[0].versions[0].backend else {
        panic!("not a sandbox")
    };
    assert_eq!((s.memory_mb, s.cpu_percent, s.max_pids), (256, 100, 256));
    assert_eq!(s.process.warm_pool, 2);
    assert_eq!(
        s.process.args,
        ["agent"],
        "the contract's own ports apply inside"
    );
    assert!(
        s.read_only
            .iter()
            .any(|p| p == std::path::Path::new("/usr"))
    );
    assert_eq!(c.runtimes[0].idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(c.runtimes[0].max_lifetime, None);
    let BackendSpec::Microvm(m) = &c.runtimes[1].versions[0].backend else {
        panic!("not a microvm")
    };
    assert_eq!(m.accel, Accel::Tcg);
    assert!(m.snapshot);
    assert!(m.egress, "egress defaults on, as for sandboxes");
    assert_eq!((m.memory_mb, m.vcpus, m.warm_pool), (256, 1, 0));
    assert_eq!(m.kernel, std::path::Path::new("/guest/vmlinux"));
    assert!(m.initrd.ends_with("guest/initrd.cpio"));
    assert_eq!(c.runtimes[1].max_lifetime, Some(Duration::from_secs(3600)));
}

#[test]
fn isolation_settings_are_checked_with_their_paths() {
    let errs = parse(
        r#"
[[runtimes]]
name = "a"
idle_timeout_secs = 0
[runtimes.backend]
provider = "sandbox"
warm_pool = 65
memory_mb = 1
read_only = ["usr"]
kernel = "/vmlinux"

[[runtimes]]
name = "b"
[runtimes.backend]
provider = "microvm"
accel = "hvf"
cpu_percent = 50

[[runtimes]]
name = "c"
[runtimes.backend]
provider = "firecracker"
"#,
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "runtimes[0].idle_timeout_secs",
        "runtimes[0].backend.warm_pool",
        "runtimes[0].backend.memory_mb",
        "runtimes[0].backend.read_only[0]",
        "runtimes[0].backend.kernel",
        "runtimes[1].backend.accel",
        "runtimes[1].backend.cpu_percent",
        "runtimes[1].backend.kernel",
        "runtimes[1].backend.initrd",
        "runtimes[2].backend.provider",
    ] {
        assert!(paths.contains(&want), "no error at {want}: {errs:?}");
    }
}

#[test]
fn microvm_env_must_fit_a_kernel_command_line() {
    let errs = parse(
        r#"
[[runtimes]]
name = "vm"
[runtimes.backend]
provider = "microvm"
kernel = "/k"
initrd = "/i"
env = { LOG_LEVEL = "debug", console = "ttyS1", GREETING = "hello world" }
"#,
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "runtimes[0].backend.env.GREETING",
            "runtimes[0].backend.env.console"
        ],
        "{errs:?}"
    );
}

#[test]
fn taking_authentication_away_is_found() {
    let dir = std::env::temp_dir().join(format!("sg-conf-downgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("creds.toml"),
        "[[credentials]]\naccess_key_id = 'AKIDEXAMPLE'\nsecret_access_key = 'wJalrXUtnFEMI/K7MDENG'\nprincipal = 'p'\n",
    )
    .unwrap();
    let load = |text: &str| validate::validate(parse_file(text).unwrap(), &dir).unwrap();
    let sigv4 = "[runtimes.auth]\nmode = 'sigv4'\ncredentials_file = 'creds.toml'\n";
    let old = load(&format!("[[runtimes]]\nname = 'a'\n{sigv4}"));
    assert!(old.auth_weakened_by(&old).is_empty());
    let none = load("[[runtimes]]\nname = 'a'\n");
    let found = old.auth_weakened_by(&none);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].contains("`a` from auth `sigv4` to `none`"),
        "{found:?}"
    );
    // A new unauthenticated runtime beside authenticated ones weakens too…
    let added = load(&format!(
        "[[runtimes]]\nname = 'a'\n{sigv4}[[runtimes]]\nname = 'b'\n"
    ));
    assert_eq!(old.auth_weakened_by(&added).len(), 1);
    // …but not where unauthenticated runtimes already ran, and strengthening is fine.
    assert!(none.auth_weakened_by(&added).is_empty());
    assert!(none.auth_weakened_by(&old).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cluster_needs_redis_a_shared_secret_and_static_pools() {
    let dir = std::env::temp_dir().join(format!("sg-conf-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(dir.join("short"), "tooshort\n").unwrap();
    let pool = "[[runtimes]]\nname = 'a'\n[runtimes.backend]\nprovider = 'static'\n\
                endpoints = [{ http = '127.0.0.1:9001' }]\n";
    let cfg = |cluster: &str, runtimes: &str| {
        validate::validate(parse_file(&format!("{cluster}\n{runtimes}")).unwrap(), &dir)
    };
    assert!(Config::embedded_default().cluster.is_none(), "all-in-one");
    let c = cfg(
        "[cluster]\ndirectory = 'redis'\nredis_url = 'redis://:pw@127.0.0.1:6379/0'\nsecret_file = 'secret'\nnode_id = 'r1'\n",
        pool,
    )
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.key_prefix, "sessiongate");
    assert_eq!(cluster.redis_timeout, Duration::from_millis(250));
    assert_eq!(cluster.redis_outage_grace, Duration::from_secs(30));
    assert!(
        !format!("{cluster:?}").contains("pw@"),
        "the URL (password) never in Debug"
    );

    let paths = |cluster: &str, runtimes: &str| -> Vec<String> {
        cfg(cluster, runtimes)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    assert_eq!(
        paths("[cluster]\ndirectory = 'redis'\n", pool),
        ["cluster.redis_url", "cluster.secret_file"]
    );
    assert_eq!(
        paths(
            "[cluster]\ndirectory = 'redis'\nredis_url = 'http://x'\nsecret_file = 'short'\nkey_prefix = 'a b'\n",
            pool
        ),
        [
            "cluster.redis_url",
            "cluster.key_prefix",
            "cluster.secret_file"
        ]
    );
    assert_eq!(
        paths("[cluster]\ndirectory = 'etcd'\n", pool),
        ["cluster.directory"]
    );
    assert_eq!(
        paths("[cluster]\nredis_url = 'redis://127.0.0.1/'\n", pool),
        ["cluster.redis_url"],
        "a URL with the memory directory is a mistake worth saying"
    );
    // Spawned backends live on hosts; a host must say where replicas reach it.
    assert!(
        cfg(
            "[cluster]\ndirectory = 'redis'\nredis_url = 'redis://127.0.0.1/'\nsecret_file = 'secret'\n",
            "[[runtimes]]\nname = 'p'\n"
        )
        .is_ok()
    );
    assert_eq!(
        paths("[host]\nlisten = '0.0.0.0:7070'\ncapacity = 0\n", pool),
        ["host.capacity"]
    );
    let c = cfg(
        "[host]\nlisten = '0.0.0.0:7070'\nadvertise = '10.0.0.5:7070'\n",
        pool,
    )
    .unwrap();
    assert_eq!(c.host.advertise.to_string(), "10.0.0.5:7070");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn protocol_port_and_path_follow_agentcore_rules() {
    let ok = parse(
        r#"
[[runtimes]]
name = "agui"
protocol = "agui"
protocol_port = 8100
protocol_path = "/agent/run-1"
[runtimes.backend]
provider = "sandbox"
"#,
    )
    .unwrap();
    let r = &ok.runtimes[0];
    assert!(r.ag_ui && r.protocol == Protocol::Http);
    assert_eq!(r.path.as_deref(), Some("/agent/run-1"));
    let BackendSpec::Sandbox(s) = &r.versions[0].backend else {
        panic!()
    };
    assert_eq!(s.ports.all(), [8100, 8000, 9000]);
    for (extra, backend, path) in [
        ("protocol_port = 8443", "sandbox", "protocol_port"),
        ("protocol_port = 7999", "sandbox", "protocol_port"),
        ("protocol_port = 8100", "process", "protocol_port"),
        ("protocol_path = \"relative\"", "sandbox", "protocol_path"),
        ("protocol_path = \"/a b\"", "sandbox", "protocol_path"),
    ] {
        let text = format!(
            "[[runtimes]]\nname = \"r\"\n{extra}\n[runtimes.backend]\nprovider = \"{backend}\"\n"
        );
        let errs = parse(&text).unwrap_err().0;
        assert!(
            errs.iter().any(|e| e.path == format!("runtimes[0].{path}")),
            "{extra} on {backend}: {errs:?}"
        );
    }
}
